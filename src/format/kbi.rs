//! The native `.kbi` format: an IVF-Flat index laid out to be used straight from a memory map.
//!
//! ```text
//! offset 0     header page (4096 bytes), little-endian:
//!   0  magic "KNNBLEND"          8  version u32        12 header_len u32 (= HEADER_LEN)
//!   16 dim u32                   20 metric u32 (0 L2, 1 IP)  24 element u32 (0 f32, 1 f16 reserved)
//!   28 nprobe u32                32 nlist u64          40 ntotal u64
//!   48 file_len u64              56 section_count u32  60 flags u32 (bit 0: spilled)
//!   64 section table: 7 × { kind u32, reserved u32, offset u64, len u64, xxh3_64 u64 }
//!   288 header checksum: xxh3_64 of bytes 0..288
//! then, each at a 4096-aligned offset, in this order:
//!   centroids        nlist × dim f32
//!   centroid norms   nlist f32 (‖c‖²)
//!   list offsets     (nlist + 1) u64, offsets[0] = 0, non-decreasing, offsets[nlist] = ntotal
//!   vectors          ntotal × dim f32, grouped by list (list i is rows offsets[i]..offsets[i+1])
//!   vector norms     ntotal f32 (‖v‖²)
//!   ids              ntotal i64
//!   metadata         UTF-8 JSON ([`Metadata`])
//! ```
//! Every section is covered by its own checksum, the header by one more. Writers never modify a
//! file in place: [`write_kbi`] writes a temporary file in the same directory, syncs it and
//! renames it over the destination, so a reader (or a live memory map) never sees a half-written
//! or truncated file.

use std::io::Write;
use std::path::Path;

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::aligned::AlignedBytes;
use super::parts::{IndexParts, ListParts, Metadata, Metric, MAX_DIM, MAX_NLIST, MAX_NTOTAL};
use super::FormatError;

/// First eight bytes of every `.kbi` file.
pub const MAGIC: &[u8; 8] = b"KNNBLEND";
/// Format version written and read by this build.
pub const VERSION: u32 = 1;
/// Page size all sections are aligned to.
pub const PAGE: u64 = 4096;
/// Bytes of the header that carry meaning (the rest of the first page is zero).
pub const HEADER_LEN: usize = 296;
const TABLE_AT: usize = 64;
pub(super) const ENTRY_LEN: usize = 32;
const HEADER_SUM_AT: usize = TABLE_AT + SECTION_COUNT * ENTRY_LEN;
/// Largest metadata block accepted (16 MiB).
pub const MAX_METADATA: u64 = 16 << 20;

/// Header flag: the index is spilled (some vectors are stored in more than one list; the metadata's
/// `"spill"` entry counts the copies). Readers that do not know it refuse the file, since they
/// would report a vector twice when probing two of its lists.
pub const FLAG_SPILLED: u32 = 1;

/// Element type code for `f32` vectors.
pub const ELEMENT_F32: u32 = 0;
/// Element type code reserved for `f16` vectors.
pub const ELEMENT_F16: u32 = 1;

/// The sections of a `.kbi` file, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum SectionKind {
    /// `nlist × dim` f32.
    Centroids = 1,
    /// `nlist` f32.
    CentroidNorms = 2,
    /// `nlist + 1` u64.
    ListOffsets = 3,
    /// `ntotal × dim` f32.
    Vectors = 4,
    /// `ntotal` f32.
    VectorNorms = 5,
    /// `ntotal` i64.
    Ids = 6,
    /// JSON.
    Metadata = 7,
}

/// Number of sections.
pub const SECTION_COUNT: usize = 7;

impl SectionKind {
    /// All sections in file order.
    pub const ALL: [SectionKind; SECTION_COUNT] = [
        SectionKind::Centroids,
        SectionKind::CentroidNorms,
        SectionKind::ListOffsets,
        SectionKind::Vectors,
        SectionKind::VectorNorms,
        SectionKind::Ids,
        SectionKind::Metadata,
    ];

    /// Name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Centroids => "centroids",
            SectionKind::CentroidNorms => "centroid norms",
            SectionKind::ListOffsets => "list offsets",
            SectionKind::Vectors => "vectors",
            SectionKind::VectorNorms => "vector norms",
            SectionKind::Ids => "ids",
            SectionKind::Metadata => "metadata",
        }
    }

    fn holds_floats(self) -> bool {
        matches!(
            self,
            SectionKind::Centroids
                | SectionKind::CentroidNorms
                | SectionKind::Vectors
                | SectionKind::VectorNorms
        )
    }
}

/// Where one section lies and its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionEntry {
    /// Byte offset from the start of the file (page-aligned).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// xxh3-64 of the section's bytes.
    pub checksum: u64,
}

impl SectionEntry {
    /// The byte range of the section (valid after [`KbiLayout::parse`]).
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..(self.offset + self.len) as usize
    }
}

/// A validated header: every field in range and every section inside the file, aligned,
/// ordered and of the size the header implies.
#[derive(Clone, Debug, PartialEq)]
pub struct KbiLayout {
    /// Vector dimension.
    pub dim: usize,
    /// Metric.
    pub metric: Metric,
    /// Stored n_probe.
    pub nprobe: u32,
    /// Number of lists.
    pub nlist: usize,
    /// Number of stored rows (vectors, and the copies of a spilled index).
    pub ntotal: usize,
    /// Length of the whole file.
    pub file_len: u64,
    /// The header's [`FLAG_SPILLED`] is set.
    pub spilled: bool,
    /// Sections in [`SectionKind::ALL`] order.
    pub sections: [SectionEntry; SECTION_COUNT],
}

pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub(super) fn round_up(x: u64) -> u64 {
    x.div_ceil(PAGE) * PAGE
}

/// Reads and checks a section table of `N` entries of [`ENTRY_LEN`] bytes at `table_at` in the
/// header `bytes` of a file of `actual` bytes: every entry has the expected kind (`kinds`, in
/// file order, with the names used in messages), a page-aligned offset after the header page
/// and the previous section, a length `len_ok(i, len)` accepts (it says why not otherwise), and
/// lies inside the file. The caller has checked that `bytes` holds the table.
pub(super) fn read_table<const N: usize>(
    bytes: &[u8],
    table_at: usize,
    kinds: [(u32, &'static str); N],
    len_ok: impl Fn(usize, u64) -> Result<(), String>,
    actual: u64,
) -> Result<[SectionEntry; N], FormatError> {
    let mut sections = [SectionEntry {
        offset: 0,
        len: 0,
        checksum: 0,
    }; N];
    let mut end = PAGE;
    for (i, (kind, name)) in kinds.into_iter().enumerate() {
        let at = table_at + i * ENTRY_LEN;
        let k = u32_at(bytes, at);
        let entry = SectionEntry {
            offset: u64_at(bytes, at + 8),
            len: u64_at(bytes, at + 16),
            checksum: u64_at(bytes, at + 24),
        };
        if k != kind {
            return Err(FormatError::section(
                name,
                format!("table entry {i} has kind {k}, expected {kind}"),
            ));
        }
        if !entry.offset.is_multiple_of(PAGE) {
            return Err(FormatError::section(
                name,
                format!("offset {} is not page-aligned", entry.offset),
            ));
        }
        if entry.offset < end {
            return Err(FormatError::section(
                name,
                format!(
                    "offset {} overlaps the header or the previous section (which ends at {end})",
                    entry.offset
                ),
            ));
        }
        len_ok(i, entry.len).map_err(|reason| FormatError::section(name, reason))?;
        let stop = entry
            .offset
            .checked_add(entry.len)
            .filter(|&s| s <= actual)
            .ok_or_else(|| FormatError::Truncated {
                what: format!("section `{name}`"),
                needed: entry.offset.saturating_add(entry.len),
                actual,
            })?;
        end = stop;
        sections[i] = entry;
    }
    Ok(sections)
}

/// Writes entry `i` of a section table at `table_at` in the header `h`.
pub(super) fn put_entry(
    h: &mut [u8],
    table_at: usize,
    i: usize,
    kind: u32,
    place: (u64, u64, u64),
) {
    let (offset, len, sum) = place;
    let e = table_at + i * ENTRY_LEN;
    h[e..e + 4].copy_from_slice(&kind.to_le_bytes());
    h[e + 4..e + 8].fill(0);
    h[e + 8..e + 16].copy_from_slice(&offset.to_le_bytes());
    h[e + 16..e + 24].copy_from_slice(&len.to_le_bytes());
    h[e + 24..e + 32].copy_from_slice(&sum.to_le_bytes());
}

/// Places sections of the given sizes one after another, each at the next page boundary after
/// the header page and the previous one: their offsets and the file length (which ends with
/// the last section, unpadded); `None` on overflow or beyond the address space.
pub(super) fn place<const N: usize>(sizes: &[u64; N]) -> Option<([u64; N], u64)> {
    let mut offsets = [0u64; N];
    let mut at = PAGE;
    for i in 0..N {
        offsets[i] = at;
        at = round_up(at.checked_add(sizes[i])?);
    }
    let file_len = offsets[N - 1].checked_add(sizes[N - 1])?;
    usize::try_from(file_len).ok()?;
    Some((offsets, file_len))
}

/// Byte sizes of the sections for the given shape; `None` on overflow.
fn section_sizes(dim: u64, nlist: u64, ntotal: u64, metadata: u64) -> Option<[u64; SECTION_COUNT]> {
    Some([
        nlist.checked_mul(dim)?.checked_mul(4)?,
        nlist.checked_mul(4)?,
        nlist.checked_add(1)?.checked_mul(8)?,
        ntotal.checked_mul(dim)?.checked_mul(4)?,
        ntotal.checked_mul(4)?,
        ntotal.checked_mul(8)?,
        metadata,
    ])
}

impl KbiLayout {
    /// Reads and validates the header of a `.kbi` held in `bytes` (the whole file).
    /// Does not read section contents; see [`verify_sections`] and [`check_list_offsets`].
    pub fn parse(bytes: &[u8]) -> Result<KbiLayout, FormatError> {
        Self::parse_header(bytes, bytes.len() as u64)
    }

    /// [`parse`](Self::parse) from the file's first bytes alone: `head` holds at least the
    /// first [`HEADER_LEN`] bytes of a file of `file_len` bytes (all of it if it is shorter).
    /// Every section is checked against `file_len`, none is read.
    pub fn parse_header(head: &[u8], file_len: u64) -> Result<KbiLayout, FormatError> {
        let (bytes, actual) = (head, file_len);
        if bytes.len() < 8 || &bytes[..8] != MAGIC {
            return Err(super::unknown_format(bytes));
        }
        if bytes.len() < HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "the header".into(),
                needed: HEADER_LEN as u64,
                actual: actual.min(bytes.len() as u64),
            });
        }
        let version = u32_at(bytes, 8);
        if version == super::kbi_pq::PQ_VERSION {
            return Err(super::kbi_pq::refused_as_flat(bytes, actual));
        }
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion {
                found: version,
                supported: VERSION,
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
        if header_len as usize != HEADER_LEN {
            return Err(FormatError::field(
                "header_len",
                header_len,
                format!("must be {HEADER_LEN}"),
            ));
        }
        let SharedFields {
            dim,
            metric,
            nprobe,
            nlist,
            ntotal,
        } = shared_fields(bytes, actual, SECTION_COUNT)?;
        let flags = u32_at(bytes, 60);
        if flags & !FLAG_SPILLED != 0 {
            return Err(FormatError::field("flags", flags, "unknown flags set"));
        }

        let meta_len = u64_at(bytes, TABLE_AT + 6 * ENTRY_LEN + 16);
        if meta_len > MAX_METADATA {
            return Err(FormatError::section(
                "metadata",
                format!("{meta_len} bytes exceed the {MAX_METADATA}-byte limit"),
            ));
        }
        let expected = section_sizes(dim, nlist, ntotal, meta_len).ok_or_else(|| {
            FormatError::field(
                "ntotal",
                ntotal,
                format!("sizes overflow with dim {dim} and nlist {nlist}"),
            )
        })?;
        let sections = read_table(
            bytes,
            TABLE_AT,
            SectionKind::ALL.map(|k| (k as u32, k.name())),
            |i, len| {
                if len == expected[i] {
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
        Ok(KbiLayout {
            dim: dim as usize,
            metric,
            nprobe,
            nlist: nlist as usize,
            ntotal: ntotal as usize,
            file_len,
            spilled: flags & FLAG_SPILLED != 0,
            sections,
        })
    }

    /// The entry of one section.
    pub fn section(&self, kind: SectionKind) -> SectionEntry {
        self.sections[kind as usize - 1]
    }
}

/// Checks list offsets: start at 0, never decrease, end at `ntotal`.
/// `offsets` is the list-offsets section as u64 values.
pub fn check_list_offsets(offsets: &[u64], ntotal: usize) -> Result<(), FormatError> {
    if offsets.first() != Some(&0) {
        return Err(FormatError::BadLists(format!(
            "the first list must start at 0, found {:?}",
            offsets.first()
        )));
    }
    for (i, w) in offsets.windows(2).enumerate() {
        if w[1] < w[0] {
            return Err(FormatError::BadLists(format!(
                "list {i} ends at {} before it starts at {}",
                w[1], w[0]
            )));
        }
    }
    let last = *offsets.last().expect("nlist + 1 >= 2 entries");
    if last != ntotal as u64 {
        return Err(FormatError::BadLists(format!(
            "list sizes add up to {last}, but the header says {ntotal} vectors"
        )));
    }
    Ok(())
}

/// Chunk size for verification (progress is reported per chunk).
const CHUNK: usize = 1 << 20;

/// What a section's values must be, beyond matching its checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Values {
    /// Any bytes.
    Any,
    /// f32 values, all finite.
    Finite,
    /// Squared norms: finite or `+inf`.
    Norms,
}

/// Verifies every section's checksum, that float sections hold only finite values and that
/// the metadata parses. `progress(done, total)` is called after every chunk.
pub fn verify_sections(
    bytes: &[u8],
    layout: &KbiLayout,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), FormatError> {
    let total: u64 = layout.sections.iter().map(|s| s.len).sum();
    let mut done = 0u64;
    for (kind, entry) in SectionKind::ALL.into_iter().zip(layout.sections) {
        let values = match kind {
            SectionKind::CentroidNorms | SectionKind::VectorNorms => Values::Norms,
            k if k.holds_floats() => Values::Finite,
            _ => Values::Any,
        };
        verify_section(
            &bytes[entry.range()],
            kind.name(),
            values,
            entry.checksum,
            (&mut done, total),
            progress,
        )?;
    }
    Ok(())
}

/// Verifies one section, `data`, against its stored `checksum` and its `values`; `done` of
/// `total` bytes are counted on, chunk by chunk, through `progress`.
pub(super) fn verify_section(
    data: &[u8],
    name: &'static str,
    values: Values,
    checksum: u64,
    (done, total): (&mut u64, u64),
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), FormatError> {
    let mut hasher = Xxh3::new();
    for (c, chunk) in data.chunks(CHUNK).enumerate() {
        hasher.update(chunk);
        if values != Values::Any {
            // A squared norm overflows to +inf for vectors whose values are all finite
            // (above about 1.8e19): that is not corruption.
            let norms = values == Values::Norms;
            let bad = |v: f32| !(v.is_finite() || (norms && v == f32::INFINITY));
            if let Some(i) = chunk
                .chunks_exact(4)
                .position(|f| bad(f32::from_le_bytes(f.try_into().expect("4 bytes"))))
            {
                return Err(FormatError::NonFinite {
                    section: name,
                    index: (c * CHUNK / 4 + i) as u64,
                });
            }
        }
        *done += chunk.len() as u64;
        progress(*done, total);
    }
    let computed = hasher.digest();
    if computed != checksum {
        return Err(FormatError::Checksum {
            section: name,
            stored: checksum,
            computed,
        });
    }
    Ok(())
}

/// Parses the metadata section, and checks that it and the header agree on whether the index
/// is spilled.
pub fn parse_metadata(bytes: &[u8], layout: &KbiLayout) -> Result<Metadata, FormatError> {
    let meta = metadata_from(&bytes[layout.section(SectionKind::Metadata).range()])?;
    let spill = meta.check_spill(layout.ntotal as u64)?;
    match (layout.spilled, spill.is_some()) {
        (true, false) => Err(FormatError::BadMetadata(
            "the header marks the index spilled but the metadata has no \"spill\" entry".into(),
        )),
        (false, true) => Err(FormatError::BadMetadata(
            "the metadata has a \"spill\" entry but the header does not mark the index spilled"
                .into(),
        )),
        _ => Ok(meta),
    }
}

/// Parses the bytes of a metadata section (empty: the default metadata).
pub(crate) fn metadata_from(data: &[u8]) -> Result<Metadata, FormatError> {
    if data.is_empty() {
        return Ok(Metadata::default());
    }
    serde_json::from_slice(data).map_err(|e| FormatError::BadMetadata(e.to_string()))
}

/// ‖v‖² as every writer stores it (a left-to-right f32 sum of squares), so indexes made by
/// [`encode`] and by the faiss reader hold the same bits.
#[inline]
pub(crate) fn squared_norm(v: impl Iterator<Item = f32>) -> f32 {
    v.map(|x| x * x).sum::<f32>()
}

/// The little-endian f32 values of `bytes`.
#[inline]
pub(crate) fn le_floats(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// Where the sections of a `.kbi` image of one shape go: [`encode`] and the faiss reader
/// fill them in, then [`seal`] writes the header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    offsets: [u64; SECTION_COUNT],
    sizes: [u64; SECTION_COUNT],
    /// Length of the whole image.
    pub(crate) file_len: u64,
}

impl Plan {
    /// The layout of an image of this shape with `meta_len` bytes of metadata; `None` if its
    /// sizes overflow (or exceed the address space).
    pub(crate) fn new(dim: usize, nlist: usize, ntotal: usize, meta_len: usize) -> Option<Plan> {
        let sizes = section_sizes(dim as u64, nlist as u64, ntotal as u64, meta_len as u64)?;
        let (offsets, file_len) = place(&sizes)?;
        Some(Plan {
            offsets,
            sizes,
            file_len,
        })
    }

    /// The byte range of one section.
    pub(crate) fn range(&self, kind: SectionKind) -> std::ops::Range<usize> {
        let i = kind as usize - 1;
        self.offsets[i] as usize..(self.offsets[i] + self.sizes[i]) as usize
    }
}

/// Writes the header of an image whose sections `plan` places and are already filled in:
/// the shape, every section's checksum, the header's own.
#[allow(clippy::too_many_arguments)]
pub(crate) fn seal(
    out: &mut [u8],
    plan: &Plan,
    dim: usize,
    metric: Metric,
    nprobe: u32,
    nlist: usize,
    ntotal: usize,
    flags: u32,
) {
    let h = &mut out[..HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(dim as u32).to_le_bytes());
    let metric: u32 = match metric {
        Metric::L2 => 0,
        Metric::InnerProduct => 1,
    };
    h[20..24].copy_from_slice(&metric.to_le_bytes());
    h[24..28].copy_from_slice(&ELEMENT_F32.to_le_bytes());
    h[28..32].copy_from_slice(&nprobe.max(1).to_le_bytes());
    h[32..40].copy_from_slice(&(nlist as u64).to_le_bytes());
    h[40..48].copy_from_slice(&(ntotal as u64).to_le_bytes());
    h[48..56].copy_from_slice(&plan.file_len.to_le_bytes());
    h[56..60].copy_from_slice(&(SECTION_COUNT as u32).to_le_bytes());
    h[60..64].copy_from_slice(&flags.to_le_bytes());
    for (i, kind) in SectionKind::ALL.into_iter().enumerate() {
        let sum = xxh3_64(&out[plan.range(kind)]);
        let place = (plan.offsets[i], plan.sizes[i], sum);
        put_entry(&mut out[..HEADER_LEN], TABLE_AT, i, kind as u32, place);
    }
    let sum = xxh3_64(&out[..HEADER_SUM_AT]);
    out[HEADER_SUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

/// Reads a complete, validated image back into owned parts (list by list, in storage order).
pub(crate) fn decode(bytes: &[u8]) -> Result<IndexParts, FormatError> {
    let layout = KbiLayout::parse(bytes)?;
    let section = |k: SectionKind| &bytes[layout.section(k).range()];
    let offsets: Vec<u64> = section(SectionKind::ListOffsets)
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .collect();
    check_list_offsets(&offsets, layout.ntotal)?;
    let (vectors, ids) = (section(SectionKind::Vectors), section(SectionKind::Ids));
    let d = layout.dim;
    let lists = offsets
        .windows(2)
        .map(|w| {
            let (start, end) = (w[0] as usize, w[1] as usize);
            ListParts {
                ids: ids[start * 8..end * 8]
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
                vectors: le_floats(&vectors[start * d * 4..end * d * 4]).collect(),
            }
        })
        .collect();
    Ok(IndexParts {
        dim: d,
        metric: layout.metric,
        nprobe: layout.nprobe,
        centroids: le_floats(section(SectionKind::Centroids)).collect(),
        lists,
        metadata: parse_metadata(bytes, &layout)?,
    })
}

/// Serialises `parts` into a complete `.kbi` image in page-aligned memory.
pub fn encode(parts: &IndexParts) -> Result<AlignedBytes, FormatError> {
    parts.validate()?;
    let dim = parts.dim;
    let nlist = parts.nlist();
    let ntotal = parts.ntotal();
    let meta =
        serde_json::to_vec(&parts.metadata).map_err(|e| FormatError::BadMetadata(e.to_string()))?;
    if meta.len() as u64 > MAX_METADATA {
        return Err(FormatError::InvalidParts(format!(
            "metadata is {} bytes, over the {MAX_METADATA}-byte limit",
            meta.len()
        )));
    }
    let plan = Plan::new(dim, nlist, ntotal, meta.len())
        .ok_or_else(|| FormatError::InvalidParts("index too large".into()))?;
    let mut buf = AlignedBytes::zeroed(plan.file_len as usize);
    let out = buf.as_mut_slice();

    let mut put = |kind: SectionKind, bytes: &mut dyn Iterator<Item = [u8; 8]>, width: usize| {
        let range = plan.range(kind);
        let mut p = range.start;
        for b in bytes {
            out[p..p + width].copy_from_slice(&b[..width]);
            p += width;
        }
        debug_assert_eq!(p, range.end);
    };
    let f32b = |v: f32| {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&v.to_le_bytes());
        b
    };
    let norm = |v: &[f32]| squared_norm(v.iter().copied());
    put(
        SectionKind::Centroids,
        &mut parts.centroids.iter().map(|&v| f32b(v)),
        4,
    );
    put(
        SectionKind::CentroidNorms,
        &mut parts.centroids.chunks_exact(dim).map(|c| f32b(norm(c))),
        4,
    );
    let mut running = 0u64;
    put(
        SectionKind::ListOffsets,
        &mut std::iter::once(0u64)
            .chain(parts.lists.iter().map(|l| {
                running += l.ids.len() as u64;
                running
            }))
            .map(u64::to_le_bytes),
        8,
    );
    put(
        SectionKind::Vectors,
        &mut parts
            .lists
            .iter()
            .flat_map(|l| l.vectors.iter())
            .map(|&v| f32b(v)),
        4,
    );
    put(
        SectionKind::VectorNorms,
        &mut parts
            .lists
            .iter()
            .flat_map(|l| l.vectors.chunks_exact(dim))
            .map(|v| f32b(norm(v))),
        4,
    );
    put(
        SectionKind::Ids,
        &mut parts
            .lists
            .iter()
            .flat_map(|l| l.ids.iter())
            .map(|&i| i.to_le_bytes()),
        8,
    );
    out[plan.range(SectionKind::Metadata)].copy_from_slice(&meta);
    let flags = if parts.metadata.check_spill(ntotal as u64)?.is_some() {
        FLAG_SPILLED
    } else {
        0
    };
    seal(
        out,
        &plan,
        dim,
        parts.metric,
        parts.nprobe,
        nlist,
        ntotal,
        flags,
    );
    Ok(buf)
}

/// Writes `bytes` to `path` atomically (see [`write_atomically`](super::write_atomically)).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    super::write_atomically(path, |f| f.write_all(bytes)).map_err(|e| FormatError::io(path, e))
}

/// Encodes `parts` and writes them atomically to `path`. Returns the file size.
pub fn write_kbi(path: &Path, parts: &IndexParts) -> Result<u64, FormatError> {
    let image = encode(parts)?;
    write_atomic(path, image.as_slice())?;
    Ok(image.len() as u64)
}

/// The header fields a Flat and an IVF-PQ FastScan `.kbi` share (bytes 16..60: dimension,
/// metric, element type, n_probe, list and vector counts, file length, section count), checked
/// the same way for both; `sections` is the section count the kind has.
pub(super) struct SharedFields {
    pub dim: u64,
    pub metric: Metric,
    pub nprobe: u32,
    pub nlist: u64,
    pub ntotal: u64,
}

/// Reads and checks [`SharedFields`] from a header whose magic, version and checksum are
/// already checked, for a file of `actual` bytes.
pub(super) fn shared_fields(
    bytes: &[u8],
    actual: u64,
    sections: usize,
) -> Result<SharedFields, FormatError> {
    let dim = u32_at(bytes, 16) as u64;
    if dim == 0 || dim > MAX_DIM as u64 {
        return Err(FormatError::field(
            "dim",
            dim,
            format!("must be in 1..={MAX_DIM}"),
        ));
    }
    let metric = match u32_at(bytes, 20) {
        0 => Metric::L2,
        1 => Metric::InnerProduct,
        m => {
            return Err(FormatError::field(
                "metric",
                m,
                "must be 0 (L2) or 1 (inner product)",
            ))
        }
    };
    match u32_at(bytes, 24) {
        ELEMENT_F32 => {}
        ELEMENT_F16 => {
            return Err(FormatError::field(
                "element",
                "f16",
                "f16 vectors are reserved for a later version; this build reads f32",
            ))
        }
        e => return Err(FormatError::field("element", e, "unknown element type")),
    }
    let nprobe = u32_at(bytes, 28);
    if nprobe == 0 {
        return Err(FormatError::field("nprobe", nprobe, "must be at least 1"));
    }
    let nlist = u64_at(bytes, 32);
    let ntotal = u64_at(bytes, 40);
    if nlist == 0 || nlist > MAX_NLIST {
        return Err(FormatError::field(
            "nlist",
            nlist,
            format!("must be in 1..={MAX_NLIST}"),
        ));
    }
    if ntotal > MAX_NTOTAL {
        return Err(FormatError::field(
            "ntotal",
            ntotal,
            format!("must be at most {MAX_NTOTAL}"),
        ));
    }
    let file_len = u64_at(bytes, 48);
    if file_len != actual {
        return Err(if file_len > actual {
            FormatError::Truncated {
                what: "the file length recorded in the header".into(),
                needed: file_len,
                actual,
            }
        } else {
            FormatError::field(
                "file_len",
                file_len,
                format!("the file has {actual} bytes (trailing data or a damaged header)"),
            )
        });
    }
    let count = u32_at(bytes, 56);
    if count as usize != sections {
        return Err(FormatError::field(
            "section_count",
            count,
            format!("must be {sections}"),
        ));
    }
    Ok(SharedFields {
        dim,
        metric,
        nprobe,
        nlist,
        ntotal,
    })
}
