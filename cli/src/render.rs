use std::path::PathBuf;

use knnblend::voice::{render_file, RenderOptions};
use knnblend_rvc::render::RvcRenderOptions;

/// Arguments of `knnblend render`.
#[derive(clap::Args)]
pub struct Args {
    /// The voice index: a .kbi of knnblend's own features, or with --rvc-model an RVC
    /// added_*.index (or a .kbi imported from one).
    #[arg(long)]
    index: PathBuf,
    /// Blend ratio (RVC's index rate), 0..1.
    #[arg(long, default_value_t = 0.75)]
    ratio: f32,
    /// Render through an RVC voice instead: the synthesizer exported to ONNX (RVC WebUI's
    /// export_onnx). Needs --contentvec.
    #[arg(long, value_name = "MODEL.onnx", requires = "contentvec")]
    rvc_model: Option<PathBuf>,
    /// ContentVec as ONNX (vec-768-layer-12.onnx for v2 models, vec-256-layer-9.onnx for v1).
    #[arg(long, value_name = "CONTENTVEC.onnx", requires = "rvc_model")]
    contentvec: Option<PathBuf>,
    /// RMVPE as ONNX (rmvpe.onnx) for f0; without it the built-in tracker runs.
    #[arg(long, value_name = "RMVPE.onnx", requires = "rvc_model")]
    rmvpe: Option<PathBuf>,
    /// ONNX Runtime library (libonnxruntime.so); default: ORT_DYLIB_PATH, then target/venv.
    #[arg(long, value_name = "PATH", requires = "rvc_model")]
    onnxruntime: Option<PathBuf>,
    /// Pitch: off, match (move the input's median f0 to the voice's; DSP voices) or a shift in
    /// semitones, -24..24 (RVC: f0_up_key).
    #[arg(long, default_value = "off", allow_negative_numbers = true)]
    pitch: knnblend::voice::RenderPitch,
    /// RVC: protect (0..0.5; 0.5 turns it off).
    #[arg(long, default_value_t = 0.33)]
    protect: f32,
    /// RVC: conversion block length, ms (rounded to 10 ms).
    #[arg(long, default_value_t = 250.0)]
    block_ms: f64,
    /// RVC: extra context, ms.
    #[arg(long, default_value_t = 2500.0)]
    extra_ms: f64,
    /// RVC: SOLA crossfade between blocks, ms.
    #[arg(long, default_value_t = 50.0)]
    sola_crossfade_ms: f64,
    /// Neighbours per frame, 1..32.
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// Query-side α expansion: search with the sim^α-weighted mean of each
    /// frame's K nearest vectors. Off by default.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=knnblend::index::MAX_K as u64))]
    expand: Option<u64>,
    /// The α of --expand.
    #[arg(long, value_name = "A", default_value_t = 3.0, requires = "expand")]
    expand_alpha: f32,
    /// Swap to this index during the render (live, crossfaded).
    #[arg(long, requires = "swap_at")]
    swap_to: Option<PathBuf>,
    /// When to swap, in seconds from the start.
    #[arg(long, requires = "swap_to")]
    swap_at: Option<f64>,
    /// Crossfade time of the swap, ms.
    #[arg(long, default_value_t = 50.0)]
    crossfade_ms: f32,
    /// Samples per processing block, as a host would call the plugin.
    #[arg(long, default_value_t = 512)]
    block: usize,
    /// Dry/wet mix, 0..1.
    #[arg(long, default_value_t = 1.0)]
    dry_wet: f32,
    /// Output gain, dB.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    gain_db: f32,
    /// Input audio (WAV, FLAC, MP3, OGG).
    input: PathBuf,
    /// Output WAV (32-bit float, same rate and channels).
    output: PathBuf,
}

pub fn run(a: Args) -> crate::Result {
    if !(a.expand_alpha.is_finite() && a.expand_alpha >= 0.0) {
        return Err(format!("--expand-alpha {} must be a number >= 0", a.expand_alpha).into());
    }
    if let (Some(model), Some(contentvec)) = (a.rvc_model.clone(), a.contentvec.clone()) {
        return run_rvc(a, model, contentvec);
    }
    let opts = RenderOptions {
        index: a.index,
        input: a.input,
        output: a.output,
        ratio: a.ratio,
        k: a.k,
        swap_to: a.swap_to,
        swap_at: a.swap_at,
        block_size: a.block,
        crossfade_seconds: a.crossfade_ms / 1000.0,
        dry_wet: a.dry_wet,
        output_gain_db: a.gain_db,
        expansion: a.expand.map(|k| knnblend::index::QueryExpansion {
            k: k as usize,
            alpha: a.expand_alpha,
        }),
        pitch: a.pitch,
    };
    let mut bar = crate::progress::StageBar::new();
    let result = render_file(&opts, &mut |stage, done, total| {
        bar.update(stage, done, total)
    });
    bar.finish();
    let s = result?;
    println!(
        "wrote {}: {:.2} s, {} ch @ {} Hz; {} of {} frames blended; latency {} samples (compensated)",
        opts.output.display(),
        s.seconds,
        s.channels,
        s.sample_rate,
        s.blended_frames,
        s.analysed_frames,
        s.latency_samples
    );
    if let Some(p) = s.pitch {
        println!(
            "pitch: shifted {:+.2} semitones at the end{}",
            p.semitones,
            if p.input_median_hz > 0.0 {
                format!(" (input median f0 {:.1} Hz)", p.input_median_hz)
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// `render --rvc-model`: the realtime RVC path (stream, worker, rings) driven block by block.
fn run_rvc(a: Args, model: PathBuf, contentvec: PathBuf) -> crate::Result {
    if a.swap_to.is_some() {
        return Err("--swap-to is not available with --rvc-model yet".into());
    }
    let mut opts = RvcRenderOptions::new(a.input, a.output, model, contentvec, a.index);
    opts.rmvpe = a.rmvpe;
    opts.onnxruntime = a.onnxruntime;
    opts.pitch = match a.pitch {
        knnblend::voice::RenderPitch::Off => 0.0,
        knnblend::voice::RenderPitch::Semitones(n) => n,
        knnblend::voice::RenderPitch::Match => {
            return Err(
                "--pitch match is for DSP voices; with --rvc-model give a shift in semitones"
                    .into(),
            )
        }
    };
    opts.ratio = a.ratio;
    opts.protect = a.protect;
    opts.k = a.k;
    opts.expansion = a.expand.map(|k| knnblend::index::QueryExpansion {
        k: k as usize,
        alpha: a.expand_alpha,
    });
    opts.block_seconds = a.block_ms / 1000.0;
    opts.extra_seconds = a.extra_ms / 1000.0;
    opts.crossfade_seconds = a.sola_crossfade_ms / 1000.0;
    opts.host_block = a.block;
    opts.dry_wet = a.dry_wet;
    let s = knnblend_rvc::render::render_file(&opts)?;
    println!(
        "wrote {}: {:.2} s @ {} Hz through the RVC path ({}-d, {} Hz model, f0 {}: {}); {} blocks, \
         {} failed; latency {} samples (compensated); ONNX Runtime {}",
        opts.output.display(),
        s.seconds,
        s.sample_rate,
        s.dim,
        s.model_rate,
        if s.f0 { "on" } else { "off" },
        s.f0_method,
        s.blocks,
        s.model_errors,
        s.latency_samples,
        s.onnxruntime
    );
    Ok(())
}
