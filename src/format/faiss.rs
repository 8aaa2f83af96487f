//! Reader for faiss IVF-Flat index files (`IwFl`), as RVC writes them (`added_*.index`).
//!
//! Layout, as written by faiss `write_index` (all little-endian, nothing aligned):
//! ```text
//! "IwFl"
//! index header: d i32, ntotal i64, dummy i64, dummy i64, is_trained u8, metric i32,
//!               metric_arg f32 (only when metric > 1)
//! nlist u64, nprobe u64
//! quantizer:    "IxF2" (L2) | "IxFI" (IP) | "IxFl", index header, n u64, n f32 (centroids)
//! direct map:   type u8, n u64, n i64, [type 2: n u64, n (i64, i64)]
//! inverted lists "ilar": nlist u64, code_size u64, "full" | "sprs", n u64, n u64 sizes
//!               then for every non-empty list: size × code_size bytes of codes, size i64 ids
//! ```
//! Every length is checked against the bytes that remain before anything is read or allocated,
//! so a hostile file cannot make the reader allocate more than about its own size.
//!
//! The reader streams: it reads the header, the centroids and the list sizes, then allocates
//! the index's final image (a `.kbi` image in page-aligned memory, see [`kbi`]) once and
//! reads every list's vectors and ids straight into their place in it. Loading a file thus
//! holds one copy of its data, never the file and a converted copy side by side.
//!
//! The coarse quantizer must measure the index's own metric: its type (`IxF2` L2, `IxFI` inner
//! product, `IxFl` any, as faiss writes them) and the metric in its header are compared with
//! the IVF index's, and a mismatch is refused naming both.

use std::io::Read;
use std::path::Path;

use super::aligned::AlignedBytes;
use super::kbi::{self, Plan, SectionKind};
use super::parts::{IndexParts, Metadata, Metric, MAX_DIM, MAX_NLIST, MAX_NTOTAL};
use super::FormatError;

/// faiss `MetricType` codes.
pub(super) const METRIC_INNER_PRODUCT: i32 = 0;
pub(super) const METRIC_L2: i32 = 1;

/// Human names for the faiss fourccs we refuse, so the error says what the file is.
pub(super) fn faiss_type_name(code: &[u8; 4]) -> Option<&'static str> {
    Some(match code {
        b"IvFl" | b"IvFL" => "legacy IVF-Flat (re-save it with a current faiss)",
        b"IwFd" => "IVF-Flat with deduplication",
        b"IwPQ" | b"IvPQ" => "IVF-PQ",
        b"IwPR" => "IVF-PQ with refinement",
        b"IwPf" => "IVF-PQ FastScan",
        b"IwSQ" | b"IwSq" | b"IvSQ" => "IVF scalar quantizer",
        b"IwRQ" | b"Iwrq" => "IVF residual quantizer",
        b"IwLS" => "IVF local search quantizer",
        b"IwSh" => "IVF spectral hash",
        b"IxF2" | b"IxFI" | b"IxFl" => "flat index (no inverted lists)",
        b"IxPQ" | b"IxPq" | b"IxPo" => "PQ",
        b"IxSQ" => "scalar quantizer",
        b"IxRF" => "refine wrapper (IndexRefine)",
        b"IHNf" | b"IHNp" | b"IHNs" | b"IHN2" | b"IHNc" => "HNSW",
        b"INSf" | b"INSp" | b"INSs" => "NSG",
        b"IxHE" | b"IxHe" => "hierarchical index",
        b"IxMp" | b"IxM2" => "ID map wrapper (IndexIDMap)",
        b"IxPT" => "pre-transform wrapper (IndexPreTransform)",
        b"IxLS" => "LSH",
        b"null" => "null index",
        _ => return None,
    })
}

/// Does `bytes` start like a faiss index file we know of (supported or not)?
pub fn looks_like_faiss(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && {
        let code: &[u8; 4] = bytes[..4].try_into().expect("4 bytes");
        code == b"IwFl" || faiss_type_name(code).is_some()
    }
}

/// The input of the reader: `len` bytes from `r`, of which `at` have been consumed. Every read
/// is checked against `len` first, so nothing is allocated for bytes the input does not hold.
pub(super) struct Input<'p, R> {
    pub(super) r: R,
    pub(super) at: u64,
    pub(super) len: u64,
    /// The file, for I/O errors.
    pub(super) path: Option<&'p Path>,
}

impl<R: Read> Input<'_, R> {
    pub(super) fn need(&self, n: u64, what: &str) -> Result<(), FormatError> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(FormatError::Truncated {
                what: what.to_string(),
                needed: self.at.saturating_add(n),
                actual: self.len,
            }),
        }
    }

    fn read_error(&self, e: std::io::Error, n: u64, what: &str) -> FormatError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FormatError::Truncated {
                what: format!("{what} (the file became shorter while it was read)"),
                needed: self.at.saturating_add(n),
                actual: self.at,
            }
        } else {
            FormatError::io(self.path.unwrap_or(Path::new("<input>")), e)
        }
    }

    /// Fills `buf` with the next bytes.
    pub(super) fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), FormatError> {
        let n = buf.len() as u64;
        self.need(n, what)?;
        self.r
            .read_exact(buf)
            .map_err(|e| self.read_error(e, n, what))?;
        self.at += n;
        Ok(())
    }

    /// The next `n` bytes, owned.
    pub(super) fn bytes(&mut self, n: u64, what: &str) -> Result<Vec<u8>, FormatError> {
        self.need(n, what)?;
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    /// Skips `n` bytes.
    pub(super) fn skip(&mut self, n: u64, what: &str) -> Result<(), FormatError> {
        self.need(n, what)?;
        let copied = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink());
        let copied = copied.map_err(|e| self.read_error(e, n, what))?;
        if copied != n {
            let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
            return Err(self.read_error(e, n, what));
        }
        self.at += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }
    pub(super) fn fourcc(&mut self, what: &str) -> Result<[u8; 4], FormatError> {
        self.array(what)
    }
    pub(super) fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }
    pub(super) fn i32(&mut self, what: &str) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }
    pub(super) fn i64(&mut self, what: &str) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    pub(super) fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub(super) fn f32(&mut self, what: &str) -> Result<f32, FormatError> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    /// Reads the count of a length-prefixed vector of `elem`-byte items and returns its length
    /// in bytes, checked against the input (the items are not read).
    pub(super) fn vector_len(&mut self, elem: u64, what: &str) -> Result<u64, FormatError> {
        let n = self.u64(what)?;
        let bytes = n
            .checked_mul(elem)
            .ok_or_else(|| bad(format!("{what}: length {n} overflows")))?;
        self.need(bytes, what)?;
        Ok(bytes)
    }
}

pub(super) fn bad(m: impl Into<String>) -> FormatError {
    FormatError::BadFaiss(m.into())
}

pub(super) struct Header {
    pub(super) d: i32,
    pub(super) ntotal: i64,
    pub(super) metric: i32,
}

pub(super) fn index_header<R: Read>(
    c: &mut Input<'_, R>,
    what: &str,
) -> Result<Header, FormatError> {
    let d = c.i32(what)?;
    let ntotal = c.i64(what)?;
    c.i64(what)?;
    c.i64(what)?;
    c.u8(what)?; // is_trained
    let metric = c.i32(what)?;
    if metric > 1 {
        c.skip(4, what)?; // metric_arg
    }
    Ok(Header { d, ntotal, metric })
}

pub(super) fn metric_of(code: i32) -> Result<Metric, FormatError> {
    match code {
        METRIC_L2 => Ok(Metric::L2),
        METRIC_INNER_PRODUCT => Ok(Metric::InnerProduct),
        m => Err(bad(format!(
            "metric type {m} is not supported (only L2 and inner product)"
        ))),
    }
}

/// The name of a faiss `MetricType` code, for messages.
pub(super) fn metric_name(code: i32) -> String {
    match code {
        METRIC_INNER_PRODUCT => "inner product".into(),
        METRIC_L2 => "L2".into(),
        2 => "L1".into(),
        3 => "Linf".into(),
        4 => "Lp".into(),
        20 => "Canberra".into(),
        21 => "BrayCurtis".into(),
        22 => "JensenShannon".into(),
        23 => "Jaccard".into(),
        24 => "NaN-Euclidean".into(),
        25 => "absolute inner product".into(),
        m => format!("metric type {m}"),
    }
}

/// Feature kind implied by RVC's dimensions (256 → v1, 768 → v2).
fn inferred_features(dim: usize) -> String {
    match dim {
        256 => "rvc-v1-256".into(),
        768 => "rvc-v2-768".into(),
        d => format!("unknown-{d}"),
    }
}

/// The metadata of an index imported from faiss (which stores none): the feature kind inferred
/// from the dimension, the vector count, where it came from. (The loader adds the file name to
/// `sources`.)
pub(crate) fn imported_metadata(dim: usize, ntotal: u64) -> Metadata {
    imported_metadata_from(dim, ntotal, IVF_FLAT_FROM)
}

/// The faiss type an imported IVF-Flat index names in its metadata (`imported_from`).
pub(super) const IVF_FLAT_FROM: &str = "faiss IndexIVFFlat";

/// [`imported_metadata`] of an index of faiss type `from` (such as [`IVF_FLAT_FROM`]).
pub(super) fn imported_metadata_from(dim: usize, ntotal: u64, from: &str) -> Metadata {
    Metadata {
        features: inferred_features(dim),
        frames: ntotal,
        extra: [
            ("imported_from".to_string(), from.into()),
            ("features_inferred_from_dim".to_string(), true.into()),
        ]
        .into_iter()
        .collect(),
        ..Metadata::default()
    }
}

/// What a faiss IVF-Flat file declares up to and including its coarse quantizer's header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IvfHeader {
    pub(crate) dim: usize,
    pub(crate) metric: Metric,
    pub(crate) ntotal: u64,
    pub(crate) nlist: u64,
    pub(crate) nprobe: u32,
}

/// Reads and checks everything up to the quantizer's centroids.
fn ivf_header<R: Read>(c: &mut Input<'_, R>) -> Result<IvfHeader, FormatError> {
    let code = c.fourcc("the index type")?;
    if &code != b"IwFl" {
        return Err(match faiss_type_name(&code) {
            Some(name) => FormatError::UnsupportedFaissType {
                fourcc: String::from_utf8_lossy(&code).into_owned(),
                name,
            },
            None => super::unknown_format(&code),
        });
    }
    ivf_fields(c, "IVF-Flat")
}

/// Reads and checks the fields every faiss IVF index (`kind`, for messages) starts with, after
/// its type: the index header, nlist and nprobe, and the coarse quantizer up to its centroids.
pub(super) fn ivf_fields<R: Read>(
    c: &mut Input<'_, R>,
    kind: &str,
) -> Result<IvfHeader, FormatError> {
    let h = index_header(c, "the IVF header")?;
    if h.d <= 0 || h.d as usize > MAX_DIM {
        return Err(FormatError::field(
            "d",
            h.d,
            format!("must be in 1..={MAX_DIM}"),
        ));
    }
    let metric = metric_of(h.metric)?;
    if h.ntotal < 0 || h.ntotal as u64 > MAX_NTOTAL {
        return Err(FormatError::field(
            "ntotal",
            h.ntotal,
            format!("must be in 0..={MAX_NTOTAL}"),
        ));
    }
    let nlist = c.u64("nlist")?;
    let nprobe = c.u64("nprobe")?;
    if nlist == 0 || nlist > MAX_NLIST {
        return Err(FormatError::field(
            "nlist",
            nlist,
            format!("must be in 1..={MAX_NLIST}"),
        ));
    }

    let q = c.fourcc("the quantizer type")?;
    // faiss writes a flat index as IxF2 when it measures L2, IxFI for inner product and IxFl
    // for any other metric; reading, it takes the metric from the header that follows.
    let implied = match &q {
        b"IxF2" => Some(METRIC_L2),
        b"IxFI" => Some(METRIC_INNER_PRODUCT),
        b"IxFl" => None,
        _ => {
            return Err(bad(format!(
                "the coarse quantizer is `{}`, not a flat index; only {kind} with a flat quantizer is supported",
                String::from_utf8_lossy(&q)
            )))
        }
    };
    let qh = index_header(c, "the quantizer header")?;
    if qh.d != h.d || qh.ntotal as u64 != nlist {
        return Err(bad(format!(
            "the quantizer has d = {} and {} centroids, but the index has d = {} and nlist = {nlist}",
            qh.d, qh.ntotal, h.d
        )));
    }
    if qh.metric != h.metric {
        return Err(bad(format!(
            "the coarse quantizer measures {} but the IVF index measures {}: lists would be chosen by one distance and vectors ranked by another; rebuild the index with a quantizer of the index's metric",
            metric_name(qh.metric),
            metric_name(h.metric)
        )));
    }
    if let Some(m) = implied.filter(|&m| m != qh.metric) {
        return Err(bad(format!(
            "the coarse quantizer's type `{}` means {} but its header says {}",
            String::from_utf8_lossy(&q),
            metric_name(m),
            metric_name(qh.metric)
        )));
    }
    Ok(IvfHeader {
        dim: h.d as usize,
        metric,
        ntotal: h.ntotal as u64,
        nlist,
        nprobe: nprobe.clamp(1, u32::MAX as u64) as u32,
    })
}

/// Skips an IVF index's direct map (id → list position; knnblend does not need it).
pub(super) fn skip_direct_map<R: Read>(c: &mut Input<'_, R>) -> Result<(), FormatError> {
    let map_type = c.u8("the direct map")?;
    let map = c.vector_len(8, "the direct map")?;
    c.skip(map, "the direct map")?;
    match map_type {
        0 | 1 => {}
        2 => {
            let table = c.vector_len(16, "the direct map hashtable")?;
            c.skip(table, "the direct map hashtable")?;
        }
        t => return Err(bad(format!("unknown direct map type {t}"))),
    }
    Ok(())
}

/// Reads what a faiss file declares from its first bytes (`head`, the first page or the
/// whole file if shorter): everything up to the quantizer's centroids, checked as
/// [`read_faiss_index`] checks it.
pub(crate) fn read_header(head: &[u8]) -> Result<IvfHeader, FormatError> {
    ivf_header(&mut Input {
        r: head,
        at: 0,
        len: head.len() as u64,
        path: None,
    })
}

/// Reads a faiss IVF-Flat file of `len` bytes from `r` into a complete `.kbi` image (the
/// layout [`kbi::encode`] writes, bit for bit, for the same parts), reading each list straight
/// into its place. `progress(done, len)` is called every few MiB.
pub(crate) fn read_image<R: Read>(
    r: R,
    len: u64,
    path: Option<&Path>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AlignedBytes, FormatError> {
    let mut c = Input {
        r,
        at: 0,
        len,
        path,
    };
    let h = ivf_header(&mut c)?;
    let (dim, nlist) = (h.dim, h.nlist);
    let centroid_bytes = c.vector_len(4, "the centroids")?;
    if centroid_bytes != nlist * dim as u64 * 4 {
        return Err(bad(format!(
            "{} centroid values, expected nlist × d = {}",
            centroid_bytes / 4,
            nlist * dim as u64
        )));
    }
    let centroids = c.bytes(centroid_bytes, "the centroids")?;

    skip_direct_map(&mut c)?;

    let il = c.fourcc("the inverted lists")?;
    if &il == b"il00" || h.ntotal == 0 {
        if h.ntotal == 0 {
            return Err(FormatError::TrainedOnly);
        }
        return Err(bad("the index has vectors but stores no inverted lists"));
    }
    if &il != b"ilar" {
        return Err(bad(format!(
            "inverted lists of type `{}` are not supported (only in-file `ilar` lists; on-disk lists are not)",
            String::from_utf8_lossy(&il)
        )));
    }
    let il_nlist = c.u64("the inverted lists")?;
    let code_size = c.u64("the inverted lists")?;
    if il_nlist != nlist {
        return Err(bad(format!(
            "inverted lists count {il_nlist} differs from nlist {nlist}"
        )));
    }
    if code_size != dim as u64 * 4 {
        return Err(bad(format!(
            "code size {code_size} is not d × 4 = {}",
            dim * 4
        )));
    }
    let list_type = c.fourcc("the list size encoding")?;
    let raw_len = c.vector_len(8, "the list sizes")?;
    let raw: Vec<u64> = c
        .bytes(raw_len, "the list sizes")?
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
        .collect();
    let sizes = match &list_type {
        b"full" => {
            if raw.len() as u64 != nlist {
                return Err(bad(format!("{} list sizes for {nlist} lists", raw.len())));
            }
            raw
        }
        b"sprs" => {
            if !raw.len().is_multiple_of(2) {
                return Err(bad(
                    "sparse list sizes come in (list, size) pairs; the count is odd",
                ));
            }
            let mut sizes = vec![0u64; nlist as usize];
            let mut prev: Option<u64> = None;
            for pair in raw.chunks_exact(2) {
                let (list, n) = (pair[0], pair[1]);
                if list >= nlist || prev.is_some_and(|p| list <= p) {
                    return Err(bad(format!(
                        "sparse list number {list} is out of order or out of range"
                    )));
                }
                prev = Some(list);
                sizes[list as usize] = n;
            }
            sizes
        }
        other => {
            return Err(bad(format!(
                "unknown list size encoding `{}`",
                String::from_utf8_lossy(other)
            )))
        }
    };
    let sum = sizes.iter().try_fold(0u64, |a, &s| a.checked_add(s));
    if sum != Some(h.ntotal) {
        return Err(bad(format!(
            "list sizes add up to {}, but the header says ntotal = {}",
            sum.map_or("an overflow".into(), |s| s.to_string()),
            h.ntotal
        )));
    }
    // Every list must be in the input before the image is allocated (each size is at most
    // ntotal, so none of these products overflows).
    let mut at = c.at;
    for (l, &n) in sizes.iter().enumerate() {
        if n == 0 {
            continue;
        }
        for (bytes, what) in [(n * code_size, "vectors"), (n * 8, "ids")] {
            match at.checked_add(bytes) {
                Some(end) if end <= len => at = end,
                _ => {
                    return Err(FormatError::Truncated {
                        what: format!("the {what} of list {l}"),
                        needed: at.saturating_add(bytes),
                        actual: len,
                    })
                }
            }
        }
    }

    let (nlist, ntotal) = (nlist as usize, h.ntotal as usize);
    let meta = serde_json::to_vec(&imported_metadata(dim, h.ntotal))
        .map_err(|e| FormatError::BadMetadata(e.to_string()))?;
    let plan = Plan::new(dim, nlist, ntotal, meta.len())
        .ok_or_else(|| bad("the index is too large for this machine's address space"))?;
    let mut image = AlignedBytes::zeroed(plan.file_len as usize);
    let out = image.as_mut_slice();
    out[plan.range(SectionKind::Centroids)].copy_from_slice(&centroids);
    drop(centroids);
    let offsets = plan.range(SectionKind::ListOffsets);
    let mut running = 0u64;
    for (l, &n) in sizes.iter().enumerate() {
        running += n;
        let at = offsets.start + (l + 1) * 8;
        out[at..at + 8].copy_from_slice(&running.to_le_bytes());
    }

    // The lists, in storage order, straight into their place.
    let (vectors, ids) = (
        plan.range(SectionKind::Vectors),
        plan.range(SectionKind::Ids),
    );
    let row = dim * 4;
    let (mut pos, mut reported) = (0usize, c.at);
    for (l, &n) in sizes.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let n = n as usize;
        let v = vectors.start + pos * row;
        c.fill(
            &mut out[v..v + n * row],
            &format!("the vectors of list {l}"),
        )?;
        let i = ids.start + pos * 8;
        c.fill(&mut out[i..i + n * 8], &format!("the ids of list {l}"))?;
        pos += n;
        if c.at - reported >= PROGRESS_STEP {
            progress(c.at, len);
            reported = c.at;
        }
    }

    // The checks (and messages) of `IndexParts::validate`.
    let centroid_values = &out[plan.range(SectionKind::Centroids)];
    if let Some(i) = kbi::le_floats(centroid_values).position(|v| !v.is_finite()) {
        return Err(bad(format!("centroid value {i} is not finite")));
    }
    if let Some(i) = kbi::le_floats(&out[vectors.clone()]).position(|v| !v.is_finite()) {
        let row_at = (i / dim) as u64;
        let mut start = 0u64;
        for (l, &n) in sizes.iter().enumerate() {
            if row_at < start + n {
                let within = i - start as usize * dim;
                return Err(bad(format!("list {l} value {within} is not finite")));
            }
            start += n;
        }
    }

    // Norms, as `kbi::encode` computes them.
    let norms = |out: &mut [u8], rows: std::ops::Range<usize>, to: std::ops::Range<usize>| {
        let (src, dst) = out.split_at_mut(to.start);
        for (r, n) in src[rows]
            .chunks_exact(row)
            .zip(dst[..to.len()].chunks_exact_mut(4))
        {
            n.copy_from_slice(&kbi::squared_norm(kbi::le_floats(r)).to_le_bytes());
        }
    };
    norms(
        out,
        plan.range(SectionKind::Centroids),
        plan.range(SectionKind::CentroidNorms),
    );
    norms(out, vectors, plan.range(SectionKind::VectorNorms));
    out[plan.range(SectionKind::Metadata)].copy_from_slice(&meta);
    kbi::seal(out, &plan, dim, h.metric, h.nprobe, nlist, ntotal, 0);
    Ok(image)
}

/// Bytes read between progress reports.
const PROGRESS_STEP: u64 = 4 << 20;

/// Reads the faiss IVF-Flat file at `path` into a `.kbi` image (see [`read_image`]).
pub(crate) fn read_file(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AlignedBytes, FormatError> {
    let file = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let len = file.metadata().map_err(|e| FormatError::io(path, e))?.len();
    // Small fields come through the buffer; a list's bytes bypass it, straight into the image.
    let reader = std::io::BufReader::with_capacity(64 << 10, file);
    read_image(reader, len, Some(path), progress)
}

/// Parses a faiss IVF-Flat index held in memory.
pub fn read_faiss_index(bytes: &[u8]) -> Result<IndexParts, FormatError> {
    if bytes.len() >= 4 && !looks_like_faiss(bytes) {
        return Err(super::unknown_format(bytes));
    }
    let image = read_image(bytes, bytes.len() as u64, None, &mut |_, _| {})?;
    kbi::decode(image.as_slice())
}
