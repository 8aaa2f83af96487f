//! The only place the plugin touches the library's realtime runtime (`knnblend::live`), voice
//! path (`knnblend::voice`) and RVC voice host (`knnblend_rvc::host`). Everything else in the
//! plugin talks to the small types below, so a change in the libraries' APIs is a change in
//! this file only.
//!
//! - [`start`] creates the runtime for one sample rate and channel count: a [`ControlHandle`]
//!   (control side: loads, status, telemetry; shared with the editor) and an [`AudioHandle`]
//!   (audio side: owned by the plugin's `process()`).
//! - [`start_rvc`] creates the RVC voice host for one sample rate: an [`RvcControl`] (shared
//!   with the slot store and the editor) whose audio side goes into the [`AudioHandle`].
//! - The plugin does no search and no DSP: [`AudioHandle::process`] hands the buffer to
//!   `VoiceEngine::process`, or for an RVC slot to the RVC host's `VoiceAudio::process`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use knnblend::index::QueryExpansion;
use knnblend::{live, voice};
use knnblend_rvc::host;

pub use knnblend_rvc::host::{
    HostTelemetry as RvcTelemetry, VoiceControl as RvcControl, VoiceState as RvcState,
    VoiceStatus as RvcStatus,
};
pub use knnblend_rvc::voice::{VoiceFiles, VoiceInfo as RvcVoiceInfo};

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
    /// Query-side α expansion of the retrieval (`None`: off).
    pub expansion: Option<QueryExpansion>,
    /// Pitch shift, semitones: RVC's `f0_up_key` on RVC slots, a formant-preserving shift of
    /// the DSP voice path otherwise.
    pub pitch: f32,
    /// DSP voices: match the input's pitch to the active voice's recorded median.
    pub pitch_match: bool,
    /// RVC: protect, 0–0.5.
    pub protect: f32,
    /// RVC: conversion block, seconds.
    pub block_seconds: f32,
    /// RVC: extra context, seconds.
    pub extra_seconds: f32,
    /// RVC: block crossfade (SOLA), seconds.
    pub sola_seconds: f32,
    /// The host renders offline (a bounce): the RVC path waits for its worker.
    pub offline: bool,
}

impl BlockSettings {
    fn rvc(&self) -> host::BlockParams {
        host::BlockParams {
            active_slot: self.active_slot,
            pitch: self.pitch,
            index_rate: self.ratio,
            protect: self.protect,
            k: self.k,
            expansion: self.expansion,
            crossfade_seconds: self.crossfade_seconds,
            block_seconds: self.block_seconds,
            extra_seconds: self.extra_seconds,
            sola_seconds: self.sola_seconds,
            dry_wet: self.dry_wet,
            output_gain: self.output_gain,
            offline: self.offline,
        }
    }
}

/// Which slots are RVC slots: written by the slot store, read by the audio thread (relaxed
/// atomics).
#[derive(Debug, Default)]
pub struct SlotKinds([AtomicBool; MAX_SLOTS]);

impl SlotKinds {
    /// Marks `slot` as an RVC slot or not.
    pub fn set_rvc(&self, slot: usize, rvc: bool) {
        if let Some(flag) = self.0.get(slot) {
            flag.store(rvc, Relaxed);
        }
    }

    /// Whether `slot` is an RVC slot.
    #[inline]
    pub fn is_rvc(&self, slot: usize) -> bool {
        self.0.get(slot).is_some_and(|flag| flag.load(Relaxed))
    }
}

/// What a slot holds, for display.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceInfo {
    /// Display name of the index (usually the file name).
    pub name: String,
    /// Path the index was loaded from.
    pub path: PathBuf,
    /// The index's type in one line, e.g. `IVF-Flat` or `IVF4,PQ40x4fs,RFlat (IVF-PQ
    /// FastScan, k_factor 1)` (the library's `AnyIndex::describe`).
    pub index_type: String,
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
    /// The voice's pitch statistics in one line (`None`: the index records none, so Match
    /// voice pitch cannot work with it).
    pub pitch: Option<String>,
    /// The voice's median f0, Hz, when its statistics have one (Match voice pitch's target).
    pub median_f0_hz: Option<f32>,
}

/// What the voice path did in its latest frame, for the editor's view: published by the audio
/// thread (wait-free, allocation-free), read by the editor.
pub type ViewSnapshot = voice::VoiceSnapshot;

/// The board the DSP voice path publishes a [`ViewSnapshot`] on every 10 ms frame; the plugin
/// makes one, hands it to every runtime it starts and to the editor.
#[derive(Default)]
pub struct ViewBoard(Arc<voice::SnapshotBoard>);

impl ViewBoard {
    /// The latest frame (frame 0: nothing yet).
    pub fn read(&self) -> ViewSnapshot {
        self.0.read()
    }
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
    rvc: Option<host::VoiceAudio>,
    kinds: Arc<SlotKinds>,
    /// Which path served the last block (true: the RVC host).
    served_rvc: bool,
    board: Arc<ViewBoard>,
}

impl AudioHandle {
    /// Latency the path serving `active_slot` adds, in samples at the runtime's sample rate:
    /// the voice path's, or for an RVC slot the RVC host's (block + worker budget + fades).
    pub fn latency_samples_for(&self, active_slot: usize) -> u32 {
        match &self.rvc {
            Some(rvc) if self.kinds.is_rvc(active_slot) => rvc.latency() as u32,
            _ => self.voice.latency_samples(),
        }
    }

    /// Latency of the knnblend voice path alone.
    pub fn latency_samples(&self) -> u32 {
        self.voice.latency_samples()
    }

    /// Gives this handle the RVC host's audio side (replacing, and returning, any earlier one).
    /// Call off the audio thread.
    pub fn set_rvc(&mut self, rvc: Option<host::VoiceAudio>) -> Option<host::VoiceAudio> {
        std::mem::replace(&mut self.rvc, rvc)
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
        let rvc_slot = self.rvc.is_some() && self.kinds.is_rvc(settings.active_slot);
        if rvc_slot != self.served_rvc {
            // The other path sat idle: nothing from before the gap may play.
            self.served_rvc = rvc_slot;
            match &mut self.rvc {
                Some(rvc) if rvc_slot => rvc.restart(),
                _ => self.voice.reset(),
            }
        }
        if let Some(rvc) = self.rvc.as_mut().filter(|_| rvc_slot) {
            rvc.process(channels, &settings.rvc());
            return;
        }
        let params = voice::BlockParams {
            active_slot: settings.active_slot,
            k: settings.k,
            ratio: settings.ratio,
            crossfade_seconds: settings.crossfade_seconds,
            dry_wet: settings.dry_wet,
            output_gain: settings.output_gain,
            expansion: settings.expansion,
            // DSP voices: Pitch is a formant-preserving shift (0: off, the path is bypassed).
            pitch: if settings.pitch_match {
                voice::PitchMode::MatchVoice {
                    range: voice::pitch_control::MATCH_RANGE_SEMITONES,
                }
            } else if settings.pitch != 0.0 {
                voice::PitchMode::Semitones(settings.pitch)
            } else {
                voice::PitchMode::Off
            },
        };
        self.voice.process(channels, &params);
    }

    /// Clears all running state (history, fades); realtime-safe.
    pub fn reset(&mut self) {
        self.voice.reset();
        // The RVC path too: nothing from before the reset may play.
        if let Some(rvc) = &mut self.rvc {
            rvc.restart();
        }
    }

    /// A handle for another sample rate or channel count on the same runtime: loaded voices and
    /// the controller stay. Allocates; call it off the audio thread.
    /// The RVC host's audio side stays when the rate does (the caller makes a new host for a
    /// new rate).
    pub fn reconfigure(self, sample_rate: f32, channels: usize) -> AudioHandle {
        let AudioHandle {
            voice,
            spec,
            rvc,
            kinds,
            board,
            sample_rate: old_rate,
            ..
        } = self;
        let mut out = build_audio(
            voice.into_audio(),
            spec,
            sample_rate,
            channels,
            kinds,
            board,
        );
        if old_rate == sample_rate {
            out.rvc = rvc;
        }
        out
    }

    /// Whether an RVC host is attached.
    pub fn has_rvc(&self) -> bool {
        self.rvc.is_some()
    }
}

fn build_audio(
    audio: live::AudioEngine,
    spec: voice::FeatureSpec,
    sample_rate: f32,
    channels: usize,
    kinds: Arc<SlotKinds>,
    board: Arc<ViewBoard>,
) -> AudioHandle {
    // Also sets the runtime's crossfade frame period to the hop at this rate.
    let mut voice = voice::VoiceEngine::new(audio, &spec, sample_rate, channels);
    voice.set_snapshots(Some(board.0.clone()));
    AudioHandle {
        voice,
        spec,
        sample_rate,
        channels,
        rvc: None,
        kinds,
        served_rvc: false,
        board,
    }
}

/// Creates the RVC voice host for `sample_rate`, starting from `settings`. ONNX Runtime is
/// looked for beside the plugin's binary (the bundle carries it), then `ORT_DYLIB_PATH`.
/// `None` (with the reason) when the host could not start its loader thread.
pub fn start_rvc(
    sample_rate: f32,
    settings: &BlockSettings,
) -> Result<(RvcControl, host::VoiceAudio), String> {
    let mut runtime = knnblend_rvc::runtime::RuntimeSearch::default();
    if let Some(dir) = knnblend::platform::module_directory() {
        runtime.beside.push(dir);
    }
    host::host(host::HostConfig {
        host_rate: sample_rate.round() as u32,
        runtime,
        seed: 1,
        initial: settings.rvc(),
    })
    .map_err(|e| format!("could not start the RVC voice loader: {e}"))
}

/// What the voice engine expects an index to hold, for the editor, e.g.
/// "knnblend-logmel-v1 (40 bands, 50–7600 Hz, 40 ms frames, 10 ms hop)".
pub fn expected_features() -> String {
    voice::FeatureSpec::default().describe()
}

/// The band range of the voice engine's features, Hz (for the editor's envelope axis).
pub fn band_range_hz() -> (f32, f32) {
    let spec = voice::FeatureSpec::default();
    (spec.f_min_hz, spec.f_max_hz)
}

/// Creates the runtime for `sample_rate` and up to `channels` channels. Indexes are checked
/// against the voice engine's features before they are published. `kinds` says which slots are
/// RVC slots; the voice path publishes what it does on `board`.
pub fn start(
    sample_rate: f32,
    channels: usize,
    kinds: Arc<SlotKinds>,
    board: Arc<ViewBoard>,
) -> (ControlHandle, AudioHandle) {
    let spec = voice::FeatureSpec::default();
    // The feature check as validator, and room for RVC-width indexes so a mismatched one is
    // refused with a message naming its features.
    let (controller, audio) = live::live(spec.live_config(MAX_SLOTS));
    (
        ControlHandle { controller },
        build_audio(audio, spec, sample_rate, channels, kinds, board),
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
        index_type: info.description.clone(),
        dim: info.dim,
        vectors: info.ntotal as u64,
        lists: info.nlist,
        frames: info.metadata.frames,
        duration_seconds: info.metadata.duration_seconds,
        features: info.metadata.features.clone(),
        mlocked: info.mlocked,
        pitch: voice::PitchStats::from_metadata(&info.metadata).map(|p| p.describe()),
        median_f0_hz: info.voice_median_f0_hz,
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
