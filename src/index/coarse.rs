//! [`CoarseTable`]: a half-precision copy of the centroids with per-centroid error bounds, so
//! the list-selection pass reads half the bytes and still selects exactly the lists a full f32
//! scan would.
//!
//! For centroid `c` (scaled by a power of two `s_c` so its largest element sits in
//! `[2¹⁴, 2¹⁵)`, stored as halves `ĉ`), the screening key is
//! `key_c = β_c − α·s_c·(q · ĉ)` with `β_c = ‖c‖²`, `α = 2` for L2 (the exact key differs by the
//! constant ‖q‖²) and `β_c = 0`, `α = 1` for inner product. Its distance from the exact key is at
//! most `err_c = ‖q‖·R_c + B_c + ε·‖q‖²` where `R_c = α·(‖c − s_c ĉ‖ + 4γ·‖c‖)` bounds the half
//! rounding (Cauchy–Schwarz) and the f32 rounding of the dot product, `B_c = ε·|β_c|` and
//! `ε·‖q‖²` bound the rounding of the key itself and of the exact f32 re-check. Every list
//! whose lower bound `key_c − err_c` is not above the n-th smallest upper bound `key_j + err_j`
//! is re-checked with the exact f32 kernel; no other list can be among the n nearest.

use crate::format::{AlignedBytes, Metric};

use super::kernels::f32_to_f16;

/// Bias given to empty lists: finite (keeps the arithmetic finite), never selected.
const EMPTY_BIAS: f32 = f32::MAX / 8.0;

/// Half-precision centroid table and the constants of its error bound.
pub(crate) struct CoarseTable {
    halves: AlignedBytes,
    dim: usize,
    nlist: usize,
    /// `β_c` (‖c‖² or 0; [`EMPTY_BIAS`] for empty lists).
    pub bias: Vec<f32>,
    /// `α·s_c`.
    pub scale: Vec<f32>,
    /// `R_c`, multiplied by ‖q‖ per query.
    pub radius: Vec<f32>,
    /// `B_c = ε·|β_c|`.
    pub bias_slack: Vec<f32>,
    /// `ε`, the relative slack for rounding in f32 sums of `dim` terms.
    pub eps: f32,
}

impl CoarseTable {
    /// Builds the table, or `None` when some centroid is not finite (the searcher then scans
    /// the f32 centroids directly).
    pub fn build(
        centroids: &[f32],
        dim: usize,
        metric: Metric,
        list_offsets: &[u64],
    ) -> Option<CoarseTable> {
        if dim == 0 || centroids.len() % dim != 0 || !centroids.iter().all(|v| v.is_finite()) {
            return None;
        }
        let nlist = centroids.len() / dim;
        let alpha = match metric {
            Metric::L2 => 2.0f64,
            Metric::InnerProduct => 1.0,
        };
        // Rounding of an f32 sum of `dim` products in the kernels (8-lane partial sums, then a
        // short tree): at most (dim/8 + 16) units of 2⁻²⁴ relative to the sum of magnitudes.
        let gamma = (dim as f64 / 8.0 + 16.0) * f64::powi(2.0, -24);
        let mut halves = AlignedBytes::zeroed(nlist * dim * 2);
        let mut bias = Vec::with_capacity(nlist);
        let mut scale = Vec::with_capacity(nlist);
        let mut radius = Vec::with_capacity(nlist);
        let mut bias_slack = Vec::with_capacity(nlist);
        let out = halves.as_mut_slice();
        for (l, c) in centroids.chunks_exact(dim).enumerate() {
            let max = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Power of two putting the largest element in [2^14, 2^15): far from half overflow,
            // and the smaller elements keep as many bits as halves allow.
            let exp = if max > 0.0 {
                max.log2().floor() as i32
            } else {
                0
            };
            let s = f32::powi(2.0, (exp - 14).clamp(-126, 113));
            let mut err2 = 0f64;
            let mut norm2 = 0f64;
            for (j, &v) in c.iter().enumerate() {
                let h = f32_to_f16(v / s);
                let back = super::kernels::f16_to_f32(h) as f64 * s as f64;
                err2 += (v as f64 - back).powi(2);
                norm2 += (v as f64).powi(2);
                let at = (l * dim + j) * 2;
                out[at..at + 2].copy_from_slice(&h.to_le_bytes());
            }
            let empty = list_offsets[l + 1] == list_offsets[l];
            let b = match metric {
                Metric::L2 if empty => EMPTY_BIAS as f64,
                Metric::L2 => norm2,
                Metric::InnerProduct if empty => EMPTY_BIAS as f64,
                Metric::InnerProduct => 0.0,
            };
            // The γ term covers the f32 dot of the screen and the cross term of the exact re-check.
            let r = alpha * (err2.sqrt() + 4.0 * gamma * norm2.sqrt());
            bias.push(b as f32);
            scale.push((alpha * s as f64) as f32);
            radius.push(round_up(r * (1.0 + 1e-3)));
            bias_slack.push(round_up(4.0 * gamma * b.abs()));
        }
        Some(CoarseTable {
            halves,
            dim,
            nlist,
            bias,
            scale,
            radius,
            bias_slack,
            eps: round_up(4.0 * gamma),
        })
    }

    /// The halves, `nlist × dim`, row-major.
    #[inline]
    pub fn halves(&self) -> &[u16] {
        let b = self.halves.as_slice();
        // SAFETY: page-aligned allocation of exactly nlist·dim u16 values; any bits are valid.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<u16>(), self.nlist * self.dim) }
    }

    /// Tries to lock the table's pages in RAM (best effort, like the index itself).
    pub fn lock(&self) -> bool {
        let mut ok = true;
        let lock = |p: *const u8, n: usize| -> bool {
            // SAFETY: mlock only pins pages of memory we own.
            n == 0 || unsafe { libc::mlock(p.cast(), n) == 0 }
        };
        ok &= lock(self.halves.as_slice().as_ptr(), self.halves.len());
        for v in [&self.bias, &self.scale, &self.radius, &self.bias_slack] {
            ok &= lock(v.as_ptr().cast(), v.len() * 4);
        }
        ok
    }
}

/// The f32 at or above `x` (for bounds that must not shrink when stored as f32).
fn round_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f
    }
}
