//! Search and blend: the IVF indexes in memory (IVF-Flat and IVF-PQ FastScan), the distance kernels, top-k selection and RVC's
//! neighbour blend. Everything called per frame here is allocation-free and lock-free.

mod any;
mod any_search;
mod backing;
mod balance;
mod blend;
mod coarse;
mod codes;
mod expand;
mod fastscan;
mod ivf;
pub mod kernels;
mod pq_blend;
mod pq_index;
mod pq_search;
mod screen;
mod search;
mod spacing;
mod spill;
mod topk;

pub use any::AnyIndex;
pub use any_search::AnySearcher;
pub use balance::{balance, BalanceReport};
pub(crate) use blend::{blend_neighbours, clamp_ratio};
pub use blend::{rvc_weights, BlendOutcome, BlendParams, SCORE_EPSILON};
pub use expand::{QueryExpansion, MAX_EXPAND_DIM};
pub use fastscan::{FastScanKernels, GroupSums};
pub use ivf::{IvfIndex, OpenOptions};
pub use kernels::Kernels;
pub use pq_index::PqIndex;
pub use pq_search::{LutRounding, PqNeighbour, PqSearcher, PQ_MAX_BASE_K};
pub use search::{BlockResults, Neighbour, SearchStats, Searcher, BLOCK, MAX_K, MAX_NPROBE};
pub use spacing::{typical_spacing, SPACING_SAMPLES};
pub use spill::{
    spill, spilled_list_cap, valid_copies, SpillOptions, SpillReport, MAX_COPIES_PER_VECTOR,
};
pub use topk::TopK;

#[cfg(feature = "faiss")]
mod faiss_ivf;
#[cfg(feature = "faiss")]
pub use faiss_ivf::{rvc_nlist, FaissIvf};
