//! Pitch shifting inside the voice path's STFT: a peak-locked phase vocoder (Laroche & Dolson,
//! "New phase-vocoder techniques for pitch-shifting, harmonizing and other exotic effects",
//! WASPAA 1999). Each frame's magnitude peaks are found on the mid spectrum; every bin of a
//! peak's region (up to half-way to the next peak) moves by the same whole number of bins, so
//! the peak lands at `α ×` its frequency, and the region is rotated by the phase its new
//! frequency accumulates over one hop (continued from the rotation the previous frame gave the
//! bin it lands on), so partials stay coherent from frame to frame. No time stretching and no
//! resampling: the frame rate, the window and the latency stay those of the voice path.
//!
//! Shifting moves the formants with the harmonics; the voice path puts them back by computing
//! its envelope gains against the shifted spectrum's own envelope (see `engine.rs`), so the
//! output carries the envelope retrieval chose, at the new pitch.
//!
//! All memory is allocated by [`PeakShifter::new`]; [`shift`](PeakShifter::shift) allocates
//! nothing.

use realfft::num_complex::Complex;

/// Peaks below this fraction of the frame's largest magnitude (−80 dB) are not peaks.
const FLOOR: f32 = 1e-4;

/// The peak-locked shifter's state for spectra of `bins` bins.
pub struct PeakShifter {
    bins: usize,
    /// Phase advance per bin of shift per hop: `2π · hop / n_fft`.
    omega: f32,
    peaks: Vec<u32>,
    /// Rotation each output bin got in the previous frame, and in this one.
    rot_prev: Vec<f32>,
    rot: Vec<f32>,
}

impl PeakShifter {
    /// A shifter for spectra of `n_fft / 2 + 1` bins, frames `hop` samples apart.
    pub fn new(n_fft: usize, hop: usize) -> PeakShifter {
        let bins = n_fft / 2 + 1;
        PeakShifter {
            bins,
            omega: (2.0 * std::f64::consts::PI * hop as f64 / n_fft as f64) as f32,
            peaks: Vec::with_capacity(bins),
            rot_prev: vec![0.0; bins],
            rot: vec![0.0; bins],
        }
    }

    /// Forgets the phase history (after a discontinuity or a reset).
    pub fn reset(&mut self) {
        self.rot_prev.fill(0.0);
        self.rot.fill(0.0);
    }

    /// Finds the peaks of `mid` (the spectrum the regions are chosen on).
    fn find_peaks(&mut self, mid: &[Complex<f32>]) {
        self.peaks.clear();
        let n = mid.len();
        let mag = |b: usize| mid[b].norm_sqr();
        let top = (0..n).map(mag).fold(0f32, f32::max);
        let floor = top * FLOOR * FLOOR;
        for b in 2..n.saturating_sub(2) {
            let m = mag(b);
            if m > floor && m > mag(b - 1) && m >= mag(b + 1) && m > mag(b - 2) && m >= mag(b + 2) {
                self.peaks.push(b as u32);
            }
        }
    }

    /// Shifts `channels` spectra (each `bins` long, laid end to end in `input`) by the factor
    /// `alpha` into `output` (same layout), with regions chosen on `mid`. Stereo channels move
    /// identically, so the image holds.
    pub fn shift(
        &mut self,
        alpha: f32,
        mid: &[Complex<f32>],
        input: &[Complex<f32>],
        output: &mut [Complex<f32>],
        channels: usize,
    ) {
        let bins = self.bins;
        debug_assert_eq!(mid.len(), bins);
        self.find_peaks(mid);
        output[..channels * bins].fill(Complex::default());
        self.rot.fill(0.0);
        let np = self.peaks.len();
        for i in 0..np {
            let p = self.peaks[i] as usize;
            let lo = if i == 0 {
                0
            } else {
                (self.peaks[i - 1] as usize + p) / 2 + 1
            };
            let hi = if i + 1 == np {
                bins
            } else {
                (p + self.peaks[i + 1] as usize) / 2 + 1
            };
            // The peak's frequency between bins (parabolic interpolation of the log
            // magnitude), and the shift that puts it at α × that frequency: the region moves by
            // the nearest whole number of bins, and its phase turns by the exact shift, so the
            // partial comes out at α × its frequency, harmonics stay harmonic.
            let ln = |b: usize| (mid[b].norm_sqr() + f32::MIN_POSITIVE).ln();
            let (a, m, c) = (ln(p - 1), ln(p), ln(p + 1));
            let den = a - 2.0 * m + c;
            let frac = if den < 0.0 {
                (0.5 * (a - c) / den).clamp(-0.5, 0.5)
            } else {
                0.0
            };
            let exact = (alpha - 1.0) * (p as f32 + frac);
            let delta = exact.round() as isize;
            let to = p as isize + delta;
            if to < 0 || to as usize >= bins {
                continue;
            }
            let mut theta = self.rot_prev[to as usize] + self.omega * exact;
            theta = (theta + std::f32::consts::PI).rem_euclid(2.0 * std::f32::consts::PI)
                - std::f32::consts::PI;
            let turn = Complex::from_polar(1.0, theta);
            for b in lo..hi {
                let dst = b as isize + delta;
                if dst < 0 || dst as usize >= bins {
                    continue;
                }
                let dst = dst as usize;
                self.rot[dst] = theta;
                for c in 0..channels {
                    output[c * bins + dst] += input[c * bins + b] * turn;
                }
            }
        }
        std::mem::swap(&mut self.rot, &mut self.rot_prev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use realfft::RealFftPlanner;

    /// A sum of harmonics of `f0` through a sine-windowed STFT shifted by `alpha`, overlap-added:
    /// the output's strongest partial moves to `alpha × f0` and the frames join coherently.
    #[test]
    fn harmonics_move_by_the_factor_and_frames_join() {
        let (sr, hop, win, n_fft) = (16_000.0f64, 160usize, 640usize, 2048usize);
        let f0 = 150.0;
        let alpha = 1.5f32;
        let n = 16_000;
        let x: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f64 / sr;
                (1..6)
                    .map(|h| (2.0 * std::f64::consts::PI * f0 * h as f64 * t).sin() / h as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        let window: Vec<f32> = (0..win)
            .map(|i| (std::f64::consts::PI * (i as f64 + 0.5) / win as f64).sin() as f32)
            .collect();
        let mut planner = RealFftPlanner::<f32>::new();
        let (fft, ifft) = (
            planner.plan_fft_forward(n_fft),
            planner.plan_fft_inverse(n_fft),
        );
        let bins = n_fft / 2 + 1;
        let mut s = PeakShifter::new(n_fft, hop);
        let mut out = vec![0f32; n + win];
        let (mut spec, mut shifted) = (
            vec![Complex::default(); bins],
            vec![Complex::default(); bins],
        );
        let mut time = vec![0f32; n_fft];
        let mut start = 0;
        while start + win <= n {
            for i in 0..n_fft {
                time[i] = if i < win {
                    x[start + i] * window[i]
                } else {
                    0.0
                };
            }
            fft.process(&mut time, &mut spec).unwrap();
            let mid = spec.clone();
            s.shift(alpha, &mid, &spec, &mut shifted, 1);
            shifted[0].im = 0.0;
            shifted[bins - 1].im = 0.0;
            ifft.process(&mut shifted, &mut time).unwrap();
            for i in 0..win {
                out[start + i] += time[i] * window[i] / n_fft as f32;
            }
            start += hop;
        }
        // The middle second's spectrum: its largest peak near 1.5 × 150 Hz = 225 Hz.
        let seg = &out[4000..12_000];
        let mut best = (0f64, 0f64);
        for f in (100..400).map(|f| f as f64) {
            let (mut re, mut im) = (0f64, 0f64);
            for (i, &v) in seg.iter().enumerate() {
                let ph = 2.0 * std::f64::consts::PI * f * i as f64 / sr;
                re += v as f64 * ph.cos();
                im += v as f64 * ph.sin();
            }
            let p = re * re + im * im;
            if p > best.0 {
                best = (p, f);
            }
        }
        assert!(
            (best.1 - 225.0).abs() <= 4.0,
            "strongest partial at {} Hz",
            best.1
        );
        // Coherent joins: the output is not much quieter than the input (no cancellation).
        let rms = |v: &[f32]| {
            (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        // Sine windows at 4× overlap overlap-add to 2 × the input.
        let ratio = rms(seg) / rms(&x[4000..12_000]) / 2.0;
        assert!(ratio > 0.5, "output level {ratio} of the input");
    }
}
