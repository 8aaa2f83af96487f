//! Offline rendering of a file through the realtime RVC path (feature `files`): the same
//! converter, the same stream and rings, the same worker step as the plugin, driven block by
//! block so nothing underruns; the output is latency-compensated.

use std::path::PathBuf;
use std::sync::Arc;

use knnblend::voice::{downmix, read_audio, write_wav_f32, Audio};

use crate::pipeline::{Controls, Framing};
use crate::stream::{stream_manual, StreamConfig};
use crate::voice::{open_voice, OpenedVoice, VoiceFiles};
use crate::{OnnxRuntime, RvcError};

/// What to render and how.
#[derive(Clone, Debug)]
pub struct RvcRenderOptions {
    /// Input audio (WAV, FLAC, MP3, OGG); mixed down to mono.
    pub input: PathBuf,
    /// Output WAV (32-bit float, the input's rate and channel count).
    pub output: PathBuf,
    /// The RVC synthesizer (`.onnx`).
    pub model: PathBuf,
    /// ContentVec (`vec-768-layer-12.onnx` for v2, `vec-256-layer-9.onnx` for v1).
    pub contentvec: PathBuf,
    /// The voice's index (`added_*.index` or a `.kbi` imported from it).
    pub index: PathBuf,
    /// RMVPE (`rmvpe.onnx`); without it the built-in tracker finds f0.
    pub rmvpe: Option<PathBuf>,
    /// ONNX Runtime (`libonnxruntime.so`); without it the usual search runs.
    pub onnxruntime: Option<PathBuf>,
    /// Pitch shift, semitones (RVC's `f0_up_key`).
    pub pitch: f32,
    /// Blend (RVC's `index_rate`).
    pub ratio: f32,
    /// Protect (RVC's `protect`).
    pub protect: f32,
    /// Neighbours per frame.
    pub k: usize,
    /// Query-side α expansion of the retrieval (`None`: off).
    pub expansion: Option<knnblend::index::QueryExpansion>,
    /// Speaker id.
    pub speaker: u32,
    /// Block, SOLA crossfade and extra context, seconds.
    pub block_seconds: f64,
    /// SOLA crossfade, seconds.
    pub crossfade_seconds: f64,
    /// Extra context, seconds.
    pub extra_seconds: f64,
    /// Host buffer size the stream is driven with.
    pub host_block: usize,
    /// Dry/wet, 0–1 (dry is latency-compensated).
    pub dry_wet: f32,
    /// Seed of the synthesizer's noise.
    pub seed: u64,
}

impl RvcRenderOptions {
    /// Options with RVC's realtime defaults for the given files.
    pub fn new(
        input: PathBuf,
        output: PathBuf,
        model: PathBuf,
        contentvec: PathBuf,
        index: PathBuf,
    ) -> Self {
        RvcRenderOptions {
            input,
            output,
            model,
            contentvec,
            index,
            rmvpe: None,
            onnxruntime: None,
            pitch: 0.0,
            ratio: 0.75,
            protect: 0.33,
            k: 8,
            expansion: None,
            speaker: 0,
            block_seconds: 0.25,
            crossfade_seconds: 0.05,
            extra_seconds: 2.5,
            host_block: 512,
            dry_wet: 1.0,
            seed: 1,
        }
    }
}

/// What a render did.
#[derive(Clone, Debug)]
pub struct RvcRenderSummary {
    /// Seconds of audio rendered.
    pub seconds: f64,
    /// The input's rate.
    pub sample_rate: u32,
    /// The stream's latency (compensated in the file), samples.
    pub latency_samples: usize,
    /// The model's rate, its feature dimension and whether it uses f0.
    pub model_rate: u32,
    /// Feature dimension.
    pub dim: usize,
    /// Whether the model uses f0.
    pub f0: bool,
    /// Which f0 extractor ran: `rmvpe` or `builtin`.
    pub f0_method: &'static str,
    /// Blocks converted, blocks a model failed on.
    pub blocks: u64,
    /// Blocks a model failed on (played dry).
    pub model_errors: u64,
    /// The ONNX Runtime used.
    pub onnxruntime: String,
}

/// Renders `opts.input` through the RVC path into `opts.output`.
pub fn render_file(opts: &RvcRenderOptions) -> Result<RvcRenderSummary, RvcError> {
    let runtime = OnnxRuntime::load(opts.onnxruntime.as_deref())?;
    let audio = read_audio(&opts.input).map_err(|e| RvcError::Other(e.to_string()))?;
    if audio.sample_rate == 0 || !audio.sample_rate.is_multiple_of(100) {
        return Err(RvcError::Other(format!(
            "{}: the RVC path needs a sample rate that is a multiple of 100 Hz, the file has {} Hz",
            opts.input.display(),
            audio.sample_rate
        )));
    }

    let controls = Arc::new(Controls::default());
    controls.set_pitch(opts.pitch);
    controls.set_index_rate(opts.ratio);
    controls.set_protect(opts.protect);
    controls.set_k(opts.k);
    controls.set_query_expansion(opts.expansion);
    controls.set_speaker(opts.speaker);
    let framing = Framing {
        host_rate: audio.sample_rate,
        block_seconds: opts.block_seconds,
        crossfade_seconds: opts.crossfade_seconds,
        extra_seconds: opts.extra_seconds,
    };
    // The voice opened as the plugin opens it: the index behind a `live` runtime, refused
    // unless it holds this ContentVec's features.
    let files = VoiceFiles {
        model: opts.model.clone(),
        index: opts.index.clone(),
        contentvec: opts.contentvec.clone(),
        rmvpe: opts.rmvpe.clone(),
    };
    let OpenedVoice {
        converter,
        index: control,
        info,
    } = open_voice(&files, framing, controls, opts.seed, &mut |_| {})?;
    let f0_method = match converter.f0_method() {
        crate::f0::F0Method::Rmvpe => "rmvpe",
        crate::f0::F0Method::Builtin => "builtin",
    };
    let times = converter.times().clone();
    let config = StreamConfig::new(converter.host_block(), audio.sample_rate as f32);
    let (mut stream, mut worker) = stream_manual(config, converter);
    let latency = stream.latency();

    // Mono in, then the latency's worth of silence so the end comes out too.
    let mono = downmix(&audio.samples, audio.channels);
    let frames = mono.len();
    let total = frames + latency;
    let mut input = mono;
    input.resize(total, 0.0);
    let (mut converted, mut dry) = (vec![0f32; total], vec![0f32; total]);
    let host = opts.host_block.max(1);
    for ((x, c), d) in input
        .chunks(host)
        .zip(converted.chunks_mut(host))
        .zip(dry.chunks_mut(host))
    {
        stream.process(x, c, d);
        while worker.step() {}
    }
    let stats = stream.telemetry().snapshot();
    drop(control);

    let wet = opts.dry_wet.clamp(0.0, 1.0);
    let channels = audio.channels.max(1);
    let mut samples = Vec::with_capacity(frames * channels);
    for i in latency..total {
        let v = wet * converted[i] + (1.0 - wet) * dry[i];
        samples.extend(std::iter::repeat_n(v, channels));
    }
    write_wav_f32(
        &opts.output,
        &Audio {
            sample_rate: audio.sample_rate,
            channels,
            samples,
        },
    )
    .map_err(|e| RvcError::Other(e.to_string()))?;
    Ok(RvcRenderSummary {
        seconds: frames as f64 / audio.sample_rate as f64,
        sample_rate: audio.sample_rate,
        latency_samples: latency,
        model_rate: info.model_rate,
        dim: info.dim,
        f0: info.f0,
        f0_method,
        blocks: stats.blocks,
        model_errors: times
            .model_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        onnxruntime: format!("{} ({})", runtime.version(), runtime.path().display()),
    })
}
