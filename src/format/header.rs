//! [`IndexHeader`]: what an index file declares about itself, read from its first bytes, so
//! cheap checks (dimension, metric, feature kind) can refuse a file before anything large is
//! read, verified or allocated.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use super::kbi::{self, KbiLayout, SectionKind, PAGE};
use super::{faiss, FileKind, FormatError, Metadata, Metric};

/// What an index declares: its kind, shape, metric and metadata.
///
/// [`read_header`] reads it from a file's first page (and, for a `.kbi`, its metadata
/// section); [`IvfIndex::header`](crate::index::IvfIndex::header) gives the same summary of an
/// index already open or built in memory. The live loader runs its
/// [`header_validator`](crate::live::LiveConfig::header_validator) on it before it reads the
/// rest of a file. (Non-exhaustive: later versions may declare more.)
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct IndexHeader {
    /// Native `.kbi` or faiss (an index built in memory reports `.kbi`).
    pub kind: FileKind,
    /// The index type: IVF-Flat or IVF-PQ FastScan.
    pub structure: IndexStructure,
    /// Vector dimension.
    pub dim: usize,
    /// Distance metric.
    pub metric: Metric,
    /// Number of inverted lists.
    pub nlist: usize,
    /// Number of stored vectors.
    pub ntotal: usize,
    /// The n_probe stored in the file (informational).
    pub nprobe: u32,
    /// Size of the file in bytes (0 for an index built in memory).
    pub file_bytes: u64,
    /// What the vectors are: a `.kbi`'s metadata section; for a faiss file, which stores none,
    /// the metadata its import carries (the feature kind inferred from the dimension, such as
    /// `rvc-v2-768`, and the file name in `sources`).
    pub metadata: Metadata,
}

/// The index types knnblend serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexStructure {
    /// IVF-Flat (faiss `IVF{n},Flat`, RVC's index): exact vectors in inverted lists.
    IvfFlat,
    /// IVF-PQ FastScan with 4-bit codes (faiss `IVF{n},PQ{M}x4fs`), `refined` when wrapped in
    /// flat refinement (`,RFlat`).
    IvfPqFastScan {
        /// The exact vectors are kept for re-ranking (faiss `IndexRefineFlat`).
        refined: bool,
    },
}

impl IndexStructure {
    /// A short name for messages: `IVF-Flat`, `IVF-PQ FastScan`, `IVF-PQ FastScan + RFlat`.
    pub fn name(self) -> &'static str {
        match self {
            IndexStructure::IvfFlat => "IVF-Flat",
            IndexStructure::IvfPqFastScan { refined: false } => "IVF-PQ FastScan",
            IndexStructure::IvfPqFastScan { refined: true } => "IVF-PQ FastScan + RFlat",
        }
    }
}

/// Reads what the index file at `path` declares, checked as opening it checks it, without
/// reading its vectors: for a `.kbi` the header page (validated like [`KbiLayout::parse`],
/// every section checked against the file's length) and the metadata section (its checksum
/// verified, at most [`kbi::MAX_METADATA`] bytes); for a faiss file the bytes up to its coarse
/// quantizer's header (the quantizer's metric compared with the index's). A faiss file that
/// holds no vectors is refused here ([`FormatError::TrainedOnly`]). Allocates one page and the
/// metadata.
pub fn read_header(path: &Path) -> Result<IndexHeader, FormatError> {
    let io = |e| FormatError::io(path, e);
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_dir() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "is a directory, not an index file",
        )));
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_bytes = file.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(PAGE as usize);
    (&mut file).take(PAGE).read_to_end(&mut head).map_err(io)?;
    match super::sniff_bytes(&head)? {
        FileKind::Kbi => {
            let (entry, header) = if super::kbi_pq::looks_like_pq_kbi(&head) {
                let l = super::kbi_pq::PqKbiLayout::parse_header(&head, file_bytes)?;
                let entry = l.section(super::kbi_pq::PqSectionKind::Metadata);
                let structure = IndexStructure::IvfPqFastScan {
                    refined: l.k_factor.is_some(),
                };
                (
                    entry,
                    (structure, l.dim, l.metric, l.nlist, l.ntotal, l.nprobe),
                )
            } else {
                let l = KbiLayout::parse_header(&head, file_bytes)?;
                let entry = l.section(SectionKind::Metadata);
                (
                    entry,
                    (
                        IndexStructure::IvfFlat,
                        l.dim,
                        l.metric,
                        l.nlist,
                        l.ntotal,
                        l.nprobe,
                    ),
                )
            };
            let (structure, dim, metric, nlist, ntotal, nprobe) = header;
            let mut data = vec![0u8; entry.len as usize];
            file.seek(SeekFrom::Start(entry.offset)).map_err(io)?;
            file.read_exact(&mut data).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    FormatError::Truncated {
                        what: "section `metadata` (the file became shorter while it was read)"
                            .into(),
                        needed: entry.offset + entry.len,
                        actual: file_bytes,
                    }
                } else {
                    io(e)
                }
            })?;
            let computed = xxh3_64(&data);
            if computed != entry.checksum {
                return Err(FormatError::Checksum {
                    section: SectionKind::Metadata.name(),
                    stored: entry.checksum,
                    computed,
                });
            }
            Ok(IndexHeader {
                kind: FileKind::Kbi,
                structure,
                dim,
                metric,
                nlist,
                ntotal,
                nprobe,
                file_bytes,
                metadata: kbi::metadata_from(&data)?,
            })
        }
        FileKind::Faiss => {
            let (h, structure, from) = if super::looks_like_faiss_fastscan(&head) {
                let (h, refined) = super::faiss_fastscan::read_header(&head)?;
                let from = super::faiss_fastscan::imported_from(refined);
                (h, IndexStructure::IvfPqFastScan { refined }, from)
            } else {
                let from = faiss::IVF_FLAT_FROM;
                (faiss::read_header(&head)?, IndexStructure::IvfFlat, from)
            };
            if h.ntotal == 0 {
                return Err(FormatError::TrainedOnly);
            }
            let mut metadata = faiss::imported_metadata_from(h.dim, h.ntotal, from);
            metadata.sources.extend(imported_source(path));
            Ok(IndexHeader {
                kind: FileKind::Faiss,
                structure,
                dim: h.dim,
                metric: h.metric,
                nlist: h.nlist as usize,
                ntotal: h.ntotal as usize,
                nprobe: h.nprobe,
                file_bytes,
                metadata,
            })
        }
    }
}

/// The `sources` entry of an index imported from the faiss file at `path`: its file name.
pub(crate) fn imported_source(path: &Path) -> Option<String> {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
}
