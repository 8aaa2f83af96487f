//! [`CoarseTable`]: an 8-bit copy of the centroids with per-centroid error bounds, so the
//! list-selection pass reads a quarter of the bytes (small enough to stay in L2 for RVC's list
//! counts) and still selects exactly the lists a full f32 scan would.
//!
//! Centroid `c` is stored as bytes `ĉ` with a scale `s_c = max|c| / 127`; the query `q` is
//! quantised per query to `i16` values `q̂` with a scale `t` (largest element 2¹⁴). The integer
//! dot product `q̂ · ĉ` is exact (kernels.rs), and
//! `q · c − t·s_c·(q̂ · ĉ) = q · (c − s_c ĉ) + (q − t q̂) · s_c ĉ`, so by Cauchy–Schwarz the
//! screening key `key_c = β_c − α·s_c·t·(q̂ · ĉ)` (`β_c = ‖c‖²`, `α = 2` for L2, where the exact key
//! differs by the constant ‖q‖²; `β_c = 0`, `α = 1` for inner product) is within
//! `err_c = ‖q‖·R_c + ‖q − t q̂‖·N_c + B_c + ε·‖q‖²` of the exact key, with
//! `R_c = α·(‖c − s_c ĉ‖ + 4γ‖c‖)`, `N_c = α·s_c‖ĉ‖`, and `B_c = ε·|β_c|`, `ε·‖q‖²`, `4γ‖c‖`
//! covering f32 rounding (of the key and of the exact re-check). Every list whose lower bound
//! `key_c − err_c` is not above the n-th smallest upper bound `key_j + err_j` is re-checked with
//! the exact f32 kernel; no other list can be among the n nearest.

use crate::format::{AlignedBytes, Metric};

use super::kernels::I8_MAX_DIM;

/// Bias given to empty lists: finite (keeps the arithmetic finite), never selected.
const EMPTY_BIAS: f32 = f32::MAX / 8.0;

/// 8-bit centroid table and the constants of its error bound.
pub(crate) struct CoarseTable {
    bytes: AlignedBytes,
    dim: usize,
    nlist: usize,
    /// `β_c` (‖c‖² or 0; [`EMPTY_BIAS`] for empty lists).
    pub bias: Vec<f32>,
    /// `α·s_c`.
    pub scale: Vec<f32>,
    /// `R_c`, multiplied by ‖q‖ per query.
    pub radius: Vec<f32>,
    /// `N_c`, multiplied by ‖q − t q̂‖ per query.
    pub qradius: Vec<f32>,
    /// `B_c = ε·|β_c|`.
    pub bias_slack: Vec<f32>,
    /// `ε`, the relative slack for rounding in f32 sums of `dim` terms.
    pub eps: f32,
}

impl CoarseTable {
    /// Builds the table, or `None` when the dimension is beyond the integer kernels or some
    /// centroid is not finite (the searcher then scans the f32 centroids directly).
    pub fn build(
        centroids: &[f32],
        dim: usize,
        metric: Metric,
        list_offsets: &[u64],
    ) -> Option<CoarseTable> {
        if dim == 0
            || dim > I8_MAX_DIM
            || centroids.len() % dim != 0
            || !centroids.iter().all(|v| v.is_finite())
        {
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
        let mut bytes = AlignedBytes::zeroed(nlist * dim);
        let mut bias = Vec::with_capacity(nlist);
        let mut scale = Vec::with_capacity(nlist);
        let mut radius = Vec::with_capacity(nlist);
        let mut qradius = Vec::with_capacity(nlist);
        let mut bias_slack = Vec::with_capacity(nlist);
        let out = bytes.as_mut_slice();
        for (l, c) in centroids.chunks_exact(dim).enumerate() {
            let max = c.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            // The bound is computed from the stored bytes and this exact f32 scale.
            let (mut err2, mut norm2, mut qnorm2) = (0f64, 0f64, 0f64);
            for (j, &v) in c.iter().enumerate() {
                let b = (v / s).round().clamp(-127.0, 127.0) as i8;
                let back = b as f64 * s as f64;
                err2 += (v as f64 - back).powi(2);
                norm2 += (v as f64).powi(2);
                qnorm2 += back * back;
                out[l * dim + j] = b as u8;
            }
            let empty = list_offsets[l + 1] == list_offsets[l];
            let b = match metric {
                _ if empty => EMPTY_BIAS as f64,
                Metric::L2 => norm2,
                Metric::InnerProduct => 0.0,
            };
            // The γ term covers the f32 key arithmetic and the cross term of the exact re-check.
            let r = alpha * (err2.sqrt() + 4.0 * gamma * norm2.sqrt());
            bias.push(b as f32);
            scale.push((alpha * s as f64) as f32);
            radius.push(round_up(r * (1.0 + 1e-3)));
            qradius.push(round_up(alpha * qnorm2.sqrt() * (1.0 + 1e-3)));
            bias_slack.push(round_up(4.0 * gamma * b.abs()));
        }
        Some(CoarseTable {
            bytes,
            dim,
            nlist,
            bias,
            scale,
            radius,
            qradius,
            bias_slack,
            eps: round_up(4.0 * gamma),
        })
    }

    /// The bytes, `nlist × dim`, row-major.
    #[inline]
    pub fn rows(&self) -> &[i8] {
        let b = self.bytes.as_slice();
        // SAFETY: page-aligned allocation of exactly nlist·dim bytes; any bits are a valid i8.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<i8>(), self.nlist * self.dim) }
    }

    /// Tries to lock the table's pages in RAM (best effort, like the index itself).
    pub fn lock(&self) -> bool {
        self.each_region(|p, n| {
            // SAFETY: mlock only pins pages of memory we own.
            unsafe { libc::mlock(p.cast(), n) == 0 }
        })
    }

    /// Releases what [`lock`](Self::lock) pinned (freeing heap memory does not unlock pages
    /// that other allocations may share).
    pub fn unlock(&self) {
        self.each_region(|p, n| {
            // SAFETY: munlock only unpins pages of memory we own.
            unsafe { libc::munlock(p.cast(), n) == 0 }
        });
    }

    fn each_region(&self, mut f: impl FnMut(*const u8, usize) -> bool) -> bool {
        let mut ok = self.bytes.is_empty() || f(self.bytes.as_slice().as_ptr(), self.bytes.len());
        for v in [
            &self.bias,
            &self.scale,
            &self.radius,
            &self.qradius,
            &self.bias_slack,
        ] {
            ok &= v.is_empty() || f(v.as_ptr().cast(), v.len() * 4);
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
