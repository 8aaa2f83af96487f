//! [`Searcher`]: the reusable, allocation-free query workspace (n_probe lists, top-k).
//!
//! A search has two passes over memory. List selection screens every centroid against the
//! 8-bit table of the index (a quarter of the bytes of the f32 centroids) with a rigorous error
//! bound per centroid, then re-checks the few lists the bound cannot rule out with the exact f32
//! kernel, so the lists selected are the ones a full f32 scan selects (see `coarse.rs`). The
//! probed lists are then screened the same way against 8-bit residual codes of their vectors,
//! and the few vectors the bound cannot rule out are re-checked with the exact f32 kernel, so
//! the neighbours and distances are those of a full f32 scan (see `codes.rs`).
//! [`search_block`](Searcher::search_block) serves up to [`BLOCK`] queries with one pass over
//! the centroid table.

use super::coarse::{CodedRows, MIN_BYTE_QUERY_DIM};
use super::codes::MIN_SCREENED_LIST;
use super::kernels::{all_finite, prefetch, Kernels, I8_MAX_DIM, U8_QUERY_OFFSET};
use super::screen::{CentroidScreen, Screen, Screened, SCREEN_CHUNK};
use super::topk::TopK;
use super::IvfIndex;
use crate::format::Metric;

/// Largest k a search returns.
pub const MAX_K: usize = 32;
/// Largest n_probe a search scans.
pub const MAX_NPROBE: usize = 64;
/// Most queries one [`Searcher::search_block`] call serves (RVC searches about 16 frames per block).
pub const BLOCK: usize = 16;

/// Stored vectors per list-scan kernel call.
const LIST_CHUNK: usize = 64;
/// Vectors a list screen may keep for re-checking before it gives up and scans the list in f32.
const LIST_CAND_CAP: usize = 128;
/// Centroid rows per tile kernel call (block of queries).
const BLOCK_CHUNK: usize = 16;
const _: () = assert!(BLOCK_CHUNK <= SCREEN_CHUNK);
/// Per-query candidate capacity in block screening.
const BLOCK_CAND_CAP: usize = 32;
/// Bytes of a likely list prefetched before the exact re-check.
const LIST_PREFETCH: usize = 8 << 10;
/// Largest n_probe served by the shared block screen (larger ones search query by query).
const BLOCK_MAX_NPROBE: usize = 8;

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

/// Counters of how list selection went (for benchmarks and tests; never reset by searching).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SearchStats {
    /// Queries whose lists were selected (single or in a block).
    pub queries: u64,
    /// Lists re-checked with the exact f32 kernel after screening.
    pub rechecked: u64,
    /// Queries whose lists were selected by an exact f32 scan of every centroid (no table,
    /// screening switched off, or the screen could not narrow the lists down).
    pub exact_scans: u64,
    /// Stored vectors read in f32 by whole-list scans (short lists, no codes, screening off).
    pub vectors_scanned: u64,
    /// Stored vectors screened through their 8-bit codes.
    pub codes_screened: u64,
    /// Stored vectors re-checked in f32 after a list screen.
    pub vectors_rechecked: u64,
    /// Lists whose screen could not narrow the vectors down (then scanned in f32).
    pub list_fallbacks: u64,
    /// Queries whose 8-bit centroid screen left too many candidates and which were screened
    /// again with the tighter 16-bit query.
    pub rescreened: u64,
}

/// The centroid screen of one query of a block.
type BlockScreen = Screen<BLOCK_MAX_NPROBE, BLOCK_CAND_CAP>;

/// Starts loading the head of the lists of centroid-table rows `rows` (the hardware
/// prefetcher continues those streams): the list's codes when it will be screened, else its
/// f32 vectors.
fn prefetch_lists(index: &IvfIndex, table: &CodedRows, rows: &[u32]) {
    let d = index.dim();
    let offsets = index.list_offsets();
    for &r in rows {
        let l = table.list(r as usize);
        let (start, end) = (offsets[l] as usize, offsets[l + 1] as usize);
        match index.codes() {
            Some(codes) if end - start >= MIN_SCREENED_LIST => prefetch(
                codes.rows()[start * d..].as_ptr().cast(),
                ((end - start) * d).min(LIST_PREFETCH),
            ),
            _ => prefetch(
                index.vectors()[start * d..].as_ptr().cast(),
                ((end - start) * d * 4).min(LIST_PREFETCH),
            ),
        }
    }
}

/// Exact f32 keys of the surviving candidates `survivors` (rows of the centroid table `table`) into
/// `probes` (which keeps the n nearest), prefetching the lists of the `likely` rows. Returns how many lists were re-checked.
fn recheck(
    survivors: impl Iterator<Item = usize> + Clone,
    likely: &[u32],
    index: &IvfIndex,
    table: &CodedRows,
    query: &[f32],
    exact: &dyn Fn(&[f32], &[f32]) -> f32,
    probes: &mut TopK<MAX_NPROBE>,
) -> u64 {
    let d = index.dim();
    let (centroids, offsets) = (index.centroids(), index.list_offsets());
    // Start every memory load at once: the surviving f32 centroids, and the head of the
    // lists most likely to be probed (the hardware prefetcher continues those streams).
    for r in survivors.clone() {
        prefetch(centroids[table.list(r) * d..].as_ptr().cast(), d * 4);
    }
    prefetch_lists(index, table, likely);
    // Rows are the non-empty lists in list order, so ties resolve to the lower list, as
    // in the exact scan.
    let mut n = 0;
    for r in survivors {
        let l = table.list(r);
        debug_assert!(offsets[l + 1] != offsets[l]);
        probes.push(exact(query, &centroids[l * d..(l + 1) * d]), l as u32);
        n += 1;
    }
    n
}

/// Results of [`Searcher::search_block`]: the neighbours of each query of the block.
#[derive(Clone, Debug)]
pub struct BlockResults {
    neighbours: [[Neighbour; MAX_K]; BLOCK],
    lens: [usize; BLOCK],
    m: usize,
}

impl BlockResults {
    const fn new() -> Self {
        BlockResults {
            neighbours: [[Neighbour {
                distance: 0.0,
                id: 0,
                pos: 0,
            }; MAX_K]; BLOCK],
            lens: [0; BLOCK],
            m: 0,
        }
    }

    /// Number of queries in the block.
    pub fn len(&self) -> usize {
        self.m
    }

    /// True for an empty block.
    pub fn is_empty(&self) -> bool {
        self.m == 0
    }

    /// Neighbours of query `i`, best first (like [`Searcher::search`]).
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> &[Neighbour] {
        assert!(i < self.m, "query {i} is not in a block of {}", self.m);
        &self.neighbours[i][..self.lens[i]]
    }
}

/// A reusable search workspace. Create it once (off the audio thread, though creating it
/// does not allocate either); [`search`](Self::search) then allocates, locks and blocks on nothing.
#[derive(Clone)]
pub struct Searcher {
    kernels: Kernels,
    screening: bool,
    probes: TopK<MAX_NPROBE>,
    best: TopK<MAX_K>,
    /// The lists being scanned may hold copies of one vector (spilled index, several probes).
    distinct: bool,
    out: [Neighbour; MAX_K],
    n: usize,
    /// The centroid screen; its quantised-query buffers also serve the list screens.
    centroid: CentroidScreen,
    list_screen: Screen<MAX_K, LIST_CAND_CAP>,
    /// `q − c` of the list being screened.
    resid: [f32; I8_MAX_DIM],
    dots: [f32; LIST_CHUNK],
    block_screens: [BlockScreen; BLOCK],
    block_queries: [u8; BLOCK * I8_MAX_DIM],
    block_dots: [i32; BLOCK * BLOCK_CHUNK],
    block: BlockResults,
    stats: SearchStats,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher")
            .field("kernels", &self.kernels)
            .field("screening", &self.screening)
            .field("stats", &self.stats)
            .field("last", &self.last())
            .finish()
    }
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
            screening: true,
            probes: TopK::new(1),
            best: TopK::new(1),
            distinct: false,
            out: [Neighbour::default(); MAX_K],
            n: 0,
            centroid: CentroidScreen::new(),
            list_screen: Screen::new(),
            resid: [0.0; I8_MAX_DIM],
            dots: [0.0; LIST_CHUNK],
            block_screens: [Screen::new(); BLOCK],
            block_queries: [0; BLOCK * I8_MAX_DIM],
            block_dots: [0; BLOCK * BLOCK_CHUNK],
            block: BlockResults::new(),
            stats: SearchStats::default(),
        }
    }

    /// The kernels in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Switches 8-bit screening on (the default) or off. Off, every search computes the exact
    /// f32 distance to every centroid and to every vector of the probed lists: the same
    /// neighbours and distances, more bytes read. For comparisons and tests.
    pub fn set_screening(&mut self, on: bool) {
        self.screening = on;
    }

    /// Counters of how list selection went so far.
    pub fn stats(&self) -> SearchStats {
        self.stats
    }

    /// Finds the `k` (clamped to `1..=MAX_K`) nearest stored vectors to `query`, scanning the
    /// `nprobe` (clamped to `1..=MAX_NPROBE`) nearest non-empty lists. Results are sorted best
    /// first; fewer than `k` come back when the probed lists hold fewer vectors, none when
    /// the index is empty or the query is not finite.
    ///
    /// # Panics
    /// If `query.len() != index.dim()`.
    pub fn search(
        &mut self,
        index: &IvfIndex,
        query: &[f32],
        k: usize,
        nprobe: usize,
    ) -> &[Neighbour] {
        assert_eq!(
            query.len(),
            index.dim(),
            "query length must equal the index dimension"
        );
        self.n = 0;
        if index.ntotal() == 0 || !all_finite(query) {
            return &[];
        }
        let nprobe = nprobe.clamp(1, MAX_NPROBE);
        self.stats.queries += 1;
        let screened = match index.coarse() {
            Some(table) if self.screening => self.screen_single(index, table, query, nprobe),
            _ => false,
        };
        if !screened {
            self.select_exact(index, query, nprobe);
        }
        self.scan_lists(index, query, k);
        let n = self.emit(index);
        self.n = n;
        &self.out[..n]
    }

    /// The `m` (clamped to `1..=MAX_NPROBE`) non-empty lists nearest to `query`, as a search
    /// would pick them: (exact key, list) pairs, nearest first; the key is the squared L2
    /// distance, or the negated inner product. Empty for a non-finite query or an empty index.
    ///
    /// # Panics
    /// If `query.len() != index.dim()`.
    pub fn nearest_lists(&mut self, index: &IvfIndex, query: &[f32], m: usize) -> (&[f32], &[u32]) {
        assert_eq!(
            query.len(),
            index.dim(),
            "query length must equal the index dimension"
        );
        self.probes.reset(1);
        if index.ntotal() == 0 || !all_finite(query) {
            return (&[], &[]);
        }
        let m = m.clamp(1, MAX_NPROBE);
        let screened = match index.coarse() {
            Some(table) if self.screening => self.screen_single(index, table, query, m),
            _ => false,
        };
        if !screened {
            self.select_exact(index, query, m);
        }
        (self.probes.keys(), self.probes.vals())
    }

    /// Searches up to [`BLOCK`] queries at once (`queries` holds whole rows of `dim`): one pass
    /// over the centroid table serves them all, then each query's lists are scanned. The
    /// results are the same as [`search`](Self::search) query by query. Allocation-free.
    ///
    /// # Panics
    /// If `queries.len()` is not a multiple of `index.dim()` or holds more than [`BLOCK`] rows.
    pub fn search_block(
        &mut self,
        index: &IvfIndex,
        queries: &[f32],
        k: usize,
        nprobe: usize,
    ) -> &BlockResults {
        let d = index.dim();
        assert!(
            d > 0 && queries.len().is_multiple_of(d),
            "queries must be whole rows of the index dimension"
        );
        let m = queries.len() / d;
        assert!(m <= BLOCK, "a block holds at most {BLOCK} queries, got {m}");
        self.block.m = m;
        self.block.lens = [0; BLOCK];
        let nprobe = nprobe.clamp(1, MAX_NPROBE);
        // The shared pass uses 8-bit queries, so indexes below `MIN_BYTE_QUERY_DIM` search query
        // by query (with the 16-bit screen); a block of one query shares nothing and takes the
        // single-query screen, which is cheaper than the tile kernel for one row of queries.
        let shared = self.screening
            && m > 1
            && nprobe <= BLOCK_MAX_NPROBE
            && index.ntotal() > 0
            && d >= MIN_BYTE_QUERY_DIM;
        let table = match index.coarse() {
            Some(t) if shared => t,
            _ => {
                for (qi, q) in queries.chunks_exact(d).enumerate() {
                    let n = self.search(index, q, k, nprobe).len();
                    self.block.neighbours[qi][..n].copy_from_slice(&self.out[..n]);
                    self.block.lens[qi] = n;
                }
                return &self.block;
            }
        };

        // Screen every query with one pass over the table.
        let mut live = [false; BLOCK];
        for (qi, q) in queries.chunks_exact(d).enumerate() {
            live[qi] = all_finite(q);
            let qb = &mut self.block_queries[qi * d..(qi + 1) * d];
            if live[qi] {
                let qn2 = (self.kernels.dot)(q, q);
                let (t, eq) = self
                    .kernels
                    .quantise_u8(q, &mut self.centroid.query_i16[..d], qb);
                self.block_screens[qi].begin(nprobe, qn2, t, eq, &table.bounds, false);
            } else {
                qb.fill(U8_QUERY_OFFSET as u8);
            }
        }
        let (rows, sums, nrows) = (table.rows(), table.sums(), table.row_count());
        let qs = &self.block_queries[..m * d];
        let mut base = 0;
        while base < nrows {
            let r = BLOCK_CHUNK.min(nrows - base);
            let dots = &mut self.block_dots[..m * r];
            let chunk = base..base + r;
            let tile = &rows[base * d..(base + r) * d];
            (self.kernels.dot_u8_tile)(qs, d, tile, &sums[chunk], dots);
            for qi in 0..m {
                let s = &mut self.block_screens[qi];
                if live[qi] && !s.failed {
                    s.offer(&table.bounds, base, &dots[qi * r..(qi + 1) * r]);
                }
            }
            base += r;
        }

        // Re-check and scan each query's lists, each query's likely lists loading while the
        // query before it is scanned (so the re-check need not start their loads again).
        let prefetch_query = |s: &BlockScreen, live: bool| {
            if live && !s.failed {
                prefetch_lists(index, table, s.upper.vals());
            }
        };
        prefetch_query(&self.block_screens[0], live[0]);
        for (qi, q) in queries.chunks_exact(d).enumerate() {
            if qi + 1 < m {
                prefetch_query(&self.block_screens[qi + 1], live[qi + 1]);
            }
            if !live[qi] {
                continue;
            }
            if self.block_screens[qi].failed {
                let n = self.search(index, q, k, nprobe).len();
                self.block.neighbours[qi][..n].copy_from_slice(&self.out[..n]);
                self.block.lens[qi] = n;
                continue;
            }
            self.stats.queries += 1;
            self.probes.reset(nprobe);
            let exact = self.exact_fn(index);
            let s = &self.block_screens[qi];
            self.stats.rechecked += recheck(
                s.survivors(),
                &[],
                index,
                table,
                q,
                &exact,
                &mut self.probes,
            );
            self.scan_lists(index, q, k);
            let n = self.emit(index);
            self.block.neighbours[qi][..n].copy_from_slice(&self.out[..n]);
            self.block.lens[qi] = n;
        }
        self.n = 0;
        &self.block
    }

    /// The exact list key: squared L2, or negated inner product (smaller is nearer).
    fn exact_fn(&self, index: &IvfIndex) -> impl Fn(&[f32], &[f32]) -> f32 {
        let (l2sq, dot) = (self.kernels.l2sq, self.kernels.dot);
        let ip = index.metric() == Metric::InnerProduct;
        move |q: &[f32], c: &[f32]| if ip { -dot(q, c) } else { l2sq(q, c) }
    }

    /// Screens the 8-bit table, then re-checks the survivors exactly into `self.probes`.
    /// Returns false when the screen could not narrow the lists down (nothing selected).
    fn screen_single(
        &mut self,
        index: &IvfIndex,
        table: &CodedRows,
        query: &[f32],
        nprobe: usize,
    ) -> bool {
        match self.centroid.run(&self.kernels, table, query, nprobe) {
            Screened::Failed => return false,
            Screened::Narrowed { rescreened } => self.stats.rescreened += rescreened as u64,
        }
        self.probes.reset(nprobe);
        let exact = self.exact_fn(index);
        let c = &self.centroid;
        self.stats.rechecked += recheck(
            c.survivors(),
            c.likely(),
            index,
            table,
            query,
            &exact,
            &mut self.probes,
        );
        true
    }

    /// Picks the `nprobe` nearest non-empty lists into `self.probes` by the exact f32
    /// distance to every centroid.
    fn select_exact(&mut self, index: &IvfIndex, query: &[f32], nprobe: usize) {
        self.stats.exact_scans += 1;
        self.probes.reset(nprobe);
        let d = index.dim();
        let offsets = index.list_offsets();
        let centroids = index.centroids();
        let exact = self.exact_fn(index);
        for (l, c) in centroids.chunks_exact(d).enumerate() {
            if offsets[l + 1] == offsets[l] {
                continue; // an empty list can never serve a neighbour: take the next-nearest
            }
            self.probes.push(exact(query, c), l as u32);
        }
    }

    /// Scans the lists in `self.probes` into `self.best`.
    fn scan_lists(&mut self, index: &IvfIndex, query: &[f32], k: usize) {
        self.best.reset(k);
        // A spilled index stores some vectors in two lists: report each once when more than
        // one list is probed (one list never holds two copies of a vector).
        self.distinct = index.is_spilled() && self.probes.len() > 1;
        let codes = index.codes().filter(|_| self.screening);
        for p in 0..self.probes.len() {
            let list = self.probes.vals()[p] as usize;
            let range = index.list_range(list);
            if let Some(codes) = codes {
                if range.len() >= MIN_SCREENED_LIST
                    && self.screen_list(index, codes, query, k, list)
                {
                    continue;
                }
            }
            self.scan_list(index, query, range);
        }
    }

    /// Scans the stored vectors `range` exactly in f32 into `self.best`.
    fn scan_list(&mut self, index: &IvfIndex, query: &[f32], range: std::ops::Range<usize>) {
        let d = index.dim();
        let vectors = index.vectors();
        let ip = index.metric() == Metric::InnerProduct;
        let rows = if ip {
            self.kernels.dot_rows
        } else {
            self.kernels.l2sq_rows
        };
        self.stats.vectors_scanned += range.len() as u64;
        let (distinct, ids) = (self.distinct, index.ids());
        let (mut start, end) = (range.start, range.end);
        while start < end {
            let n = LIST_CHUNK.min(end - start);
            let dists = &mut self.dots[..n];
            rows(query, &vectors[start * d..(start + n) * d], dists);
            match (ip, distinct) {
                (true, false) => {
                    for (i, &v) in dists.iter().enumerate() {
                        self.best.push(-v, (start + i) as u32);
                    }
                }
                (false, false) => {
                    for (i, &v) in dists.iter().enumerate() {
                        self.best.push(v, (start + i) as u32);
                    }
                }
                (_, true) => {
                    let sign = if ip { -1.0 } else { 1.0 };
                    for (i, &v) in dists.iter().enumerate() {
                        self.best
                            .push_distinct(sign * v, (start + i) as u32, |p| ids[p as usize]);
                    }
                }
            }
            start += n;
        }
    }

    /// Screens list `list` through its 8-bit codes, then re-checks the surviving vectors with
    /// the exact f32 kernel into `self.best` (L2 only). Returns false, having pushed nothing,
    /// when the screen could not narrow the vectors down.
    fn screen_list(
        &mut self,
        index: &IvfIndex,
        codes: &CodedRows,
        query: &[f32],
        k: usize,
        list: usize,
    ) -> bool {
        let d = index.dim();
        let range = index.list_range(list);
        let c = &index.centroids()[list * d..(list + 1) * d];
        let p = &mut self.resid[..d];
        for ((p, &q), &c) in p.iter_mut().zip(query).zip(c) {
            *p = q - c;
        }
        let pn2 = (self.kernels.dot)(p, p);
        let (t, eq) = (self.kernels.quantise)(p, &mut self.centroid.query_i16[..d]);
        let s = &mut self.list_screen;
        s.begin(k, pn2, t, eq, &codes.bounds, true);
        s.ceiling = self.best.threshold();
        let q16 = &self.centroid.query_i16[..d];
        let (kernel, rows) = (self.kernels.dot_i8_rows, codes.rows());
        s.screen_rows(
            &codes.bounds,
            range.clone(),
            &mut self.centroid.idots,
            |r, out| kernel(q16, &rows[r.start * d..r.end * d], out),
        );
        if s.failed {
            self.stats.list_fallbacks += 1;
            return false;
        }
        self.stats.codes_screened += range.len() as u64;
        // Start every load at once, then compute the exact distances in storage order (ties
        // resolve as in a full scan).
        let vectors = index.vectors();
        for pos in s.survivors() {
            prefetch(vectors[pos * d..].as_ptr().cast(), d * 4);
        }
        let mut one = [0f32];
        let mut n = 0;
        let ids = index.ids();
        for pos in s.survivors() {
            (self.kernels.l2sq_rows)(query, &vectors[pos * d..(pos + 1) * d], &mut one);
            if self.distinct {
                self.best
                    .push_distinct(one[0], pos as u32, |p| ids[p as usize]);
            } else {
                self.best.push(one[0], pos as u32);
            }
            n += 1;
        }
        self.stats.vectors_rechecked += n;
        true
    }

    /// Writes `self.best` as neighbours into `self.out`; returns how many.
    fn emit(&mut self, index: &IvfIndex) -> usize {
        let sign = if index.metric() == Metric::InnerProduct {
            -1.0
        } else {
            1.0
        };
        let ids = index.ids();
        for (slot, (&key, &pos)) in self
            .out
            .iter_mut()
            .zip(self.best.keys().iter().zip(self.best.vals()))
        {
            *slot = Neighbour {
                distance: sign * key,
                id: ids[pos as usize],
                pos,
            };
        }
        self.best.len()
    }

    /// The results of the last search.
    pub fn last(&self) -> &[Neighbour] {
        &self.out[..self.n]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{IndexParts, ListParts, Metadata};
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    /// Lists built around `centroids` (each row goes to its nearest centroid, some lists empty).
    fn index(
        dim: usize,
        centroids: Vec<f32>,
        rows: &[f32],
        metric: Metric,
        empty_every: usize,
    ) -> IvfIndex {
        let nlist = centroids.len() / dim;
        let mut lists = vec![ListParts::default(); nlist];
        for (i, r) in rows.chunks_exact(dim).enumerate() {
            let l = (0..nlist)
                .filter(|l| empty_every == 0 || l % empty_every != 0)
                .min_by(|&a, &b| {
                    let da: f32 = r
                        .iter()
                        .zip(&centroids[a * dim..])
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum();
                    let db: f32 = r
                        .iter()
                        .zip(&centroids[b * dim..])
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum();
                    da.total_cmp(&db)
                })
                .unwrap();
            lists[l].ids.push(i as i64);
            lists[l].vectors.extend_from_slice(r);
        }
        let parts = IndexParts {
            dim,
            metric,
            nprobe: 1,
            centroids,
            lists,
            metadata: Metadata::default(),
        };
        IvfIndex::from_parts(&parts).unwrap()
    }

    /// Clustered rows: `centres` centres, rows a centre plus noise of `spread`.
    fn clustered(rng: &mut Rng, dim: usize, centres: &[f32], n: usize, spread: f32) -> Vec<f32> {
        let k = centres.len() / dim;
        let mut out = Vec::with_capacity(n * dim);
        for _ in 0..n {
            let c = ((rng.next() + 0.5) * k as f32) as usize % k;
            out.extend((0..dim).map(|j| centres[c * dim + j] + spread * rng.next()));
        }
        out
    }

    /// The counters after one fresh searcher searched every query (k 8, n_probe 1).
    fn single_search_stats(index: &IvfIndex, queries: &[f32]) -> SearchStats {
        let mut s = Searcher::new();
        for q in queries.chunks_exact(index.dim()) {
            s.search(index, q, 8, 1);
        }
        s.stats()
    }

    fn assert_same_as_exact(index: &IvfIndex, queries: &[f32], ks: &[usize], nprobes: &[usize]) {
        assert_same_as_exact_with(index, queries, ks, nprobes, true)
    }

    /// Screened searches equal exact ones bit for bit; with `scalar_ids`, the scalar kernels
    /// also return the same ids (only for data without near-ties that rounding may order
    /// differently).
    fn assert_same_as_exact_with(
        index: &IvfIndex,
        queries: &[f32],
        ks: &[usize],
        nprobes: &[usize],
        scalar_ids: bool,
    ) {
        let d = index.dim();
        let mut screened = Searcher::new();
        let mut exact = Searcher::new();
        exact.set_screening(false);
        let mut scalar = Searcher::with_kernels(Kernels::scalar());
        // The AVX2 set (what an AVX2-only machine runs) must give the same bits.
        let mut avx2 = Kernels::avx2_only().map(Searcher::with_kernels);
        for &k in ks {
            for &nprobe in nprobes {
                for (qi, q) in queries.chunks_exact(d).enumerate() {
                    let want = exact.search(index, q, k, nprobe).to_vec();
                    assert_eq!(
                        screened.search(index, q, k, nprobe),
                        &want[..],
                        "query {qi} k {k} nprobe {nprobe}"
                    );
                    if let Some(avx2) = avx2.as_mut() {
                        assert_eq!(
                            avx2.search(index, q, k, nprobe),
                            &want[..],
                            "avx2 kernels, query {qi} k {k} nprobe {nprobe}"
                        );
                    }
                    let got: Vec<i64> = scalar
                        .search(index, q, k, nprobe)
                        .iter()
                        .map(|n| n.id)
                        .collect();
                    let want_ids: Vec<i64> = want.iter().map(|n| n.id).collect();
                    assert!(
                        !scalar_ids || got == want_ids,
                        "scalar kernels, query {qi} k {k} nprobe {nprobe}"
                    );
                }
                for block in queries.chunks(BLOCK * d) {
                    let res = screened.search_block(index, block, k, nprobe).clone();
                    assert_eq!(res.len(), block.len() / d);
                    for (qi, q) in block.chunks_exact(d).enumerate() {
                        assert_eq!(
                            res.get(qi),
                            exact.search(index, q, k, nprobe),
                            "block query {qi} k {k} nprobe {nprobe}"
                        );
                    }
                }
            }
        }
        let stats = screened.stats();
        assert!(stats.queries > 0);
        println!("{stats:?}");
    }

    #[test]
    fn screening_selects_the_lists_an_exact_scan_selects() {
        let mut rng = Rng(1);
        for (dim, metric) in [
            (48, Metric::L2),
            (77, Metric::L2),
            (64, Metric::InnerProduct),
            (256, Metric::L2),
        ] {
            let centres: Vec<f32> = (0..12 * dim).map(|_| 4.0 * rng.next()).collect();
            let rows = clustered(&mut rng, dim, &centres, 1500, 1.0);
            // Centroids: perturbed samples (many near-ties between centroids of one cluster).
            let centroids: Vec<f32> = rows[..60 * dim]
                .iter()
                .map(|v| v + 0.05 * rng.next())
                .collect();
            let index = index(dim, centroids, &rows, metric, 7);
            assert!(index.coarse().is_some());
            let queries = clustered(&mut rng, dim, &centres, 150, 1.2);
            assert_same_as_exact(&index, &queries, &[1, 8, 32], &[1, 2, 5, 64]);
        }
    }

    #[test]
    fn screening_survives_duplicate_and_extreme_centroids() {
        let mut rng = Rng(2);
        let dim = 40;
        let mut centroids: Vec<f32> = (0..30 * dim).map(|_| rng.next()).collect();
        // Exact duplicates (ties resolve to the lower list, like the exact scan).
        let dup: Vec<f32> = centroids[..5 * dim].to_vec();
        centroids.extend_from_slice(&dup);
        // Huge and tiny magnitudes (outside the half range before scaling).
        centroids.extend((0..dim).map(|j| if j % 2 == 0 { 1e17 } else { -3e16 }));
        centroids.extend((0..dim).map(|j| 1e-30 * j as f32));
        centroids.extend((0..dim).map(|j| if j == 3 { 1e-8 } else { 0.0 }));
        let rows: Vec<f32> = (0..800 * dim).map(|_| rng.next()).collect();
        let index = index(dim, centroids, &rows, Metric::L2, 0);
        let mut queries: Vec<f32> = (0..60 * dim).map(|_| rng.next()).collect();
        queries.extend_from_slice(&rows[..5 * dim]);
        queries.extend(std::iter::repeat_n(0.0, dim));
        assert_same_as_exact(&index, &queries, &[1, 8], &[1, 3, 40]);
    }

    #[test]
    fn screening_bounds_the_error_of_the_8_bit_query() {
        // Centroids of whole numbers with a largest magnitude of exactly 127 are coded without
        // error, so what separates a centroid's screening key from its exact one is the
        // quantisation of the query. Queries land between many such centroids: a bound that
        // leaves out the error of narrowing the query to 8 bits drops the nearest list.
        let mut rng = Rng(5);
        let dim = 160;
        let mut centroids = Vec::new();
        for l in 0..400 {
            let mut c: Vec<f32> = (0..dim).map(|_| (254.0 * rng.next()).round()).collect();
            c[l % dim] = if l % 2 == 0 { 127.0 } else { -127.0 };
            centroids.extend(c);
        }
        let rows: Vec<f32> = (0..2000 * dim).map(|_| 250.0 * rng.next()).collect();
        let index = index(dim, centroids, &rows, Metric::L2, 0);
        let queries: Vec<f32> = (0..300 * dim).map(|_| 250.0 * rng.next()).collect();
        assert_same_as_exact_with(&index, &queries, &[1, 8], &[1, 2], false);
    }

    #[test]
    fn a_failed_8_bit_screen_is_screened_again_with_16_bits() {
        // A tight cluster of 800 centroids (whole numbers coded without error, a few units
        // apart) around the queries: the 8-bit query's error covers the whole cluster, which
        // is more than a screen keeps, and the 16-bit query narrows it down to a few.
        let mut rng = Rng(6);
        let dim = 160;
        let base: Vec<f32> = (0..dim)
            .map(|j| {
                if j == 0 {
                    127.0
                } else {
                    (200.0 * rng.next()).round()
                }
            })
            .collect();
        let mut centroids = Vec::new();
        for _ in 0..800 {
            centroids.extend(base.iter().enumerate().map(|(j, &b)| {
                if j == 0 {
                    b
                } else {
                    b + (2.0 * rng.next()).round()
                }
            }));
        }
        for l in 0..100 {
            let mut c: Vec<f32> = (0..dim).map(|_| (254.0 * rng.next()).round()).collect();
            c[1 + l % (dim - 1)] = 127.0;
            centroids.extend(c);
        }
        // Rows around the cluster, so that its lists are not empty (empty lists never compete).
        let near =
            |rng: &mut Rng| -> Vec<f32> { base.iter().map(|&b| b + 20.0 * rng.next()).collect() };
        let rows: Vec<f32> = (0..6000).flat_map(|_| near(&mut rng)).collect();
        let index = index(dim, centroids, &rows, Metric::L2, 0);
        let queries: Vec<f32> = (0..100).flat_map(|_| near(&mut rng)).collect();
        let st = single_search_stats(&index, &queries);
        assert!(st.rescreened > 50, "{st:?}");
        assert!(st.exact_scans < st.rescreened / 2, "{st:?}");
        assert_same_as_exact(&index, &queries, &[1, 8], &[1, 3]);
    }

    #[test]
    fn list_screening_returns_the_full_scans_neighbours_bit_for_bit() {
        let mut rng = Rng(5);
        for dim in [128, 131, 256, 768] {
            let centres: Vec<f32> = (0..6 * dim).map(|_| 3.0 * rng.next()).collect();
            let mut rows = clustered(&mut rng, dim, &centres, 1200, 0.6);
            // Exact duplicates (ties resolve in storage order), near-duplicates, a far outlier
            // and rows of very different magnitudes in the same lists.
            let dup = rows[..20 * dim].to_vec();
            rows.extend_from_slice(&dup);
            let near: Vec<f32> = dup.iter().map(|v| v + 1e-3 * rng.next()).collect();
            rows.extend_from_slice(&near);
            rows.extend((0..dim).map(|j| centres[j] + 1e4 * rng.next()));
            rows.extend((0..dim).map(|j| centres[dim + j] * (1.0 + 1e-7 * j as f32)));
            // 200 identical rows: more candidates than a list screen keeps (falls back).
            let same: Vec<f32> = (0..dim).map(|j| centres[2 * dim + j] + 0.3).collect();
            for _ in 0..200 {
                rows.extend_from_slice(&same);
            }
            let centroids: Vec<f32> = centres
                .iter()
                .chain(&rows[..10 * dim])
                .map(|v| v + 0.01 * rng.next())
                .collect();
            let index = index(dim, centroids, &rows, Metric::L2, 0);
            assert!(index.codes().is_some());
            // Queries: stored rows (distance 0), perturbed rows, fresh points, the duplicate.
            let mut queries = rows[..30 * dim].to_vec();
            queries.extend(rows[..30 * dim].iter().map(|v| v + 0.05 * rng.next()));
            queries.extend(clustered(&mut rng, dim, &centres, 60, 1.5));
            queries.extend_from_slice(&same);
            let before = Searcher::new().stats();
            assert_eq!(before.codes_screened, 0);
            assert_same_as_exact_with(&index, &queries, &[1, 8, 32], &[1, 3], false);
            let st = single_search_stats(&index, &queries);
            assert!(st.codes_screened > 0, "{st:?}");
            assert!(st.vectors_rechecked < st.codes_screened / 2, "{st:?}");
            assert!(st.list_fallbacks > 0, "{st:?}");
        }
    }

    #[test]
    fn inner_product_indexes_scan_lists_in_f32() {
        let mut rng = Rng(6);
        let dim = 32;
        let centroids: Vec<f32> = (0..4 * dim).map(|_| rng.next()).collect();
        let rows: Vec<f32> = (0..400 * dim).map(|_| rng.next()).collect();
        let index = index(dim, centroids, &rows, Metric::InnerProduct, 0);
        assert!(index.codes().is_none());
        let mut s = Searcher::new();
        s.search(&index, &rows[..dim], 8, 1);
        assert_eq!(s.stats().codes_screened, 0);
        assert!(s.stats().vectors_scanned > 0);
    }

    #[test]
    fn huge_and_tiny_queries_fall_back_to_the_exact_scan() {
        let mut rng = Rng(3);
        let dim = 16;
        // Everything near 1e19 · (1, …, 1): ‖q‖² and ‖c‖² overflow f32 (the screen cannot bound
        // them), the distances (about 1e35) do not.
        let near = |rng: &mut Rng, n: usize| -> Vec<f32> {
            (0..n * dim)
                .map(|_| 1e19 * (1.0 + 0.01 * rng.next()))
                .collect()
        };
        let centroids = near(&mut rng, 20);
        let rows = near(&mut rng, 300);
        let huge = index(dim, centroids, &rows, Metric::L2, 0);
        let q = near(&mut rng, 1);
        let mut s = Searcher::new();
        let mut e = Searcher::new();
        e.set_screening(false);
        let want = e.search(&huge, &q, 4, 1).to_vec();
        assert_eq!(want.len(), 4);
        assert!(want
            .iter()
            .all(|n| n.distance.is_finite() && n.distance > 1e30));
        assert_eq!(s.search(&huge, &q, 4, 1), &want[..]);
        assert_eq!(s.stats().exact_scans, 1);

        // A query too small to quantise (below 2⁻¹⁰⁰) against ordinary data.
        let centroids: Vec<f32> = (0..20 * dim).map(|_| rng.next()).collect();
        let rows: Vec<f32> = (0..300 * dim).map(|_| rng.next()).collect();
        let ordinary = index(dim, centroids, &rows, Metric::L2, 0);
        let q: Vec<f32> = (0..dim).map(|_| 1e-35 * rng.next()).collect();
        let want = e.search(&ordinary, &q, 4, 1).to_vec();
        assert_eq!(want.len(), 4);
        assert_eq!(s.search(&ordinary, &q, 4, 1), &want[..]);
        assert_eq!(s.stats().exact_scans, 2);
    }

    static TILE_CALLS: AtomicUsize = AtomicUsize::new(0);
    static ROW_CALLS: AtomicUsize = AtomicUsize::new(0);

    fn counted_tile(queries: &[u8], dim: usize, rows: &[i8], sums: &[i32], out: &mut [i32]) {
        TILE_CALLS.fetch_add(1, Ordering::Relaxed);
        (Kernels::detect().dot_u8_tile)(queries, dim, rows, sums, out)
    }

    fn counted_rows(q: &[u8], rows: &[i8], sums: &[i32], out: &mut [i32]) {
        ROW_CALLS.fetch_add(1, Ordering::Relaxed);
        (Kernels::detect().dot_u8_rows)(q, rows, sums, out)
    }

    #[test]
    fn block_search_handles_partial_blocks_and_non_finite_rows() {
        let mut rng = Rng(4);
        // From MIN_BYTE_QUERY_DIM on, a block shares one pass over the centroid table (below,
        // it searches query by query, which would compare the single search with itself).
        let dim = MIN_BYTE_QUERY_DIM;
        let centroids: Vec<f32> = (0..40 * dim).map(|_| rng.next()).collect();
        let rows: Vec<f32> = (0..900 * dim).map(|_| rng.next()).collect();
        let index = index(dim, centroids, &rows, Metric::L2, 5);
        let mut queries: Vec<f32> = (0..5 * dim).map(|_| rng.next()).collect();
        queries[2 * dim + 3] = f32::NAN;
        // Counted screening kernels (only this test uses them): the tile kernel is the shared
        // pass, the row kernel the single-query screen.
        let mut s = Searcher::with_kernels(Kernels {
            dot_u8_tile: counted_tile,
            dot_u8_rows: counted_rows,
            ..Kernels::detect()
        });
        let mut e = Searcher::new();
        let mut x = Searcher::new();
        x.set_screening(false);
        let (tiles, singles) = (
            TILE_CALLS.load(Ordering::Relaxed),
            ROW_CALLS.load(Ordering::Relaxed),
        );
        let res = s.search_block(&index, &queries, 8, 1).clone();
        assert!(
            TILE_CALLS.load(Ordering::Relaxed) > tiles,
            "the shared block screen did not run"
        );
        assert_eq!(
            ROW_CALLS.load(Ordering::Relaxed),
            singles,
            "a query of the block was screened on its own"
        );
        assert_eq!(res.len(), 5);
        assert!(res.get(2).is_empty());
        for qi in [0, 1, 3, 4] {
            let q = &queries[qi * dim..(qi + 1) * dim];
            let want = x.search(&index, q, 8, 1).to_vec();
            assert_eq!(want.len(), 8);
            assert_eq!(res.get(qi), &want[..], "query {qi}");
            assert_eq!(res.get(qi), e.search(&index, q, 8, 1), "query {qi}");
        }
        assert!(s.search_block(&index, &[], 8, 1).is_empty());
    }
}
