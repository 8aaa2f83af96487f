//! RVC's neighbour blend, made safe for exact matches.
//!
//! RVC computes, per frame, `w = (1 / score)²` for the k neighbours' faiss scores, normalises the
//! weights, blends the neighbours' vectors, and mixes the result with the input:
//! `out = r · Σ wᵢ vᵢ + (1 − r) · query`. A score of exactly 0 (the query is stored in the index)
//! makes RVC divide infinity by infinity and emit NaN; here every score is first clamped to
//! [`SCORE_EPSILON`], so an exact match gets an overwhelming but finite weight (and several exact
//! matches share it equally). Weights are computed in f64.
//!
//! For inner-product indexes the weights use the squared Euclidean distance as well
//! (`‖q‖² + ‖v‖² − 2·q·v`, from the stored norms), so the most similar neighbour weighs most;
//! applying `1/score²` to similarities would invert the order.

use super::expand::{QueryExpansion, MAX_EXPAND_DIM};
use super::kernels::all_finite;
use super::search::{Neighbour, Searcher, MAX_K};
use super::IvfIndex;
use crate::format::Metric;

/// Scores are clamped to at least this before `1 / score²` (squared-L2 units). It is far below
/// any distance between distinct feature frames at f32 precision, and far above where
/// `1 / score²` would overflow in f64.
pub const SCORE_EPSILON: f64 = 1e-12;

/// What one blend call did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BlendOutcome {
    /// Blended with this many neighbours (may be fewer than k when lists are short).
    Blended {
        /// Neighbours used.
        neighbours: usize,
        /// Squared Euclidean distance from the query to its nearest neighbour, as the weights
        /// took it (for an inner-product index computed from the stored norms; for IVF-PQ
        /// without refinement the quantized distance): how well the index covers this query.
        nearest: f32,
    },
    /// Ratio 0: the query was copied, no search was made.
    Copied,
    /// The query held NaN or infinity: it was copied unchanged.
    NonFiniteQuery,
    /// The index holds no vectors: the query was copied.
    Empty,
}

/// Per-call blend settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlendParams {
    /// Neighbours, `1..=MAX_K` (RVC uses 8).
    pub k: usize,
    /// Lists probed (RVC uses 1).
    pub nprobe: usize,
    /// Index rate `r` in `[0, 1]` (clamped).
    pub ratio: f32,
    /// Query-side α expansion ([`QueryExpansion`]): neighbours are searched with the
    /// expanded query and blended with the original one. `None` (the default) searches with
    /// the query itself, as RVC does.
    pub expansion: Option<QueryExpansion>,
}

impl BlendParams {
    /// RVC's settings with `k` neighbours, `nprobe` lists and index rate `ratio`, no
    /// expansion.
    pub const fn new(k: usize, nprobe: usize, ratio: f32) -> BlendParams {
        BlendParams {
            k,
            nprobe,
            ratio,
            expansion: None,
        }
    }
}

impl Default for BlendParams {
    fn default() -> Self {
        BlendParams::new(8, 1, 0.75)
    }
}

/// Normalised RVC weights for the given scores, written into `out[..scores.len()]`.
/// Scores that are infinite or NaN (distances that overflowed f32) weigh like the largest
/// finite score, so the weights are always finite, non-negative and sum to 1.
pub fn rvc_weights(scores: &[f32], out: &mut [f64]) {
    let mut sum = 0.0;
    for (w, &s) in out.iter_mut().zip(scores) {
        let s = (s as f64).abs();
        let s = if s.is_nan() {
            f32::MAX as f64
        } else {
            s.clamp(SCORE_EPSILON, f32::MAX as f64)
        };
        *w = 1.0 / (s * s);
        sum += *w;
    }
    for w in &mut out[..scores.len()] {
        *w /= sum;
    }
}

impl Searcher {
    /// RVC blend of `query` with its neighbours, written to `out` (same length as `query`).
    /// Allocation-free. Never writes NaN or infinity for finite input.
    ///
    /// # Panics
    /// If `query.len()` or `out.len()` differ from `index.dim()`.
    pub fn blend(
        &mut self,
        index: &IvfIndex,
        query: &[f32],
        params: &BlendParams,
        out: &mut [f32],
    ) -> BlendOutcome {
        assert_eq!(
            out.len(),
            query.len(),
            "output length must equal the query length"
        );
        let ratio = match blend_ratio(query, params, out) {
            Ok(r) => r,
            Err(copied) => return copied,
        };
        let found = match params.expansion {
            Some(exp) if query.len() <= MAX_EXPAND_DIM => {
                // `out` holds the expanded query until the blend overwrites it.
                if self.expand_query(index, query, params.nprobe, &exp, out) == 0 {
                    // No expansion possible: search with the query itself.
                    out.copy_from_slice(query);
                }
                self.search(index, out, params.k, params.nprobe)
            }
            _ => self.search(index, query, params.k, params.nprobe),
        };
        let n = found.len();
        if n == 0 {
            out.copy_from_slice(query);
            return BlendOutcome::Empty;
        }
        let nearest = blend_neighbours(index, query, found, ratio, out);
        BlendOutcome::Blended {
            neighbours: n,
            nearest,
        }
    }

    /// Blends `queries` (rows of `dim`) into `out` row by row; returns how many rows were blended
    /// with neighbours (the others were copied).
    pub fn blend_batch(
        &mut self,
        index: &IvfIndex,
        queries: &[f32],
        params: &BlendParams,
        out: &mut [f32],
    ) -> usize {
        let d = index.dim();
        assert_eq!(queries.len() % d, 0, "queries must be whole rows");
        assert_eq!(out.len(), queries.len(), "output must match the queries");
        let mut blended = 0;
        for (q, o) in queries.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            if let BlendOutcome::Blended { .. } = self.blend(index, q, params, o) {
                blended += 1;
            }
        }
        blended
    }
}

/// The index rate as the blends use it: NaN is 0, the rest clamped to `[0, 1]`.
#[inline]
pub(crate) fn clamp_ratio(ratio: f32) -> f32 {
    if ratio.is_nan() {
        0.0
    } else {
        ratio.clamp(0.0, 1.0)
    }
}

/// The checks every blend starts with: the index rate clamped to `[0, 1]` (NaN is 0), or the
/// query copied to `out` and the outcome when there is nothing to blend (a non-finite query,
/// ratio 0).
#[inline]
pub(super) fn blend_ratio(
    query: &[f32],
    params: &BlendParams,
    out: &mut [f32],
) -> Result<f32, BlendOutcome> {
    let ratio = clamp_ratio(params.ratio);
    if !all_finite(query) {
        out.copy_from_slice(query);
        return Err(BlendOutcome::NonFiniteQuery);
    }
    if ratio == 0.0 {
        out.copy_from_slice(query);
        return Err(BlendOutcome::Copied);
    }
    Ok(ratio)
}

/// RVC's blend of `query` with its neighbours `found` (not empty, at most `MAX_K`) of `index`
/// into `out`, `ratio` already clamped: `out = (1 − r)·q + r·Σ wᵢ·vᵢ` with [`rvc_weights`].
/// [`Searcher::blend`] and the live runtime's blends share it, so they agree bit for bit.
///
/// Weights always follow squared Euclidean distance, whatever metric picked the neighbours:
/// for an inner-product index ‖q − v‖² = ‖q‖² + ‖v‖² − 2·q·v, from the stored norms (for L2 the
/// score already is that distance, as in RVC).
#[inline]
pub(crate) fn blend_neighbours(
    index: &IvfIndex,
    query: &[f32],
    found: &[Neighbour],
    ratio: f32,
    out: &mut [f32],
) -> f32 {
    let n = found.len().min(MAX_K);
    let mut scores = [0f32; MAX_K];
    let mut positions = [0u32; MAX_K];
    let ip = index.metric() == Metric::InnerProduct;
    let query_norm = if ip {
        query.iter().map(|x| x * x).sum::<f32>()
    } else {
        0.0
    };
    let norms = index.vector_norms();
    for (i, nb) in found.iter().take(n).enumerate() {
        scores[i] = if ip {
            (query_norm + norms[nb.pos as usize] - 2.0 * nb.distance).max(0.0)
        } else {
            nb.distance
        };
        positions[i] = nb.pos;
    }
    mix_neighbours(
        query,
        &scores[..n],
        |i| index.vector(positions[i] as usize),
        ratio,
        out,
    );
    nearest_score(&scores[..n])
}

/// The smallest of `scores` (+∞ for none; NaN is ignored).
#[inline]
pub(super) fn nearest_score(scores: &[f32]) -> f32 {
    scores.iter().copied().fold(f32::INFINITY, f32::min)
}

/// `out = (1 − r)·q + r·Σ wᵢ·vᵢ` with [`rvc_weights`] of `scores` (at most `MAX_K`, not empty)
/// and `vector(i)` the i-th neighbour's vector: the arithmetic every blend shares.
#[inline]
pub(super) fn mix_neighbours<'a>(
    query: &[f32],
    scores: &[f32],
    vector: impl Fn(usize) -> &'a [f32],
    ratio: f32,
    out: &mut [f32],
) {
    let n = scores.len().min(MAX_K);
    let mut weights = [0f64; MAX_K];
    rvc_weights(&scores[..n], &mut weights);
    let keep = 1.0 - ratio;
    for (o, &q) in out.iter_mut().zip(query) {
        *o = keep * q;
    }
    for (i, &w) in weights.iter().enumerate().take(n) {
        let w = (w * ratio as f64) as f32;
        for (o, &v) in out.iter_mut().zip(vector(i)) {
            *o += w * v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_product_blends_weigh_the_most_similar_neighbour_most() {
        use crate::format::{IndexParts, ListParts, Metadata};
        // Unit vectors at 0°, 60° and 90° from the query.
        let (c, s) = (0.5f32, 0.75f32.sqrt());
        let parts = IndexParts {
            dim: 2,
            metric: Metric::InnerProduct,
            nprobe: 1,
            centroids: vec![1.0, 0.0],
            lists: vec![ListParts {
                ids: vec![0, 1, 2],
                vectors: vec![0.99, 0.141, c, s, 0.0, 1.0],
            }],
            metadata: Metadata::default(),
        };
        let index = IvfIndex::from_parts(&parts).unwrap();
        let mut out = [0f32; 2];
        let params = BlendParams {
            expansion: None,
            k: 3,
            nprobe: 1,
            ratio: 1.0,
        };
        Searcher::new().blend(&index, &[1.0, 0.0], &params, &mut out);
        // Dominated by the nearly identical first vector.
        assert!(out[0] > 0.9 && out[1] < 0.2, "{out:?}");
    }

    #[test]
    fn weights_are_normalised_and_finite_even_for_exact_matches() {
        let mut w = [0f64; 4];
        rvc_weights(&[0.0, 0.0, 1.0, 4.0], &mut w);
        assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0));
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!((w[0] - 0.5).abs() < 1e-9 && (w[1] - 0.5).abs() < 1e-9);
        rvc_weights(&[1.0, 2.0], &mut w);
        // 1/1 : 1/4 → 0.8 : 0.2
        assert!((w[0] - 0.8).abs() < 1e-12 && (w[1] - 0.2).abs() < 1e-12);
    }
}
