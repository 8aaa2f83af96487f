//! The plugin's parameters: what the host automates and what the state saves.
//!
//! Ranges live in constants so that [`sanitize_state`] (which runs before any state is applied
//! and has no access to the parameter objects) and the audio thread clamp with the same numbers.

use std::sync::Arc;

use nice_plug::prelude::*;

use crate::slots::SlotStore;

/// Number of voice slots the plugin exposes (the library's maximum).
pub const SLOTS: usize = crate::engine::MAX_SLOTS;

/// Blend (RVC's index rate): 0 keeps the input features, 1 replaces them by the retrieved ones.
pub const BLEND: (f32, f32, f32) = (0.0, 1.0, 0.75);
/// Neighbours k: how many nearest neighbours are blended.
pub const NEIGHBOURS: (i32, i32, i32) = (1, 16, 8);
/// Voice: the active slot, 1-based as shown to the user.
pub const VOICE: (i32, i32, i32) = (1, SLOTS as i32, 1);
/// Crossfade in milliseconds when switching voice or when a new index arrives in the active slot.
pub const CROSSFADE_MS: (f32, f32, f32) = (0.0, 500.0, 50.0);
/// Dry/wet mix, 0 = only the (latency-compensated) input, 1 = only the converted signal.
pub const DRY_WET: (f32, f32, f32) = (0.0, 1.0, 1.0);
/// Output gain in decibels.
pub const OUTPUT_GAIN_DB: (f32, f32, f32) = (-24.0, 12.0, 0.0);
/// Pitch shift in semitones: RVC's `f0_up_key` on RVC slots, the DSP voice path's
/// formant-preserving shift otherwise.
pub const PITCH: (i32, i32, i32) = (-24, 24, 0);
/// RVC: protect (RVC's `protect`): unvoiced frames keep this much of the input's features;
/// 0.5 turns it off.
pub const PROTECT: (f32, f32, f32) = (0.0, 0.5, 0.33);
/// Query expansion: the neighbours each frame's search query is first expanded with (faiss's
/// α query expansion: the sim^α-weighted mean of them); 0 is off (RVC's own retrieval).
pub const EXPAND: (i32, i32, i32) = (0, 16, 0);
/// Query expansion's α (exponent of the cosine similarity).
pub const EXPAND_ALPHA: (f32, f32, f32) = (0.0, 10.0, 3.0);
/// RVC: conversion block in milliseconds (RVC realtime's block time).
pub const BLOCK_MS: (f32, f32, f32) = (50.0, 1000.0, 250.0);
/// RVC: extra context in milliseconds (RVC realtime's extra time).
pub const EXTRA_MS: (f32, f32, f32) = (0.0, 5000.0, 2500.0);
/// RVC: crossfade between conversion blocks in milliseconds (RVC realtime's crossfade length).
pub const SOLA_MS: (f32, f32, f32) = (10.0, 150.0, 50.0);

/// Smoothing time for the audible continuous parameters.
const SMOOTHING_MS: f32 = 30.0;

/// All of the plugin's parameters plus the persisted voice slots.
#[derive(Params)]
pub struct KnnBlendParams {
    /// Paths of the eight voice slots; saved with the plugin state and reloaded on restore.
    #[persist = "slots"]
    pub slots: Arc<SlotStore>,

    /// Blend ratio 0–1 (index rate).
    #[id = "blend"]
    pub blend: FloatParam,
    /// Number of neighbours blended per frame.
    #[id = "neighbours"]
    pub neighbours: IntParam,
    /// Query expansion's neighbours, 0 = off.
    #[id = "expand"]
    pub expand: IntParam,
    /// Query expansion's α.
    #[id = "expand_alpha"]
    pub expand_alpha: FloatParam,
    /// Active voice slot, 1–8.
    #[id = "voice"]
    pub voice: IntParam,
    /// Crossfade time in milliseconds.
    #[id = "crossfade"]
    pub crossfade_ms: FloatParam,
    /// Dry/wet mix 0–1.
    #[id = "mix"]
    pub dry_wet: FloatParam,
    /// Output gain in dB.
    #[id = "gain"]
    pub output_gain_db: FloatParam,
    /// Pitch shift in semitones: RVC's `f0_up_key` on RVC voices, a formant-preserving shift
    /// of the built-in voice path otherwise.
    #[id = "pitch"]
    pub pitch: IntParam,
    /// RVC: protect.
    #[id = "protect"]
    pub protect: FloatParam,
    /// RVC: conversion block, ms.
    #[id = "block"]
    pub block_ms: FloatParam,
    /// RVC: extra context, ms.
    #[id = "extra"]
    pub extra_ms: FloatParam,
    /// RVC: crossfade between conversion blocks, ms.
    #[id = "sola"]
    pub sola_ms: FloatParam,
    /// DSP voices: move the input's running median f0 to the active voice's recorded median
    /// (Match voice; the Pitch knob's fixed shift otherwise).
    #[id = "pitch_match"]
    pub pitch_match: BoolParam,
    /// The host's bypass: crossfades (over [`BYPASS_MS`]) to the latency-compensated input at
    /// unity gain, so a bypassed track stays aligned with the others.
    #[id = "bypass"]
    pub bypass: BoolParam,
}

/// The bypass crossfade, ms.
pub const BYPASS_MS: f32 = 20.0;

impl Default for KnnBlendParams {
    fn default() -> Self {
        Self::new(Arc::new(SlotStore::default()))
    }
}

impl KnnBlendParams {
    /// Parameters with their defaults, persisting slots into `slots`.
    pub fn new(slots: Arc<SlotStore>) -> Self {
        Self {
            slots,
            blend: FloatParam::new(
                "Blend",
                BLEND.2,
                FloatRange::Linear {
                    min: BLEND.0,
                    max: BLEND.1,
                },
            )
            .with_smoother(SmoothingStyle::Linear(SMOOTHING_MS))
            .with_unit("%")
            .with_value_to_string(formatters::v2s_f32_percentage(0))
            .with_string_to_value(formatters::s2v_f32_percentage()),
            neighbours: IntParam::new(
                "Neighbours",
                NEIGHBOURS.2,
                IntRange::Linear {
                    min: NEIGHBOURS.0,
                    max: NEIGHBOURS.1,
                },
            ),
            expand: IntParam::new(
                "Query Expansion",
                EXPAND.2,
                IntRange::Linear {
                    min: EXPAND.0,
                    max: EXPAND.1,
                },
            )
            .with_value_to_string(Arc::new(|k| {
                if k == 0 {
                    "Off".to_string()
                } else {
                    format!("{k} neighbours")
                }
            }))
            .with_string_to_value(Arc::new(|text| {
                let t = text.trim();
                if t.eq_ignore_ascii_case("off") {
                    Some(0)
                } else {
                    t.trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse()
                        .ok()
                }
            })),
            expand_alpha: FloatParam::new(
                "Expansion Alpha",
                EXPAND_ALPHA.2,
                FloatRange::Linear {
                    min: EXPAND_ALPHA.0,
                    max: EXPAND_ALPHA.1,
                },
            )
            .with_step_size(0.1)
            .with_value_to_string(formatters::v2s_f32_rounded(1)),
            voice: IntParam::new(
                "Voice",
                VOICE.2,
                IntRange::Linear {
                    min: VOICE.0,
                    max: VOICE.1,
                },
            )
            .with_value_to_string(Arc::new(|slot| format!("Slot {slot}")))
            .with_string_to_value(Arc::new(|text| {
                text.trim()
                    .trim_start_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })),
            crossfade_ms: FloatParam::new(
                "Crossfade",
                CROSSFADE_MS.2,
                FloatRange::Skewed {
                    min: CROSSFADE_MS.0,
                    max: CROSSFADE_MS.1,
                    factor: FloatRange::skew_factor(-1.0),
                },
            )
            .with_unit(" ms")
            .with_step_size(1.0)
            .with_value_to_string(formatters::v2s_f32_rounded(0)),
            dry_wet: FloatParam::new(
                "Dry/Wet",
                DRY_WET.2,
                FloatRange::Linear {
                    min: DRY_WET.0,
                    max: DRY_WET.1,
                },
            )
            .with_smoother(SmoothingStyle::Linear(SMOOTHING_MS))
            .with_unit("%")
            .with_value_to_string(formatters::v2s_f32_percentage(0))
            .with_string_to_value(formatters::s2v_f32_percentage()),
            output_gain_db: FloatParam::new(
                "Output Gain",
                OUTPUT_GAIN_DB.2,
                FloatRange::Linear {
                    min: OUTPUT_GAIN_DB.0,
                    max: OUTPUT_GAIN_DB.1,
                },
            )
            .with_smoother(SmoothingStyle::Linear(SMOOTHING_MS))
            .with_unit(" dB")
            .with_step_size(0.1)
            .with_value_to_string(formatters::v2s_f32_rounded(1)),
            pitch: IntParam::new(
                "Pitch",
                PITCH.2,
                IntRange::Linear {
                    min: PITCH.0,
                    max: PITCH.1,
                },
            )
            .with_unit(" st"),
            protect: FloatParam::new(
                "Protect",
                PROTECT.2,
                FloatRange::Linear {
                    min: PROTECT.0,
                    max: PROTECT.1,
                },
            )
            .with_step_size(0.01)
            .with_value_to_string(formatters::v2s_f32_rounded(2)),
            block_ms: ms_param("Block", BLOCK_MS),
            extra_ms: ms_param("Extra Context", EXTRA_MS),
            sola_ms: ms_param("Block Crossfade", SOLA_MS),
            pitch_match: BoolParam::new("Match Voice Pitch", false),
            bypass: BoolParam::new("Bypass", false).make_bypass(),
        }
    }
}

/// A time in whole 10 ms steps (RVC's framing rounds to 10 ms).
fn ms_param(name: &str, (min, max, default): (f32, f32, f32)) -> FloatParam {
    FloatParam::new(name, default, FloatRange::Linear { min, max })
        .with_unit(" ms")
        .with_step_size(10.0)
        .with_value_to_string(formatters::v2s_f32_rounded(0))
}

/// Clamps a float into `[lo, hi]`, replacing NaN by `default`.
#[inline]
pub fn clamp_f32(value: f32, (lo, hi, default): (f32, f32, f32)) -> f32 {
    if value.is_nan() {
        default
    } else {
        value.clamp(lo, hi)
    }
}

/// Clamps an integer into `[lo, hi]`.
#[inline]
pub fn clamp_i32(value: i32, (lo, hi, _default): (i32, i32, i32)) -> i32 {
    value.clamp(lo, hi)
}

/// Repairs a saved state before nice-plug applies it: parameter values of the wrong type, out of
/// range or non-finite become the nearest valid value (or the default), and a slot field that is
/// not even JSON is replaced by a marker the slot store turns into a message per slot.
pub fn sanitize_state(state: &mut PluginState) {
    use nice_plug::plugin::ParamValue;

    let floats: [(&str, (f32, f32, f32)); 9] = [
        ("expand_alpha", EXPAND_ALPHA),
        ("blend", BLEND),
        ("crossfade", CROSSFADE_MS),
        ("mix", DRY_WET),
        ("gain", OUTPUT_GAIN_DB),
        ("protect", PROTECT),
        ("block", BLOCK_MS),
        ("extra", EXTRA_MS),
        ("sola", SOLA_MS),
    ];
    let ints: [(&str, (i32, i32, i32)); 4] = [
        ("expand", EXPAND),
        ("neighbours", NEIGHBOURS),
        ("voice", VOICE),
        ("pitch", PITCH),
    ];

    for (id, range) in floats {
        if let Some(value) = state.params.get_mut(id) {
            *value = match value {
                ParamValue::F32(v) if v.is_finite() => ParamValue::F32(v.clamp(range.0, range.1)),
                ParamValue::I32(v) => ParamValue::F32((*v as f32).clamp(range.0, range.1)),
                _ => ParamValue::F32(range.2),
            };
        }
    }
    for (id, range) in ints {
        if let Some(value) = state.params.get_mut(id) {
            *value = match value {
                ParamValue::I32(v) => ParamValue::I32((*v).clamp(range.0, range.1)),
                ParamValue::F32(v) if v.is_finite() => {
                    ParamValue::I32((v.round() as i32).clamp(range.0, range.1))
                }
                _ => ParamValue::I32(range.2),
            };
        }
    }

    crate::slots::sanitize_field(&mut state.fields);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nice_plug::plugin::ParamValue;
    use std::collections::BTreeMap;

    #[test]
    fn formatting_is_readable() {
        let params = KnnBlendParams::default();
        assert_eq!(params.blend.to_string(), "75%");
        assert_eq!(params.dry_wet.to_string(), "100%");
        assert_eq!(params.output_gain_db.to_string(), "0.0 dB");
        assert_eq!(params.crossfade_ms.to_string(), "50 ms");
        assert_eq!(params.voice.to_string(), "Slot 1");
        assert_eq!(params.neighbours.to_string(), "8");
        assert_eq!(params.pitch.to_string(), "0 st");
        assert_eq!(params.block_ms.to_string(), "250 ms");
        assert_eq!(params.extra_ms.to_string(), "2500 ms");
        assert_eq!(params.sola_ms.to_string(), "50 ms");
        assert_eq!(params.protect.to_string(), "0.33");
        assert_eq!(params.voice.string_to_normalized_value("Slot 8"), Some(1.0));
        assert_eq!(params.blend.string_to_normalized_value("50%"), Some(0.5));
    }

    #[test]
    fn hostile_parameter_values_are_repaired() {
        let mut params = BTreeMap::new();
        params.insert("blend".to_string(), ParamValue::F32(f32::INFINITY));
        params.insert("mix".to_string(), ParamValue::F32(-3.0));
        params.insert("gain".to_string(), ParamValue::Bool(true));
        params.insert("crossfade".to_string(), ParamValue::I32(100_000));
        params.insert("neighbours".to_string(), ParamValue::I32(1000));
        params.insert("voice".to_string(), ParamValue::String("x".into()));
        params.insert("unknown".to_string(), ParamValue::F32(1.0));
        params.insert("pitch".to_string(), ParamValue::F32(99.0));
        params.insert("block".to_string(), ParamValue::F32(f32::NAN));
        params.insert("sola".to_string(), ParamValue::F32(0.0));
        let mut state = PluginState {
            version: String::new(),
            params,
            fields: BTreeMap::new(),
        };
        sanitize_state(&mut state);
        let f = |id: &str| match state.params[id] {
            ParamValue::F32(v) => v,
            ref other => panic!("{id}: {other:?}"),
        };
        let i = |id: &str| match state.params[id] {
            ParamValue::I32(v) => v,
            ref other => panic!("{id}: {other:?}"),
        };
        assert_eq!(f("blend"), BLEND.2);
        assert_eq!(f("mix"), 0.0);
        assert_eq!(f("gain"), OUTPUT_GAIN_DB.2);
        assert_eq!(f("crossfade"), CROSSFADE_MS.1);
        assert_eq!(i("neighbours"), NEIGHBOURS.1);
        assert_eq!(i("voice"), VOICE.2);
        assert_eq!(i("pitch"), PITCH.1);
        assert_eq!(f("block"), BLOCK_MS.2);
        assert_eq!(f("sola"), SOLA_MS.0);
    }

    #[test]
    fn clamps_handle_nan() {
        assert_eq!(clamp_f32(f32::NAN, BLEND), BLEND.2);
        assert_eq!(clamp_f32(7.0, BLEND), 1.0);
        assert_eq!(clamp_i32(0, VOICE), 1);
    }
}
