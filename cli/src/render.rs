use std::path::PathBuf;

use knnblend::voice::{render_file, RenderOptions};

/// Arguments of `knnblend render`.
#[derive(clap::Args)]
pub struct Args {
    /// The voice index (.kbi, or an index with matching features).
    #[arg(long)]
    index: PathBuf,
    /// Blend ratio (RVC's index rate), 0..1.
    #[arg(long, default_value_t = 0.75)]
    ratio: f32,
    /// Neighbours per frame, 1..32.
    #[arg(long, default_value_t = 8)]
    k: usize,
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
    Ok(())
}
