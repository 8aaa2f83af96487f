//! The screened searches against an exact f32 scan written plainly here, compared bit for bit
//! (ids, storage positions and the bits of every distance) on arbitrary finite indexes: empty
//! lists, huge (1e18) and tiny (down to 1e-36) components, exact duplicates and ties, every
//! dimension from 1 to 1024, L2 and inner product.
//!
//! The oracle does what the library's exact search is specified to do, with the same f32
//! arithmetic (written out below for each kernel family): rank every non-empty list by the
//! one-pair kernel's key from the query to its centroid (squared L2, or the negated inner
//! product), keep the n_probe smallest (ties to the lower list), then rank every vector of those
//! lists by the row kernel's key, met in probe order and storage order within a list, and keep
//! the k smallest (ties to the one met first). Only keys below infinity enter (NaN and ∞ never
//! do, as in `TopK`). `search` and `search_block` must return exactly that, whichever path they
//! take: the 8-bit and 16-bit centroid screens (single query), the shared block screen (tile
//! kernel, n_probe ≤ 8 and d ≥ 128), the list code screens (L2, d ≥ 128, lists of 24 or more)
//! and every fallback, with the detected kernels, the AVX2 integer kernels, the scalar kernels,
//! and with screening switched off.

mod common;

use std::cell::Cell;
use std::sync::OnceLock;

use common::Rng;
use knnblend::format::{IndexParts, ListParts, Metadata, Metric};
use knnblend::index::{IvfIndex, Kernels, SearchStats, Searcher, BLOCK, MAX_K, MAX_NPROBE};
use proptest::prelude::*;
use proptest::test_runner::Config;

// ---------------------------------------------------------------------------------------------
// The f32 arithmetic of the kernels, written out.

/// Which f32 arithmetic a kernel set computes distances with (the integer screens never
/// change a result, so only this matters to the oracle).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arith {
    /// The AVX2+FMA kernels (`Kernels::detect` and `Kernels::avx2_only` on x86-64): fused
    /// multiply-adds into 8-lane accumulators, reduced as `hsum` does.
    Fma,
    /// `Kernels::scalar`: a separate multiply and add into 8 lanes, summed in lane order.
    Scalar,
}

fn arith_of(k: &Kernels) -> Arith {
    if k.name == "scalar" {
        Arith::Scalar
    } else {
        Arith::Fma
    }
}

/// The two factors of one term: `(a − b, a − b)` for L2, `(a, b)` for the inner product.
#[inline]
fn factors(ip: bool, a: f32, b: f32) -> (f32, f32) {
    if ip {
        (a, b)
    } else {
        let d = a - b;
        (d, d)
    }
}

/// The AVX2 kernels' horizontal sum of 8 lanes (`lo + hi`, then `movehl`, then one shuffle).
fn hsum(v: [f32; 8]) -> f32 {
    ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
}

/// The scalar kernels: 8 lanes, summed in order, then the tail.
fn scalar_kernel(ip: bool, a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let body = a.len() / 8 * 8;
    for i in (0..body).step_by(8) {
        for l in 0..8 {
            let (x, y) = factors(ip, a[i + l], b[i + l]);
            acc[l] += x * y;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in body..a.len() {
        let (x, y) = factors(ip, a[i], b[i]);
        s += x * y;
    }
    s
}

/// One pair, `Kernels::l2sq` / `Kernels::dot` (a query against a centroid): four accumulators
/// over 32 elements, then one over 8, then the tail.
fn pair(arith: Arith, ip: bool, a: &[f32], b: &[f32]) -> f32 {
    if arith == Arith::Scalar {
        return scalar_kernel(ip, a, b);
    }
    let n = a.len();
    let mut acc = [[0f32; 8]; 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            for (l, acc) in acc.iter_mut().enumerate() {
                let (x, y) = factors(ip, a[i + 8 * j + l], b[i + 8 * j + l]);
                *acc = x.mul_add(y, *acc);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        for (l, acc) in acc[0].iter_mut().enumerate() {
            let (x, y) = factors(ip, a[i + l], b[i + l]);
            *acc = x.mul_add(y, *acc);
        }
        i += 8;
    }
    let mut s = hsum(std::array::from_fn(|l| {
        (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l])
    }));
    for i in i..n {
        let (x, y) = factors(ip, a[i], b[i]);
        s += x * y;
    }
    s
}

/// One stored row, `Kernels::l2sq_rows` / `Kernels::dot_rows` (a query against a list's
/// vectors): two accumulators over 16 elements, then one over 8, then the tail, the same for a
/// row wherever it sits.
fn row(arith: Arith, ip: bool, q: &[f32], v: &[f32]) -> f32 {
    if arith == Arith::Scalar {
        return scalar_kernel(ip, q, v);
    }
    let n = q.len();
    let (mut a0, mut a1) = ([0f32; 8], [0f32; 8]);
    let mut j = 0;
    while j + 16 <= n {
        for l in 0..8 {
            let (x, y) = factors(ip, q[j + l], v[j + l]);
            a0[l] = x.mul_add(y, a0[l]);
            let (x, y) = factors(ip, q[j + 8 + l], v[j + 8 + l]);
            a1[l] = x.mul_add(y, a1[l]);
        }
        j += 16;
    }
    if j + 8 <= n {
        for (l, a0) in a0.iter_mut().enumerate() {
            let (x, y) = factors(ip, q[j + l], v[j + l]);
            *a0 = x.mul_add(y, *a0);
        }
        j += 8;
    }
    let mut s = hsum(std::array::from_fn(|l| a0[l] + a1[l]));
    for j in j..n {
        let (x, y) = factors(ip, q[j], v[j]);
        s += x * y;
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The oracle.

/// One result as compared: distance bits, id, storage position.
type Hit = (u32, i64, u32);

/// Everything the oracle needs of one query, for any k and n_probe: the non-empty lists ranked
/// by exact key (stable: ties to the lower list), and each list's vector keys in storage order.
struct Exact {
    ranking: Vec<(f32, usize)>,
    keys: Vec<Vec<f32>>,
    finite_query: bool,
}

impl Exact {
    fn new(index: &IvfIndex, arith: Arith, q: &[f32]) -> Exact {
        let d = index.dim();
        let ip = index.metric() == Metric::InnerProduct;
        let sign = if ip { -1.0f32 } else { 1.0 };
        let finite_query = q.iter().all(|v| v.is_finite()) && index.ntotal() > 0;
        let mut ranking = Vec::new();
        let mut keys = vec![Vec::new(); index.nlist()];
        if finite_query {
            for (l, c) in index.centroids().chunks_exact(d).enumerate() {
                let range = index.list_range(l);
                if range.is_empty() {
                    continue; // an empty list is never probed
                }
                let key = sign * pair(arith, ip, q, c);
                if key < f32::INFINITY {
                    ranking.push((key, l));
                }
                keys[l] = range
                    .map(|pos| sign * row(arith, ip, q, index.vector(pos)))
                    .collect();
            }
            // Stable, and -0 equals +0 (as the library's comparisons have it).
            ranking.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        }
        Exact {
            ranking,
            keys,
            finite_query,
        }
    }

    /// The k nearest through the n_probe nearest lists (both clamped as the library does).
    fn search(&self, index: &IvfIndex, k: usize, nprobe: usize) -> Vec<Hit> {
        if !self.finite_query {
            return Vec::new();
        }
        let (k, nprobe) = (k.clamp(1, MAX_K), nprobe.clamp(1, MAX_NPROBE));
        let ip = index.metric() == Metric::InnerProduct;
        let mut met: Vec<(f32, u32)> = Vec::new();
        for &(_, l) in self.ranking.iter().take(nprobe) {
            let start = index.list_range(l).start;
            for (i, &key) in self.keys[l].iter().enumerate() {
                if key < f32::INFINITY {
                    met.push((key, (start + i) as u32));
                }
            }
        }
        met.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        let ids = index.ids();
        met.iter()
            .take(k)
            .map(|&(key, pos)| {
                let distance = if ip { -key } else { key };
                (distance.to_bits(), ids[pos as usize], pos)
            })
            .collect()
    }
}

fn hits(found: &[knnblend::index::Neighbour]) -> Vec<Hit> {
    found
        .iter()
        .map(|n| (n.distance.to_bits(), n.id, n.pos))
        .collect()
}

fn show(h: &[Hit]) -> String {
    let v: Vec<String> = h
        .iter()
        .map(|&(b, id, pos)| format!("{:e}#{id}@{pos}", f32::from_bits(b)))
        .collect();
    format!("[{}]", v.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Searchers under test, with counters of which integer kernels they called (per thread, so a
// test counts only its own calls).

thread_local! {
    static BYTE_ROWS: Cell<u64> = const { Cell::new(0) };
    static BYTE_TILES: Cell<u64> = const { Cell::new(0) };
    static I16_ROWS: Cell<u64> = const { Cell::new(0) };
    /// Blocks in which some query's shared screen failed and it was searched on its own (the
    /// 8-bit row kernel ran during a block search of the shared path).
    static BLOCK_FALLBACKS: Cell<u64> = const { Cell::new(0) };
}

fn real() -> &'static Kernels {
    static REAL: OnceLock<Kernels> = OnceLock::new();
    REAL.get_or_init(Kernels::detect)
}

fn counted_byte_rows(q: &[u8], rows: &[i8], sums: &[i32], out: &mut [i32]) {
    BYTE_ROWS.with(|c| c.set(c.get() + 1));
    (real().dot_u8_rows)(q, rows, sums, out)
}

fn counted_byte_tile(queries: &[u8], dim: usize, rows: &[i8], sums: &[i32], out: &mut [i32]) {
    BYTE_TILES.with(|c| c.set(c.get() + 1));
    (real().dot_u8_tile)(queries, dim, rows, sums, out)
}

fn counted_i16_rows(q: &[i16], rows: &[i8], out: &mut [i32]) {
    I16_ROWS.with(|c| c.set(c.get() + 1));
    (real().dot_i8_rows)(q, rows, out)
}

/// The detected kernels, counting the calls of their integer screens.
fn counted() -> Kernels {
    Kernels {
        dot_u8_rows: counted_byte_rows,
        dot_u8_tile: counted_byte_tile,
        dot_i8_rows: counted_i16_rows,
        ..*real()
    }
}

struct Variant {
    name: &'static str,
    arith: Arith,
    searcher: Searcher,
    /// The (k, n_probe) pairs it searches with.
    plan: Vec<(usize, usize)>,
}

/// Every k from 0 (clamped to 1) to 16, and the largest ones (clamped to `MAX_K`).
fn all_ks() -> Vec<usize> {
    (0..=16).chain([31, 32, 40]).collect()
}

/// Every n_probe path: the one-list screen (k = 1 bound), the shared block screen (≤ 8), the
/// query-by-query block (> 8), all lists, and clamping.
fn all_nprobes(nlist: usize) -> Vec<usize> {
    let mut v = vec![0, 1, 2, 3, 4, 7, 8, 9, 16, 63, 64, 65, nlist, nlist + 1];
    v.sort_unstable();
    v.dedup();
    v
}

/// Every pair of `ks` and `nprobes`.
fn pairs(ks: &[usize], nprobes: &[usize]) -> Vec<(usize, usize)> {
    ks.iter()
        .flat_map(|&k| nprobes.iter().map(move |&n| (k, n)))
        .collect()
}

fn variants(nlist: usize) -> Vec<Variant> {
    // The other kernel sets differ in their integer screens (AVX2) or their arithmetic
    // (scalar), unscreened is the library's own exact scan: fewer pairs (the scalar kernels and
    // full scans cost most of the test's time).
    let mut avx2 = pairs(&[1, 5, 16, 32], &[1, 2, 8]);
    avx2.extend([(8, 9), (8, 64)]);
    let few = vec![(1, 1), (16, 2), (5, 8), (32, 9), (8, 64)];
    // The detected kernels: every k with the n_probe of each screen (the list screens depend
    // on k), and every n_probe with a few k (list selection depends on n_probe).
    let mut plan = pairs(&all_ks(), &[1, 3, 8, 9]);
    plan.extend(pairs(&[1, 8, 32], &all_nprobes(nlist)));
    plan.sort_unstable();
    plan.dedup();
    let mut v = vec![Variant {
        name: "detected",
        arith: arith_of(real()),
        searcher: Searcher::with_kernels(counted()),
        plan,
    }];
    if let Some(k) = Kernels::avx2_only() {
        v.push(Variant {
            name: "avx2",
            arith: arith_of(&k),
            searcher: Searcher::with_kernels(k),
            plan: avx2,
        });
    }
    v.push(Variant {
        name: "scalar",
        arith: Arith::Scalar,
        searcher: Searcher::with_kernels(Kernels::scalar()),
        plan: few.clone(),
    });
    let mut off = Searcher::new();
    off.set_screening(false);
    v.push(Variant {
        name: "unscreened",
        arith: arith_of(real()),
        searcher: off,
        plan: few,
    });
    v
}

/// Checks every variant, k and n_probe, query by query and in blocks, against the oracle.
/// Returns the screened searchers' summed counters.
fn check(index: &IvfIndex, queries: &[Vec<f32>]) -> Result<SearchStats, String> {
    let d = index.dim();
    let mut exact: Vec<(Arith, Vec<Exact>)> = Vec::new();
    let mut stats = SearchStats::default();
    for mut v in variants(index.nlist()) {
        if !exact.iter().any(|e| e.0 == v.arith) {
            let e = queries
                .iter()
                .map(|q| Exact::new(index, v.arith, q))
                .collect();
            exact.push((v.arith, e));
        }
        let oracle = &exact.iter().find(|e| e.0 == v.arith).unwrap().1;
        for &(k, nprobe) in &v.plan {
            let at = |what: &str, qi: usize| {
                format!(
                    "{} {what}, d {d}, nlist {}, ntotal {}, {:?}, k {k}, n_probe {nprobe}, query {qi}",
                    v.name,
                    index.nlist(),
                    index.ntotal(),
                    index.metric()
                )
            };
            for (qi, q) in queries.iter().enumerate() {
                let want = oracle[qi].search(index, k, nprobe);
                let got = hits(v.searcher.search(index, q, k, nprobe));
                if got != want {
                    return Err(format!(
                        "{}:\n got  {}\n want {}",
                        at("search", qi),
                        show(&got),
                        show(&want)
                    ));
                }
            }
            // Blocks of BLOCK queries, then the rest (a partial block).
            for (b, block) in queries.chunks(BLOCK).enumerate() {
                let flat: Vec<f32> = block.iter().flatten().copied().collect();
                let singles = BYTE_ROWS.with(Cell::get);
                let res = v.searcher.search_block(index, &flat, k, nprobe);
                if BYTE_ROWS.with(Cell::get) > singles && nprobe <= 8 {
                    BLOCK_FALLBACKS.with(|c| c.set(c.get() + 1));
                }
                if res.len() != block.len() {
                    return Err(format!("{}: block of {}", at("block", 0), res.len()));
                }
                for i in 0..block.len() {
                    let qi = b * BLOCK + i;
                    let want = oracle[qi].search(index, k, nprobe);
                    let got = hits(res.get(i));
                    if got != want {
                        return Err(format!(
                            "{}:\n got  {}\n want {}",
                            at("search_block", qi),
                            show(&got),
                            show(&want)
                        ));
                    }
                }
            }
        }
        if v.name != "unscreened" {
            let s = v.searcher.stats();
            stats.queries += s.queries;
            stats.rechecked += s.rechecked;
            stats.exact_scans += s.exact_scans;
            stats.vectors_scanned += s.vectors_scanned;
            stats.codes_screened += s.codes_screened;
            stats.vectors_rechecked += s.vectors_rechecked;
            stats.list_fallbacks += s.list_fallbacks;
            stats.rescreened += s.rescreened;
        }
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------------------------
// Arbitrary finite indexes.

/// How the values of an index are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Values {
    /// Normal, of order 1 (like speech features).
    Normal,
    /// Small whole numbers: exact distances, many exact ties, codes without error.
    Grid,
    /// Components of 1e15 to ~7e18 on up to 48 coordinates (12 at 1e18: norms up to ~1e38,
    /// distances mostly finite; the rare overflow is dropped by both sides), order 1 elsewhere.
    Huge,
    /// Every component of order 1e-10 to 1e-36 (distances underflow towards 0 and subnormals).
    Tiny,
    /// Whole numbers up to ±127 times 2⁻⁷⁰ to 2⁻⁷⁶, most rows reaching ±127 (coded without
    /// error): squares and products are subnormal and round by absolute, not relative, amounts.
    TinyGrid,
    /// Rows of very different norms in one index: each row scaled by 1e-18 to 1, with the huge
    /// coordinates of `Huge` on some rows.
    Mixed,
    /// A large common offset plus small noise: near-ties that defeat the 8-bit screen.
    Offset,
    /// A tight cluster of whole numbers (one coordinate at 127, so coded without error) a few
    /// units apart: more lists within the 8-bit query's error than a block screen keeps, and
    /// the 16-bit query separates them.
    Cluster,
}

#[derive(Clone, Debug)]
struct Case {
    dim: usize,
    nlist: usize,
    metric: Metric,
    values: Values,
    /// Chance that a list is empty.
    empty: f32,
    nq: usize,
    seed: u64,
}

/// Dimensions where the paths change (8, 16, 32 lanes; 80; 128 = byte queries, block tiles and
/// list codes; RVC's 256 and 768; 1024 = the integer kernels' limit), their neighbours, and
/// anything in between.
fn dims() -> impl Strategy<Value = usize> {
    let special = vec![
        1, 2, 3, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 47, 48, 63, 64, 65, 79, 80, 81, 96, 127, 128,
        129, 136, 160, 255, 256, 257, 384, 511, 512, 767, 768, 769, 1000, 1023, 1024,
    ];
    prop_oneof![
        3 => proptest::sample::select(special),
        1 => 1usize..=1024,
    ]
}

fn cases() -> impl Strategy<Value = Case> {
    (
        dims(),
        prop_oneof![1usize..=4, 5usize..=40, 41usize..=140],
        any::<bool>(),
        prop_oneof![
            Just(Values::Normal),
            Just(Values::Grid),
            Just(Values::Huge),
            Just(Values::Tiny),
            Just(Values::TinyGrid),
            Just(Values::Mixed),
            Just(Values::Offset),
            Just(Values::Cluster),
        ],
        proptest::sample::select(vec![0.0f32, 0.1, 0.5, 0.9]),
        1usize..=20,
        any::<u64>(),
    )
        .prop_map(|(dim, nlist, ip, values, empty, nq, seed)| Case {
            dim,
            nlist,
            metric: if ip { Metric::InnerProduct } else { Metric::L2 },
            values,
            empty,
            nq,
            seed,
        })
}

/// Draws values for one case.
struct Draw {
    rng: Rng,
    values: Values,
    /// Per-coordinate magnitude.
    coord: Vec<f32>,
    /// Coordinates that carry huge values (`Huge`, `Mixed`).
    huge: Vec<bool>,
    offset: Vec<f32>,
}

impl Draw {
    fn new(case: &Case) -> Draw {
        let mut rng = Rng(case.seed);
        let d = case.dim;
        let mut huge = vec![false; d];
        let mut coord = vec![1f32; d];
        match case.values {
            Values::Huge | Values::Mixed => {
                let e = 15 + rng.below(4) as i32; // 1e15 ..= 1e18
                                                  // At 1e18, at most 12 huge coordinates keep most distances finite (norms up to
                                                  // ~1e38, above the key empty lists used to get).
                let h = 1 + rng.below(d.min(if e == 18 { 12 } else { 48 }));
                for _ in 0..h {
                    let j = rng.below(d);
                    huge[j] = true;
                    coord[j] = 10f32.powi(e) * (1.0 + 2.0 * rng.uniform());
                }
            }
            Values::Tiny => {
                let e = [10, 18, 20, 25, 30, 36][rng.below(6)];
                coord.fill(10f32.powi(-e));
            }
            Values::TinyGrid => coord.fill(2f32.powi(-70 - rng.below(7) as i32)),
            _ => {}
        }
        let offset = (0..d)
            .map(|j| match case.values {
                Values::Cluster if j == 0 => 127.0,
                Values::Cluster => (200.0 * rng.uniform() - 100.0).round(),
                _ => 100.0 * rng.normal(),
            })
            .collect();
        Draw {
            rng,
            values: case.values,
            coord,
            huge,
            offset,
        }
    }

    /// A fresh row.
    fn row(&mut self) -> Vec<f32> {
        let d = self.coord.len();
        let scale = match self.values {
            Values::Mixed => 10f32.powi(-(self.rng.below(19) as i32)),
            _ => 1.0,
        };
        let keep_huge = self.values != Values::Mixed || self.rng.uniform() < 0.5;
        let peak = if self.values == Values::TinyGrid && self.rng.uniform() < 0.8 {
            Some(self.rng.below(d))
        } else {
            None
        };
        (0..d)
            .map(|j| {
                let n = self.rng.normal().clamp(-2.5, 2.5);
                match self.values {
                    Values::Grid => (self.rng.below(7) as f32) - 3.0,
                    Values::TinyGrid if peak == Some(j) => 127.0 * self.coord[j],
                    Values::TinyGrid => (self.rng.below(255) as f32 - 127.0) * self.coord[j],
                    Values::Offset => self.offset[j] + 0.01 * n,
                    Values::Cluster if j == 0 => self.offset[0],
                    Values::Cluster => self.offset[j] + (self.rng.below(5) as f32 - 2.0),
                    Values::Mixed if self.huge[j] && !keep_huge => n * scale,
                    _ => n * self.coord[j] * scale,
                }
            })
            .collect()
    }

    /// `base` plus noise of relative size `spread`.
    fn near(&mut self, base: &[f32], spread: f32) -> Vec<f32> {
        let fresh = self.row();
        base.iter()
            .zip(fresh)
            .map(|(&b, f)| match self.values {
                Values::Grid => b + (f - b).signum() * (self.rng.below(2) as f32),
                Values::TinyGrid => {
                    b + (f - b).signum() * (self.rng.below(2) as f32) * self.coord[0]
                }
                Values::Offset => b + spread * (f - b),
                Values::Cluster => b + spread * 5.0 * (f - b),
                _ => b + spread * f,
            })
            .collect()
    }
}

/// An index for `case` and its queries.
fn build(case: &Case) -> (IvfIndex, Vec<Vec<f32>>) {
    let mut g = Draw::new(case);
    let d = case.dim;
    let mut centroids: Vec<Vec<f32>> = Vec::new();
    for l in 0..case.nlist {
        // Some centroids exactly repeat an earlier one (ties between lists).
        if l > 0 && g.rng.uniform() < 0.1 {
            let c = centroids[g.rng.below(l)].clone();
            centroids.push(c);
        } else {
            centroids.push(g.row());
        }
    }
    let budget = if d > 256 { 250 } else { 600 };
    let mut lists = vec![ListParts::default(); case.nlist];
    let mut stored: Vec<Vec<f32>> = Vec::new();
    let mut total = 0;
    // Now and then one list holds many identical rows: more candidates than a list screen keeps.
    let crowded = (g.rng.uniform() < 0.2).then(|| g.rng.below(case.nlist));
    for l in 0..case.nlist {
        if g.rng.uniform() < case.empty && Some(l) != crowded {
            continue;
        }
        let size = match g.rng.below(3) {
            0 => 1 + g.rng.below(4),
            1 => 5 + g.rng.below(26),
            _ => 24 + g.rng.below(57),
        };
        let size = size.min(budget - total.min(budget)).max(1);
        let spread = [0.0, 1e-3, 0.1, 1.0, 10.0][g.rng.below(5)];
        for _ in 0..size {
            let v = match g.rng.below(10) {
                0 if !stored.is_empty() => stored[g.rng.below(stored.len())].clone(),
                1 => g.row(),
                _ => {
                    let c = centroids[l].clone();
                    g.near(&c, spread)
                }
            };
            stored.push(v.clone());
            lists[l].vectors.extend_from_slice(&v);
        }
        if Some(l) == crowded {
            let v = g.near(&centroids[l].clone(), 0.1);
            for _ in 0..130 + g.rng.below(70) {
                lists[l].vectors.extend_from_slice(&v);
            }
            stored.push(v);
        }
        total += lists[l].vectors.len() / d;
    }
    let mut id = 0i64;
    for list in &mut lists {
        list.ids = (0..list.vectors.len() / d)
            .map(|_| {
                id += 1;
                id * 7919 - 5000
            })
            .collect();
    }
    let parts = IndexParts {
        dim: d,
        metric: case.metric,
        nprobe: 1,
        centroids: centroids.concat(),
        lists,
        metadata: Metadata::default(),
    };
    let index = IvfIndex::from_parts(&parts).expect("finite parts build an index");

    let mut queries = Vec::new();
    for _ in 0..case.nq {
        let any_stored = |g: &mut Draw| -> Vec<f32> {
            if stored.is_empty() {
                g.row()
            } else {
                stored[g.rng.below(stored.len())].clone()
            }
        };
        let q = match g.rng.below(12) {
            0 | 1 => any_stored(&mut g),
            2 => {
                let v = any_stored(&mut g);
                v.iter()
                    .map(|x| x * (1.0 + 1e-6 * g.rng.normal()))
                    .collect()
            }
            3 => centroids[g.rng.below(case.nlist)].clone(),
            4 => vec![0.0; d],
            5 => any_stored(&mut g).iter().map(|x| -x).collect(),
            6 => centroids[g.rng.below(case.nlist)]
                .iter()
                .map(|x| -x)
                .collect(),
            7 => {
                let (a, b) = (g.rng.below(case.nlist), g.rng.below(case.nlist));
                centroids[a]
                    .iter()
                    .zip(&centroids[b])
                    .map(|(x, y)| 0.5 * x + 0.5 * y)
                    .collect()
            }
            // Too small to quantise (the screen gives up and scans exactly).
            8 => (0..d).map(|_| 1e-36 * g.rng.normal()).collect(),
            9 if g.rng.uniform() < 0.3 => {
                let mut q = g.row();
                q[g.rng.below(d)] = f32::NAN;
                q
            }
            _ => g.row(),
        };
        queries.push(q);
    }
    (index, queries)
}

fn config() -> Config {
    let cases = std::env::var("SCREEN_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    Config {
        cases,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any finite index, any query: screened searches equal the plain exact scan bit for bit.
    #[test]
    fn screened_search_is_the_exact_scan_bit_for_bit(case in cases()) {
        let (index, queries) = build(&case);
        let r = check(&index, &queries);
        prop_assert!(r.is_ok(), "{:?}: {}", case, r.unwrap_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed cases.

fn must(index: &IvfIndex, queries: &[Vec<f32>]) -> SearchStats {
    match check(index, queries) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// The finding: empty lists used to carry a finite screening key (`f32::MAX / 8`), so when a
/// non-empty list's key was above it (a centroid norm of ~6e37, finite and accepted by
/// verification) the empty list's upper bound became the threshold, the non-empty list was
/// ruled out, the empty one was skipped at the re-check, and the search returned nothing
/// where the exact scan returns k neighbours.
#[test]
fn an_empty_list_never_hides_a_large_norm_list() {
    let mut failures = Vec::new();
    for dim in [16, 80, 128, 256, 768] {
        for metric in [Metric::L2, Metric::InnerProduct] {
            let mut rng = Rng(dim as u64);
            // ‖c‖² = 16 · (2e18)² = 6.4e37 > f32::MAX / 8.
            let c: Vec<f32> = (0..dim).map(|j| if j < 16 { 2e18 } else { 0.0 }).collect();
            let rows = 30; // enough for the list codes (d ≥ 128, L2)
            let vectors: Vec<f32> = (0..rows)
                .flat_map(|_| {
                    c.iter()
                        .map(|&x| x + 1e16 * rng.normal())
                        .collect::<Vec<_>>()
                })
                .collect();
            let parts = IndexParts {
                dim,
                metric,
                nprobe: 1,
                // An empty list at the origin, the large-norm list, two more empty ones.
                centroids: [vec![0.0; dim], c.clone(), vec![1.0; dim], vec![-1.0; dim]].concat(),
                lists: vec![
                    ListParts::default(),
                    ListParts {
                        ids: (0..rows as i64).map(|i| 100 + i).collect(),
                        vectors,
                    },
                    ListParts::default(),
                    ListParts::default(),
                ],
                metadata: Metadata::default(),
            };
            let index = IvfIndex::from_parts(&parts).unwrap();
            // L2: the origin (the list's key ‖c‖² is above the empty lists' old bias). Inner
            // product: −c (the negated inner product ‖c‖² is).
            let q: Vec<f32> = match metric {
                Metric::L2 => vec![0.0; dim],
                Metric::InnerProduct => c.iter().map(|x| -x).collect(),
            };
            let queries = vec![q.clone(); 3];
            let mut s = Searcher::new();
            for (k, nprobe) in [(1, 1), (8, 1), (8, 3), (32, 4)] {
                let found = s.search(&index, &q, k, nprobe);
                assert!(found.iter().all(|n| n.distance.is_finite() && n.id >= 100));
                if found.len() != k.min(rows) {
                    failures.push(format!(
                        "search d {dim} {metric:?} k {k} n_probe {nprobe}: {} found",
                        found.len()
                    ));
                }
                let flat: Vec<f32> = queries.concat();
                let block = s.search_block(&index, &flat, k, nprobe);
                if block.get(2).len() != k.min(rows) {
                    failures.push(format!(
                        "search_block d {dim} {metric:?} k {k} n_probe {nprobe}: {} found",
                        block.get(2).len()
                    ));
                }
            }
            if let Err(e) = check(&index, &queries) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the only non-empty list was not searched:\n{}",
        failures.join("\n")
    );
}

/// Cases the oracle found with tiny values, where products underflow.
///
/// 1. Components of about 1e-18 (d = 1): the screening key multiplied the row scale by the
///    query scale first (`2·8e-21 · 6e-23`, subnormal, about 10 significant bits) and then by
///    the integer dot product, so the key was off by ~1e-3 relative and the screen ruled out
///    the list holding the exact match (distance 0): the search returned 3.2e-37.
/// 2. Whole numbers times 2⁻⁷⁰ (d = 128, codes without error): the distances are subnormal
///    (6e-45), the kernels' rounding is absolute, and the list screen's bound (all relative)
///    ruled out a vector tied with the k-th one, which wins the tie by storage order.
#[test]
fn tiny_values_whose_products_underflow_are_screened_exactly() {
    for case in [
        Case {
            dim: 1,
            nlist: 8,
            metric: Metric::L2,
            values: Values::Tiny,
            empty: 0.0,
            nq: 5,
            seed: 14759138806187917662,
        },
        Case {
            dim: 128,
            nlist: 10,
            metric: Metric::L2,
            values: Values::TinyGrid,
            empty: 0.0,
            nq: 4,
            seed: 2163779321616206949,
        },
    ] {
        let (index, queries) = build(&case);
        if let Err(e) = check(&index, &queries) {
            panic!("{case:?}: {e}");
        }
    }
}

/// Several empty lists nearer than the non-empty ones, whatever their number against n_probe:
/// their bounds must never tighten the threshold.
#[test]
fn empty_lists_never_tighten_the_threshold() {
    for dim in [8, 128, 768] {
        let mut rng = Rng(7 + dim as u64);
        let nlist = 90;
        let centroids: Vec<f32> = (0..nlist * dim).map(|_| rng.normal()).collect();
        let mut lists = vec![ListParts::default(); nlist];
        let mut id = 0;
        // Only the lists far from the origin hold vectors; the queries sit at the origin, nearest
        // the empty lists (the centroids of lists 0..60 are shrunk towards it).
        let mut centroids = centroids;
        for l in 0..60 {
            for x in &mut centroids[l * dim..(l + 1) * dim] {
                *x *= 0.01;
            }
        }
        for (l, list) in lists.iter_mut().enumerate().skip(60) {
            for _ in 0..30 {
                list.ids.push(id);
                id += 1;
                list.vectors.extend(
                    centroids[l * dim..(l + 1) * dim]
                        .iter()
                        .map(|&c| c + 0.1 * rng.normal()),
                );
            }
        }
        let parts = IndexParts {
            dim,
            metric: Metric::L2,
            nprobe: 1,
            centroids,
            lists,
            metadata: Metadata::default(),
        };
        let index = IvfIndex::from_parts(&parts).unwrap();
        let queries: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..dim).map(|_| 0.01 * rng.normal()).collect())
            .collect();
        must(&index, &queries);
    }
}

/// The oracle's arithmetic is the kernels' (so a mismatch above is a search bug, not a
/// formula): every length up to 1030, rows at every position of a call.
#[test]
fn the_oracles_arithmetic_is_the_kernels() {
    let mut rng = Rng(99);
    let kernel_sets: Vec<Kernels> = [Some(Kernels::detect()), Some(Kernels::scalar())]
        .into_iter()
        .flatten()
        .collect();
    for n in (1..=70).chain([127, 128, 129, 255, 256, 767, 768, 1023, 1024, 1030]) {
        let q: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        // 67 rows: groups of four and a remainder, in both row kernels.
        let rows: Vec<f32> = (0..67 * n).map(|_| rng.normal() * 3.0).collect();
        for k in &kernel_sets {
            let a = arith_of(k);
            let c = &rows[..n];
            assert_eq!((k.l2sq)(&q, c).to_bits(), pair(a, false, &q, c).to_bits());
            assert_eq!((k.dot)(&q, c).to_bits(), pair(a, true, &q, c).to_bits());
            let mut out = vec![0f32; 67];
            (k.l2sq_rows)(&q, &rows, &mut out);
            for (i, &o) in out.iter().enumerate() {
                let r = &rows[i * n..(i + 1) * n];
                assert_eq!(
                    o.to_bits(),
                    row(a, false, &q, r).to_bits(),
                    "{k:?} l2sq_rows n {n} row {i}"
                );
            }
            (k.dot_rows)(&q, &rows, &mut out);
            for (i, &o) in out.iter().enumerate() {
                let r = &rows[i * n..(i + 1) * n];
                assert_eq!(
                    o.to_bits(),
                    row(a, true, &q, r).to_bits(),
                    "{k:?} dot_rows n {n} row {i}"
                );
            }
        }
    }
}

/// Fixed cases that between them take every path the searcher has, checked against the
/// oracle; the counters prove the paths ran.
#[test]
fn every_path_is_taken_and_exact() {
    let mut total = SearchStats::default();
    let mut cases = Vec::new();
    let start = (
        BYTE_ROWS.with(Cell::get),
        BYTE_TILES.with(Cell::get),
        I16_ROWS.with(Cell::get),
        BLOCK_FALLBACKS.with(Cell::get),
    );
    for (i, &(dim, values, metric)) in [
        (1, Values::Normal, Metric::L2),
        (7, Values::Grid, Metric::InnerProduct),
        (24, Values::Offset, Metric::L2),
        (80, Values::Normal, Metric::L2),
        (80, Values::Huge, Metric::InnerProduct),
        (128, Values::Normal, Metric::L2),
        (128, Values::Offset, Metric::L2),
        (129, Values::Tiny, Metric::L2),
        (256, Values::Mixed, Metric::L2),
        (256, Values::Huge, Metric::L2),
        (768, Values::Normal, Metric::L2),
        (768, Values::Offset, Metric::InnerProduct),
        (256, Values::Cluster, Metric::L2),
        (1024, Values::Grid, Metric::L2),
    ]
    .iter()
    .enumerate()
    {
        for seed in 0..3u64 {
            cases.push(Case {
                dim,
                nlist: [3, 70, 130][seed as usize],
                metric,
                values,
                empty: [0.0, 0.5, 0.1][seed as usize],
                nq: 20,
                seed: 1000 * i as u64 + seed,
            });
        }
    }
    // More near-identical centroids than a screen keeps candidates (512): the 8-bit screen
    // fails, the 16-bit one is tried next (and fails too for `Offset`, whose centroids are not
    // coded without error).
    for (dim, nlist, values) in [
        (128, 700, Values::Cluster),
        (768, 600, Values::Cluster),
        (128, 700, Values::Offset),
    ] {
        cases.push(Case {
            dim,
            nlist,
            metric: Metric::L2,
            values,
            empty: 0.1,
            nq: 20,
            seed: 5,
        });
    }
    for case in &cases {
        let (index, queries) = build(case);
        let s = must(&index, &queries);
        total.queries += s.queries;
        total.exact_scans += s.exact_scans;
        total.rescreened += s.rescreened;
        total.vectors_scanned += s.vectors_scanned;
        total.codes_screened += s.codes_screened;
        total.vectors_rechecked += s.vectors_rechecked;
        total.list_fallbacks += s.list_fallbacks;
        total.rechecked += s.rechecked;
    }
    let calls = (
        BYTE_ROWS.with(Cell::get) - start.0,
        BYTE_TILES.with(Cell::get) - start.1,
        I16_ROWS.with(Cell::get) - start.2,
        BLOCK_FALLBACKS.with(Cell::get) - start.3,
    );
    println!(
        "{} indexes, {total:?}, integer kernel calls (8-bit rows, tiles, 16-bit rows, block fallbacks) {calls:?}",
        cases.len()
    );
    assert!(calls.0 > 0, "the 8-bit single-query screen never ran");
    assert!(calls.1 > 0, "the shared block screen never ran");
    assert!(calls.2 > 0, "the 16-bit screens never ran");
    assert!(
        calls.3 > 0,
        "no query of a block fell back to searching on its own"
    );
    assert!(
        total.rescreened > 0,
        "no failed 8-bit screen was screened again: {total:?}"
    );
    assert!(
        total.exact_scans > 0,
        "no screen fell back to the exact scan: {total:?}"
    );
    assert!(
        total.codes_screened > 0 && total.vectors_rechecked > 0,
        "{total:?}"
    );
    assert!(
        total.vectors_scanned > 0,
        "no list was scanned in f32: {total:?}"
    );
    assert!(
        total.list_fallbacks > 0,
        "no list screen fell back: {total:?}"
    );
}
