//! Query-side α expansion (faiss's tips: "applicable to queries and to the database"): the
//! query is replaced, for the search only, by the `max(cos, 0)^α`-weighted mean of its `k`
//! nearest stored vectors, rescaled to the query's own length. Neighbours found with the
//! expanded query are then blended with the original query, so the input's own features are
//! what `1 − ratio` keeps.
//!
//! It is the database expansion of `knnblend build --alpha-expand` applied per frame: the same
//! weights, the same renormalisation. Allocation-free: the expanded query lives in the
//! searcher's scratch (indexes of up to [`MAX_EXPAND_DIM`] dimensions; wider ones are searched
//! with the plain query).

use super::kernels::I8_MAX_DIM;
use super::search::{Searcher, MAX_K};
use super::IvfIndex;

/// Widest index whose queries can be expanded (the searcher's scratch; RVC's 768 fits).
pub const MAX_EXPAND_DIM: usize = I8_MAX_DIM;

/// Settings of the query-side α expansion.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueryExpansion {
    /// Neighbours the expanded query is made of, `1..=MAX_K` (clamped).
    pub k: usize,
    /// Exponent of the (non-negative part of the) cosine similarity; 0 weighs every
    /// neighbour with a positive similarity alike. Non-finite or negative values are taken
    /// as 0.
    pub alpha: f32,
}

impl Default for QueryExpansion {
    fn default() -> Self {
        QueryExpansion { k: 8, alpha: 3.0 }
    }
}

impl QueryExpansion {
    /// The settings brought into range: `k` in `1..=MAX_K`, `alpha` finite and ≥ 0.
    pub fn sanitized(self) -> QueryExpansion {
        QueryExpansion {
            k: self.k.clamp(1, MAX_K),
            alpha: if self.alpha.is_finite() && self.alpha > 0.0 {
                self.alpha
            } else {
                0.0
            },
        }
    }
}

impl Searcher {
    /// Writes the α-expanded `query` into `out` (as long as `query`): the
    /// `max(cos, 0)^α`-weighted mean of its `exp.k` nearest vectors (searching `nprobe`
    /// lists), rescaled to `‖query‖`. Returns how many neighbours it was made of; 0 means
    /// `out` holds the query unchanged (no neighbours, none with a positive similarity, a zero
    /// or non-finite query, or a sum that does not fit in f32). Allocation-free.
    ///
    /// # Panics
    /// If `query.len()` or `out.len()` differ from `index.dim()`.
    pub fn expand_query(
        &mut self,
        index: &IvfIndex,
        query: &[f32],
        nprobe: usize,
        exp: &QueryExpansion,
        out: &mut [f32],
    ) -> usize {
        let Some((exp, qn)) = begin(query, index.dim(), exp, out) else {
            return 0;
        };
        let found = self.search(index, query, exp.k, nprobe);
        combine(
            query,
            qn,
            found.len(),
            |i| index.vector(found[i].pos as usize),
            &exp,
            out,
        )
    }
}

/// The opening of every query expansion: checks the lengths (panics as documented on the
/// searchers' `expand_query`), copies `query` into `out`, and returns the sanitized
/// expansion and `‖query‖`, or `None` (with `out` holding the query) when the norm is zero or
/// not finite.
pub(super) fn begin(
    query: &[f32],
    dim: usize,
    exp: &QueryExpansion,
    out: &mut [f32],
) -> Option<(QueryExpansion, f64)> {
    assert_eq!(query.len(), dim, "query length must equal the dimension");
    assert_eq!(
        out.len(),
        query.len(),
        "output length must equal the query length"
    );
    out.copy_from_slice(query);
    let qn = norm(query);
    (qn.is_finite() && qn > 0.0).then(|| (exp.sanitized(), qn))
}

/// The expansion itself: `out` (holding `query`) becomes the `max(cos, 0)^α`-weighted mean of
/// the `count` (at most `MAX_K`) neighbour vectors `vector(i)`, rescaled to `qn = ‖query‖`
/// (finite, positive). Returns how many neighbours it used; 0 leaves `out` holding the query.
/// `exp` is sanitized.
pub(super) fn combine<'a>(
    query: &[f32],
    qn: f64,
    count: usize,
    vector: impl Fn(usize) -> &'a [f32],
    exp: &QueryExpansion,
    out: &mut [f32],
) -> usize {
    let count = count.min(MAX_K);
    // Weights first (at most MAX_K), then one pass per neighbour into `out`.
    let mut weights = [0f64; MAX_K];
    let mut used = 0;
    let mut wsum = 0f64;
    for (i, w) in weights.iter_mut().enumerate().take(count) {
        let v = vector(i);
        let vn = norm(v);
        if !(vn.is_finite() && vn > 0.0) {
            continue;
        }
        let cos = (dot(query, v) / (qn * vn)).clamp(-1.0, 1.0);
        let s = if cos.is_nan() { 0.0 } else { cos.max(0.0) };
        let weight = if exp.alpha == 0.0 {
            (s > 0.0) as u8 as f64
        } else {
            s.powf(exp.alpha as f64)
        };
        if weight > 0.0 && weight.is_finite() {
            *w = weight;
            wsum += weight;
            used += 1;
        }
    }
    if used == 0 {
        return 0;
    }
    // Σ wᵢ vᵢ / Σ wᵢ, in f64 per element, then rescaled to the query's length.
    let mut en2 = 0f64;
    for (j, o) in out.iter_mut().enumerate() {
        let mut acc = 0f64;
        for (i, w) in weights.iter().enumerate().take(count) {
            if *w > 0.0 {
                acc += *w * vector(i)[j] as f64;
            }
        }
        let e = acc / wsum;
        en2 += e * e;
        *o = e as f32;
    }
    let en = en2.sqrt();
    if !(en.is_finite() && en > 0.0) {
        out.copy_from_slice(query);
        return 0;
    }
    let scale = qn / en;
    let mut finite = true;
    for o in out.iter_mut() {
        *o = (*o as f64 * scale) as f32;
        finite &= o.is_finite();
    }
    if !finite {
        out.copy_from_slice(query);
        return 0;
    }
    used
}

pub(super) fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{IndexParts, ListParts, Metadata, Metric};

    fn index(metric: Metric, vectors: &[[f32; 2]]) -> IvfIndex {
        IvfIndex::from_parts(&IndexParts {
            dim: 2,
            metric,
            nprobe: 1,
            centroids: vec![1.0, 0.0],
            lists: vec![ListParts {
                ids: (0..vectors.len() as i64).collect(),
                vectors: vectors.iter().flatten().copied().collect(),
            }],
            metadata: Metadata::default(),
        })
        .unwrap()
    }

    #[test]
    fn one_neighbour_gives_its_direction_at_the_querys_length() {
        let idx = index(Metric::L2, &[[3.0, 4.0], [-5.0, 0.0]]);
        let mut s = Searcher::new();
        let mut out = [0f32; 2];
        let exp = QueryExpansion { k: 1, alpha: 3.0 };
        // Nearest to (1, 1) is (3, 4): out = (3, 4)/5 · √2.
        assert_eq!(s.expand_query(&idx, &[1.0, 1.0], 1, &exp, &mut out), 1);
        let r = 2f64.sqrt() / 5.0;
        assert!((out[0] as f64 - 3.0 * r).abs() < 1e-6 && (out[1] as f64 - 4.0 * r).abs() < 1e-6);
    }

    #[test]
    fn weights_are_cosine_to_the_alpha_and_opposite_vectors_weigh_nothing() {
        // Unit vectors at 0° and 60° from the query, and one opposite it.
        let (c, s60) = (0.5f32, 0.75f32.sqrt());
        let idx = index(Metric::InnerProduct, &[[1.0, 0.0], [c, s60], [-1.0, 0.0]]);
        let mut s = Searcher::new();
        let mut out = [0f32; 2];
        let exp = QueryExpansion { k: 3, alpha: 2.0 };
        assert_eq!(s.expand_query(&idx, &[2.0, 0.0], 1, &exp, &mut out), 2);
        // Weights 1 and 0.25: mean (1 + 0.125, 0.25·s60) / 1.25, rescaled to length 2.
        let (x, y) = (1.125f64 / 1.25, 0.25 * s60 as f64 / 1.25);
        let l = (x * x + y * y).sqrt();
        assert!((out[0] as f64 - 2.0 * x / l).abs() < 1e-6, "{out:?}");
        assert!((out[1] as f64 - 2.0 * y / l).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn degenerate_queries_are_copied() {
        let idx = index(Metric::L2, &[[-1.0, 0.0]]);
        let mut s = Searcher::new();
        let mut out = [9f32; 2];
        let exp = QueryExpansion::default();
        for q in [[0.0, 0.0], [f32::NAN, 1.0], [1.0, 0.0]] {
            // Zero, NaN, and a query whose only neighbour points away from it.
            assert_eq!(s.expand_query(&idx, &q, 1, &exp, &mut out), 0);
            assert_eq!(out.map(f32::to_bits), q.map(f32::to_bits));
        }
    }

    #[test]
    fn settings_are_brought_into_range() {
        let e = QueryExpansion {
            k: 0,
            alpha: f32::NAN,
        }
        .sanitized();
        assert_eq!((e.k, e.alpha), (1, 0.0));
        let e = QueryExpansion {
            k: 1000,
            alpha: -1.0,
        }
        .sanitized();
        assert_eq!((e.k, e.alpha), (MAX_K, 0.0));
    }
}
