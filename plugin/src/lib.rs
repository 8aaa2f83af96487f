//! kNN Blend: the knnblend voice path as a CLAP and VST3 audio effect.
//!
//! The plugin is glue. It owns the parameters ([`params`]), the persisted voice slots
//! ([`slots`]), the editor ([`editor`]) and one call into the library per block ([`engine`]).

#![deny(missing_docs)]

use std::num::NonZeroU32;
use std::sync::Arc;

use nice_plug::prelude::*;
use nice_plug_egui::EguiEditorState;

pub mod denormals;
pub mod editor;
pub mod engine;
pub mod meter;
pub mod params;
pub mod slots;
pub mod view;

use engine::{AudioHandle, BlockSettings};
use knnblend::index::QueryExpansion;
use meter::ProcessMeter;
use params::{clamp_f32, clamp_i32, KnnBlendParams};

/// The plugin instance.
pub struct KnnBlend {
    params: Arc<KnnBlendParams>,
    editor_state: Arc<EguiEditorState>,
    meter: Arc<ProcessMeter>,
    /// The runtime's audio side; `None` until the first activation (audio passes through).
    audio: Option<AudioHandle>,
    /// Latency last reported to the host.
    reported_latency: u32,
    /// 0 = processing, 1 = bypassed; glides over `BYPASS_MS`.
    bypass: Smoother<f32>,
    sample_rate: f32,
    /// The host renders offline (`ProcessMode::Offline`): the RVC path may wait for its worker.
    offline: bool,
}

impl Default for KnnBlend {
    fn default() -> Self {
        Self {
            params: Arc::new(KnnBlendParams::default()),
            editor_state: editor::default_state(),
            meter: Arc::new(ProcessMeter::default()),
            audio: None,
            reported_latency: 0,
            bypass: Smoother::new(SmoothingStyle::Linear(params::BYPASS_MS)),
            sample_rate: 48_000.0,
            offline: false,
        }
    }
}

impl KnnBlend {
    /// The parameters (shared with the editor and, in tests, with the harness).
    pub fn params_handle(&self) -> Arc<KnnBlendParams> {
        self.params.clone()
    }

    /// The CPU meter (the editor turns it on while open; tests do too).
    pub fn meter_handle(&self) -> Arc<ProcessMeter> {
        self.meter.clone()
    }

    /// Latency of the path serving the active slot, in samples (what is reported to the host).
    pub fn latency_samples(&self) -> u32 {
        let slot = (clamp_i32(self.params.voice.value(), params::VOICE) - 1) as usize;
        self.audio
            .as_ref()
            .map_or(0, |audio| audio.latency_samples_for(slot))
    }

    /// Settings for the next block of `samples` samples: advances the smoothers (unless
    /// `samples` is 0) and clamps everything into range (restored or automated values are not
    /// trusted).
    fn block_settings(&self, samples: usize) -> BlockSettings {
        let p = &self.params;
        let steps = samples as u32;
        let smoothed = |param: &FloatParam| {
            if steps == 0 {
                param.value()
            } else {
                param.smoothed.next_step(steps)
            }
        };
        BlockSettings {
            active_slot: (clamp_i32(p.voice.value(), params::VOICE) - 1) as usize,
            k: clamp_i32(p.neighbours.value(), params::NEIGHBOURS) as usize,
            expansion: match clamp_i32(p.expand.value(), params::EXPAND) {
                0 => None,
                k => Some(QueryExpansion {
                    k: k as usize,
                    alpha: clamp_f32(p.expand_alpha.value(), params::EXPAND_ALPHA),
                }),
            },
            ratio: clamp_f32(smoothed(&p.blend), params::BLEND),
            crossfade_seconds: clamp_f32(p.crossfade_ms.value(), params::CROSSFADE_MS) / 1000.0,
            dry_wet: clamp_f32(smoothed(&p.dry_wet), params::DRY_WET),
            output_gain: util::db_to_gain(clamp_f32(
                smoothed(&p.output_gain_db),
                params::OUTPUT_GAIN_DB,
            )),
            pitch: clamp_i32(p.pitch.value(), params::PITCH) as f32,
            pitch_match: p.pitch_match.value(),
            protect: clamp_f32(p.protect.value(), params::PROTECT),
            block_seconds: clamp_f32(p.block_ms.value(), params::BLOCK_MS) / 1000.0,
            extra_seconds: clamp_f32(p.extra_ms.value(), params::EXTRA_MS) / 1000.0,
            sola_seconds: clamp_f32(p.sola_ms.value(), params::SOLA_MS) / 1000.0,
            offline: self.offline,
        }
    }
}

impl Plugin for KnnBlend {
    const NAME: &'static str = "kNN Blend";
    const VENDOR: &'static str = "knnblend";
    const URL: &'static str = "https://crates.io/crates/knnblend";
    const EMAIL: &'static str = "knnblend@users.noreply.codeberg.org";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(2),
            main_output_channels: NonZeroU32::new(2),
            ..AudioIOLayout::const_default()
        },
        AudioIOLayout {
            main_input_channels: NonZeroU32::new(1),
            main_output_channels: NonZeroU32::new(1),
            ..AudioIOLayout::const_default()
        },
    ];

    const SAMPLE_ACCURATE_AUTOMATION: bool = true;

    type SysExMessage = ();
    type BackgroundTask = ();
    type Editor = nice_plug_egui::EguiEditor<editor::EditorApp>;

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        editor::create(
            self.params.clone(),
            self.meter.clone(),
            self.editor_state.clone(),
        )
    }

    fn filter_state(state: &mut PluginState) {
        params::sanitize_state(state);
    }

    fn activate(
        &mut self,
        audio_io_layout: &AudioIOLayout,
        buffer_config: &BufferConfig,
        context: &mut impl ActivateContext<Self>,
    ) -> bool {
        let sample_rate = buffer_config.sample_rate;
        if !(sample_rate.is_finite() && sample_rate > 0.0) {
            return false;
        }
        let channels = audio_io_layout
            .main_output_channels
            .map_or(2, NonZeroU32::get) as usize;

        let mut audio = match self.audio.take() {
            Some(audio) if audio.sample_rate() == sample_rate && audio.channels() == channels => {
                audio
            }
            // Same runtime, new rate: loaded voices stay.
            Some(audio) => audio.reconfigure(sample_rate, channels),
            None => {
                let kinds = self.params.slots.kinds();
                let board = self.params.slots.view_board();
                let (control, audio) = engine::start(sample_rate, channels, kinds, board);
                // The persisted slots are requested from the new runtime's loader.
                self.params.slots.attach(Arc::new(control));
                audio
            }
        };
        if !audio.has_rvc() {
            // RVC voices are opened for one host rate: a new rate, a new voice host (the old
            // one's voices are dropped here, off the audio thread).
            let settings = self.block_settings(0);
            match engine::start_rvc(sample_rate, &settings) {
                Ok((control, rvc)) => {
                    drop(audio.set_rvc(Some(rvc)));
                    self.params.slots.attach_rvc(Some(Arc::new(control)));
                }
                Err(why) => {
                    drop(audio.set_rvc(None));
                    self.params.slots.attach_rvc(None);
                    self.params.slots.set_rvc_failure(Some(why));
                }
            }
        }
        self.audio = Some(audio);
        self.sample_rate = sample_rate;
        self.offline = buffer_config.process_mode == ProcessMode::Offline;
        self.bypass
            .reset(if self.params.bypass.value() { 1.0 } else { 0.0 });
        self.meter.set_sample_rate(sample_rate);
        self.reported_latency = self.latency_samples();
        context.set_latency_samples(self.reported_latency);
        true
    }

    fn reset(&mut self) {
        if let Some(audio) = &mut self.audio {
            audio.reset();
        }
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        let _denormals = denormals::FlushDenormals::new();
        let samples = buffer.samples();
        if samples == 0 {
            return ProcessStatus::Normal;
        }
        let timer = self.meter.start();
        let mut settings = self.block_settings(samples);
        // Bypass: the dry side of the mix (the latency-compensated input) at unity gain.
        let bypassed = if self.params.bypass.value() { 1.0 } else { 0.0 };
        self.bypass.set_target(self.sample_rate, bypassed);
        let b = self.bypass.next_step(samples as u32);
        settings.dry_wet *= 1.0 - b;
        settings.output_gain += (1.0 - settings.output_gain) * b;
        let latency = match &mut self.audio {
            Some(audio) => {
                audio.process(buffer.as_slice(), &settings);
                audio.latency_samples_for(settings.active_slot)
            }
            None => 0,
        };
        if latency != self.reported_latency {
            // Switching between an index slot and an RVC slot, or a new Block time.
            self.reported_latency = latency;
            context.set_latency_samples(latency);
        }
        self.meter.stop(timer, samples);
        if latency > 0 {
            ProcessStatus::Tail(latency)
        } else {
            ProcessStatus::Normal
        }
    }
}

impl ClapPlugin for KnnBlend {
    const CLAP_ID: &'static str = "org.knnblend.knn-blend";
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Realtime nearest-neighbour feature blending for voice conversion");
    const CLAP_MANUAL_URL: Option<&'static str> = Some(Self::URL);
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[
        ClapFeature::AudioEffect,
        ClapFeature::Stereo,
        ClapFeature::Mono,
        ClapFeature::PitchShifter,
    ];
}

impl Vst3Plugin for KnnBlend {
    const VST3_CLASS_ID: [u8; 16] = *b"knnblendVoiceKnn";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] =
        &[Vst3SubCategory::Fx, Vst3SubCategory::PitchShift];
}

nice_export_clap!(KnnBlend);
nice_export_vst3!(KnnBlend);
