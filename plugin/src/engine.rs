//! The only place the plugin touches the library's realtime runtime (`knnblend::live`) and voice
//! path (`knnblend::voice`). Everything else in the plugin talks to the small types below, so a
//! change in the library's API is a change in this file only.
//!
//! - [`start`] creates the runtime for one sample rate and channel count: a [`ControlHandle`]
//!   (control side: loads, status, telemetry; shared with the editor) and an [`AudioHandle`]
//!   (audio side: owned by the plugin's `process()`).
//! - The plugin does no search and no DSP: [`AudioHandle::process`] hands the buffer to
//!   `VoiceEngine::process`.

use std::path::{Path, PathBuf};

use knnblend::{live, voice};

/// Number of voice slots the runtime supports.
pub const MAX_SLOTS: usize = live::MAX_SLOTS;

/// Parameters for one block, already clamped to their ranges by the plugin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSettings {
    /// Active slot, 0-based.
    pub active_slot: usize,
    /// Neighbours per frame.
    pub k: usize,
    /// Blend ratio 0–1.
    pub ratio: f32,
    /// Crossfade time for slot switches and new arrivals, in seconds.
    pub crossfade_seconds: f32,
    /// Dry/wet 0–1.
    pub dry_wet: f32,
    /// Output gain, linear.
    pub output_gain: f32,
}

/// What a slot holds, for display.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceInfo {
    /// Display name of the index (usually the file name).
    pub name: String,
    /// Path the index was loaded from.
    pub path: PathBuf,
    /// Feature dimension.
    pub dim: usize,
    /// Number of stored vectors.
    pub vectors: u64,
    /// Number of inverted lists.
    pub lists: usize,
    /// Frames of source audio the index was built from.
    pub frames: u64,
    /// Duration of the source audio.
    pub duration_seconds: f64,
    /// Feature kind recorded in the file.
    pub features: String,
    /// Whether the index is locked in RAM.
    pub mlocked: bool,
}

/// Load state of a slot.
#[derive(Debug, Clone, PartialEq)]
pub enum LoadState {
    /// Nothing requested.
    Empty,
    /// A load is running; `done` of `total` bytes processed.
    Loading {
        /// Bytes processed so far.
        done: u64,
        /// Total bytes, 0 if unknown.
        total: u64,
    },
    /// The index is serving.
    Ready,
    /// The last request failed; the message says why. A previously loaded index keeps serving.
    Failed(String),
}

/// Status of one slot as the editor shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotView {
    /// Load state of the latest request.
    pub state: LoadState,
    /// The index currently serving in the slot, if any.
    pub info: Option<VoiceInfo>,
}

/// Telemetry of the whole runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TelemetryView {
    /// Blend calls (feature frames retrieved) in total.
    pub queries: u64,
    /// Blend calls per slot, made while that slot was active.
    pub slot_queries: [u64; MAX_SLOTS],
    /// Duration of the last blend call, ns.
    pub last_query_ns: u64,
    /// Longest blend call, ns.
    pub max_query_ns: u64,
    /// Audio blocks processed.
    pub blocks: u64,
    /// Whether a crossfade is running.
    pub fading: bool,
    /// Slot the audio side is using, 0-based.
    pub active_slot: usize,
}

/// Control side of the runtime; cheap to share, safe to call from any non-audio thread.
pub struct ControlHandle {
    controller: live::Controller,
}

impl ControlHandle {
    /// Requests `path` in `slot`. Returns immediately; the library's loader does the work and the
    /// current index keeps serving until the new one is ready (or keeps serving if it fails).
    pub fn load(&self, slot: usize, path: &Path) {
        let _ticket = self.controller.load(slot, path);
    }

    /// Empties `slot`.
    pub fn unload(&self, slot: usize) {
        // Only fails for a slot number out of range, which the slot store never sends.
        let _ = self.controller.unload(slot);
    }

    /// Current status of `slot`.
    pub fn status(&self, slot: usize) -> SlotView {
        convert_status(self.controller.status(slot))
    }

    /// Current telemetry.
    pub fn telemetry(&self) -> TelemetryView {
        convert_telemetry(&self.controller.telemetry())
    }

    /// Releases retired indexes now (the loader also does this periodically).
    pub fn collect(&self) {
        self.controller.collect();
    }
}

/// Audio side of the runtime; owned by the audio thread (create and drop it elsewhere).
pub struct AudioHandle {
    voice: voice::VoiceEngine<live::AudioEngine>,
    spec: voice::FeatureSpec,
    sample_rate: f32,
    channels: usize,
}

impl AudioHandle {
    /// Latency the voice path adds, in samples at the runtime's sample rate.
    pub fn latency_samples(&self) -> u32 {
        self.voice.latency_samples()
    }

    /// Sample rate this handle was built for.
    pub fn sample_rate(&self) -> f32 {
        self.sample_rate
    }

    /// Channel count this handle was built for.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Processes `channels` in place. Allocation-free, lock-free.
    #[inline]
    pub fn process(&mut self, channels: &mut [&mut [f32]], settings: &BlockSettings) {
        let params = voice::BlockParams {
            active_slot: settings.active_slot,
            k: settings.k,
            ratio: settings.ratio,
            crossfade_seconds: settings.crossfade_seconds,
            dry_wet: settings.dry_wet,
            output_gain: settings.output_gain,
        };
        self.voice.process(channels, &params);
    }

    /// Clears all running state (history, fades); realtime-safe.
    pub fn reset(&mut self) {
        self.voice.reset();
    }

    /// A handle for another sample rate or channel count on the same runtime: loaded voices and
    /// the controller stay. Allocates; call it off the audio thread.
    pub fn reconfigure(self, sample_rate: f32, channels: usize) -> AudioHandle {
        let AudioHandle { voice, spec, .. } = self;
        build_audio(voice.into_audio(), spec, sample_rate, channels)
    }
}

fn build_audio(
    audio: live::AudioEngine,
    spec: voice::FeatureSpec,
    sample_rate: f32,
    channels: usize,
) -> AudioHandle {
    // Also sets the runtime's crossfade frame period to the hop at this rate.
    let voice = voice::VoiceEngine::new(audio, &spec, sample_rate, channels);
    AudioHandle {
        voice,
        spec,
        sample_rate,
        channels,
    }
}

/// What the voice engine expects an index to hold, for the editor, e.g.
/// "knnblend-logmel-v1 (40 bands, 50–7600 Hz, 40 ms frames, 10 ms hop)".
pub fn expected_features() -> String {
    voice::FeatureSpec::default().describe()
}

/// Creates the runtime for `sample_rate` and up to `channels` channels. Indexes are checked
/// against the voice engine's features before they are published.
pub fn start(sample_rate: f32, channels: usize) -> (ControlHandle, AudioHandle) {
    let spec = voice::FeatureSpec::default();
    // The feature check as validator, and room for RVC-width indexes so a mismatched one is
    // refused with a message naming its features.
    let (controller, audio) = live::live(spec.live_config(MAX_SLOTS));
    (
        ControlHandle { controller },
        build_audio(audio, spec, sample_rate, channels),
    )
}

fn convert_status(status: live::SlotStatus) -> SlotView {
    let state = match status.state {
        live::SlotState::Empty => LoadState::Empty,
        live::SlotState::Loading { done, total } => LoadState::Loading { done, total },
        live::SlotState::Ready => LoadState::Ready,
        live::SlotState::Failed(message) => LoadState::Failed(message),
    };
    let info = status.info.map(|info| VoiceInfo {
        name: info.name.clone(),
        path: info.path.clone(),
        dim: info.dim,
        vectors: info.ntotal as u64,
        lists: info.nlist,
        frames: info.metadata.frames,
        duration_seconds: info.metadata.duration_seconds,
        features: info.metadata.features.clone(),
        mlocked: info.mlocked,
    });
    SlotView { state, info }
}

fn convert_telemetry(snapshot: &live::TelemetrySnapshot) -> TelemetryView {
    let mut view = TelemetryView {
        queries: snapshot.queries,
        last_query_ns: snapshot.last_query_ns,
        max_query_ns: snapshot.max_query_ns,
        blocks: snapshot.blocks,
        fading: snapshot.fading,
        active_slot: snapshot.active_slot,
        ..TelemetryView::default()
    };
    for (out, slot) in view.slot_queries.iter_mut().zip(&snapshot.slots) {
        *out = slot.queries;
    }
    view
}
