//! Helpers shared by the voice tests: long-term average spectra, tiny indexes, rendering.
#![allow(dead_code)]

use std::sync::Arc;

use knnblend::format::{IndexParts, Metric};
use knnblend::index::{AnyIndex, IvfIndex};
use knnblend::voice::{flat_parts, Extractor, FeatureSpec, SilenceRule};
use realfft::RealFftPlanner;

/// Long-term average spectrum in third-octave bands 250 Hz – 6.3 kHz, dB, mean removed; every
/// band at least 250 Hz wide, so that it holds a harmonic of any voice up to 250 Hz f0 and
/// measures the spectral envelope (timbre), not where the harmonics of one pitch fall.
/// Independent of the engine's own features (different window, bands and scale).
pub fn ltas_db(signal: &[f32], sr: f32) -> Vec<f64> {
    let n = 2048;
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(n);
    let win: Vec<f64> = (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos())
        .collect();
    let mut acc = vec![0f64; n / 2 + 1];
    let mut buf = vec![0f64; n];
    let mut out = fft.make_output_vec();
    let mut start = 0;
    while start + n <= signal.len() {
        for i in 0..n {
            buf[i] = signal[start + i] as f64 * win[i];
        }
        fft.process(&mut buf, &mut out).unwrap();
        for (a, c) in acc.iter_mut().zip(&out) {
            *a += c.norm_sqr();
        }
        start += n / 2;
    }
    let bin_hz = sr as f64 / n as f64;
    let mut bands = Vec::new();
    let mut fc = 250.0f64;
    while fc <= 6400.0 {
        let lo = (fc / 2f64.powf(1.0 / 6.0)).min(fc - 125.0);
        let hi = (fc * 2f64.powf(1.0 / 6.0)).max(fc + 125.0);
        let (a, b) = (
            (lo / bin_hz).ceil() as usize,
            (hi / bin_hz).floor() as usize,
        );
        let e: f64 = acc[a..=b].iter().sum::<f64>() / (b + 1 - a) as f64;
        bands.push(10.0 * (e + 1e-20).log10());
        fc *= 2f64.powf(1.0 / 3.0);
    }
    let mean = bands.iter().sum::<f64>() / bands.len() as f64;
    bands.iter().map(|b| b - mean).collect()
}

/// RMS difference of two spectra in dB.
pub fn distance(a: &[f64], b: &[f64]) -> f64 {
    (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

/// Exact (single-list) index parts of `signal`'s voiced frames.
pub fn voice_parts(signal: &[f32], sr: f32, spec: &FeatureSpec) -> IndexParts {
    let ex = Extractor::new(spec, sr);
    let got = ex.extract(signal, &SilenceRule::default());
    let meta = spec.metadata(
        vec!["synth".into()],
        got.frames as u64,
        signal.len() as f64 / sr as f64,
    );
    let (rows, _mean) = spec.speaker_rows(&got.rows);
    flat_parts(&rows, spec.dim(), Metric::L2, meta)
}

/// An exact (single-list) index of `signal`'s voiced frames.
pub fn voice_index(signal: &[f32], sr: f32, spec: &FeatureSpec) -> Arc<AnyIndex> {
    Arc::new(
        IvfIndex::from_parts(&voice_parts(signal, sr, spec))
            .unwrap()
            .into(),
    )
}

/// Deterministic white noise in [-1, 1).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Largest absolute sample-to-sample step in `x[range]`.
pub fn max_step(x: &[f32]) -> f32 {
    x.windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f32::max)
}

/// `dir/VOICE-i.wav`: espeak-ng reading `text` in `voice` (installed by `cargo xtask setup`; a
/// missing espeak-ng fails the test rather than skipping it).
pub fn espeak(dir: &std::path::Path, voice: &str, i: usize, text: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{}-{i}.wav", voice.replace('+', "_")));
    let out = std::process::Command::new("espeak-ng")
        .args(["-v", voice, "-w"])
        .arg(&path)
        .arg(text)
        .output()
        .expect("espeak-ng runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}
