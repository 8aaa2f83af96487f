//! RVC's blend and the query-side α expansion for IVF-PQ FastScan indexes: the same arithmetic
//! as for IVF-Flat ([`Searcher::blend`](super::Searcher::blend),
//! [`Searcher::expand_query`](super::Searcher::expand_query)), with the neighbours' vectors
//! taken from the index ([`PqIndex::neighbour_vector`]: the exact vectors of a refined index,
//! the product-quantizer reconstruction otherwise, which is what faiss's `reconstruct` gives
//! RVC) and their scores as faiss's `search` returns them.

use super::blend::{blend_ratio, mix_neighbours, nearest_score};
use super::expand::{begin, combine};
use super::{
    BlendOutcome, BlendParams, PqIndex, PqSearcher, QueryExpansion, MAX_EXPAND_DIM, MAX_K,
};
use crate::format::Metric;

impl PqSearcher {
    /// RVC blend of `query` with its neighbours in `index`, written to `out` (as long as
    /// `query`), as [`Searcher::blend`](super::Searcher::blend) does for IVF-Flat: weights
    /// `1/score²` of faiss's scores (clamped; for inner-product indexes the squared Euclidean
    /// distance `‖q‖² + ‖v‖² − 2·score`), mixed with the query by the ratio, query-side
    /// expansion if asked. A search that does not [`fit`](Self::fits) this searcher copies the
    /// query ([`BlendOutcome::Empty`]). Allocation-free; never writes NaN or infinity for finite
    /// input.
    ///
    /// # Panics
    /// If `query.len()` or `out.len()` differ from `index.dim()`.
    pub fn blend(
        &mut self,
        index: &PqIndex,
        query: &[f32],
        params: &BlendParams,
        out: &mut [f32],
    ) -> BlendOutcome {
        assert_eq!(
            out.len(),
            query.len(),
            "output length must equal the query length"
        );
        assert_eq!(
            query.len(),
            index.dim(),
            "query length must equal the dimension"
        );
        let ratio = match blend_ratio(query, params, out) {
            Ok(r) => r,
            Err(copied) => return copied,
        };
        let (k, nprobe) = (params.k.clamp(1, MAX_K), params.nprobe.max(1));
        if !self.fits(index, k, nprobe) {
            out.copy_from_slice(query);
            return BlendOutcome::Empty;
        }
        let expanded = match params.expansion {
            // `out` holds the expanded query until the blend overwrites it.
            Some(exp) if query.len() <= MAX_EXPAND_DIM => {
                self.expand_query(index, query, nprobe, &exp, out) > 0
            }
            _ => false,
        };
        self.search(index, if expanded { out } else { query }, k, nprobe);
        let mut scores = [0f32; MAX_K];
        let n = self.gather(index, &mut scores);
        if n == 0 {
            out.copy_from_slice(query);
            return BlendOutcome::Empty;
        }
        let d = index.dim();
        if index.metric() == Metric::InnerProduct {
            let qn = query.iter().map(|x| x * x).sum::<f32>();
            for (i, s) in scores.iter_mut().enumerate().take(n) {
                let vn = self.vecs[i * d..(i + 1) * d]
                    .iter()
                    .map(|x| x * x)
                    .sum::<f32>();
                *s = (qn + vn - 2.0 * *s).max(0.0);
            }
        }
        let vecs = &self.vecs;
        mix_neighbours(
            query,
            &scores[..n],
            |i| &vecs[i * d..(i + 1) * d],
            ratio,
            out,
        );
        BlendOutcome::Blended {
            neighbours: n,
            nearest: nearest_score(&scores[..n]),
        }
    }

    /// Writes the α-expanded `query` into `out`, as
    /// [`Searcher::expand_query`](super::Searcher::expand_query) does for IVF-Flat (the
    /// neighbours' vectors as [`blend`](Self::blend) takes them). Returns how many neighbours it
    /// was made of; 0 means `out` holds the query unchanged (also when the search does not
    /// fit this searcher). Allocation-free.
    ///
    /// # Panics
    /// If `query.len()` or `out.len()` differ from `index.dim()`.
    pub fn expand_query(
        &mut self,
        index: &PqIndex,
        query: &[f32],
        nprobe: usize,
        exp: &QueryExpansion,
        out: &mut [f32],
    ) -> usize {
        let nprobe = nprobe.max(1);
        let Some((exp, qn)) = begin(query, index.dim(), exp, out) else {
            return 0;
        };
        if !self.fits(index, exp.k, nprobe) {
            return 0;
        }
        self.search(index, query, exp.k, nprobe);
        let mut distances = [0f32; MAX_K];
        let n = self.gather(index, &mut distances);
        let d = index.dim();
        let vecs = &self.vecs;
        combine(query, qn, n, |i| &vecs[i * d..(i + 1) * d], &exp, out)
    }

    /// The last search's neighbours (empty slots left out, at most `MAX_K` and the scratch's
    /// rows): their vectors into the scratch rows, their distances into `distances`. Returns how
    /// many.
    fn gather(&mut self, index: &PqIndex, distances: &mut [f32; MAX_K]) -> usize {
        let d = index.dim();
        let rows = (self.vecs.len() / d.max(1)).min(MAX_K);
        let mut n = 0;
        let (results, vecs) = (&self.results, &mut self.vecs);
        for nb in results.iter().filter(|nb| nb.id >= 0).take(rows) {
            index.neighbour_vector(nb, &mut vecs[n * d..(n + 1) * d]);
            distances[n] = nb.distance;
            n += 1;
        }
        n
    }
}
