//! The IVF-PQ FastScan search (`index::PqSearcher`) against faiss's own `search` on the same
//! file: indexes built with faiss's factory (`IVF{n},PQ{M}x4fs`, `x4fsr`, wrapped in
//! `IndexRefineFlat` as `,RFlat` builds it), L2 and inner product, RVC's shapes (256-d with
//! `PQ128`, 768-d with `PQ384` / `PQ192`, about 40 vectors per list, some lists empty), k = 8,
//! nprobe 1 and 4. faiss is asked one query at a time (as the realtime path searches). Ids must
//! be identical for at least 99 % of queries, and the distances at every rank must agree: within
//! one quantisation step of the 8-bit tables without refinement (which is also what explains
//! any swapped near-ties), within 1e-5 relative with refinement. A negative control shows that
//! a wrong quantisation fails these checks, and a guard shows a search never allocates.

mod common;

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use common::Clustered;
use faiss::index::refine_flat::RefineFlatIndex;
use faiss::{index_factory, Index, MetricType};
use knnblend::format::{self, Metric};
use knnblend::index::{FastScanKernels, LutRounding, PqIndex, PqSearcher};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[allow(non_snake_case)]
mod ffi {
    pub type FaissIndex = std::ffi::c_void;
    extern "C" {
        pub fn faiss_IndexIVF_cast(index: *mut FaissIndex) -> *mut FaissIndex;
        pub fn faiss_IndexIVF_set_nprobe(index: *mut FaissIndex, nprobe: usize);
    }
}

const K: usize = 8;

#[derive(Clone, Copy, Debug)]
struct Recipe {
    dim: usize,
    m: usize,
    metric: Metric,
    residual: bool,
    refine: bool,
    add: usize,
    nlist: usize,
    seed: u64,
}

impl Recipe {
    fn new(dim: usize, m: usize, metric: Metric, residual: bool, refine: bool) -> Recipe {
        Recipe {
            dim,
            m,
            metric,
            residual,
            refine,
            add: 8000,
            nlist: 200,
            seed: dim as u64 + 7 * m as u64,
        }
    }

    fn name(&self) -> String {
        format!(
            "IVF{},PQ{}x4fs{}{} {:?}",
            self.nlist,
            self.m,
            if self.residual { "r" } else { "" },
            if self.refine { ",RFlat" } else { "" },
            self.metric
        )
    }
}

/// A faiss index, its file read back as ours, and the queries.
struct Case {
    recipe: Recipe,
    faiss: Box<dyn Index>,
    /// The IVF base inside `faiss` (for setting nprobe).
    base: *mut ffi::FaissIndex,
    ours: PqIndex,
    queries: Vec<f32>,
    empty_lists: usize,
}

fn normalise(rows: &mut [f32], dim: usize) {
    for v in rows.chunks_exact_mut(dim) {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }
}

fn build(r: Recipe) -> Case {
    let gen = Clustered::new(r.dim, 24, r.seed);
    let mut data = gen.rows(r.add, r.seed + 1);
    // Training also sees a region no added vector comes from, so some lists stay empty.
    let mut train = data.clone();
    let mut far = gen.rows(r.add / 10, r.seed + 2);
    far.iter_mut().for_each(|x| *x += 6.0);
    train.extend_from_slice(&far);
    let mut queries = gen.rows(200, r.seed + 3);
    if r.metric == Metric::InnerProduct {
        normalise(&mut data, r.dim);
        normalise(&mut train, r.dim);
        normalise(&mut queries, r.dim);
    }
    let metric = match r.metric {
        Metric::L2 => MetricType::L2,
        Metric::InnerProduct => MetricType::InnerProduct,
    };
    let factory = format!(
        "IVF{},PQ{}x4fs{}",
        r.nlist,
        r.m,
        if r.residual { "r" } else { "" }
    );
    let mut base = index_factory(r.dim as u32, &factory, metric).unwrap();
    base.train(&train).unwrap();
    let base_ptr = unsafe { ffi::faiss_IndexIVF_cast(base.inner_ptr() as *mut ffi::FaissIndex) };
    assert!(!base_ptr.is_null());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastscan.index");
    let faiss: Box<dyn Index> = if r.refine {
        // What `,RFlat` builds (k_factor 1), wrapped by hand so the base stays reachable.
        let mut w = RefineFlatIndex::new(base).unwrap();
        w.add(&data).unwrap();
        faiss::write_index(&w, path.to_str().unwrap()).unwrap();
        Box::new(w)
    } else {
        base.add(&data).unwrap();
        faiss::write_index(&base, path.to_str().unwrap()).unwrap();
        Box::new(base)
    };
    let parts = format::read_faiss_fastscan_file(&path).unwrap();
    assert_eq!(parts.refine.is_some(), r.refine);
    let empty_lists = parts.lists.iter().filter(|l| l.ids.is_empty()).count();
    let ours = PqIndex::new(parts).unwrap();
    Case {
        recipe: r,
        faiss,
        base: base_ptr,
        ours,
        queries,
        empty_lists,
    }
}

/// What one comparison found.
#[derive(Debug, Default)]
struct Tally {
    queries: usize,
    identical_ids: usize,
    identical_distances: usize,
    /// Queries whose distances at some rank differ by more than the tolerance.
    out_of_tolerance: usize,
    worst: String,
}

impl Tally {
    fn passes(&self) -> bool {
        self.out_of_tolerance == 0 && self.identical_ids * 100 >= self.queries * 99
    }
}

fn compare(case: &mut Case, nprobe: usize, rounding: LutRounding) -> Tally {
    let r = case.recipe;
    unsafe { ffi::faiss_IndexIVF_set_nprobe(case.base, nprobe) };
    let mut searcher = PqSearcher::for_index(&case.ours, K, nprobe);
    searcher.set_lut_rounding(rounding);
    let mut t = Tally::default();
    let mut worst = 0.0f64;
    for q in case.queries.chunks_exact(r.dim) {
        let want = case.faiss.search(q, K).unwrap();
        let got = searcher.search(&case.ours, q, K, nprobe).to_vec();
        let step = 1.0 / searcher.last_quantisation().0 as f64;
        t.queries += 1;
        let ids: Vec<i64> = want.labels.iter().map(|l| l.to_native()).collect();
        let ours: Vec<i64> = got.iter().map(|n| n.id).collect();
        t.identical_ids += (ids == ours) as usize;
        t.identical_distances +=
            want.distances
                .iter()
                .zip(&got)
                .all(|(w, g)| w.to_bits() == g.distance.to_bits()) as usize;
        let mut bad = false;
        for (j, (w, g)) in want.distances.iter().zip(&got).enumerate() {
            let (w, g) = (*w as f64, g.distance as f64);
            let err = (w - g).abs();
            let tol = if r.refine {
                1e-5 * w.abs().max(1e-3)
            } else {
                step + 1e-5 * w.abs()
            };
            if err > tol {
                bad = true;
            }
            let rel = err / tol;
            if rel > worst {
                worst = rel;
                t.worst = format!(
                    "rank {j}: faiss {w} ours {g} (ids {} / {}), tolerance {tol:e}",
                    ids[j], ours[j]
                );
            }
        }
        t.out_of_tolerance += bad as usize;
    }
    t
}

fn parity(r: Recipe) {
    let started = std::time::Instant::now();
    let mut case = build(r);
    assert!(case.empty_lists > 0, "{}: no empty list", r.name());
    for nprobe in [1, 4] {
        let t = compare(&mut case, nprobe, LutRounding::Faiss);
        eprintln!(
            "{} nprobe {nprobe}: ids identical {}/{}, distances bit-identical {}/{}, \
             out of tolerance {} ({} empty lists; worst {})",
            r.name(),
            t.identical_ids,
            t.queries,
            t.identical_distances,
            t.queries,
            t.out_of_tolerance,
            case.empty_lists,
            t.worst
        );
        assert!(t.passes(), "{} nprobe {nprobe}: {t:?}", r.name());
    }
    eprintln!("{}: {:.1} s", r.name(), started.elapsed().as_secs_f64());
}

#[test]
fn parity_256_l2() {
    parity(Recipe::new(256, 128, Metric::L2, false, false));
    parity(Recipe::new(256, 128, Metric::L2, true, false));
}

#[test]
fn parity_256_ip() {
    parity(Recipe::new(256, 128, Metric::InnerProduct, false, false));
    parity(Recipe::new(256, 128, Metric::InnerProduct, true, false));
}

#[test]
fn parity_256_refined() {
    parity(Recipe::new(256, 128, Metric::L2, false, true));
    parity(Recipe::new(256, 128, Metric::InnerProduct, true, true));
}

#[test]
fn parity_768_l2() {
    parity(Recipe::new(768, 384, Metric::L2, false, false));
    parity(Recipe::new(768, 192, Metric::L2, true, false));
}

#[test]
fn parity_768_ip() {
    parity(Recipe::new(768, 192, Metric::InnerProduct, false, false));
    parity(Recipe::new(768, 384, Metric::InnerProduct, true, false));
}

#[test]
fn parity_768_refined() {
    parity(Recipe::new(768, 384, Metric::L2, true, true));
    parity(Recipe::new(768, 192, Metric::InnerProduct, false, true));
}

/// The checks can fail: tables truncated instead of rounded, or the per-list bias left out,
/// break parity.
#[test]
fn a_wrong_quantisation_breaks_parity() {
    let mut case = build(Recipe::new(256, 128, Metric::L2, true, false));
    let right = compare(&mut case, 4, LutRounding::Faiss);
    assert!(right.passes(), "{right:?}");
    for wrong in [LutRounding::Truncate, LutRounding::NoBias] {
        let t = compare(&mut case, 4, wrong);
        eprintln!("{wrong:?}: {t:?}");
        assert!(!t.passes(), "{wrong:?} went unnoticed: {t:?}");
    }
}

/// Every FastScan kernel set, and the table code compiled for FMA and SSE4.1 or portably,
/// finds the same neighbours, bit for bit.
#[test]
fn every_kernel_set_finds_the_same() {
    for recipe in [
        Recipe::new(256, 128, Metric::InnerProduct, true, false),
        Recipe::new(256, 64, Metric::L2, true, false),
    ] {
        every_kernel_set_finds_the_same_on(build(recipe));
    }
}

fn every_kernel_set_finds_the_same_on(case: Case) {
    let mut reference = PqSearcher::for_index(&case.ours, K, 4)
        .with_fastscan_kernels(FastScanKernels::scalar())
        .with_portable_tables();
    for kernels in FastScanKernels::all_available() {
        let mut s = PqSearcher::for_index(&case.ours, K, 4).with_fastscan_kernels(kernels);
        for q in case.queries.chunks_exact(256) {
            let want = reference.search(&case.ours, q, K, 4).to_vec();
            assert_eq!(
                s.search(&case.ours, q, K, 4),
                want.as_slice(),
                "{}",
                kernels.name
            );
        }
    }
}

fn never_allocates(r: Recipe) {
    let case = build(r);
    let mut s = PqSearcher::for_index(&case.ours, K, 4);
    let mut vector = vec![0.0f32; r.dim];
    let mut found = 0usize;
    for q in case.queries.chunks_exact(r.dim).take(50) {
        assert_no_alloc(|| {
            for nprobe in [1, 4] {
                let res = s.search(&case.ours, q, K, nprobe);
                found += res.iter().filter(|n| n.id >= 0).count();
                let first = res[0];
                case.ours.neighbour_vector(&first, &mut vector);
            }
        });
    }
    assert!(found > 0);
}

#[test]
fn a_search_never_allocates_256() {
    never_allocates(Recipe::new(256, 128, Metric::L2, true, true));
}

#[test]
fn a_search_never_allocates_768() {
    never_allocates(Recipe::new(768, 384, Metric::InnerProduct, false, false));
}
