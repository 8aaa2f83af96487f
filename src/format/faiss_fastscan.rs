//! Reader for faiss IVF-PQ FastScan index files (`IwPf`, 4-bit codes), bare or wrapped in a
//! flat refinement (`IxRF`), as faiss `write_index` writes what the factory strings
//! `IVF…,PQ…x4fs`, `IVF…,PQ…x4fsr` and `IVF…,PQ…x4fs,RFlat` (RVC's recommendation,
//! `IVF1024,PQ128x4fs,RFlat`) build. The result is a [`PqParts`].
//!
//! Layout (all little-endian, nothing aligned; `size_t` fields are 8 bytes):
//! ```text
//! "IxRF" (optional wrapper): index header, then the base index ("IwPf" below), then
//!        the refine index: "IxF2" | "IxFI" | "IxFl", index header, n u64, n f32 (ntotal × d),
//!        then k_factor f32
//! "IwPf"
//! index header: d i32, ntotal i64, dummy i64, dummy i64, is_trained u8, metric i32,
//!               metric_arg f32 (only when metric > 1)
//! nlist u64, nprobe u64
//! quantizer:    "IxF2" | "IxFI" | "IxFl", index header, n u64, n f32 (centroids)
//! direct map:   type u8, n u64, n i64, [type 2: n u64, n (i64, i64)]
//! by_residual u8, code_size u64, bbs i32, M2 u64, implem i32, qbs2 u64
//! product quantizer: d u64, M u64, nbits u64, n u64, n f32 (M × 2^nbits × d/M centroids)
//! block inverted lists "ilbl": nlist u64, code_size u64 (all ones: none), n_per_block u64,
//!               block_size u64,
//!               then for every list: n u64, n i64 ids, m u64, m bytes of packed codes
//! ```
//! (faiss `write_index` for `IndexRefine` and `IndexIVFPQFastScan`, `write_ivf_header`,
//! `write_ProductQuantizer`, and `BlockInvertedListsIOHook::write`.)
//!
//! Every count is checked against the bytes that remain before anything is read or allocated,
//! so a hostile file cannot make the reader allocate more than about its own size, and every
//! count that another one implies is cross-checked: d of the index, its quantizer, its product
//! quantizer and its refinement; ntotal of the index, the sum of its list sizes and the
//! refinement; `code_size = M2 / 2` with `M2` = M rounded up to even; `n_per_block = bbs` (a
//! multiple of 32), `block_size = bbs × M2 / 2`, and each list's codes are whole blocks,
//! `ceil(n / bbs) × block_size` bytes. The coarse quantizer must measure the index's metric,
//! as for IVF-Flat, and so must the refinement and the wrapper. The ids of a refined index
//! number the rows of its exact vectors, so they must be `0..ntotal`, each once.
//!
//! Other quantizers are refused by name: 8-bit and other IVF-PQ without FastScan (`IwPQ`),
//! pre-transforms such as OPQ (`IxPT`), refinements that are not flat, FastScan codes of
//! another width than 4 bits.

use std::io::Read;
use std::path::Path;

use super::faiss::{
    bad, faiss_type_name, index_header, ivf_fields, metric_name, metric_of, skip_direct_map, Input,
    IvfHeader, METRIC_INNER_PRODUCT, METRIC_L2,
};
use super::parts::Metric;
use super::pq::{ids_cover, PqList, PqParts, ProductQuantizer, RefineFlat, PQ_KSUB, PQ_NBITS};
use super::FormatError;

/// Largest block of packed codes accepted (`bbs`, vectors per block); faiss uses 32 by
/// default and any multiple of 32 on request.
const MAX_BBS: u64 = 1 << 16;

/// Reads a faiss IVF-PQ FastScan index (bare `IwPf` or refined `IxRF`) held in memory.
pub fn read_faiss_fastscan(bytes: &[u8]) -> Result<PqParts, FormatError> {
    read_parts(bytes, bytes.len() as u64, None)
}

/// Reads the faiss IVF-PQ FastScan index file at `path` (see [`read_faiss_fastscan`]),
/// streaming: each part is read straight into its place, so a load holds one copy of the data.
pub fn read_faiss_fastscan_file(path: &Path) -> Result<PqParts, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    let reader = std::io::BufReader::with_capacity(64 << 10, file);
    let mut parts = read_parts(reader, len, Some(path))?;
    parts.metadata.sources.extend(super::imported_source(path));
    Ok(parts)
}

/// Does `bytes` start like a file [`read_faiss_fastscan`] reads (`IwPf` or `IxRF`)? (The
/// wrapper may hold another base; the reader refuses it by name.)
pub fn looks_like_faiss_fastscan(bytes: &[u8]) -> bool {
    bytes.starts_with(b"IwPf") || bytes.starts_with(b"IxRF")
}

/// Reads what a faiss FastScan file declares from its first bytes (`head`): the IVF fields of
/// its `IwPf` index (inside the `IxRF` wrapper, if any, checked against it), and whether it is
/// refined. Nothing past the coarse quantizer's header is read.
pub(crate) fn read_header(head: &[u8]) -> Result<(IvfHeader, bool), FormatError> {
    let mut c = Input {
        r: head,
        at: 0,
        len: head.len() as u64,
        path: None,
    };
    let code = c.fourcc("the index type")?;
    match &code {
        b"IwPf" => Ok((ivf_fields(&mut c, "IVF-PQ FastScan")?, false)),
        b"IxRF" => {
            let w = index_header(&mut c, "the refine wrapper header")?;
            let base = c.fourcc("the refined index's type")?;
            if &base != b"IwPf" {
                return Err(refusal(&base, "the refined (base) index"));
            }
            let h = ivf_fields(&mut c, "IVF-PQ FastScan")?;
            if w.d as i64 != h.dim as i64 || w.ntotal != h.ntotal as i64 {
                return Err(bad(format!(
                    "the refine wrapper has d = {} and ntotal = {}, but its base index has d = {} and ntotal = {}",
                    w.d, w.ntotal, h.dim, h.ntotal
                )));
            }
            Ok((h, true))
        }
        other => Err(refusal(other, "the index")),
    }
}

fn read_parts<R: Read>(r: R, len: u64, path: Option<&Path>) -> Result<PqParts, FormatError> {
    let mut c = Input {
        r,
        at: 0,
        len,
        path,
    };
    let code = c.fourcc("the index type")?;
    match &code {
        b"IwPf" => fastscan(&mut c),
        b"IxRF" => refined(&mut c),
        other => Err(refusal(other, "the index")),
    }
}

/// The error for an index (or part, `what`) of type `code` that this reader does not read.
fn refusal(code: &[u8; 4], what: &str) -> FormatError {
    let fourcc = String::from_utf8_lossy(code);
    let why = match code {
        b"IwFl" => "IVF-Flat: it is read as such (format::read_faiss_index), not as FastScan",
        b"IwPQ" | b"IvPQ" => {
            "IVF-PQ without FastScan (such as 8-bit `PQ…x8` or plain `PQ…` codes); only 4-bit FastScan codes (`PQ…x4fs`) are read"
        }
        b"IwPR" => "IVF-PQ with PQ refinement (IVFPQR); only IVF-PQ FastScan with flat refinement (`,RFlat`) is read",
        b"IxPT" => {
            "a pre-transform (IndexPreTransform, such as OPQ or PCA): rebuild the index without it, as `IVF…,PQ…x4fs[,RFlat]`"
        }
        b"IPfs" => "PQ FastScan without inverted lists (IndexPQFastScan); only IVF-PQ FastScan is read",
        _ => match faiss_type_name(code) {
            Some(name) => name,
            None => return super::unknown_format(code),
        },
    };
    FormatError::BadFaiss(format!(
        "{what} is `{fourcc}`, {why}; knnblend reads IVF-PQ FastScan (`IwPf`, factory `IVF…,PQ…x4fs`), optionally refined (`IxRF`, `,RFlat`)"
    ))
}

/// An `IxRF` wrapper: its header, an `IwPf` base, a flat refine index and `k_factor`.
fn refined<R: Read>(c: &mut Input<'_, R>) -> Result<PqParts, FormatError> {
    let h = index_header(c, "the refine wrapper header")?;
    let base = c.fourcc("the refined index's type")?;
    if &base != b"IwPf" {
        return Err(refusal(&base, "the refined (base) index"));
    }
    let mut parts = fastscan(c)?;
    let (dim, ntotal) = (parts.dim, parts.ntotal() as u64);
    if h.d as i64 != dim as i64 || h.ntotal != ntotal as i64 {
        return Err(bad(format!(
            "the refine wrapper has d = {} and ntotal = {}, but its base index has d = {dim} and ntotal = {ntotal}",
            h.d, h.ntotal
        )));
    }
    if metric_of(h.metric).ok() != Some(parts.metric) {
        return Err(bad(format!(
            "the refine wrapper measures {} but its base index measures {}",
            metric_name(h.metric),
            metric_name(metric_code(parts.metric))
        )));
    }

    let code = c.fourcc("the refine index type")?;
    let implied = match &code {
        b"IxF2" => Some(METRIC_L2),
        b"IxFI" => Some(METRIC_INNER_PRODUCT),
        b"IxFl" => None,
        other => {
            let name = faiss_type_name(other).unwrap_or("an unknown type");
            return Err(bad(format!(
                "the refine index is `{}` ({name}), not a flat index; only flat refinement (`,RFlat`: IndexRefineFlat) is read",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let rh = index_header(c, "the refine index header")?;
    if rh.d as i64 != dim as i64 || rh.ntotal != ntotal as i64 {
        return Err(bad(format!(
            "the refine index has d = {} and {} vectors, but the index has d = {dim} and ntotal = {ntotal}",
            rh.d, rh.ntotal
        )));
    }
    if metric_of(rh.metric).ok() != Some(parts.metric) {
        return Err(bad(format!(
            "the refine index measures {} but the index measures {}: candidates would be found by one distance and re-ranked by another",
            metric_name(rh.metric),
            metric_name(metric_code(parts.metric))
        )));
    }
    if let Some(m) = implied.filter(|&m| m != rh.metric) {
        return Err(bad(format!(
            "the refine index's type `{}` means {} but its header says {}",
            String::from_utf8_lossy(&code),
            metric_name(m),
            metric_name(rh.metric)
        )));
    }
    let bytes = c.vector_len(4, "the refine vectors")?;
    if bytes != ntotal * dim as u64 * 4 {
        return Err(bad(format!(
            "{} refine values, expected ntotal × d = {}",
            bytes / 4,
            ntotal * dim as u64
        )));
    }
    let vectors = floats(c, bytes, "the refine vectors")?;
    if let Some(i) = vectors.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!(
            "refine vector {} value {} is not finite",
            i / dim,
            i % dim
        )));
    }
    let k_factor = c.f32("k_factor")?;
    if !(k_factor.is_finite() && k_factor >= 1.0) {
        return Err(bad(format!(
            "k_factor = {k_factor}: it must be a finite number of at least 1 (candidates per neighbour)"
        )));
    }
    ids_cover(parts.lists.iter().map(|l| l.ids.as_slice()), ntotal).map_err(|m| {
        bad(format!(
            "{m}: the ids of a refined index must be 0..ntotal, each once"
        ))
    })?;
    parts.refine = Some(RefineFlat { vectors, k_factor });
    parts.metadata = super::faiss::imported_metadata_from(dim, ntotal, imported_from(true));
    Ok(parts)
}

fn metric_code(m: Metric) -> i32 {
    match m {
        Metric::L2 => METRIC_L2,
        Metric::InnerProduct => METRIC_INNER_PRODUCT,
    }
}

/// An `IwPf` index, after its type.
fn fastscan<R: Read>(c: &mut Input<'_, R>) -> Result<PqParts, FormatError> {
    let IvfHeader {
        dim,
        metric,
        ntotal,
        nlist,
        nprobe,
    } = ivf_fields(c, "IVF-PQ FastScan")?;
    let centroid_bytes = c.vector_len(4, "the centroids")?;
    if centroid_bytes != nlist * dim as u64 * 4 {
        return Err(bad(format!(
            "{} centroid values, expected nlist × d = {}",
            centroid_bytes / 4,
            nlist * dim as u64
        )));
    }
    let centroids = floats(c, centroid_bytes, "the centroids")?;
    if let Some(i) = centroids.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("centroid value {i} is not finite")));
    }
    skip_direct_map(c)?;

    let by_residual = match c.u8("by_residual")? {
        0 => false,
        1 => true,
        b => return Err(bad(format!("by_residual = {b} is not a boolean"))),
    };
    let code_size = c.u64("code_size")?;
    let bbs = c.i32("bbs")?;
    let m2 = c.u64("M2")?;
    let implem = c.i32("implem")?;
    let qbs2 = c.u64("qbs2")?;
    if bbs <= 0 || bbs % 32 != 0 || bbs as u64 > MAX_BBS {
        return Err(FormatError::field(
            "bbs",
            bbs,
            format!("must be a positive multiple of 32, at most {MAX_BBS}"),
        ));
    }
    let bbs = bbs as u64;

    let pq_d = c.u64("the product quantizer's d")?;
    let m = c.u64("the product quantizer's M")?;
    let nbits = c.u64("the product quantizer's nbits")?;
    if pq_d != dim as u64 {
        return Err(bad(format!(
            "the product quantizer has d = {pq_d}, but the index has d = {dim}"
        )));
    }
    if m == 0 || m > dim as u64 || !(dim as u64).is_multiple_of(m) {
        return Err(FormatError::field(
            "M",
            m,
            format!("must divide d = {dim} (sub-vectors of equal length)"),
        ));
    }
    if nbits != PQ_NBITS as u64 {
        return Err(bad(format!(
            "the product quantizer has {nbits}-bit codes; FastScan stores 4-bit codes only (factory `PQ…x4fs`)"
        )));
    }
    let (m, dsub) = (m as usize, dim / m as usize);
    let want_m2 = m.next_multiple_of(2) as u64;
    if m2 != want_m2 || code_size != want_m2 / 2 {
        return Err(bad(format!(
            "M2 = {m2} and code_size = {code_size} do not fit M = {m} (expected M2 = {want_m2}, code_size = {})",
            want_m2 / 2
        )));
    }
    let book_bytes = c.vector_len(4, "the product quantizer's centroids")?;
    let want = (m * PQ_KSUB * dsub) as u64;
    if book_bytes != want * 4 {
        return Err(bad(format!(
            "{} product quantizer centroid values, expected M × 16 × d/M = {want}",
            book_bytes / 4
        )));
    }
    let codebooks = floats(c, book_bytes, "the product quantizer's centroids")?;
    if let Some(i) = codebooks.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!(
            "product quantizer centroid value {i} is not finite"
        )));
    }

    let il = c.fourcc("the inverted lists")?;
    if &il == b"il00" || ntotal == 0 {
        if ntotal == 0 {
            return Err(FormatError::TrainedOnly);
        }
        return Err(bad("the index has vectors but stores no inverted lists"));
    }
    if &il != b"ilbl" {
        return Err(bad(format!(
            "inverted lists of type `{}` are not supported (FastScan indexes store block lists, `ilbl`; on-disk lists are not read)",
            String::from_utf8_lossy(&il)
        )));
    }
    let il_nlist = c.u64("the inverted lists' nlist")?;
    let il_code_size = c.u64("the inverted lists' code_size")?;
    let n_per_block = c.u64("the inverted lists' n_per_block")?;
    let block_size = c.u64("the inverted lists' block_size")?;
    if il_nlist != nlist {
        return Err(bad(format!(
            "inverted lists count {il_nlist} differs from nlist {nlist}"
        )));
    }
    // faiss's block lists declare no code size of their own (`INVALID_CODE_SIZE`, all ones),
    // but reading accepts the index's too.
    if il_code_size != code_size && il_code_size != u64::MAX {
        return Err(bad(format!(
            "the inverted lists' code size {il_code_size} differs from the index's {code_size}"
        )));
    }
    if n_per_block != bbs || block_size != bbs * code_size {
        return Err(bad(format!(
            "blocks of {n_per_block} vectors and {block_size} bytes do not fit bbs = {bbs} and M2 = {m2} (expected {bbs} vectors of {} bytes)",
            bbs * code_size
        )));
    }

    // Every list takes at least its two counts (16 bytes) in the file.
    let mut lists = Vec::with_capacity(nlist.min((c.len - c.at) / 16) as usize);
    let mut total = 0u64;
    for l in 0..nlist {
        let what = |part: &str| format!("the {part} of list {l}");
        let id_bytes = c.vector_len(8, &what("ids"))?;
        let n = id_bytes / 8;
        total = match total.checked_add(n) {
            Some(t) if t <= ntotal => t,
            _ => {
                return Err(bad(format!(
                    "the lists hold more vectors than the header's ntotal = {ntotal} (list {l} holds {n})"
                )))
            }
        };
        let ids = i64s(c, id_bytes, &what("ids"))?;
        let code_bytes = c.vector_len(1, &what("codes"))?;
        let want = n.div_ceil(bbs) * block_size;
        if code_bytes != want {
            return Err(bad(format!(
                "list {l} holds {n} vectors but {code_bytes} bytes of codes; {n} vectors take {} blocks of {block_size} bytes = {want}",
                n.div_ceil(bbs)
            )));
        }
        let codes = c.bytes(code_bytes, &what("codes"))?;
        lists.push(PqList { ids, codes });
    }
    if total != ntotal {
        return Err(bad(format!(
            "list sizes add up to {total}, but the header says ntotal = {ntotal}"
        )));
    }
    Ok(PqParts {
        dim,
        metric,
        nprobe,
        centroids,
        pq: ProductQuantizer { m, dsub, codebooks },
        by_residual,
        bbs: bbs as usize,
        implem,
        qbs2,
        lists,
        refine: None,
        metadata: super::faiss::imported_metadata_from(dim, ntotal, imported_from(false)),
    })
}

/// The faiss type an imported IVF-PQ FastScan index names in its metadata (`imported_from`),
/// refined or not: the reader and [`read_header`](super::read_header) say the same, so a
/// loader comparing the header with the index it read sees the file unchanged.
pub(super) fn imported_from(refined: bool) -> &'static str {
    if refined {
        "faiss IndexRefineFlat(IndexIVFPQFastScan)"
    } else {
        "faiss IndexIVFPQFastScan"
    }
}

/// Bytes converted per step when reading numbers.
const CHUNK: usize = 64 << 10;

/// Reads `bytes` bytes (checked against the input first) as little-endian numbers of `N` bytes,
/// converted a chunk at a time, so nothing beyond the result is allocated.
fn numbers<R: Read, T, const N: usize>(
    c: &mut Input<'_, R>,
    bytes: u64,
    what: &str,
    from: fn([u8; N]) -> T,
) -> Result<Vec<T>, FormatError> {
    c.need(bytes, what)?;
    let mut out = Vec::with_capacity(bytes as usize / N);
    let mut buf = [0u8; CHUNK];
    let mut left = bytes as usize;
    while left > 0 {
        let n = left.min(CHUNK);
        c.fill(&mut buf[..n], what)?;
        out.extend(
            buf[..n]
                .chunks_exact(N)
                .map(|b| from(b.try_into().expect("N bytes"))),
        );
        left -= n;
    }
    Ok(out)
}

fn floats<R: Read>(c: &mut Input<'_, R>, bytes: u64, what: &str) -> Result<Vec<f32>, FormatError> {
    numbers(c, bytes, what, f32::from_le_bytes)
}

fn i64s<R: Read>(c: &mut Input<'_, R>, bytes: u64, what: &str) -> Result<Vec<i64>, FormatError> {
    numbers(c, bytes, what, i64::from_le_bytes)
}
