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
//! Every length is checked against the bytes that remain before anything is allocated, so a
//! hostile file cannot make the reader allocate more than its own size.

use super::parts::{IndexParts, ListParts, Metadata, Metric, MAX_DIM, MAX_NLIST, MAX_NTOTAL};
use super::FormatError;

/// faiss `MetricType` codes.
const METRIC_INNER_PRODUCT: i32 = 0;
const METRIC_L2: i32 = 1;

/// Human names for the faiss fourccs we refuse, so the error says what the file is.
fn faiss_type_name(code: &[u8; 4]) -> Option<&'static str> {
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

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], FormatError> {
        let end = (self.at as u64)
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len() as u64)
            .ok_or_else(|| FormatError::Truncated {
                what: what.to_string(),
                needed: (self.at as u64).saturating_add(n),
                actual: self.bytes.len() as u64,
            })? as usize;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn fourcc(&mut self, what: &str) -> Result<[u8; 4], FormatError> {
        Ok(self.take(4, what)?.try_into().expect("4 bytes"))
    }
    fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }
    fn i32(&mut self, what: &str) -> Result<i32, FormatError> {
        Ok(i32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4"),
        ))
    }
    fn i64(&mut self, what: &str) -> Result<i64, FormatError> {
        Ok(i64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8"),
        ))
    }
    /// A length-prefixed vector of `elem`-byte items; the length is checked against the input.
    fn vector(&mut self, elem: u64, what: &str) -> Result<&'a [u8], FormatError> {
        let n = self.u64(what)?;
        let bytes = n
            .checked_mul(elem)
            .ok_or_else(|| bad(format!("{what}: length {n} overflows")))?;
        self.take(bytes, what)
    }
}

fn bad(m: impl Into<String>) -> FormatError {
    FormatError::BadFaiss(m.into())
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
        .collect()
}

struct Header {
    d: i32,
    ntotal: i64,
    metric: i32,
}

fn index_header(c: &mut Cursor<'_>, what: &str) -> Result<Header, FormatError> {
    let d = c.i32(what)?;
    let ntotal = c.i64(what)?;
    c.i64(what)?;
    c.i64(what)?;
    c.u8(what)?; // is_trained
    let metric = c.i32(what)?;
    if metric > 1 {
        c.take(4, what)?; // metric_arg
    }
    Ok(Header { d, ntotal, metric })
}

fn metric_of(code: i32) -> Result<Metric, FormatError> {
    match code {
        METRIC_L2 => Ok(Metric::L2),
        METRIC_INNER_PRODUCT => Ok(Metric::InnerProduct),
        m => Err(bad(format!(
            "metric type {m} is not supported (only L2 and inner product)"
        ))),
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

/// Parses a faiss IVF-Flat index held in memory.
pub fn read_faiss_index(bytes: &[u8]) -> Result<IndexParts, FormatError> {
    let mut c = Cursor { bytes, at: 0 };
    let code = c.fourcc("the index type")?;
    if &code != b"IwFl" {
        return Err(match faiss_type_name(&code) {
            Some(name) => FormatError::UnsupportedFaissType {
                fourcc: String::from_utf8_lossy(&code).into_owned(),
                name,
            },
            None => super::unknown_format(bytes),
        });
    }
    let h = index_header(&mut c, "the IVF header")?;
    if h.d <= 0 || h.d as usize > MAX_DIM {
        return Err(FormatError::field(
            "d",
            h.d,
            format!("must be in 1..={MAX_DIM}"),
        ));
    }
    let dim = h.d as usize;
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
    if !matches!(&q, b"IxF2" | b"IxFI" | b"IxFl") {
        return Err(bad(format!(
            "the coarse quantizer is `{}`, not a flat index; only IVF-Flat with a flat quantizer is supported",
            String::from_utf8_lossy(&q)
        )));
    }
    let qh = index_header(&mut c, "the quantizer header")?;
    if qh.d != h.d || qh.ntotal as u64 != nlist {
        return Err(bad(format!(
            "the quantizer has d = {} and {} centroids, but the index has d = {} and nlist = {nlist}",
            qh.d, qh.ntotal, h.d
        )));
    }
    let centroids = c.vector(4, "the centroids")?;
    if centroids.len() as u64 != nlist * dim as u64 * 4 {
        return Err(bad(format!(
            "{} centroid values, expected nlist × d = {}",
            centroids.len() / 4,
            nlist * dim as u64
        )));
    }
    let centroids = floats(centroids);

    let map_type = c.u8("the direct map")?;
    c.vector(8, "the direct map")?;
    match map_type {
        0 | 1 => {}
        2 => {
            c.vector(16, "the direct map hashtable")?;
        }
        t => return Err(bad(format!("unknown direct map type {t}"))),
    }

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
    let raw = c.vector(8, "the list sizes")?;
    let raw: Vec<u64> = raw
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
        .collect();
    let mut sizes = vec![0u64; 0];
    match &list_type {
        b"full" => {
            if raw.len() as u64 != nlist {
                return Err(bad(format!("{} list sizes for {nlist} lists", raw.len())));
            }
            sizes = raw;
        }
        b"sprs" => {
            if !raw.len().is_multiple_of(2) {
                return Err(bad(
                    "sparse list sizes come in (list, size) pairs; the count is odd",
                ));
            }
            sizes.resize(nlist as usize, 0);
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
        }
        other => {
            return Err(bad(format!(
                "unknown list size encoding `{}`",
                String::from_utf8_lossy(other)
            )))
        }
    }
    let sum = sizes.iter().try_fold(0u64, |a, &s| a.checked_add(s));
    if sum != Some(h.ntotal as u64) {
        return Err(bad(format!(
            "list sizes add up to {}, but the header says ntotal = {}",
            sum.map_or("an overflow".into(), |s| s.to_string()),
            h.ntotal
        )));
    }
    let mut lists = Vec::with_capacity(nlist as usize);
    for (l, &n) in sizes.iter().enumerate() {
        if n == 0 {
            lists.push(ListParts::default());
            continue;
        }
        let codes = c.take(n * code_size, &format!("the vectors of list {l}"))?;
        let ids = c.take(n * 8, &format!("the ids of list {l}"))?;
        lists.push(ListParts {
            vectors: floats(codes),
            ids: ids
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8")))
                .collect(),
        });
    }
    let parts = IndexParts {
        dim,
        metric,
        nprobe: nprobe.clamp(1, u32::MAX as u64) as u32,
        centroids,
        lists,
        metadata: Metadata {
            features: inferred_features(dim),
            frames: h.ntotal as u64,
            extra: [
                ("imported_from".to_string(), "faiss IndexIVFFlat".into()),
                ("features_inferred_from_dim".to_string(), true.into()),
            ]
            .into_iter()
            .collect(),
            ..Metadata::default()
        },
    };
    parts.validate().map_err(|e| match e {
        FormatError::InvalidParts(m) => bad(m),
        e => e,
    })?;
    Ok(parts)
}
