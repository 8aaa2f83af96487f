//! The native `.kbi` format for IVF-PQ FastScan indexes ([`PqParts`]): format version 2, the
//! same page-aligned, checksummed sections as an IVF-Flat `.kbi` ([`super::kbi`]), with the
//! product quantizer's codebooks and packed 4-bit codes in place of the vectors and their norms.
//!
//! ```text
//! offset 0     header page (4096 bytes), little-endian:
//!   0  magic "KNNBLEND"          8  version u32 (= 2)   12 header_len u32 (= PQ_HEADER_LEN)
//!   16 dim u32                   20 metric u32 (0 L2, 1 IP)  24 element u32 (0 f32)
//!   28 nprobe u32                32 nlist u64          40 ntotal u64
//!   48 file_len u64              56 section_count u32 (7)    60 kind u32 (1 IVF-PQ FastScan)
//!   64 M u32                     68 nbits u32 (4)      72 bbs u32 (multiple of 32)
//!   76 by_residual u32 (0, 1)    80 refine u32 (0 none, 1 RFlat)
//!   84 k_factor f32 (refine: finite, >= 1; none: 0)
//!   88 implem i32                92 reserved u32 (0)   96 qbs2 u64
//!   104 section table: 7 × { kind u32, reserved u32, offset u64, len u64, xxh3_64 u64 }
//!   328 header checksum: xxh3_64 of bytes 0..328
//! then, each at a 4096-aligned offset, in this order (section kinds in brackets):
//!   [1]  centroids       nlist × dim f32
//!   [8]  codebooks       M × 16 × (dim / M) f32 (ProductQuantizer::codebooks, unchanged)
//!   [3]  list offsets    (nlist + 1) u64, offsets[0] = 0, non-decreasing, offsets[nlist] = ntotal
//!   [9]  packed codes    list by list, list i's ceil(n_i / bbs) blocks of bbs × ceil(M / 2)
//!                        bytes in faiss's FastScan block layout (PqList::codes, unchanged),
//!                        where n_i = offsets[i + 1] − offsets[i]; list i starts at the sum of
//!                        the blocks of the lists before it
//!   [6]  ids             ntotal i64, grouped by list like the codes
//!   [10] refine vectors  ntotal × dim f32 (row r is the vector of id r), empty without RFlat
//!   [7]  metadata        UTF-8 JSON ([`Metadata`](super::Metadata))
//! ```
//!
//! The common prefix (bytes 0..64) is an IVF-Flat header's, with version 2 and the `kind` where
//! version 1 keeps its (zero) flags: a reader of version 1 files refuses these with "unsupported
//! .kbi format version 2", and this build's IVF-Flat reader
//! ([`KbiLayout::parse`](super::KbiLayout::parse), hence
//! [`IvfIndex::open`](crate::index::IvfIndex::open) and [`read_header`](super::read_header))
//! refuses them by name. Flat files are still written as version 1, byte for byte as before.
//!
//! Every length is checked before it is used: the header alone bounds every section (all but
//! the packed codes exactly; those to whole blocks within what `ntotal` and `nlist` allow), and
//! once the list offsets are checked the codes must be exactly the blocks the lists take. The
//! checksums, finite floats and, with a refinement, ids that number its rows (`0..ntotal`, each
//! once) are checked as the faiss reader checks them.
//!
//! [`read_pq_kbi`] reads a file into owned [`PqParts`];
//! [`PqIndex::open`](crate::index::PqIndex::open) serves it straight from a memory map, as
//! IVF-Flat `.kbi` files are served. [`write_pq_kbi`] writes atomically, like [`write_kbi`](super::write_kbi).

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use super::aligned::AlignedBytes;
use super::kbi::{
    self, check_list_offsets, le_floats, metadata_from, place, put_entry, read_table, u32_at,
    u64_at, verify_section, SectionEntry, Values, ELEMENT_F32, ENTRY_LEN, MAX_METADATA, PAGE,
};
use super::parts::Metric;
use super::pq::{ids_cover, PqList, PqParts, ProductQuantizer, RefineFlat, PQ_KSUB, PQ_NBITS};
use super::FormatError;

/// Format version of IVF-PQ FastScan `.kbi` files (IVF-Flat files are
/// [`kbi::VERSION`]).
pub const PQ_VERSION: u32 = 2;
/// The `kind` of an IVF-PQ FastScan `.kbi` (4-bit codes, optionally refined).
pub const KIND_IVF_PQ_FASTSCAN: u32 = 1;
/// Bytes of a version 2 header that carry meaning (the rest of the first page is zero).
pub const PQ_HEADER_LEN: usize = 336;
const TABLE_AT: usize = 104;
const HEADER_SUM_AT: usize = TABLE_AT + PQ_SECTION_COUNT * ENTRY_LEN;
/// Largest block of packed codes accepted (`bbs`, vectors per block), as the faiss reader.
pub const MAX_BBS: u64 = 1 << 16;

/// The sections of an IVF-PQ FastScan `.kbi`, in file order. Sections that hold what an
/// IVF-Flat file's do share its kind numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum PqSectionKind {
    /// `nlist × dim` f32.
    Centroids = 1,
    /// `M × 16 × dim / M` f32.
    Codebooks = 8,
    /// `nlist + 1` u64.
    ListOffsets = 3,
    /// The lists' packed codes, whole blocks.
    Codes = 9,
    /// `ntotal` i64.
    Ids = 6,
    /// `ntotal × dim` f32, or empty.
    RefineVectors = 10,
    /// JSON.
    Metadata = 7,
}

/// Number of sections of an IVF-PQ FastScan `.kbi`.
pub const PQ_SECTION_COUNT: usize = 7;

impl PqSectionKind {
    /// All sections in file order.
    pub const ALL: [PqSectionKind; PQ_SECTION_COUNT] = [
        PqSectionKind::Centroids,
        PqSectionKind::Codebooks,
        PqSectionKind::ListOffsets,
        PqSectionKind::Codes,
        PqSectionKind::Ids,
        PqSectionKind::RefineVectors,
        PqSectionKind::Metadata,
    ];

    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            PqSectionKind::Centroids => "centroids",
            PqSectionKind::Codebooks => "codebooks",
            PqSectionKind::ListOffsets => "list offsets",
            PqSectionKind::Codes => "packed codes",
            PqSectionKind::Ids => "ids",
            PqSectionKind::RefineVectors => "refine vectors",
            PqSectionKind::Metadata => "metadata",
        }
    }

    fn position(self) -> usize {
        Self::ALL
            .iter()
            .position(|&k| k == self)
            .expect("every kind is in ALL")
    }

    fn values(self) -> Values {
        match self {
            PqSectionKind::Centroids | PqSectionKind::Codebooks | PqSectionKind::RefineVectors => {
                Values::Finite
            }
            _ => Values::Any,
        }
    }
}

/// A validated version 2 header: every field in range and every section inside the file,
/// aligned, ordered and of the size the header implies (the packed codes within bounds; their
/// exact size follows from the list offsets, see [`decode_pq_kbi`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PqKbiLayout {
    /// Vector dimension.
    pub dim: usize,
    /// Metric.
    pub metric: Metric,
    /// Stored n_probe.
    pub nprobe: u32,
    /// Number of lists.
    pub nlist: usize,
    /// Number of vectors.
    pub ntotal: usize,
    /// Sub-quantizers (faiss `M`).
    pub m: usize,
    /// Bits per code (always [`PQ_NBITS`]).
    pub nbits: usize,
    /// Vectors per block of packed codes.
    pub bbs: usize,
    /// Whether the codes encode residuals from the list's centroid.
    pub by_residual: bool,
    /// `k_factor` of the flat refinement, if the index has one.
    pub k_factor: Option<f32>,
    /// faiss's FastScan implementation choice (see [`PqParts::implem`]).
    pub implem: i32,
    /// faiss's query batching (see [`PqParts::qbs2`]).
    pub qbs2: u64,
    /// Length of the whole file.
    pub file_len: u64,
    /// Sections in [`PqSectionKind::ALL`] order.
    pub sections: [SectionEntry; PQ_SECTION_COUNT],
}

/// Does `bytes` start like an IVF-PQ FastScan `.kbi` (magic and format version 2)?
pub fn looks_like_pq_kbi(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && bytes.starts_with(kbi::MAGIC) && u32_at(bytes, 8) == PQ_VERSION
}

/// Byte sizes of the sections whose sizes the header fixes (the packed codes excepted, whose
/// entry is 0 here); `None` on overflow.
fn section_sizes(
    dim: u64,
    nlist: u64,
    ntotal: u64,
    refine: bool,
    metadata: u64,
) -> Option<[u64; PQ_SECTION_COUNT]> {
    Some([
        nlist.checked_mul(dim)?.checked_mul(4)?,
        (PQ_KSUB as u64).checked_mul(dim)?.checked_mul(4)?,
        nlist.checked_add(1)?.checked_mul(8)?,
        0,
        ntotal.checked_mul(8)?,
        if refine {
            ntotal.checked_mul(dim)?.checked_mul(4)?
        } else {
            0
        },
        metadata,
    ])
}

impl PqKbiLayout {
    /// Reads and validates the header of an IVF-PQ FastScan `.kbi` held in `bytes` (the whole
    /// file). Does not read section contents.
    pub fn parse(bytes: &[u8]) -> Result<PqKbiLayout, FormatError> {
        Self::parse_header(bytes, bytes.len() as u64)
    }

    /// [`parse`](Self::parse) from the file's first bytes alone: `head` holds at least the
    /// first [`PQ_HEADER_LEN`] bytes of a file of `file_len` bytes (all of it if it is shorter).
    /// Every section is checked against `file_len`, none is read.
    pub fn parse_header(head: &[u8], file_len: u64) -> Result<PqKbiLayout, FormatError> {
        let (bytes, actual) = (head, file_len);
        if bytes.len() < 8 || &bytes[..8] != kbi::MAGIC {
            return Err(super::unknown_format(bytes));
        }
        if bytes.len() < PQ_HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "the header".into(),
                needed: PQ_HEADER_LEN as u64,
                actual: actual.min(bytes.len() as u64),
            });
        }
        let version = u32_at(bytes, 8);
        if version != PQ_VERSION {
            return Err(if version == kbi::VERSION {
                FormatError::field(
                    "version",
                    version,
                    "this .kbi is an IVF-Flat index, not an IVF-PQ FastScan one; open it with IvfIndex::open",
                )
            } else {
                FormatError::UnsupportedVersion {
                    found: version,
                    supported: PQ_VERSION,
                }
            });
        }
        let stored = u64_at(bytes, HEADER_SUM_AT);
        let computed = xxh3_64(&bytes[..HEADER_SUM_AT]);
        if stored != computed {
            return Err(FormatError::Checksum {
                section: "header",
                stored,
                computed,
            });
        }
        let header_len = u32_at(bytes, 12);
        if header_len as usize != PQ_HEADER_LEN {
            return Err(FormatError::field(
                "header_len",
                header_len,
                format!("must be {PQ_HEADER_LEN}"),
            ));
        }
        let kind = u32_at(bytes, 60);
        if kind != KIND_IVF_PQ_FASTSCAN {
            return Err(FormatError::field(
                "kind",
                kind,
                format!(
                    "unknown index kind (this build reads {KIND_IVF_PQ_FASTSCAN}, IVF-PQ FastScan)"
                ),
            ));
        }
        let kbi::SharedFields {
            dim,
            metric,
            nprobe,
            nlist,
            ntotal,
        } = kbi::shared_fields(bytes, actual, PQ_SECTION_COUNT)?;
        let m = u32_at(bytes, 64) as u64;
        if m == 0 || !dim.is_multiple_of(m) {
            return Err(FormatError::field(
                "M",
                m,
                format!("must divide dim = {dim} (sub-vectors of equal length)"),
            ));
        }
        let nbits = u32_at(bytes, 68);
        if nbits as usize != PQ_NBITS {
            return Err(FormatError::field(
                "nbits",
                nbits,
                format!("FastScan stores {PQ_NBITS}-bit codes only"),
            ));
        }
        let bbs = u32_at(bytes, 72) as u64;
        if bbs == 0 || !bbs.is_multiple_of(32) || bbs > MAX_BBS {
            return Err(FormatError::field(
                "bbs",
                bbs,
                format!("must be a positive multiple of 32, at most {MAX_BBS}"),
            ));
        }
        let by_residual = match u32_at(bytes, 76) {
            0 => false,
            1 => true,
            b => return Err(FormatError::field("by_residual", b, "must be 0 or 1")),
        };
        let k_bits = u32_at(bytes, 84);
        let k_factor = match u32_at(bytes, 80) {
            0 if k_bits == 0 => None,
            0 => {
                return Err(FormatError::field(
                    "k_factor",
                    f32::from_bits(k_bits),
                    "must be 0 in an index without refinement",
                ))
            }
            1 => {
                let k = f32::from_bits(k_bits);
                if !(k.is_finite() && k >= 1.0) {
                    return Err(FormatError::field(
                        "k_factor",
                        k,
                        "must be a finite number of at least 1 (candidates per neighbour)",
                    ));
                }
                Some(k)
            }
            r => {
                return Err(FormatError::field(
                    "refine",
                    r,
                    "must be 0 (none) or 1 (flat refinement)",
                ))
            }
        };
        let implem = u32_at(bytes, 88) as i32;
        let reserved = u32_at(bytes, 92);
        if reserved != 0 {
            return Err(FormatError::field("reserved", reserved, "must be 0"));
        }
        let qbs2 = u64_at(bytes, 96);

        let meta_at = TABLE_AT + PqSectionKind::Metadata.position() * ENTRY_LEN + 16;
        let meta_len = u64_at(bytes, meta_at);
        if meta_len > MAX_METADATA {
            return Err(FormatError::section(
                "metadata",
                format!("{meta_len} bytes exceed the {MAX_METADATA}-byte limit"),
            ));
        }
        let overflow = || {
            FormatError::field(
                "ntotal",
                ntotal,
                format!("sizes overflow with dim {dim} and nlist {nlist}"),
            )
        };
        let expected =
            section_sizes(dim, nlist, ntotal, k_factor.is_some(), meta_len).ok_or_else(overflow)?;
        // Whole blocks: at least the blocks of one list holding every vector, at most one
        // more block per list.
        let block = bbs * m.next_multiple_of(2) / 2;
        let max_blocks = ntotal
            .div_ceil(bbs)
            .checked_add(nlist)
            .ok_or_else(overflow)?;
        let codes_at = PqSectionKind::Codes.position();
        let sections = read_table(
            bytes,
            TABLE_AT,
            PqSectionKind::ALL.map(|k| (k as u32, k.name())),
            |i, len| {
                if i == codes_at {
                    let (min, max) = (
                        ntotal.div_ceil(bbs) as u128 * block as u128,
                        max_blocks as u128 * block as u128,
                    );
                    if !len.is_multiple_of(block) || (len as u128) < min || len as u128 > max {
                        return Err(format!(
                            "length {len} is not whole blocks of {block} bytes for {ntotal} vectors in {nlist} lists (between {min} and {max} bytes)"
                        ));
                    }
                    Ok(())
                } else if len == expected[i] {
                    Ok(())
                } else {
                    Err(format!(
                        "length {len} does not match the header (expected {})",
                        expected[i]
                    ))
                }
            },
            actual,
        )?;
        Ok(PqKbiLayout {
            dim: dim as usize,
            metric,
            nprobe,
            nlist: nlist as usize,
            ntotal: ntotal as usize,
            m: m as usize,
            nbits: PQ_NBITS,
            bbs: bbs as usize,
            by_residual,
            k_factor,
            implem,
            qbs2,
            file_len,
            sections,
        })
    }

    /// The entry of one section.
    pub fn section(&self, kind: PqSectionKind) -> SectionEntry {
        self.sections[kind.position()]
    }

    /// Bytes of one block of packed codes (`bbs × ceil(M / 2)`).
    pub fn block_bytes(&self) -> usize {
        self.bbs * self.m.next_multiple_of(2) / 2
    }
}

/// The error the IVF-Flat reader gives for a version 2 `.kbi` (`head` as for
/// [`KbiLayout::parse_header`](super::KbiLayout::parse_header)): it names the kind of index
/// the file holds, or, if its header is damaged, says what is wrong with it.
pub(super) fn refused_as_flat(head: &[u8], file_len: u64) -> FormatError {
    match PqKbiLayout::parse_header(head, file_len) {
        Ok(l) => FormatError::field(
            "kind",
            KIND_IVF_PQ_FASTSCAN,
            format!(
                "this .kbi is an IVF-PQ FastScan index (PQ{}x4fs{}{}, {} lists, {} vectors of dim {}); only IVF-Flat .kbi files open as an IvfIndex: open it with index::AnyIndex or index::PqIndex",
                l.m,
                if l.by_residual { "r" } else { "" },
                if l.k_factor.is_some() { ",RFlat" } else { "" },
                l.nlist,
                l.ntotal,
                l.dim
            ),
        ),
        Err(e) => e,
    }
}

/// Verifies every section's checksum and that the float sections (centroids, codebooks,
/// refine vectors) hold only finite values. `progress(done, total)` is called after every
/// chunk.
pub fn verify_pq_sections(
    bytes: &[u8],
    layout: &PqKbiLayout,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), FormatError> {
    let total: u64 = layout.sections.iter().map(|s| s.len).sum();
    let mut done = 0u64;
    for (kind, entry) in PqSectionKind::ALL.into_iter().zip(layout.sections) {
        verify_section(
            &bytes[entry.range()],
            kind.name(),
            kind.values(),
            entry.checksum,
            (&mut done, total),
            progress,
        )?;
    }
    Ok(())
}

/// Reads a complete IVF-PQ FastScan `.kbi` image into owned parts. With `verify`, every
/// checksum and float is checked first ([`verify_pq_sections`]); without, only the structure
/// (header, list offsets, code sizes, refined ids), as opening an IVF-Flat `.kbi` without
/// verification does, so the parts may hold non-finite values ([`PqParts::validate`] finds
/// them).
pub fn decode_pq_kbi(bytes: &[u8], verify: bool) -> Result<PqParts, FormatError> {
    let layout = PqKbiLayout::parse(bytes)?;
    if verify {
        verify_pq_sections(bytes, &layout, &mut |_, _| {})?;
    }
    let section = |k: PqSectionKind| &bytes[layout.section(k).range()];
    let offsets: Vec<u64> = section(PqSectionKind::ListOffsets)
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    check_list_offsets(&offsets, layout.ntotal)?;
    let (bbs, block) = (layout.bbs as u64, layout.block_bytes() as u64);
    // Offsets are checked (non-decreasing, at most ntotal), so every sum below is bounded by
    // the section's upper bound, which the header check kept within u64.
    let blocks: u64 = offsets
        .windows(2)
        .map(|w| (w[1] - w[0]).div_ceil(bbs))
        .sum();
    let codes = section(PqSectionKind::Codes);
    if blocks * block != codes.len() as u64 {
        return Err(FormatError::section(
            PqSectionKind::Codes.name(),
            format!(
                "length {} does not match the list sizes ({blocks} blocks of {block} bytes = {})",
                codes.len(),
                blocks * block
            ),
        ));
    }
    let ids = section(PqSectionKind::Ids);
    let mut at = 0usize;
    let lists: Vec<PqList> = offsets
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0] as usize, w[1] as usize);
            let n = ((end - start) as u64).div_ceil(bbs) * block;
            let list = PqList {
                ids: ids[start * 8..end * 8]
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
                codes: codes[at..at + n as usize].to_vec(),
            };
            at += n as usize;
            list
        })
        .collect();
    let refine = match layout.k_factor {
        Some(k_factor) => {
            ids_cover(lists.iter().map(|l| l.ids.as_slice()), layout.ntotal as u64).map_err(
                |m| {
                    FormatError::BadLists(format!(
                        "{m}: the ids of a refined index must be 0..ntotal, each once"
                    ))
                },
            )?;
            Some(RefineFlat {
                vectors: le_floats(section(PqSectionKind::RefineVectors)).collect(),
                k_factor,
            })
        }
        None => None,
    };
    let dim = layout.dim;
    Ok(PqParts {
        dim,
        metric: layout.metric,
        nprobe: layout.nprobe,
        centroids: le_floats(section(PqSectionKind::Centroids)).collect(),
        pq: ProductQuantizer {
            m: layout.m,
            dsub: dim / layout.m,
            codebooks: le_floats(section(PqSectionKind::Codebooks)).collect(),
        },
        by_residual: layout.by_residual,
        bbs: layout.bbs,
        implem: layout.implem,
        qbs2: layout.qbs2,
        lists,
        refine,
        metadata: metadata_from(section(PqSectionKind::Metadata))?,
    })
}

/// Reads the IVF-PQ FastScan `.kbi` at `path` into owned parts, every section verified
/// ([`decode_pq_kbi`]). ([`PqIndex::open`](crate::index::PqIndex::open) serves it from a
/// memory map instead.)
pub fn read_pq_kbi(path: &Path) -> Result<PqParts, FormatError> {
    let bytes = std::fs::read(path).map_err(|e| FormatError::io(path, e))?;
    decode_pq_kbi(&bytes, true)
}

/// Serialises `parts` (validated) into a complete IVF-PQ FastScan `.kbi` image in page-aligned
/// memory. A stored n_probe of 0 is written as 1, as for IVF-Flat.
pub fn encode_pq_kbi(parts: &PqParts) -> Result<AlignedBytes, FormatError> {
    parts.validate()?;
    let bad = |m: String| Err(FormatError::InvalidParts(m));
    if parts.bbs as u64 > MAX_BBS {
        return bad(format!("bbs {} exceeds {MAX_BBS}", parts.bbs));
    }
    let (dim, nlist, ntotal) = (parts.dim, parts.nlist(), parts.ntotal());
    let meta =
        serde_json::to_vec(&parts.metadata).map_err(|e| FormatError::BadMetadata(e.to_string()))?;
    if meta.len() as u64 > MAX_METADATA {
        return bad(format!(
            "metadata is {} bytes, over the {MAX_METADATA}-byte limit",
            meta.len()
        ));
    }
    let too_large = || FormatError::InvalidParts("index too large".into());
    let mut sizes = section_sizes(
        dim as u64,
        nlist as u64,
        ntotal as u64,
        parts.refine.is_some(),
        meta.len() as u64,
    )
    .ok_or_else(too_large)?;
    let code_bytes: usize = parts.lists.iter().map(|l| l.codes.len()).sum();
    sizes[PqSectionKind::Codes.position()] = code_bytes as u64;
    let (offsets, file_len) = place(&sizes).ok_or_else(too_large)?;
    let mut buf = AlignedBytes::zeroed(file_len as usize);
    let out = buf.as_mut_slice();
    let range = |k: PqSectionKind| {
        let i = k.position();
        offsets[i] as usize..(offsets[i] + sizes[i]) as usize
    };
    let put_f32s = |out: &mut [u8], values: &mut dyn Iterator<Item = f32>| {
        for (b, v) in out.chunks_exact_mut(4).zip(values) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    };
    put_f32s(
        &mut out[range(PqSectionKind::Centroids)],
        &mut parts.centroids.iter().copied(),
    );
    put_f32s(
        &mut out[range(PqSectionKind::Codebooks)],
        &mut parts.pq.codebooks.iter().copied(),
    );
    let mut running = 0u64;
    let list_ends = std::iter::once(0u64).chain(parts.lists.iter().map(|l| {
        running += l.ids.len() as u64;
        running
    }));
    for (b, o) in out[range(PqSectionKind::ListOffsets)]
        .chunks_exact_mut(8)
        .zip(list_ends)
    {
        b.copy_from_slice(&o.to_le_bytes());
    }
    let mut at = range(PqSectionKind::Codes).start;
    for l in &parts.lists {
        out[at..at + l.codes.len()].copy_from_slice(&l.codes);
        at += l.codes.len();
    }
    for (b, id) in out[range(PqSectionKind::Ids)]
        .chunks_exact_mut(8)
        .zip(parts.lists.iter().flat_map(|l| l.ids.iter()))
    {
        b.copy_from_slice(&id.to_le_bytes());
    }
    if let Some(r) = &parts.refine {
        put_f32s(
            &mut out[range(PqSectionKind::RefineVectors)],
            &mut r.vectors.iter().copied(),
        );
    }
    out[range(PqSectionKind::Metadata)].copy_from_slice(&meta);

    let mut h = [0u8; PQ_HEADER_LEN];
    h[..8].copy_from_slice(kbi::MAGIC);
    h[8..12].copy_from_slice(&PQ_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(PQ_HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(dim as u32).to_le_bytes());
    let metric: u32 = match parts.metric {
        Metric::L2 => 0,
        Metric::InnerProduct => 1,
    };
    h[20..24].copy_from_slice(&metric.to_le_bytes());
    h[24..28].copy_from_slice(&ELEMENT_F32.to_le_bytes());
    h[28..32].copy_from_slice(&parts.nprobe.max(1).to_le_bytes());
    h[32..40].copy_from_slice(&(nlist as u64).to_le_bytes());
    h[40..48].copy_from_slice(&(ntotal as u64).to_le_bytes());
    h[48..56].copy_from_slice(&file_len.to_le_bytes());
    h[56..60].copy_from_slice(&(PQ_SECTION_COUNT as u32).to_le_bytes());
    h[60..64].copy_from_slice(&KIND_IVF_PQ_FASTSCAN.to_le_bytes());
    h[64..68].copy_from_slice(&(parts.pq.m as u32).to_le_bytes());
    h[68..72].copy_from_slice(&(PQ_NBITS as u32).to_le_bytes());
    h[72..76].copy_from_slice(&(parts.bbs as u32).to_le_bytes());
    h[76..80].copy_from_slice(&u32::from(parts.by_residual).to_le_bytes());
    let (refine, k_bits) = match &parts.refine {
        Some(r) => (1u32, r.k_factor.to_bits()),
        None => (0, 0),
    };
    h[80..84].copy_from_slice(&refine.to_le_bytes());
    h[84..88].copy_from_slice(&k_bits.to_le_bytes());
    h[88..92].copy_from_slice(&parts.implem.to_le_bytes());
    h[96..104].copy_from_slice(&parts.qbs2.to_le_bytes());
    for (i, kind) in PqSectionKind::ALL.into_iter().enumerate() {
        let sum = xxh3_64(&out[range(kind)]);
        put_entry(
            &mut h,
            TABLE_AT,
            i,
            kind as u32,
            (offsets[i], sizes[i], sum),
        );
    }
    let sum = xxh3_64(&h[..HEADER_SUM_AT]);
    h[HEADER_SUM_AT..].copy_from_slice(&sum.to_le_bytes());
    out[..PQ_HEADER_LEN].copy_from_slice(&h);
    debug_assert!(PQ_HEADER_LEN as u64 <= PAGE);
    Ok(buf)
}

/// Encodes `parts` and writes them atomically to `path` (temporary file, fsync, rename,
/// directory fsync). Returns the file size.
pub fn write_pq_kbi(path: &Path, parts: &PqParts) -> Result<u64, FormatError> {
    let image = encode_pq_kbi(parts)?;
    kbi::write_atomic(path, image.as_slice())?;
    Ok(image.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{KbiLayout, Metadata};

    fn small(refine: bool) -> PqParts {
        let (dim, m, bbs) = (6, 3, 32);
        let lists: Vec<PqList> = [3usize, 0, 40]
            .iter()
            .scan(0i64, |next, &n| {
                let ids = (*next..*next + n as i64).collect();
                *next += n as i64;
                Some(PqList {
                    ids,
                    codes: (0..n.div_ceil(bbs) * bbs * 2).map(|i| i as u8).collect(),
                })
            })
            .collect();
        PqParts {
            dim,
            metric: Metric::InnerProduct,
            nprobe: 2,
            centroids: (0..3 * dim).map(|i| i as f32 * 0.5).collect(),
            pq: ProductQuantizer {
                m,
                dsub: dim / m,
                codebooks: (0..16 * dim).map(|i| i as f32 - 3.0).collect(),
            },
            by_residual: true,
            bbs,
            implem: 12,
            qbs2: 7,
            lists,
            refine: refine.then(|| RefineFlat {
                vectors: (0..43 * dim).map(|i| i as f32 * 0.25).collect(),
                k_factor: 2.5,
            }),
            metadata: Metadata {
                features: "test".into(),
                ..Metadata::default()
            },
        }
    }

    #[test]
    fn round_trips_with_and_without_refinement() {
        for refine in [false, true] {
            let p = small(refine);
            let image = encode_pq_kbi(&p).unwrap();
            let bytes = image.as_slice();
            assert!(looks_like_pq_kbi(bytes));
            let layout = PqKbiLayout::parse(bytes).unwrap();
            for s in layout.sections {
                assert!(s.offset.is_multiple_of(PAGE));
            }
            assert_eq!(layout.k_factor, refine.then_some(2.5));
            assert_eq!(decode_pq_kbi(bytes, true).unwrap(), p);
        }
    }

    #[test]
    fn the_flat_reader_refuses_by_name_and_this_one_refuses_flat() {
        let image = encode_pq_kbi(&small(true)).unwrap();
        let err = KbiLayout::parse(image.as_slice()).unwrap_err().to_string();
        assert!(err.contains("an IVF-PQ FastScan index"), "{err}");
        assert!(err.contains("PQ3x4fsr,RFlat"), "{err}");
        let flat = crate::format::IndexParts {
            dim: 2,
            metric: Metric::L2,
            nprobe: 1,
            centroids: vec![0.0; 2],
            lists: vec![crate::format::ListParts {
                ids: vec![0],
                vectors: vec![1.0, 2.0],
            }],
            metadata: Metadata::default(),
        };
        let flat = kbi::encode(&flat).unwrap();
        assert!(!looks_like_pq_kbi(flat.as_slice()));
        let err = decode_pq_kbi(flat.as_slice(), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("IVF-Flat"), "{err}");
    }

    #[test]
    fn codes_that_do_not_fit_the_lists_are_refused() {
        // Move one vector from list 2 to list 1: the offsets stay valid and the codes stay
        // within the header's bounds, but list 1 now needs a block the file does not hold.
        // The offsets' checksum is rewritten, so only the size rule can catch it.
        let p = small(false);
        let mut b = encode_pq_kbi(&p).unwrap().as_slice().to_vec();
        let l = PqKbiLayout::parse(&b).unwrap();
        let o = l.section(PqSectionKind::ListOffsets);
        // Lists of 3, 1, 39 vectors: 1 + 1 + 2 blocks, where the file holds 1 + 0 + 2.
        let at = o.offset as usize;
        b[at + 16..at + 24].copy_from_slice(&4u64.to_le_bytes());
        let sum = xxh3_64(&b[o.range()]);
        let e = TABLE_AT + PqSectionKind::ListOffsets.position() * ENTRY_LEN;
        b[e + 24..e + 32].copy_from_slice(&sum.to_le_bytes());
        let hs = xxh3_64(&b[..HEADER_SUM_AT]);
        b[HEADER_SUM_AT..PQ_HEADER_LEN].copy_from_slice(&hs.to_le_bytes());
        let err = decode_pq_kbi(&b, true).unwrap_err().to_string();
        assert!(err.contains("does not match the list sizes"), "{err}");
    }
}
