//! # knnblend
//!
//! Realtime nearest-neighbour feature blending for voice conversion: RVC's retrieval step
//! (an IVF-Flat index of a target voice's feature frames; for every input frame the k nearest
//! stored frames, weighted `1/score²`, blended with the input by `index_rate`) done inside an
//! audio callback.
//!
//! - [`format`](mod@format): bytes on disk — the memory-mappable `.kbi` format and the faiss
//!   IVF-Flat reader.
//! - [`index`]: search and blend — [`index::IvfIndex`], [`index::Searcher`], SIMD kernels.
//! - [`live`]: loading off the audio thread, lock-free publishing, crossfaded swaps, retiring
//!   off the audio thread — [`live::Controller`] and [`live::AudioEngine`].
//! - [`voice`]: the plugin's own voice path — spectral-envelope features, the realtime
//!   [`voice::VoiceEngine`], index builders.
//!
//! ## A host that brings its own features
//!
//! An RVC pipeline that computes HuBERT/ContentVec frames itself serves them from an RVC
//! `added_*.index` (or a `.kbi`) like this. The control side loads and checks the index on the
//! library's loader thread; the audio side blends the frames of each block against it.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use knnblend::format::IndexHeader;
//! use knnblend::live::{live, HeaderValidator, LiveConfig, LoadOutcome};
//!
//! // Control side (any non-realtime thread), once: the runtime and its loader thread.
//! // The header check refuses a file of other features before its vectors are read.
//! let only_768: HeaderValidator = Arc::new(|header: &IndexHeader| {
//!     if header.dim == 768 {
//!         Ok(())
//!     } else {
//!         Err(format!("expected 768-dim ContentVec features, found {}", header.dim))
//!     }
//! });
//! let config = LiveConfig {
//!     max_dim: 768,
//!     header_validator: Some(only_768),
//!     ..LiveConfig::default()
//! };
//! let (control, mut audio) = live(config);
//!
//! // Load into slot 0: returns at once; the loader validates, prefaults and publishes.
//! let ticket = control.load(0, "logs/alice/added_IVF1024_Flat_nprobe_1_alice_v2.index");
//! match ticket.wait() {
//!     LoadOutcome::Published(info) => println!("{}: {} × {}", info.name, info.ntotal, info.dim),
//!     LoadOutcome::Superseded => println!("a newer load replaced this one"),
//!     LoadOutcome::Failed(error) => eprintln!("not loaded: {error}"), // slot keeps its old index
//! }
//!
//! // Buffers the callback uses, allocated before it runs.
//! let frames = vec![[0f32; 768]; 16]; // e.g. one block's ContentVec frames
//! let mut out = vec![[0f32; 768]; 16];
//!
//! // Audio side (move `audio` to the realtime thread), per block:
//! audio.begin_block(0, 0.05); // active slot, crossfade seconds for a change of index
//! for (frame, blended) in frames.iter().zip(out.iter_mut()) {
//!     let _outcome = audio.blend(frame, 8, 0.75, blended); // k = 8, index rate 0.75
//! }
//! audio.end_block();
//! // Drop `audio` and `control` off the audio thread.
//! ```
//!
//! [`live`](mod@live) explains what the audio side may and may not do, and the one hazard of
//! memory-mapped indexes (a file truncated in place by another program).
#![warn(missing_docs)]

pub mod format;
pub mod index;
pub mod live;
pub mod platform;
pub mod voice;
