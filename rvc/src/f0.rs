//! Pitch for the RVC synthesizer: the built-in tracker, RVC's coarse pitch, `f0_up_key`, and the
//! per-block pitch cache that lines the f0 frames up with the feature frames.
//!
//! # Frame rate and alignment
//! RVC computes f0 on the 16 kHz signal with a hop of [`HOP`] = 160 samples: 100 frames per
//! second, the rate of the ContentVec features after they are doubled (see
//! [`frames`](crate::frames)). Every f0 extractor RVC uses frames its input like
//! `torch.stft(center=True)`: a window of `W` samples gives [`extractor_frames`]`(W)` =
//! `W / 160 + 1` frames, frame `j` centred on window sample `160·j`.
//!
//! Per conversion block (RVC's `rvc_for_realtime.py` / `rtrvc.py`, `infer`):
//! 1. the extractor reads the last [`extractor_len`]`(B)` samples of the 16 kHz conversion window
//!    (`B` = the block's 16 kHz length, a multiple of 160): `B + 800` samples, and for RMVPE
//!    that rounded up to `5120·k − 160` (so its mel frames, padded to a multiple of 32, are
//!    exactly `32·k`);
//! 2. the estimate is shifted by `f0_up_key` ([`key_factor`]: `f0 · 2^(key/12)`) and turned into
//!    coarse pitch ([`coarse`]);
//! 3. the cache (RVC: `cache_pitch` / `cache_pitchf`, here [`PitchCache`]) moves left by
//!    `B / 160` frames, and the extractor's frames `3 .. W/160` (its first three and its last
//!    frame dropped: they lack context) overwrite the cache's last `W/160 − 3` = `B/160 + 2`
//!    frames — the two frames before the new block are estimated again with more context;
//! 4. the synthesizer gets the cache's last `N` frames, `N = L / 160` for a conversion window of
//!    `L` 16 kHz samples: cache frame `n` is centred on window sample `160·n`, which is the
//!    feature frame `n` (10 ms frames starting at `160·n`) up to half a hop.
//!
//! RVC's cache holds 1024 frames of which it uses the last `N`; [`PitchCache`] holds exactly `N`,
//! which gives the same last `N` frames whenever `B/160 + 2 ≤ N` (always, in practice).
//!
//! # Coarse pitch
//! As RVC's `get_f0` (`pipeline.py`) and `get_f0_post` (realtime):
//! `mel = 1127·ln(1 + f0/700)`; where `mel > 0` it becomes
//! `(mel − mel(50)) · 254 / (mel(1100) − mel(50)) + 1`; then values `≤ 1` become 1, values
//! `> 255` become 255, and the result is rounded half to even (`np.rint`). Unvoiced (0 Hz) and
//! anything below 50 Hz gives 1; 1100 Hz and above give 255. Here the arithmetic is f64 from
//! the f32 Hz value; RVC stores `f0_mel` as float32 before rounding, so the two can differ by
//! one step only for an f0 whose mapped value lies within float32 rounding (~10⁻⁵) of a half
//! (the tests check this against numpy). A NaN f0 (RVC never produces one) gives 1.
//!
//! # Realtime
//! [`PitchCache`] and [`BuiltinF0`] allocate in `new` only; [`coarse`], [`key_factor`],
//! [`shift`] and every method after construction allocate nothing.

use knnblend::voice::pitch::{PitchSpec, Yin};

/// Sample rate of everything RVC does before the synthesizer, Hz.
pub const SAMPLE_RATE: u32 = 16_000;
/// f0 hop at 16 kHz: 160 samples, 10 ms, one synthesizer frame.
pub const HOP: usize = 160;
/// RVC's lowest pitch, Hz: the bottom of the coarse scale and of the built-in tracker's range.
pub const F0_MIN_HZ: f32 = 50.0;
/// RVC's highest pitch, Hz: the top of the coarse scale and of the built-in tracker's range.
pub const F0_MAX_HZ: f32 = 1100.0;
/// The coarse pitch of an unvoiced frame.
pub const COARSE_UNVOICED: i64 = 1;
/// The largest coarse pitch.
pub const COARSE_MAX: i64 = 255;
/// `f0_up_key` is clamped to ±this many semitones (RVC's GUI range).
pub const MAX_KEY: f32 = 24.0;
/// Extractor frames dropped at the start of each estimate before it enters the cache.
pub const DROP_HEAD: usize = 3;
/// Extractor frames dropped at the end.
pub const DROP_TAIL: usize = 1;

/// RVC's mel scale, `1127·ln(1 + f/700)`.
pub fn mel(f0_hz: f64) -> f64 {
    1127.0 * (1.0 + f0_hz / 700.0).ln()
}

/// RVC's coarse pitch (1–255) of `f0_hz`; see the [module docs](self).
pub fn coarse(f0_hz: f32) -> i64 {
    let (lo, hi) = (mel(F0_MIN_HZ as f64), mel(F0_MAX_HZ as f64));
    let mut m = mel(f0_hz as f64);
    if m > 0.0 {
        m = (m - lo) * 254.0 / (hi - lo) + 1.0;
    }
    if m.is_nan() || m <= 1.0 {
        m = 1.0;
    }
    if m > 255.0 {
        m = 255.0;
    }
    m.round_ties_even() as i64
}

/// [`coarse`] of every value of `f0_hz` into `out` (the same length).
///
/// # Panics
/// If the lengths differ.
pub fn coarse_into(f0_hz: &[f32], out: &mut [i64]) {
    assert_eq!(f0_hz.len(), out.len(), "coarse_into: lengths differ");
    for (c, &f) in out.iter_mut().zip(f0_hz) {
        *c = coarse(f);
    }
}

/// `2^(key/12)` for `f0_up_key` in semitones (clamped to ±[`MAX_KEY`]; NaN counts as 0),
/// rounded to f32 as numpy and torch do when they multiply a float32 array by it.
pub fn key_factor(semitones: f32) -> f32 {
    let key = if semitones.is_nan() {
        0.0
    } else {
        semitones.clamp(-MAX_KEY, MAX_KEY)
    };
    2f64.powf(key as f64 / 12.0) as f32
}

/// Shifts `f0_hz` in place by `semitones` (RVC's `f0 *= pow(2, f0_up_key / 12)`); 0 (unvoiced)
/// stays 0.
pub fn shift(f0_hz: &mut [f32], semitones: f32) {
    let factor = key_factor(semitones);
    for f in f0_hz {
        *f *= factor;
    }
}

/// Which f0 extractor runs; it decides how much signal the extractor reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F0Method {
    /// RMVPE (`rmvpe.onnx`).
    Rmvpe,
    /// The built-in YIN tracker ([`BuiltinF0`]).
    Builtin,
}

/// The extractor's window for a block of `block_16k` samples (RVC's `f0_extractor_frame`):
/// `block_16k + 800`, and for RMVPE `5120·⌈(block_16k + 800) / 5120⌉ − 160`. The extractor reads
/// the last this many samples of the 16 kHz conversion window (all of it if that is shorter).
pub fn extractor_len(block_16k: usize, method: F0Method) -> usize {
    let len = block_16k + 800;
    match method {
        F0Method::Rmvpe => 5120 * len.div_ceil(5120) - 160,
        F0Method::Builtin => len,
    }
}

/// Frames an extractor gives for a window of `window` samples: `window / 160 + 1`, frame `j`
/// centred on window sample `160·j`.
pub fn extractor_frames(window: usize) -> usize {
    window / HOP + 1
}

/// RVC's realtime pitch cache: the last `N` frames of shifted f0 (Hz) and coarse pitch, the
/// synthesizer's `pitchf` and `pitch` (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct PitchCache {
    hz: Vec<f32>,
    coarse: Vec<i64>,
}

impl PitchCache {
    /// A cache of `frames` frames (`N`, the synthesizer's frame count), all unvoiced. Allocates
    /// `frames` f32 and `frames` i64 values.
    pub fn new(frames: usize) -> Self {
        PitchCache {
            hz: vec![0.0; frames],
            coarse: vec![COARSE_UNVOICED; frames],
        }
    }

    /// `N`.
    pub fn frames(&self) -> usize {
        self.hz.len()
    }

    /// One block's update: move left by `block_frames` (`B / 160`), then write the extractor's
    /// frames `3 .. len − 1` of `extracted_hz` (its `W/160 + 1` frames, unshifted Hz), shifted
    /// by `semitones`, over the cache's last `len − 4` frames (only the last `N` of them if
    /// there are more). Non-finite or negative values are stored as 0 (unvoiced).
    pub fn update(&mut self, block_frames: usize, extracted_hz: &[f32], semitones: f32) {
        let n = self.hz.len();
        let shift = block_frames.min(n);
        self.hz.copy_within(shift.., 0);
        self.coarse.copy_within(shift.., 0);
        let fresh = extracted_hz.len().saturating_sub(DROP_HEAD + DROP_TAIL);
        if fresh == 0 {
            return;
        }
        let new = &extracted_hz[DROP_HEAD..DROP_HEAD + fresh];
        let take = fresh.min(n);
        let factor = key_factor(semitones);
        for ((h, c), &f) in self.hz[n - take..]
            .iter_mut()
            .zip(&mut self.coarse[n - take..])
            .zip(&new[fresh - take..])
        {
            let f = if f.is_finite() && f > 0.0 {
                f * factor
            } else {
                0.0
            };
            *h = f;
            *c = coarse(f);
        }
    }

    /// The synthesizer's `pitchf`: `N` frames of shifted f0, Hz (0 = unvoiced).
    pub fn hz(&self) -> &[f32] {
        &self.hz
    }

    /// The synthesizer's `pitch`: `N` coarse pitches, 1–255.
    pub fn coarse(&self) -> &[i64] {
        &self.coarse
    }

    /// Back to all unvoiced.
    pub fn reset(&mut self) {
        self.hz.fill(0.0);
        self.coarse.fill(COARSE_UNVOICED);
    }
}

/// The built-in f0 extractor: [`Yin`] at 16 kHz with RVC's range and hop, framed like RVC's
/// extractors (`W / 160 + 1` frames, frame `j` centred on window sample `160·j`), followed by a
/// 3-point median across frames (as RVC does after harvest: `signal.medfilt(f0, 3)`, here with
/// the first and last frame kept instead of zero-padded).
///
/// A frame whose centred analysis span would reach past either end of the window is analysed
/// on the span that fits (moved inwards), so edge frames describe the nearest stretch of signal
/// that has one, not padding. A window shorter than one analysis span is zero-padded.
#[derive(Debug)]
pub struct BuiltinF0 {
    yin: Yin,
    median: bool,
    max_window: usize,
    /// One analysis span (`yin.frame_len()`), for windows shorter than it.
    padded: Vec<f32>,
    /// `max_window / 160 + 1` raw estimates, before the median.
    raw: Vec<f32>,
}

impl BuiltinF0 {
    /// The tracker with [`PitchSpec::default`] (RVC's 50–1100 Hz, 10 ms hop) for windows of up
    /// to `max_window` samples at 16 kHz. Allocates the tracker, one analysis span and
    /// `max_window / 160 + 1` f32 values.
    pub fn new(max_window: usize) -> Self {
        Self::with_spec(&PitchSpec::default(), max_window, true)
            .expect("the default pitch spec is valid at 16 kHz")
    }

    /// The tracker with `spec` (its hop must be 10 ms), and the median on or off.
    pub fn with_spec(spec: &PitchSpec, max_window: usize, median: bool) -> Result<Self, String> {
        let yin = Yin::new(spec, SAMPLE_RATE as f32)?;
        if yin.hop() != HOP {
            return Err(format!(
                "the built-in f0 extractor needs a 10 ms hop (160 samples at 16 kHz), got {} ms",
                spec.hop_ms
            ));
        }
        Ok(BuiltinF0 {
            padded: vec![0.0; yin.frame_len()],
            raw: vec![0.0; extractor_frames(max_window)],
            yin,
            median,
            max_window,
        })
    }

    /// The longest window [`process`](Self::process) takes.
    pub fn max_window(&self) -> usize {
        self.max_window
    }

    /// The tracker.
    pub fn yin(&self) -> &Yin {
        &self.yin
    }

    /// Estimates `window` (16 kHz, at most [`max_window`](Self::max_window) samples) into
    /// `out_hz[..frames]` and returns `frames` = [`extractor_frames`]`(window.len())`; 0 Hz is
    /// unvoiced.
    ///
    /// # Panics
    /// If `window` is longer than `max_window` or `out_hz` is shorter than `frames`.
    pub fn process(&mut self, window: &[f32], out_hz: &mut [f32]) -> usize {
        assert!(
            window.len() <= self.max_window,
            "BuiltinF0: window of {} samples, built for at most {}",
            window.len(),
            self.max_window
        );
        let frames = extractor_frames(window.len());
        assert!(
            out_hz.len() >= frames,
            "BuiltinF0: {frames} frames need room, out has {}",
            out_hz.len()
        );
        let span = self.yin.frame_len();
        let centre = self.yin.centre();
        if window.len() < span {
            self.padded[..window.len()].copy_from_slice(window);
            self.padded[window.len()..].fill(0.0);
            let f0 = self.yin.estimate(&self.padded).f0_hz;
            self.raw[..frames].fill(f0);
        } else {
            let last_start = window.len() - span;
            for (j, r) in self.raw[..frames].iter_mut().enumerate() {
                let start = (j * HOP).saturating_sub(centre).min(last_start);
                *r = self.yin.estimate(&window[start..start + span]).f0_hz;
            }
        }
        let raw = &self.raw[..frames];
        if self.median && frames >= 3 {
            out_hz[0] = raw[0];
            out_hz[frames - 1] = raw[frames - 1];
            for (o, w) in out_hz[1..frames - 1].iter_mut().zip(raw.windows(3)) {
                *o = median3(w[0], w[1], w[2]);
            }
        } else {
            out_hz[..frames].copy_from_slice(raw);
        }
        frames
    }
}

fn median3(a: f32, b: f32, c: f32) -> f32 {
    a.max(b).min(a.min(b).max(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_by_hand() {
        // mel(50) = 1127·ln(1 + 50/700) = 77.75497…, mel(1100) = 1127·ln(1 + 1100/700)
        // = 1064.40823…; the scale maps them to 1 and 255.
        assert!((mel(50.0) - 77.754_966_2).abs() < 1e-5);
        assert!((mel(1100.0) - 1_064.408_233).abs() < 1e-5);
        assert_eq!(coarse(0.0), 1);
        assert_eq!(coarse(-5.0), 1);
        assert_eq!(coarse(f32::NAN), 1);
        assert_eq!(coarse(10.0), 1);
        assert_eq!(coarse(50.0), 1);
        assert_eq!(coarse(1100.0), 255);
        assert_eq!(coarse(5000.0), 255);
        assert_eq!(coarse(f32::INFINITY), 255);
        // 100 Hz: mel 150.48988; (150.48988 − 77.75497)·254/986.65327 + 1 = 19.72458 → 20.
        assert_eq!(coarse(100.0), 20);
        // 200 Hz: mel 283.23136 → 53.89701 → 54.
        assert_eq!(coarse(200.0), 54);
        // 440 Hz: mel 549.64151 → 122.48055 → 122.
        assert_eq!(coarse(440.0), 122);
        // Monotonic over the range, every step from 1 to 255 reached.
        let mut last = 1;
        let mut seen = [false; 256];
        for i in 0..=20_000 {
            let c = coarse(40.0 + i as f32 * 0.06);
            assert!(c >= last && c <= 255);
            seen[c as usize] = true;
            last = c;
        }
        assert!(seen[1..].iter().all(|&s| s));
    }

    #[test]
    fn key_factor_and_shift() {
        assert_eq!(key_factor(0.0), 1.0);
        assert_eq!(key_factor(12.0), 2.0);
        assert_eq!(key_factor(-12.0), 0.5);
        assert_eq!(key_factor(24.0), 4.0);
        assert_eq!(key_factor(99.0), 4.0);
        assert_eq!(key_factor(-99.0), 0.25);
        assert_eq!(key_factor(f32::NAN), 1.0);
        assert_eq!(key_factor(7.0), 2f64.powf(7.0 / 12.0) as f32);
        let mut f = [0.0, 100.0, 220.0];
        shift(&mut f, 12.0);
        assert_eq!(f, [0.0, 200.0, 440.0]);
    }

    #[test]
    fn extractor_windows_as_rvc() {
        // 0.25 s blocks: 4000 samples → 4800; RMVPE 5120 − 160 = 4960 (31 frames + 1).
        assert_eq!(extractor_len(4000, F0Method::Builtin), 4800);
        assert_eq!(extractor_len(4000, F0Method::Rmvpe), 4960);
        assert_eq!(extractor_len(4320, F0Method::Rmvpe), 4960);
        assert_eq!(extractor_len(4480, F0Method::Rmvpe), 10080);
        assert_eq!(extractor_frames(4800), 31);
        assert_eq!(extractor_frames(4960), 32);
        // For RMVPE the frames are always a multiple of 32.
        for b in (160..20_000).step_by(160) {
            assert_eq!(extractor_frames(extractor_len(b, F0Method::Rmvpe)) % 32, 0);
        }
    }

    /// RVC's cache update written as in `rtrvc.py`, on a cache of 1024 frames.
    fn rvc_cache(cache: &mut [f32], shift: usize, pitch: &[f32]) {
        let n = cache.len();
        if shift > 0 {
            let moved: Vec<f32> = cache[shift..].to_vec();
            cache[..n - shift].copy_from_slice(&moved);
        }
        let fresh = &pitch[3..pitch.len() - 1];
        cache[n - fresh.len()..].copy_from_slice(fresh);
    }

    #[test]
    fn the_cache_matches_rvcs_and_lines_up() {
        let (block, n) = (4000usize, 300usize);
        let window = extractor_len(block, F0Method::Builtin);
        let mut ours = PitchCache::new(n);
        let mut theirs = vec![0f32; 1024];
        for k in 0..12 {
            // Extractor frame j of block k "measures" the absolute frame index it is centred
            // on, so the cache must hold consecutive indices ending at the newest.
            let end = (k + 1) * block / HOP + 40; // the window's end, in frames
            let first = end - window / HOP;
            let est: Vec<f32> = (0..extractor_frames(window))
                .map(|j| 60.0 + (first + j) as f32)
                .collect();
            ours.update(block / HOP, &est, 0.0);
            rvc_cache(&mut theirs, block / HOP, &est);
            assert_eq!(ours.hz(), &theirs[1024 - n..]);
            let last = ours.hz()[n - 1];
            assert_eq!(
                last,
                60.0 + (end - 1) as f32,
                "cache ends one hop before the end"
            );
            if (k + 1) * block / HOP + 2 >= n {
                for w in ours.hz().windows(2) {
                    assert_eq!(w[1] - w[0], 1.0);
                }
            }
            for (&h, &c) in ours.hz().iter().zip(ours.coarse()) {
                assert_eq!(c, coarse(h));
            }
        }
        ours.update(block / HOP, &[200.0; 31], -12.0);
        assert_eq!(ours.hz()[n - 1], 100.0);
        assert_eq!(ours.coarse()[n - 1], coarse(100.0));
        ours.update(0, &[f32::NAN, 1.0, 2.0, -4.0, f32::INFINITY, 5.0], 0.0);
        assert_eq!(&ours.hz()[n - 2..], &[0.0, 0.0]);
        ours.update(1, &[1.0; 3], 0.0);
        ours.reset();
        assert!(ours.hz().iter().all(|&h| h == 0.0));
        assert!(ours.coarse().iter().all(|&c| c == 1));
    }

    #[test]
    fn builtin_frames_a_window_like_rvc() {
        let window = extractor_len(4000, F0Method::Builtin);
        let mut f0 = BuiltinF0::new(window);
        let sr = SAMPLE_RATE as f64;
        // 150 Hz for the first half of the window, silence after.
        let signal: Vec<f32> = (0..window)
            .map(|i| {
                if i < window / 2 {
                    (0.4 * (2.0 * std::f64::consts::PI * 150.0 * i as f64 / sr).sin()) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mut out = vec![-1.0; 40];
        let frames = f0.process(&signal, &mut out);
        assert_eq!(frames, 31);
        assert!(out[frames..].iter().all(|&v| v == -1.0));
        for (j, &hz) in out[..frames].iter().enumerate() {
            let centre = j * HOP;
            if centre + 500 < window / 2 {
                assert!((hz - 150.0).abs() < 1.5, "frame {j}: {hz}");
            } else if centre > window / 2 + 500 {
                assert_eq!(hz, 0.0, "frame {j}");
            }
        }
        // A window shorter than one analysis span (775 samples) is zero-padded: 700 samples
        // still hold the lags that matter at 150 Hz.
        let frames = f0.process(&signal[..700], &mut out);
        assert_eq!(frames, 5);
        assert!(
            out[..5].iter().all(|&h| (h - 150.0).abs() < 1.5),
            "{:?}",
            &out[..5]
        );
        let frames = f0.process(&signal[..320], &mut out);
        assert_eq!(frames, 3);
        assert!(out[..3].iter().all(|&h| h == out[0] && h >= 0.0));
        assert_eq!(f0.process(&[], &mut out), 1);
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn median_fills_single_gaps_and_drops_single_blips() {
        assert_eq!(median3(100.0, 0.0, 100.0), 100.0);
        assert_eq!(median3(0.0, 100.0, 0.0), 0.0);
        assert_eq!(median3(1.0, 2.0, 3.0), 2.0);
        assert_eq!(median3(3.0, 1.0, 2.0), 2.0);
        assert_eq!(median3(2.0, 3.0, 1.0), 2.0);
    }

    #[test]
    fn builtin_refuses_another_hop() {
        let spec = PitchSpec {
            hop_ms: 5.0,
            ..PitchSpec::default()
        };
        let e = BuiltinF0::with_spec(&spec, 4800, true).unwrap_err();
        assert!(e.contains("10 ms"), "{e}");
    }
}
