//! The voice path: spectral-envelope features, retrieval-driven resynthesis (the realtime
//! [`VoiceEngine`]), and the tools around it.
//!
//! Retrieval-based timbre transfer without a neural model: kNN-VC's idea (replace each input
//! frame by its nearest frames of the target voice) in a spectral-envelope feature space, with
//! RVC's blend. Per frame the input's envelope is blended with its nearest stored envelopes and
//! the input spectrum is reshaped toward the blend.
//!
//! - [`features`]: [`FeatureSpec`] (physical units), [`Framing`], [`BandLayout`].
//! - [`engine`]: [`VoiceEngine`], [`BlockParams`], [`VoiceSettings`].
//! - [`retriever`]: the per-frame retrieval the engine calls ([`Retriever`]).
//! - [`extract`]: offline feature extraction (index building).
//! - [`synth`]: a small formant synthesiser for tests and demos.
//! - [`pitch`]: a YIN pitch tracker ([`Yin`], [`PitchSpec`]) at any sample rate.
//! - `build` (feature `build`): `knnblend build` (`build_from_audio`, `build_from_npy`);
//!   `npy` (feature `npy`): RVC feature folders; [`shuffle`]: RVC's shuffle, reproducibly.
//! - `render` (feature `audio-files`): `knnblend render` (`render_file`); `audio_file`
//!   (feature `audio-files`): decoding and WAV output.

pub mod analysis;
#[cfg(feature = "audio-files")]
pub mod audio_file;
#[cfg(feature = "build")]
pub mod build;
pub mod engine;
pub mod extract;
pub mod features;
mod flat;
#[cfg(feature = "npy")]
pub mod npy;
pub mod offline;
pub mod pitch;
pub mod pitch_control;
pub mod pitch_stats;
mod ramp;
#[cfg(feature = "audio-files")]
pub mod render;
pub mod retriever;
pub mod shift;
pub mod shuffle;
pub mod snapshot;
pub mod synth;

#[cfg(feature = "audio-files")]
pub use audio_file::{read_audio, write_wav_f32, Audio, AudioError};
#[cfg(feature = "build")]
pub use build::{
    build_from_audio, build_from_npy, AlphaExpand, BuildError, BuildOptions, BuildStage,
    BuildSummary,
};
pub use engine::{BlockParams, VoiceEngine, VoiceSettings, VoiceStats, INPUT_LIMIT};
pub use extract::{downmix, Extracted, Extractor, SilenceRule};
pub use features::{BandLayout, FeatureSpec, Framing, FEATURE_KIND};
pub use flat::flat_parts;
pub use offline::{render_buffers, Schedule};
pub use pitch::{Pitch, PitchSpec, Yin};
pub use pitch_control::{PitchMode, PitchState};
pub use pitch_stats::{PitchCollector, PitchStats};
#[cfg(feature = "audio-files")]
pub use render::{
    render_file, RenderError, RenderOptions, RenderPitch, RenderStage, RenderSummary,
};
pub use retriever::{IndexRetriever, Retriever};
pub use snapshot::{Readout, SnapshotBoard, VoiceSnapshot};
