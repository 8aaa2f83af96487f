//! `knnblend bench`: per-frame search against faiss in one process (the suite is `suite.rs`).

use std::path::PathBuf;

mod fastscan;
mod recall;
mod rvc;
mod suite;

/// Arguments of `knnblend bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Reduced set (N = 10 000 and 30 000, 5 000 queries): under a minute once indexes are cached.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON (an array with one object per case) instead of tables.
    #[arg(long)]
    json: bool,
    /// A real faiss IVF-Flat .index (e.g. RVC's added_*.index) to run as an extra case; repeatable.
    #[arg(long = "index", value_name = "PATH")]
    indexes: Vec<PathBuf>,
    /// Run only the --index cases, not the synthetic RVC-shaped ones.
    #[arg(long)]
    only_index: bool,
    /// Timed single queries per case.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Where built indexes are cached.
    #[arg(long, default_value = "target/bench-cache")]
    cache_dir: PathBuf,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also measure the plugin path: VoiceEngine::process at 48 kHz (128-sample blocks, stereo,
    /// 50 000-frame voice) and a ~300 MB index swap under a simulated audio callback.
    #[arg(long)]
    plugin: bool,
    /// Only the plugin path (implies --plugin; no search comparison).
    #[arg(long)]
    only_plugin: bool,
    /// Instead of the comparison, time the phases of a search on this index (kernels, hot and
    /// rotating searches, block search).
    #[arg(long, value_name = "PATH")]
    phases: Option<PathBuf>,
    /// Instead of the comparison, measure the RVC path: the worker's time per stage at each
    /// Block setting (0.1, 0.25, 0.5, 1 s) on an RVC-shaped index, and a real-time stream run
    /// with a 128-sample callback (underruns, callback p99.9).
    #[arg(long)]
    rvc: bool,
    /// A folder with vec-768-layer-12.onnx, a synthesizer and optionally rmvpe.onnx (default:
    /// the test stand-ins, generated into the cache dir with target/venv's Python).
    #[arg(long, value_name = "DIR", requires = "rvc")]
    rvc_models: Option<PathBuf>,
    /// Length of the --rvc real-time stream run, seconds.
    #[arg(long, value_name = "N", default_value_t = 60.0, requires = "rvc")]
    rvc_seconds: f64,
    /// Vectors in the --rvc index (768-d, RVC's list count).
    #[arg(long, value_name = "N", default_value_t = 200_000, requires = "rvc")]
    rvc_vectors: usize,
    /// Instead of the comparison, IVF-PQ FastScan (`IVF…,PQ…x4fs` and `…,RFlat`, built by faiss)
    /// against faiss's own search of the same file and knnblend's IVF-Flat on the same data:
    /// latency, recall@8, bytes per vector, the cost of query-side α expansion.
    #[arg(long)]
    fastscan: bool,
    /// Instead of the comparison, recall@8 and cost at one probed list of spilled (`build
    /// --spill`) and balanced (`--max-list-factor`) indexes against plain ones probed 1, 2, 4
    /// and 8 lists: the synthetic RVC shapes and an espeak-ng speech proxy.
    #[arg(long)]
    recall: bool,
    /// λ of the spilled --recall cases.
    #[arg(
        long,
        value_name = "LAMBDA",
        default_value_t = 1.0,
        requires = "recall"
    )]
    spill: f32,
    /// Copies per vector of the spilled --recall cases (placed where they help most; SOAR's
    /// one copy per vector runs beside them).
    #[arg(long, value_name = "B", default_value_t = 1.5, requires = "recall")]
    spill_copies: f32,
    /// List bound of the balanced --recall cases, × the mean list.
    #[arg(long, value_name = "F", default_value_t = 3.0, requires = "recall")]
    max_list_factor: f64,
}

pub fn run(a: Args) -> crate::Result {
    use suite::BenchOptions;
    if let Some(p) = &a.phases {
        let index = knnblend::index::IvfIndex::open(p)?;
        print!("{}", suite::phases(&index));
        return Ok(());
    }
    if a.rvc {
        let opts = rvc::RvcOptions {
            models: a.rvc_models,
            seconds: a.rvc_seconds,
            vectors: a.rvc_vectors,
            cache_dir: a.cache_dir,
            seed: a.seed,
        };
        let r = rvc::run(&opts, &mut |line: &str| eprintln!("{line}"))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&[r])?);
        } else {
            print!("{}", rvc::format_text(&r));
        }
        return Ok(());
    }
    if a.recall {
        let opts = recall::RecallOptions {
            quick: a.quick,
            cache_dir: a.cache_dir,
            seed: a.seed,
            lambda: a.spill,
            copies: a.spill_copies,
            max_list_factor: a.max_list_factor,
        };
        let r = recall::run(&opts, &mut |line: &str| eprintln!("{line}"))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&[r])?);
        } else {
            print!("{}", recall::format_text(&r));
        }
        return Ok(());
    }
    if a.fastscan {
        let opts = fastscan::FastScanOptions {
            quick: a.quick,
            queries: a.queries,
            cache_dir: a.cache_dir,
            seed: a.seed,
        };
        let r = fastscan::run(&opts, &mut |line: &str| eprintln!("{line}"))?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&[r])?);
        } else {
            print!("{}", fastscan::format_text(&r));
        }
        return Ok(());
    }
    let opts = BenchOptions {
        quick: a.quick,
        queries: a.queries,
        cache_dir: a.cache_dir,
        indexes: a.indexes,
        seed: a.seed,
        only_indexes: a.only_index,
    };
    let mut log = |line: &str| eprintln!("{line}");
    let report = if a.only_plugin {
        None
    } else {
        Some(suite::run(&opts, &mut log)?)
    };
    let plugin = if a.plugin || a.only_plugin {
        Some(plugin::run(&opts.cache_dir, &mut log)?)
    } else {
        None
    };
    if a.json {
        // One array: the search cases, then (with --plugin) one object of kind "plugin".
        let mut all: Vec<serde_json::Value> = Vec::new();
        if let Some(r) = &report {
            for c in &r.cases {
                let mut v = serde_json::to_value(c)?;
                v["kind"] = "search".into();
                all.push(v);
            }
        }
        if let Some(p) = &plugin {
            all.push(serde_json::to_value(p)?);
        }
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        if let Some(r) = &report {
            print!("{}", suite::format_text(r));
        }
        if let Some(p) = &plugin {
            print!("{}", plugin::format_text(p));
        }
    }
    Ok(())
}

/// The plugin path (`--plugin`): the whole `VoiceEngine::process` on a live runtime, and an
/// index swap while a simulated audio callback runs. Timing and glue only; the work measured is
/// the library's.
mod plugin {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
    use std::time::{Duration, Instant};

    use knnblend::format::{self, ListParts};
    use knnblend::index::IvfIndex;
    use knnblend::live::{self, LoadOutcome};
    use knnblend::voice::synth::{synth_voice, VoiceParams};
    use knnblend::voice::{
        build_from_audio, write_wav_f32, Audio, BlockParams, BuildOptions, FeatureSpec, VoiceEngine,
    };
    use serde::Serialize;

    const SR: f32 = 48_000.0;
    const BLOCK: usize = 128;

    /// Figures of the plugin path.
    #[derive(Serialize)]
    pub struct PluginResult {
        pub kind: &'static str,
        pub voice_frames: usize,
        pub d: usize,
        pub nlist: usize,
        pub sample_rate: f32,
        pub block: usize,
        pub channels: usize,
        pub blocks: usize,
        pub real_time_factor: f64,
        pub cpu_percent_of_one_core: f64,
        pub block_p50_us: f64,
        pub block_p99_us: f64,
        pub block_p999_us: f64,
        pub block_max_us: f64,
        pub block_p999_share_of_deadline: f64,
        pub blended_frames: u64,
        pub swap_index_bytes: u64,
        pub swap_index_vectors: usize,
        pub swap_callbacks: usize,
        pub swap_callbacks_over_half_deadline: usize,
        pub swap_callback_max_us: f64,
        pub swap_load_ms: f64,
        pub swap_request_to_first_blend_ms: f64,
        /// When the slowest callback started, ms after the load request (negative: before it).
        pub swap_slowest_at_ms: f64,
        /// Page faults (minor + major) the callback thread took during the slowest callback.
        pub swap_slowest_page_faults: u64,
        /// Times the scheduler preempted the callback thread during the slowest callback.
        pub swap_slowest_preemptions: u64,
        /// Whether the callback thread ran under `SCHED_FIFO` (as an audio thread does).
        pub swap_callback_realtime: bool,
    }

    /// One simulated callback: when it started (ns since the swap test began), how long it
    /// took, and the page faults and involuntary context switches of its thread meanwhile.
    #[derive(Clone, Copy)]
    struct Callback {
        start_ns: u64,
        ns: f64,
        faults: u64,
        preemptions: u64,
    }

    /// The calling thread's page faults (minor + major) and involuntary context switches.
    /// The calling thread's page faults and involuntary switches (zero where the OS does not
    /// count them per thread).
    fn thread_usage() -> (u64, u64) {
        let u = knnblend::platform::thread_usage().unwrap_or_default();
        (u.page_faults, u.involuntary_switches)
    }

    fn percentile(sorted: &[f64], p: f64) -> f64 {
        sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
    }

    /// A voice index of about `frames` frames built from synthetic speech with `knnblend build
    /// --audio`'s recipe (cached).
    fn voice_index(
        cache: &Path,
        spec: &FeatureSpec,
        frames: usize,
        log: &mut dyn FnMut(&str),
    ) -> crate::Result<PathBuf> {
        let path = cache.join(format!("voice-{frames}-v1.kbi"));
        if path.is_file() {
            return Ok(path);
        }
        std::fs::create_dir_all(cache)?;
        log(&format!(
            "building a {frames}-frame voice index (synthetic speech, knnblend build recipe)"
        ));
        // Voiced frames are kept: synthesise a little more audio than frames × hop.
        let seconds = frames as f32 * spec.hop_ms / 1000.0 * 1.15;
        let samples = synth_voice(&VoiceParams::high().with_seed(7), SR, seconds);
        let wav = cache.join(format!("voice-{frames}.wav"));
        write_wav_f32(
            &wav,
            &Audio {
                sample_rate: SR as u32,
                channels: 1,
                samples,
            },
        )?;
        let tmp = cache.join(format!("voice-{frames}-v1.tmp.kbi"));
        let summary = build_from_audio(
            std::slice::from_ref(&wav),
            &tmp,
            spec,
            &BuildOptions::default(),
            &mut |_, _, _| {},
        )?;
        std::fs::rename(&tmp, &path)?;
        let _ = std::fs::remove_file(&wav);
        log(&format!(
            "  {} vectors, {} lists",
            summary.vectors, summary.nlist
        ));
        Ok(path)
    }

    /// A ~300 MB voice index for the swap: the voice's lists, each vector repeated with small
    /// perturbations (same centroids; lists grow, as with a much longer recording).
    fn big_index(
        cache: &Path,
        voice: &Path,
        target_bytes: u64,
        log: &mut dyn FnMut(&str),
    ) -> crate::Result<PathBuf> {
        let path = cache.join(format!("voice-big-{}MB-v1.kbi", target_bytes >> 20));
        if path.is_file() {
            return Ok(path);
        }
        log(&format!(
            "writing a ~{} MB voice index for the swap",
            target_bytes >> 20
        ));
        let small = IvfIndex::open(voice)?;
        let mut parts = small.to_parts();
        let per = (small.dim() * 4 + 12) as u64;
        let copies = (target_bytes / per / small.ntotal().max(1) as u64).max(1) as usize;
        let mut next_id = 0i64;
        let mut seed = 1u64;
        for list in &mut parts.lists {
            let d = small.dim();
            let mut ids = Vec::new();
            let mut vectors = Vec::new();
            for v in list.vectors.chunks_exact(d) {
                for _ in 0..copies {
                    ids.push(next_id);
                    next_id += 1;
                    vectors.extend(v.iter().map(|&x| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        x * (1.0 + 0.02 * ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5))
                    }));
                }
            }
            *list = ListParts { ids, vectors };
        }
        parts.metadata.frames = next_id as u64;
        format::write_kbi(&path, &parts)?;
        Ok(path)
    }

    /// Drops a file's pages from the page cache, so a load really reads it.
    fn evict_from_page_cache(path: &Path) {
        if let Ok(f) = std::fs::File::open(path) {
            knnblend::platform::drop_page_cache(&f);
        }
    }

    fn realtime_thread() -> bool {
        knnblend::platform::set_thread_realtime(40)
    }

    pub fn run(cache: &Path, log: &mut dyn FnMut(&str)) -> crate::Result<PluginResult> {
        let spec = FeatureSpec::default();
        let voice = voice_index(cache, &spec, 50_000, log)?;
        let big = big_index(cache, &voice, 300 << 20, log)?;
        let vi = IvfIndex::open(&voice)?;
        let (voice_frames, d, nlist) = (vi.ntotal(), vi.dim(), vi.nlist());
        drop(vi);

        // 1. Cost of process(): 30 s of a different synthetic voice, stereo, 128-sample blocks.
        let (ctrl, audio) = live::live(spec.live_config(2));
        let mut engine = VoiceEngine::new(audio, &spec, SR, 2);
        match ctrl.load(0, &voice).wait() {
            LoadOutcome::Published(_) => {}
            other => return Err(format!("loading the voice failed: {other:?}").into()),
        }
        let input = synth_voice(&VoiceParams::low().with_seed(3), SR, 30.0);
        let params = BlockParams::default();
        let (mut l, mut r) = (vec![0f32; BLOCK], vec![0f32; BLOCK]);
        let rt = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = realtime_thread();
                let mut times = Vec::with_capacity(input.len() / BLOCK);
                // One second of warm-up (the engine picks up the index, caches fill).
                for (i, chunk) in input.chunks_exact(BLOCK).enumerate() {
                    l.copy_from_slice(chunk);
                    r.copy_from_slice(chunk);
                    let t = Instant::now();
                    engine.process(&mut [&mut l[..], &mut r[..]], &params);
                    let ns = t.elapsed().as_nanos() as f64;
                    if i * BLOCK >= SR as usize {
                        times.push(ns);
                    }
                }
                (rt, times)
            })
            .join()
            .expect("the timing thread panicked")
        });
        let (_, mut times) = rt;
        let blended = engine.stats().blended;
        let total: f64 = times.iter().sum();
        let audio_ns = times.len() as f64 * BLOCK as f64 / SR as f64 * 1e9;
        times.sort_by(f64::total_cmp);
        let deadline_us = BLOCK as f64 / SR as f64 * 1e6;
        let p999 = percentile(&times, 0.999) / 1e3;

        // 2. Swap under load: a callback every 2.67 ms while the control side loads ~300 MB into
        // slot 1 and the host switches to it once published.
        evict_from_page_cache(&big);
        let swap_bytes = std::fs::metadata(&big)?.len();
        let active = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let request_at = AtomicU64::new(0); // ns since `epoch`, 0 = not yet
        let first_blend_at = AtomicU64::new(0);
        let target_id = AtomicU64::new(u64::MAX);
        let epoch = Instant::now();
        let period = Duration::from_nanos((BLOCK as f64 / SR as f64 * 1e9) as u64);
        let (callbacks, rt, load_ms) = std::thread::scope(|s| -> crate::Result<_> {
            let h = s.spawn(|| {
                let rt = realtime_thread();
                let mut times = Vec::with_capacity(4096);
                let mut next = Instant::now();
                let mut pos = 0;
                while !stop.load(Relaxed) {
                    next += period;
                    let chunk = &input[pos..pos + BLOCK];
                    pos = (pos + BLOCK) % (input.len() - BLOCK);
                    l.copy_from_slice(chunk);
                    r.copy_from_slice(chunk);
                    let p = BlockParams {
                        active_slot: active.load(Relaxed),
                        ..params
                    };
                    // The thread's counters are read outside the timed region.
                    let (faults, preemptions) = thread_usage();
                    let start_ns = epoch.elapsed().as_nanos() as u64;
                    let t = Instant::now();
                    engine.process(&mut [&mut l[..], &mut r[..]], &p);
                    let ns = t.elapsed().as_nanos() as f64;
                    let (faults_after, preemptions_after) = thread_usage();
                    times.push(Callback {
                        start_ns,
                        ns,
                        faults: faults_after - faults,
                        preemptions: preemptions_after - preemptions,
                    });
                    let serving = engine.retriever().serving_id();
                    if first_blend_at.load(Relaxed) == 0
                        && serving.is_some()
                        && serving == Some(target_id.load(Relaxed))
                    {
                        first_blend_at.store(epoch.elapsed().as_nanos() as u64, Relaxed);
                    }
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                (times, rt)
            });
            std::thread::sleep(Duration::from_millis(500));
            request_at.store(epoch.elapsed().as_nanos() as u64, Relaxed);
            let t = Instant::now();
            let outcome = ctrl.load(1, &big).wait();
            let load_ms = t.elapsed().as_secs_f64() * 1e3;
            match outcome {
                LoadOutcome::Published(info) => target_id.store(info.id, Relaxed),
                other => {
                    stop.store(true, Relaxed);
                    let _ = h.join();
                    return Err(format!("loading the swap index failed: {other:?}").into());
                }
            }
            active.store(1, Relaxed);
            std::thread::sleep(Duration::from_millis(1500));
            stop.store(true, Relaxed);
            let (times, rt) = h.join().map_err(|_| "the callback thread panicked")?;
            Ok((times, rt, load_ms))
        })?;
        let over = callbacks
            .iter()
            .filter(|c| c.ns > 0.5 * deadline_us * 1e3)
            .count();
        let first = first_blend_at.load(Relaxed);
        let req = request_at.load(Relaxed);
        let slowest = callbacks
            .iter()
            .copied()
            .max_by(|a, b| a.ns.total_cmp(&b.ns))
            .ok_or("no callback ran")?;
        Ok(PluginResult {
            kind: "plugin",
            voice_frames,
            d,
            nlist,
            sample_rate: SR,
            block: BLOCK,
            channels: 2,
            blocks: times.len(),
            real_time_factor: total / audio_ns,
            cpu_percent_of_one_core: 100.0 * total / audio_ns,
            block_p50_us: percentile(&times, 0.5) / 1e3,
            block_p99_us: percentile(&times, 0.99) / 1e3,
            block_p999_us: p999,
            block_max_us: times[times.len() - 1] / 1e3,
            block_p999_share_of_deadline: p999 / deadline_us,
            blended_frames: blended,
            swap_index_bytes: swap_bytes,
            swap_index_vectors: IvfIndex::open_with(
                &big,
                knnblend::index::OpenOptions {
                    verify: false,
                    ..Default::default()
                },
            )?
            .ntotal(),
            swap_callbacks: callbacks.len(),
            swap_callbacks_over_half_deadline: over,
            swap_callback_max_us: slowest.ns / 1e3,
            swap_load_ms: load_ms,
            swap_request_to_first_blend_ms: if first > req {
                (first - req) as f64 / 1e6
            } else {
                f64::NAN
            },
            swap_slowest_at_ms: (slowest.start_ns as f64 - req as f64) / 1e6,
            swap_slowest_page_faults: slowest.faults,
            swap_slowest_preemptions: slowest.preemptions,
            swap_callback_realtime: rt,
        })
    }

    pub fn format_text(p: &PluginResult) -> String {
        format!(
            "\nplugin path: VoiceEngine::process, {} Hz, {}-sample blocks, stereo, {}-frame voice (d {}, {} lists)\n\
             \x20 real-time factor {:.4} ({:.2} % of one core); block p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({:.1} % of the {:.0} µs block), max {:.1} µs; {} frames blended\n\
             swap under load: callback every {:.2} ms while loading and switching to a {:.0} MB index ({} vectors, read from disk)\n\
             \x20 {} callbacks, {} over 50 % of the deadline, slowest {:.1} µs; load {:.0} ms; request to first blend from the new index {:.0} ms\n\
             \x20 slowest callback: {:+.0} ms from the request, {} page faults and {} preemptions of its thread meanwhile; callback thread {}\n",
            p.sample_rate,
            p.block,
            p.voice_frames,
            p.d,
            p.nlist,
            p.real_time_factor,
            p.cpu_percent_of_one_core,
            p.block_p50_us,
            p.block_p99_us,
            p.block_p999_us,
            100.0 * p.block_p999_share_of_deadline,
            p.block as f64 / p.sample_rate as f64 * 1e6,
            p.block_max_us,
            p.blended_frames,
            p.block as f64 / p.sample_rate as f64 * 1e3,
            p.swap_index_bytes as f64 / 1e6,
            p.swap_index_vectors,
            p.swap_callbacks,
            p.swap_callbacks_over_half_deadline,
            p.swap_callback_max_us,
            p.swap_load_ms,
            p.swap_request_to_first_blend_ms,
            p.swap_slowest_at_ms,
            p.swap_slowest_page_faults,
            p.swap_slowest_preemptions,
            if p.swap_callback_realtime {
                "SCHED_FIFO"
            } else {
                "not realtime (no permission)"
            },
        )
    }
}
