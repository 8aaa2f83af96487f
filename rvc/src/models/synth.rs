//! The user's RVC synthesizer, as RVC WebUI's `infer/modules/onnx/export.py` exports it.
//!
//! Inputs (N feature frames, 100 per second after ContentVec's features are doubled):
//! `phone` float32 `[1, N, 256|768]`, `phone_lengths` int64 `[1]`, `pitch` int64 `[1, N]`
//! (coarse pitch 1–255), `pitchf` float32 `[1, N]` (Hz), `ds` int64 `[1]` (speaker id), `rnd`
//! float32 `[1, 192, N]` (noise); output `audio` float32 `[1, 1, N·hop]`. A voice trained
//! without pitch has no `pitch` and `pitchf`.
//!
//! Opening reads the signature, then makes one probe run of [`Synthesizer::PROBE_FRAMES`]
//! frames of silence: its output length gives the hop (samples per frame) and so the sample
//! rate (hop·100: 320 → 32 kHz, 400 → 40 kHz, 480 → 48 kHz; any other hop is refused). When
//! `phone`'s channel count is not declared the probe also finds it (768 is tried, then 256).
//! Metadata some exporters add is read and cross-checked against what the probe found: custom
//! keys `sr` / `samplingRate` / `sample_rate`, `version` (`v1`/`v2`), `f0`, and w-okada's
//! `metadata` JSON (`samplingRate`, `embChannels`, `f0`); a contradiction is refused
//! ([`RvcError::LabelMismatch`]).

use super::signature::{self, Dim, PortInfo};
use super::{inference, open_session};
use crate::error::{ModelKind, Port, RvcError};
use ort::logging::LogLevel;
use ort::session::{RunOptions, Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef};
use std::path::{Path, PathBuf};

const MODEL: ModelKind = ModelKind::Synthesizer;

/// What a synthesizer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthInfo {
    /// Feature channels: 256 (v1) or 768 (v2).
    pub dim: usize,
    /// Whether it takes pitch (`pitch`, `pitchf`).
    pub f0: bool,
    /// Output sample rate in Hz: 32000, 40000 or 48000.
    pub sample_rate: u32,
    /// Output samples per feature frame (`sample_rate / 100`).
    pub hop: usize,
}

impl SynthInfo {
    /// `"v1"` (256 channels) or `"v2"` (768).
    pub fn version(&self) -> &'static str {
        if self.dim == 256 {
            "v1"
        } else {
            "v2"
        }
    }
}

/// Positions of the inputs in the session's order.
#[derive(Debug, Clone, Copy)]
struct Slots {
    phone: usize,
    phone_lengths: usize,
    pitch: Option<usize>,
    pitchf: Option<usize>,
    ds: usize,
    rnd: usize,
}

/// An opened synthesizer.
pub struct Synthesizer {
    session: Session,
    path: PathBuf,
    slots: Slots,
    output: usize,
    info: SynthInfo,
    /// Run options that keep ONNX Runtime from logging the failures the channel probe expects.
    quiet: Option<RunOptions>,
}

impl std::fmt::Debug for Synthesizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synthesizer")
            .field("path", &self.path)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Feature frames per second, the rate the synthesizer's input runs at.
const FRAMES_PER_SECOND: usize = 100;
/// The hops of RVC's three sample rates.
const HOPS: [usize; 3] = [320, 400, 480];

impl Synthesizer {
    /// Noise channels of `rnd`.
    pub const NOISE_CHANNELS: usize = 192;
    /// Frames of the probe run made when opening.
    pub const PROBE_FRAMES: usize = 32;

    /// Opens the synthesizer, checks its signature and probes its hop.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RvcError> {
        let path = path.as_ref();
        let session = open_session(MODEL, path)?;
        let inputs = signature::describe(session.inputs());
        let outputs = signature::describe(session.outputs());

        let f0 = inputs
            .iter()
            .any(|i| i.name == "pitch" || i.name == "pitchf");
        let expected: &[&str] = if f0 {
            &["phone", "phone_lengths", "pitch", "pitchf", "ds", "rnd"]
        } else {
            &["phone", "phone_lengths", "ds", "rnd"]
        };
        let get = |name: &str| signature::find(MODEL, path, Port::Input, &inputs, name);
        let check = |info: &PortInfo, ty, dims: &[Dim]| {
            signature::check(MODEL, path, Port::Input, info, ty, dims)
        };
        let f32_ = TensorElementType::Float32;
        let i64_ = TensorElementType::Int64;
        let n = Dim::Any("N");

        let phone = get("phone")?;
        check(phone, f32_, &[Dim::Is(1), n, Dim::OneOf(&[256, 768])])?;
        let phone_lengths = get("phone_lengths")?;
        check(phone_lengths, i64_, &[Dim::Is(1)])?;
        let (pitch, pitchf) = if f0 {
            let pitch = get("pitch")?;
            check(pitch, i64_, &[Dim::Is(1), n])?;
            let pitchf = get("pitchf")?;
            check(pitchf, f32_, &[Dim::Is(1), n])?;
            (Some(pitch.index), Some(pitchf.index))
        } else {
            (None, None)
        };
        let ds = get("ds")?;
        check(ds, i64_, &[Dim::Is(1)])?;
        let rnd = get("rnd")?;
        check(
            rnd,
            f32_,
            &[Dim::Is(1), Dim::Is(Self::NOISE_CHANNELS as i64), n],
        )?;
        signature::only(MODEL, path, &inputs, expected)?;

        let audio = signature::find(MODEL, path, Port::Output, &outputs, "audio")?;
        signature::check(
            MODEL,
            path,
            Port::Output,
            audio,
            f32_,
            &[Dim::Is(1), Dim::Is(1), Dim::Any("N·hop")],
        )?;

        let declared_dim = phone.shape[2];
        let slots = Slots {
            phone: phone.index,
            phone_lengths: phone_lengths.index,
            pitch,
            pitchf,
            ds: ds.index,
            rnd: rnd.index,
        };
        let labels = Labels::read(&session);
        let mut synth = Synthesizer {
            session,
            path: path.to_path_buf(),
            slots,
            output: audio.index,
            info: SynthInfo {
                dim: usize::try_from(declared_dim).unwrap_or(768),
                f0,
                sample_rate: 0,
                hop: 0,
            },
            quiet: None,
        };
        synth.probe(declared_dim < 0)?;
        labels.check(&synth.path, &synth.info)?;
        Ok(synth)
    }

    /// The probe run: finds the hop (and the channel count when it is not declared).
    fn probe(&mut self, find_dim: bool) -> Result<(), RvcError> {
        let n = Self::PROBE_FRAMES;
        let mut out = Vec::new();
        let mut failures = Vec::new();
        let candidates: Vec<usize> = if find_dim {
            vec![768, 256]
        } else {
            vec![self.info.dim]
        };
        let pitch = vec![1i64; n];
        let pitchf = vec![0f32; n];
        let rnd = vec![0f32; Self::NOISE_CHANNELS * n];
        let mut samples = None;
        if find_dim {
            // The wrong channel count fails inside the graph; that is expected, not news.
            self.quiet = RunOptions::new()
                .and_then(|mut options| options.set_log_level(LogLevel::Fatal).map(|_| options))
                .ok();
        }
        for dim in candidates {
            self.info.dim = dim;
            let phone = vec![0f32; dim * n];
            match self.run(&phone, &pitch, &pitchf, 0, &rnd, &mut out) {
                Ok(_) => {
                    samples = Some(out.len());
                    break;
                }
                Err(e) => failures.push(format!("with {dim} channels: {e}")),
            }
        }
        self.quiet = None;
        let Some(samples) = samples else {
            return Err(RvcError::Probe {
                model: MODEL,
                path: self.path.clone(),
                reason: failures.join("; "),
            });
        };
        let hop = samples / n;
        if samples % n != 0 || !HOPS.contains(&hop) {
            return Err(RvcError::UnsupportedHop {
                path: self.path.clone(),
                hop,
                frames: n,
                samples,
            });
        }
        self.info.hop = hop;
        self.info.sample_rate = (hop * FRAMES_PER_SECOND) as u32;
        Ok(())
    }

    /// What the synthesizer is.
    pub fn info(&self) -> SynthInfo {
        self.info
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Synthesizes N frames into `out` (cleared first, its capacity reused) and returns the
    /// number of samples, N·hop, at [`SynthInfo::sample_rate`].
    ///
    /// - `phone`: N·dim features, frame-major (`phone[n * dim + c]`); N = `phone.len() / dim`.
    /// - `pitch`: N coarse pitches (1–255), `pitchf`: N pitches in Hz (0 = unvoiced); both
    ///   ignored (and may be empty) for a synthesizer without pitch.
    /// - `sid`: the speaker id (`ds`); `phone_lengths` is N.
    /// - `rnd`: 192·N noise values, channel-major (`rnd[k * N + n]`), as `[1, 192, N]`.
    pub fn run(
        &mut self,
        phone: &[f32],
        pitch: &[i64],
        pitchf: &[f32],
        sid: i64,
        rnd: &[f32],
        out: &mut Vec<f32>,
    ) -> Result<usize, RvcError> {
        let dim = self.info.dim;
        if phone.is_empty() || !phone.len().is_multiple_of(dim) {
            return Err(RvcError::InputLength {
                model: MODEL,
                name: "phone",
                found: phone.len(),
                expected: dim * (phone.len() / dim).max(1),
            });
        }
        let n = phone.len() / dim;
        let length = |name: &'static str, found: usize, expected: usize| {
            if found == expected {
                Ok(())
            } else {
                Err(RvcError::InputLength {
                    model: MODEL,
                    name,
                    found,
                    expected,
                })
            }
        };
        if self.info.f0 {
            length("pitch", pitch.len(), n)?;
            length("pitchf", pitchf.len(), n)?;
        }
        length("rnd", rnd.len(), Self::NOISE_CHANNELS * n)?;

        let err = inference(MODEL);
        let lengths = [n as i64];
        let speaker = [sid];
        let phone_v = TensorRef::from_array_view(([1usize, n, dim], phone)).map_err(&err)?;
        let lengths_v = TensorRef::from_array_view(([1usize], &lengths[..])).map_err(&err)?;
        let ds_v = TensorRef::from_array_view(([1usize], &speaker[..])).map_err(&err)?;
        let rnd_v =
            TensorRef::from_array_view(([1usize, Self::NOISE_CHANNELS, n], rnd)).map_err(&err)?;
        let s = self.slots;
        let outputs = match (s.pitch, s.pitchf) {
            (Some(pitch_slot), Some(pitchf_slot)) => {
                let pitch_v = TensorRef::from_array_view(([1usize, n], pitch)).map_err(&err)?;
                let pitchf_v = TensorRef::from_array_view(([1usize, n], pitchf)).map_err(&err)?;
                let mut slots: [Option<SessionInputValue<'_>>; 6] = Default::default();
                slots[s.phone] = Some(phone_v.into());
                slots[s.phone_lengths] = Some(lengths_v.into());
                slots[pitch_slot] = Some(pitch_v.into());
                slots[pitchf_slot] = Some(pitchf_v.into());
                slots[s.ds] = Some(ds_v.into());
                slots[s.rnd] = Some(rnd_v.into());
                match &self.quiet {
                    Some(options) => self.session.run_with_options(ordered(slots), options),
                    None => self.session.run(ordered(slots)),
                }
                .map_err(&err)?
            }
            _ => {
                let mut slots: [Option<SessionInputValue<'_>>; 4] = Default::default();
                slots[s.phone] = Some(phone_v.into());
                slots[s.phone_lengths] = Some(lengths_v.into());
                slots[s.ds] = Some(ds_v.into());
                slots[s.rnd] = Some(rnd_v.into());
                match &self.quiet {
                    Some(options) => self.session.run_with_options(ordered(slots), options),
                    None => self.session.run(ordered(slots)),
                }
                .map_err(&err)?
            }
        };
        let (shape, data) = outputs[self.output]
            .try_extract_tensor::<f32>()
            .map_err(&err)?;
        if shape.len() != 3 || shape[0] != 1 || shape[1] != 1 {
            return Err(RvcError::Inference {
                model: MODEL,
                reason: format!(
                    "`audio` has shape {}, expected [1, 1, samples]",
                    signature::shape_text(shape)
                ),
            });
        }
        if self.info.hop != 0 && data.len() != n * self.info.hop {
            return Err(RvcError::Inference {
                model: MODEL,
                reason: format!(
                    "`audio` has {} samples for {n} frames, expected {} ({} per frame)",
                    data.len(),
                    n * self.info.hop,
                    self.info.hop
                ),
            });
        }
        out.clear();
        out.extend_from_slice(data);
        Ok(out.len())
    }
}

/// Slots filled in the session's input order → the positional inputs.
fn ordered<const N: usize>(
    slots: [Option<SessionInputValue<'_>>; N],
) -> [SessionInputValue<'_>; N] {
    // Every slot is filled: the slot indices are the distinct positions of the N inputs.
    slots.map(|slot| slot.expect("every synthesizer input has a value"))
}

/// What a model's metadata says about it.
#[derive(Debug, Default)]
struct Labels {
    sample_rate: Option<(u32, String)>,
    dim: Option<(usize, String)>,
    f0: Option<(bool, String)>,
}

impl Labels {
    fn read(session: &Session) -> Labels {
        let mut labels = Labels::default();
        let Ok(meta) = session.metadata() else {
            return labels;
        };
        for key in ["sr", "samplingRate", "sample_rate"] {
            if let Some(rate) = meta.custom(key).as_deref().and_then(parse_rate) {
                labels.sample_rate = Some((rate, format!("metadata `{key}`")));
            }
        }
        if let Some(version) = meta.custom("version") {
            match version.trim() {
                "v1" => labels.dim = Some((256, "metadata `version` = v1".into())),
                "v2" => labels.dim = Some((768, "metadata `version` = v2".into())),
                _ => {}
            }
        }
        if let Some(f0) = meta.custom("f0").as_deref().and_then(parse_bool) {
            labels.f0 = Some((f0, "metadata `f0`".into()));
        }
        if let Some(json) = meta.custom("metadata") {
            if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(&json) {
                if let Some(rate) = map.get("samplingRate").and_then(json_u32) {
                    labels.sample_rate = Some((rate, "metadata JSON `samplingRate`".into()));
                }
                if let Some(dim) = map.get("embChannels").and_then(json_u32) {
                    labels.dim = Some((dim as usize, "metadata JSON `embChannels`".into()));
                }
                if let Some(f0) = map.get("f0").and_then(|v| match v {
                    serde_json::Value::Bool(b) => Some(*b),
                    serde_json::Value::Number(n) => n.as_u64().map(|n| n != 0),
                    serde_json::Value::String(s) => parse_bool(s),
                    _ => None,
                }) {
                    labels.f0 = Some((f0, "metadata JSON `f0`".into()));
                }
            }
        }
        labels
    }

    fn check(&self, path: &Path, info: &SynthInfo) -> Result<(), RvcError> {
        let mismatch = |label: String, actual: String| RvcError::LabelMismatch {
            model: MODEL,
            path: path.to_path_buf(),
            label,
            actual,
        };
        if let Some((dim, source)) = &self.dim {
            if *dim != info.dim {
                return Err(mismatch(
                    format!("{} ({source})", version_of(*dim)),
                    format!(
                        "its `phone` input has {} channels ({})",
                        info.dim,
                        info.version()
                    ),
                ));
            }
        }
        if let Some((rate, source)) = &self.sample_rate {
            if *rate != info.sample_rate {
                return Err(mismatch(
                    format!("{rate} Hz ({source})"),
                    format!(
                        "it makes {} samples per frame ({} Hz)",
                        info.hop, info.sample_rate
                    ),
                ));
            }
        }
        if let Some((f0, source)) = &self.f0 {
            if *f0 != info.f0 {
                return Err(mismatch(
                    format!(
                        "{} ({source})",
                        if *f0 { "with pitch" } else { "without pitch" }
                    ),
                    if info.f0 {
                        "it takes `pitch` and `pitchf`".into()
                    } else {
                        "it has no `pitch` or `pitchf` input".into()
                    },
                ));
            }
        }
        Ok(())
    }
}

fn version_of(dim: usize) -> String {
    match dim {
        256 => "v1".into(),
        768 => "v2".into(),
        other => format!("{other} channels"),
    }
}

/// `"48000"`, `"48k"`, `"48K"` → 48000.
fn parse_rate(text: &str) -> Option<u32> {
    let text = text.trim();
    if let Some(k) = text.strip_suffix(['k', 'K']) {
        return k.parse::<u32>().ok().map(|k| k * 1000);
    }
    text.parse().ok()
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Some(true),
        "0" | "false" | "no" => Some(false),
        _ => None,
    }
}

fn json_u32(value: &serde_json::Value) -> Option<u32> {
    match value {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => parse_rate(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("48000"), Some(48000));
        assert_eq!(parse_rate(" 40k"), Some(40000));
        assert_eq!(parse_rate("32K"), Some(32000));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_bool("True"), Some(true));
        assert_eq!(parse_bool("0"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}
