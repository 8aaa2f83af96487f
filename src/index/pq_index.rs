//! [`PqIndex`]: an immutable IVF-PQ FastScan index (4-bit codes, faiss `IndexIVFPQFastScan`),
//! optionally with its exact vectors for re-ranking (faiss `IndexRefineFlat`). It is held as
//! an IVF-PQ `.kbi` image ([`format::kbi_pq`]): memory-mapped from a `.kbi`, or owned,
//! page-aligned memory for faiss files and indexes made from [`PqParts`]. Search code sees the
//! same slices either way.
//!
//! As for [`IvfIndex`](super::IvfIndex), every bound a search uses is owned by the index, never
//! read from a mapping after loading: the validated layout, the list starts (copied, then
//! checked), the code starts derived from them. Ids are values: a refined index looks its exact
//! vectors up by id with a bounds check, so a mapped file overwritten in place can change what a
//! search returns but cannot make it read out of bounds.

use std::path::{Path, PathBuf};

use super::backing::{open_file, view, Backing};
use super::coarse::CodedRows;
use super::OpenOptions;
use crate::format::kbi::check_list_offsets;
use crate::format::kbi_pq::{verify_pq_sections, PqKbiLayout, PqSectionKind};
use crate::format::{
    self, encode_pq_kbi, FileKind, FormatError, IndexHeader, IndexStructure, Metadata, Metric,
    PqParts, PQ_KSUB,
};
use crate::platform;

/// An immutable IVF-PQ FastScan index, searched with a [`PqSearcher`](super::PqSearcher).
/// Cloning is not offered: share it with `Arc`.
pub struct PqIndex {
    backing: Backing,
    layout: PqKbiLayout,
    pub(super) dim: usize,
    pub(super) metric: Metric,
    pub(super) m: usize,
    pub(super) dsub: usize,
    pub(super) m2: usize,
    pub(super) bbs: usize,
    pub(super) by_residual: bool,
    /// Lists are visited by ascending list number (faiss's implem 12, blocks of 32) rather than
    /// by coarse rank (implem 10).
    pub(super) by_list_number: bool,
    /// `‖codebook entry‖²`, `m × 16` (the precomputed table's first term).
    pub(super) entry_norms: Vec<f32>,
    /// List `l` holds vectors `list_start[l]..list_start[l + 1]` of the ids (owned, checked).
    pub(super) list_start: Vec<usize>,
    /// List `l`'s packed codes start here in the codes (owned, derived from `list_start`).
    pub(super) code_start: Vec<usize>,
    /// 8-bit table of every centroid (empty lists included: faiss probes them too) for list
    /// selection (derived when the index is made; `None` when it cannot be built).
    pub(super) coarse: Option<CodedRows>,
    metadata: Metadata,
    source: FileKind,
    path: Option<PathBuf>,
    file_bytes: u64,
    locked: bool,
    pinned: bool,
}

impl PqIndex {
    /// Builds an owned, in-memory index from parts (validated).
    pub fn new(parts: PqParts) -> Result<PqIndex, FormatError> {
        let image = encode_pq_kbi(&parts)?;
        drop(parts);
        let mut index =
            Self::from_backing(Backing::Owned(image), FileKind::Kbi, false, &mut |_, _| {})?;
        index.file_bytes = 0;
        Ok(index)
    }

    /// Opens an IVF-PQ FastScan `.kbi` (memory-mapped) or a faiss `IwPf` / `IxRF` file (read
    /// into memory), fully validated.
    pub fn open(path: &Path) -> Result<PqIndex, FormatError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens an index with the given options (as [`IvfIndex::open_with`](super::IvfIndex::open_with)).
    pub fn open_with(path: &Path, mut opts: OpenOptions<'_>) -> Result<PqIndex, FormatError> {
        let mut noop = |_: u64, _: u64| {};
        let progress: &mut dyn FnMut(u64, u64) = match opts.progress.take() {
            Some(p) => p,
            None => &mut noop,
        };
        let (file_bytes, mapped) = open_file(path, opts.prefault)?;
        let mut index = match mapped {
            Some(map) => Self::from_backing(map, FileKind::Kbi, opts.verify, progress)?,
            None => {
                let parts = format::read_faiss_fastscan_file(path)?;
                progress(file_bytes / 2, file_bytes);
                let image = encode_pq_kbi(&parts)?;
                drop(parts);
                let index =
                    Self::from_backing(Backing::Owned(image), FileKind::Faiss, false, progress)?;
                progress(file_bytes, file_bytes);
                index
            }
        };
        index.file_bytes = file_bytes;
        index.path = Some(path.to_path_buf());
        if opts.prefault {
            index.prefault();
        }
        if opts.mlock {
            index.lock();
        }
        Ok(index)
    }

    fn from_backing(
        backing: Backing,
        source: FileKind,
        verify: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<PqIndex, FormatError> {
        let bytes = backing.bytes();
        let layout = PqKbiLayout::parse(bytes)?;
        if verify {
            verify_pq_sections(bytes, &layout, progress)?;
        }
        // Copied first, then checked, then used for everything.
        let offsets: Vec<u64> =
            view::<u64>(bytes, layout.section(PqSectionKind::ListOffsets).range()).to_vec();
        check_list_offsets(&offsets, layout.ntotal)?;
        let (bbs, block) = (layout.bbs, layout.block_bytes());
        let mut code_start = Vec::with_capacity(layout.nlist);
        let mut at = 0usize;
        for w in offsets.windows(2) {
            code_start.push(at);
            at += (w[1] - w[0]).div_ceil(bbs as u64) as usize * block;
        }
        let codes_len = layout.section(PqSectionKind::Codes).len as usize;
        if at != codes_len {
            return Err(FormatError::section(
                PqSectionKind::Codes.name(),
                format!("length {codes_len} does not match the list sizes ({at} bytes)"),
            ));
        }
        let list_start: Vec<usize> = offsets.iter().map(|&o| o as usize).collect();
        let ids: &[i64] = view(bytes, layout.section(PqSectionKind::Ids).range());
        if layout.k_factor.is_some() {
            let lists = list_start.windows(2).map(|w| &ids[w[0]..w[1]]);
            format::ids_cover(lists, layout.ntotal as u64).map_err(|m| {
                FormatError::BadLists(format!(
                    "{m}: the ids of a refined index must be 0..ntotal, each once"
                ))
            })?;
        }
        let metadata = crate::format::kbi::metadata_from(
            &bytes[layout.section(PqSectionKind::Metadata).range()],
        )?;
        let (dim, m) = (layout.dim, layout.m);
        let dsub = dim / m;
        let codebooks: &[f32] = view(bytes, layout.section(PqSectionKind::Codebooks).range());
        let entry_norms = codebooks
            .chunks_exact(dsub)
            .map(|c| super::pq_search::dot_seq(c, c))
            .collect();
        let implem = layout.implem;
        let centroids: &[f32] = view(bytes, layout.section(PqSectionKind::Centroids).range());
        let coarse = CodedRows::all_centroids(centroids, dim, layout.metric);
        Ok(PqIndex {
            dim,
            metric: layout.metric,
            m,
            dsub,
            m2: m.next_multiple_of(2),
            bbs,
            by_residual: layout.by_residual,
            // implem 0 picks 12 (or 13) for blocks of 32, 10 (or 11) otherwise.
            by_list_number: matches!(implem, 12 | 13) || (implem == 0 && bbs == 32),
            entry_norms,
            list_start,
            code_start,
            coarse,
            metadata,
            source,
            path: None,
            file_bytes: bytes.len() as u64,
            locked: false,
            pinned: false,
            layout,
            backing,
        })
    }

    /// Verifies checksums and finiteness of every section now (for indexes opened without).
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<(), FormatError> {
        verify_pq_sections(self.backing.bytes(), &self.layout, progress)
    }

    /// Advises the kernel that every page will be needed and reads one byte of every page.
    pub fn prefault(&self) {
        self.backing.prefault();
    }

    /// Tries to lock the index's pages in RAM ([`platform::lock_memory`]); returns whether it
    /// succeeded (best effort, as for [`IvfIndex::lock`](super::IvfIndex::lock)).
    pub fn lock(&mut self) -> bool {
        self.pinned = true;
        self.locked = platform::lock_memory(self.backing.bytes());
        for owned in [&self.list_start, &self.code_start] {
            self.locked &= platform::lock_memory(owned.as_slice());
        }
        self.locked &= platform::lock_memory(self.entry_norms.as_slice());
        if let Some(c) = &self.coarse {
            self.locked &= c.lock();
        }
        self.locked
    }

    /// Whether [`lock`](Self::lock) succeeded.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// Distance metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }
    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.code_start.len()
    }
    /// Number of stored vectors.
    pub fn ntotal(&self) -> usize {
        self.layout.ntotal
    }
    /// Number of sub-quantizers.
    pub fn m(&self) -> usize {
        self.m
    }
    /// Vectors per block of packed codes (faiss `bbs`).
    pub fn bbs(&self) -> usize {
        self.bbs
    }
    /// Whether the codes encode residuals from the list centroid.
    pub fn by_residual(&self) -> bool {
        self.by_residual
    }
    /// The n_probe the index was saved with.
    pub fn default_nprobe(&self) -> usize {
        self.layout.nprobe.max(1) as usize
    }
    /// The n_probe stored in the file (informational).
    pub fn nprobe(&self) -> u32 {
        self.layout.nprobe
    }
    /// The refinement's `k_factor`, if the index is refined.
    pub fn k_factor(&self) -> Option<f32> {
        self.layout.k_factor
    }
    /// Candidates the codes propose for `k` neighbours (`k·k_factor` when refined, as faiss
    /// truncates it).
    pub fn base_k(&self, k: usize) -> usize {
        match self.layout.k_factor {
            Some(f) => (k as f32 * f) as usize,
            None => k,
        }
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
    /// Bytes of the 8-bit centroid screening table built when the index was made (0 if none).
    pub fn screening_bytes(&self) -> usize {
        self.coarse.as_ref().map_or(0, |c| c.byte_len())
    }
    /// Whether the index is served from a memory map.
    pub fn is_mapped(&self) -> bool {
        self.backing.is_mapped()
    }
    /// The validated layout.
    pub fn layout(&self) -> &PqKbiLayout {
        &self.layout
    }
    /// The factory string faiss builds this index type from, e.g. `IVF1024,PQ128x4fs,RFlat`.
    pub fn factory(&self) -> String {
        let refined = self.layout.k_factor.is_some();
        let recipe = format::pq_recipe(self.m, self.by_residual, self.bbs, refined);
        format!("IVF{},{recipe}", self.nlist())
    }
    /// What this index declares, as [`format::read_header`] reads it from a file.
    pub fn header(&self) -> IndexHeader {
        IndexHeader {
            kind: self.source,
            structure: IndexStructure::IvfPqFastScan {
                refined: self.layout.k_factor.is_some(),
            },
            dim: self.dim,
            metric: self.metric,
            nlist: self.nlist(),
            ntotal: self.ntotal(),
            nprobe: self.layout.nprobe,
            file_bytes: self.file_bytes,
            metadata: self.metadata.clone(),
        }
    }

    fn section<T>(&self, kind: PqSectionKind) -> &[T] {
        view(self.backing.bytes(), self.layout.section(kind).range())
    }
    /// Coarse centroids, `nlist × dim`.
    #[inline]
    pub fn centroids(&self) -> &[f32] {
        self.section(PqSectionKind::Centroids)
    }
    /// Codebooks, `M × 16 × dsub`.
    #[inline]
    pub fn codebooks(&self) -> &[f32] {
        self.section(PqSectionKind::Codebooks)
    }
    /// The packed codes of every list, list by list.
    #[inline]
    pub(super) fn codes(&self) -> &[u8] {
        self.section(PqSectionKind::Codes)
    }
    /// Ids in storage order (grouped by list).
    #[inline]
    pub fn ids(&self) -> &[i64] {
        self.section(PqSectionKind::Ids)
    }
    /// The exact vectors of a refined index (row `r` is the vector of id `r`).
    #[inline]
    pub fn refine_vectors(&self) -> Option<&[f32]> {
        self.layout
            .k_factor
            .map(|_| self.section(PqSectionKind::RefineVectors))
    }
    /// The exact vector of id `id` of a refined index (None for an unrefined index or an id
    /// out of range).
    #[inline]
    pub fn refine_vector(&self, id: i64) -> Option<&[f32]> {
        let d = self.dim;
        let r = self.refine_vectors()?;
        let i = usize::try_from(id).ok()?;
        r.get(i.checked_mul(d)?..i.checked_mul(d)?.checked_add(d)?)
    }

    /// The 4-bit code of sub-quantizer `sq` of vector `i` (within its list) of list `l`.
    fn code(&self, l: usize, i: usize, sq: usize) -> usize {
        let codes = &self.codes()[self.code_start[l]..];
        let bbs = self.bbs;
        let (block, within) = (i / bbs, i % bbs);
        let group = block * bbs * self.m2 / 2 + (sq / 2) * bbs + (within / 32) * 32;
        let v = within % 16;
        let k = if v < 8 { 2 * v } else { 2 * (v - 8) + 1 };
        let byte = codes[group + k + 16 * (sq % 2)];
        (if within % 32 >= 16 {
            byte >> 4
        } else {
            byte & 15
        }) as usize
    }

    /// Writes neighbour `n`'s vector into `out` (`dim` values): its exact vector when the index
    /// is refined, otherwise its product-quantizer reconstruction (plus its list's centroid when
    /// the codes are residuals), which is what faiss's `reconstruct` gives. Allocation-free.
    /// A neighbour that is not in this index (an empty slot, a list or position out of range)
    /// writes zeros.
    pub fn neighbour_vector(&self, n: &super::PqNeighbour, out: &mut [f32]) {
        let out = &mut out[..self.dim];
        if let Some(v) = self.refine_vector(n.id) {
            out.copy_from_slice(v);
            return;
        }
        let (l, i) = (n.list as usize, n.offset as usize);
        if n.id < 0 || l >= self.nlist() || i >= self.list_start[l + 1] - self.list_start[l] {
            out.fill(0.0);
            return;
        }
        self.reconstruct(l, i, out);
    }

    /// Writes the vector stored at position `pos` (storage order, as [`Self::ids`]) into `out`:
    /// the exact vector of a refined index, otherwise the product-quantizer reconstruction, as
    /// faiss's `reconstruct` gives it. Panics if `pos` is not below `ntotal()`.
    pub fn stored_vector(&self, pos: usize, out: &mut [f32]) {
        assert!(pos < self.ntotal(), "position out of range");
        if let Some(v) = self.refine_vector(self.ids()[pos]) {
            out[..self.dim].copy_from_slice(v);
            return;
        }
        // The list holding `pos`: the last one starting at or before it (empty lists share
        // their start with the next list, so the last such start is the non-empty one).
        let l = self.list_start[..self.nlist()].partition_point(|&s| s <= pos) - 1;
        self.reconstruct(l, pos - self.list_start[l], out);
    }

    /// Where list `l` starts among the stored vectors (`list_start(nlist())` is `ntotal`).
    pub fn list_start(&self, l: usize) -> usize {
        self.list_start[l]
    }

    /// The product-quantizer reconstruction of vector `i` of list `l` (plus the centroid when by
    /// residual). Panics if `l` or `i` is out of range.
    pub fn reconstruct(&self, l: usize, i: usize, out: &mut [f32]) {
        assert!(
            i < self.list_start[l + 1] - self.list_start[l],
            "position out of range"
        );
        let (d, dsub) = (self.dim, self.dsub);
        let books = self.codebooks();
        for sq in 0..self.m {
            let c = self.code(l, i, sq);
            let at = (sq * PQ_KSUB + c) * dsub;
            out[sq * dsub..(sq + 1) * dsub].copy_from_slice(&books[at..at + dsub]);
        }
        if self.by_residual {
            for (v, c) in out[..d]
                .iter_mut()
                .zip(&self.centroids()[l * d..(l + 1) * d])
            {
                *v += c;
            }
        }
    }

    /// Copies the index out as owned parts (for conversion and tests).
    pub fn to_parts(&self) -> PqParts {
        let bytes = self.backing.bytes();
        let mut parts =
            format::kbi_pq::decode_pq_kbi(bytes, false).expect("an index's own image decodes");
        parts.metadata = self.metadata.clone();
        parts
    }
}

impl Drop for PqIndex {
    fn drop(&mut self) {
        if self.pinned {
            // Heap pages must be unlocked by hand (see `IvfIndex`'s drop).
            self.backing.unlock();
            for owned in [&self.list_start, &self.code_start] {
                platform::unlock_memory(owned.as_slice());
            }
            platform::unlock_memory(self.entry_norms.as_slice());
            if let Some(c) = &self.coarse {
                c.unlock();
            }
        }
    }
}

impl std::fmt::Debug for PqIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PqIndex")
            .field("factory", &self.factory())
            .field("dim", &self.dim)
            .field("ntotal", &self.ntotal())
            .field("metric", &self.metric)
            .field("mapped", &self.is_mapped())
            .field("path", &self.path)
            .finish()
    }
}
