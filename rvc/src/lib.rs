//! # knnblend-rvc
//!
//! RVC voices on knnblend. Per conversion block, on a worker thread the library owns:
//! host audio → 16 kHz (rubato) → ContentVec (ONNX) → knnblend retrieval on the slot's RVC
//! index (k = 8, RVC's `1/d²` weights, Blend = `index_rate`, through a `live` slot so swaps
//! crossfade) → features ×2 → f0 (RMVPE or the built-in tracker), shifted by Pitch → protect →
//! the RVC synthesizer (ONNX) → SOLA → the model's rate → host rate. The audio thread only
//! exchanges samples with the worker through `rtrb` rings and never waits.
//!
//! - [`runtime`]: finding and loading ONNX Runtime (`libonnxruntime`) at run time.
//! - [`models`]: the three ONNX models (ContentVec, the synthesizer, RMVPE), their signatures
//!   checked by name, dtype and shape when they are opened.
//! - [`f0`]: pitch: the built-in tracker, RVC's coarse pitch, `f0_up_key`.
//! - [`frames`]: RVC's feature steps: ×2 upsampling and protect.
//! - [`sola`]: SOLA: aligning and crossfading consecutive converted blocks.
//! - [`stream`]: the worker thread and the lock-free rings between it and the audio thread.
//! - [`pipeline`]: one block's conversion ([`pipeline::RvcConverter`]).
//! - [`voice`]: opening one voice from its files.
//! - [`host`]: eight slots of voices for a plugin: off-thread loading, one voice serving,
//!   crossfaded swaps, a fixed latency.
#![warn(missing_docs)]

pub mod error;
pub mod f0;
pub mod frames;
pub mod host;
pub mod models;
pub mod pipeline;
#[cfg(feature = "files")]
pub mod render;
pub mod resample;
pub mod runtime;
pub mod sola;
pub mod stream;
pub mod voice;

pub use error::RvcError;
pub use models::{ContentVec, Rmvpe, SynthInfo, Synthesizer};
pub use runtime::OnnxRuntime;
