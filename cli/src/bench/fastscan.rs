//! `knnblend bench --fastscan`: IVF-PQ FastScan (4-bit codes, faiss `IndexIVFPQFastScan`) bare
//! and wrapped in its flat refinement (`,RFlat`, as RVC's faiss tips recommend), on the bench's
//! synthetic RVC-shaped data, against faiss's own `search` of the same file and against
//! knnblend's IVF-Flat search of the same data:
//!
//! - both FastScan indexes are built by faiss from one trained quantizer (`IVF{n},PQ{M}x4fs`
//!   trained once, written empty, read back twice: one filled bare, one wrapped in
//!   `IndexRefineFlat` and filled), with RVC's list rule, cached beside the suite's indexes;
//!   knnblend reads the files with `read_faiss_fastscan_file` into a `PqIndex`;
//! - n_probe 1, k 8, one query per call; per query every engine is called once, the order
//!   rotated from query to query (the suite's alternation, with eight engines: IVF-Flat,
//!   knnblend and faiss on three FastScan variants, IVF-Flat with an f32 coarse step), on the
//!   suite's timing thread (`SCHED_FIFO` pinned where allowed), faiss on one thread;
//! - recall@8 against an exact f32 scan of every vector, the share of queries where knnblend's
//!   ids equal faiss's, bytes per vector, and the cost of query-side α expansion in `blend`.
//!
//! Benchmark glue only; the work measured is the library's and faiss's.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use faiss::index::autotune::ParameterSpace;
use faiss::index::refine_flat::RefineFlatIndex;
use faiss::index::{Index, IndexImpl};
use faiss::MetricType;
use serde::Serialize;

use knnblend::format::{read_faiss_fastscan_file, FormatError, Metric};
use knnblend::index::{
    rvc_nlist, BlendParams, FaissIvf, IvfIndex, Kernels, PqIndex, PqSearcher, QueryExpansion,
    Searcher,
};

use super::suite::{faiss_peer, speech_like_rows, Latency};

extern "C" {
    /// libgomp (linked statically with faiss): faiss runs on this many threads.
    fn omp_set_num_threads(n: std::os::raw::c_int);
    /// libgomp: the threads the next faiss parallel region would use.
    fn omp_get_max_threads() -> std::os::raw::c_int;
}

const K: usize = 8;
const NPROBE: usize = 1;

/// What to run.
#[derive(Clone, Debug)]
pub struct FastScanOptions {
    /// Only v2-30k with PQ384, at most 5 000 queries.
    pub quick: bool,
    /// Timed queries per case.
    pub queries: usize,
    /// Where built indexes are cached (shared with the suite).
    pub cache_dir: PathBuf,
    /// Seed of the synthetic data (the suite's).
    pub seed: u64,
}

/// One case: data shape and product quantizer.
struct Shape {
    name: &'static str,
    dim: usize,
    n: usize,
    m: usize,
}

const SHAPES: &[Shape] = &[
    Shape {
        name: "v2-30k",
        dim: 768,
        n: 30_000,
        m: 384,
    },
    Shape {
        name: "v2-30k",
        dim: 768,
        n: 30_000,
        m: 192,
    },
    Shape {
        name: "v1-30k",
        dim: 256,
        n: 30_000,
        m: 128,
    },
];

/// One engine in one case.
#[derive(Clone, Debug, Serialize)]
pub struct EngineResult {
    /// `knnblend IVF-Flat`, `knnblend PQ384x4fs,RFlat`, `faiss PQ384x4fs` …
    pub engine: String,
    #[serde(flatten)]
    pub latency: Latency,
    /// Mean over queries of |found ∩ exact 8 nearest| / 8.
    pub recall_at_8: f64,
    /// For knnblend's FastScan searches: % of queries whose 8 ids equal faiss's, in order.
    pub same_ids_as_faiss_pct: Option<f64>,
    /// Stored bytes per vector the search reads from: codes (packed in faiss's blocks,
    /// padding included) + 8-byte ids (+ the f32 refine vectors); IVF-Flat: f32 vector + id.
    pub bytes_per_vector: f64,
    /// The whole index (file, or knnblend's memory for IVF-Flat with its 8-bit screens) / N.
    pub total_bytes_per_vector: f64,
}

/// One case.
#[derive(Clone, Debug, Serialize)]
pub struct FastScanCase {
    pub name: String,
    pub n: usize,
    pub d: usize,
    pub nlist: usize,
    /// Sub-quantizers.
    pub m: usize,
    /// faiss block size of the packed codes.
    pub bbs: usize,
    /// faiss's `implem` as stored (0: faiss chooses, 12 for bbs 32).
    pub implem: i32,
    /// The refinement's k_factor as stored (the factory's `,RFlat` stores 1).
    pub k_factor: f32,
    pub k: usize,
    pub nprobe: usize,
    pub queries: usize,
    pub engines: Vec<EngineResult>,
    /// The k_factor of the extra refined variant (engines 5 and 6).
    pub extra_k_factor: f32,
    /// % of the exact f32 neighbours (first 50 queries) an f64 scan confirms.
    pub truth_f64_agreement_pct: f64,
    /// faiss p50 / knnblend p50, bare FastScan.
    pub ratio_p50_bare: f64,
    /// faiss p50 / knnblend p50, FastScan + RFlat as stored.
    pub ratio_p50_rflat: f64,
    /// faiss p99.9 / knnblend p99.9, FastScan + RFlat as stored.
    pub ratio_p999_rflat: f64,
    /// faiss p50 / knnblend p50, FastScan + RFlat with the extra k_factor.
    pub ratio_p50_rflat_extra: f64,
    /// recall@8 of FastScan + RFlat as stored / recall@8 of IVF-Flat.
    pub rflat_recall_share_of_ivf_flat: f64,
    /// recall@8 of FastScan + RFlat with the extra k_factor / recall@8 of IVF-Flat.
    pub rflat_extra_recall_share_of_ivf_flat: f64,
    /// Target "FastScan path ≥ 2× faster than faiss's FastScan at equal results" for the
    /// file as built (RFlat as stored): p50 ratio ≥ 2 and ≥ 99 % of queries with faiss's ids.
    pub target_2x_faiss_met: bool,
    /// The same with the extra k_factor.
    pub target_2x_faiss_met_extra: bool,
    /// Target "faster than knnblend's IVF-Flat at recall@8 ≥ 99 % of IVF-Flat's", RFlat as
    /// stored: lower p50 than IVF-Flat and recall share ≥ 0.99.
    pub target_vs_ivf_flat_met: bool,
    /// The same with the extra k_factor.
    pub target_vs_ivf_flat_met_extra: bool,
    /// `Searcher::blend` p50 without query expansion (IVF-Flat), µs.
    pub blend_p50_us: f64,
    /// `Searcher::blend` p50 with `QueryExpansion { k: 8, alpha: 3.0 }`, µs.
    pub blend_expanded_p50_us: f64,
    pub blend_p999_us: f64,
    pub blend_expanded_p999_us: f64,
}

/// Everything one `--fastscan` run measured.
#[derive(Clone, Debug, Serialize)]
pub struct FastScanReport {
    pub kind: &'static str,
    pub peer: String,
    pub scheduling: String,
    /// `omp_get_max_threads()` while timing (faiss's threads).
    pub faiss_threads: i32,
    pub kernels: String,
    pub fastscan_kernels: String,
    pub load_average: f64,
    pub cases: Vec<FastScanCase>,
}

fn faiss_err(what: &str) -> impl Fn(faiss::error::Error) -> FormatError + '_ {
    move |e| FormatError::InvalidParts(format!("faiss failed to {what}: {e}"))
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FormatError + '_ {
    move |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn utf8(path: &Path) -> Result<&str, FormatError> {
    path.to_str()
        .ok_or_else(|| FormatError::InvalidParts("path is not UTF-8".into()))
}

/// The suite's IVF-Flat index of this data (same file name, so either builds it once).
fn ivf_flat_index(
    opts: &FastScanOptions,
    shape: &Shape,
    data: &[f32],
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, FormatError> {
    let nlist = rvc_nlist(shape.n);
    let path = opts.cache_dir.join(format!(
        "rvc-d{}-n{}-ivf{}-seed{}-v1.index",
        shape.dim, shape.n, nlist, opts.seed
    ));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&opts.cache_dir).map_err(io_err(&opts.cache_dir))?;
    log(&format!(
        "building {} IVF{nlist},Flat with faiss; cached in {}",
        shape.name,
        path.display()
    ));
    let faiss = FaissIvf::build(shape.dim, nlist, Metric::L2, data, data)?;
    let tmp = path.with_extension("index.tmp");
    faiss.write(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    Ok(path)
}

/// The two FastScan files of this data (bare, refined), built from one trained quantizer.
fn fastscan_indexes(
    opts: &FastScanOptions,
    shape: &Shape,
    data: &[f32],
    log: &mut dyn FnMut(&str),
) -> Result<(PathBuf, PathBuf), FormatError> {
    let nlist = rvc_nlist(shape.n);
    let stem = format!(
        "fastscan-d{}-n{}-ivf{}-pq{}x4fs-seed{}",
        shape.dim, shape.n, nlist, shape.m, opts.seed
    );
    let bare = opts.cache_dir.join(format!("{stem}-v1.index"));
    let rflat = opts.cache_dir.join(format!("{stem}-rflat-v1.index"));
    if bare.is_file() && rflat.is_file() {
        return Ok((bare, rflat));
    }
    std::fs::create_dir_all(&opts.cache_dir).map_err(io_err(&opts.cache_dir))?;
    let factory = format!("IVF{nlist},PQ{}x4fs", shape.m);
    log(&format!(
        "building {} {factory} and {factory},RFlat with faiss (one training); cached in {}",
        shape.name,
        opts.cache_dir.display()
    ));
    let t = Instant::now();
    let mut base = faiss::index_factory(shape.dim as u32, &factory, MetricType::L2)
        .map_err(faiss_err("create the index"))?;
    base.train(data).map_err(faiss_err("train"))?;
    let trained = opts.cache_dir.join(format!("{stem}-trained.tmp"));
    faiss::write_index(&base, utf8(&trained)?).map_err(faiss_err("write the index"))?;
    drop(base);
    let read = || faiss::read_index(utf8(&trained)?).map_err(faiss_err("read the index"));

    let mut b = read()?;
    b.add(data).map_err(faiss_err("add vectors"))?;
    let tmp = bare.with_extension("index.tmp");
    faiss::write_index(&b, utf8(&tmp)?).map_err(faiss_err("write the index"))?;
    std::fs::rename(&tmp, &bare).map_err(io_err(&bare))?;
    drop(b);

    // What `,RFlat` builds (IndexRefineFlat, k_factor 1), around the same trained base.
    let mut r = RefineFlatIndex::new(read()?).map_err(faiss_err("wrap the index"))?;
    r.add(data).map_err(faiss_err("add vectors"))?;
    let tmp = rflat.with_extension("index.tmp");
    faiss::write_index(&r, utf8(&tmp)?).map_err(faiss_err("write the index"))?;
    std::fs::rename(&tmp, &rflat).map_err(io_err(&rflat))?;
    let _ = std::fs::remove_file(&trained);
    log(&format!("  built in {:.1} s", t.elapsed().as_secs_f64()));
    Ok((bare, rflat))
}

/// faiss's own index from a file, searching `NPROBE` lists.
fn faiss_index(path: &Path) -> Result<IndexImpl, FormatError> {
    let index = faiss::read_index(utf8(path)?).map_err(faiss_err("read the index"))?;
    // Through IndexRefine to its IVF base as well.
    ParameterSpace::new()
        .and_then(|ps| ps.set_index_parameter(&index, "nprobe", NPROBE as f64))
        .map_err(faiss_err("set nprobe"))?;
    Ok(index)
}

/// The exact 8 nearest rows of `data` (squared L2 in f32, every row; ties to the lower id) for
/// each query, on every core.
fn exact_top(data: &[f32], d: usize, queries: &[f32]) -> Vec<[i64; K]> {
    let nq = queries.len() / d;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = nq.div_ceil(threads).max(1);
    let kernels = Kernels::detect();
    let mut out = vec![[-1i64; K]; nq];
    std::thread::scope(|s| {
        for (qs, res) in queries.chunks(per * d).zip(out.chunks_mut(per)) {
            s.spawn(move || {
                let mut best = vec![[(f32::INFINITY, i64::MAX); K]; res.len()];
                let mut dist = [0f32; 128];
                // Tiles of 128 rows stay in cache while every query of the chunk passes.
                for (t, tile) in data.chunks(128 * d).enumerate() {
                    let rows = tile.len() / d;
                    for (q, b) in qs.chunks_exact(d).zip(best.iter_mut()) {
                        (kernels.l2sq_rows)(q, tile, &mut dist[..rows]);
                        for (r, &dv) in dist[..rows].iter().enumerate() {
                            if dv < b[K - 1].0 {
                                let id = (t * 128 + r) as i64;
                                let mut j = K - 1;
                                while j > 0 && b[j - 1].0 > dv {
                                    b[j] = b[j - 1];
                                    j -= 1;
                                }
                                b[j] = (dv, id);
                            }
                        }
                    }
                }
                for (r, b) in res.iter_mut().zip(&best) {
                    for (slot, &(_, id)) in r.iter_mut().zip(b) {
                        *slot = id;
                    }
                }
            });
        }
    });
    out
}

fn recall(found: &[[i64; K]], truth: &[[i64; K]]) -> f64 {
    let hits: usize = found
        .iter()
        .zip(truth)
        .map(|(f, t)| f.iter().filter(|&&id| id >= 0 && t.contains(&id)).count())
        .sum();
    hits as f64 / (K * truth.len()).max(1) as f64
}

/// The k_factor of the extra refined variant (the file's own, from `,RFlat`, is 1).
const KF_EXTRA: f32 = 8.0;

/// A prepared case: indexes in memory, queries and their exact neighbours.
struct Prepared {
    name: String,
    m: usize,
    ivf: IvfIndex,
    /// knnblend's FastScan indexes: bare, refined as stored, refined with [`KF_EXTRA`].
    pq: [PqIndex; 3],
    /// faiss's, the same three.
    faiss: [IndexImpl; 3],
    queries: Vec<f32>,
    truth: Vec<[i64; K]>,
    /// % of the checked queries' exact ids an f64 scan confirms.
    truth_f64_agreement_pct: f64,
    bbs: usize,
    implem: i32,
    k_factor: f32,
    /// Bytes per vector: (IVF-Flat, PQ, PQ + RFlat) × (stored, total).
    bytes: [(f64, f64); 3],
}

/// Share (%) of the exact f32 neighbours of the first `nq` queries an f64 scan also finds.
fn check_truth(data: &[f32], d: usize, queries: &[f32], truth: &[[i64; K]], nq: usize) -> f64 {
    let mut agree = 0usize;
    let mut total = 0usize;
    for (q, t) in queries.chunks_exact(d).zip(truth).take(nq) {
        let mut all: Vec<(f64, i64)> = data
            .chunks_exact(d)
            .enumerate()
            .map(|(i, v)| {
                let dist: f64 = q
                    .iter()
                    .zip(v)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum();
                (dist, i as i64)
            })
            .collect();
        all.select_nth_unstable_by(K - 1, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        agree += all[..K].iter().filter(|(_, id)| t.contains(id)).count();
        total += K;
    }
    100.0 * agree as f64 / total.max(1) as f64
}

fn prepare(
    opts: &FastScanOptions,
    shape: &Shape,
    nq: usize,
    log: &mut dyn FnMut(&str),
) -> Result<Prepared, FormatError> {
    let (d, n) = (shape.dim, shape.n);
    let data = speech_like_rows(d, n, opts.seed, opts.seed + 1);
    let ivf_path = ivf_flat_index(opts, shape, &data, log)?;
    let (bare, rflat) = fastscan_indexes(opts, shape, &data, log)?;
    let ivf = IvfIndex::open(&ivf_path)?;
    let read = |p: &Path| -> Result<_, FormatError> {
        let parts = read_faiss_fastscan_file(p)?;
        let codes: usize = parts.lists.iter().map(|l| l.codes.len()).sum();
        let refine = parts.refine.as_ref().map_or(0, |r| r.vectors.len() * 4);
        let stored = (codes + 8 * parts.ntotal() + refine) as f64 / parts.ntotal().max(1) as f64;
        let file = std::fs::metadata(p).map_err(io_err(p))?.len() as f64 / n as f64;
        Ok((parts, (stored, file)))
    };
    let (parts, b_pq) = read(&bare)?;
    let (bbs, implem) = (parts.bbs, parts.implem);
    let pq = PqIndex::new(parts)?;
    let (parts, b_rf) = read(&rflat)?;
    let k_factor = parts.refine.as_ref().map_or(1.0, |r| r.k_factor);
    let mut extra = parts.clone();
    if let Some(r) = &mut extra.refine {
        r.k_factor = KF_EXTRA;
    }
    let pq_rf = PqIndex::new(parts)?;
    let pq_kf = PqIndex::new(extra)?;
    let faiss_kf = faiss_index(&rflat)?;
    ParameterSpace::new()
        .and_then(|ps| ps.set_index_parameter(&faiss_kf, "k_factor_rf", KF_EXTRA as f64))
        .map_err(faiss_err("set k_factor_rf"))?;
    let queries = speech_like_rows(d, nq, opts.seed, opts.seed + 1_000_003);
    log(&format!(
        "case {} PQ{}: exact neighbours of {nq} queries (f32 scan of all {n} vectors)",
        shape.name, shape.m
    ));
    let t = Instant::now();
    let truth = exact_top(&data, d, &queries);
    let agreement = check_truth(&data, d, &queries, &truth, 50);
    log(&format!(
        "  {:.1} s; an f64 scan of 50 queries finds {agreement:.2} % of the same ids",
        t.elapsed().as_secs_f64()
    ));
    let b_ivf = (
        (4 * d + 8) as f64,
        (ivf.byte_len() + ivf.screening_bytes()) as f64 / n as f64,
    );
    Ok(Prepared {
        name: shape.name.to_string(),
        m: shape.m,
        ivf,
        pq: [pq, pq_rf, pq_kf],
        faiss: [faiss_index(&bare)?, faiss_index(&rflat)?, faiss_kf],
        queries,
        truth,
        truth_f64_agreement_pct: agreement,
        bbs,
        implem,
        k_factor,
        bytes: [b_ivf, b_pq, b_rf],
    })
}

/// Gives the CPU back for a moment every 20 ms of timing (the suite's breather: no realtime
/// throttling inside the timed calls).
struct Breather(Instant);

impl Breather {
    fn tick(&mut self) {
        if self.0.elapsed().as_millis() >= 20 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            self.0 = Instant::now();
        }
    }
}

/// The suite's timing thread: `SCHED_FIFO` 40 pinned to the CPU it runs on, where allowed.
fn realtime_scheduling() -> String {
    use knnblend::platform;
    let cpu = platform::current_cpu();
    let pinned = cpu.is_some_and(platform::pin_thread_to_cpu);
    let fifo = platform::set_thread_realtime(40);
    format!(
        "{}{}",
        if fifo {
            "SCHED_FIFO 40"
        } else {
            "normal scheduler (SCHED_FIFO refused)"
        },
        match (pinned, cpu) {
            (true, Some(cpu)) => format!(", pinned to CPU {cpu}"),
            _ => String::new(),
        }
    )
}

/// IVF-Flat, then (knnblend, faiss) for each FastScan variant, then IVF-Flat with an exact f32
/// scan of every centroid (as the FastScan search's coarse step does) instead of the 8-bit
/// screen.
const ENGINES: usize = 8;

fn time_case(p: &mut Prepared) -> Result<FastScanCase, FormatError> {
    let d = p.ivf.dim();
    let nq = p.queries.len() / d;
    let mut s = Searcher::new();
    let mut s_f32 = Searcher::new();
    s_f32.set_screening(false);
    let mut ps: Vec<PqSearcher> =
        p.pq.iter()
            .map(|x| PqSearcher::for_index(x, K, NPROBE))
            .collect();
    let (ivf, pq) = (&p.ivf, &p.pq);
    let faiss = &mut p.faiss;
    let ferr = faiss_err("search");
    // One call of engine `e`: its time and ids.
    let mut call = |e: usize, q: &[f32], ids: &mut [i64; K]| -> Result<f64, FormatError> {
        *ids = [-1; K];
        let put = |ids: &mut [i64; K], it: &mut dyn Iterator<Item = i64>| {
            for (slot, id) in ids.iter_mut().zip(it) {
                *slot = id;
            }
        };
        let v = (e.clamp(1, 6) - 1) / 2;
        let t = Instant::now();
        if e == 0 || e == 7 {
            let srch = if e == 0 { &mut s } else { &mut s_f32 };
            let r = black_box(srch.search(ivf, black_box(q), K, NPROBE));
            let ns = t.elapsed().as_nanos() as f64;
            put(ids, &mut r.iter().map(|n| n.id));
            Ok(ns)
        } else if e % 2 == 1 {
            let r = black_box(ps[v].search(&pq[v], black_box(q), K, NPROBE));
            let ns = t.elapsed().as_nanos() as f64;
            put(ids, &mut r.iter().map(|n| n.id));
            Ok(ns)
        } else {
            let r = black_box(faiss[v].search(black_box(q), K).map_err(&ferr)?);
            let ns = t.elapsed().as_nanos() as f64;
            put(
                ids,
                &mut r.labels.iter().map(|l| l.get().map_or(-1, |v| v as i64)),
            );
            Ok(ns)
        }
    };
    let mut ids = [0i64; K];
    for q in p.queries.chunks_exact(d).take(500) {
        for e in 0..ENGINES {
            call(e, q, &mut ids)?;
        }
    }
    let mut ns: Vec<Vec<f64>> = (0..ENGINES).map(|_| Vec::with_capacity(nq)).collect();
    let mut found: Vec<Vec<[i64; K]>> = vec![vec![[-1; K]; nq]; ENGINES];
    let mut breather = Breather(Instant::now());
    for (i, q) in p.queries.chunks_exact(d).enumerate() {
        breather.tick();
        for j in 0..ENGINES {
            let e = (i + j) % ENGINES;
            ns[e].push(call(e, q, &mut found[e][i])?);
        }
    }

    // Query-side α expansion in `blend` (IVF-Flat), alternating with the plain blend.
    let plain = BlendParams::new(K, NPROBE, 0.75);
    let expanded = BlendParams {
        expansion: Some(QueryExpansion { k: 8, alpha: 3.0 }),
        ..plain
    };
    let mut out = vec![0f32; d];
    let (mut bp, mut be) = (Vec::with_capacity(nq), Vec::with_capacity(nq));
    for (i, q) in p.queries.chunks_exact(d).enumerate() {
        breather.tick();
        let mut one = |params: &BlendParams| {
            let t = Instant::now();
            black_box(s.blend(ivf, black_box(q), params, &mut out));
            t.elapsed().as_nanos() as f64
        };
        if i % 2 == 0 {
            bp.push(one(&plain));
            be.push(one(&expanded));
        } else {
            be.push(one(&expanded));
            bp.push(one(&plain));
        }
    }
    let (lb, lbe) = (Latency::from_ns(bp), Latency::from_ns(be));

    let same = |a: usize| {
        100.0
            * found[a]
                .iter()
                .zip(&found[a + 1])
                .filter(|(x, y)| x == y)
                .count() as f64
            / nq.max(1) as f64
    };
    let lat: Vec<Latency> = ns.into_iter().map(Latency::from_ns).collect();
    let rec: Vec<f64> = found.iter().map(|f| recall(f, &p.truth)).collect();
    let pqn = format!("PQ{}x4fs", p.m);
    let variants = [
        pqn.clone(),
        format!("{pqn},RFlat"),
        format!("{pqn},RFlat kf{KF_EXTRA}"),
    ];
    let engines: Vec<EngineResult> = (0..ENGINES)
        .map(|e| {
            let v = (e.clamp(1, 6) - 1) / 2;
            let b = p.bytes[[0, 1, 2, 2][if e == 0 || e == 7 { 0 } else { v + 1 }]];
            EngineResult {
                engine: if e == 0 {
                    "knnblend IVF-Flat".to_string()
                } else if e == 7 {
                    "knnblend IVF-Flat, f32 coarse".to_string()
                } else if e % 2 == 1 {
                    format!("knnblend {}", variants[v])
                } else {
                    format!("faiss {}", variants[v])
                },
                latency: lat[e],
                recall_at_8: rec[e],
                same_ids_as_faiss_pct: (e % 2 == 1 && e < 7).then(|| same(e)),
                bytes_per_vector: b.0,
                total_bytes_per_vector: b.1,
            }
        })
        .collect();
    let ratio = |e: usize| lat[e + 1].p50_us / lat[e].p50_us;
    let share = |e: usize| rec[e] / rec[0];
    let two_x = |e: usize| ratio(e) >= 2.0 && same(e) >= 99.0;
    let vs_ivf = |e: usize| lat[e].p50_us < lat[0].p50_us && share(e) >= 0.99;
    Ok(FastScanCase {
        name: p.name.clone(),
        n: ivf.ntotal(),
        d,
        nlist: pq[0].nlist(),
        m: p.m,
        bbs: p.bbs,
        implem: p.implem,
        k_factor: p.k_factor,
        k: K,
        nprobe: NPROBE,
        queries: nq,
        engines,
        extra_k_factor: KF_EXTRA,
        truth_f64_agreement_pct: p.truth_f64_agreement_pct,
        ratio_p50_bare: ratio(1),
        ratio_p50_rflat: ratio(3),
        ratio_p999_rflat: lat[4].p999_us / lat[3].p999_us,
        ratio_p50_rflat_extra: ratio(5),
        rflat_recall_share_of_ivf_flat: share(3),
        rflat_extra_recall_share_of_ivf_flat: share(5),
        target_2x_faiss_met: two_x(3),
        target_2x_faiss_met_extra: two_x(5),
        target_vs_ivf_flat_met: vs_ivf(3),
        target_vs_ivf_flat_met_extra: vs_ivf(5),
        blend_p50_us: lb.p50_us,
        blend_expanded_p50_us: lbe.p50_us,
        blend_p999_us: lb.p999_us,
        blend_expanded_p999_us: lbe.p999_us,
    })
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Runs the FastScan section. `log` receives progress lines.
pub fn run(
    opts: &FastScanOptions,
    log: &mut dyn FnMut(&str),
) -> Result<FastScanReport, FormatError> {
    let load = load_average();
    let nq = if opts.quick {
        opts.queries.min(5_000)
    } else {
        opts.queries
    };
    let shapes: Vec<&Shape> = if opts.quick {
        SHAPES.iter().take(1).collect()
    } else {
        SHAPES.iter().collect()
    };
    // Building and the exact neighbours use every core (before the timing thread is pinned:
    // threads it starts would inherit its CPU).
    // SAFETY: plain libgomp setter.
    unsafe {
        omp_set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as _)
    };
    let mut prepared = Vec::new();
    for shape in shapes {
        prepared.push(prepare(opts, shape, nq, log)?);
    }
    // SAFETY: plain libgomp setter and getter; from here on faiss searches on one thread.
    let faiss_threads = unsafe {
        omp_set_num_threads(1);
        omp_get_max_threads()
    };
    let scheduling = realtime_scheduling();
    log(&format!("timing thread: {scheduling}"));
    let mut cases = Vec::new();
    for p in &mut prepared {
        log(&format!("case {} PQ{}: timing", p.name, p.m));
        let c = time_case(p)?;
        log(&format!(
            "  RFlat p50 {:.1} µs vs faiss {:.1} µs ({:.2}×), IVF-Flat {:.1} µs",
            c.engines[3].latency.p50_us,
            c.engines[4].latency.p50_us,
            c.ratio_p50_rflat,
            c.engines[0].latency.p50_us
        ));
        cases.push(c);
    }
    Ok(FastScanReport {
        kind: "fastscan",
        peer: faiss_peer(),
        scheduling,
        faiss_threads,
        kernels: Searcher::new().kernels().name.to_string(),
        fastscan_kernels: knnblend::index::FastScanKernels::detect().name.to_string(),
        load_average: load,
        cases,
    })
}

fn met(b: bool) -> &'static str {
    if b {
        "met"
    } else {
        "not met"
    }
}

/// The report as text tables.
pub fn format_text(r: &FastScanReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "peer: {}", r.peer);
    let _ = writeln!(
        s,
        "timing thread: {}; faiss threads (omp_get_max_threads) {}; knnblend kernels {}, FastScan kernels {}; load average {:.2} at start",
        r.scheduling, r.faiss_threads, r.kernels, r.fastscan_kernels, r.load_average
    );
    let _ = writeln!(
        s,
        "IVF-PQ FastScan (4-bit) bare and with RFlat vs faiss's search of the same file, and knnblend IVF-Flat on the same data;\n\
         n_probe 1, k 8, one query per call, the eight engines called in turn for every query (order rotated); times in µs;\n\
         recall@8 against an exact f32 scan of all vectors; bytes/vector: codes + ids (+ refine vectors) | whole index / N;\n\
         \"IVF-Flat, f32 coarse\": knnblend's IVF-Flat with its 8-bit centroid screen off (every centroid in f32, as the FastScan coarse step reads them)\n"
    );
    let _ = writeln!(
        s,
        "{:<8} {:<30} {:>8} {:>8} {:>8} {:>8} | {:>8} | {:>9} | {:>8} {:>8}",
        "case", "engine", "p50", "p99", "p99.9", "max", "recall@8", "=faiss %", "B/vec", "all B/v"
    );
    for c in &r.cases {
        for (i, e) in c.engines.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:<8} {:<30} {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>8.4} | {:>9} | {:>8.1} {:>8.1}",
                if i == 0 { c.name.as_str() } else { "" },
                e.engine,
                e.latency.p50_us,
                e.latency.p99_us,
                e.latency.p999_us,
                e.latency.max_us,
                e.recall_at_8,
                e.same_ids_as_faiss_pct
                    .map_or_else(|| "-".to_string(), |p| format!("{p:.2}")),
                e.bytes_per_vector,
                e.total_bytes_per_vector
            );
        }
        let e = &c.engines;
        let _ = writeln!(
            s,
            "  N {}, d {}, {} lists, M {}, bbs {}, implem {} (0: faiss picks 12 for bbs 32), k_factor {} as built (`,RFlat`), {} queries; exact ids confirmed by f64 on 50 queries: {:.2} %",
            c.n, c.d, c.nlist, c.m, c.bbs, c.implem, c.k_factor, c.queries, c.truth_f64_agreement_pct
        );
        let _ = writeln!(
            s,
            "  faiss/knnblend p50: bare {:.2}×, RFlat {:.2}× (p99.9 {:.2}×), RFlat kf{} {:.2}×",
            c.ratio_p50_bare,
            c.ratio_p50_rflat,
            c.ratio_p999_rflat,
            c.extra_k_factor,
            c.ratio_p50_rflat_extra
        );
        let same = |i: usize| e[i].same_ids_as_faiss_pct.unwrap_or(0.0);
        let _ = writeln!(
            s,
            "  target \"FastScan path ≥ 2× faster than faiss's FastScan at equal results\": {} as built (RFlat {:.2}× at p50, same ids {:.2} %; bare {:.2}×, {:.2} %); with kf{}: {} ({:.2}×, {:.2} %)",
            met(c.target_2x_faiss_met),
            c.ratio_p50_rflat,
            same(3),
            c.ratio_p50_bare,
            same(1),
            c.extra_k_factor,
            met(c.target_2x_faiss_met_extra),
            c.ratio_p50_rflat_extra,
            same(5)
        );
        let _ = writeln!(
            s,
            "  target \"faster than knnblend's IVF-Flat at recall@8 ≥ 99 % of IVF-Flat's\": {} as built (RFlat p50 {:.1} vs IVF-Flat {:.1} µs, recall@8 {:.4} vs {:.4} = {:.1} %); with kf{}: {} ({:.1} µs, {:.4} = {:.1} %)",
            met(c.target_vs_ivf_flat_met),
            e[3].latency.p50_us,
            e[0].latency.p50_us,
            e[3].recall_at_8,
            e[0].recall_at_8,
            100.0 * c.rflat_recall_share_of_ivf_flat,
            c.extra_k_factor,
            met(c.target_vs_ivf_flat_met_extra),
            e[5].latency.p50_us,
            e[5].recall_at_8,
            100.0 * c.rflat_extra_recall_share_of_ivf_flat
        );
        let _ = writeln!(
            s,
            "  query-side α expansion (k 8, α 3) in Searcher::blend on IVF-Flat: p50 {:.1} → {:.1} µs (+{:.1} µs, {:.2}×), p99.9 {:.1} → {:.1} µs\n",
            c.blend_p50_us,
            c.blend_expanded_p50_us,
            c.blend_expanded_p50_us - c.blend_p50_us,
            c.blend_expanded_p50_us / c.blend_p50_us,
            c.blend_p999_us,
            c.blend_expanded_p999_us
        );
    }
    s
}
