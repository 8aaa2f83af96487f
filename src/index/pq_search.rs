//! Search of an IVF-PQ FastScan index (4-bit codes, faiss `IndexIVFPQFastScan`), optionally
//! re-ranked with its exact vectors (faiss `IndexRefineFlat`), replicating faiss 1.12's `search`
//! so that it returns the same ids and distances, near-ties aside:
//!
//! 1. Coarse assignment: the `nprobe` nearest centroids by exact f32 distance (faiss's flat
//!    quantizer; its heap and tie rule).
//! 2. The float table (`LUT`, 16 entries per sub-quantizer): one per query (`x4fs`, and
//!    inner product by residual) or one per (query, probed list) (`x4fsr` with L2, through
//!    faiss's precomputed-table formula `‖r‖² + 2⟨c, r⟩ − 2⟨x, r⟩` with the coarse distance
//!    as bias).
//! 3. Quantisation to bytes and a 16-bit bias per list exactly as faiss's
//!    `quantize_LUT_and_bias`: per sub-quantizer minimum, `a = min(255 / max span,
//!    65535 / max total span)`, `floor((x − min)·a + 0.5)`; `b` the sum of minimums.
//! 4. The 4-bit scan of every probed list, 32 vectors at a time ([`super::fastscan`]), 16-bit
//!    sums plus the list's bias (wrapping, as faiss's), kept in faiss's heap of `k` (or
//!    `k·k_factor` with refinement) with its thresholds and tie rule, lists visited in faiss's
//!    order (by list number for blocks of 32, by coarse rank otherwise).
//! 5. Conversion back to float, `b + d / a` (faiss: `d·(1/a) + b`).
//! 6. With refinement: exact distances of the candidates to the query, and faiss's
//!    `reorder_2_heaps` to keep the best `k`.
//!
//! Distances follow faiss's sign conventions: with [`Metric::L2`] they are squared Euclidean
//! distances (smaller is nearer, results ascending); with [`Metric::InnerProduct`] they are
//! inner products, similarities (larger is nearer, results descending). Without refinement they
//! are the quantised estimates faiss returns; with refinement the exact ones.
//!
//! Slots that find no vector (fewer candidates than `k`) come back as faiss returns them: id
//! −1, with faiss's placeholder distance.
//!
//! The searcher's scratch is sized when it is made; a search does not allocate, lock or call
//! the OS.

use super::fastscan::{FastScanKernels, GROUP};
use super::kernels::{all_finite, prefetch, Kernels};
use super::screen::{CentroidScreen, Screened};
use super::search::MAX_NPROBE;
use super::PqIndex;
use crate::format::{Metric, PQ_KSUB};

/// One neighbour found by a [`PqSearcher`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PqNeighbour {
    /// The vector's id (−1 for an empty slot).
    pub id: i64,
    /// faiss's distance (see the module docs for its sign and meaning).
    pub distance: f32,
    /// The list holding it (for [`PqIndex::neighbour_vector`]).
    pub list: u32,
    /// Its position in that list.
    pub offset: u32,
}

/// How the searcher quantises tables: faiss's way, or deliberately wrong (for tests showing
/// that parity checks can fail).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LutRounding {
    /// faiss: `floor((x − min)·a + 0.5)` and the per-list bias.
    Faiss,
    /// Wrong: `floor((x − min)·a)`.
    Truncate,
    /// Wrong: the per-list bias left out.
    NoBias,
}

/// Comparators of faiss's heaps (`CMax` keeps the smallest values, `CMin` the largest).
#[derive(Clone, Copy)]
struct Cmp {
    max: bool,
}

impl Cmp {
    #[inline]
    fn cmp<T: PartialOrd>(self, a: T, b: T) -> bool {
        if self.max {
            a > b
        } else {
            a < b
        }
    }
    #[inline]
    fn cmp2<T: PartialOrd>(self, a1: T, b1: T, a2: i64, b2: i64) -> bool {
        if self.max {
            a1 > b1 || (a1 == b1 && a2 > b2)
        } else {
            a1 < b1 || (a1 == b1 && a2 < b2)
        }
    }
}

/// faiss's binary heap (`utils/Heap.h`) over values, ids and a payload (list and offset),
/// with faiss's `heap_replace_top`, `heap_pop`, `heap_push` and `heap_reorder`.
struct Heap<'a, T> {
    c: Cmp,
    val: &'a mut [T],
    ids: &'a mut [i64],
    pay: &'a mut [u64],
}

impl<T: Copy + PartialOrd> Heap<'_, T> {
    fn k(&self) -> usize {
        self.val.len()
    }

    fn fill(&mut self, neutral: T) {
        self.val.fill(neutral);
        self.ids.fill(-1);
        self.pay.fill(0);
    }

    /// Sifts `(v, id)` down from the top of the heap of the first `k` entries.
    fn sift_down(&mut self, k: usize, v: T, id: i64, p: u64) {
        let c = self.c;
        let mut i = 1;
        loop {
            let i1 = i << 1;
            let i2 = i1 + 1;
            if i1 > k {
                break;
            }
            let child = if i2 == k + 1
                || c.cmp2(
                    self.val[i1 - 1],
                    self.val[i2 - 1],
                    self.ids[i1 - 1],
                    self.ids[i2 - 1],
                ) {
                i1
            } else {
                i2
            };
            if c.cmp2(v, self.val[child - 1], id, self.ids[child - 1]) {
                break;
            }
            self.shift(i, child);
            i = child;
        }
        self.set(i, v, id, p);
    }

    /// Moves entry `from` to entry `to` (1-based, as faiss's heaps).
    #[inline]
    fn shift(&mut self, to: usize, from: usize) {
        self.val[to - 1] = self.val[from - 1];
        self.ids[to - 1] = self.ids[from - 1];
        self.pay[to - 1] = self.pay[from - 1];
    }

    /// Writes entry `i` (1-based).
    #[inline]
    fn set(&mut self, i: usize, v: T, id: i64, p: u64) {
        self.val[i - 1] = v;
        self.ids[i - 1] = id;
        self.pay[i - 1] = p;
    }

    fn replace_top(&mut self, v: T, id: i64, p: u64) {
        let k = self.k();
        self.sift_down(k, v, id, p);
    }

    fn pop(&mut self, k: usize) {
        let (v, id, p) = (self.val[k - 1], self.ids[k - 1], self.pay[k - 1]);
        // As faiss: the last entry sifts down from the top over all k entries.
        self.sift_down(k, v, id, p);
    }

    /// `heap_push` of `(v, id)` as entry `k` (1-based) of a heap of `k − 1`.
    fn push(&mut self, k: usize, v: T, id: i64, p: u64) {
        let c = self.c;
        let mut i = k;
        while i > 1 {
            let f = i >> 1;
            if !c.cmp2(v, self.val[f - 1], id, self.ids[f - 1]) {
                break;
            }
            self.shift(i, f);
            i = f;
        }
        self.set(i, v, id, p);
    }

    /// `heap_reorder`: sorts best first, entries with id −1 moved to the end as `neutral`.
    fn reorder(&mut self, neutral: T) -> usize {
        let k = self.k();
        let mut ii = 0;
        for i in 0..k {
            let (v, id, p) = (self.val[0], self.ids[0], self.pay[0]);
            self.pop(k - i);
            self.set(k - ii, v, id, p);
            if id != -1 {
                ii += 1;
            }
        }
        self.val.copy_within(k - ii.., 0);
        self.ids.copy_within(k - ii.., 0);
        self.pay.copy_within(k - ii.., 0);
        for j in ii..k {
            self.set(j + 1, neutral, -1, 0);
        }
        ii
    }
}

/// Sequential `Σ a·b` with fused multiply-adds (faiss's small-dimension loops as the compiler
/// contracts them).
#[inline(always)]
pub(super) fn dot_seq(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |s, (x, y)| x.mul_add(*y, s))
}

/// The float table of sub-quantizer `j` (16 entries) for a query sub-vector: squared distances
/// (L2) or inner products.
#[inline(always)]
fn sub_table(x: &[f32], book: &[f32], dsub: usize, l2: bool, out: &mut [f32]) {
    for (c, o) in out.iter_mut().enumerate().take(PQ_KSUB) {
        let e = &book[c * dsub..(c + 1) * dsub];
        *o = if dsub == 2 {
            // faiss's dsub = 2 kernel: two products added (no fused multiply-add).
            if l2 {
                let (d0, d1) = (x[0] - e[0], x[1] - e[1]);
                d0 * d0 + d1 * d1
            } else {
                x[0] * e[0] + x[1] * e[1]
            }
        } else if l2 {
            x.iter()
                .zip(e)
                .fold(0.0f32, |s, (a, b)| (a - b).mul_add(a - b, s))
        } else {
            dot_seq(x, e)
        };
    }
}

/// Whether the table code can run compiled for FMA and SSE4.1.
fn has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Fixed-scratch searcher for [`PqIndex`]es up to the sizes it was made for.
pub struct PqSearcher {
    kernels: Kernels,
    fastscan: FastScanKernels,
    max_dim: usize,
    max_k: usize,
    max_nprobe: usize,
    max_base: usize,
    lut_f: Vec<f32>,
    lut_ip: Vec<f32>,
    lut_q: Vec<u8>,
    mins: Vec<f32>,
    bias_f: Vec<f32>,
    bias_q: Vec<u16>,
    coarse_d: Vec<f32>,
    coarse_i: Vec<i64>,
    coarse_p: Vec<u64>,
    /// (list, coarse rank) in visiting order.
    visit: Vec<(u32, u32)>,
    heap_d: Vec<u16>,
    heap_i: Vec<i64>,
    heap_p: Vec<u64>,
    base_d: Vec<f32>,
    out_d: Vec<f32>,
    out_i: Vec<i64>,
    out_p: Vec<u64>,
    pub(super) results: Vec<PqNeighbour>,
    /// The neighbours' vectors for a blend or an expansion, `max_k × max_dim`.
    pub(super) vecs: Vec<f32>,
    rounding: LutRounding,
    /// The CPU has FMA and SSE4.1: the table code runs compiled for them.
    fma: bool,
    /// The last search's `(a, b)`: 16-bit distance `d` stands for `b + d / a`.
    scale: (f32, f32),
    /// List selection screens the index's 8-bit centroid table (the default).
    screening: bool,
    screen: CentroidScreen,
}

/// The largest `k·k_factor` a searcher accepts for one search (faiss switches from its heap to
/// a reservoir above 20, whose tie order this searcher does not replicate).
pub const PQ_MAX_BASE_K: usize = 1 << 12;

/// `n` copies of `v` with every page written, so the first search takes no first-touch page
/// fault (a zeroed allocation may be untouched pages; volatile so it is not optimised away).
fn resident<T: Copy>(v: T, n: usize) -> Vec<T> {
    let mut out = vec![v; n];
    let step = (4096 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (0..n).step_by(step) {
        // SAFETY: i < n.
        unsafe { std::ptr::write_volatile(out.as_mut_ptr().add(i), v) };
    }
    out
}

/// An empty vector with room for `n` neighbours, its pages written.
fn resident_capacity(n: usize) -> Vec<PqNeighbour> {
    let blank = PqNeighbour {
        id: -1,
        distance: 0.0,
        list: 0,
        offset: 0,
    };
    let mut out = resident(blank, n);
    out.clear();
    out
}

impl PqSearcher {
    /// A searcher for indexes of dimension up to `max_dim`, `k` up to `max_k`, `nprobe` up to
    /// `max_nprobe` and refinement factors up to `max_k_factor` (1 for unrefined indexes).
    pub fn new(max_dim: usize, max_k: usize, max_nprobe: usize, max_k_factor: f32) -> PqSearcher {
        let max_k = max_k.max(1);
        let max_nprobe = max_nprobe.max(1);
        let max_base =
            ((max_k as f32 * max_k_factor.max(1.0)) as usize).clamp(max_k, PQ_MAX_BASE_K);
        let max_m2 = max_dim.next_multiple_of(2).max(2);
        PqSearcher {
            kernels: Kernels::detect(),
            fastscan: FastScanKernels::detect(),
            max_dim,
            max_k,
            max_nprobe,
            max_base,
            lut_f: resident(0.0, max_nprobe * max_dim * PQ_KSUB),
            lut_ip: resident(0.0, max_dim * PQ_KSUB),
            lut_q: resident(0, max_nprobe * max_m2 * PQ_KSUB),
            mins: resident(0.0, max_nprobe * max_dim),
            bias_f: resident(0.0, max_nprobe),
            bias_q: resident(0, max_nprobe),
            coarse_d: resident(0.0, max_nprobe),
            coarse_i: resident(0, max_nprobe),
            coarse_p: resident(0, max_nprobe),
            visit: resident((0, 0), max_nprobe),
            heap_d: resident(0, max_base),
            heap_i: resident(0, max_base),
            heap_p: resident(0, max_base),
            base_d: resident(0.0, max_base),
            out_d: resident(0.0, max_k),
            out_i: resident(0, max_k),
            out_p: resident(0, max_k),
            results: resident_capacity(max_k),
            vecs: resident(0.0, max_k * max_dim),
            rounding: LutRounding::Faiss,
            fma: has_fma(),
            scale: (1.0, 0.0),
            screening: true,
            screen: CentroidScreen::new(),
        }
    }

    /// A searcher sized for `index` (see [`new`](Self::new)).
    pub fn for_index(index: &PqIndex, max_k: usize, max_nprobe: usize) -> PqSearcher {
        PqSearcher::new(
            index.dim,
            max_k,
            max_nprobe,
            index.k_factor().unwrap_or(1.0),
        )
    }

    /// Uses these FastScan kernels (e.g. the scalar ones, to compare).
    pub fn with_fastscan_kernels(mut self, k: FastScanKernels) -> PqSearcher {
        self.fastscan = k;
        self
    }

    /// Runs the table code compiled portably even where FMA and SSE4.1 are present (for
    /// comparisons: both give the same bits).
    #[doc(hidden)]
    pub fn with_portable_tables(mut self) -> PqSearcher {
        self.fma = false;
        self
    }

    /// The FastScan kernels in use.
    pub fn fastscan_kernels(&self) -> FastScanKernels {
        self.fastscan
    }

    /// The last search's table quantisation `(a, b)`: a 16-bit distance `d` stands for
    /// `b + d / a`, so `1 / a` is one quantisation step.
    pub fn last_quantisation(&self) -> (f32, f32) {
        self.scale
    }

    /// Switches the 8-bit centroid screen of list selection on (the default) or off. Off,
    /// every search computes the exact distance to every centroid: the same lists, more bytes
    /// read. For comparisons and tests.
    pub fn set_screening(&mut self, on: bool) {
        self.screening = on;
    }

    #[doc(hidden)]
    pub fn set_lut_rounding(&mut self, r: LutRounding) {
        self.rounding = r;
    }

    /// Does a search of `index` with these parameters fit this searcher's scratch?
    pub fn fits(&self, index: &PqIndex, k: usize, nprobe: usize) -> bool {
        index.dim <= self.max_dim
            && (1..=self.max_k).contains(&k)
            && (1..=self.max_nprobe).contains(&nprobe)
            && index.base_k(k) <= self.max_base
    }

    /// The `k` neighbours of `query` in `index`, probing `nprobe` lists (capped at the list
    /// count), as faiss's `search` returns them (best first; see the module docs). Panics if
    /// the search does not [`fit`](Self::fits) or `query` is not `dim` values.
    pub fn search(
        &mut self,
        index: &PqIndex,
        query: &[f32],
        k: usize,
        nprobe: usize,
    ) -> &[PqNeighbour] {
        assert!(
            self.fits(index, k, nprobe),
            "search exceeds the searcher's scratch"
        );
        assert_eq!(query.len(), index.dim, "query dimension");
        let nprobe = nprobe.min(index.nlist());
        let l2 = index.metric == Metric::L2;
        let cmp = Cmp { max: l2 };
        self.coarse(index, query, nprobe, cmp);
        let (a, b) = self.tables(index, query, nprobe);
        self.scale = (a, b);
        let kb = index.base_k(k);
        self.scan(index, nprobe, kb, cmp);
        // Back to float: faiss's `heap_dis * (1/a) + b` (contracted to one fused multiply-add).
        let one_a = 1.0 / a;
        for j in 0..kb {
            self.base_d[j] = (self.heap_d[j] as f32).mul_add(one_a, b);
        }
        self.results.clear();
        match index.refine_vectors() {
            None => {
                for j in 0..k {
                    let p = self.heap_p[j];
                    self.results.push(PqNeighbour {
                        id: self.heap_i[j],
                        distance: self.base_d[j],
                        list: (p >> 32) as u32,
                        offset: p as u32,
                    });
                }
            }
            Some(vectors) => {
                self.refine(vectors, index.dim, query, k, kb, cmp);
                for j in 0..k {
                    let p = self.out_p[j];
                    self.results.push(PqNeighbour {
                        id: self.out_i[j],
                        distance: self.out_d[j],
                        list: (p >> 32) as u32,
                        offset: p as u32,
                    });
                }
            }
        }
        &self.results
    }

    /// The `nprobe` nearest lists, best first, then the visiting order.
    ///
    /// The exact f32 distance of every centroid, as faiss's flat quantizer computes them, kept
    /// in faiss's heap; or, when the index has an 8-bit centroid table, the same distances of
    /// only the centroids its screen cannot rule out (`screen.rs`). Those are visited in list
    /// order like the full scan, and every centroid left out is farther than `nprobe` others,
    /// so the heap ends with the same lists in the same order, ties included.
    fn coarse(&mut self, index: &PqIndex, x: &[f32], nprobe: usize, cmp: Cmp) {
        let d = index.dim;
        let neutral = if cmp.max { f32::MAX } else { f32::MIN };
        let mut h = Heap {
            c: cmp,
            val: &mut self.coarse_d[..nprobe],
            ids: &mut self.coarse_i[..nprobe],
            pay: &mut self.coarse_p[..nprobe],
        };
        h.fill(neutral);
        let kernels = &self.kernels;
        let mut offer = |l: usize, c: &[f32]| {
            let dis = if cmp.max {
                (kernels.l2sq)(x, c)
            } else {
                (kernels.dot)(x, c)
            };
            if cmp.cmp(h.val[0], dis) {
                h.replace_top(dis, l as i64, 0);
            }
        };
        let centroids = index.centroids();
        let screened = match &index.coarse {
            Some(table) if self.screening && nprobe <= MAX_NPROBE && all_finite(x) => {
                self.screen.run(kernels, table, x, nprobe) != Screened::Failed
            }
            _ => false,
        };
        if screened {
            // The table holds every list in order: row r is list r.
            for l in self.screen.survivors() {
                prefetch(centroids[l * d..].as_ptr().cast(), d * 4);
            }
            for l in self.screen.survivors() {
                offer(l, &centroids[l * d..(l + 1) * d]);
            }
        } else {
            for (l, c) in centroids.chunks_exact(d).enumerate() {
                offer(l, c);
            }
        }
        h.reorder(neutral);
        for r in 0..nprobe {
            self.visit[r] = (self.coarse_i[r].max(0) as u32, r as u32);
        }
        if index.by_list_number {
            self.visit[..nprobe].sort_unstable_by_key(|v| v.0);
        }
    }

    /// Float tables, their quantisation and the per-list biases; returns faiss's `(a, b)`.
    /// Compiled twice: with FMA and SSE4.1 where the CPU has them (a fused multiply-add and
    /// `floor` become single instructions; without them each is a library call), and
    /// portably. Both compute the same bits: `mul_add` is a correctly rounded fused
    /// multiply-add and `floor` is exact either way.
    fn tables(&mut self, index: &PqIndex, x: &[f32], nprobe: usize) -> (f32, f32) {
        #[cfg(target_arch = "x86_64")]
        if self.fma {
            // SAFETY: `fma` is set only when the CPU has FMA and SSE4.1.
            return unsafe { self.tables_fma(index, x, nprobe) };
        }
        self.tables_impl(index, x, nprobe)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma,sse4.1")]
    unsafe fn tables_fma(&mut self, index: &PqIndex, x: &[f32], nprobe: usize) -> (f32, f32) {
        self.tables_impl(index, x, nprobe)
    }

    #[inline(always)]
    fn tables_impl(&mut self, index: &PqIndex, x: &[f32], nprobe: usize) -> (f32, f32) {
        let (m, dsub, m2) = (index.m, index.dsub, index.m2);
        let l2 = index.metric == Metric::L2;
        let t = m * PQ_KSUB;
        let three_d = index.by_residual && l2;
        // Float tables.
        if three_d {
            // The query's inner products with the codebooks.
            for j in 0..m {
                let (xs, book) = (
                    &x[j * dsub..(j + 1) * dsub],
                    &index.codebooks()[j * PQ_KSUB * dsub..],
                );
                sub_table(
                    xs,
                    book,
                    dsub,
                    false,
                    &mut self.lut_ip[j * PQ_KSUB..(j + 1) * PQ_KSUB],
                );
            }
            for r in 0..nprobe {
                let l = self.coarse_i[r];
                let tab = r * t;
                if l < 0 {
                    self.lut_f[tab..tab + t].fill(f32::NAN);
                    continue;
                }
                let c = &index.centroids()[l as usize * index.dim..(l as usize + 1) * index.dim];
                for j in 0..m {
                    let cs = &c[j * dsub..(j + 1) * dsub];
                    let book = &index.codebooks()[j * PQ_KSUB * dsub..(j + 1) * PQ_KSUB * dsub];
                    for e in 0..PQ_KSUB {
                        let cip = if dsub == 2 {
                            cs[0] * book[e * dsub] + cs[1] * book[e * dsub + 1]
                        } else {
                            dot_seq(cs, &book[e * dsub..(e + 1) * dsub])
                        };
                        let pre = 2.0f32.mul_add(cip, index.entry_norms[j * PQ_KSUB + e]);
                        let i = j * PQ_KSUB + e;
                        self.lut_f[tab + i] = (-2.0f32).mul_add(self.lut_ip[i], pre);
                    }
                }
                self.bias_f[r] = self.coarse_d[r];
            }
        } else {
            for j in 0..m {
                let (xs, book) = (
                    &x[j * dsub..(j + 1) * dsub],
                    &index.codebooks()[j * PQ_KSUB * dsub..],
                );
                sub_table(
                    xs,
                    book,
                    dsub,
                    l2,
                    &mut self.lut_f[j * PQ_KSUB..(j + 1) * PQ_KSUB],
                );
            }
            if index.by_residual {
                self.bias_f[..nprobe].copy_from_slice(&self.coarse_d[..nprobe]);
            }
        }
        // Quantisation (faiss `quantize_LUT_and_bias`).
        let tmin = |s: &[f32]| {
            s.iter()
                .fold(f32::INFINITY, |a, &v| if v < a { v } else { a })
        };
        let tmax = |s: &[f32]| {
            s.iter()
                .fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a })
        };
        let trunc = self.rounding == LutRounding::Truncate;
        let round = |v: f32, lo: f32, a: f32| -> f32 {
            if trunc {
                ((v - lo) * a).floor()
            } else {
                (v - lo).mul_add(a, 0.5).floor()
            }
        };
        let (a, b);
        let mut max_span_lut = f32::NEG_INFINITY;
        if !index.by_residual || !three_d {
            let mut max_span_dis = 0.0f32;
            let mut bb = 0.0f32;
            let (mut bias_min, mut bias_max) = (0.0, 0.0);
            if index.by_residual {
                bias_min = tmin(&self.bias_f[..nprobe]);
                bias_max = tmax(&self.bias_f[..nprobe]);
                max_span_dis = bias_max - bias_min;
            }
            let _ = bias_max;
            for j in 0..m {
                let s = &self.lut_f[j * PQ_KSUB..(j + 1) * PQ_KSUB];
                let lo = tmin(s);
                let span = tmax(s) - lo;
                self.mins[j] = lo;
                max_span_lut = max_span_lut.max(span);
                max_span_dis += span;
                bb += lo;
            }
            a = (255.0 / max_span_lut).min(65535.0 / max_span_dis);
            b = if index.by_residual { bb + bias_min } else { bb };
            for j in 0..m {
                for e in 0..PQ_KSUB {
                    let i = j * PQ_KSUB + e;
                    self.lut_q[i] = round(self.lut_f[i], self.mins[j], a) as u8;
                }
            }
            self.lut_q[m * PQ_KSUB..m2 * PQ_KSUB].fill(0);
            if index.by_residual {
                for r in 0..nprobe {
                    self.bias_q[r] = round(self.bias_f[r], bias_min, a) as u16;
                }
            }
        } else {
            let bias_min = tmin(&self.bias_f[..nprobe]);
            let mut max_span_dis = f32::NEG_INFINITY;
            let mut bb = f32::INFINITY;
            for r in 0..nprobe {
                let mut span_r = self.bias_f[r] - bias_min;
                let mut b2 = self.bias_f[r];
                for j in 0..m {
                    let s = &self.lut_f[r * t + j * PQ_KSUB..r * t + (j + 1) * PQ_KSUB];
                    let lo = tmin(s);
                    let span = tmax(s) - lo;
                    self.mins[r * m + j] = lo;
                    max_span_lut = max_span_lut.max(span);
                    span_r += span;
                    b2 += lo;
                }
                max_span_dis = max_span_dis.max(span_r);
                // The bias per list now includes its table minimums.
                self.coarse_d[r] = b2;
                bb = bb.min(b2);
            }
            a = (255.0 / max_span_lut).min(65535.0 / max_span_dis);
            b = bb;
            for r in 0..nprobe {
                for j in 0..m {
                    let lo = self.mins[r * m + j];
                    for e in 0..PQ_KSUB {
                        let i = j * PQ_KSUB + e;
                        self.lut_q[r * m2 * PQ_KSUB + i] =
                            round(self.lut_f[r * t + i], lo, a) as u8;
                    }
                }
                self.lut_q[r * m2 * PQ_KSUB + m * PQ_KSUB..(r + 1) * m2 * PQ_KSUB].fill(0);
                self.bias_q[r] = round(self.coarse_d[r], bb, a) as u16;
            }
        }
        if self.rounding == LutRounding::NoBias {
            self.bias_q[..nprobe].fill(0);
        }
        (a, b)
    }

    /// The 4-bit scan of the probed lists into the heap of `kb` 16-bit distances.
    fn scan(&mut self, index: &PqIndex, nprobe: usize, kb: usize, cmp: Cmp) {
        let (m2, bbs) = (index.m2, index.bbs);
        let three_d = index.by_residual && index.metric == Metric::L2;
        let block_bytes = bbs * m2 / 2;
        let mut h = Heap {
            c: cmp,
            val: &mut self.heap_d[..kb],
            ids: &mut self.heap_i[..kb],
            pay: &mut self.heap_p[..kb],
        };
        let neutral = if cmp.max { u16::MAX } else { 0 };
        h.fill(neutral);
        let mut sums = [0u16; GROUP];
        for v in 0..nprobe {
            let (l, r) = (self.visit[v].0 as usize, self.visit[v].1 as usize);
            if self.coarse_i[r] < 0 {
                continue;
            }
            let (start, end) = (index.list_start[l], index.list_start[l + 1]);
            let n = end - start;
            if n == 0 {
                continue;
            }
            let lut = if three_d {
                &self.lut_q[r * m2 * PQ_KSUB..(r + 1) * m2 * PQ_KSUB]
            } else {
                &self.lut_q[..m2 * PQ_KSUB]
            };
            let bias = if index.by_residual { self.bias_q[r] } else { 0 };
            let codes = &index.codes()[index.code_start[l]..];
            let ids = &index.ids()[start..end];
            let mut g0 = 0;
            while g0 < n {
                let block = g0 / bbs;
                let group = (g0 % bbs) / GROUP;
                let at = block * block_bytes + group * GROUP;
                (self.fastscan.group_sums)(&codes[at..], bbs, m2 / 2, lut, &mut sums);
                let lim = (n - g0).min(GROUP);
                // faiss's threshold test against the heap top, then its strict comparison.
                let thr = h.val[0];
                for (j, &s) in sums.iter().enumerate().take(lim) {
                    let d = s.wrapping_add(bias);
                    let pass = if cmp.max { d < thr } else { d > thr };
                    if pass && cmp.cmp(h.val[0], d) {
                        let i = g0 + j;
                        h.replace_top(d, ids[i], ((l as u64) << 32) | i as u64);
                    }
                }
                g0 += GROUP;
            }
        }
        h.reorder(neutral);
    }

    /// Exact distances of the `kb` candidates and faiss's `reorder_2_heaps` into the best `k`.
    fn refine(&mut self, vectors: &[f32], d: usize, x: &[f32], k: usize, kb: usize, cmp: Cmp) {
        for j in 0..kb {
            let id = self.heap_i[j];
            self.base_d[j] = if id < 0 {
                if cmp.max {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                }
            } else {
                // Ids are values read from the file: one out of range (a mapped file
                // overwritten in place) ranks last instead of reading out of bounds.
                match vectors.get(id as usize * d..(id as usize + 1) * d) {
                    Some(v) if cmp.max => (self.kernels.l2sq)(x, v),
                    Some(v) => (self.kernels.dot)(x, v),
                    None if cmp.max => f32::INFINITY,
                    None => f32::NEG_INFINITY,
                }
            };
        }
        let mut h = Heap {
            c: cmp,
            val: &mut self.out_d[..k],
            ids: &mut self.out_i[..k],
            pay: &mut self.out_p[..k],
        };
        for j in 0..k {
            h.push(j + 1, self.base_d[j], self.heap_i[j], self.heap_p[j]);
        }
        for j in k..kb {
            if cmp.cmp(h.val[0], self.base_d[j]) {
                h.replace_top(self.base_d[j], self.heap_i[j], self.heap_p[j]);
            }
        }
        let neutral = if cmp.max { f32::MAX } else { f32::MIN };
        h.reorder(neutral);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Metadata, PqList, PqParts, ProductQuantizer, RefineFlat, PQ_KSUB};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    /// Random codes and codebooks over centroids in a few tight clusters, with duplicated
    /// centroids (exact ties) and every fourth list empty.
    fn index(dim: usize, m: usize, metric: Metric, by_residual: bool, seed: u64) -> PqIndex {
        let mut rng = Rng(seed);
        let nlist = 96;
        let hubs: Vec<f32> = (0..4 * dim).map(|_| rng.f() * 4.0).collect();
        let mut centroids = Vec::with_capacity(nlist * dim);
        for l in 0..nlist {
            if l % 7 == 6 {
                let twin = centroids[(l - 1) * dim..l * dim].to_vec();
                centroids.extend(twin);
                continue;
            }
            let hub = &hubs[(l % 4) * dim..(l % 4 + 1) * dim];
            centroids.extend(hub.iter().map(|&h| h + 0.3 * rng.f()));
        }
        let (bbs, dsub) = (32, dim / m);
        let mut next_id = 0i64;
        let lists: Vec<PqList> = (0..nlist)
            .map(|l| {
                let n = if l % 4 == 3 { 0 } else { 1 + l % 40 };
                let ids: Vec<i64> = (next_id..next_id + n as i64).collect();
                next_id += n as i64;
                let bytes = n.div_ceil(bbs) * bbs * m.next_multiple_of(2) / 2;
                let codes = (0..bytes).map(|_| rng.next() as u8).collect();
                PqList { ids, codes }
            })
            .collect();
        let ntotal = next_id as usize;
        let parts = PqParts {
            dim,
            metric,
            nprobe: 1,
            centroids,
            pq: ProductQuantizer {
                m,
                dsub,
                codebooks: (0..m * PQ_KSUB * dsub).map(|_| rng.f()).collect(),
            },
            by_residual,
            bbs,
            implem: 0,
            qbs2: 0,
            lists,
            refine: Some(RefineFlat {
                vectors: (0..ntotal * dim).map(|_| rng.f()).collect(),
                k_factor: 2.0,
            }),
            metadata: Metadata {
                frames: ntotal as u64,
                ..Metadata::default()
            },
        };
        PqIndex::new(parts).expect("valid parts")
    }

    fn same(a: &[PqNeighbour], b: &[PqNeighbour]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                (x.id, x.list, x.offset, x.distance.to_bits())
                    == (y.id, y.list, y.offset, y.distance.to_bits())
            })
    }

    /// The screened list selection finds exactly what the full scan of every centroid finds,
    /// ties and empty lists included, at the 16-bit (d = 80) and 8-bit (d = 256, 768) query
    /// widths, for both metrics, with and without residual codes, for several n_probe.
    #[test]
    fn the_centroid_screen_selects_what_the_full_scan_selects() {
        for (dim, m) in [(80, 40), (256, 128), (768, 192)] {
            for metric in [Metric::L2, Metric::InnerProduct] {
                for by_residual in [false, true] {
                    let idx = index(dim, m, metric, by_residual, dim as u64 * 31 + 7);
                    assert!(idx.coarse.is_some(), "no centroid table at d = {dim}");
                    let mut screened = PqSearcher::for_index(&idx, 8, 16);
                    let mut full = PqSearcher::for_index(&idx, 8, 16);
                    full.set_screening(false);
                    let mut rng = Rng(dim as u64 + 99);
                    let (mut narrowed, mut queries) = (0, 0);
                    for q in 0..60 {
                        // Queries near centroids (many near-ties), and exactly on duplicated ones.
                        let c = (q * 5) % idx.nlist();
                        let query: Vec<f32> = idx.centroids()[c * dim..(c + 1) * dim]
                            .iter()
                            .map(|&v| if q % 3 == 0 { v } else { v + 0.05 * rng.f() })
                            .collect();
                        for nprobe in [1, 3, 16] {
                            let a = screened.search(&idx, &query, 8, nprobe).to_vec();
                            queries += 1;
                            narrowed +=
                                (screened.screen.survivors().count() < idx.nlist()) as usize;
                            let b = full.search(&idx, &query, 8, nprobe);
                            assert!(
                                same(&a, b),
                                "d {dim} {metric:?} residual {by_residual} query {q} \
                                 nprobe {nprobe}: {a:?} vs {b:?}"
                            );
                        }
                    }
                    // The screen must actually narrow the selection down, or this test
                    // compares the full scan with itself.
                    assert!(
                        narrowed * 2 > queries,
                        "d {dim} {metric:?}: the screen narrowed {narrowed} of {queries}"
                    );
                }
            }
        }
    }

    /// A query that is not finite selects nothing through the screen and finds what the full
    /// scan finds (faiss's heap keeps no NaN).
    #[test]
    fn a_query_that_is_not_finite_is_not_screened() {
        let idx = index(256, 128, Metric::L2, false, 5);
        let mut s = PqSearcher::for_index(&idx, 8, 1);
        let mut full = PqSearcher::for_index(&idx, 8, 1);
        full.set_screening(false);
        let mut q = idx.centroids()[..256].to_vec();
        q[3] = f32::NAN;
        let a = s.search(&idx, &q, 8, 1).to_vec();
        assert!(same(&a, full.search(&idx, &q, 8, 1)));
    }
}
