//! `CodedRows::lists`: an 8-bit copy of every stored vector, coded relative to its list's centroid,
//! so a list scan reads a quarter of the bytes and re-checks only the few vectors its error
//! bound cannot rule out — with the same exact f32 kernel a full scan uses, so the neighbours
//! and their distances are bit-for-bit those of the full scan.
//!
//! For a vector `x` in the list of centroid `c`, the residual `y = x − c` is stored as bytes `ŷ`
//! with scale `s = max|y| / 127` (residuals are much smaller than the vectors, so the coding error
//! is small relative to the distances that separate neighbours). Per query and list, `p̃ = q − c`
//! is formed in f32 and quantised to `i16` (`p̃ ≈ t·p̂`). With `p = q − c` exact,
//!
//! `‖q − x‖² = ‖p‖² − 2 p·y + ‖y‖²`, and `p·y − t·s·(p̂·ŷ) = p̃·(y − sŷ) + (p̃ − t p̂)·sŷ + (p − p̃)·y`,
//!
//! so the key `‖p̃‖² + ‖y‖² − 2·s·t·(p̂·ŷ)` is within
//! `‖p̃‖·R + ‖p̃ − t p̂‖·N + ε·‖y‖² + ε·‖p̃‖²` of the distance the exact kernel computes, with
//! `R = 2(‖y − sŷ‖ + 2u‖y‖)`, `N = 2s‖ŷ‖` (`u = 2⁻²⁴`), and `ε = 5γ` covering every f32 rounding:
//! of `p̃` (relative `u` per element), of the key, of ‖p̃‖², and of the exact kernel's sum of `d`
//! squares (relative `γ` of the distance, which is at most `2‖p‖² + 2‖y‖²`); the absolute slack
//! `A` of the centroid screen covers what underflows (subnormal squares and products). A vector is
//! re-checked when its lower bound is not above the k-th smallest upper bound; no other vector
//! can be among the k nearest.
//!
//! Inner-product indexes keep the plain f32 scan (RVC's indexes are L2).

use crate::format::{AlignedBytes, Metric};

use super::coarse::{encode_row, sum_rounding, CodedRows, RowBounds};
use super::kernels::I8_MAX_DIM;

/// Lists shorter than this are scanned in f32 directly (re-checking would read most of them).
pub(crate) const MIN_SCREENED_LIST: usize = 24;
/// Indexes of fewer dimensions keep the f32 scan: a row is then short next to its 20 bytes of
/// bound constants and its bookkeeping, and coding saves no time (measured at d = 80, the
/// plugin's features).
pub(crate) const MIN_CODED_DIM: usize = 128;

impl CodedRows {
    /// Codes every stored vector of an L2 index (in storage order, `bias` = ‖y‖²), or `None` for inner-product indexes, dimensions
    /// beyond the integer kernels, or non-finite centroids or vectors (searches then scan the
    /// f32 lists).
    pub fn lists(
        centroids: &[f32],
        vectors: &[f32],
        dim: usize,
        metric: Metric,
        list_offsets: &[u64],
    ) -> Option<CodedRows> {
        if metric != Metric::L2
            || !(MIN_CODED_DIM..=I8_MAX_DIM).contains(&dim)
            || !vectors.len().is_multiple_of(dim)
            || !centroids.len().is_multiple_of(dim)
            || list_offsets.len() != centroids.len() / dim + 1
        {
            return None;
        }
        let rows = vectors.len() / dim;
        let mut bytes = AlignedBytes::zeroed(rows * dim);
        let u = f64::powi(2.0, -24);
        let mut bounds = RowBounds::with_capacity(rows, 5.0 * sum_rounding(dim), dim);
        let out = bytes.as_mut_slice();
        let mut y = vec![0f64; dim];
        for (l, c) in centroids.chunks_exact(dim).enumerate() {
            let (start, end) = (list_offsets[l] as usize, list_offsets[l + 1] as usize);
            if end > rows || start > end {
                return None;
            }
            for pos in start..end {
                if bounds.bias.len() != pos {
                    return None; // lists must tile the storage in order (validated on open)
                }
                let x = &vectors[pos * dim..(pos + 1) * dim];
                if !x.iter().chain(c).all(|v| v.is_finite()) {
                    return None;
                }
                for ((y, &x), &c) in y.iter_mut().zip(x).zip(c) {
                    *y = x as f64 - c as f64;
                }
                let code = encode_row(&y, &mut out[pos * dim..(pos + 1) * dim]);
                bounds.push(2.0, code.norm2, &code, 2.0 * u * code.norm2.sqrt());
            }
        }
        if bounds.bias.len() != rows || !bounds.bias.iter().all(|b| b.is_finite()) {
            return None;
        }
        Some(CodedRows::new(bytes, dim, rows, bounds))
    }
}
