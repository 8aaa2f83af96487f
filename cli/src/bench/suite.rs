//! Benchmark of per-frame search against faiss `IndexIVFFlat` (feature `faiss`): the same index
//! (built with RVC's recipe, or a real `.index`), the same queries, the same process, calls
//! alternating, faiss on one thread. Prints latency distributions, block mode, the ratio
//! faiss/knnblend, whether both found the same neighbours, and the hardware floor of each case
//! (bytes touched against measured single-core read bandwidth, FMAs against measured peak).
//!
//! Nothing here runs on an audio thread. It lives in the CLI package, outside the library: the
//! library's default build stays the realtime core.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use faiss::index::ivf_flat::IVFFlatIndexImpl;
use faiss::index::Index;
use serde::Serialize;

use knnblend::format::{AlignedBytes, FormatError, Metric};
use knnblend::index::{
    kernels, rvc_nlist, FaissIvf, IvfIndex, SearchStats, Searcher, BLOCK, MAX_K,
};

extern "C" {
    /// libgomp (linked statically with faiss): faiss runs on this many threads.
    fn omp_set_num_threads(n: std::os::raw::c_int);
}

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Reduced set (N = 10 000 and 30 000, fewer queries): under a minute once indexes are cached.
    pub quick: bool,
    /// Timed single queries per case (at least 20 000 for the full set).
    pub queries: usize,
    /// Where built indexes are cached (keyed by shape and seed).
    pub cache_dir: PathBuf,
    /// Real faiss IVF-Flat `.index` files to run as extra cases.
    pub indexes: Vec<PathBuf>,
    /// Seed of the synthetic data.
    pub seed: u64,
    /// Skip the synthetic RVC-shaped cases (run only `indexes`).
    pub only_indexes: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            quick: false,
            queries: 20_000,
            cache_dir: PathBuf::from("target/bench-cache"),
            indexes: Vec::new(),
            seed: 1,
            only_indexes: false,
        }
    }
}

/// Latency distribution of one engine in one case, microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Slowest call.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// The distribution of `ns` (call times, nanoseconds).
    pub(super) fn from_ns(mut ns: Vec<f64>) -> Latency {
        if ns.is_empty() {
            return Latency::default();
        }
        ns.sort_by(f64::total_cmp);
        let at = |p: f64| ns[((p * ns.len() as f64).ceil() as usize).clamp(1, ns.len()) - 1] / 1e3;
        Latency {
            p50_us: at(0.5),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: ns[ns.len() - 1] / 1e3,
            mean_us: ns.iter().sum::<f64>() / ns.len() as f64 / 1e3,
        }
    }
}

/// One benchmark case: flat fields for `--json` (the names the README and CI read).
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaseResult {
    /// Case name (`v2-30k`, or the file name of a real index).
    pub name: String,
    /// Vectors in the index.
    pub n: usize,
    /// Dimension.
    pub d: usize,
    /// Lists.
    pub nlist: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Lists probed.
    pub nprobe: usize,
    /// Timed single queries.
    pub queries: usize,
    /// knnblend single-query median, µs.
    pub knnblend_p50_us: f64,
    /// knnblend single-query 99th percentile, µs.
    pub knnblend_p99_us: f64,
    /// knnblend single-query 99.9th percentile, µs.
    pub knnblend_p999_us: f64,
    /// knnblend slowest single query, µs.
    pub knnblend_max_us: f64,
    /// faiss single-query median, µs.
    pub faiss_p50_us: f64,
    /// faiss single-query 99th percentile, µs.
    pub faiss_p99_us: f64,
    /// faiss single-query 99.9th percentile, µs.
    pub faiss_p999_us: f64,
    /// faiss slowest single query, µs.
    pub faiss_max_us: f64,
    /// knnblend per-query time in blocks of 16 (median block / 16), µs.
    pub knnblend_block16_us: f64,
    /// faiss per-query time in blocks of 16 (median block / 16), µs.
    pub faiss_block16_us: f64,
    /// faiss p50 / knnblend p50.
    pub ratio_p50: f64,
    /// faiss p99 / knnblend p99.
    pub ratio_p99: f64,
    /// faiss p99.9 / knnblend p99.9.
    pub ratio_p999: f64,
    /// faiss block / knnblend block, per query.
    pub ratio_block16: f64,
    /// knnblend p99.9 / knnblend p50 (tail flatness; target ≤ 2).
    pub knnblend_tail: f64,
    /// knnblend median with nothing run in between (the centroid table stays in cache), µs.
    pub knnblend_solo_p50_us: f64,
    /// knnblend 99.9th percentile with nothing run in between, µs.
    pub knnblend_solo_p999_us: f64,
    /// A fixed, cache-resident compute task calibrated to take about knnblend's p50, timed
    /// between the searches of the same run: its median, µs.
    pub fixed_task_p50_us: f64,
    /// The fixed task's 99.9th percentile, µs: what the machine alone (interrupts, the
    /// hypervisor, other tenants) adds to a constant amount of work.
    pub fixed_task_p999_us: f64,
    /// fixed_task_p999_us / fixed_task_p50_us: the tail of constant work on this machine.
    pub fixed_task_tail: f64,
    /// faiss p99.9 / faiss p50.
    pub faiss_tail: f64,
    /// p99.9 / p50 of constant work as long as knnblend's p50, replayed against the stalls
    /// watched on the timing thread ([`Machine::stalls`]): the tail the machine alone gives a
    /// call of that length (above 2, the p99.9 ≤ 2× p50 target is out of reach here).
    pub stall_tail: f64,
    /// Percentage of queries (single and block) where both returned the same ids in order.
    pub same_neighbours_pct: f64,
    /// Bytes knnblend reads in the median query (by floor): 8-bit centroid table and its
    /// constants, centroids re-checked in f32, the probed list's 8-bit codes and constants,
    /// vectors re-checked (or short lists scanned) in f32.
    pub bytes_per_query: f64,
    /// Bytes an f32 centroid scan and f32 list scan (faiss) read in the median query.
    pub faiss_bytes_per_query: f64,
    /// Measured single-core read bandwidth for the centroid-table working set, GB/s.
    pub table_bandwidth_gbs: f64,
    /// Measured single-core read bandwidth for the whole index (and its codes) as working
    /// set, GB/s: lists, codes and re-checked vectors are charged at it.
    pub list_bandwidth_gbs: f64,
    /// Measured single-core read bandwidth for the f32 centroids as working set, GB/s:
    /// re-checked centroids are charged at it.
    pub centroid_bandwidth_gbs: f64,
    /// Memory floor of the median query: each kind of bytes at its bandwidth, µs.
    pub memory_floor_us: f64,
    /// Compute floor of the median query: FMAs (and 8-bit multiply-adds) at the measured
    /// peak FMA rate, µs.
    pub fma_floor_us: f64,
    /// The floor: the median over queries of the larger of each query's two floors, µs.
    pub floor_us: f64,
    /// knnblend p50 / floor (alternating with faiss, which evicts our table between calls).
    pub p50_over_floor: f64,
    /// knnblend solo p50 / floor.
    pub solo_p50_over_floor: f64,
    /// The floor as the alternating run touches memory: between two of our searches faiss
    /// reads its f32 centroids, so our table's working set is the table plus those (it is
    /// charged at the bandwidth for that size); everything else as in `floor_us`, µs.
    pub floor_as_run_us: f64,
    /// knnblend p50 (alternating) / floor_as_run_us.
    pub p50_over_floor_as_run: f64,
    /// The same floor for faiss's reads (all f32 centroids, the whole list in f32), µs.
    pub faiss_floor_us: f64,
    /// faiss p50 / its floor.
    pub faiss_p50_over_floor: f64,
    /// Median of the per-query floor (the same as `floor_us`), µs.
    pub floor_p50_us: f64,
    /// 99.9th percentile of the per-query floor, µs.
    pub floor_p999_us: f64,
    /// floor_p999_us / floor_p50_us: the tail the data itself imposes (lists differ in size).
    pub floor_tail: f64,
    /// Centroids re-checked exactly per query after 8-bit screening (mean).
    pub rechecked_per_query: f64,
    /// Stored vectors screened through 8-bit codes per query (mean).
    pub codes_per_query: f64,
    /// Stored vectors read in f32 per query: re-checked after a list screen, or in lists too
    /// short to screen (mean).
    pub vectors_per_query: f64,
    /// Queries that fell back to an exact scan of every centroid.
    pub exact_scans: u64,
}

/// Median single-query latency at one k (the k sweep).
#[derive(Clone, Debug, Serialize)]
pub struct KPoint {
    /// Case name.
    pub case: String,
    /// Neighbours.
    pub k: usize,
    /// knnblend median, µs.
    pub knnblend_p50_us: f64,
    /// faiss median, µs.
    pub faiss_p50_us: f64,
}

/// The machine the figures come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model (from /proc/cpuinfo).
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Kernel set in use.
    pub kernels: String,
    /// Measured single-core peak, FMAs per second (×1e9).
    pub peak_gfma: f64,
    /// Measured single-core read bandwidth by working-set size: (bytes, GB/s).
    pub bandwidth: Vec<(usize, f64)>,
    /// 1-minute load average when the benchmark started (others building on the machine).
    pub load_average: f64,
    /// How the timing thread ran: `SCHED_FIFO` (like an audio thread) pinned to one CPU when
    /// the system allowed it, else the normal scheduler.
    pub scheduling: String,
    /// What the machine takes from the timing thread while it does nothing but read the clock.
    pub stalls: Stalls,
}

/// Interruptions of the timing thread (timer ticks, the hypervisor, other tenants): gaps
/// between consecutive clock reads of a thread that does nothing else, watched in 20 ms
/// slices under the benchmark's own scheduling.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stalls {
    /// Time watched, s.
    pub watched_s: f64,
    /// Stalls of at least [`Stalls::MIN_US`] per second.
    pub per_second: f64,
    /// Median stall, µs.
    pub p50_us: f64,
    /// 99th percentile stall, µs.
    pub p99_us: f64,
    /// Longest stall, µs.
    pub max_us: f64,
    /// Every stall as (start, length), µs, in order; the watched slices laid end to end.
    #[serde(skip)]
    timeline: Vec<(f64, f64)>,
}

impl Stalls {
    /// The shortest gap between two clock reads counted as a stall, µs.
    pub const MIN_US: f64 = 5.0;

    /// Watches the calling thread for about `seconds`.
    pub fn watch(seconds: f64) -> Stalls {
        let mut stalls = Stalls::default();
        stalls.add(seconds);
        stalls
    }

    /// Watches for about `seconds` more and appends what it sees.
    pub fn add(&mut self, seconds: f64) {
        let slice = std::time::Duration::from_millis(20);
        self.timeline.reserve((seconds * 20_000.0) as usize);
        let mut watched = 0.0;
        while watched < seconds {
            // As in the timed loops: the CPU back for a moment between slices, so realtime
            // throttling never shows up as a stall.
            std::thread::sleep(std::time::Duration::from_millis(2));
            let origin = self.watched_s * 1e6;
            let start = Instant::now();
            let mut last = start;
            while last - start < slice {
                let now = Instant::now();
                let gap = (now - last).as_secs_f64() * 1e6;
                if gap >= Self::MIN_US {
                    self.timeline
                        .push((origin + (last - start).as_secs_f64() * 1e6, gap));
                }
                last = now;
            }
            let took = (last - start).as_secs_f64();
            watched += took;
            self.watched_s += took;
        }
        let l = Latency::from_ns(self.timeline.iter().map(|&(_, len)| len * 1e3).collect());
        self.per_second = self.timeline.len() as f64 / self.watched_s.max(1e-9);
        (self.p50_us, self.p99_us, self.max_us) = (l.p50_us, l.p99_us, l.max_us);
    }

    /// How long a call needing `work_us` of uninterrupted time takes when it starts at `t_us`
    /// on the watched timeline: the stalls it runs into stretch it, µs. `None` when the thread
    /// is stalled at `t_us` (it starts no calls then).
    fn replay(&self, t_us: f64, work_us: f64) -> Option<f64> {
        let first = self.timeline.partition_point(|&(at, len)| at + len <= t_us);
        let (mut now, mut left) = (t_us, work_us);
        for &(at, len) in &self.timeline[first..] {
            if at <= t_us {
                return None;
            }
            if at >= now + left {
                break;
            }
            left -= at - now;
            now = at + len;
        }
        Some(now + left - t_us)
    }

    /// p99.9 / p50 of constant work `work_us` long, started every 5 µs along the watched
    /// timeline (outside stalls): the tail the machine alone gives a call of that length.
    pub fn tail_of(&self, work_us: f64) -> f64 {
        let span = self.watched_s * 1e6 - work_us;
        if span <= 0.0 || work_us <= 0.0 {
            return 1.0;
        }
        let took = (0..(span / 5.0) as usize)
            .filter_map(|i| self.replay(i as f64 * 5.0, work_us))
            .map(|us| us * 1e3)
            .collect();
        let l = Latency::from_ns(took);
        l.p999_us / l.p50_us
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// One entry per case.
    pub cases: Vec<CaseResult>,
    /// Median latency vs k.
    pub k_sweep: Vec<KPoint>,
}

/// SplitMix64, for deterministic synthetic data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Clustered data resembling speech feature frames: 48 centres (like phonemes), rows drifting
/// between two centres 30 % of the time (transitions), anisotropic noise, |x| of order 1.
pub fn speech_like_rows(dim: usize, n: usize, data_seed: u64, row_seed: u64) -> Vec<f32> {
    let clusters = 48;
    let mut rng = Rng(data_seed);
    let centres: Vec<f32> = (0..clusters * dim).map(|_| rng.normal()).collect();
    let spread: Vec<f32> = (0..dim).map(|_| 0.15 + 0.35 * rng.uniform()).collect();
    let mut rng = Rng(row_seed);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let c = rng.below(clusters);
        let c2 = rng.below(clusters);
        let t = if rng.uniform() < 0.3 {
            rng.uniform() * 0.5
        } else {
            0.0
        };
        for j in 0..dim {
            let a = centres[c * dim + j];
            let b = centres[c2 * dim + j];
            out.push(a + t * (b - a) + spread[j] * rng.normal());
        }
    }
    out
}

/// A synthetic RVC-shaped case.
pub(super) struct Shape {
    pub(super) name: &'static str,
    pub(super) dim: usize,
    pub(super) n: usize,
}

pub(super) const FULL: &[Shape] = &[
    Shape {
        name: "v2-10k",
        dim: 768,
        n: 10_000,
    },
    Shape {
        name: "v2-30k",
        dim: 768,
        n: 30_000,
    },
    Shape {
        name: "v2-100k",
        dim: 768,
        n: 100_000,
    },
    Shape {
        name: "v2-200k",
        dim: 768,
        n: 200_000,
    },
    Shape {
        name: "v1-30k",
        dim: 256,
        n: 30_000,
    },
];

/// Builds (or reads from the cache) the faiss index of a shape; returns its path.
pub(super) fn cached_index(
    opts: &BenchOptions,
    shape: &Shape,
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
    std::fs::create_dir_all(&opts.cache_dir).map_err(|source| FormatError::Io {
        path: opts.cache_dir.clone(),
        source,
    })?;
    log(&format!(
        "building {} (d {}, N {}, {} lists) with faiss; cached in {}",
        shape.name,
        shape.dim,
        shape.n,
        nlist,
        path.display()
    ));
    let t = Instant::now();
    let data = speech_like_rows(shape.dim, shape.n, opts.seed, opts.seed + 1);
    // Training uses every core; the timed searches run faiss on one thread.
    // SAFETY: plain libgomp setter.
    unsafe {
        omp_set_num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()) as _)
    };
    let faiss = FaissIvf::build(shape.dim, nlist, Metric::L2, &data, &data)?;
    let tmp = path.with_extension("index.tmp");
    faiss.write(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(|source| FormatError::Io {
        path: path.clone(),
        source,
    })?;
    log(&format!("  built in {:.1} s", t.elapsed().as_secs_f64()));
    Ok(path)
}

fn read_faiss(path: &Path) -> Result<IVFFlatIndexImpl, FormatError> {
    let p = path
        .to_str()
        .ok_or_else(|| FormatError::InvalidParts("path is not UTF-8".into()))?;
    let err = |what: &str, e: faiss::error::Error| {
        FormatError::InvalidParts(format!("faiss failed to {what} {}: {e}", path.display()))
    };
    let index = faiss::read_index(p).map_err(|e| err("read", e))?;
    let mut ivf = index
        .into_ivf_flat()
        .map_err(|e| err("open as IVF-Flat", e))?;
    ivf.set_nprobe(1);
    Ok(ivf)
}

/// Queries for an index: the synthetic distribution for synthetic cases; for a real index,
/// stored vectors with noise of a tenth of the per-dimension spread (nearby, never identical).
fn queries_for(index: &IvfIndex, synthetic: Option<u64>, nq: usize) -> Vec<f32> {
    let d = index.dim();
    if let Some(seed) = synthetic {
        return speech_like_rows(d, nq, seed, seed + 1_000_003);
    }
    let vectors = index.vectors();
    let n = index.ntotal();
    let mut sd = vec![0f64; d];
    let mut mean = vec![0f64; d];
    for v in vectors.chunks_exact(d).take(10_000) {
        for j in 0..d {
            mean[j] += v[j] as f64;
            sd[j] += (v[j] as f64).powi(2);
        }
    }
    let m = n.clamp(1, 10_000) as f64;
    for j in 0..d {
        mean[j] /= m;
        sd[j] = (sd[j] / m - mean[j] * mean[j]).max(0.0).sqrt();
    }
    let mut rng = Rng(12345);
    let mut out = Vec::with_capacity(nq * d);
    for _ in 0..nq {
        let row = index.vector(rng.below(n.max(1)));
        out.extend(
            row.iter()
                .zip(&sd)
                .map(|(&x, &s)| x + 0.1 * s as f32 * rng.normal()),
        );
    }
    out
}

/// Measures single-core read bandwidth (GB/s) streaming a `bytes` buffer repeatedly (best of
/// several passes, warm).
pub fn read_bandwidth(bytes: usize) -> f64 {
    let floats = (bytes / 4).max(1024) / 64 * 64;
    let buf: Vec<f32> = (0..floats).map(|i| (i % 7) as f32).collect();
    let passes = (256 << 20) / (floats * 4) + 3;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..passes {
            black_box(read_sum(black_box(&buf)));
        }
        best = best.min(t.elapsed().as_secs_f64() / passes as f64);
    }
    (floats * 4) as f64 / best / 1e9
}

fn read_sum(buf: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: avx2 detected.
            return unsafe { read_sum_avx2(buf) };
        }
    }
    buf.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn read_sum_avx2(buf: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let p = buf.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 8];
    let mut i = 0;
    while i + 64 <= buf.len() {
        for (j, a) in acc.iter_mut().enumerate() {
            *a = _mm256_add_ps(*a, _mm256_loadu_ps(p.add(i + 8 * j)));
        }
        i += 64;
    }
    let mut s = [0f32; 8];
    let mut t = acc[0];
    for a in &acc[1..] {
        t = _mm256_add_ps(t, *a);
    }
    _mm256_storeu_ps(s.as_mut_ptr(), t);
    s.iter().sum()
}

/// Measures the single-core peak rate of 8-wide FMAs, in FMAs (multiply-adds) per second.
pub fn peak_fma_rate() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let iters = 20_000_000u64;
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                // SAFETY: avx2 and fma detected.
                black_box(unsafe { fma_loop(black_box(iters)) });
                best = best.min(t.elapsed().as_secs_f64());
            }
            return (iters * 10 * 8) as f64 / best;
        }
    }
    0.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_set1_ps(0.0); 10];
    let a = _mm256_set1_ps(0.999_9);
    let b = _mm256_set1_ps(1e-7);
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = [0f32; 8];
    let mut t = acc[0];
    for x in &acc[1..] {
        t = _mm256_add_ps(t, *x);
    }
    _mm256_storeu_ps(s.as_mut_ptr(), t);
    s.iter().sum()
}

pub(super) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(super) fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Bandwidth (GB/s) for a working set of `bytes`, measured once per size (within 10 %).
struct BandwidthCache(Vec<(usize, f64)>);

impl BandwidthCache {
    fn get(&mut self, bytes: usize) -> f64 {
        // Sizes within 10 % share a measurement.
        if let Some(&(_, bw)) = self
            .0
            .iter()
            .find(|(b, _)| (*b as f64 - bytes as f64).abs() <= 0.1 * bytes as f64)
        {
            return bw;
        }
        let class = bytes.max(64 << 10);
        let bw = read_bandwidth(class.min(1 << 30));
        self.0.push((class, bw));
        self.0.sort_by_key(|e| e.0);
        bw
    }
}

/// Runs one case: single queries alternating with faiss, blocks of 16, neighbour agreement.
#[allow(clippy::too_many_arguments)]
fn run_case(
    name: &str,
    index: &IvfIndex,
    faiss: &mut IVFFlatIndexImpl,
    queries: &[f32],
    k: usize,
    bw: &mut BandwidthCache,
    peak_fma: f64,
) -> Result<CaseResult, FormatError> {
    let d = index.dim();
    let nq = queries.len() / d;
    let ferr =
        |e: faiss::error::Error| FormatError::InvalidParts(format!("faiss search failed: {e}"));
    let mut s = Searcher::new();
    // Warm both (page in the index, train branch predictors).
    for q in queries.chunks_exact(d).take(500) {
        black_box(s.search(index, q, k, 1));
        black_box(faiss.search(q, k).map_err(ferr)?);
    }
    let stats0 = s.stats();
    let fixed = FixedTask::calibrated(index, &mut s, queries, k);
    let mut ours = Vec::with_capacity(nq);
    let mut theirs = Vec::with_capacity(nq);
    let mut fixed_ns = Vec::with_capacity(nq);
    let mut same = 0usize;
    let mut ids = [0i64; MAX_K];
    let mut probed_len = Vec::with_capacity(nq);
    let mut work = Vec::with_capacity(nq);
    let mut breather = Breather(Instant::now());
    for (i, q) in queries.chunks_exact(d).enumerate() {
        breather.tick();
        fixed_ns.push(fixed.time());
        let before = s.stats();
        let ours_first = i % 2 == 0;
        let time_ours = |s: &mut Searcher, ids: &mut [i64; MAX_K]| {
            let t = Instant::now();
            let r = black_box(s.search(index, black_box(q), k, 1));
            let ns = t.elapsed().as_nanos() as f64;
            for (slot, n) in ids.iter_mut().zip(r) {
                *slot = n.id;
            }
            (ns, r.len())
        };
        let (ns_o, len);
        let (ns_f, res);
        if ours_first {
            (ns_o, len) = time_ours(&mut s, &mut ids);
            let t = Instant::now();
            res = black_box(faiss.search(black_box(q), k).map_err(ferr)?);
            ns_f = t.elapsed().as_nanos() as f64;
        } else {
            let t = Instant::now();
            res = black_box(faiss.search(black_box(q), k).map_err(ferr)?);
            ns_f = t.elapsed().as_nanos() as f64;
            (ns_o, len) = time_ours(&mut s, &mut ids);
        }
        ours.push(ns_o);
        theirs.push(ns_f);
        work.push(Work::between(before, s.stats()));
        if let Some(first) = s.last().first() {
            let offsets = index.list_offsets();
            let list = offsets.partition_point(|&o| o <= first.pos as u64) - 1;
            probed_len.push((offsets[list + 1] - offsets[list]) as f64);
        }
        let fl: Vec<i64> = res
            .labels
            .iter()
            .filter_map(|l| l.get())
            .map(|v| v as i64)
            .collect();
        if fl[..] == ids[..len] {
            same += 1;
        }
    }
    let stats1 = s.stats();

    // The same queries with nothing in between.
    let mut solo = Vec::with_capacity(nq);
    for q in queries.chunks_exact(d) {
        breather.tick();
        let t = Instant::now();
        black_box(s.search(index, black_box(q), k, 1));
        solo.push(t.elapsed().as_nanos() as f64);
    }

    // Blocks of 16.
    let mut ours_b = Vec::new();
    let mut theirs_b = Vec::new();
    let mut same_b = 0usize;
    let mut nb = 0usize;
    for (i, block) in queries.chunks_exact(BLOCK * d).enumerate() {
        breather.tick();
        let run_ours = |s: &mut Searcher| {
            let t = Instant::now();
            black_box(s.search_block(index, black_box(block), k, 1));
            t.elapsed().as_nanos() as f64
        };
        let (o, f, res);
        if i % 2 == 0 {
            o = run_ours(&mut s);
            let t = Instant::now();
            res = black_box(faiss.search(black_box(block), k).map_err(ferr)?);
            f = t.elapsed().as_nanos() as f64;
        } else {
            let t = Instant::now();
            res = black_box(faiss.search(black_box(block), k).map_err(ferr)?);
            f = t.elapsed().as_nanos() as f64;
            o = run_ours(&mut s);
        }
        ours_b.push(o / BLOCK as f64);
        theirs_b.push(f / BLOCK as f64);
        let r = s.search_block(index, block, k, 1).clone();
        for qi in 0..BLOCK {
            let fl: Vec<i64> = res.labels[qi * k..(qi + 1) * k]
                .iter()
                .filter_map(|l| l.get())
                .map(|v| v as i64)
                .collect();
            let ol: Vec<i64> = r.get(qi).iter().map(|n| n.id).collect();
            same_b += (fl == ol) as usize;
            nb += 1;
        }
    }

    let lo = Latency::from_ns(ours);
    let lf = Latency::from_ns(theirs);
    let bo = Latency::from_ns(ours_b).p50_us;
    let bf = Latency::from_ns(theirs_b).p50_us;

    // Floors: the bytes and multiply-adds each query actually needed (from the searcher's
    // counters), each kind of bytes at the bandwidth measured for its working set.
    let nlist = index.nlist();
    let (d8, d32) = (d as f64, d as f64 * 4.0);
    // The 8-bit table with its per-row constants (bounds and byte sums).
    let table_bytes = index.centroid_screen_bytes().unwrap_or(nlist * d * 4) as f64;
    let table_bw = bw.get(table_bytes as usize);
    let centroid_bw = bw.get(nlist * d * 4);
    let list_bw = bw.get(index.byte_len() + index.screening_bytes());
    let table_bw_as_run = bw.get(table_bytes as usize + nlist * d * 4);
    let fma_us = |fmas: f64| {
        if peak_fma > 0.0 {
            fmas / peak_fma * 1e6
        } else {
            0.0
        }
    };
    // Per query: (floor, memory floor, FMA floor, bytes).
    let floors_at = |table_bw: f64| -> Vec<(f64, f64, f64, f64)> {
        work.iter()
            .map(|w| {
                let list_bytes = w.codes * (d8 + 20.0) + w.vectors * (d32 + 8.0);
                let bytes = table_bytes + w.centroids * d32 + list_bytes;
                let mem = table_bytes / table_bw / 1e3
                    + w.centroids * d32 / centroid_bw / 1e3
                    + list_bytes / list_bw / 1e3;
                let fma = fma_us((nlist as f64 + w.centroids + w.codes + w.vectors) * d8);
                (mem.max(fma), mem, fma, bytes)
            })
            .collect()
    };
    let floors = floors_at(table_bw);
    let floor_as_run = Latency::from_ns(
        floors_at(table_bw_as_run)
            .iter()
            .map(|f| f.0 * 1e3)
            .collect(),
    )
    .p50_us;
    let median_query = {
        let mut order: Vec<usize> = (0..floors.len()).collect();
        order.sort_by(|&a, &b| floors[a].0.total_cmp(&floors[b].0));
        order.get(order.len() / 2).copied()
    };
    let per_query_floor = Latency::from_ns(floors.iter().map(|f| f.0 * 1e3).collect());
    let floor = per_query_floor.p50_us;
    let (mem_floor, fma_floor, bytes_per_query) =
        median_query.map_or((0.0, 0.0, 0.0), |i| (floors[i].1, floors[i].2, floors[i].3));
    // faiss reads every f32 centroid and the whole probed list in f32.
    let faiss_table_bytes = (nlist * d * 4) as f64;
    let faiss_list_bw = bw.get(index.byte_len());
    let faiss_floors = Latency::from_ns(
        probed_len
            .iter()
            .map(|&len| {
                let mem = faiss_table_bytes / centroid_bw + len * (d32 + 8.0) / faiss_list_bw;
                mem.max(fma_us((nlist as f64 + len) * d8) * 1e3)
            })
            .collect(),
    );
    let faiss_floor = faiss_floors.p50_us;
    let mut lens = probed_len.clone();
    lens.sort_by(f64::total_cmp);
    let median_len = lens.get(lens.len() / 2).copied().unwrap_or(0.0);
    let mean = |f: fn(&Work) -> f64| work.iter().map(f).sum::<f64>() / work.len().max(1) as f64;
    let lo_solo = Latency::from_ns(solo);
    let lx = Latency::from_ns(fixed_ns);

    let total = nq + nb;
    Ok(CaseResult {
        name: name.to_string(),
        n: index.ntotal(),
        d,
        nlist,
        k,
        nprobe: 1,
        queries: nq,
        knnblend_p50_us: lo.p50_us,
        knnblend_p99_us: lo.p99_us,
        knnblend_p999_us: lo.p999_us,
        knnblend_max_us: lo.max_us,
        faiss_p50_us: lf.p50_us,
        faiss_p99_us: lf.p99_us,
        faiss_p999_us: lf.p999_us,
        faiss_max_us: lf.max_us,
        knnblend_block16_us: bo,
        faiss_block16_us: bf,
        ratio_p50: lf.p50_us / lo.p50_us,
        ratio_p99: lf.p99_us / lo.p99_us,
        ratio_p999: lf.p999_us / lo.p999_us,
        ratio_block16: bf / bo,
        knnblend_tail: lo.p999_us / lo.p50_us,
        knnblend_solo_p50_us: lo_solo.p50_us,
        knnblend_solo_p999_us: lo_solo.p999_us,
        fixed_task_p50_us: lx.p50_us,
        fixed_task_p999_us: lx.p999_us,
        fixed_task_tail: lx.p999_us / lx.p50_us,
        faiss_tail: lf.p999_us / lf.p50_us,
        // Set by `run` from the stalls it watched.
        stall_tail: 0.0,
        same_neighbours_pct: 100.0 * (same + same_b) as f64 / total.max(1) as f64,
        bytes_per_query,
        faiss_bytes_per_query: faiss_table_bytes + median_len * (d32 + 8.0),
        table_bandwidth_gbs: table_bw,
        list_bandwidth_gbs: list_bw,
        centroid_bandwidth_gbs: centroid_bw,
        memory_floor_us: mem_floor,
        fma_floor_us: fma_floor,
        floor_us: floor,
        p50_over_floor: lo.p50_us / floor,
        solo_p50_over_floor: lo_solo.p50_us / floor,
        floor_as_run_us: floor_as_run,
        p50_over_floor_as_run: lo.p50_us / floor_as_run,
        faiss_floor_us: faiss_floor,
        faiss_p50_over_floor: lf.p50_us / faiss_floor,
        rechecked_per_query: mean(|w| w.centroids),
        codes_per_query: mean(|w| w.codes),
        vectors_per_query: mean(|w| w.vectors),
        floor_p50_us: per_query_floor.p50_us,
        floor_p999_us: per_query_floor.p999_us,
        floor_tail: per_query_floor.p999_us / per_query_floor.p50_us,
        exact_scans: stats1.exact_scans - stats0.exact_scans,
    })
}

/// What one search read, from the searcher's counters.
#[derive(Clone, Copy, Debug)]
pub(super) struct Work {
    /// f32 centroids re-checked.
    pub(super) centroids: f64,
    /// Stored vectors screened through their codes.
    pub(super) codes: f64,
    /// Stored vectors read in f32 (re-checked, or short lists scanned).
    pub(super) vectors: f64,
}

impl Work {
    pub(super) fn between(a: SearchStats, b: SearchStats) -> Work {
        let centroids = if b.exact_scans > a.exact_scans {
            f64::NAN // not expected; shows up in the report rather than hiding
        } else {
            (b.rechecked - a.rechecked) as f64
        };
        Work {
            centroids,
            codes: (b.codes_screened - a.codes_screened) as f64,
            vectors: ((b.vectors_rechecked - a.vectors_rechecked)
                + (b.vectors_scanned - a.vectors_scanned)) as f64,
        }
    }
}

/// A constant amount of cache-resident arithmetic (a dependent multiply-add chain over 16 KiB),
/// calibrated to take about as long as a median search: timing it between the searches shows
/// how much the machine alone stretches the tail of constant work.
struct FixedTask {
    data: Vec<f32>,
    reps: usize,
}

impl FixedTask {
    fn calibrated(index: &IvfIndex, s: &mut Searcher, queries: &[f32], k: usize) -> FixedTask {
        let d = index.dim();
        let mut v: Vec<f64> = queries
            .chunks_exact(d)
            .take(300)
            .map(|q| {
                let t = Instant::now();
                black_box(s.search(index, black_box(q), k, 1));
                t.elapsed().as_nanos() as f64
            })
            .collect();
        v.sort_by(f64::total_cmp);
        let target = v.get(v.len() / 2).copied().unwrap_or(10_000.0);
        let mut task = FixedTask {
            data: (0..4096).map(|i| i as f32 * 1e-3).collect(),
            reps: 1,
        };
        let mut one: Vec<f64> = (0..200).map(|_| task.time()).collect();
        one.sort_by(f64::total_cmp);
        task.reps = ((target / one[100].max(1.0)).round() as usize).max(1);
        task
    }

    fn time(&self) -> f64 {
        let t = Instant::now();
        let mut acc = 0f32;
        for _ in 0..self.reps {
            for &x in black_box(&self.data[..]) {
                acc = acc * 0.999 + x;
            }
        }
        black_box(acc);
        t.elapsed().as_nanos() as f64
    }
}

/// Median single-query latency of both engines at one k (alternating, fewer queries).
fn k_point(
    name: &str,
    index: &IvfIndex,
    faiss: &mut IVFFlatIndexImpl,
    queries: &[f32],
    k: usize,
) -> Result<KPoint, FormatError> {
    let d = index.dim();
    let ferr =
        |e: faiss::error::Error| FormatError::InvalidParts(format!("faiss search failed: {e}"));
    let mut s = Searcher::new();
    let (mut o, mut f) = (Vec::new(), Vec::new());
    let mut breather = Breather(Instant::now());
    for q in queries.chunks_exact(d) {
        breather.tick();
        let t = Instant::now();
        black_box(s.search(index, black_box(q), k, 1));
        o.push(t.elapsed().as_nanos() as f64);
        let t = Instant::now();
        black_box(faiss.search(black_box(q), k).map_err(ferr)?);
        f.push(t.elapsed().as_nanos() as f64);
    }
    Ok(KPoint {
        case: name.to_string(),
        k,
        knnblend_p50_us: Latency::from_ns(o).p50_us,
        faiss_p50_us: Latency::from_ns(f).p50_us,
    })
}

/// Moves the calling thread to `SCHED_FIFO` (priority 40, like an audio thread) pinned to the
/// CPU it runs on, when the system allows it; returns a description of what it got.
pub(super) fn realtime_scheduling() -> String {
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

/// Gives the CPU back for a moment every 20 ms of timing, so a realtime-priority benchmark
/// never runs into the kernel's realtime throttling (which would show up as a false tail).
struct Breather(Instant);

impl Breather {
    fn tick(&mut self) {
        if self.0.elapsed().as_millis() >= 20 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            self.0 = Instant::now();
        }
    }
}

/// Runs the benchmark. `log` receives progress lines (build steps, case names).
pub fn run(opts: &BenchOptions, log: &mut dyn FnMut(&str)) -> Result<Report, FormatError> {
    let load = load_average();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut bw = BandwidthCache(Vec::new());
    let mut cases = Vec::new();
    let mut k_sweep = Vec::new();
    let nq = if opts.quick {
        opts.queries.min(5_000)
    } else {
        opts.queries
    };

    let mut jobs: Vec<(String, PathBuf, Option<u64>)> = Vec::new();
    if !opts.only_indexes {
        for shape in FULL.iter().filter(|s| !opts.quick || s.n <= 30_000) {
            jobs.push((
                shape.name.to_string(),
                cached_index(opts, shape, log)?,
                Some(opts.seed),
            ));
        }
    }
    for p in &opts.indexes {
        let name = p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        jobs.push((name, p.clone(), None));
    }
    // SAFETY: plain libgomp setter; from here on faiss searches on one thread.
    unsafe { omp_set_num_threads(1) };
    // Indexes are built (on every core); time on one pinned realtime thread.
    let scheduling = realtime_scheduling();
    log(&format!("timing thread: {scheduling}"));
    let mut stalls = Stalls::watch(1.0);
    let peak = peak_fma_rate();

    for (name, path, synthetic) in &jobs {
        log(&format!("case {name}: loading {}", path.display()));
        let index = IvfIndex::open(path)?;
        if index.metric() != Metric::L2 {
            log(&format!(
                "  skipped: {name} uses inner product; the benchmark compares L2 indexes"
            ));
            continue;
        }
        let mut faiss = read_faiss(path)?;
        let queries = queries_for(&index, *synthetic, nq);
        let r = run_case(name, &index, &mut faiss, &queries, 8, &mut bw, peak)?;
        log(&format!(
            "  p50 {:.1} µs vs faiss {:.1} µs ({:.1}×), p99.9 {:.1} vs {:.1}",
            r.knnblend_p50_us, r.faiss_p50_us, r.ratio_p50, r.knnblend_p999_us, r.faiss_p999_us
        ));
        cases.push(r);
        if name == "v2-30k" {
            let sweep_q = &queries[..queries.len().min(3_000 * index.dim())];
            for k in [1, 4, 8, 16, 32] {
                k_sweep.push(k_point(name, &index, &mut faiss, sweep_q, k)?);
            }
        }
    }
    // The machine's interruptions, watched before and after the cases.
    stalls.add(1.0);
    for c in &mut cases {
        c.stall_tail = stalls.tail_of(c.knnblend_p50_us);
    }
    Ok(Report {
        machine: Machine {
            cpu: cpu_model(),
            cpus,
            kernels: Searcher::new().kernels().name.to_string(),
            peak_gfma: peak / 1e9,
            bandwidth: bw.0,
            load_average: load,
            scheduling,
            stalls,
        },
        cases,
        k_sweep,
    })
}

/// Which faiss the ratios are against, printed with every report: the linked faiss and the
/// SIMD level it was compiled for. The workspace builds it with `-march=native`
/// (`.cargo/faiss-native.cmake`, announced through `KNNBLEND_FAISS_MARCH`), so it uses what this
/// machine has, as PyPI's faiss-cpu does by dispatch; a build outside the workspace gets
/// faiss-sys's baseline x86-64 (SSE2), and the line says so.
pub fn faiss_peer() -> String {
    let simd = simd_level();
    match option_env!("KNNBLEND_FAISS_MARCH") {
        Some(march) => format!(
            "faiss 1.12 (the `faiss` crate 0.13, static build by faiss-sys) compiled with \
             -march={march} on a machine with {simd}, one thread"
        ),
        None => format!(
            "faiss 1.12 (the `faiss` crate 0.13, static build by faiss-sys) compiled for baseline \
             x86-64 (SSE2; this machine has {simd}), one thread: PyPI's faiss-cpu dispatches \
             AVX2/AVX-512 and is faster, so these ratios overstate the lead over it"
        ),
    }
}

/// The widest SIMD this machine has, as faiss would use it.
fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            "AVX-512 (F, BW), AVX2, FMA"
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            "AVX2, FMA"
        } else {
            "SSE2 only"
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

/// The report as text tables.
pub fn format_text(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "machine: {} ({} CPUs), kernels {}, peak {:.1} GFMA/s per core, load average {:.2} at start\ntiming thread: {}",
        m.cpu, m.cpus, m.kernels, m.peak_gfma, m.load_average, m.scheduling
    );
    let _ = writeln!(s, "peer: {}", faiss_peer());
    let bws: Vec<String> = m
        .bandwidth
        .iter()
        .map(|(b, g)| format!("{} {:.1} GB/s", human_bytes(*b as f64), g))
        .collect();
    let _ = writeln!(
        s,
        "single-core read bandwidth by working set: {}",
        bws.join(", ")
    );
    let st = &m.stalls;
    let _ = writeln!(
        s,
        "timing-thread stalls of {:.0} µs or more (the thread only reading the clock, {:.1} s): {:.0}/s, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        Stalls::MIN_US, st.watched_s, st.per_second, st.p50_us, st.p99_us, st.max_us
    );
    let _ = writeln!(
        s,
        "faiss: IndexIVFFlat, one thread (omp_set_num_threads(1)), n_probe 1; times in µs\n"
    );
    let _ = writeln!(
        s,
        "{:<22} {:>7} {:>4} {:>5} | {:>8} {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} {:>8} | {:>6} {:>6} {:>6} | {:>7} {:>7} {:>5} | {:>6}",
        "case", "N", "d", "nlist", "ours p50", "p99", "p99.9", "max", "faiss50", "p99", "p99.9", "max", "×p50", "×p99", "×p999", "blk16", "f.blk16", "×blk", "same%"
    );
    for c in &r.cases {
        let _ = writeln!(
            s,
            "{:<22} {:>7} {:>4} {:>5} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>8.1} {:>8.1} {:>8.1} {:>8.1} | {:>6.2} {:>6.2} {:>6.2} | {:>7.1} {:>7.1} {:>5.2} | {:>6.2}",
            c.name,
            c.n,
            c.d,
            c.nlist,
            c.knnblend_p50_us,
            c.knnblend_p99_us,
            c.knnblend_p999_us,
            c.knnblend_max_us,
            c.faiss_p50_us,
            c.faiss_p99_us,
            c.faiss_p999_us,
            c.faiss_max_us,
            c.ratio_p50,
            c.ratio_p99,
            c.ratio_p999,
            c.knnblend_block16_us,
            c.faiss_block16_us,
            c.ratio_block16,
            c.same_neighbours_pct
        );
    }
    let _ = writeln!(s, "\nfloors (bytes touched per query at the measured bandwidth for that working set; FMAs at peak):");
    let _ = writeln!(
        s,
        "{:<22} {:>10} {:>10} {:>9} {:>9} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} | {:>10} {:>9} {:>8} | {:>6} {:>6} {:>6} | {:>8} {:>6}",
        "case", "bytes/q", "table GB/s", "list GB/s", "mem floor", "fma fl.", "floor", "p50/fl", "solo/fl", "run fl.", "p50/rfl", "f32 bytes", "f32 floor", "faiss/fl", "cents", "codes", "f32 vs", "q.fl 999", "fl.tail"
    );
    for c in &r.cases {
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>10.1} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>7.2} {:>7.2} {:>7.1} {:>7.2} | {:>10} {:>9.1} {:>8.2} | {:>6.1} {:>6.0} {:>6.1} | {:>8.1} {:>6.2}",
            c.name,
            human_bytes(c.bytes_per_query),
            c.table_bandwidth_gbs,
            c.list_bandwidth_gbs,
            c.memory_floor_us,
            c.fma_floor_us,
            c.floor_us,
            c.p50_over_floor,
            c.solo_p50_over_floor,
            c.floor_as_run_us,
            c.p50_over_floor_as_run,
            human_bytes(c.faiss_bytes_per_query),
            c.faiss_floor_us,
            c.faiss_p50_over_floor,
            c.rechecked_per_query,
            c.codes_per_query,
            c.vectors_per_query,
            c.floor_p999_us,
            c.floor_tail
        );
    }
    let _ = writeln!(
        s,
        "\ntails (p99.9 / p50): knnblend alternating with faiss, knnblend solo, faiss, a fixed\ncache-resident task calibrated to knnblend's p50, timed between the same searches, and the\ntail constant work as long as our p50 has from the timing thread's stalls alone (replayed):"
    );
    let _ = writeln!(
        s,
        "{:<22} {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} | {:>6} | {:>8} {:>8} {:>6} | {:>6}",
        "case",
        "ours p50",
        "p99.9",
        "tail",
        "solo p50",
        "p99.9",
        "tail",
        "faiss",
        "fixed50",
        "p99.9",
        "tail",
        "stalls"
    );
    for c in &r.cases {
        let _ = writeln!(
            s,
            "{:<22} {:>9.1} {:>9.1} {:>6.2} | {:>9.1} {:>9.1} {:>6.2} | {:>6.2} | {:>8.1} {:>8.1} {:>6.2} | {:>6.2}",
            c.name,
            c.knnblend_p50_us,
            c.knnblend_p999_us,
            c.knnblend_tail,
            c.knnblend_solo_p50_us,
            c.knnblend_solo_p999_us,
            c.knnblend_solo_p999_us / c.knnblend_solo_p50_us,
            c.faiss_tail,
            c.fixed_task_p50_us,
            c.fixed_task_p999_us,
            c.fixed_task_tail,
            c.stall_tail
        );
    }
    if !r.k_sweep.is_empty() {
        let _ = writeln!(s, "\nlatency vs k ({}), p50 µs:", r.k_sweep[0].case);
        let _ = writeln!(s, "{:>4} {:>9} {:>9} {:>6}", "k", "knnblend", "faiss", "×");
        for p in &r.k_sweep {
            let _ = writeln!(
                s,
                "{:>4} {:>9.1} {:>9.1} {:>6.2}",
                p.k,
                p.knnblend_p50_us,
                p.faiss_p50_us,
                p.faiss_p50_us / p.knnblend_p50_us
            );
        }
    }
    s
}

pub(super) fn human_bytes(b: f64) -> String {
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1 << 20) as f64 {
        format!("{:.2} MiB", b / (1 << 20) as f64)
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// Times the phases of one search on `index` (kernels over the whole centroid table, searches
/// hot and rotating, block search) and returns the lines to print. For finding where time goes.
pub fn phases(index: &IvfIndex) -> String {
    use kernels::Kernels;
    use std::fmt::Write;
    let mut s = String::new();
    let (d, nlist) = (index.dim(), index.nlist());
    let _ = writeln!(s, "d {d}, nlist {nlist}, N {}", index.ntotal());
    let mut time = |name: &str, reps: usize, bytes: f64, f: &mut dyn FnMut()| {
        for _ in 0..reps / 10 + 1 {
            f();
        }
        let mut v = Vec::with_capacity(reps);
        for _ in 0..reps {
            let t = Instant::now();
            f();
            v.push(t.elapsed().as_nanos() as f64 / 1e3);
        }
        v.sort_by(f64::total_cmp);
        let p50 = v[v.len() / 2];
        let _ = writeln!(
            s,
            "{name:<44} p50 {p50:>9.2} µs  min {:>9.2} µs  {:>6.1} GB/s",
            v[0],
            bytes / p50 / 1e3
        );
    };
    let k = Kernels::detect();
    let cents = index.centroids();
    // Page-aligned like the searcher's own table (rows of 64-byte multiples start on lines).
    let mut table = AlignedBytes::zeroed(cents.len());
    for (b, &x) in table.as_mut_slice().iter_mut().zip(cents) {
        *b = (x * 40.0).round().clamp(-127.0, 127.0) as i8 as u8;
    }
    // SAFETY: same length and alignment; any bits are a valid i8.
    let bytes: &[i8] =
        unsafe { std::slice::from_raw_parts(table.as_slice().as_ptr().cast(), table.len()) };
    let queries = speech_like_rows(d, 4000, 1, 1_000_004);
    let q = &queries[..d];
    let q16: Vec<i16> = queries
        .iter()
        .map(|&x| (x * 4000.0).round().clamp(-16384.0, 16384.0) as i16)
        .collect();
    let mut out = vec![0f32; nlist];
    let mut iout = vec![0i32; nlist];
    let (hb, fb) = ((nlist * d) as f64, (nlist * d * 4) as f64);
    // Sixteen 8-bit queries (the searcher's narrowing of the 16-bit ones); row sums do not
    // change the work.
    let mut q8 = vec![0u8; 16 * d];
    for (q, b) in q16
        .chunks_exact(d.max(1))
        .zip(q8.chunks_exact_mut(d.max(1)))
    {
        kernels::narrow_query(q, b);
    }
    let sums = vec![0i32; nlist];
    if d <= kernels::I8_MAX_DIM {
        time("dot_i8_rows, whole 8-bit table", 2000, hb, &mut || {
            (k.dot_i8_rows)(black_box(&q16[..d]), bytes, &mut iout)
        });
        time(
            "dot_u8_rows (8-bit query), whole table",
            2000,
            hb,
            &mut || (k.dot_u8_rows)(black_box(&q8[..d]), bytes, &sums, &mut iout),
        );
    }
    time("dot_rows, whole f32 table", 2000, fb, &mut || {
        (k.dot_rows)(black_box(q), cents, &mut out)
    });
    time("l2sq_rows, whole f32 table", 2000, fb, &mut || {
        (k.l2sq_rows)(black_box(q), cents, &mut out)
    });
    if d <= kernels::I8_MAX_DIM {
        let r = nlist.min(64);
        let mut o64 = vec![0i32; r];
        let hot = (r * d) as f64;
        time("dot_i8_rows, 64 rows (hot)", 20_000, hot, &mut || {
            (k.dot_i8_rows)(black_box(&q16[..d]), &bytes[..r * d], &mut o64)
        });
        let r = nlist.min(16);
        let mut tile = vec![0i32; 16 * r];
        time(
            "dot_u8_tile, 16 queries × 16 rows (hot)",
            20_000,
            (r * d) as f64,
            &mut || {
                (k.dot_u8_tile)(
                    black_box(&q8[..16 * d]),
                    d,
                    &bytes[..r * d],
                    &sums[..r],
                    &mut tile,
                )
            },
        );
    }
    let offsets = index.list_offsets();
    let vectors = index.vectors();
    let mut rng = Rng(99);
    let mut dist = vec![0f32; 4096];
    let big = (0..nlist)
        .max_by_key(|&l| offsets[l + 1] - offsets[l])
        .unwrap_or(0);
    let largest = offsets[big + 1] - offsets[big];
    let mut lb = 0f64;
    time(
        "l2sq_rows over a random list (cold)",
        4000,
        0.0,
        &mut || {
            let l = rng.below(nlist);
            let (a, b) = (offsets[l] as usize, offsets[l + 1] as usize);
            let n = (b - a).min(4096);
            lb += (n * d * 4) as f64;
            (k.l2sq_rows)(black_box(q), &vectors[a * d..(a + n) * d], &mut dist[..n]);
        },
    );
    time(
        "9 random f32 centroids, l2sq (cold-ish)",
        4000,
        0.0,
        &mut || {
            for _ in 0..9 {
                let l = rng.below(nlist);
                black_box((k.l2sq)(black_box(q), &cents[l * d..(l + 1) * d]));
            }
        },
    );
    let mut sr = Searcher::new();
    time("search, one query repeated (hot)", 5000, 0.0, &mut || {
        black_box(sr.search(index, black_box(q), 8, 1));
    });
    let mut i = 0;
    time("search, rotating 4000 queries", 4000, 0.0, &mut || {
        i = (i + 1) % 4000;
        black_box(sr.search(index, black_box(&queries[i * d..(i + 1) * d]), 8, 1));
    });
    let mut e = Searcher::new();
    e.set_screening(false);
    time(
        "search with exact f32 centroid scan, rotating",
        4000,
        0.0,
        &mut || {
            i = (i + 1) % 4000;
            black_box(e.search(index, black_box(&queries[i * d..(i + 1) * d]), 8, 1));
        },
    );
    time(
        "search_block of 16, rotating (per block)",
        1000,
        0.0,
        &mut || {
            i = (i + 16) % 3984;
            black_box(sr.search_block(index, black_box(&queries[i * d..(i + 16) * d]), 8, 1));
        },
    );
    let _ = writeln!(s, "{:?}", sr.stats());
    let _ = writeln!(
        s,
        "largest list {largest} vectors; mean random list {:.0} KiB",
        lb / 4400.0 / 1024.0
    );
    let _ = write!(s, "{}", tail_anatomy(index, &queries));
    s
}

/// What the slowest single queries have in common: each query timed alone (solo, rotating),
/// with how much it re-checked and scanned, the median of each against the slowest 1 %.
fn tail_anatomy(index: &IvfIndex, queries: &[f32]) -> String {
    use std::fmt::Write;
    let d = index.dim();
    let mut sr = Searcher::new();
    let mut rows: Vec<[f64; 6]> = Vec::new();
    for round in 0..3 {
        for q in queries.chunks_exact(d) {
            let a = sr.stats();
            let t = Instant::now();
            black_box(sr.search(index, black_box(q), 8, 1));
            let us = t.elapsed().as_nanos() as f64 / 1e3;
            let b = sr.stats();
            let len = sr.last().first().map_or(0, |n| {
                let o = index.list_offsets();
                let l = o.partition_point(|&x| x <= n.pos as u64) - 1;
                (o[l + 1] - o[l]) as usize
            });
            if round > 0 {
                rows.push([
                    us,
                    (b.rechecked - a.rechecked) as f64,
                    len as f64,
                    (b.codes_screened - a.codes_screened) as f64,
                    (b.vectors_rechecked - a.vectors_rechecked) as f64,
                    (b.vectors_scanned - a.vectors_scanned) as f64,
                ]);
            }
        }
    }
    rows.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let n = rows.len();
    let median = |sel: &[[f64; 6]], c: usize| {
        let mut v: Vec<f64> = sel.iter().map(|r| r[c]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tail anatomy (solo, {n} timed searches): median of   µs  centroids-rechecked  list-len  codes  vectors-rechecked  vectors-scanned"
    );
    for (name, sel) in [
        ("all", &rows[..]),
        ("middle 10 %", &rows[n * 45 / 100..n * 55 / 100]),
        ("slowest 1 %", &rows[n * 99 / 100..]),
        ("slowest 0.2 %", &rows[n * 998 / 1000..]),
    ] {
        let _ = writeln!(
            s,
            "  {name:<14} {:>8.1} {:>8.1} {:>8.0} {:>8.0} {:>8.1} {:>8.0}",
            median(sel, 0),
            median(sel, 1),
            median(sel, 2),
            median(sel, 3),
            median(sel, 4),
            median(sel, 5)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::Stalls;

    fn stalls(timeline: &[(f64, f64)], watched_s: f64) -> Stalls {
        Stalls {
            watched_s,
            timeline: timeline.to_vec(),
            ..Stalls::default()
        }
    }

    #[test]
    fn a_call_is_stretched_by_every_stall_it_runs_into() {
        let s = stalls(&[(100.0, 50.0), (200.0, 10.0), (400.0, 30.0)], 0.001);
        assert_eq!(s.replay(0.0, 50.0), Some(50.0)); // done before the first stall
        assert_eq!(s.replay(0.0, 100.0), Some(100.0)); // done as it begins
        assert_eq!(s.replay(50.0, 100.0), Some(150.0)); // 50 µs of work, the stall, 50 more
        assert_eq!(s.replay(120.0, 10.0), None); // the thread is stalled then
        assert_eq!(s.replay(100.0, 10.0), None);
        assert_eq!(s.replay(150.0, 10.0), Some(10.0)); // just after it
                                                       // 50 + stall 50 + 50 + stall 10 + 150 + stall 30 + 50: 300 µs of work.
        assert_eq!(s.replay(50.0, 300.0), Some(390.0));
    }

    #[test]
    fn the_replayed_tail_follows_the_stalls() {
        // One 100 µs stall every 4 ms for a second: a 40 µs call meets one in about 1 % of
        // its starts, so its p99.9 is 140 µs; a 1 µs call in 0.025 % (p99.9 is 1 µs).
        let ticks: Vec<(f64, f64)> = (0..250).map(|i| (i as f64 * 4000.0, 100.0)).collect();
        let s = stalls(&ticks, 1.0);
        assert!(
            (s.tail_of(40.0) - 140.0 / 40.0).abs() < 0.01,
            "{}",
            s.tail_of(40.0)
        );
        assert!((s.tail_of(1.0) - 1.0).abs() < 1e-9);
        assert_eq!(stalls(&[], 1.0).tail_of(40.0), 1.0);
    }

    #[test]
    fn watching_records_stalls_in_order_over_the_time_asked() {
        let s = Stalls::watch(0.05);
        assert!(s.watched_s >= 0.05);
        assert!(s
            .timeline
            .windows(2)
            .all(|w| w[0].0 + w[0].1 <= w[1].0 + 1e-6));
        assert!(s.timeline.iter().all(|&(_, len)| len >= Stalls::MIN_US));
        assert!((s.per_second - s.timeline.len() as f64 / s.watched_s).abs() < 1e-9);
    }
}
