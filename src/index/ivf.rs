//! [`IvfIndex`]: an immutable IVF-Flat index, memory-mapped from a `.kbi` or held in owned,
//! page-aligned memory (faiss imports, freshly built indexes). Search code sees the same
//! slices either way.
//!
//! Everything that bounds a read is owned by the index, never read from a mapping after it was
//! loaded: the validated layout (section ranges, dimension and counts), a copy of the list
//! offsets made before they were checked, and the screening tables. A mapped `.kbi` that
//! another program overwrites in place (without truncating it) can therefore only change the
//! values a search reads (centroids, vectors, norms, ids), never make it index out of bounds.

use std::path::{Path, PathBuf};

use crate::format::kbi::{self, KbiLayout, SectionKind};
use crate::format::{
    self, AlignedBytes, FileKind, FormatError, IndexHeader, IndexParts, Metadata, Metric,
};
use crate::platform;

use super::backing::{open_file, Backing};
use super::coarse::CodedRows;

#[cfg(target_endian = "big")]
compile_error!("knnblend's index files are little-endian and are used in place; big-endian targets are not supported");

/// How [`IvfIndex::open_with`] loads a file.
pub struct OpenOptions<'a> {
    /// Verify every section checksum and that all floats are finite (default true).
    pub verify: bool,
    /// Map with `MAP_POPULATE` (Linux), advise will-need and touch every page before returning
    /// (default false). See [`platform`] for what each OS does.
    pub prefault: bool,
    /// Try to lock the pages in RAM ([`platform::lock_memory`]: `mlock`, `VirtualLock`; best
    /// effort, see [`IvfIndex::is_locked`]) (default false).
    pub mlock: bool,
    /// Called with (bytes done, bytes total) while verifying and prefaulting.
    pub progress: Option<&'a mut dyn FnMut(u64, u64)>,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            verify: true,
            prefault: false,
            mlock: false,
            progress: None,
        }
    }
}

/// An immutable IVF-Flat index.
///
/// Lists are stored contiguously: list `i` holds rows `list_offsets[i]..list_offsets[i + 1]` of
/// [`vectors`](Self::vector). Cloning is not offered: share it with `Arc`.
pub struct IvfIndex {
    backing: Backing,
    layout: KbiLayout,
    /// The list offsets (`nlist + 1` u64), copied out of the backing when the index was made
    /// and checked there: searches bound every list by these, so no byte of a mapped file
    /// written after loading can move a read out of bounds. Page-aligned so it can be locked
    /// and unlocked without touching other allocations.
    offsets: AlignedBytes,
    metadata: Metadata,
    source: FileKind,
    path: Option<PathBuf>,
    file_bytes: u64,
    locked: bool,
    /// `lock` was called: pages may be pinned and are unpinned on drop.
    pinned: bool,
    verified: bool,
    /// 8-bit centroid table for list screening (derived, built when the index is made).
    coarse: Option<CodedRows>,
    /// 8-bit residual codes of the stored vectors for list screening (derived, likewise).
    codes: Option<CodedRows>,
}

/// Section `kind` as values of `T`: `layout` was validated against `bytes` (range inside,
/// page-aligned offset on a page-aligned base, length a multiple of `size_of::<T>()`).
#[inline]
fn view<'a, T>(bytes: &'a [u8], layout: &KbiLayout, kind: SectionKind) -> &'a [T] {
    super::backing::view(bytes, layout.section(kind).range())
}

/// Page-aligned bytes as u64 values.
#[inline]
fn u64s(bytes: &AlignedBytes) -> &[u64] {
    let b = bytes.as_slice();
    // SAFETY: the buffer is page-aligned, its length is a multiple of 8 (a list-offsets section),
    // and u64 accepts any bits.
    unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u64>(), b.len() / 8) }
}

impl IvfIndex {
    /// Opens a `.kbi` (memory-mapped) or a faiss IVF-Flat file (read into memory), fully validated.
    pub fn open(path: &Path) -> Result<IvfIndex, FormatError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens an index with the given options.
    pub fn open_with(path: &Path, mut opts: OpenOptions<'_>) -> Result<IvfIndex, FormatError> {
        let mut noop = |_: u64, _: u64| {};
        let progress: &mut dyn FnMut(u64, u64) = match opts.progress.take() {
            Some(p) => p,
            None => &mut noop,
        };
        let (file_bytes, mapped) = open_file(path, opts.prefault)?;
        let mut index = match mapped {
            Some(map) => Self::from_backing(map, FileKind::Kbi, opts.verify, progress)?,
            None => {
                // Streamed: each list is read straight into the index's image, so the load
                // never holds the file and a converted copy at once.
                let image = format::faiss::read_file(path, progress)?;
                let mut index =
                    Self::from_backing(Backing::Owned(image), FileKind::Faiss, false, progress)?;
                index.source = FileKind::Faiss;
                progress(file_bytes, file_bytes);
                index
            }
        };
        index.file_bytes = file_bytes;
        index.path = Some(path.to_path_buf());
        if index.metadata.sources.is_empty() && index.source == FileKind::Faiss {
            index.metadata.sources.extend(format::imported_source(path));
        }
        if opts.prefault {
            index.prefault();
        }
        if opts.mlock {
            index.lock();
        }
        Ok(index)
    }

    /// Builds an owned, in-memory index from parts (validated).
    pub fn from_parts(parts: &IndexParts) -> Result<IvfIndex, FormatError> {
        let image = kbi::encode(parts)?;
        let mut index =
            Self::from_backing(Backing::Owned(image), FileKind::Kbi, false, &mut |_, _| {})?;
        index.file_bytes = 0;
        Ok(index)
    }

    /// Parses and validates a complete `.kbi` image held in page-aligned memory.
    pub fn from_image(image: AlignedBytes) -> Result<IvfIndex, FormatError> {
        Self::from_backing(Backing::Owned(image), FileKind::Kbi, true, &mut |_, _| {})
    }

    fn from_backing(
        backing: Backing,
        source: FileKind,
        verify: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<IvfIndex, FormatError> {
        let bytes = backing.bytes();
        let layout = KbiLayout::parse(bytes)?;
        if verify {
            kbi::verify_sections(bytes, &layout, progress)?;
        }
        // Copied first, then checked (verified or not: search relies on monotonic, in-bounds
        // offsets), then used for everything: what was checked is what searches use.
        let mapped = &bytes[layout.section(SectionKind::ListOffsets).range()];
        let mut offsets = AlignedBytes::zeroed(mapped.len());
        offsets.as_mut_slice().copy_from_slice(mapped);
        let owned = u64s(&offsets);
        kbi::check_list_offsets(owned, layout.ntotal)?;
        let metadata = kbi::parse_metadata(bytes, &layout)?;
        let file_bytes = bytes.len() as u64;
        let centroids = view::<f32>(bytes, &layout, SectionKind::Centroids);
        let coarse = CodedRows::centroids(centroids, layout.dim, layout.metric, owned);
        let codes = CodedRows::lists(
            centroids,
            view::<f32>(bytes, &layout, SectionKind::Vectors),
            layout.dim,
            layout.metric,
            owned,
        );
        Ok(IvfIndex {
            backing,
            layout,
            offsets,
            metadata,
            source,
            path: None,
            file_bytes,
            locked: false,
            pinned: false,
            verified: verify,
            coarse,
            codes,
        })
    }

    /// Verifies checksums and finiteness of every section now (for indexes opened without).
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), FormatError> {
        kbi::verify_sections(self.backing.bytes(), &self.layout, progress)
    }

    /// Advises the kernel that every page will be needed and reads one byte of every page,
    /// so no later access page-faults (unless memory pressure evicts it; see [`lock`](Self::lock)).
    pub fn prefault(&self) {
        self.backing.prefault();
    }

    /// Tries to lock the index's pages in RAM ([`platform::lock_memory`]). Returns whether it
    /// succeeded: unprivileged users often have a small `RLIMIT_MEMLOCK`, which is reported,
    /// not fatal, and some platforms cannot lock at all (always false there).
    pub fn lock(&mut self) -> bool {
        self.pinned = true;
        self.locked = platform::lock_memory(self.backing.bytes());
        self.locked &= platform::lock_memory(self.offsets.as_slice());
        if let Some(c) = &self.coarse {
            self.locked &= c.lock();
        }
        if let Some(c) = &self.codes {
            self.locked &= c.lock();
        }
        self.locked
    }

    /// Whether [`lock`](Self::lock) succeeded.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Whether checksums were verified when this index was opened.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    /// Vector dimension.
    #[inline]
    pub fn dim(&self) -> usize {
        self.layout.dim
    }
    /// Number of inverted lists.
    #[inline]
    pub fn nlist(&self) -> usize {
        self.layout.nlist
    }
    /// Number of stored rows: the vectors, plus the copies of a spilled index
    /// ([`distinct_vectors`](Self::distinct_vectors) counts each vector once).
    #[inline]
    pub fn ntotal(&self) -> usize {
        self.layout.ntotal
    }
    /// Whether some vectors are stored in two lists (`knnblend build --spill`): searches that
    /// probe several lists then report each id once.
    #[inline]
    pub fn is_spilled(&self) -> bool {
        self.layout.spilled
    }
    /// The spilled assignment the index was built with (`None` when not spilled).
    pub fn spill(&self) -> Option<format::Spill> {
        self.metadata.spill()
    }
    /// Number of distinct vectors: stored rows less the copies of a spilled index.
    pub fn distinct_vectors(&self) -> usize {
        self.ntotal() - self.spill().map_or(0, |s| s.duplicates as usize)
    }
    /// Distance metric.
    pub fn metric(&self) -> Metric {
        self.layout.metric
    }
    /// The n_probe stored in the file (informational).
    pub fn nprobe(&self) -> u32 {
        self.layout.nprobe
    }
    /// What the vectors are.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    /// The file this index came from.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    /// Whether it was opened from a `.kbi` or a faiss file.
    pub fn source_kind(&self) -> FileKind {
        self.source
    }
    /// Size of the file on disk (0 for indexes built in memory).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
    /// Bytes of the in-memory image (mapped or owned).
    pub fn byte_len(&self) -> usize {
        self.backing.bytes().len()
    }
    /// Whether the index is served from a memory map.
    pub fn is_mapped(&self) -> bool {
        self.backing.is_mapped()
    }
    /// The validated layout.
    pub fn layout(&self) -> &KbiLayout {
        &self.layout
    }
    /// What this index declares, as [`format::read_header`] reads it from a file: kind, shape,
    /// metric, file size, metadata.
    pub fn header(&self) -> IndexHeader {
        IndexHeader {
            kind: self.source,
            structure: format::IndexStructure::IvfFlat,
            dim: self.dim(),
            metric: self.metric(),
            nlist: self.nlist(),
            ntotal: self.ntotal(),
            nprobe: self.nprobe(),
            file_bytes: self.file_bytes,
            metadata: self.metadata.clone(),
        }
    }

    /// Centroids, `nlist × dim`.
    #[inline]
    pub fn centroids(&self) -> &[f32] {
        view(self.backing.bytes(), &self.layout, SectionKind::Centroids)
    }
    /// ‖c‖² per centroid.
    #[inline]
    pub fn centroid_norms(&self) -> &[f32] {
        view(
            self.backing.bytes(),
            &self.layout,
            SectionKind::CentroidNorms,
        )
    }
    /// List offsets, `nlist + 1` entries: the index's own copy, checked when it was made
    /// (monotonic, from 0 to `ntotal`), whatever happens to the file afterwards.
    #[inline]
    pub fn list_offsets(&self) -> &[u64] {
        u64s(&self.offsets)
    }
    /// All vectors, grouped by list, `ntotal × dim`.
    #[inline]
    pub fn vectors(&self) -> &[f32] {
        view(self.backing.bytes(), &self.layout, SectionKind::Vectors)
    }
    /// ‖v‖² per vector.
    #[inline]
    pub fn vector_norms(&self) -> &[f32] {
        view(self.backing.bytes(), &self.layout, SectionKind::VectorNorms)
    }
    /// The 8-bit centroid table list selection screens with (None if a centroid is
    /// not finite or the dimension exceeds the integer kernels).
    #[inline]
    pub(crate) fn coarse(&self) -> Option<&CodedRows> {
        self.coarse.as_ref()
    }

    /// Bytes of the 8-bit centroid screening table (with its per-row bounds and byte sums), if
    /// this index has one.
    pub fn centroid_screen_bytes(&self) -> Option<usize> {
        self.coarse.as_ref().map(|c| c.byte_len())
    }

    /// Bytes of the screening tables built when the index was made (8-bit centroids, 8-bit
    /// residual codes of the vectors, their bound constants), held in memory beside the index.
    pub fn screening_bytes(&self) -> usize {
        self.coarse.as_ref().map_or(0, |c| c.byte_len())
            + self.codes.as_ref().map_or(0, |c| c.byte_len())
    }

    /// The 8-bit residual codes of the stored vectors, if this index has them (L2, finite).
    pub(crate) fn codes(&self) -> Option<&CodedRows> {
        self.codes.as_ref()
    }
    /// Ids, in storage order.
    #[inline]
    pub fn ids(&self) -> &[i64] {
        view(self.backing.bytes(), &self.layout, SectionKind::Ids)
    }
    /// The stored vector at storage position `pos`.
    #[inline]
    pub fn vector(&self, pos: usize) -> &[f32] {
        let d = self.dim();
        &self.vectors()[pos * d..(pos + 1) * d]
    }
    /// Storage positions of list `list`.
    #[inline]
    pub fn list_range(&self, list: usize) -> std::ops::Range<usize> {
        let o = self.list_offsets();
        o[list] as usize..o[list + 1] as usize
    }
    /// Number of vectors in list `list`.
    pub fn list_len(&self, list: usize) -> usize {
        self.list_range(list).len()
    }

    /// Copies the index out as owned parts (for conversion and tests).
    pub fn to_parts(&self) -> IndexParts {
        let d = self.dim();
        let (ids, vectors) = (self.ids(), self.vectors());
        IndexParts {
            dim: d,
            metric: self.metric(),
            nprobe: self.nprobe(),
            centroids: self.centroids().to_vec(),
            lists: (0..self.nlist())
                .map(|l| {
                    let r = self.list_range(l);
                    format::ListParts {
                        ids: ids[r.clone()].to_vec(),
                        vectors: vectors[r.start * d..r.end * d].to_vec(),
                    }
                })
                .collect(),
            metadata: self.metadata.clone(),
        }
    }
}

impl Drop for IvfIndex {
    fn drop(&mut self) {
        if !self.pinned {
            return;
        }
        // Unmapping releases a mapping's locks; heap pages must be unlocked by hand, or they
        // would stay pinned (and count against RLIMIT_MEMLOCK) after the memory is reused.
        self.backing.unlock();
        platform::unlock_memory(self.offsets.as_slice());
        if let Some(c) = &self.coarse {
            c.unlock();
        }
        if let Some(c) = &self.codes {
            c.unlock();
        }
    }
}

impl std::fmt::Debug for IvfIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IvfIndex")
            .field("dim", &self.dim())
            .field("nlist", &self.nlist())
            .field("ntotal", &self.ntotal())
            .field("metric", &self.metric())
            .field("mapped", &self.is_mapped())
            .field("path", &self.path)
            .finish()
    }
}
