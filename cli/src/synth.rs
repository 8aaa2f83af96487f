use std::path::PathBuf;

use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend::voice::{write_wav_f32, Audio};

/// Arguments of `knnblend synth`.
#[derive(clap::Args)]
pub struct Args {
    /// Which built-in voice: `low` (f0 110 Hz) or `high` (f0 220 Hz, shorter vocal tract).
    #[arg(long, value_parser = ["low", "high"])]
    voice: String,
    /// Length, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f32,
    /// Sample rate, Hz.
    #[arg(long, default_value_t = 48_000)]
    rate: u32,
    /// Seed of the vowel sequence (another seed, other phrases).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output WAV (mono, 32-bit float).
    output: PathBuf,
}

pub fn run(a: Args) -> crate::Result {
    if !(0.1..=600.0).contains(&a.seconds) {
        return Err(format!("--seconds {} is outside 0.1..=600", a.seconds).into());
    }
    if !(8_000..=384_000).contains(&a.rate) {
        return Err(format!("--rate {} is outside 8000..=384000", a.rate).into());
    }
    let voice = match a.voice.as_str() {
        "low" => VoiceParams::low(),
        _ => VoiceParams::high(),
    }
    .with_seed(a.seed);
    let samples = synth_voice(&voice, a.rate as f32, a.seconds);
    write_wav_f32(&a.output, &Audio::from_channels(&[samples], a.rate))?;
    println!(
        "wrote {} ({} voice, {:.1} s @ {} Hz)",
        a.output.display(),
        a.voice,
        a.seconds,
        a.rate
    );
    Ok(())
}
