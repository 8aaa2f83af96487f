//! Offline measurements of what a conversion did, for `knnblend compare` and the demo's
//! summary: the f0 track and its median, and a pitch-independent spectral envelope (the mean
//! over loud frames of the cepstrally smoothed log power spectrum, 200 Hz – 8 kHz).
//!
//! The envelope's lifter keeps quefrencies below 1.5 ms, under the period of any f0 up to
//! 660 Hz, so harmonics (pitch) are smoothed away and formants (timbre) stay: two voices at
//! different pitches with the same vocal tract measure alike. Not for the audio thread
//! (allocates).

use realfft::num_complex::Complex;
use realfft::RealFftPlanner;

use super::pitch::{Pitch, PitchSpec, Yin};
use super::pitch_stats::{PitchCollector, PitchStats};

/// The envelope's frequency range, Hz.
pub const ENVELOPE_RANGE_HZ: (f64, f64) = (200.0, 8000.0);
/// The envelope's FFT size at 44.1/48 kHz (scaled with the rate).
const FFT_48K: usize = 2048;
/// The lifter, seconds of quefrency.
const LIFTER_SECONDS: f64 = 0.0015;
/// Frames below this share of the signal's mean energy are left out (pauses, breaths).
const LOUD_SHARE: f64 = 0.3;

/// A smoothed spectral envelope: dB at each frequency, mean removed.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    /// Frequencies, Hz (the FFT bins in [`ENVELOPE_RANGE_HZ`]).
    pub hz: Vec<f64>,
    /// Level at each, dB relative to the envelope's mean.
    pub db: Vec<f64>,
    /// Frames averaged.
    pub frames: usize,
}

impl Envelope {
    /// The RMS difference to `other` in dB, over the frequencies both cover (linear
    /// interpolation of `other` onto this one's grid, so different rates compare).
    pub fn distance_db(&self, other: &Envelope) -> f64 {
        let mut sum = 0.0;
        let mut n = 0usize;
        for (&f, &a) in self.hz.iter().zip(&self.db) {
            if let Some(b) = other.at(f) {
                sum += (a - b) * (a - b);
                n += 1;
            }
        }
        if n == 0 {
            f64::NAN
        } else {
            (sum / n as f64).sqrt()
        }
    }

    /// The level at `hz`, linearly interpolated (`None` outside the envelope).
    pub fn at(&self, hz: f64) -> Option<f64> {
        let i = self.hz.partition_point(|&f| f < hz);
        if i == 0 {
            return (self.hz.first() == Some(&hz)).then(|| self.db[0]);
        }
        if i >= self.hz.len() {
            return None;
        }
        let (f0, f1) = (self.hz[i - 1], self.hz[i]);
        let t = (hz - f0) / (f1 - f0);
        Some(self.db[i - 1] + t * (self.db[i] - self.db[i - 1]))
    }
}

/// The smoothed envelope of `signal` (mono) at `sample_rate`; `None` when it has no loud
/// frame of a whole FFT.
pub fn envelope(signal: &[f32], sample_rate: f32) -> Option<Envelope> {
    let sr = sample_rate as f64;
    let n = ((FFT_48K as f64 * sr / 48_000.0).round() as usize)
        .next_power_of_two()
        .max(256);
    if signal.len() < n || sr.is_nan() || sr <= 2.0 * ENVELOPE_RANGE_HZ.0 {
        return None;
    }
    let mut planner = RealFftPlanner::<f64>::new();
    let (fft, ifft) = (planner.plan_fft_forward(n), planner.plan_fft_inverse(n));
    let lifter = ((LIFTER_SECONDS * sr) as usize).max(1);
    let lo = (ENVELOPE_RANGE_HZ.0 * n as f64 / sr).ceil() as usize;
    let hi = ((ENVELOPE_RANGE_HZ.1.min(sr / 2.0) * n as f64 / sr) as usize).min(n / 2);
    let mut acc = vec![0f64; hi.saturating_sub(lo)];
    if acc.is_empty() {
        return None;
    }
    let (mut buf, mut spec) = (vec![0f64; n], fft.make_output_vec());
    let mut logs = vec![Complex::new(0.0, 0.0); n / 2 + 1];
    let energy_of = |x: &[f32]| x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let mean_energy = energy_of(signal);
    let mut frames = 0;
    let mut start = 0;
    while start + n <= signal.len() {
        let frame = &signal[start..start + n];
        if energy_of(frame) > LOUD_SHARE * mean_energy && mean_energy > 0.0 {
            for (i, (b, &x)) in buf.iter_mut().zip(frame).enumerate() {
                let w = 0.5 - 0.5 * (std::f64::consts::TAU * i as f64 / n as f64).cos();
                *b = x as f64 * w;
            }
            fft.process(&mut buf, &mut spec).expect("sizes match");
            for (l, c) in logs.iter_mut().zip(&spec) {
                *l = Complex::new((c.norm_sqr() + 1e-12).ln(), 0.0);
            }
            ifft.process(&mut logs, &mut buf).expect("sizes match"); // the real cepstrum (× n)
            for (q, c) in buf.iter_mut().enumerate() {
                if q > lifter && q < n - lifter {
                    *c = 0.0;
                }
            }
            fft.process(&mut buf, &mut spec).expect("sizes match");
            for (a, c) in acc.iter_mut().zip(&spec[lo..hi]) {
                *a += c.re / n as f64 * 10.0 / std::f64::consts::LN_10;
            }
            frames += 1;
        }
        start += n / 4;
    }
    if frames == 0 {
        return None;
    }
    let mean = acc.iter().sum::<f64>() / acc.len() as f64 / frames as f64;
    Some(Envelope {
        hz: (lo..hi).map(|b| b as f64 * sr / n as f64).collect(),
        db: acc.iter().map(|a| a / frames as f64 - mean).collect(),
        frames,
    })
}

/// The f0 track of `signal` (mono), one value per 10 ms hop (0: unvoiced), and its statistics.
pub fn f0_track(signal: &[f32], sample_rate: u32) -> Result<(Vec<f32>, PitchStats), String> {
    let spec = PitchSpec::default();
    let mut yin = Yin::new(&spec, sample_rate as f32)?;
    let mut track = vec![Pitch::SILENT; yin.frames(signal.len())];
    let n = yin.track(signal, &mut track);
    let mut stats = PitchCollector::new(spec);
    stats.add(signal, sample_rate)?;
    let hz = track[..n]
        .iter()
        .map(|p| if p.is_voiced() { p.f0_hz } else { 0.0 })
        .collect();
    Ok((hz, stats.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A harmonic series at `f0` through one resonance at `formant` Hz.
    fn vowel(f0: f64, formant: f64, sr: f64, seconds: f64) -> Vec<f32> {
        let n = (sr * seconds) as usize;
        let mut x = vec![0f32; n];
        let mut h = 1;
        while h as f64 * f0 < sr / 2.0 - 500.0 {
            let f = h as f64 * f0;
            let a = 1.0 / (1.0 + ((f - formant) / 300.0).powi(2));
            for (i, v) in x.iter_mut().enumerate() {
                *v += (a * (std::f64::consts::TAU * f * i as f64 / sr).sin()) as f32 * 0.1;
            }
            h += 1;
        }
        x
    }

    #[test]
    fn envelope_follows_formants_not_pitch() {
        let sr = 48_000.0;
        let a = envelope(&vowel(110.0, 1000.0, sr, 1.0), sr as f32).unwrap();
        let b = envelope(&vowel(220.0, 1000.0, sr, 1.0), sr as f32).unwrap();
        let c = envelope(&vowel(110.0, 2500.0, sr, 1.0), sr as f32).unwrap();
        let (pitch, formant) = (a.distance_db(&b), a.distance_db(&c));
        // An octave apart, same formant: close; same pitch, formant moved: far.
        assert!(
            pitch < 0.4 * formant,
            "pitch {pitch:.2} dB vs formant {formant:.2} dB"
        );
        // The peak sits at the formant.
        let peak = a.hz[a
            .db
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .unwrap()
            .0];
        assert!((peak - 1000.0).abs() < 150.0, "{peak}");
        assert_eq!(a.distance_db(&a), 0.0);
        // Other rates compare on the common grid.
        let d = envelope(&vowel(110.0, 1000.0, 44_100.0, 1.0), 44_100.0).unwrap();
        // (Measured: pitch 1.3 dB, formant 14.0 dB, 48 vs 44.1 kHz 1.9 dB.)
        assert!(a.distance_db(&d) < 0.25 * formant, "{}", a.distance_db(&d));
        assert!(envelope(&[0.0; 100], sr as f32).is_none());
    }

    #[test]
    fn f0_track_finds_the_pitch() {
        let (track, stats) = f0_track(&vowel(150.0, 800.0, 48_000.0, 1.0), 48_000).unwrap();
        assert!(track.len() > 80);
        assert!((stats.median_hz - 150.0).abs() < 2.0, "{stats:?}");
        let voiced: Vec<f32> = track.iter().copied().filter(|&f| f > 0.0).collect();
        assert!(voiced.len() > track.len() / 2);
    }
}
