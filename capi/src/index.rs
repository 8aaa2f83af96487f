//! An index on its own: open, inspect, search, blend (`kb_index`, `kb_searcher`), for both
//! index types the core serves: IVF-Flat (`IvfIndex`) and IVF-PQ FastScan (`PqIndex`), held
//! as an `AnyIndex`.

use std::ffi::c_char;

use knnblend_core::format::{FileKind, Metric, PQ_NBITS};
use knnblend_core::index::{
    AnyIndex, AnySearcher, BlendOutcome, BlendParams, OpenOptions, PqIndex, PqNeighbour,
};
use knnblend_core::live::IndexInfo;

use crate::error::*;
use crate::util::{copy_out, overlap, slice, slice_mut};

/// Largest k a search or blend takes.
pub const KB_MAX_K: usize = 32;
/// Largest nprobe a search takes.
pub const KB_MAX_NPROBE: usize = 64;
/// Queries one block pass over the centroids serves (`kb_search_block` and
/// `kb_audio_blend_block` take any number and split them into runs of this many).
pub const KB_BLOCK: usize = 16;
/// Largest vector dimension of an index.
pub const KB_MAX_DIM: usize = 65536;
/// Largest dimension of an IVF-PQ FastScan index a searcher from `kb_searcher_new` serves
/// (IVF-Flat indexes of any dimension need no sizing; `kb_searcher_new_sized` and
/// `kb_searcher_new_for` size a searcher for wider or smaller PQ indexes).
pub const KB_SEARCHER_DEFAULT_DIM: usize = 1024;

/// `kb_index_open` flag: skip verifying checksums and finiteness (faster opening of a trusted
/// `.kbi`).
pub const KB_OPEN_NO_VERIFY: u32 = 1;
/// `kb_index_open` flag: read every page into memory before returning (`MAP_POPULATE`,
/// will-need advice, a touch of every page), so searches take no page faults.
pub const KB_OPEN_PREFAULT: u32 = 2;
/// `kb_index_open` flag: try to lock the index in RAM (`mlock`; best effort, see
/// `kb_index_info.mlocked`).
pub const KB_OPEN_MLOCK: u32 = 4;
const KB_OPEN_ALL: u32 = KB_OPEN_NO_VERIFY | KB_OPEN_PREFAULT | KB_OPEN_MLOCK;

/// An immutable index of either type knnblend serves (`kb_index_info.index_type`):
/// IVF-Flat (a memory-mapped `.kbi`, or a faiss IVF-Flat file such as RVC's `added_*.index`
/// read into memory) or IVF-PQ FastScan (a memory-mapped PQ `.kbi`, or a faiss
/// `IVF…,PQ…x4fs[r][,RFlat]` file read into memory). Opened by `kb_index_open`, freed by
/// `kb_index_free`. Immutable, so any number of threads may search it at once (each with its
/// own `kb_searcher`).
pub struct kb_index {
    index: Held,
}

/// An index the handle owns, or one it lends to a validator for the length of a call. (The
/// lent kind lives briefly on the loader's stack: its size does not matter, and boxing the
/// owned kind would add a pointer chase to every search.)
#[allow(clippy::large_enum_variant)]
enum Held {
    Owned(AnyIndex),
    Lent(*const AnyIndex),
}

impl kb_index {
    /// A handle lending `index` (a validator's argument); valid while `index` is.
    pub(crate) fn lend(index: &AnyIndex) -> kb_index {
        kb_index {
            index: Held::Lent(index),
        }
    }

    fn get(&self) -> &AnyIndex {
        match &self.index {
            Held::Owned(ix) => ix,
            // SAFETY: a lent handle lives on the stack of the call that lends it, shorter
            // than the index it points to.
            Held::Lent(p) => unsafe { &**p },
        }
    }

    /// The owned index; `None` for a lent one (a validator's argument cannot be published).
    pub(crate) fn into_owned(self) -> Option<AnyIndex> {
        match self.index {
            Held::Owned(ix) => Some(ix),
            Held::Lent(_) => None,
        }
    }
}

/// A reusable search workspace (the query scratch, top-k state, lookup tables and kernel
/// choice) for indexes of both types. Create one per thread that searches, off the realtime
/// thread; searching with it allocates nothing. Use from one thread at a time.
///
/// IVF-Flat searches need no sizing: every searcher serves every `k <= KB_MAX_K` and
/// `nprobe <= KB_MAX_NPROBE` on indexes of any dimension. IVF-PQ FastScan searches use scratch
/// sized when the searcher is made (its lookup tables take `max_nprobe * max_dim * 16` floats):
/// a search of a PQ index wider than the searcher's `max_dim`, or with a larger k or nprobe,
/// or whose `k * k_factor` exceeds 4096, does not fit and is refused with `KB_ERR_CAPACITY`
/// (check with `kb_searcher_fits` after opening or loading an index).
pub struct kb_searcher {
    searcher: AnySearcher,
}

/// Distance metric of an index.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kb_metric {
    /// Squared Euclidean distance; smaller is nearer (faiss `METRIC_L2`, what RVC uses).
    KB_METRIC_L2 = 0,
    /// Inner product; larger is nearer (faiss `METRIC_INNER_PRODUCT`).
    KB_METRIC_INNER_PRODUCT = 1,
}

/// Kind of file an index came from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kb_file_kind {
    /// knnblend's native, memory-mapped `.kbi` (IVF-Flat: format version 1; IVF-PQ FastScan:
    /// version 2).
    KB_FILE_KBI = 0,
    /// A faiss file (read into memory): IVF-Flat (`IwFl`) or IVF-PQ FastScan (`IwPf`,
    /// refined `IxRF`).
    KB_FILE_FAISS = 1,
}

/// The type of an index: how its vectors are stored and searched.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kb_index_type {
    /// IVF-Flat (faiss `IVF{n},Flat`, what RVC ships): exact vectors in inverted lists;
    /// searches are exact within the probed lists.
    KB_INDEX_IVF_FLAT = 0,
    /// IVF-PQ FastScan (faiss `IVF{n},PQ{M}x4fs[r]`): 4-bit product-quantizer codes, searched
    /// with 16-bit lookup tables, results as faiss's; optionally refined (`,RFlat`:
    /// `kb_index_info.refined`), re-ranking `k * k_factor` candidates with the exact vectors.
    KB_INDEX_IVF_PQ_FASTSCAN = 1,
}

/// Description of an index (plain data: copy it freely).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct kb_index_info {
    /// The live runtime's id of this load (telemetry refers to indexes by it); 0 for an index
    /// opened with `kb_index_open`.
    pub id: u64,
    /// Vector dimension.
    pub dim: usize,
    /// Number of stored vectors.
    pub ntotal: usize,
    /// Number of inverted lists.
    pub nlist: usize,
    /// nprobe stored in the file (searches take their own).
    pub nprobe: u32,
    /// Distance metric.
    pub metric: kb_metric,
    /// Kind of file it came from.
    pub kind: kb_file_kind,
    /// Served from a memory map (`.kbi`) rather than owned memory.
    pub mapped: bool,
    /// Locked in RAM (`mlock` succeeded).
    pub mlocked: bool,
    /// Bytes of memory it occupies (mapped or owned).
    pub bytes: u64,
    /// The index type. (This field and those after it came with IVF-PQ FastScan serving.)
    pub index_type: kb_index_type,
    /// IVF-PQ: number of sub-quantizers (faiss `M`); 0 for IVF-Flat.
    pub pq_m: usize,
    /// IVF-PQ: bits per sub-quantizer code (4 for FastScan); 0 for IVF-Flat.
    pub pq_nbits: u32,
    /// IVF-PQ: the codes encode residuals from the list centroid (factory `x4fsr`).
    pub pq_by_residual: bool,
    /// IVF-PQ: refined (factory `,RFlat`): the exact vectors are kept and re-rank the
    /// candidates the codes find; `kb_index_vector` then returns exact vectors.
    pub refined: bool,
    /// Refined IVF-PQ: candidates per wanted neighbour (faiss `k_factor`, at least 1); 0
    /// otherwise.
    pub k_factor: f32,
}

impl kb_index_info {
    pub(crate) const EMPTY: kb_index_info = kb_index_info {
        id: 0,
        dim: 0,
        ntotal: 0,
        nlist: 0,
        nprobe: 0,
        metric: kb_metric::KB_METRIC_L2,
        kind: kb_file_kind::KB_FILE_KBI,
        mapped: false,
        mlocked: false,
        bytes: 0,
        index_type: kb_index_type::KB_INDEX_IVF_FLAT,
        pq_m: 0,
        pq_nbits: 0,
        pq_by_residual: false,
        refined: false,
        k_factor: 0.0,
    };

    pub(crate) fn of_index(ix: &AnyIndex) -> kb_index_info {
        let mut info = kb_index_info {
            id: 0,
            dim: ix.dim(),
            ntotal: ix.ntotal(),
            nlist: ix.nlist(),
            nprobe: ix.nprobe(),
            metric: metric(ix.metric()),
            kind: kind(ix.source_kind()),
            mapped: ix.is_mapped(),
            mlocked: ix.is_locked(),
            bytes: ix.byte_len() as u64,
            ..Self::EMPTY
        };
        if let AnyIndex::Pq(p) = ix {
            info.set_pq(p.m(), p.by_residual(), p.k_factor());
        }
        info
    }

    pub(crate) fn of_info(i: &IndexInfo) -> kb_index_info {
        let mut info = kb_index_info {
            id: i.id,
            dim: i.dim,
            ntotal: i.ntotal,
            nlist: i.nlist,
            nprobe: i.nprobe,
            metric: metric(i.metric),
            kind: kind(i.kind),
            mapped: i.mapped,
            mlocked: i.mlocked,
            bytes: i.bytes,
            ..Self::EMPTY
        };
        if let Some(pq) = &i.pq {
            info.set_pq(pq.m, pq.by_residual, pq.k_factor);
        }
        info
    }

    fn set_pq(&mut self, m: usize, by_residual: bool, k_factor: Option<f32>) {
        self.index_type = kb_index_type::KB_INDEX_IVF_PQ_FASTSCAN;
        self.pq_m = m;
        self.pq_nbits = PQ_NBITS as u32;
        self.pq_by_residual = by_residual;
        self.refined = k_factor.is_some();
        self.k_factor = k_factor.unwrap_or(0.0);
    }
}

fn metric(m: Metric) -> kb_metric {
    match m {
        Metric::L2 => kb_metric::KB_METRIC_L2,
        Metric::InnerProduct => kb_metric::KB_METRIC_INNER_PRODUCT,
    }
}

fn kind(k: FileKind) -> kb_file_kind {
    match k {
        FileKind::Kbi => kb_file_kind::KB_FILE_KBI,
        FileKind::Faiss => kb_file_kind::KB_FILE_FAISS,
    }
}

/// One search result.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct kb_neighbour {
    /// Distance as faiss reports it: squared L2 (ascending) or inner product (descending).
    pub distance: f32,
    /// The stored vector's id.
    pub id: i64,
    /// Storage position of the vector in the index (for `kb_index_vector`).
    pub pos: u32,
}

/// What one blend did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kb_blend_outcome {
    /// Blended with the neighbours found.
    KB_BLEND_BLENDED = 0,
    /// Ratio 0: the query was copied, no search was made.
    KB_BLEND_COPIED = 1,
    /// The query held NaN or infinity: it was copied unchanged.
    KB_BLEND_NON_FINITE = 2,
    /// No index (or an empty one, or one of another dimension) served it: the query was
    /// copied.
    KB_BLEND_EMPTY = 3,
}

pub(crate) fn outcome(o: BlendOutcome) -> kb_blend_outcome {
    match o {
        BlendOutcome::Blended { .. } => kb_blend_outcome::KB_BLEND_BLENDED,
        BlendOutcome::Copied => kb_blend_outcome::KB_BLEND_COPIED,
        BlendOutcome::NonFiniteQuery => kb_blend_outcome::KB_BLEND_NON_FINITE,
        BlendOutcome::Empty => kb_blend_outcome::KB_BLEND_EMPTY,
    }
}

/// Copies as much of `query` as fits into `out` and zeroes the rest (what a blend that
/// cannot run outputs).
pub(crate) fn pass_through(query: &[f32], out: &mut [f32]) {
    let n = query.len().min(out.len());
    out[..n].copy_from_slice(&query[..n]);
    out[n..].fill(0.0);
}

/// Opens an index file of either type: a `.kbi` (memory-mapped; IVF-Flat or IVF-PQ FastScan)
/// or a faiss `.index` (read into memory; IVF-Flat, or IVF-PQ FastScan `IVF…,PQ…x4fs[r]`,
/// optionally `,RFlat`), told apart by their first bytes, fully validated unless
/// `KB_OPEN_NO_VERIFY`. `kb_index_get_info` tells which type it is.
///
/// `flags`: 0 or an OR of `KB_OPEN_NO_VERIFY`, `KB_OPEN_PREFAULT`, `KB_OPEN_MLOCK`.
///
/// Thread: control (any non-realtime thread: it reads the file). Ownership: `path` is
/// borrowed for the call; on success `*out` receives a new index the caller owns and frees
/// with `kb_index_free` (on failure `*out` is left unchanged).
///
/// Errors: `KB_ERR_NULL` (`path` or `out`), `KB_ERR_UTF8` (path not UTF-8),
/// `KB_ERR_ARGUMENT` (unknown flag bits), `KB_ERR_IO`, `KB_ERR_FORMAT`, `KB_ERR_PANIC`.
///
/// Requires: `path` is NULL or NUL-terminated; `out` is NULL or writable; `err` is NULL or points to a
/// writable `kb_error*` (which should be NULL: it is overwritten, not freed, on failure).
#[no_mangle]
pub unsafe extern "C" fn kb_index_open(
    path: *const c_char,
    flags: u32,
    out: *mut *mut kb_index,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY: the pointers are as the caller guarantees.
    unsafe {
        control(err, || {
            if out.is_null() {
                return Err(Error::null("out"));
            }
            let p = crate::util::path(path)?;
            if flags & !KB_OPEN_ALL != 0 {
                return Err(Error::argument(format!(
                    "unknown kb_index_open flags 0x{:x}",
                    flags & !KB_OPEN_ALL
                )));
            }
            let opts = OpenOptions {
                verify: flags & KB_OPEN_NO_VERIFY == 0,
                prefault: flags & KB_OPEN_PREFAULT != 0,
                mlock: flags & KB_OPEN_MLOCK != 0,
                progress: None,
            };
            let index = AnyIndex::open_with(&p, opts)?;
            out.write(Box::into_raw(Box::new(kb_index {
                index: Held::Owned(index),
            })));
            Ok(())
        })
    }
}

/// Frees an index and sets `*index` to NULL; `index` or `*index` NULL: does nothing. A `.kbi`
/// is unmapped here, so call it off the realtime thread, after every search using it ended.
///
/// Thread: control. Ownership: takes `*index`.
///
/// Requires: `index` is NULL or points to NULL or to a live index no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn kb_index_free(index: *mut *mut kb_index) {
    if index.is_null() {
        return;
    }
    // SAFETY: `*index` is NULL or came from `Box::into_raw` in `kb_index_open`.
    let p = unsafe { index.replace(std::ptr::null_mut()) };
    if !p.is_null() {
        // Dropping unmaps; a panic cannot come from it, but stay on the safe side.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            drop(Box::from_raw(p))
        }));
    }
}

/// Describes an index into `*out`.
///
/// Thread: any (realtime-safe: reads only). Ownership: both pointers borrowed.
///
/// Errors: `KB_ERR_NULL`.
///
/// Requires: `index` is NULL or a live index (or the index given to a validator); `out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kb_index_get_info(
    index: *const kb_index,
    out: *mut kb_index_info,
) -> kb_status {
    // SAFETY: NULL or live, as the caller guarantees.
    let Some(ix) = (unsafe { index.as_ref() }) else {
        return KB_ERR_NULL;
    };
    if out.is_null() {
        return KB_ERR_NULL;
    }
    // SAFETY: writable, as the caller guarantees.
    unsafe { out.write(kb_index_info::of_index(ix.get())) };
    KB_OK
}

/// Copies the index's feature kind (metadata `features`, e.g. `rvc-v2-768`; for a faiss file
/// it is told from the dimension: 256 `rvc-v1-256`, 768 `rvc-v2-768`, else empty) into `buf` as NUL-terminated UTF-8, snprintf-like: `*needed` (if not NULL) receives
/// its length without the NUL; `cap == 0` with `needed` is a size query (`buf` may be NULL);
/// a `buf` too small gets a truncated, NUL-terminated prefix and `KB_ERR_BUFFER`.
///
/// Thread: any (no allocation). Ownership: all pointers borrowed.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_BUFFER`, `KB_ERR_ARGUMENT` (misaligned `needed`).
///
/// Requires: `index` is NULL or live; `buf` is NULL or has `cap` writable bytes; `needed` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn kb_index_features(
    index: *const kb_index,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    match unsafe { index.as_ref() } {
        Some(ix) => unsafe { copy_out(&ix.get().metadata().features, buf, cap, needed) },
        None => KB_ERR_NULL,
    }
}

/// Copies the index's whole metadata (feature kind, feature parameters, sources, frames,
/// duration and any extra fields) as a JSON object into `buf`, with the contract of
/// `kb_index_features`.
///
/// Thread: control (it formats the JSON). Ownership: all pointers borrowed.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_BUFFER`, `KB_ERR_PANIC`.
///
/// Requires: As `kb_index_features`.
#[no_mangle]
pub unsafe extern "C" fn kb_index_metadata_json(
    index: *const kb_index,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe {
        copy_text(index, buf, cap, needed, |ix| {
            serde_json::to_string(ix.metadata())
                .map_err(|e| Error::new(KB_ERR_PANIC, e.to_string()))
        })
    }
}

/// Copies a one-line description of the index's type into `buf`, with the contract of
/// `kb_index_features`: `IVF-Flat`, or for IVF-PQ FastScan the faiss factory string and the
/// refinement, e.g. `IVF1024,PQ128x4fs,RFlat (IVF-PQ FastScan, k_factor 1)`.
///
/// Thread: control (it formats the text). Ownership: all pointers borrowed.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_BUFFER`, `KB_ERR_ARGUMENT` (misaligned `needed`),
/// `KB_ERR_PANIC`.
///
/// Requires: As `kb_index_features`.
#[no_mangle]
pub unsafe extern "C" fn kb_index_describe(
    index: *const kb_index,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe { copy_text(index, buf, cap, needed, |ix| Ok(ix.describe())) }
}

/// Formats a text of `index` (off the audio thread: it allocates) and copies it into `buf` with
/// the contract of `kb_index_features`: `KB_ERR_NULL` for a null index, the formatter's
/// error, or `copy_out`'s status.
///
/// # Safety
/// As `kb_index_features`.
unsafe fn copy_text(
    index: *const kb_index,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
    text: impl FnOnce(&AnyIndex) -> Result<String, Error>,
) -> kb_status {
    let mut code = KB_OK;
    // SAFETY: as the caller guarantees; no error object is requested.
    let status = unsafe {
        control(std::ptr::null_mut(), || {
            let Some(ix) = index.as_ref() else {
                return Err(Error::null("index"));
            };
            code = copy_out(&text(ix.get())?, buf, cap, needed);
            Ok(())
        })
    };
    if status == KB_OK {
        code
    } else {
        status
    }
}

/// The list of a PQ index holding storage position `pos < ntotal`, and the position within it.
fn pq_position(ix: &PqIndex, pos: usize) -> Option<(usize, usize)> {
    let nlist = ix.nlist();
    if pos >= ix.ntotal() {
        return None;
    }
    // The first list starting after `pos`, minus one: the last list starting at or before it,
    // which holds it (empty lists start where the next one does).
    let (mut lo, mut hi) = (0, nlist);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if ix.list_start(mid + 1) <= pos {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let l = lo;
    (l < nlist).then(|| (l, pos - ix.list_start(l)))
}

/// Storage position of a PQ neighbour (what `kb_index_vector` takes).
fn pq_pos(ix: &PqIndex, nb: &PqNeighbour) -> u32 {
    let l = nb.list as usize;
    if l < ix.nlist() {
        (ix.list_start(l) + nb.offset as usize) as u32
    } else {
        u32::MAX // unreachable: a found neighbour's list is in range
    }
}

/// Copies stored vector `pos` (a `kb_neighbour.pos`) into `out`, which holds `out_len` floats
/// (the index's dimension). For IVF-Flat it is the exact stored vector; for IVF-PQ FastScan it
/// is what the blend mixes: the exact vector of the id at that position when the index is
/// refined, otherwise the product-quantizer reconstruction (plus the list centroid when by
/// residual), which is what faiss's `reconstruct` gives.
///
/// Thread: any (realtime-safe). Ownership: all pointers borrowed.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_ARGUMENT` (`pos >= ntotal`, misaligned `out`),
/// `KB_ERR_DIMENSION` (`out_len` is not the dimension).
///
/// Requires: `index` is NULL or live; `out` is NULL or has `out_len` writable floats.
#[no_mangle]
pub unsafe extern "C" fn kb_index_vector(
    index: *const kb_index,
    pos: usize,
    out: *mut f32,
    out_len: usize,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    let Some(ix) = (unsafe { index.as_ref() }) else {
        return KB_ERR_NULL;
    };
    // SAFETY: as the caller guarantees.
    let out = match unsafe { slice_mut(out, out_len) } {
        Ok(o) => o,
        Err(code) => return code,
    };
    let ix = ix.get();
    if pos >= ix.ntotal() {
        return KB_ERR_ARGUMENT;
    }
    if out_len != ix.dim() {
        return KB_ERR_DIMENSION;
    }
    match ix {
        // Checked: pos < ntotal and the vectors hold ntotal rows of dim.
        AnyIndex::Flat(f) => match f.vectors().get(pos * out_len..(pos + 1) * out_len) {
            Some(v) => {
                out.copy_from_slice(v);
                KB_OK
            }
            None => KB_ERR_ARGUMENT,
        },
        AnyIndex::Pq(p) => {
            // No panic: the list and the position in it are in range, `out` is `dim` long.
            let Some((l, i)) = pq_position(p, pos) else {
                return KB_ERR_ARGUMENT;
            };
            if p.k_factor().is_some() {
                let id = p.ids().get(pos).copied().unwrap_or(-1);
                match p.refine_vector(id) {
                    Some(v) => out.copy_from_slice(v),
                    None => return KB_ERR_ARGUMENT, // unreachable: refined ids are 0..ntotal
                }
            } else {
                p.reconstruct(l, i, out);
            }
            KB_OK
        }
    }
}

/// A searcher of the given sizes, allocated and pre-touched.
unsafe fn new_searcher(
    out: *mut *mut kb_searcher,
    err: *mut *mut kb_error,
    sizes: impl FnOnce() -> Result<(usize, usize, usize), Error>,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe {
        control(err, || {
            if out.is_null() {
                return Err(Error::null("out"));
            }
            let (max_dim, max_k, max_nprobe) = sizes()?;
            let check = |what: &str, v: usize, max: usize| {
                if (1..=max).contains(&v) {
                    Ok(())
                } else {
                    Err(Error::argument(format!("{what} {v} is outside 1..={max}")))
                }
            };
            check("max_dim", max_dim, KB_MAX_DIM)?;
            check("max_k", max_k, KB_MAX_K)?;
            check("max_nprobe", max_nprobe, KB_MAX_NPROBE)?;
            let s = Box::new(kb_searcher {
                searcher: AnySearcher::new(max_dim, max_k, max_nprobe),
            });
            out.write(Box::into_raw(s));
            Ok(())
        })
    }
}

/// Creates a search workspace into `*out` that serves every search `kb_search` accepts on
/// IVF-Flat indexes, and on IVF-PQ FastScan indexes of dimension up to
/// `KB_SEARCHER_DEFAULT_DIM` (every `k <= KB_MAX_K`, `nprobe <= KB_MAX_NPROBE`, and
/// `k * k_factor <= 4096`). That takes about 6 MB, allocated and touched here; for a smaller
/// one, or PQ indexes of more dimensions, use `kb_searcher_new_sized` or `kb_searcher_new_for`.
///
/// Thread: control (it allocates). Ownership: on success `*out` receives a new searcher the
/// caller owns and frees with `kb_searcher_free`.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_PANIC`.
///
/// Requires: `out` is NULL or writable; `err` as for `kb_index_open`.
#[no_mangle]
pub unsafe extern "C" fn kb_searcher_new(
    out: *mut *mut kb_searcher,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe {
        new_searcher(out, err, || {
            Ok((KB_SEARCHER_DEFAULT_DIM, KB_MAX_K, KB_MAX_NPROBE))
        })
    }
}

/// Creates a search workspace into `*out` sized for IVF-PQ FastScan indexes of dimension up to
/// `max_dim`, searched with `k <= max_k` and `nprobe <= max_nprobe` (and any refinement with
/// `k * k_factor <= 4096`). It still serves every IVF-Flat search (any dimension, k, nprobe
/// within `KB_MAX_K`, `KB_MAX_NPROBE`). Memory: about
/// `max_dim * (84 * max_nprobe + 4 * max_k + 64)` bytes plus 90 kB, allocated and touched here
/// (RVC v2 features, 768 dimensions, with k 8 and nprobe 1: about 230 kB). Searches beyond
/// these sizes return `KB_ERR_CAPACITY`.
///
/// Thread: control (it allocates). Ownership: as `kb_searcher_new`.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_ARGUMENT` (`max_dim` outside 1..KB_MAX_DIM, `max_k`
/// outside 1..KB_MAX_K, `max_nprobe` outside 1..KB_MAX_NPROBE), `KB_ERR_PANIC`.
///
/// Requires: As `kb_searcher_new`.
#[no_mangle]
pub unsafe extern "C" fn kb_searcher_new_sized(
    max_dim: usize,
    max_k: usize,
    max_nprobe: usize,
    out: *mut *mut kb_searcher,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe { new_searcher(out, err, || Ok((max_dim, max_k, max_nprobe))) }
}

/// `kb_searcher_new_sized(dimension of index, max_k, max_nprobe, out, err)`: a workspace for
/// `index` and every index of its dimension or fewer.
///
/// Thread: control. Ownership: `index` borrowed; `*out` as `kb_searcher_new`.
///
/// Errors: `KB_ERR_NULL` (`index` or `out`), `KB_ERR_ARGUMENT` (as `kb_searcher_new_sized`),
/// `KB_ERR_PANIC`.
///
/// Requires: `index` is NULL or live (or a validator's); the rest as `kb_searcher_new`.
#[no_mangle]
pub unsafe extern "C" fn kb_searcher_new_for(
    index: *const kb_index,
    max_k: usize,
    max_nprobe: usize,
    out: *mut *mut kb_searcher,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe {
        new_searcher(out, err, || match index.as_ref() {
            Some(ix) => Ok((ix.get().dim(), max_k, max_nprobe)),
            None => Err(Error::null("index")),
        })
    }
}

/// Whether a search (or blend) of `index` with `k` neighbours and `nprobe` lists fits
/// `searcher`: true when `kb_search` would neither refuse k or nprobe (`KB_ERR_ARGUMENT`) nor
/// the searcher's size (`KB_ERR_CAPACITY`). False when a pointer is NULL.
///
/// Thread: any (realtime-safe: reads only). Ownership: both pointers borrowed.
///
/// Requires: `searcher` and `index` are NULL or live.
#[no_mangle]
pub unsafe extern "C" fn kb_searcher_fits(
    searcher: *const kb_searcher,
    index: *const kb_index,
    k: usize,
    nprobe: usize,
) -> bool {
    // SAFETY: NULL or live, as the caller guarantees.
    match unsafe { (searcher.as_ref(), index.as_ref()) } {
        (Some(s), Some(ix)) => check_k(k, nprobe).is_ok() && s.searcher.fits(ix.get(), k, nprobe),
        _ => false,
    }
}

/// Frees a searcher and sets `*searcher` to NULL; NULL: does nothing.
///
/// Thread: control (it frees). Ownership: takes `*searcher`.
///
/// Requires: `searcher` is NULL or points to NULL or to a live searcher no thread is using.
#[no_mangle]
pub unsafe extern "C" fn kb_searcher_free(searcher: *mut *mut kb_searcher) {
    if searcher.is_null() {
        return;
    }
    // SAFETY: `*searcher` is NULL or came from `Box::into_raw` in `new_searcher`.
    unsafe {
        let p = searcher.replace(std::ptr::null_mut());
        if !p.is_null() {
            drop(Box::from_raw(p));
        }
    }
}

/// Checks k and nprobe.
fn check_k(k: usize, nprobe: usize) -> Result<(), kb_status> {
    if (1..=KB_MAX_K).contains(&k) && (1..=KB_MAX_NPROBE).contains(&nprobe) {
        Ok(())
    } else {
        Err(KB_ERR_ARGUMENT)
    }
}

/// One query's neighbours into `out` (at least k long), best first; returns how many. The
/// caller has checked k, nprobe, the dimension and that the search fits.
fn search_one(
    s: &mut AnySearcher,
    ix: &AnyIndex,
    q: &[f32],
    k: usize,
    nprobe: usize,
    out: &mut [kb_neighbour],
) -> usize {
    match ix {
        AnyIndex::Flat(f) => {
            let res = s.flat().search(f, q, k, nprobe);
            for (dst, nb) in out.iter_mut().zip(res) {
                *dst = kb_neighbour {
                    distance: nb.distance,
                    id: nb.id,
                    pos: nb.pos,
                };
            }
            res.len().min(out.len())
        }
        AnyIndex::Pq(p) => {
            // faiss fills slots without a neighbour with id -1: they are left out (they come
            // last, so the order is faiss's).
            let res = s.pq().search(p, q, k, nprobe);
            let mut n = 0;
            for nb in res.iter().filter(|nb| nb.id >= 0) {
                let Some(dst) = out.get_mut(n) else { break };
                *dst = kb_neighbour {
                    distance: nb.distance,
                    id: nb.id,
                    pos: pq_pos(p, nb),
                };
                n += 1;
            }
            n
        }
    }
}

/// Finds the `k` nearest stored vectors to `query` (`len` floats, the index's dimension),
/// scanning the `nprobe` nearest lists, into `out` (room for `out_cap` neighbours, at least
/// `k`), best first; `*found` receives how many (fewer than k when the probed lists hold
/// fewer; 0 for an empty index or a query holding NaN or infinity). The results are faiss's:
/// for IVF-Flat those of its exact IVF-Flat search; for IVF-PQ FastScan those of its FastScan
/// search (distances from the 16-bit tables, or exact ones after refinement; L2 squared
/// distances ascending, inner products descending), without the empty slots (id -1) faiss
/// pads with.
///
/// Thread: any, realtime-safe: no allocation, lock or system call (touching a page of a
/// `.kbi` not yet in memory faults it in: open with `KB_OPEN_PREFAULT` for realtime use).
/// One thread at a time per searcher; any number of searchers may share the index.
/// Ownership: all pointers borrowed for the call.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_ARGUMENT` (`k` outside 1..KB_MAX_K, `nprobe` outside
/// 1..KB_MAX_NPROBE, `out_cap < k`, a misaligned buffer), `KB_ERR_DIMENSION`,
/// `KB_ERR_CAPACITY` (an IVF-PQ search the searcher was not sized for: `kb_searcher_fits`).
///
/// Requires: Every pointer is NULL or valid for the stated length; `searcher` is not used by another
/// thread during the call.
#[no_mangle]
pub unsafe extern "C" fn kb_search(
    searcher: *mut kb_searcher,
    index: *const kb_index,
    query: *const f32,
    len: usize,
    k: usize,
    nprobe: usize,
    out: *mut kb_neighbour,
    out_cap: usize,
    found: *mut usize,
) -> kb_status {
    // No panic can happen here: every length and size the core asserts on (the query's, the
    // output's, the searcher's scratch) is checked first, and no slice is indexed unchecked.
    // SAFETY (all blocks): pointers as the caller guarantees.
    let (Some(s), Some(ix)) = (unsafe { searcher.as_mut() }, unsafe { index.as_ref() }) else {
        return KB_ERR_NULL;
    };
    let (q, o) = match unsafe { (slice(query, len), slice_mut(out, out_cap)) } {
        (Ok(q), Ok(o)) => (q, o),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    if found.is_null() {
        return KB_ERR_NULL;
    }
    if let Err(c) = check_k(k, nprobe) {
        return c;
    }
    if out_cap < k {
        return KB_ERR_ARGUMENT;
    }
    let ix = ix.get();
    if len != ix.dim() {
        return KB_ERR_DIMENSION;
    }
    if !s.searcher.fits(ix, k, nprobe) {
        return KB_ERR_CAPACITY;
    }
    let n = search_one(&mut s.searcher, ix, q, k, nprobe, o);
    // SAFETY: writable, as the caller guarantees.
    unsafe { found.write(n) };
    KB_OK
}

/// Searches `nqueries` queries of `dim` floats each (row-major in `queries`) at once. For
/// IVF-Flat one pass over the centroids serves up to `KB_BLOCK` of them; IVF-PQ FastScan
/// indexes are searched query by query. Query i's neighbours go to
/// `out[i*k .. i*k + found[i]]`, best first; `out` holds `out_cap >= nqueries * k`
/// neighbours and `found` holds `nqueries` counts. The results equal `kb_search` query by
/// query.
///
/// Thread: any, realtime-safe (as `kb_search`). Ownership: all pointers borrowed.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_ARGUMENT` (k, nprobe, `out_cap`, sizes that overflow,
/// misaligned buffers), `KB_ERR_DIMENSION` (`dim` is not the index's), `KB_ERR_CAPACITY` (as
/// `kb_search`; nothing is searched).
///
/// Requires: As `kb_search`; `found` has `nqueries` writable entries.
#[no_mangle]
pub unsafe extern "C" fn kb_search_block(
    searcher: *mut kb_searcher,
    index: *const kb_index,
    queries: *const f32,
    nqueries: usize,
    dim: usize,
    k: usize,
    nprobe: usize,
    out: *mut kb_neighbour,
    out_cap: usize,
    found: *mut usize,
) -> kb_status {
    // No panic: `search_block` asserts whole rows and at most KB_BLOCK of them, which the
    // chunking below guarantees; outputs are written through checked `get_mut`s.
    // SAFETY (all blocks): pointers as the caller guarantees.
    let (Some(s), Some(ix)) = (unsafe { searcher.as_mut() }, unsafe { index.as_ref() }) else {
        return KB_ERR_NULL;
    };
    if let Err(c) = check_k(k, nprobe) {
        return c;
    }
    let (Some(total), Some(need)) = (nqueries.checked_mul(dim), nqueries.checked_mul(k)) else {
        return KB_ERR_ARGUMENT;
    };
    let (q, o, f) = match unsafe {
        (
            slice(queries, total),
            slice_mut(out, out_cap),
            slice_mut(found, nqueries),
        )
    } {
        (Ok(q), Ok(o), Ok(f)) => (q, o, f),
        (Err(c), _, _) | (_, Err(c), _) | (_, _, Err(c)) => return c,
    };
    if out_cap < need {
        return KB_ERR_ARGUMENT;
    }
    let ix = ix.get();
    if dim != ix.dim() || dim == 0 {
        return KB_ERR_DIMENSION;
    }
    if !s.searcher.fits(ix, k, nprobe) {
        return KB_ERR_CAPACITY;
    }
    let rows = o.chunks_exact_mut(k);
    let mut rows = rows.zip(f.iter_mut());
    match ix {
        AnyIndex::Flat(flat) => {
            for chunk in q.chunks(KB_BLOCK * dim) {
                let res = s.searcher.flat().search_block(flat, chunk, k, nprobe);
                for i in 0..res.len() {
                    let Some((row, count)) = rows.next() else {
                        return KB_ERR_ARGUMENT; // unreachable: out_cap >= nqueries * k
                    };
                    let nbs = res.get(i);
                    for (dst, nb) in row.iter_mut().zip(nbs) {
                        *dst = kb_neighbour {
                            distance: nb.distance,
                            id: nb.id,
                            pos: nb.pos,
                        };
                    }
                    *count = nbs.len();
                }
            }
        }
        AnyIndex::Pq(_) => {
            for query in q.chunks_exact(dim) {
                let Some((row, count)) = rows.next() else {
                    return KB_ERR_ARGUMENT; // unreachable: out_cap >= nqueries * k
                };
                *count = search_one(&mut s.searcher, ix, query, k, nprobe, row);
            }
        }
    }
    KB_OK
}

/// RVC's blend of one query: `out = ratio * sum(w_i * v_i) + (1 - ratio) * query` over the
/// `k` nearest stored vectors `v_i` (nprobe lists scanned), weights `1/score^2` normalised.
/// For IVF-PQ FastScan the scores are faiss's search distances (inner-product indexes: the
/// squared distance they imply) and the `v_i` what `kb_index_vector` returns (exact vectors
/// when refined, the PQ reconstruction otherwise), as RVC does with such an index.
/// `ratio` is RVC's index rate, clamped to [0, 1] (NaN is 0). `query` and `out` hold `len`
/// and `out_len` floats (both the index's dimension) and must not overlap. `*outcome` (if
/// not NULL) receives what was done.
///
/// On `KB_ERR_ARGUMENT` (other than overlap), `KB_ERR_DIMENSION` and `KB_ERR_CAPACITY`, `out`
/// receives a copy of as much of `query` as fits (zeros after it) and `*outcome`
/// `KB_BLEND_EMPTY`, so audio keeps flowing.
///
/// Thread: any, realtime-safe (as `kb_search`). Ownership: all pointers borrowed.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_ARGUMENT` (k, nprobe, `len != out_len`, overlap,
/// misaligned), `KB_ERR_DIMENSION`, `KB_ERR_CAPACITY` (as `kb_search`, whatever the ratio).
///
/// Requires: As `kb_search`.
#[no_mangle]
pub unsafe extern "C" fn kb_blend(
    searcher: *mut kb_searcher,
    index: *const kb_index,
    query: *const f32,
    len: usize,
    k: usize,
    nprobe: usize,
    ratio: f32,
    out: *mut f32,
    out_len: usize,
    outcome: *mut kb_blend_outcome,
) -> kb_status {
    // No panic: the blends assert the query and output lengths equal the dimension, checked
    // first.
    // SAFETY (all blocks): pointers as the caller guarantees.
    let (Some(s), Some(ix)) = (unsafe { searcher.as_mut() }, unsafe { index.as_ref() }) else {
        return KB_ERR_NULL;
    };
    if overlap(query, len, out, out_len) && !query.is_null() {
        return KB_ERR_ARGUMENT;
    }
    let (q, o) = match unsafe { (slice(query, len), slice_mut(out, out_len)) } {
        (Ok(q), Ok(o)) => (q, o),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let ix = ix.get();
    let code = if check_k(k, nprobe).is_err() || len != out_len {
        KB_ERR_ARGUMENT
    } else if len != ix.dim() {
        KB_ERR_DIMENSION
    } else if !s.searcher.fits(ix, k, nprobe) {
        KB_ERR_CAPACITY
    } else {
        let params = BlendParams {
            expansion: None,
            k,
            nprobe,
            ratio,
        };
        let done = s.searcher.blend(ix, q, &params, o);
        if !outcome.is_null() {
            // SAFETY: writable, as the caller guarantees.
            unsafe { outcome.write(crate::index::outcome(done)) };
        }
        return KB_OK;
    };
    pass_through(q, o);
    if !outcome.is_null() {
        // SAFETY: writable, as the caller guarantees.
        unsafe { outcome.write(kb_blend_outcome::KB_BLEND_EMPTY) };
    }
    code
}
