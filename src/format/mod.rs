//! Bytes on disk: the native memory-mappable `.kbi` format, the faiss IVF-Flat reader, the faiss
//! IVF-PQ FastScan reader ([`read_faiss_fastscan`] into [`PqParts`]), and [`read_header`], what
//! an index file declares, read from its first bytes.

mod aligned;
mod atomic;
mod error;
pub mod faiss;
mod faiss_fastscan;
mod header;
pub mod kbi;
pub mod kbi_pq;
mod parts;
mod pq;

use std::path::Path;

pub use aligned::AlignedBytes;
pub use atomic::write_atomically;
pub use error::FormatError;
pub use faiss::read_faiss_index;
pub use faiss_fastscan::{
    looks_like_faiss_fastscan, read_faiss_fastscan, read_faiss_fastscan_file,
};
pub(crate) use header::imported_source;
pub use header::{read_header, IndexHeader, IndexStructure};
pub use kbi::{write_kbi, KbiLayout};
pub use kbi_pq::{
    decode_pq_kbi, encode_pq_kbi, looks_like_pq_kbi, read_pq_kbi, write_pq_kbi, PqKbiLayout,
};
pub use parts::{
    Balance, IndexParts, ListParts, Metadata, Metric, Spill, MAX_DIM, MAX_NLIST, MAX_NTOTAL,
};
pub(crate) use pq::ids_cover;
pub use pq::{pq_recipe, PqList, PqParts, ProductQuantizer, RefineFlat, PQ_KSUB, PQ_NBITS};

/// The kind of an index file, told from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// knnblend's native `.kbi`.
    Kbi,
    /// A faiss index (IVF-Flat is read; other types are refused by name).
    Faiss,
}

impl FileKind {
    /// Name used in CLI/JSON output: `knnblend` or `faiss-ivfflat`.
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Kbi => "knnblend",
            FileKind::Faiss => "faiss-ivfflat",
        }
    }
}

/// Tells the kind of an index from its first bytes.
pub fn sniff_bytes(bytes: &[u8]) -> Result<FileKind, FormatError> {
    if bytes.starts_with(kbi::MAGIC) {
        Ok(FileKind::Kbi)
    } else if faiss::looks_like_faiss(bytes) {
        Ok(FileKind::Faiss)
    } else {
        Err(unknown_format(bytes))
    }
}

/// Tells the kind of an index file from its first bytes.
pub fn sniff(path: &Path) -> Result<FileKind, FormatError> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let n = f.read(&mut head).map_err(|e| FormatError::io(path, e))?;
    sniff_bytes(&head[..n])
}

pub(crate) fn unknown_format(bytes: &[u8]) -> FormatError {
    let head = &bytes[..bytes.len().min(8)];
    FormatError::UnknownFormat {
        found: head
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect(),
    }
}
