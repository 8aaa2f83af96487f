//! What a slot holds: a loaded [`AnyIndex`] (IVF-Flat or IVF-PQ FastScan) with its description ([`IndexInfo`]), shared by
//! `Arc` between the control and the audio side, and counted so tests and telemetry can tell
//! exactly how many are alive.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::format::{FileKind, IndexStructure, Metadata, Metric, PQ_NBITS};
use crate::index::AnyIndex;

/// Process-wide source of index ids (0 means "none").
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Description of a loaded index, for the user interface.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexInfo {
    /// Unique (per process) id of this load; telemetry refers to indexes by it.
    pub id: u64,
    /// Display name: the file name, or the name given for an in-memory index.
    pub name: String,
    /// The file it was loaded from (empty for an index built in memory).
    pub path: PathBuf,
    /// Native `.kbi` or faiss.
    pub kind: FileKind,
    /// IVF-Flat or IVF-PQ FastScan.
    pub structure: IndexStructure,
    /// Its type in one line, e.g. `IVF-Flat` or `IVF1024,PQ128x4fs,RFlat (IVF-PQ FastScan,
    /// k_factor 1)` ([`AnyIndex::describe`]).
    pub description: String,
    /// The product quantizer of an IVF-PQ FastScan index (`None` for IVF-Flat).
    pub pq: Option<PqInfo>,
    /// Served from a memory map (`.kbi`) rather than owned memory.
    pub mapped: bool,
    /// Vector dimension.
    pub dim: usize,
    /// Number of stored vectors.
    pub ntotal: usize,
    /// Number of inverted lists.
    pub nlist: usize,
    /// n_probe stored in the file (searches use 1).
    pub nprobe: u32,
    /// Distance metric.
    pub metric: Metric,
    /// What the vectors are.
    pub metadata: Metadata,
    /// Whether its pages are locked in RAM (`mlock`, `VirtualLock`: see
    /// [`platform::lock_memory`](crate::platform::lock_memory)); best effort, may be false for
    /// users with a small `RLIMIT_MEMLOCK` (or a small working set on Windows), and always is on
    /// platforms that cannot lock pages, in which case pages could in principle be evicted under
    /// memory pressure.
    pub mlocked: bool,
    /// Bytes of memory it occupies (mapped or owned).
    pub bytes: u64,
    /// The voice's median f0, Hz, from the metadata's pitch statistics (`None`: none recorded),
    /// read when the index was prepared so the audio side can match pitch to it.
    pub voice_median_f0_hz: Option<f32>,
    /// The voice's typical spacing ([`typical_spacing`](crate::index::typical_spacing)):
    /// the median squared distance between a stored frame and its nearest other one, measured
    /// when the index was prepared. A blend's nearest distance over it tells how well the voice
    /// covers the input (the editor's match meter). `None` for fewer than two frames.
    pub typical_spacing: Option<f32>,
}

/// The product quantizer of an IVF-PQ FastScan index, as [`IndexInfo::pq`] reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PqInfo {
    /// Sub-quantizers (faiss `M`); the codes take `M` × 4 bits per vector.
    pub m: usize,
    /// Bits per code (always 4: FastScan).
    pub nbits: usize,
    /// The codes encode residuals from the list centroids (`x4fsr`) rather than vectors.
    pub by_residual: bool,
    /// Vectors per block of packed codes (faiss `bbs`).
    pub bbs: usize,
    /// The refinement's k_factor when the index holds its exact vectors (`,RFlat`).
    pub k_factor: Option<f32>,
}

/// One loaded index as the runtime holds it.
pub(crate) struct Entry {
    pub(crate) index: AnyIndex,
    pub(crate) info: Arc<IndexInfo>,
    alive: Arc<AtomicUsize>,
}

impl Entry {
    pub(crate) fn new(
        index: AnyIndex,
        name: String,
        path: PathBuf,
        alive: Arc<AtomicUsize>,
    ) -> Entry {
        let info = IndexInfo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name,
            path,
            kind: index.source_kind(),
            structure: index.structure(),
            description: index.describe(),
            pq: match &index {
                AnyIndex::Flat(_) => None,
                AnyIndex::Pq(p) => Some(PqInfo {
                    m: p.m(),
                    nbits: PQ_NBITS,
                    by_residual: p.by_residual(),
                    bbs: p.bbs(),
                    k_factor: p.k_factor(),
                }),
            },
            mapped: index.is_mapped(),
            dim: index.dim(),
            ntotal: index.ntotal(),
            nlist: index.nlist(),
            nprobe: index.nprobe(),
            metric: index.metric(),
            metadata: index.metadata().clone(),
            mlocked: index.is_locked(),
            bytes: index.byte_len() as u64,
            voice_median_f0_hz: index.metadata().voice_median_f0_hz().map(|hz| hz as f32),
            typical_spacing: crate::index::typical_spacing(&index),
        };
        alive.fetch_add(1, Ordering::Relaxed);
        Entry {
            index,
            info: Arc::new(info),
            alive,
        }
    }

    #[inline]
    pub(crate) fn id(&self) -> u64 {
        self.info.id
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An index loaded, validated, prefaulted and (if allowed) locked in RAM, ready for
/// [`Controller::publish`](super::Controller::publish). Made by
/// [`Controller::prepare`](super::Controller::prepare) or
/// [`Controller::prepare_index`](super::Controller::prepare_index).
pub struct PreparedIndex {
    pub(crate) entry: Arc<Entry>,
}

impl PreparedIndex {
    /// Its description.
    pub fn info(&self) -> &IndexInfo {
        &self.entry.info
    }

    /// The index itself.
    pub fn index(&self) -> &AnyIndex {
        &self.entry.index
    }
}

impl std::fmt::Debug for PreparedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PreparedIndex")
            .field(&*self.entry.info)
            .finish()
    }
}

/// The display name of a file: its file name.
pub(crate) fn display_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
