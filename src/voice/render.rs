//! `knnblend render`: the realtime path over a file. The live runtime loads the index (and the
//! swap index) exactly as in the plugin, the [`VoiceEngine`] processes fixed-size blocks, a
//! swap switches the active slot at its exact sample (crossfaded by the runtime), and the
//! output is written latency-compensated: sample `n` of the output is the processed sample `n`
//! of the input.

use std::path::{Path, PathBuf};

use super::audio_file::{read_audio, write_wav_f32, Audio, AudioError};
use super::engine::{BlockParams, VoiceEngine};
use super::features::FeatureSpec;
use super::offline::{render_buffers, Schedule};
use super::pitch_control::PitchMode;
use crate::index::{QueryExpansion, MAX_K};
use crate::live::{self, LoadOutcome};

/// What to render.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderOptions {
    /// The voice index (`.kbi`, or a faiss file of these features).
    pub index: PathBuf,
    /// Input audio (WAV, FLAC, MP3, Ogg Vorbis).
    pub input: PathBuf,
    /// Output WAV (32-bit float, the input's channels and rate).
    pub output: PathBuf,
    /// Blend ratio in `[0, 1]` (default 0.75).
    pub ratio: f32,
    /// Neighbours per frame, `1..=32` (default 8).
    pub k: usize,
    /// A second index to swap to mid-file.
    pub swap_to: Option<PathBuf>,
    /// When to swap, seconds from the start of the input.
    pub swap_at: Option<f64>,
    /// Block size in samples (default 512).
    pub block_size: usize,
    /// Crossfade time of the swap, seconds (default 0.05).
    pub crossfade_seconds: f32,
    /// Dry/wet mix in `[0, 1]` (default 1).
    pub dry_wet: f32,
    /// Output gain, dB (default 0).
    pub output_gain_db: f32,
    /// Query-side α expansion of the retrieval (default `None`: off).
    pub expansion: Option<QueryExpansion>,
    /// The Pitch control (default off).
    pub pitch: RenderPitch,
}

/// `knnblend render --pitch off|match|±N`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RenderPitch {
    /// No shift.
    #[default]
    Off,
    /// Move the input's running median f0 to the voice's recorded median (±18 semitones at
    /// most); the index must carry pitch statistics (`knnblend build --audio` records them).
    Match,
    /// A fixed shift, semitones (−24…+24).
    Semitones(f32),
}

impl std::str::FromStr for RenderPitch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(RenderPitch::Off),
            "match" => Ok(RenderPitch::Match),
            _ => match s.parse::<f32>() {
                Ok(n) if n.is_finite() && n.abs() <= super::pitch_control::MAX_SEMITONES => {
                    Ok(RenderPitch::Semitones(n))
                }
                _ => Err(format!(
                    "--pitch takes off, match or a shift in semitones from -24 to +24, not {s:?}"
                )),
            },
        }
    }
}

use super::pitch_control::MATCH_RANGE_SEMITONES;

/// The engine's Pitch mode for `pitch` with the voice index at `path`, whose recorded median
/// f0 the live runtime read when it loaded it (`median_hz`).
fn pitch_mode(
    pitch: RenderPitch,
    path: &Path,
    median_hz: Option<f32>,
) -> Result<PitchMode, RenderError> {
    Ok(match (pitch, median_hz) {
        (RenderPitch::Off, _) => PitchMode::Off,
        (RenderPitch::Semitones(n), _) => PitchMode::Semitones(n),
        (RenderPitch::Match, Some(target_hz)) => PitchMode::Match {
            target_hz,
            range: MATCH_RANGE_SEMITONES,
        },
        (RenderPitch::Match, None) => {
            return Err(RenderError::Options(format!(
                "--pitch match: {} has no pitch statistics to match (built before they were recorded, from feature files, or from recordings with too little voicing); rebuild it with `knnblend build --audio`, or give --pitch with a shift in semitones",
                path.display()
            )))
        }
    })
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            index: PathBuf::new(),
            input: PathBuf::new(),
            output: PathBuf::new(),
            ratio: 0.75,
            k: 8,
            swap_to: None,
            swap_at: None,
            block_size: 512,
            crossfade_seconds: 0.05,
            dry_wet: 1.0,
            output_gain_db: 0.0,
            expansion: None,
            pitch: RenderPitch::Off,
        }
    }
}

/// What a render did.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderSummary {
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Channels.
    pub channels: usize,
    /// Sample frames written (as many as were read).
    pub frames: usize,
    /// Duration, seconds.
    pub seconds: f64,
    /// The engine's latency, compensated in the output, samples.
    pub latency_samples: u32,
    /// Feature frames analysed.
    pub analysed_frames: u64,
    /// Feature frames blended with neighbours.
    pub blended_frames: u64,
    /// Vectors in the index (and the swap index).
    pub index_vectors: Vec<usize>,
    /// The Pitch control at the end of the render (`None`: off).
    pub pitch: Option<super::PitchState>,
}

/// Stages reported to the progress callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderStage {
    /// Reading the input.
    Decoding,
    /// Loading the index files (bytes done, total).
    Loading,
    /// Processing (samples done, total).
    Rendering,
    /// Writing the output.
    Writing,
}

/// Why a render failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Reading the input or writing the output failed.
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// An index could not be loaded (or holds other features).
    #[error("cannot use {}: {message}", .path.display())]
    Load {
        /// The index file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The options do not make sense.
    #[error("{0}")]
    Options(String),
}

fn check_options(o: &RenderOptions) -> Result<(), RenderError> {
    let bad = |m: String| Err(RenderError::Options(m));
    if !(0.0..=1.0).contains(&o.ratio) {
        return bad(format!("--ratio must be between 0 and 1, not {}", o.ratio));
    }
    if !(1..=MAX_K).contains(&o.k) {
        return bad(format!("--k must be between 1 and {MAX_K}, not {}", o.k));
    }
    if !(1..=1 << 20).contains(&o.block_size) {
        return bad(format!(
            "the block size must be between 1 and 1048576, not {}",
            o.block_size
        ));
    }
    if !(0.0..=1.0).contains(&o.dry_wet) {
        return bad(format!(
            "dry/wet must be between 0 and 1, not {}",
            o.dry_wet
        ));
    }
    if !o.output_gain_db.is_finite() || o.output_gain_db.abs() > 60.0 {
        return bad(format!(
            "the output gain must be within ±60 dB, not {}",
            o.output_gain_db
        ));
    }
    if !(o.crossfade_seconds.is_finite() && (0.0..=10.0).contains(&o.crossfade_seconds)) {
        return bad(format!(
            "the crossfade must be 0 to 10 s, not {}",
            o.crossfade_seconds
        ));
    }
    match (&o.swap_to, o.swap_at) {
        (Some(_), None) => bad("--swap-to needs --swap-at SECONDS".into()),
        (None, Some(_)) => bad("--swap-at needs --swap-to INDEX".into()),
        (_, Some(t)) if !(t.is_finite() && t >= 0.0) => {
            bad(format!("--swap-at must be a time in seconds, not {t}"))
        }
        _ => Ok(()),
    }
}

/// The loaded index's vector count and recorded median f0.
fn wait_loaded(
    ticket: &live::LoadTicket,
    path: &Path,
) -> Result<(usize, Option<f32>), RenderError> {
    match ticket.wait() {
        LoadOutcome::Published(info) => Ok((info.ntotal, info.voice_median_f0_hz)),
        LoadOutcome::Failed(e) => Err(RenderError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        LoadOutcome::Superseded => Err(RenderError::Load {
            path: path.to_path_buf(),
            message: "the load was superseded".into(),
        }),
    }
}

/// Renders `opts.input` through the realtime voice path into `opts.output`.
/// `progress(stage, done, total)` is called as work proceeds.
pub fn render_file(
    opts: &RenderOptions,
    progress: &mut dyn FnMut(RenderStage, u64, u64),
) -> Result<RenderSummary, RenderError> {
    check_options(opts)?;
    progress(RenderStage::Decoding, 0, 1);
    let audio = read_audio(&opts.input)?;
    progress(RenderStage::Decoding, 1, 1);
    let spec = FeatureSpec::default();
    let sr = audio.sample_rate as f32;
    if sr < 2.0 * spec.f_max_hz {
        return Err(RenderError::Options(format!(
            "{}: a sample rate of {} Hz is too low for features up to {} Hz",
            opts.input.display(),
            audio.sample_rate,
            spec.f_max_hz
        )));
    }
    let swap_sample = match opts.swap_at {
        Some(t) => {
            let s = (t * audio.sample_rate as f64).round() as u64;
            if s >= audio.frames() as u64 {
                return Err(RenderError::Options(format!(
                    "--swap-at {t} s is after the end of the input ({:.3} s)",
                    audio.seconds()
                )));
            }
            Some(s)
        }
        None => None,
    };

    // The live runtime, loading every index before processing starts.
    let slots = if opts.swap_to.is_some() { 2 } else { 1 };
    let (control, audio_side) = live::live(spec.live_config(slots));
    let mut paths = vec![opts.index.clone()];
    paths.extend(opts.swap_to.clone());
    let tickets: Vec<_> = paths
        .iter()
        .enumerate()
        .map(|(slot, p)| control.load(slot, p))
        .collect();
    let (mut index_vectors, mut medians) = (Vec::new(), Vec::new());
    for (t, p) in tickets.iter().zip(&paths) {
        while t
            .wait_timeout(std::time::Duration::from_millis(50))
            .is_none()
        {
            let (done, total) = t.progress();
            progress(RenderStage::Loading, done, total);
        }
        let (vectors, median) = wait_loaded(t, p)?;
        index_vectors.push(vectors);
        medians.push(median);
    }

    let pitch = pitch_mode(opts.pitch, &opts.index, medians[0])?;
    let swap_pitch = match &opts.swap_to {
        Some(p) => pitch_mode(opts.pitch, p, medians[1])?,
        None => pitch,
    };
    let channels = audio.channels;
    let mut engine = VoiceEngine::new(audio_side, &spec, sr, channels);
    let params = BlockParams {
        active_slot: 0,
        k: opts.k,
        ratio: opts.ratio,
        crossfade_seconds: opts.crossfade_seconds,
        dry_wet: opts.dry_wet,
        output_gain: 10f32.powf(opts.output_gain_db / 20.0),
        expansion: opts.expansion,
        pitch,
    };
    let mut schedule = Schedule::constant(params);
    if let Some(at) = swap_sample {
        schedule.changes.push((
            at,
            BlockParams {
                active_slot: 1,
                pitch: swap_pitch,
                ..params
            },
        ));
    }
    let input = audio.deinterleave();
    let total = (audio.frames() + engine.latency_samples() as usize) as u64;
    let block = opts.block_size;
    let mut done = 0u64;
    let output = render_buffers(
        &mut engine,
        &input,
        &schedule,
        &mut || {
            done += block as u64;
            if done % (block as u64 * 256) < block as u64 {
                progress(RenderStage::Rendering, done.min(total), total);
            }
            block
        },
        &mut |_| {},
    );
    progress(RenderStage::Rendering, total, total);
    let stats = engine.stats();
    let latency_samples = engine.latency_samples();
    let pitch_state = engine.pitch_state();

    progress(RenderStage::Writing, 0, 1);
    let out = Audio::from_channels(&output, audio.sample_rate);
    write_wav_f32(&opts.output, &out)?;
    progress(RenderStage::Writing, 1, 1);
    drop(engine);
    control.collect();
    Ok(RenderSummary {
        sample_rate: audio.sample_rate,
        channels,
        frames: out.frames(),
        seconds: out.seconds(),
        latency_samples,
        analysed_frames: stats.frames,
        blended_frames: stats.blended,
        index_vectors,
        pitch: (pitch != PitchMode::Off).then_some(pitch_state),
    })
}
