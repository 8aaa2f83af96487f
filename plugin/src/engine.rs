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

use contract::live;
use knnblend::voice;

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

/// Query-time figures for one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SlotTelemetry {
    /// Queries served since the runtime started.
    pub queries: u64,
    /// Duration of the last query in nanoseconds.
    pub last_query_ns: u64,
    /// Longest query in nanoseconds.
    pub max_query_ns: u64,
}

/// Telemetry of the whole runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TelemetryView {
    /// Per-slot query figures.
    pub slots: [SlotTelemetry; MAX_SLOTS],
    /// Audio blocks processed since the runtime started.
    pub blocks: u64,
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
        self.controller.unload(slot);
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

/// Audio side of the runtime; owned by the audio thread.
pub struct AudioHandle {
    voice: voice::VoiceEngine<live::AudioEngine>,
    sample_rate: f32,
    channels: usize,
}

impl AudioHandle {
    /// Latency the voice path adds, in samples at the runtime's sample rate.
    pub fn latency_samples(&self) -> u32 {
        self.voice.latency_samples()
    }

    /// Sample rate this runtime was built for.
    pub fn sample_rate(&self) -> f32 {
        self.sample_rate
    }

    /// Channel count this runtime was built for.
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
}

/// Creates the runtime for `sample_rate` and up to `channels` channels.
pub fn start(sample_rate: f32, channels: usize) -> (ControlHandle, AudioHandle) {
    let spec = voice::FeatureSpec::default();
    let (controller, audio) = live::live(live::LiveConfig::for_spec(&spec));
    let voice = voice::VoiceEngine::with_retriever(audio, &spec, sample_rate, channels);
    (
        ControlHandle { controller },
        AudioHandle {
            voice,
            sample_rate,
            channels,
        },
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
        name: info.name,
        path: info.path,
        dim: info.dim,
        vectors: info.ntotal,
        lists: info.nlist,
        frames: info.frames,
        duration_seconds: info.duration_seconds,
        features: info.features,
        mlocked: info.mlocked,
    });
    SlotView { state, info }
}

fn convert_telemetry(snapshot: &live::TelemetrySnapshot) -> TelemetryView {
    let mut view = TelemetryView {
        blocks: snapshot.blocks,
        ..TelemetryView::default()
    };
    for (out, slot) in view.slots.iter_mut().zip(snapshot.slots.iter()) {
        *out = SlotTelemetry {
            queries: slot.queries,
            last_query_ns: slot.last_query_ns,
            max_query_ns: slot.max_query_ns,
        };
    }
    view
}

/// Stand-in for `knnblend::live` with the agreed shape, used until that module exists in the
/// library: every load is refused with a clear message and the voice path retrieves nothing
/// (features pass through unchanged).
mod contract {
    pub mod live {
        use std::path::{Path, PathBuf};
        use std::sync::Mutex;

        pub const MAX_SLOTS: usize = 8;

        pub struct LiveConfig;

        impl LiveConfig {
            pub fn for_spec(_spec: &knnblend::voice::FeatureSpec) -> Self {
                LiveConfig
            }
        }

        pub struct LoadTicket;

        pub enum SlotState {
            Empty,
            #[allow(dead_code)]
            Loading {
                done: u64,
                total: u64,
            },
            #[allow(dead_code)]
            Ready,
            Failed(String),
        }

        pub struct IndexInfo {
            pub name: String,
            pub path: PathBuf,
            pub dim: usize,
            pub ntotal: u64,
            pub nlist: usize,
            pub frames: u64,
            pub duration_seconds: f64,
            pub features: String,
            pub mlocked: bool,
        }

        pub struct SlotStatus {
            pub state: SlotState,
            pub info: Option<IndexInfo>,
        }

        #[derive(Default, Clone, Copy)]
        pub struct SlotTelemetry {
            pub queries: u64,
            pub last_query_ns: u64,
            pub max_query_ns: u64,
        }

        #[derive(Default)]
        pub struct TelemetrySnapshot {
            pub slots: [SlotTelemetry; MAX_SLOTS],
            pub blocks: u64,
        }

        pub struct Controller {
            requested: Mutex<[bool; MAX_SLOTS]>,
        }

        impl Controller {
            pub fn load(&self, slot: usize, _path: &Path) -> LoadTicket {
                if let Some(flag) = self.requested.lock().unwrap().get_mut(slot) {
                    *flag = true;
                }
                LoadTicket
            }
            pub fn unload(&self, slot: usize) {
                if let Some(flag) = self.requested.lock().unwrap().get_mut(slot) {
                    *flag = false;
                }
            }
            pub fn status(&self, slot: usize) -> SlotStatus {
                let requested = self.requested.lock().unwrap().get(slot).copied();
                SlotStatus {
                    state: if requested == Some(true) {
                        SlotState::Failed(
                            "voice indexes are not supported by this build yet".to_string(),
                        )
                    } else {
                        SlotState::Empty
                    },
                    info: None,
                }
            }
            pub fn telemetry(&self) -> TelemetrySnapshot {
                TelemetrySnapshot::default()
            }
            pub fn collect(&self) {}
        }

        pub struct AudioEngine;

        impl knnblend::voice::Retriever for AudioEngine {
            fn begin_block(&mut self, _active_slot: usize, _crossfade_seconds: f32) {}
            fn blend(
                &mut self,
                query: &[f32],
                _k: usize,
                _ratio: f32,
                out: &mut [f32],
            ) -> knnblend::index::BlendOutcome {
                out.copy_from_slice(query);
                knnblend::index::BlendOutcome::Empty
            }
            fn end_block(&mut self) {}
        }

        pub fn live(_config: LiveConfig) -> (Controller, AudioEngine) {
            (
                Controller {
                    requested: Mutex::new([false; MAX_SLOTS]),
                },
                AudioEngine,
            )
        }
    }
}
