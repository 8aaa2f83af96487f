//! SOLA (synchronous overlap-add) between consecutive converted blocks, as RVC's realtime GUI
//! does it (`gui_v1.py`, `audio_callback`, after DDSP-SVC).
//!
//! Each block the synthesizer returns `crossfade + search + block` samples (RVC:
//! `sola_buffer_frame + sola_search_frame + block_frame`, see
//! [`BlockFraming`](crate::frames::BlockFraming)) whose head overlaps the previous block's
//! tail. With `x` the new samples and `t` the `crossfade` samples kept from the previous block:
//!
//! 1. **search**: for each offset `k = 0 ..= search`, the correlation of `x[k .. k + crossfade]`
//!    with `t`, normalised by the energy of that stretch of `x`:
//!    `c(k) = Σᵢ x[k+i]·t[i] / √(Σᵢ x[k+i]² + 10⁻⁸)` (RVC: `cor_nom / cor_den` from two
//!    `conv1d`s); the offset is the first `k` with the largest `c(k)` (`argmax`). The previous
//!    tail's own energy is the same for every `k` and is left out, as in RVC;
//! 2. **crossfade**: `y = x[offset ..]`, and `y[i] = y[i]·fade_in[i] + t[i]·fade_out[i]` for
//!    `i < crossfade`, with `fade_in[i] = sin(π/2 · i/(crossfade − 1))²` (RVC:
//!    `sin(0.5π·linspace(0, 1, n))²`) and `fade_out = 1 − fade_in`;
//! 3. **output** `y[.. block]`; **keep** `y[block .. block + crossfade]` as the next tail (taken
//!    after the crossfade, as RVC's in-place update does; it matters only when `block <
//!    crossfade`).
//!
//! The first block crossfades from silence (the tail starts as zeros, every `c(k)` is 0 and the
//! offset is 0), as in RVC. Output sample `i` is `x[offset + i]` once past the crossfade, so the
//! output lags the block's last `block` samples of `x` by `crossfade + search − offset`
//! samples.
//!
//! # Precision
//! Correlations, energies, windows and the crossfade are computed in f64 and each output sample
//! is rounded to f32 once (RVC computes in float32); the tests reproduce every output bit with a
//! plain f64 evaluation of the formulas above. NaN correlations (from non-finite input) are never
//! chosen; such input passes through to the output and into one tail, and is gone a block
//! later.
//!
//! # Realtime
//! [`Sola::new`] allocates 3 × `crossfade` + 2 × (`search + 1`) f64 and 2 × `crossfade` f32
//! values; [`Sola::process`] allocates nothing and costs `2 · crossfade · (search + 1)`
//! multiply-adds, done over all offsets at once so they vectorise (48 kHz, 40 ms crossfade,
//! 10 ms search: about 1.8 M).

/// SOLA state: the previous block's tail, the fade windows and the search's accumulators.
#[derive(Clone, Debug)]
pub struct Sola {
    crossfade: usize,
    search: usize,
    block: usize,
    /// `crossfade` samples: the previous block's tail.
    tail: Vec<f32>,
    /// `crossfade` samples: the crossfaded head of the current block.
    mixed: Vec<f32>,
    /// `crossfade` values each.
    fade_in: Vec<f64>,
    fade_out: Vec<f64>,
    /// `search + 1` values each: `Σ x·t` and `Σ x²` per offset.
    correlation: Vec<f64>,
    energy: Vec<f64>,
}

impl Sola {
    /// SOLA with a crossfade of `crossfade_len` samples (RVC's `sola_buffer_frame`), offsets
    /// `0 ..= search_len` (RVC's `sola_search_frame`, 10 ms) and `block_len` output samples per
    /// block. Every length may be 0: no crossfade outputs `converted[.. block]`.
    pub fn new(crossfade_len: usize, search_len: usize, block_len: usize) -> Self {
        let n = crossfade_len;
        let fade_in: Vec<f64> = (0..n)
            .map(|i| {
                let t = if n > 1 {
                    i as f64 / (n - 1) as f64
                } else {
                    0.0
                };
                (0.5 * std::f64::consts::PI * t).sin().powi(2)
            })
            .collect();
        let fade_out = fade_in.iter().map(|&w| 1.0 - w).collect();
        Sola {
            crossfade: crossfade_len,
            search: search_len,
            block: block_len,
            tail: vec![0.0; n],
            mixed: vec![0.0; n],
            fade_in,
            fade_out,
            correlation: vec![0.0; search_len + 1],
            energy: vec![0.0; search_len + 1],
        }
    }

    /// The crossfade length.
    pub fn crossfade_len(&self) -> usize {
        self.crossfade
    }

    /// The search length (largest offset).
    pub fn search_len(&self) -> usize {
        self.search
    }

    /// Output samples per block.
    pub fn block_len(&self) -> usize {
        self.block
    }

    /// Samples [`process`](Self::process) takes: `crossfade + search + block`.
    pub fn input_len(&self) -> usize {
        self.crossfade + self.search + self.block
    }

    /// The tail kept for the next block.
    pub fn tail(&self) -> &[f32] {
        &self.tail
    }

    /// Forgets the tail: the next block crossfades from silence.
    pub fn reset(&mut self) {
        self.tail.fill(0.0);
    }

    /// Aligns `converted` ([`input_len`](Self::input_len) samples) with the previous block,
    /// crossfades, writes [`block_len`](Self::block_len) samples into `out`, keeps the new tail
    /// and returns the offset chosen (`0 ..= search`).
    ///
    /// # Panics
    /// If `converted` or `out` has the wrong length.
    pub fn process(&mut self, converted: &[f32], out: &mut [f32]) -> usize {
        assert_eq!(
            converted.len(),
            self.input_len(),
            "Sola::process: converted must hold crossfade + search + block samples"
        );
        assert_eq!(
            out.len(),
            self.block,
            "Sola::process: out must hold block samples"
        );
        let offset = self.best_offset(converted);
        let (cf, block) = (self.crossfade, self.block);
        let y = &converted[offset..offset + block + cf];
        for ((m, &x), ((&t, &fi), &fo)) in self
            .mixed
            .iter_mut()
            .zip(y)
            .zip(self.tail.iter().zip(&self.fade_in).zip(&self.fade_out))
        {
            *m = (x as f64 * fi + t as f64 * fo) as f32;
        }
        let head = cf.min(block);
        out[..head].copy_from_slice(&self.mixed[..head]);
        out[head..].copy_from_slice(&y[head..block]);
        for (i, t) in self.tail.iter_mut().enumerate() {
            let j = block + i;
            *t = if j < cf { self.mixed[j] } else { y[j] };
        }
        offset
    }

    /// The first offset with the largest normalised correlation (0 if every one is NaN).
    fn best_offset(&mut self, converted: &[f32]) -> usize {
        let offsets = self.search + 1;
        self.correlation.fill(0.0);
        self.energy.fill(0.0);
        // Offsets in the inner loop: each accumulator still sums i = 0, 1, … in order.
        for (i, &t) in self.tail.iter().enumerate() {
            let t = t as f64;
            let x = &converted[i..i + offsets];
            for ((c, e), &v) in self.correlation.iter_mut().zip(&mut self.energy).zip(x) {
                let v = v as f64;
                *c += v * t;
                *e += v * v;
            }
        }
        let mut best = 0;
        let mut best_score = f64::NEG_INFINITY;
        for (k, (&c, &e)) in self.correlation.iter().zip(&self.energy).enumerate() {
            let score = c / (e + 1e-8).sqrt();
            if score > best_score {
                best = k;
                best_score = score;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fade_windows_are_rvcs() {
        let s = Sola::new(5, 2, 10);
        // sin(π/2 · [0, .25, .5, .75, 1])²
        let want = [0.0, 0.146_446_609, 0.5, 0.853_553_390, 1.0];
        for (a, b) in s.fade_in.iter().zip(want) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
        for (a, b) in s.fade_in.iter().zip(&s.fade_out) {
            assert_eq!(a + b, 1.0);
        }
        assert_eq!(Sola::new(1, 0, 4).fade_in, vec![0.0]);
    }

    #[test]
    fn no_crossfade_passes_the_block_through() {
        let mut s = Sola::new(0, 3, 6);
        let x: Vec<f32> = (0..9).map(|i| i as f32).collect();
        let mut out = [0f32; 6];
        assert_eq!(s.process(&x, &mut out), 0);
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let mut empty = Sola::new(0, 0, 0);
        assert_eq!(empty.process(&[], &mut []), 0);
    }

    #[test]
    fn the_first_block_fades_in_from_silence() {
        let mut s = Sola::new(4, 2, 8);
        let x = [1f32; 14];
        let mut out = [0f32; 8];
        assert_eq!(s.process(&x, &mut out), 0);
        for (o, &w) in out.iter().zip(&s.fade_in) {
            assert_eq!(*o, w as f32);
        }
        assert_eq!(&out[4..], &[1.0; 4]);
        assert_eq!(s.tail(), &[1.0; 4]);
        s.reset();
        assert_eq!(s.tail(), &[0.0; 4]);
    }

    #[test]
    fn a_block_shorter_than_the_crossfade_keeps_the_crossfaded_tail() {
        // block 2 < crossfade 4: tail[0..2] comes from the crossfaded samples 2, 3.
        let mut s = Sola::new(4, 0, 2);
        let mut out = [0f32; 2];
        s.process(&[1.0; 6], &mut out);
        let tail = s.tail().to_vec();
        assert_eq!(tail[0], s.fade_in[2] as f32);
        assert_eq!(tail[1], s.fade_in[3] as f32);
        assert_eq!(&tail[2..], &[1.0, 1.0]);
    }

    #[test]
    fn ties_take_the_first_offset_and_nan_is_never_chosen() {
        let mut s = Sola::new(2, 3, 2);
        s.tail.copy_from_slice(&[1.0, 1.0]);
        let mut out = [0f32; 2];
        // Constant input: every offset scores the same.
        assert_eq!(s.process(&[0.5; 7], &mut out), 0);
        s.tail.copy_from_slice(&[1.0, 1.0]);
        let x = [f32::NAN, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0];
        assert_eq!(s.process(&x, &mut out), 2);
    }
}
