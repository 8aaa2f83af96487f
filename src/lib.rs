//! # knnblend
//!
//! Realtime nearest-neighbour feature blending for voice conversion: RVC's retrieval step
//! (an IVF-Flat index of a target voice's feature frames; for every input frame the k nearest
//! stored frames, weighted `1/score²`, blended with the input by `index_rate`) done inside an
//! audio callback.
//!
//! - [`format`]: bytes on disk — the memory-mappable `.kbi` format and the faiss IVF-Flat reader.
//! - [`index`]: search and blend — [`index::IvfIndex`], [`index::Searcher`], SIMD kernels.
#![warn(missing_docs)]

pub mod format;
pub mod index;
pub mod live;
pub mod voice;
