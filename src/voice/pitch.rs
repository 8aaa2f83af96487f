//! A YIN pitch tracker (de Cheveigné & Kawahara, *YIN, a fundamental frequency estimator for
//! speech and music*, JASA 2002), defined in Hz and ms so that it works at any sample rate.
//!
//! Per frame of [`Yin::frame_len`] samples `x₀ … x_{L−1}`, with `W` the integration window and
//! `τ` a lag in samples:
//!
//! 0. **low-pass** (optional, [`PitchSpec::lowpass_hz`], default 1500 Hz): a 4th-order
//!    Butterworth low-pass run over the frame from the steady state of its first sample. The
//!    paper reports low-pass prefiltering as helpful; here it matters because a broadband
//!    harmonic signal whose period is not a whole number of samples has a dip in `d′` at the
//!    nearest whole lag that is shallow (a 147 Hz band-limited pulse train at 16 kHz: `d′ ≈ 0.22`
//!    at lag 109 for a period of 108.6), while the dip at twice the period is deeper, so step 3
//!    would pick the lower octave. With harmonics above the cutoff attenuated the first dip is
//!    deep again. The section's delay (a fraction of a millisecond) is not compensated;
//! 1. **difference function** `d(τ) = Σ_{j<W} (x_j − x_{j+τ})²` for `τ = 0 ..= τ_max + 1`;
//! 2. **cumulative mean normalised difference** `d′(0) = 1`,
//!    `d′(τ) = d(τ) / ((1/τ) Σ_{j=1..τ} d(j))` (1 where that mean is 0);
//! 3. **absolute threshold**: the smallest lag `τ` in `τ_min ..= τ_max` with
//!    `d′(τ) < threshold`, then followed down to the bottom of its dip (while `d′(τ+1) < d′(τ)`);
//!    no such lag means the frame is unvoiced;
//! 4. **parabolic interpolation** of the *raw* `d` around that lag (the paper's step 5: the
//!    abscissa of `d′`'s minimum is biased, that of `d`'s is not); the estimate is
//!    `f0 = sample_rate / (τ + δ)`, clamped to `f0_min ..= f0_max`.
//!
//! The lags searched are `τ_min = ⌊sample_rate / f0_max⌋` (at least 2) to
//! `τ_max = ⌈sample_rate / f0_min⌉`, so a frame reads `L = W + τ_max + 1` samples. Each
//! estimate carries its aperiodicity `d′(τ)` (0 for a perfectly periodic frame, about 1 for
//! noise); unvoiced frames report `f0 = 0`. Frames quieter than [`PitchSpec::silence_db`]
//! (RMS of the unfiltered frame after removing its mean) or holding a non-finite sample are
//! unvoiced with aperiodicity 1.
//!
//! ## Computation
//! `d(τ) = e(0) + e(τ) − 2 r(τ)`, with the window energies `e(τ) = Σ_{j<W} x²_{j+τ}` from a
//! prefix sum (f64) and the cross-correlation `r(τ) = Σ_{j<W} x_j x_{j+τ}` from one forward
//! transform of the window, one of the frame and one inverse transform (`realfft`, f32, size
//! the next power of two ≥ `L`: no circular wrap reaches a lag ≤ `τ_max + 1`). The frame's mean
//! is removed first, which leaves `d` unchanged and keeps the correlation well conditioned.
//! `d` and `d′` are kept in f64. The tests compare the result with a direct f64 evaluation of
//! the equations above.
//!
//! ## Realtime
//! Everything is sized in [`Yin::new`] (see the buffer list there); [`Yin::estimate`] and
//! [`Yin::track`] allocate nothing, lock nothing and call nothing but the FFT.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

/// The tracker's parameters, in physical units.
#[derive(Clone, Debug, PartialEq)]
pub struct PitchSpec {
    /// Lowest f0 searched, Hz (RVC: 50).
    pub f0_min_hz: f32,
    /// Highest f0 searched, Hz (RVC: 1100).
    pub f0_max_hz: f32,
    /// Integration window `W`, ms.
    pub window_ms: f32,
    /// Hop between frames, ms (RVC: 10).
    pub hop_ms: f32,
    /// Absolute threshold on `d′` below which a dip counts as a period (the paper: 0.1).
    pub threshold: f32,
    /// Frames whose RMS (mean removed) is below this, dBFS, are unvoiced.
    pub silence_db: f32,
    /// Cutoff of the 4th-order Butterworth low-pass applied to each frame before the difference
    /// function, Hz; 0 disables it. See the module docs.
    pub lowpass_hz: f32,
}

impl Default for PitchSpec {
    /// RVC's range 50–1100 Hz, a 25 ms window (the paper's), 10 ms hop (RVC's frame rate),
    /// threshold 0.15 (a little above the paper's 0.1, so breathy or noisy voiced speech is still
    /// voiced; white noise stays near 1), silence below −70 dBFS, low-pass at 1500 Hz.
    fn default() -> Self {
        PitchSpec {
            f0_min_hz: 50.0,
            f0_max_hz: 1100.0,
            window_ms: 25.0,
            hop_ms: 10.0,
            threshold: 0.15,
            silence_db: -70.0,
            lowpass_hz: 1500.0,
        }
    }
}

impl PitchSpec {
    /// Checks the parameters against a sample rate; the message says which one is wrong.
    pub fn validate(&self, sample_rate: f32) -> Result<(), String> {
        if !(sample_rate.is_finite() && sample_rate >= 1000.0) {
            return Err(format!(
                "pitch tracking needs a sample rate of at least 1000 Hz, got {sample_rate}"
            ));
        }
        if !(self.f0_min_hz.is_finite() && self.f0_min_hz > 0.0) {
            return Err(format!(
                "f0_min_hz must be a positive frequency, got {}",
                self.f0_min_hz
            ));
        }
        if !(self.f0_max_hz.is_finite() && self.f0_max_hz > self.f0_min_hz) {
            return Err(format!(
                "f0_max_hz ({}) must be above f0_min_hz ({})",
                self.f0_max_hz, self.f0_min_hz
            ));
        }
        if self.f0_max_hz > sample_rate / 4.0 {
            return Err(format!(
                "f0_max_hz ({}) must be at most a quarter of the sample rate ({sample_rate} Hz)",
                self.f0_max_hz
            ));
        }
        if self.f0_min_hz < sample_rate / 65_536.0 {
            return Err(format!(
                "f0_min_hz ({}) is too low for {sample_rate} Hz (longest period 65536 samples)",
                self.f0_min_hz
            ));
        }
        let samples = |ms: f32| (ms as f64 * sample_rate as f64 / 1000.0).round();
        if !(self.window_ms.is_finite() && samples(self.window_ms) >= 2.0) {
            return Err(format!(
                "window_ms ({}) must span at least 2 samples at {sample_rate} Hz",
                self.window_ms
            ));
        }
        if samples(self.window_ms) > 65_536.0 {
            return Err(format!(
                "window_ms ({}) spans more than 65536 samples",
                self.window_ms
            ));
        }
        if !(self.hop_ms.is_finite() && samples(self.hop_ms) >= 1.0) {
            return Err(format!(
                "hop_ms ({}) must span at least 1 sample at {sample_rate} Hz",
                self.hop_ms
            ));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(format!(
                "threshold must be in (0, 1], got {}",
                self.threshold
            ));
        }
        if self.silence_db.is_nan() || self.silence_db > 0.0 {
            return Err(format!(
                "silence_db must be at most 0 dBFS, got {}",
                self.silence_db
            ));
        }
        if !(self.lowpass_hz == 0.0
            || (self.lowpass_hz >= self.f0_min_hz && self.lowpass_hz < 0.45 * sample_rate))
        {
            return Err(format!(
                "lowpass_hz ({}) must be 0 (off) or between f0_min_hz ({}) and 0.45 × the sample \
                 rate ({} Hz)",
                self.lowpass_hz,
                self.f0_min_hz,
                0.45 * sample_rate
            ));
        }
        Ok(())
    }
}

/// One frame's estimate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pitch {
    /// Fundamental frequency, Hz; 0 when unvoiced.
    pub f0_hz: f32,
    /// `d′` at the chosen lag (at the deepest dip when unvoiced; 1 for silence): 0 is perfectly
    /// periodic, about 1 is noise.
    pub aperiodicity: f32,
}

impl Pitch {
    /// An unvoiced frame with aperiodicity 1 (silence, non-finite input).
    pub const SILENT: Pitch = Pitch {
        f0_hz: 0.0,
        aperiodicity: 1.0,
    };

    /// Whether the frame is voiced (`f0_hz > 0`).
    pub fn is_voiced(&self) -> bool {
        self.f0_hz > 0.0
    }

    /// `1 − aperiodicity`, clamped to `[0, 1]`.
    pub fn confidence(&self) -> f32 {
        (1.0 - self.aperiodicity).clamp(0.0, 1.0)
    }
}

/// A biquad section in transposed direct form II, coefficients normalised by `a0`.
#[derive(Clone, Copy, Debug)]
struct Biquad {
    b0: f64,
    b1: f64,
    b2: f64,
    a1: f64,
    a2: f64,
}

impl Biquad {
    /// The bilinear-transform low-pass section with cutoff `fc` and quality `q`.
    fn lowpass(fc: f64, q: f64, sample_rate: f64) -> Biquad {
        let w0 = 2.0 * std::f64::consts::PI * fc / sample_rate;
        let (sin, cos) = w0.sin_cos();
        let alpha = sin / (2.0 * q);
        let a0 = 1.0 + alpha;
        Biquad {
            b0: (1.0 - cos) / 2.0 / a0,
            b1: (1.0 - cos) / a0,
            b2: (1.0 - cos) / 2.0 / a0,
            a1: -2.0 * cos / a0,
            a2: (1.0 - alpha) / a0,
        }
    }

    /// Filters `x` in place, starting from the steady state of a constant input `x[0]` (the
    /// section has unity gain at DC), so the frame's start makes no step.
    fn run(&self, x: &mut [f64]) {
        let Some(&u) = x.first() else { return };
        let (mut s1, mut s2) = (u * (1.0 - self.b0), u * (self.b2 - self.a2));
        for v in x.iter_mut() {
            let input = *v;
            let y = self.b0 * input + s1;
            s1 = self.b1 * input - self.a1 * y + s2;
            s2 = self.b2 * input - self.a2 * y;
            *v = y;
        }
    }
}

/// The two sections of a 4th-order Butterworth low-pass (Q = 1 / (2 cos(π/8)), 1 / (2 cos(3π/8))).
fn butterworth4(fc: f64, sample_rate: f64) -> [Biquad; 2] {
    let q = |k: f64| 1.0 / (2.0 * (std::f64::consts::PI * k / 8.0).cos());
    [
        Biquad::lowpass(fc, q(1.0), sample_rate),
        Biquad::lowpass(fc, q(3.0), sample_rate),
    ]
}

/// A YIN tracker for one sample rate: see the [module docs](self).
pub struct Yin {
    sample_rate: f32,
    f0_min: f32,
    f0_max: f32,
    threshold: f64,
    silence_rms: f64,
    window: usize,
    hop: usize,
    tau_min: usize,
    tau_max: usize,
    /// Samples the low-pass runs over before the analysed span (0 without it).
    warmup: usize,
    /// The analysed span, `W + τ_max + 1`.
    span: usize,
    frame_len: usize,
    lowpass: Option<[Biquad; 2]>,
    fft: Arc<dyn RealToComplex<f32>>,
    ifft: Arc<dyn ComplexToReal<f32>>,
    /// `n_fft` samples: the transform's input, then the correlation.
    time: Vec<f32>,
    /// `n_fft / 2 + 1` bins: the window's spectrum.
    spec_window: Vec<Complex<f32>>,
    /// `n_fft / 2 + 1` bins: the frame's spectrum, then the cross spectrum.
    spec_frame: Vec<Complex<f32>>,
    /// The larger of the two transforms' scratch lengths.
    scratch: Vec<Complex<f32>>,
    /// `frame_len` values: the frame, low-passed.
    filtered: Vec<f64>,
    /// `span` samples: the low-passed span with its mean removed.
    centred: Vec<f32>,
    /// `span + 1` prefix sums of squares.
    prefix: Vec<f64>,
    /// `τ_max + 2` values of `d`.
    diff: Vec<f64>,
    /// `τ_max + 2` values of `d′`.
    cmnd: Vec<f64>,
}

impl std::fmt::Debug for Yin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Yin")
            .field("sample_rate", &self.sample_rate)
            .field("window", &self.window)
            .field("hop", &self.hop)
            .field("lags", &(self.tau_min..=self.tau_max))
            .field("frame_len", &self.frame_len)
            .finish_non_exhaustive()
    }
}

impl Yin {
    /// A tracker for `sample_rate`. Allocates every buffer it will use (`n_fft` = the next power
    /// of two ≥ `W + τ_max + 1`): one `n_fft`-sample time buffer, two spectra of `n_fft/2 + 1`
    /// bins, the FFT scratch, `W + τ_max + 1` samples of the centred span, and
    /// `frame_len` + (`W + τ_max + 2`) + 2 × (`τ_max + 2`) f64 values. At 16 kHz with the
    /// defaults: `W` = 400, lags 14–320, warm-up 54, `frame_len` = 775, `n_fft` = 1024.
    pub fn new(spec: &PitchSpec, sample_rate: f32) -> Result<Yin, String> {
        spec.validate(sample_rate)?;
        let sr = sample_rate as f64;
        let window = (spec.window_ms as f64 * sr / 1000.0).round() as usize;
        let hop = (spec.hop_ms as f64 * sr / 1000.0).round() as usize;
        let tau_min = ((sr / spec.f0_max_hz as f64).floor() as usize).max(2);
        let tau_max = (sr / spec.f0_min_hz as f64).ceil() as usize;
        let span = window + tau_max + 1;
        // The slowest pole of the low-pass decays at 2π·fc / (2 × 1.3066) ≈ 2.4·fc per second:
        // after 5 / fc seconds its start transient is below 10⁻⁵.
        let warmup = if spec.lowpass_hz > 0.0 {
            (5.0 * sr / spec.lowpass_hz as f64).ceil() as usize
        } else {
            0
        };
        let frame_len = warmup + span;
        let n_fft = span.next_power_of_two();
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(n_fft);
        let ifft = planner.plan_fft_inverse(n_fft);
        let scratch_len = fft.get_scratch_len().max(ifft.get_scratch_len());
        let silence_rms = if spec.silence_db == f32::NEG_INFINITY {
            0.0
        } else {
            10f64.powf(spec.silence_db as f64 / 20.0)
        };
        Ok(Yin {
            sample_rate,
            f0_min: spec.f0_min_hz,
            f0_max: spec.f0_max_hz,
            threshold: spec.threshold as f64,
            silence_rms,
            window,
            hop,
            tau_min,
            tau_max,
            warmup,
            span,
            frame_len,
            lowpass: (spec.lowpass_hz > 0.0).then(|| butterworth4(spec.lowpass_hz as f64, sr)),
            time: vec![0.0; n_fft],
            spec_window: fft.make_output_vec(),
            spec_frame: fft.make_output_vec(),
            scratch: vec![Complex::default(); scratch_len],
            fft,
            ifft,
            filtered: vec![0.0; frame_len],
            centred: vec![0.0; span],
            prefix: vec![0.0; span + 1],
            diff: vec![0.0; tau_max + 2],
            cmnd: vec![0.0; tau_max + 2],
        })
    }

    /// The sample rate, Hz.
    pub fn sample_rate(&self) -> f32 {
        self.sample_rate
    }

    /// Samples one estimate reads: the low-pass warm-up (`⌈5 · sample_rate / lowpass_hz⌉`, 0
    /// without the low-pass), then the analysed span `W + τ_max + 1`.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The integration window `W`, samples.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Samples between frames in [`track`](Self::track).
    pub fn hop(&self) -> usize {
        self.hop
    }

    /// Where in a frame its estimate belongs: the middle of the analysed span,
    /// `warm-up + (W + τ_max + 1) / 2` samples from the frame's start.
    pub fn centre(&self) -> usize {
        self.warmup + self.span / 2
    }

    /// The lags searched, `τ_min ..= τ_max` samples.
    pub fn lags(&self) -> std::ops::RangeInclusive<usize> {
        self.tau_min..=self.tau_max
    }

    /// Whole frames in `samples` samples for [`track`](Self::track): 0 below one frame, else
    /// `(samples − frame_len) / hop + 1`.
    pub fn frames(&self, samples: usize) -> usize {
        if samples < self.frame_len {
            0
        } else {
            (samples - self.frame_len) / self.hop + 1
        }
    }

    /// The estimate for `frame[..frame_len]`. It describes the analysed span, which starts
    /// after the warm-up and is `W + τ` samples long for a period `τ`; take its middle,
    /// [`centre`](Self::centre) samples into the frame, as the estimate's time.
    ///
    /// # Panics
    /// If `frame` is shorter than [`frame_len`](Self::frame_len).
    pub fn estimate(&mut self, frame: &[f32]) -> Pitch {
        assert!(
            frame.len() >= self.frame_len,
            "a YIN frame needs {} samples, got {}",
            self.frame_len,
            frame.len()
        );
        let frame = &frame[..self.frame_len];
        let analysed = &frame[self.warmup..];
        let n = self.span as f64;
        let mut sum = 0.0f64;
        for &x in frame {
            sum += x as f64;
        }
        if !sum.is_finite() {
            return Pitch::SILENT;
        }
        let mean = analysed.iter().map(|&x| x as f64).sum::<f64>() / n;
        let power: f64 = analysed.iter().map(|&x| (x as f64 - mean).powi(2)).sum();
        let rms = (power / n).sqrt();
        if !rms.is_finite() || rms <= self.silence_rms || power <= 0.0 {
            return Pitch::SILENT;
        }
        for (f, &x) in self.filtered.iter_mut().zip(frame) {
            *f = x as f64;
        }
        if let Some(sections) = &self.lowpass {
            for section in sections {
                section.run(&mut self.filtered);
            }
        }
        let filtered = &self.filtered[self.warmup..];
        let mean = filtered.iter().sum::<f64>() / n;
        self.prefix[0] = 0.0;
        for (i, &y) in filtered.iter().enumerate() {
            let c = (y - mean) as f32;
            self.centred[i] = c;
            self.prefix[i + 1] = self.prefix[i] + c as f64 * c as f64;
        }
        if self.prefix[self.span] <= 0.0 {
            return Pitch::SILENT;
        }
        self.difference();
        self.pick()
    }

    /// Estimates every whole frame of `signal` (frame `i` starts at `i × hop`) into `out` and
    /// returns how many it wrote: `min(out.len(), frames(signal.len()))`.
    pub fn track(&mut self, signal: &[f32], out: &mut [Pitch]) -> usize {
        let n = self.frames(signal.len()).min(out.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            let start = i * self.hop;
            *o = self.estimate(&signal[start..start + self.frame_len]);
        }
        n
    }

    /// Fills `diff` with `d(τ)` and `cmnd` with `d′(τ)` for `τ = 0 ..= τ_max + 1` from the
    /// centred frame and its prefix sums.
    fn difference(&mut self) {
        let (w, len) = (self.window, self.span);
        // The frame's spectrum, then the window's.
        self.time[..len].copy_from_slice(&self.centred);
        self.time[len..].fill(0.0);
        let _ =
            self.fft
                .process_with_scratch(&mut self.time, &mut self.spec_frame, &mut self.scratch);
        self.time[..w].copy_from_slice(&self.centred[..w]);
        self.time[w..].fill(0.0);
        let _ =
            self.fft
                .process_with_scratch(&mut self.time, &mut self.spec_window, &mut self.scratch);
        // conj(window) × frame is the spectrum of r(τ) = Σ_j window_j frame_{j+τ}.
        for (f, &a) in self.spec_frame.iter_mut().zip(&self.spec_window) {
            *f *= a.conj();
        }
        let last = self.spec_frame.len() - 1;
        self.spec_frame[0].im = 0.0;
        self.spec_frame[last].im = 0.0;
        let _ =
            self.ifft
                .process_with_scratch(&mut self.spec_frame, &mut self.time, &mut self.scratch);
        let scale = 1.0 / self.time.len() as f64;
        let e0 = self.prefix[w];
        self.diff[0] = 0.0;
        self.cmnd[0] = 1.0;
        let mut running = 0.0f64;
        for tau in 1..self.diff.len() {
            let e_tau = self.prefix[tau + w] - self.prefix[tau];
            let r = self.time[tau] as f64 * scale;
            let d = (e0 + e_tau - 2.0 * r).max(0.0);
            self.diff[tau] = d;
            running += d;
            self.cmnd[tau] = if running > 0.0 {
                d * tau as f64 / running
            } else {
                1.0
            };
        }
    }

    /// Steps 3 and 4 on the current `diff` and `cmnd`.
    fn pick(&self) -> Pitch {
        let (lo, hi) = (self.tau_min, self.tau_max);
        let Some(mut tau) = (lo..=hi).find(|&t| self.cmnd[t] < self.threshold) else {
            let deepest = self.cmnd[lo..=hi]
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
            return Pitch {
                f0_hz: 0.0,
                aperiodicity: deepest.min(1.0) as f32,
            };
        };
        while tau < hi && self.cmnd[tau + 1] < self.cmnd[tau] {
            tau += 1;
        }
        let (a, b, c) = (self.diff[tau - 1], self.diff[tau], self.diff[tau + 1]);
        let curvature = a - 2.0 * b + c;
        let delta = if curvature > 0.0 {
            (0.5 * (a - c) / curvature).clamp(-1.0, 1.0)
        } else {
            0.0
        };
        let f0 = (self.sample_rate as f64 / (tau as f64 + delta)) as f32;
        Pitch {
            f0_hz: f0.clamp(self.f0_min, self.f0_max),
            aperiodicity: self.cmnd[tau] as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    /// Deterministic uniform noise in [-1, 1) (xorshift64*).
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            v as f64 / (1u64 << 52) as f64 - 1.0
        }
    }

    /// A band-limited harmonic signal: `Σ amp(k) sin(2π k f0 t + k φ)` over harmonics below
    /// Nyquist.
    fn harmonic(sr: f64, f0: f64, n: usize, amp: impl Fn(usize) -> f64) -> Vec<f32> {
        let kmax = ((sr / 2.0 - 1.0) / f0).floor() as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / sr;
                (1..=kmax)
                    .map(|k| amp(k) * (2.0 * PI * k as f64 * f0 * t + 0.3 * k as f64).sin())
                    .sum::<f64>() as f32
            })
            .collect()
    }

    fn sine(sr: f64, f0: f64, n: usize) -> Vec<f32> {
        harmonic(sr, f0, n, |k| if k == 1 { 0.5 } else { 0.0 })
    }

    fn sawtooth(sr: f64, f0: f64, n: usize) -> Vec<f32> {
        harmonic(sr, f0, n, |k| 0.3 / k as f64)
    }

    fn pulses(sr: f64, f0: f64, n: usize) -> Vec<f32> {
        let kmax = ((sr / 2.0 - 1.0) / f0).floor();
        harmonic(sr, f0, n, move |_| 0.5 / kmax)
    }

    fn tracker(sr: f32) -> Yin {
        Yin::new(&PitchSpec::default(), sr).unwrap()
    }

    fn track_all(yin: &mut Yin, signal: &[f32]) -> Vec<Pitch> {
        let mut out = vec![Pitch::SILENT; yin.frames(signal.len())];
        let n = yin.track(signal, &mut out);
        assert_eq!(n, out.len());
        out
    }

    fn assert_tracks(name: &str, sr: f32, f0: f64, signal: &[f32], tolerance: f64) {
        let mut yin = tracker(sr);
        let est = track_all(&mut yin, signal);
        assert!(!est.is_empty());
        for (i, p) in est.iter().enumerate() {
            let err = (p.f0_hz as f64 - f0).abs() / f0;
            assert!(
                err <= tolerance,
                "{name} {f0} Hz at {sr} Hz, frame {i}: {} Hz (aperiodicity {})",
                p.f0_hz,
                p.aperiodicity
            );
        }
    }

    #[test]
    fn defaults_at_16k_match_the_documented_sizes() {
        let yin = tracker(16_000.0);
        assert_eq!(yin.window(), 400);
        assert_eq!(yin.hop(), 160);
        assert_eq!(yin.lags(), 14..=320);
        assert_eq!(yin.warmup, 54);
        assert_eq!(yin.frame_len(), 775);
        assert_eq!(yin.centre(), 54 + 360);
        assert_eq!(yin.time.len(), 1024);
        assert_eq!(yin.frames(774), 0);
        assert_eq!(yin.frames(775), 1);
        assert_eq!(yin.frames(775 + 159), 1);
        assert_eq!(yin.frames(775 + 160), 2);
        let no_lowpass = PitchSpec {
            lowpass_hz: 0.0,
            ..PitchSpec::default()
        };
        let yin = Yin::new(&no_lowpass, 16_000.0).unwrap();
        assert_eq!((yin.frame_len(), yin.centre()), (721, 360));
    }

    #[test]
    fn sines_sawtooths_and_pulse_trains_within_one_percent() {
        for sr in [16_000.0f32, 44_100.0, 48_000.0] {
            for f0 in [55.0, 98.0, 147.3, 220.0, 441.7, 660.0, 1000.0] {
                let n = (sr as usize) / 5;
                let s = sr as f64;
                assert_tracks("sine", sr, f0, &sine(s, f0, n), 0.01);
                assert_tracks("sawtooth", sr, f0, &sawtooth(s, f0, n), 0.01);
                assert_tracks("pulse train", sr, f0, &pulses(s, f0, n), 0.01);
            }
        }
    }

    #[test]
    fn clean_tones_are_far_more_precise_than_one_percent() {
        let sr = 16_000.0;
        for f0 in [80.0, 123.4, 300.0, 777.7] {
            let signal = sawtooth(sr, f0, 8000);
            let mut yin = tracker(sr as f32);
            for p in track_all(&mut yin, &signal) {
                assert!(
                    ((p.f0_hz as f64 - f0) / f0).abs() < 2e-3,
                    "{f0}: {}",
                    p.f0_hz
                );
                assert!(p.aperiodicity < 0.02, "{f0}: {}", p.aperiodicity);
                assert!(p.confidence() > 0.98);
            }
        }
    }

    #[test]
    fn no_octave_errors() {
        let sr = 16_000.0;
        let n = 6400;
        // A strong second harmonic (three times the fundamental) must not pull the estimate up.
        for f0 in [100.0, 180.0, 260.0] {
            let s = harmonic(sr, f0, n, |k| match k {
                1 => 0.1,
                2 => 0.3,
                3 => 0.05,
                _ => 0.0,
            });
            assert_tracks("strong 2nd harmonic", sr as f32, f0, &s, 0.01);
        }
        // A missing fundamental: harmonics 2–8 only; the period is still 1/f0.
        for f0 in [120.0, 200.0] {
            let s = harmonic(sr, f0, n, |k| if (2..=8).contains(&k) { 0.1 } else { 0.0 });
            assert_tracks("missing fundamental", sr as f32, f0, &s, 0.01);
        }
        // A pulse train at the low end is not taken for its own sub- or upper octave.
        for f0 in [52.0, 65.0] {
            assert_tracks("low pulses", sr as f32, f0, &pulses(sr, f0, n), 0.01);
        }
    }

    #[test]
    fn silence_and_noise_are_unvoiced() {
        let sr = 16_000.0f32;
        let mut yin = tracker(sr);
        let zeros = vec![0f32; 4000];
        for p in track_all(&mut yin, &zeros) {
            assert_eq!(p, Pitch::SILENT);
        }
        // A DC offset alone is silence too.
        for p in track_all(&mut yin, &vec![0.25f32; 4000]) {
            assert_eq!(p, Pitch::SILENT);
        }
        // A tone below the silence floor (−70 dBFS): unvoiced.
        let quiet: Vec<f32> = sine(sr as f64, 200.0, 4000)
            .iter()
            .map(|x| x * 1e-4)
            .collect();
        for p in track_all(&mut yin, &quiet) {
            assert!(!p.is_voiced());
        }
        // White noise at several levels, and at 48 kHz.
        for (sr, level) in [(16_000.0f32, 0.5f64), (16_000.0, 0.01), (48_000.0, 0.3)] {
            let mut yin = tracker(sr);
            let mut rng = Noise(0x9E37_79B9_7F4A_7C15);
            let noise: Vec<f32> = (0..sr as usize)
                .map(|_| (level * rng.next()) as f32)
                .collect();
            let est = track_all(&mut yin, &noise);
            for p in &est {
                assert!(!p.is_voiced(), "noise voiced at {} Hz", p.f0_hz);
                assert!(p.aperiodicity > 0.4, "{}", p.aperiodicity);
            }
        }
        // Non-finite samples: unvoiced, no panic.
        let mut bad = sine(16_000.0, 200.0, 1000);
        bad[300] = f32::NAN;
        assert_eq!(yin.estimate(&bad), Pitch::SILENT);
        bad[300] = f32::INFINITY;
        assert_eq!(yin.estimate(&bad), Pitch::SILENT);
    }

    #[test]
    fn a_glide_is_tracked() {
        // An exponential glide 100 → 400 Hz over one second (two octaves per second).
        for sr in [16_000.0f64, 48_000.0] {
            let (f_start, f_end, dur) = (100.0f64, 400.0f64, 1.0f64);
            let n = (sr * dur) as usize;
            let rate = (f_end / f_start).ln() / dur;
            let mut phase = 0.0f64;
            let signal: Vec<f32> = (0..n)
                .map(|i| {
                    let f = f_start * (rate * i as f64 / sr).exp();
                    phase += 2.0 * PI * f / sr;
                    (0.4 * phase.sin() + 0.2 * (2.0 * phase).sin()) as f32
                })
                .collect();
            let mut yin = tracker(sr as f32);
            let est = track_all(&mut yin, &signal);
            assert!(est.len() > 90);
            for (i, p) in est.iter().enumerate() {
                let centre = (i * yin.hop() + yin.centre()) as f64 / sr;
                let f = f_start * (rate * centre).exp();
                let err = (p.f0_hz as f64 - f).abs() / f;
                assert!(err < 0.02, "{sr} Hz, frame {i}: {} vs {f}", p.f0_hz);
            }
            // Monotonic, as the glide is.
            for w in est.windows(2) {
                assert!(w[1].f0_hz >= w[0].f0_hz * 0.995);
            }
        }
    }

    #[test]
    fn estimates_are_clamped_to_the_range() {
        // 1120 Hz is a lag of 14.29 samples at 16 kHz: inside the lag range, above f0_max.
        let mut yin = tracker(16_000.0);
        let s = sine(16_000.0, 1120.0, 2000);
        let p = yin.estimate(&s);
        assert_eq!(p.f0_hz, 1100.0);
        // A narrower range folds a tone above it onto its lower octave at most.
        let spec = PitchSpec {
            f0_min_hz: 60.0,
            f0_max_hz: 300.0,
            ..PitchSpec::default()
        };
        let mut yin = Yin::new(&spec, 16_000.0).unwrap();
        let p = yin.estimate(&sine(16_000.0, 440.0, 2000));
        assert!((p.f0_hz - 220.0).abs() < 2.2, "{}", p.f0_hz);
    }

    #[test]
    fn invalid_specs_are_refused_with_a_reason() {
        let bad = |f: &dyn Fn(&mut PitchSpec), sr: f32, needle: &str| {
            let mut spec = PitchSpec::default();
            f(&mut spec);
            let e = Yin::new(&spec, sr).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        bad(&|_| {}, 100.0, "sample rate");
        bad(&|s| s.f0_min_hz = 0.0, 16_000.0, "f0_min_hz");
        bad(&|s| s.f0_max_hz = 40.0, 16_000.0, "f0_max_hz");
        bad(&|s| s.f0_max_hz = 5000.0, 16_000.0, "quarter");
        bad(&|s| s.window_ms = 0.0, 16_000.0, "window_ms");
        bad(&|s| s.hop_ms = f32::NAN, 16_000.0, "hop_ms");
        bad(&|s| s.threshold = 0.0, 16_000.0, "threshold");
        bad(&|s| s.silence_db = 3.0, 16_000.0, "silence_db");
        let spec = PitchSpec {
            silence_db: f32::NEG_INFINITY,
            ..PitchSpec::default()
        };
        assert!(Yin::new(&spec, 16_000.0).is_ok());
    }

    /// The equations of the module docs, evaluated directly in f64.
    struct Reference {
        cmnd: Vec<f64>,
        pitch: Pitch,
    }

    fn reference(frame: &[f32], yin: &Yin, spec: &PitchSpec) -> Reference {
        let mut x: Vec<f64> = frame.iter().map(|&v| v as f64).collect();
        // Low-pass: each section as a direct-form-I difference equation, its past inputs and
        // outputs all equal to the first sample.
        if spec.lowpass_hz > 0.0 {
            for q in butterworth4(spec.lowpass_hz as f64, yin.sample_rate as f64) {
                let (mut x1, mut x2, mut y1, mut y2) = (x[0], x[0], x[0], x[0]);
                for v in x.iter_mut() {
                    let y = q.b0 * *v + q.b1 * x1 + q.b2 * x2 - q.a1 * y1 - q.a2 * y2;
                    (x2, x1, y2, y1) = (x1, *v, y1, y);
                    *v = y;
                }
            }
        }
        let x = &x[yin.warmup..];
        let (w, lo, hi) = (yin.window, yin.tau_min, yin.tau_max);
        let mut d = vec![0f64; hi + 2];
        for (tau, dt) in d.iter_mut().enumerate() {
            *dt = (0..w).map(|j| (x[j] - x[j + tau]).powi(2)).sum();
        }
        let mut cmnd = vec![1f64; hi + 2];
        for tau in 1..hi + 2 {
            let mean: f64 = d[1..=tau].iter().sum::<f64>() / tau as f64;
            cmnd[tau] = if mean > 0.0 { d[tau] / mean } else { 1.0 };
        }
        let thr = spec.threshold as f64;
        let mut pitch = Pitch {
            f0_hz: 0.0,
            aperiodicity: cmnd[lo..=hi].iter().cloned().fold(f64::INFINITY, f64::min) as f32,
        };
        if let Some(mut tau) = (lo..=hi).find(|&t| cmnd[t] < thr) {
            while tau < hi && cmnd[tau + 1] < cmnd[tau] {
                tau += 1;
            }
            let (a, b, c) = (d[tau - 1], d[tau], d[tau + 1]);
            let den = a - 2.0 * b + c;
            let delta = if den > 0.0 {
                (0.5 * (a - c) / den).clamp(-1.0, 1.0)
            } else {
                0.0
            };
            let f0 = yin.sample_rate as f64 / (tau as f64 + delta);
            pitch = Pitch {
                f0_hz: f0.clamp(spec.f0_min_hz as f64, spec.f0_max_hz as f64) as f32,
                aperiodicity: cmnd[tau] as f32,
            };
        }
        Reference { cmnd, pitch }
    }

    #[test]
    fn matches_a_direct_f64_evaluation_of_the_equations() {
        let spec = PitchSpec::default();
        let mut rng = Noise(42);
        let mut compared_voiced = 0;
        let mut compared_unvoiced = 0;
        for sr in [16_000.0f32, 22_050.0, 48_000.0] {
            let mut yin = Yin::new(&spec, sr).unwrap();
            let len = yin.frame_len();
            for case in 0..40 {
                let f0 = 55.0 * (20.0f64).powf(rng.next() * 0.5 + 0.5);
                // Clean, noisy, and noise alone (every fifth case).
                let (tone_gain, noise) =
                    [(1.0, 0.0), (1.0, 0.01), (1.0, 0.1), (1.0, 0.5), (0.0, 0.5)][case % 5];
                let dc = 0.3 * rng.next();
                let tone = sawtooth(sr as f64, f0, len);
                let frame: Vec<f32> = tone
                    .iter()
                    .map(|&t| (tone_gain * t as f64 + noise * rng.next() + dc) as f32)
                    .collect();
                let got = yin.estimate(&frame);
                let want = reference(&frame, &yin, &spec);
                for (tau, (&a, &b)) in yin.cmnd.iter().zip(&want.cmnd).enumerate() {
                    assert!((a - b).abs() < 2e-4, "{sr} case {case} τ {tau}: {a} vs {b}");
                }
                // Voicing and lag decided the same way unless d′ sits on the threshold before
                // the lag the reference chose.
                let decisive = match want.pitch.is_voiced() {
                    true => (yin.tau_min..=yin.tau_max)
                        .find(|&t| want.cmnd[t] < spec.threshold as f64)
                        .unwrap(),
                    false => yin.tau_max,
                };
                let margin = want.cmnd[yin.tau_min..=decisive]
                    .iter()
                    .map(|&c| (c - spec.threshold as f64).abs())
                    .fold(f64::INFINITY, f64::min);
                if margin < 1e-3 {
                    continue;
                }
                assert_eq!(got.is_voiced(), want.pitch.is_voiced(), "{sr} case {case}");
                assert!((got.aperiodicity - want.pitch.aperiodicity).abs() < 2e-4);
                if want.pitch.is_voiced() {
                    compared_voiced += 1;
                    let rel = (got.f0_hz - want.pitch.f0_hz).abs() / want.pitch.f0_hz;
                    assert!(
                        rel < 1e-4,
                        "{sr} case {case}: {} vs {}",
                        got.f0_hz,
                        want.pitch.f0_hz
                    );
                } else {
                    compared_unvoiced += 1;
                }
            }
        }
        assert!(compared_voiced >= 70, "{compared_voiced}");
        assert!(compared_unvoiced >= 20, "{compared_unvoiced}");
    }
}
