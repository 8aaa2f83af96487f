//! RVC's feature steps between ContentVec and the synthesizer: ×2 upsampling and protect, and
//! the block framing of RVC's realtime GUI that sets every length.
//!
//! # Order of operations per conversion block
//! As RVC's realtime path (`tools/rvc_for_realtime.py` / `infer/lib/rtrvc.py`, `infer`) with
//! protect as `infer/modules/vc/pipeline.py` (`vc`) applies it. Lengths for a block of `B` new
//! 16 kHz samples after a context of `C` (both multiples of 160; [`BlockFraming`] computes them
//! from RVC's block, crossfade and extra times), so the conversion window is `L = B + C`
//! samples and `N = L / 160` synthesizer frames:
//!
//! 1. **ContentVec** on the `L` samples: `F = ⌊(L − 400) / 320⌋ + 1` frames of 20 ms (50 per
//!    second), `dim` = 256 (v1) or 768 (v2) channels.
//! 2. **Repeat the last frame** (RVC realtime: `torch.cat((feats, feats[:, -1:, :]), 1)`):
//!    `F + 1 = ⌈N / 2⌉` frames. [`upsample2`] does this itself (it clamps to the last frame), so
//!    the pipeline may keep `F` frames and skip it.
//! 3. **Keep the raw features** for protect (`feats0 = feats.clone()`, before the blend), when
//!    [`protect_applies`].
//! 4. **Index blend** at 50 frames per second, *before* ×2: in `pipeline.py` on every frame, in
//!    the realtime path on frames `skip_head / 2 ..` only ([`BlockFraming::blend_from`]; the
//!    frames before it are context the synthesizer does not return), k = 8, RVC's `1/d²`
//!    weights, `index_rate` (knnblend's blend). Blending the repeated last frame gives the same
//!    result as the frame it repeats, so step 2 may come before or after this one.
//! 5. **×2** ([`upsample2`]): `F` (or `F + 1`) frames → `N` frames of 10 ms, each 50 fps frame
//!    twice (`F.interpolate(scale_factor=2)`, nearest), cut to `N` (`feats[:, :p_len]`). The raw
//!    features go through the same ×2.
//! 6. **f0** ([`crate::f0`]): the extractor reads the last `extractor_len(B)` samples, its
//!    frames shifted by `f0_up_key`, into the pitch cache; the synthesizer's `pitch` and
//!    `pitchf` are the cache's `N` frames, frame `n` centred on window sample `160·n`.
//! 7. **Protect** ([`apply_protect`], or 5 and 7 in one pass: [`upsample2_protect`]) on the `N`
//!    frames with the cache's `pitchf`: weight 1 where `pitchf ≥ 1` Hz, `protect` elsewhere;
//!    `feats · w + feats0 · (1 − w)`.
//! 8. **Synthesizer**: `phone` `N × dim`, `phone_lengths = N`, `pitch` / `pitchf` `N`;
//!    RVC asks it for the `return_length` frames after `skip_head`
//!    ([`BlockFraming::return_frames`]: `(block + sola_buffer + sola_search) / zc`) at the
//!    model's rate, `zc = sample_rate / 100` samples per frame; a synthesizer that returns all
//!    `N` frames is cut to its last `return_length · zc` samples when `skip_head +
//!    return_length = N` ([`BlockFraming::returns_the_end`]).
//! 9. **SOLA** ([`crate::sola::Sola`]) on those `sola_buffer + sola_search + block` samples →
//!    `block` samples, then the model's rate → the host's.
//!
//! # Protect, exactly
//! `pipeline.py`: `pitchff = pitchf.clone(); pitchff[pitchf > 0] = 1; pitchff[pitchf < 1] =
//! protect; feats = feats * pitchff + feats0 * (1 - pitchff)`, only
//! `if protect < 0.5 and pitch is not None and pitchf is not None` — that is, for a
//! synthesizer with pitch and protect below 0.5; at 0.5 and above nothing happens (not a 50 %
//! mix). The second assignment wins, so the weight is `protect` for `pitchf < 1` (unvoiced, and
//! any f0 below 1 Hz) and 1 otherwise. RVC's realtime GUI (`gui_v1.py`) never protects; this
//! crate offers it with the formula above on the realtime frames. Here NaN `pitchf` counts as
//! unvoiced and a negative `protect` as 0 (RVC's UI allows 0–0.5).
//!
//! # Realtime
//! Every function here writes into the caller's buffers and allocates nothing.

use crate::f0::{extractor_len, F0Method, HOP, SAMPLE_RATE};

/// ContentVec frames for `samples` 16 kHz samples: `⌊(samples − 400) / 320⌋ + 1`, 0 below
/// 400 (HuBERT's convolutional front end: receptive field 400, hop 320).
pub fn contentvec_frames(samples: usize) -> usize {
    if samples < 400 {
        0
    } else {
        (samples - 400) / 320 + 1
    }
}

/// Whether RVC applies protect: the synthesizer takes pitch and `protect < 0.5`.
pub fn protect_applies(protect: f32, has_f0: bool) -> bool {
    has_f0 && protect < 0.5
}

/// Protect's weight for one frame (`pitchff`): 1 for `pitchf ≥ 1` Hz, `protect` (at least 0)
/// otherwise, NaN included.
pub fn protect_weight(pitchf: f32, protect: f32) -> f32 {
    if pitchf >= 1.0 {
        1.0
    } else {
        protect.max(0.0)
    }
}

/// RVC's ×2: output frame `i` is input frame `min(⌊i / 2⌋, F − 1)`, for the
/// `out.len() / dim` output frames; the clamp is the realtime path's repeated last frame.
///
/// # Panics
/// If `dim` is 0, a length is not a multiple of `dim`, the input is empty while the output is
/// not, or the output has more than `2·F + 2` frames.
pub fn upsample2(feats: &[f32], dim: usize, out: &mut [f32]) {
    let (f, n) = check_lengths(feats, dim, out.len());
    for (i, o) in out.chunks_exact_mut(dim).enumerate() {
        let src = (i / 2).min(f - 1);
        o.copy_from_slice(&feats[src * dim..(src + 1) * dim]);
    }
    debug_assert_eq!(n, out.len() / dim);
}

/// Protect in place on `N` frames at 100 per second: `feats = feats · w + feats0 · (1 − w)` per
/// frame with `w = protect_weight(pitchf[n], protect)`; nothing when `protect ≥ 0.5` (or NaN).
/// `feats0` holds the features before the index blend, also ×2.
///
/// # Panics
/// If `feats` and `feats0` differ in length, or `pitchf` does not have `feats.len() / dim`
/// frames.
pub fn apply_protect(feats: &mut [f32], feats0: &[f32], dim: usize, pitchf: &[f32], protect: f32) {
    assert!(dim > 0, "apply_protect: dim 0");
    assert_eq!(
        feats.len(),
        feats0.len(),
        "apply_protect: feats and feats0 differ"
    );
    assert_eq!(
        feats.len(),
        pitchf.len() * dim,
        "apply_protect: {} frames of features, {} of pitch",
        feats.len() / dim,
        pitchf.len()
    );
    // NaN compares false, so NaN leaves the features alone like protect ≥ 0.5.
    if protect.partial_cmp(&0.5) != Some(std::cmp::Ordering::Less) {
        return;
    }
    for ((fr, f0r), &p) in feats
        .chunks_exact_mut(dim)
        .zip(feats0.chunks_exact(dim))
        .zip(pitchf)
    {
        mix(fr, f0r, protect_weight(p, protect));
    }
}

/// Steps 5 and 7 in one pass: output frame `i` is `blended[s] · w + raw[s] · (1 − w)` with
/// `s = min(⌊i / 2⌋, F − 1)` and `w = protect_weight(pitchf[i], protect)`, bit for bit what
/// [`upsample2`] of both then [`apply_protect`] give; with `protect ≥ 0.5` it is
/// [`upsample2`]`(blended)`. `blended` and `raw` are the 50 fps features after and before the
/// index blend; `pitchf` has `out.len() / dim` frames.
///
/// # Panics
/// As [`upsample2`], and if `raw` differs from `blended` in length or `pitchf` has the wrong
/// length.
pub fn upsample2_protect(
    blended: &[f32],
    raw: &[f32],
    dim: usize,
    pitchf: &[f32],
    protect: f32,
    out: &mut [f32],
) {
    let (f, n) = check_lengths(blended, dim, out.len());
    assert_eq!(
        blended.len(),
        raw.len(),
        "upsample2_protect: blended and raw differ"
    );
    assert_eq!(
        pitchf.len(),
        n,
        "upsample2_protect: {n} output frames, {} of pitch",
        pitchf.len()
    );
    let protecting = protect < 0.5;
    for (i, (o, &p)) in out.chunks_exact_mut(dim).zip(pitchf).enumerate() {
        let src = (i / 2).min(f - 1);
        o.copy_from_slice(&blended[src * dim..(src + 1) * dim]);
        if protecting {
            mix(
                o,
                &raw[src * dim..(src + 1) * dim],
                protect_weight(p, protect),
            );
        }
    }
}

/// `a = a · w + b · (1 − w)`, in the order torch evaluates it.
fn mix(a: &mut [f32], b: &[f32], w: f32) {
    let v = 1.0 - w;
    for (x, &y) in a.iter_mut().zip(b) {
        *x = *x * w + y * v;
    }
}

/// Input frames `F` and output frames `N`, checked.
fn check_lengths(feats: &[f32], dim: usize, out_len: usize) -> (usize, usize) {
    assert!(dim > 0, "upsample2: dim 0");
    assert!(
        feats.len().is_multiple_of(dim) && out_len.is_multiple_of(dim),
        "upsample2: lengths {} and {out_len} are not multiples of dim {dim}",
        feats.len()
    );
    let (f, n) = (feats.len() / dim, out_len / dim);
    assert!(
        n == 0 || (f > 0 && n <= 2 * f + 2),
        "upsample2: {f} input frames cannot make {n} output frames (at most 2·F + 2)"
    );
    (f, n)
}

/// RVC's realtime block framing (`gui_v1.py`, `start_vc`), at the rate SOLA runs at (here the
/// model's): every length in samples of that rate unless it says 16 kHz.
///
/// `zc = sample_rate / 100` (one 10 ms frame); `block`, `crossfade` and `extra` are the times
/// rounded to whole frames (`np.round`, half to even); `sola_buffer = min(crossfade, 4·zc)` (the
/// crossfade SOLA actually does, at most 40 ms); `sola_search = zc` (10 ms). The conversion
/// window holds `extra + crossfade + sola_search + block` samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockFraming {
    /// The rate of the synthesizer's output and of SOLA, Hz (a multiple of 100).
    pub sample_rate: u32,
    /// Samples per 10 ms frame, `sample_rate / 100`.
    pub zc: usize,
    /// New samples per block.
    pub block: usize,
    /// The crossfade time in samples (RVC's `crossfade_frame`; it sizes the context).
    pub crossfade: usize,
    /// SOLA's crossfade, `min(crossfade, 4·zc)`.
    pub sola_buffer: usize,
    /// SOLA's search range, `zc`.
    pub sola_search: usize,
    /// Extra left context.
    pub extra: usize,
}

impl BlockFraming {
    /// RVC's framing for `block_time`, `crossfade_time` and `extra_time` seconds at
    /// `sample_rate`. The block and the crossfade must come to at least one 10 ms frame.
    pub fn rvc(
        sample_rate: u32,
        block_time: f64,
        crossfade_time: f64,
        extra_time: f64,
    ) -> Result<BlockFraming, String> {
        if sample_rate == 0 || !sample_rate.is_multiple_of(100) {
            return Err(format!(
                "the RVC block framing needs a sample rate that is a multiple of 100 Hz, got \
                 {sample_rate}"
            ));
        }
        let zc = sample_rate as usize / 100;
        let frames = |name: &str, t: f64, min: usize| -> Result<usize, String> {
            if !(0.0..=3600.0).contains(&t) {
                return Err(format!("{name} must be between 0 and 3600 s, got {t}"));
            }
            let n = (t * sample_rate as f64 / zc as f64).round_ties_even() as usize;
            if n < min {
                return Err(format!(
                    "{name} ({t} s) must be at least {min} × 10 ms after rounding to 10 ms"
                ));
            }
            Ok(n * zc)
        };
        let block = frames("block_time", block_time, 1)?;
        let crossfade = frames("crossfade_time", crossfade_time, 1)?;
        let extra = frames("extra_time", extra_time, 0)?;
        Ok(BlockFraming {
            sample_rate,
            zc,
            block,
            crossfade,
            sola_buffer: crossfade.min(4 * zc),
            sola_search: zc,
            extra,
        })
    }

    /// The conversion window, `extra + crossfade + sola_search + block` samples.
    pub fn window(&self) -> usize {
        self.extra + self.crossfade + self.sola_search + self.block
    }

    /// Converts a whole number of frames' worth of samples at `sample_rate` to 16 kHz samples.
    fn to_16k(self, samples: usize) -> usize {
        HOP * samples / self.zc
    }

    /// `B`: the block at 16 kHz, `160 · block / zc`.
    pub fn block_16k(&self) -> usize {
        self.to_16k(self.block)
    }

    /// `L`: the conversion window at 16 kHz.
    pub fn window_16k(&self) -> usize {
        self.to_16k(self.window())
    }

    /// `C = L − B`: the context before the block at 16 kHz.
    pub fn context_16k(&self) -> usize {
        self.window_16k() - self.block_16k()
    }

    /// `N = L / 160`: synthesizer frames (RVC's `p_len`), pitch frames and features after ×2.
    pub fn frames(&self) -> usize {
        self.window_16k() / HOP
    }

    /// `F`: ContentVec frames of the window (before the repeated last frame).
    pub fn contentvec_frames(&self) -> usize {
        contentvec_frames(self.window_16k())
    }

    /// `skip_head = extra / zc`: the leading 10 ms frames the synthesizer does not return.
    pub fn skip_head(&self) -> usize {
        self.extra / self.zc
    }

    /// The first 50 fps frame the realtime path blends, `skip_head / 2`.
    pub fn blend_from(&self) -> usize {
        self.skip_head() / 2
    }

    /// `return_length = (block + sola_buffer + sola_search) / zc`: the frames the synthesizer
    /// returns, starting at `skip_head`.
    pub fn return_frames(&self) -> usize {
        (self.block + self.sola_buffer + self.sola_search) / self.zc
    }

    /// Samples SOLA takes per block: `return_frames · zc = sola_buffer + sola_search + block`.
    pub fn sola_input(&self) -> usize {
        self.return_frames() * self.zc
    }

    /// Whether the returned frames end at the window's end (`skip_head + return_length = N`),
    /// true unless the crossfade is longer than 40 ms (then RVC returns frames ending
    /// `crossfade − sola_buffer` samples early).
    pub fn returns_the_end(&self) -> bool {
        self.skip_head() + self.return_frames() == self.frames()
    }

    /// The f0 extractor's window at 16 kHz ([`extractor_len`]), at most the conversion window.
    pub fn f0_window(&self, method: F0Method) -> usize {
        extractor_len(self.block_16k(), method).min(self.window_16k())
    }

    /// Pitch-cache frames moved per block, `B / 160`.
    pub fn block_frames(&self) -> usize {
        self.block_16k() / HOP
    }
}

const _: () = assert!(SAMPLE_RATE as usize == 100 * HOP);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contentvec_frame_counts() {
        assert_eq!(contentvec_frames(0), 0);
        assert_eq!(contentvec_frames(399), 0);
        assert_eq!(contentvec_frames(400), 1);
        assert_eq!(contentvec_frames(719), 1);
        assert_eq!(contentvec_frames(720), 2);
        assert_eq!(contentvec_frames(16_000), 49);
        // For L = 320·m the repeated last frame makes exactly N / 2 = m frames; for
        // L = 320·m + 160 it makes m + 1 = ⌈N / 2⌉.
        for n in 3..400 {
            assert_eq!(contentvec_frames(n * HOP) + 1, n.div_ceil(2), "N = {n}");
        }
    }

    #[test]
    fn protect_weights_as_pipeline_py() {
        // pitchff[pitchf > 0] = 1; pitchff[pitchf < 1] = protect: the second wins below 1 Hz.
        assert_eq!(protect_weight(0.0, 0.33), 0.33);
        assert_eq!(protect_weight(0.5, 0.33), 0.33);
        assert_eq!(protect_weight(-3.0, 0.33), 0.33);
        assert_eq!(protect_weight(f32::NAN, 0.33), 0.33);
        assert_eq!(protect_weight(1.0, 0.33), 1.0);
        assert_eq!(protect_weight(220.0, 0.33), 1.0);
        assert_eq!(protect_weight(f32::INFINITY, 0.33), 1.0);
        assert_eq!(protect_weight(0.0, -1.0), 0.0);
        assert!(protect_applies(0.0, true));
        assert!(protect_applies(0.49, true));
        assert!(!protect_applies(0.5, true));
        assert!(!protect_applies(f32::NAN, true));
        assert!(!protect_applies(0.33, false));
    }

    fn ramp(frames: usize, dim: usize, base: f32) -> Vec<f32> {
        (0..frames * dim).map(|i| base + i as f32 * 0.25).collect()
    }

    #[test]
    fn upsample_repeats_each_frame_twice_and_the_last_as_needed() {
        let dim = 3;
        let f = ramp(4, dim, 1.0);
        for n in [0, 1, 7, 8, 9, 10] {
            let mut out = vec![f32::NAN; n * dim];
            upsample2(&f, dim, &mut out);
            for i in 0..n {
                let s = (i / 2).min(3);
                assert_eq!(&out[i * dim..(i + 1) * dim], &f[s * dim..(s + 1) * dim]);
            }
        }
        // RVC realtime: cat(feats, feats[-1]) then ×2 then [:N], written out.
        let mut cat = f.clone();
        cat.extend_from_slice(&f[3 * dim..]);
        let twice: Vec<f32> = cat
            .chunks(dim)
            .flat_map(|fr| fr.iter().chain(fr.iter()).copied().collect::<Vec<_>>())
            .collect();
        let mut out = vec![0f32; 9 * dim];
        upsample2(&f, dim, &mut out);
        assert_eq!(out, twice[..9 * dim]);
    }

    #[test]
    #[should_panic(expected = "at most 2·F + 2")]
    fn upsample_refuses_too_many_frames() {
        let mut out = vec![0f32; 11 * 2];
        upsample2(&ramp(4, 2, 0.0), 2, &mut out);
    }

    #[test]
    fn protect_mixes_unvoiced_frames_only() {
        let dim = 4;
        let n = 6;
        let feats = ramp(n, dim, 10.0);
        let raw = ramp(n, dim, -3.0);
        let pitchf = [0.0, 120.0, 0.5, 1.0, 0.0, 300.0];
        let protect = 0.33f32;
        let mut got = feats.clone();
        apply_protect(&mut got, &raw, dim, &pitchf, protect);
        for i in 0..n {
            let w = if pitchf[i] >= 1.0 { 1.0 } else { protect };
            for c in 0..dim {
                let k = i * dim + c;
                assert_eq!(got[k], feats[k] * w + raw[k] * (1.0 - w));
            }
            if pitchf[i] >= 1.0 {
                assert_eq!(&got[i * dim..(i + 1) * dim], &feats[i * dim..(i + 1) * dim]);
            }
        }
        // protect ≥ 0.5: untouched.
        for p in [0.5, 0.7, f32::NAN] {
            let mut same = feats.clone();
            apply_protect(&mut same, &raw, dim, &pitchf, p);
            assert_eq!(same, feats);
        }
        // protect 0: unvoiced frames are the raw features exactly.
        let mut zero = feats.clone();
        apply_protect(&mut zero, &raw, dim, &pitchf, 0.0);
        assert_eq!(&zero[..dim], &raw[..dim]);
    }

    #[test]
    fn fused_upsample_and_protect_is_bit_identical_to_the_two_steps() {
        let dim = 5;
        let f = 7;
        let blended = ramp(f, dim, 0.1);
        let raw: Vec<f32> = ramp(f, dim, 3.3).iter().map(|v| v.sin()).collect();
        for n in [1usize, 13, 14, 15, 16] {
            let pitchf: Vec<f32> = (0..n)
                .map(|i| if i % 3 == 0 { 0.0 } else { 100.0 + i as f32 })
                .collect();
            for protect in [0.0f32, 0.2, 0.33, 0.49, 0.5, 1.0] {
                let mut a = vec![0f32; n * dim];
                let mut a0 = vec![0f32; n * dim];
                upsample2(&blended, dim, &mut a);
                upsample2(&raw, dim, &mut a0);
                apply_protect(&mut a, &a0, dim, &pitchf, protect);
                let mut b = vec![f32::NAN; n * dim];
                upsample2_protect(&blended, &raw, dim, &pitchf, protect, &mut b);
                assert_eq!(
                    a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "n {n}, protect {protect}"
                );
            }
        }
    }

    #[test]
    fn rvc_framing_at_the_model_rates() {
        // RVC's defaults: block 0.25 s, crossfade 0.05 s, extra 2.5 s.
        let fr = BlockFraming::rvc(40_000, 0.25, 0.05, 2.5).unwrap();
        assert_eq!(fr.zc, 400);
        assert_eq!(fr.block, 10_000);
        assert_eq!(fr.crossfade, 2_000);
        assert_eq!(fr.sola_buffer, 1_600);
        assert_eq!(fr.sola_search, 400);
        assert_eq!(fr.extra, 100_000);
        assert_eq!(fr.window(), 112_400);
        assert_eq!(fr.block_16k(), 4_000);
        assert_eq!(fr.window_16k(), 44_960);
        assert_eq!(fr.context_16k(), 40_960);
        assert_eq!(fr.frames(), 281);
        assert_eq!(fr.contentvec_frames(), 140);
        assert_eq!(fr.skip_head(), 250);
        assert_eq!(fr.blend_from(), 125);
        assert_eq!(fr.return_frames(), 30);
        assert_eq!(fr.sola_input(), 12_000);
        // crossfade 50 ms > 40 ms: the returned frames end one 10 ms frame early.
        assert!(!fr.returns_the_end());
        assert_eq!(fr.f0_window(F0Method::Builtin), 4_800);
        assert_eq!(fr.f0_window(F0Method::Rmvpe), 4_960);
        assert_eq!(fr.block_frames(), 25);

        for sr in [32_000u32, 40_000, 48_000] {
            let fr = BlockFraming::rvc(sr, 0.1, 0.04, 1.0).unwrap();
            assert_eq!(fr.zc * 100, sr as usize);
            assert_eq!(fr.block_16k(), 1600);
            assert_eq!(fr.sola_buffer, fr.crossfade);
            assert!(fr.returns_the_end());
            assert_eq!(fr.frames(), 100 + 4 + 1 + 10);
            assert_eq!(fr.sola_input(), fr.sola_buffer + fr.sola_search + fr.block);
            // The features after ×2 cover the N frames.
            assert!(2 * (fr.contentvec_frames() + 1) >= fr.frames());
        }
    }

    #[test]
    fn rvc_framing_rounds_half_to_even_and_refuses_nonsense() {
        // 0.125 s = 12.5 frames → 12 and 0.375 s = 37.5 frames → 38 (numpy rounds half to
        // even).
        let fr = BlockFraming::rvc(48_000, 0.125, 0.375, 0.0).unwrap();
        assert_eq!(fr.block, 12 * 480);
        assert_eq!(fr.crossfade, 38 * 480);
        assert_eq!(fr.sola_buffer, 4 * 480);
        assert_eq!(fr.skip_head(), 0);
        let e = BlockFraming::rvc(44_123, 0.25, 0.05, 2.5).unwrap_err();
        assert!(e.contains("multiple of 100"), "{e}");
        let e = BlockFraming::rvc(48_000, 0.004, 0.05, 2.5).unwrap_err();
        assert!(e.contains("block_time"), "{e}");
        let e = BlockFraming::rvc(48_000, 0.25, f64::NAN, 2.5).unwrap_err();
        assert!(e.contains("crossfade_time"), "{e}");
    }
}
