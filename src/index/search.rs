//! [`Searcher`]: the reusable, allocation-free query workspace (n_probe lists, top-k).

use super::kernels::Kernels;
use super::topk::TopK;
use super::IvfIndex;
use crate::format::Metric;

/// Largest k a search returns.
pub const MAX_K: usize = 32;
/// Largest n_probe a search scans.
pub const MAX_NPROBE: usize = 64;

/// One search result.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Neighbour {
    /// Distance as faiss reports it: squared L2 (ascending) or inner product (descending).
    pub distance: f32,
    /// The stored vector's id.
    pub id: i64,
    /// Storage position of the vector in the index (for [`IvfIndex::vector`]).
    pub pos: u32,
}

/// A reusable search workspace. Create it once (off the audio thread, though creating it
/// does not allocate either); [`search`](Self::search) then allocates, locks and blocks on nothing.
#[derive(Clone, Debug)]
pub struct Searcher {
    kernels: Kernels,
    probes: TopK<MAX_NPROBE>,
    best: TopK<MAX_K>,
    out: [Neighbour; MAX_K],
    n: usize,
}

impl Default for Searcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Searcher {
    /// A searcher using the fastest kernels this CPU supports.
    pub fn new() -> Searcher {
        Self::with_kernels(Kernels::detect())
    }

    /// A searcher with explicit kernels (e.g. [`Kernels::scalar`] for comparisons).
    pub fn with_kernels(kernels: Kernels) -> Searcher {
        Searcher {
            kernels,
            probes: TopK::new(1),
            best: TopK::new(1),
            out: [Neighbour::default(); MAX_K],
            n: 0,
        }
    }

    /// The kernels in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Finds the `k` (clamped to `1..=MAX_K`) nearest stored vectors to `query`, scanning the
    /// `nprobe` (clamped to `1..=MAX_NPROBE`) nearest non-empty lists. Results are sorted best
    /// first; fewer than `k` come back when the probed lists hold fewer vectors, none when
    /// the index is empty or the query is not finite.
    ///
    /// # Panics
    /// If `query.len() != index.dim()`.
    pub fn search(&mut self, index: &IvfIndex, query: &[f32], k: usize, nprobe: usize) -> &[Neighbour] {
        assert_eq!(query.len(), index.dim(), "query length must equal the index dimension");
        self.n = 0;
        if index.ntotal() == 0 || !query.iter().all(|v| v.is_finite()) {
            return &[];
        }
        let ip = index.metric() == Metric::InnerProduct;
        // Keys are "smaller is better": L2 as is, inner product negated.
        let sign = if ip { -1.0 } else { 1.0 };
        self.select_lists(index, query, nprobe, ip);

        self.best.reset(k);
        let d = index.dim();
        let vectors = index.vectors();
        let offsets = index.list_offsets();
        let score = if ip { self.kernels.dot } else { self.kernels.l2sq };
        for &list in self.probes.vals() {
            let (start, end) = (offsets[list as usize] as usize, offsets[list as usize + 1] as usize);
            for (i, v) in vectors[start * d..end * d].chunks_exact(d).enumerate() {
                self.best.push(sign * score(query, v), (start + i) as u32);
            }
        }
        let ids = index.ids();
        for (slot, (&key, &pos)) in self.out.iter_mut().zip(self.best.keys().iter().zip(self.best.vals())) {
            *slot = Neighbour {
                distance: sign * key,
                id: ids[pos as usize],
                pos,
            };
        }
        self.n = self.best.len();
        &self.out[..self.n]
    }

    /// Picks the `nprobe` nearest non-empty lists into `self.probes`.
    fn select_lists(&mut self, index: &IvfIndex, query: &[f32], nprobe: usize, ip: bool) {
        let nprobe = nprobe.clamp(1, MAX_NPROBE);
        self.probes.reset(nprobe);
        let d = index.dim();
        let offsets = index.list_offsets();
        let centroids = index.centroids();
        for (l, c) in centroids.chunks_exact(d).enumerate() {
            if offsets[l + 1] == offsets[l] {
                continue; // an empty list can never serve a neighbour: take the next-nearest
            }
            let key = if ip { -(self.kernels.dot)(query, c) } else { (self.kernels.l2sq)(query, c) };
            self.probes.push(key, l as u32);
        }
    }

    /// The results of the last search.
    pub fn last(&self) -> &[Neighbour] {
        &self.out[..self.n]
    }
}
