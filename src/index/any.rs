//! [`AnyIndex`]: an index of either type knnblend serves, as the live runtime, the plugin, the
//! CLI and the C ABI hold it. [`AnyIndex::open`] picks the type from the file.

use std::path::Path;

use super::{IvfIndex, OpenOptions, PqIndex};
use crate::format::{self, FileKind, FormatError, IndexHeader, IndexStructure, Metadata, Metric};

/// An IVF-Flat ([`IvfIndex`]) or IVF-PQ FastScan ([`PqIndex`]) index.
// Held once per loaded voice behind an `Arc`; boxing the larger variant would add a pointer
// chase to every search for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyIndex {
    /// IVF-Flat: exact vectors (RVC's `added_*.index`, `.kbi` version 1).
    Flat(IvfIndex),
    /// IVF-PQ FastScan, optionally refined (faiss `IVF…,PQ…x4fs[,RFlat]`, `.kbi` version 2).
    Pq(PqIndex),
}

impl From<IvfIndex> for AnyIndex {
    fn from(i: IvfIndex) -> Self {
        AnyIndex::Flat(i)
    }
}

impl From<PqIndex> for AnyIndex {
    fn from(i: PqIndex) -> Self {
        AnyIndex::Pq(i)
    }
}

macro_rules! both {
    ($self:expr, $i:ident => $e:expr) => {
        match $self {
            AnyIndex::Flat($i) => $e,
            AnyIndex::Pq($i) => $e,
        }
    };
}

impl AnyIndex {
    /// Opens a `.kbi` (memory-mapped) or a faiss file (read into memory) of either type,
    /// fully validated.
    pub fn open(path: &Path) -> Result<AnyIndex, FormatError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens an index with the given options; the type is read from the file's header.
    pub fn open_with(path: &Path, opts: OpenOptions<'_>) -> Result<AnyIndex, FormatError> {
        Ok(match structure_of(path)? {
            IndexStructure::IvfFlat => AnyIndex::Flat(IvfIndex::open_with(path, opts)?),
            IndexStructure::IvfPqFastScan { .. } => AnyIndex::Pq(PqIndex::open_with(path, opts)?),
        })
    }

    /// The IVF-Flat index, if it is one.
    pub fn as_flat(&self) -> Option<&IvfIndex> {
        match self {
            AnyIndex::Flat(i) => Some(i),
            AnyIndex::Pq(_) => None,
        }
    }

    /// The IVF-PQ FastScan index, if it is one.
    pub fn as_pq(&self) -> Option<&PqIndex> {
        match self {
            AnyIndex::Pq(i) => Some(i),
            AnyIndex::Flat(_) => None,
        }
    }

    /// Its type.
    pub fn structure(&self) -> IndexStructure {
        match self {
            AnyIndex::Flat(_) => IndexStructure::IvfFlat,
            AnyIndex::Pq(i) => IndexStructure::IvfPqFastScan {
                refined: i.k_factor().is_some(),
            },
        }
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        both!(self, i => i.dim())
    }
    /// Number of inverted lists.
    pub fn nlist(&self) -> usize {
        both!(self, i => i.nlist())
    }
    /// Number of stored vectors.
    pub fn ntotal(&self) -> usize {
        both!(self, i => i.ntotal())
    }

    /// Number of distinct vectors (stored rows less the copies of a spilled IVF-Flat
    /// index).
    pub fn distinct_vectors(&self) -> usize {
        match self {
            AnyIndex::Flat(i) => i.distinct_vectors(),
            AnyIndex::Pq(i) => i.ntotal(),
        }
    }
    /// Distance metric.
    pub fn metric(&self) -> Metric {
        both!(self, i => i.metric())
    }
    /// The n_probe stored in the file (informational).
    pub fn nprobe(&self) -> u32 {
        both!(self, i => i.nprobe())
    }
    /// What the vectors are.
    pub fn metadata(&self) -> &Metadata {
        both!(self, i => i.metadata())
    }
    /// The file it came from.
    pub fn path(&self) -> Option<&Path> {
        both!(self, i => i.path())
    }
    /// Whether it was opened from a `.kbi` or a faiss file.
    pub fn source_kind(&self) -> FileKind {
        both!(self, i => i.source_kind())
    }
    /// Size of the file on disk (0 for indexes built in memory).
    pub fn file_bytes(&self) -> u64 {
        both!(self, i => i.file_bytes())
    }
    /// Bytes of the in-memory image (mapped or owned).
    pub fn byte_len(&self) -> usize {
        both!(self, i => i.byte_len())
    }
    /// Whether it is served from a memory map.
    pub fn is_mapped(&self) -> bool {
        both!(self, i => i.is_mapped())
    }
    /// What it declares, as [`format::read_header`] reads it from a file.
    pub fn header(&self) -> IndexHeader {
        both!(self, i => i.header())
    }
    /// Advises the kernel that every page will be needed and touches every page.
    pub fn prefault(&self) {
        both!(self, i => i.prefault())
    }
    /// Tries to lock its pages in RAM; returns whether it succeeded (best effort).
    pub fn lock(&mut self) -> bool {
        both!(self, i => i.lock())
    }
    /// Whether [`lock`](Self::lock) succeeded.
    pub fn is_locked(&self) -> bool {
        both!(self, i => i.is_locked())
    }
    /// A one-line description of its type, e.g. `IVF-Flat` or `IVF1024,PQ128x4fs,RFlat
    /// (k_factor 1)`.
    pub fn describe(&self) -> String {
        match self {
            AnyIndex::Flat(_) => "IVF-Flat".into(),
            AnyIndex::Pq(i) => match i.k_factor() {
                Some(k) => format!("{} (IVF-PQ FastScan, k_factor {k})", i.factory()),
                None => format!("{} (IVF-PQ FastScan)", i.factory()),
            },
        }
    }
}

/// The type of the index file at `path`, from its first page.
fn structure_of(path: &Path) -> Result<IndexStructure, FormatError> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if meta.is_dir() {
        // The openers say so in their own words.
        return Ok(IndexStructure::IvfFlat);
    }
    let mut head = [0u8; 12];
    let mut f = std::fs::File::open(path).map_err(|e| FormatError::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match f
            .read(&mut head[n..])
            .map_err(|e| FormatError::io(path, e))?
        {
            0 => break,
            r => n += r,
        }
    }
    let head = &head[..n];
    Ok(
        if format::kbi_pq::looks_like_pq_kbi(head) || format::looks_like_faiss_fastscan(head) {
            IndexStructure::IvfPqFastScan { refined: false }
        } else {
            IndexStructure::IvfFlat
        },
    )
}
