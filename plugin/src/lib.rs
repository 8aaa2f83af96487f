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

use engine::{AudioHandle, BlockSettings};
use meter::ProcessMeter;
use params::{clamp_f32, clamp_i32, KnnBlendParams};

/// The plugin instance.
pub struct KnnBlend {
    params: Arc<KnnBlendParams>,
    editor_state: Arc<EguiEditorState>,
    meter: Arc<ProcessMeter>,
    /// The runtime's audio side; `None` until the first activation (audio passes through).
    audio: Option<AudioHandle>,
}

impl Default for KnnBlend {
    fn default() -> Self {
        Self {
            params: Arc::new(KnnBlendParams::default()),
            editor_state: editor::default_state(),
            meter: Arc::new(ProcessMeter::default()),
            audio: None,
        }
    }
}

impl KnnBlend {
    /// The parameters (shared with the editor and, in tests, with the harness).
    pub fn params_handle(&self) -> Arc<KnnBlendParams> {
        self.params.clone()
    }

    /// Latency currently reported to the host, in samples.
    pub fn latency_samples(&self) -> u32 {
        self.audio.as_ref().map_or(0, AudioHandle::latency_samples)
    }

    /// Settings for the next block of `samples` samples: advances the smoothers and clamps
    /// everything into range (restored or automated values are not trusted).
    fn block_settings(&self, samples: usize) -> BlockSettings {
        let p = &self.params;
        let steps = samples.max(1) as u32;
        BlockSettings {
            active_slot: (clamp_i32(p.voice.value(), params::VOICE) - 1) as usize,
            k: clamp_i32(p.neighbours.value(), params::NEIGHBOURS) as usize,
            ratio: clamp_f32(p.blend.smoothed.next_step(steps), params::BLEND),
            crossfade_seconds: clamp_f32(p.crossfade_ms.value(), params::CROSSFADE_MS) / 1000.0,
            dry_wet: clamp_f32(p.dry_wet.smoothed.next_step(steps), params::DRY_WET),
            output_gain: util::db_to_gain(clamp_f32(
                p.output_gain_db.smoothed.next_step(steps),
                params::OUTPUT_GAIN_DB,
            )),
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

        self.audio = match self.audio.take() {
            Some(audio) if audio.sample_rate() == sample_rate && audio.channels() == channels => {
                Some(audio)
            }
            // Same runtime, new rate: loaded voices stay.
            Some(audio) => Some(audio.reconfigure(sample_rate, channels)),
            None => {
                let (control, audio) = engine::start(sample_rate, channels);
                // The persisted slots are requested from the new runtime's loader.
                self.params.slots.attach(Arc::new(control));
                Some(audio)
            }
        };
        self.meter.set_sample_rate(sample_rate);
        context.set_latency_samples(self.latency_samples());
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
        _context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        let _denormals = denormals::FlushDenormals::new();
        let samples = buffer.samples();
        if samples == 0 {
            return ProcessStatus::Normal;
        }
        let timer = self.meter.start();
        let settings = self.block_settings(samples);
        let latency = match &mut self.audio {
            Some(audio) => {
                audio.process(buffer.as_slice(), &settings);
                audio.latency_samples()
            }
            None => 0,
        };
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
