//! [`AnySearcher`]: one search workspace for either index type, for programs that serve
//! whatever file the user gives them (the CLI, the plugin, the C ABI). It holds a
//! [`Searcher`] and a [`PqSearcher`], both sized when it is made; searching allocates nothing.

use super::{
    AnyIndex, BlendOutcome, BlendParams, PqSearcher, QueryExpansion, Searcher, MAX_K, MAX_NPROBE,
    PQ_MAX_BASE_K,
};
use crate::format::Metric;

/// A search workspace for [`AnyIndex`]es.
pub struct AnySearcher {
    flat: Searcher,
    pq: PqSearcher,
}

impl AnySearcher {
    /// A workspace for indexes of dimension up to `max_dim`, `k` up to `max_k` and `nprobe` up
    /// to `max_nprobe` (IVF-Flat searches take any `k ≤ MAX_K` and `nprobe ≤ MAX_NPROBE`;
    /// the bounds size the IVF-PQ scratch: `max_nprobe × max_dim × 16` floats of tables), and
    /// every `k_factor` up to `PQ_MAX_BASE_K / max_k`.
    pub fn new(max_dim: usize, max_k: usize, max_nprobe: usize) -> AnySearcher {
        let max_k = max_k.clamp(1, MAX_K);
        let max_nprobe = max_nprobe.clamp(1, MAX_NPROBE);
        AnySearcher {
            flat: Searcher::new(),
            pq: PqSearcher::new(max_dim, max_k, max_nprobe, (PQ_MAX_BASE_K / max_k) as f32),
        }
    }

    /// A workspace sized for `index` (see [`new`](Self::new)).
    pub fn for_index(index: &AnyIndex, max_k: usize, max_nprobe: usize) -> AnySearcher {
        Self::new(index.dim(), max_k, max_nprobe)
    }

    /// Does a search of `index` with `k` neighbours and `nprobe` lists fit this workspace?
    pub fn fits(&self, index: &AnyIndex, k: usize, nprobe: usize) -> bool {
        match index {
            AnyIndex::Flat(_) => (1..=MAX_K).contains(&k) && (1..=MAX_NPROBE).contains(&nprobe),
            AnyIndex::Pq(ix) => self.pq.fits(ix, k, nprobe),
        }
    }

    /// The `k` neighbours of `query` into `ids` and `distances` (at least `k` each), best
    /// first, as faiss's `search` returns them; slots without a neighbour get id −1 and
    /// distance +∞ (L2) or −∞ (inner product). Returns how many were found.
    ///
    /// # Panics
    /// If the search does not [`fit`](Self::fits), `query` is not `dim` values or the outputs
    /// are shorter than `k`.
    pub fn search(
        &mut self,
        index: &AnyIndex,
        query: &[f32],
        k: usize,
        nprobe: usize,
        ids: &mut [i64],
        distances: &mut [f32],
    ) -> usize {
        assert!(self.fits(index, k, nprobe), "search exceeds the workspace");
        let (ids, distances) = (&mut ids[..k], &mut distances[..k]);
        ids.fill(-1);
        distances.fill(match index.metric() {
            Metric::L2 => f32::INFINITY,
            Metric::InnerProduct => f32::NEG_INFINITY,
        });
        let mut n = 0;
        let mut put = |id: i64, d: f32| {
            if id >= 0 {
                ids[n] = id;
                distances[n] = d;
                n += 1;
            }
        };
        match index {
            AnyIndex::Flat(ix) => {
                for nb in self.flat.search(ix, query, k, nprobe) {
                    put(nb.id, nb.distance);
                }
            }
            AnyIndex::Pq(ix) => {
                for nb in self.pq.search(ix, query, k, nprobe) {
                    put(nb.id, nb.distance);
                }
            }
        }
        n
    }

    /// RVC's blend ([`Searcher::blend`], [`PqSearcher::blend`]).
    pub fn blend(
        &mut self,
        index: &AnyIndex,
        query: &[f32],
        params: &BlendParams,
        out: &mut [f32],
    ) -> BlendOutcome {
        match index {
            AnyIndex::Flat(ix) => self.flat.blend(ix, query, params, out),
            AnyIndex::Pq(ix) => self.pq.blend(ix, query, params, out),
        }
    }

    /// The α-expanded query ([`Searcher::expand_query`], [`PqSearcher::expand_query`]).
    pub fn expand_query(
        &mut self,
        index: &AnyIndex,
        query: &[f32],
        nprobe: usize,
        exp: &QueryExpansion,
        out: &mut [f32],
    ) -> usize {
        match index {
            AnyIndex::Flat(ix) => self.flat.expand_query(ix, query, nprobe, exp, out),
            AnyIndex::Pq(ix) => self.pq.expand_query(ix, query, nprobe, exp, out),
        }
    }

    /// The IVF-Flat searcher (for block searches and statistics).
    pub fn flat(&mut self) -> &mut Searcher {
        &mut self.flat
    }

    /// The IVF-PQ searcher.
    pub fn pq(&mut self) -> &mut PqSearcher {
        &mut self.pq
    }
}
