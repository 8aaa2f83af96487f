//! The RVC path (`--rvc`): the worker's time per stage of `RvcConverter::convert` at each Block
//! setting on a 200 000-vector RVC-shaped index, and a real-time run through the threaded
//! stream with a simulated 128-sample audio callback. Timing and glue only; the work measured
//! is the library's.
//!
//! Without `--rvc-models` the models are the test stand-ins (`rvc/tests/fixtures/
//! make_models.py`): real signatures, trivial weights. Their ContentVec and synthesizer cost
//! next to nothing, so the figures measure everything around the models (resampling,
//! retrieval, f0, SOLA, the stream) and not a real voice's model time. For that, random-weight
//! models of the real architectures' sizes (ContentVec, a 40 kHz v2 synthesizer, RMVPE) come
//! from `rvc/tests/fixtures/make_sized_models.py DIR`; pass DIR as `--rvc-models`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf, IvfIndex};
use knnblend::live::{live, AudioEngine, Controller, LiveConfig, LoadOutcome};
use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend_rvc::models::{ContentVec, Rmvpe, Synthesizer};
use knnblend_rvc::pipeline::{Controls, Framing, RvcConverter, StageTimes, VoiceModels};
use knnblend_rvc::stream::{stream, Converter, StreamConfig};
use knnblend_rvc::OnnxRuntime;
use serde::Serialize;

const HOST: u32 = 48_000;
const CALLBACK: usize = 128;
const BLOCKS: [f64; 4] = [0.1, 0.25, 0.5, 1.0];
const STREAM_BLOCK: f64 = 0.25;
const WARMUP_BLOCKS: usize = 3;
const TIMED_BLOCKS: usize = 20;
/// The target: retrieval under 2 % of a block's worker time.
const RETRIEVAL_TARGET: f64 = 0.02;
/// The stages, in the order `StageTimes` names them.
pub const STAGES: [&str; 6] = [
    "resample",
    "contentvec",
    "retrieval",
    "f0",
    "synthesizer",
    "sola",
];

/// What `--rvc` is asked to do.
pub struct RvcOptions {
    /// A folder with `vec-768-layer-12.onnx`, a synthesizer and optionally `rmvpe.onnx`.
    pub models: Option<PathBuf>,
    /// Length of the real-time stream run, seconds.
    pub seconds: f64,
    /// Vectors in the RVC-shaped index.
    pub vectors: usize,
    /// Where the index and the stand-ins are cached.
    pub cache_dir: PathBuf,
    /// Seed of the index's synthetic data.
    pub seed: u64,
}

/// One stage at one Block setting.
#[derive(Serialize)]
pub struct StageResult {
    pub stage: &'static str,
    pub median_ns: u64,
    /// Median stage time / median worker time per block.
    pub share: f64,
}

/// One Block setting, driven through `RvcConverter::convert` directly.
#[derive(Serialize)]
pub struct BlockResult {
    pub block_seconds: f64,
    pub host_block: usize,
    pub blocks: usize,
    pub worker_median_ns: u64,
    pub worker_max_ns: u64,
    /// Median worker time / block duration.
    pub real_time_factor: f64,
    pub stages: Vec<StageResult>,
    /// Worker time outside the six stages (×2 and protect, noise, copies).
    pub other_ns: u64,
    /// Median over blocks of retrieval time / worker time.
    pub retrieval_share: f64,
    /// Median retrieval time / block duration.
    pub retrieval_share_of_block: f64,
    pub retrieval_pass: bool,
    pub model_errors: u64,
}

/// The real-time run through the threaded stream.
#[derive(Serialize)]
pub struct StreamResult {
    pub seconds: f64,
    pub block_seconds: f64,
    pub callback: usize,
    pub callbacks: usize,
    pub latency_ms: f64,
    pub underruns: u64,
    pub dry_samples: u64,
    pub blocks: u64,
    pub skipped_blocks: u64,
    pub restarts: u64,
    pub input_overflows: u64,
    pub model_errors: u64,
    pub worker_mean_ms: f64,
    pub worker_max_ms: f64,
    pub callback_p50_us: f64,
    pub callback_p999_us: f64,
    pub callback_max_us: f64,
    pub callback_deadline_us: f64,
    pub callbacks_late: usize,
    pub callback_thread_realtime: bool,
}

/// Everything `--rvc` measured.
#[derive(Serialize)]
pub struct RvcResult {
    pub kind: &'static str,
    /// "stand-in" or "user".
    pub models: &'static str,
    pub models_note: String,
    pub contentvec: String,
    pub synthesizer: String,
    pub model_rate: u32,
    pub f0: String,
    pub onnxruntime: String,
    pub vectors: usize,
    pub d: usize,
    pub nlist: usize,
    pub host_rate: u32,
    pub crossfade_seconds: f64,
    pub extra_seconds: f64,
    pub retrieval_target: f64,
    pub settings: Vec<BlockResult>,
    pub stream: StreamResult,
}

/// The checkout the CLI was built from (its Python venv and the stand-in script live there).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Generates the stand-in models into `dir` with the workspace's venv.
fn stand_ins(dir: &Path, log: &mut dyn FnMut(&str)) -> crate::Result<()> {
    let ws = workspace();
    let python = ws.join("target/venv/bin/python");
    let script = ws.join("rvc/tests/fixtures/make_models.py");
    if !python.is_file() {
        return Err(format!(
            "{} is missing: run `cargo xtask setup` (it creates target/venv with onnx, \
             onnxruntime and numpy), or pass --rvc-models DIR",
            python.display()
        )
        .into());
    }
    if !script.is_file() {
        return Err(format!("{} is missing (not a knnblend checkout?)", script.display()).into());
    }
    std::fs::create_dir_all(dir)?;
    log(&format!(
        "generating the stand-in RVC models into {}",
        dir.display()
    ));
    let out = Command::new(&python).arg(&script).arg(dir).output()?;
    if !out.status.success() {
        return Err(format!(
            "{} {} failed (run `cargo xtask setup` if onnx or numpy is missing):\n{}{}",
            python.display(),
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// The three model files of a folder: ContentVec, the synthesizer, RMVPE if there.
struct ModelFiles {
    contentvec: PathBuf,
    synth: PathBuf,
    rmvpe: Option<PathBuf>,
}

fn model_files(dir: &Path, stand_in: bool) -> crate::Result<ModelFiles> {
    let contentvec = dir.join("vec-768-layer-12.onnx");
    if !contentvec.is_file() {
        return Err(format!(
            "{} has no vec-768-layer-12.onnx (ContentVec, RVC v2)",
            dir.display()
        )
        .into());
    }
    let synth = if stand_in {
        dir.join("synth_v2_40k.onnx")
    } else {
        let mut candidates: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.ends_with(".onnx") && !name.starts_with("vec-") && !name.starts_with("rmvpe")
            })
            .collect();
        candidates.sort();
        candidates.into_iter().next().ok_or_else(|| {
            format!(
                "{} has no synthesizer (an .onnx file other than vec-*.onnx and rmvpe.onnx)",
                dir.display()
            )
        })?
    };
    let rmvpe = Some(dir.join("rmvpe.onnx")).filter(|p| p.is_file());
    Ok(ModelFiles {
        contentvec,
        synth,
        rmvpe,
    })
}

fn open_models(files: &ModelFiles) -> crate::Result<VoiceModels> {
    Ok(VoiceModels {
        contentvec: ContentVec::open(&files.contentvec)?,
        synth: Synthesizer::open(&files.synth)?,
        rmvpe: files.rmvpe.as_ref().map(Rmvpe::open).transpose()?,
    })
}

/// The RVC-shaped faiss index of `n` vectors (the search bench's data and file name, so the
/// two share the cache).
fn cached_index(
    opts: &RvcOptions,
    dim: usize,
    log: &mut dyn FnMut(&str),
) -> crate::Result<PathBuf> {
    let n = opts.vectors;
    let nlist = rvc_nlist(n);
    let path = opts.cache_dir.join(format!(
        "rvc-d{dim}-n{n}-ivf{nlist}-seed{}-v1.index",
        opts.seed
    ));
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(&opts.cache_dir)?;
    log(&format!(
        "building a {n}-vector {dim}-d RVC-shaped index ({nlist} lists) with faiss; cached in {}",
        path.display()
    ));
    let t = Instant::now();
    let data = super::suite::speech_like_rows(dim, n, opts.seed, opts.seed + 1);
    let faiss = FaissIvf::build(dim, nlist, Metric::L2, &data, &data)?;
    let tmp = path.with_extension("index.tmp");
    faiss.write(&tmp)?;
    std::fs::rename(&tmp, &path)?;
    log(&format!("  built in {:.1} s", t.elapsed().as_secs_f64()));
    Ok(path)
}

/// A live runtime serving `index` from slot 0.
fn runtime_with(index: &Path) -> crate::Result<(Controller, AudioEngine)> {
    let (control, audio) = live(LiveConfig {
        max_dim: 768,
        ..LiveConfig::default()
    });
    match control.load(0, index).wait() {
        LoadOutcome::Published(_) => Ok((control, audio)),
        other => Err(format!("loading {} failed: {other:?}", index.display()).into()),
    }
}

fn framing(block_seconds: f64) -> Framing {
    Framing {
        host_rate: HOST,
        block_seconds,
        crossfade_seconds: 0.05,
        extra_seconds: 2.5,
    }
}

fn stage_ns(t: &StageTimes) -> [u64; 6] {
    [
        t.resample_ns.load(Relaxed),
        t.contentvec_ns.load(Relaxed),
        t.retrieval_ns.load(Relaxed),
        t.f0_ns.load(Relaxed),
        t.synth_ns.load(Relaxed),
        t.sola_ns.load(Relaxed),
    ]
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// `samples` of a synthetic voice, looped from a 10 s take.
fn voice(samples: usize) -> Vec<f32> {
    let take = synth_voice(&VoiceParams::low().with_seed(3), HOST as f32, 10.0);
    take.iter().copied().cycle().take(samples).collect()
}

fn measure_block(
    files: &ModelFiles,
    index: &Path,
    block_seconds: f64,
    log: &mut dyn FnMut(&str),
) -> crate::Result<BlockResult> {
    let (_control, audio) = runtime_with(index)?;
    let mut conv = RvcConverter::new(
        open_models(files)?,
        audio,
        framing(block_seconds),
        Arc::new(Controls::default()),
        1,
    )?;
    let block = conv.host_block();
    let times = conv.times().clone();
    let input = voice(block * (WARMUP_BLOCKS + TIMED_BLOCKS));
    let mut out = vec![0f32; block];
    let mut totals = Vec::with_capacity(TIMED_BLOCKS);
    let mut stages: [Vec<u64>; 6] = Default::default();
    let mut shares = Vec::with_capacity(TIMED_BLOCKS);
    for (b, x) in input.chunks_exact(block).enumerate() {
        let t = Instant::now();
        conv.convert(x, &mut out);
        let total = t.elapsed().as_nanos() as u64;
        if b < WARMUP_BLOCKS {
            continue;
        }
        let s = stage_ns(&times);
        for (v, ns) in stages.iter_mut().zip(s) {
            v.push(ns);
        }
        shares.push(s[2] as f64 / total.max(1) as f64);
        totals.push(total);
    }
    let worker_max_ns = *totals.iter().max().unwrap_or(&0);
    let worker_median_ns = median_u64(&mut totals);
    let medians: Vec<u64> = stages.iter_mut().map(|v| median_u64(v)).collect();
    shares.sort_by(f64::total_cmp);
    let retrieval_share = shares[shares.len() / 2];
    let block_ns = block as f64 / HOST as f64 * 1e9;
    let result = BlockResult {
        block_seconds,
        host_block: block,
        blocks: TIMED_BLOCKS,
        worker_median_ns,
        worker_max_ns,
        real_time_factor: worker_median_ns as f64 / block_ns,
        stages: STAGES
            .iter()
            .zip(&medians)
            .map(|(&stage, &median_ns)| StageResult {
                stage,
                median_ns,
                share: median_ns as f64 / worker_median_ns.max(1) as f64,
            })
            .collect(),
        other_ns: worker_median_ns.saturating_sub(medians.iter().sum()),
        retrieval_share,
        retrieval_share_of_block: medians[2] as f64 / block_ns,
        retrieval_pass: retrieval_share < RETRIEVAL_TARGET,
        model_errors: times.model_errors.load(Relaxed),
    };
    log(&format!(
        "  block {block_seconds} s: worker {:.2} ms median, RTF {:.3}",
        worker_median_ns as f64 / 1e6,
        result.real_time_factor
    ));
    Ok(result)
}

fn measure_stream(
    files: &ModelFiles,
    index: &Path,
    seconds: f64,
    log: &mut dyn FnMut(&str),
) -> crate::Result<StreamResult> {
    let (_control, retrieval) = runtime_with(index)?;
    let conv = RvcConverter::new(
        open_models(files)?,
        retrieval,
        framing(STREAM_BLOCK),
        Arc::new(Controls::default()),
        1,
    )?;
    let times = conv.times().clone();
    let config = StreamConfig::new(conv.host_block(), HOST as f32);
    let (mut audio, worker) = stream(config, conv)?;
    let callbacks = ((seconds * HOST as f64) as usize / CALLBACK).max(1);
    let input = voice(HOST as usize * 10);
    log(&format!(
        "  streaming {seconds} s in real time ({callbacks} callbacks of {CALLBACK} samples)"
    ));
    let period = Duration::from_nanos((CALLBACK as f64 / HOST as f64 * 1e9) as u64);
    let (mut ns, realtime, late, latency) = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = knnblend::platform::set_thread_realtime(40);
            let (mut converted, mut dry) = (vec![0f32; CALLBACK], vec![0f32; CALLBACK]);
            let mut ns = Vec::with_capacity(callbacks);
            let mut late = 0;
            let start = Instant::now();
            let mut pos = 0;
            for i in 0..callbacks {
                let due = start + period * i as u32;
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                } else if now - due > period {
                    late += 1;
                }
                if pos + CALLBACK > input.len() {
                    pos = 0;
                }
                let x = &input[pos..pos + CALLBACK];
                pos += CALLBACK;
                let t = Instant::now();
                audio.process(x, &mut converted, &mut dry);
                ns.push(t.elapsed().as_nanos() as f64);
            }
            (ns, rt, late, audio.latency())
        })
        .join()
        .map_err(|_| "the callback thread panicked")
    })?;
    let stats = worker.telemetry().snapshot();
    drop(worker);
    ns.sort_by(f64::total_cmp);
    Ok(StreamResult {
        seconds: callbacks as f64 * CALLBACK as f64 / HOST as f64,
        block_seconds: STREAM_BLOCK,
        callback: CALLBACK,
        callbacks,
        latency_ms: latency as f64 / HOST as f64 * 1e3,
        underruns: stats.underruns,
        dry_samples: stats.dry_samples,
        blocks: stats.blocks,
        skipped_blocks: stats.skipped_blocks,
        restarts: stats.restarts,
        input_overflows: stats.input_overflows,
        model_errors: times.model_errors.load(Relaxed),
        worker_mean_ms: stats.total_block_ns as f64 / stats.blocks.max(1) as f64 / 1e6,
        worker_max_ms: stats.max_block_ns as f64 / 1e6,
        callback_p50_us: percentile(&ns, 0.5) / 1e3,
        callback_p999_us: percentile(&ns, 0.999) / 1e3,
        callback_max_us: ns[ns.len() - 1] / 1e3,
        callback_deadline_us: CALLBACK as f64 / HOST as f64 * 1e6,
        callbacks_late: late,
        callback_thread_realtime: realtime,
    })
}

pub fn run(opts: &RvcOptions, log: &mut dyn FnMut(&str)) -> crate::Result<RvcResult> {
    if opts.vectors < 39 {
        return Err("--rvc-vectors must be at least 39 (one IVF list)".into());
    }
    let runtime = OnnxRuntime::load(None)
        .map_err(|e| format!("{e} (run `cargo xtask setup` to install ONNX Runtime)"))?;
    let (dir, stand_in) = match &opts.models {
        Some(dir) => (dir.clone(), false),
        None => {
            let dir = opts.cache_dir.join("rvc-stand-ins");
            stand_ins(&dir, log)?;
            (dir, true)
        }
    };
    let files = model_files(&dir, stand_in)?;
    let probe = open_models(&files)?;
    let d = probe.contentvec.dim();
    let info = probe.synth.info();
    let f0 = if probe.rmvpe.is_some() {
        "RMVPE"
    } else {
        "built-in tracker"
    };
    drop(probe);
    let index = cached_index(opts, d, log)?;
    let nlist = IvfIndex::open(&index)?.nlist();
    let mut settings = Vec::new();
    for block in BLOCKS {
        settings.push(measure_block(&files, &index, block, log)?);
    }
    let stream = measure_stream(&files, &index, opts.seconds, log)?;
    let name = |p: &Path| {
        p.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into())
    };
    Ok(RvcResult {
        kind: "rvc",
        models: if stand_in { "stand-in" } else { "user" },
        models_note: if stand_in {
            "stand-in models only (real signatures, trivial weights: ContentVec and the \
             synthesizer cost next to nothing); for real-size random-weight models run \
             rvc/tests/fixtures/make_sized_models.py DIR and pass --rvc-models DIR"
                .into()
        } else {
            format!("models from {}", dir.display())
        },
        contentvec: name(&files.contentvec),
        synthesizer: name(&files.synth),
        model_rate: info.sample_rate,
        f0: f0.into(),
        onnxruntime: runtime.version().to_string(),
        vectors: opts.vectors,
        d,
        nlist,
        host_rate: HOST,
        crossfade_seconds: 0.05,
        extra_seconds: 2.5,
        retrieval_target: RETRIEVAL_TARGET,
        settings,
        stream,
    })
}

/// A summary row of the table: its label and how a setting's cell reads.
type Row<'a> = (&'a str, &'a dyn Fn(&BlockResult) -> String);

pub fn format_text(r: &RvcResult) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nRVC path: RvcConverter::convert at {} Hz, crossfade {} s, extra {} s; ContentVec {}, \
         synthesizer {} ({} Hz), f0 {}; ONNX Runtime {}",
        r.host_rate,
        r.crossfade_seconds,
        r.extra_seconds,
        r.contentvec,
        r.synthesizer,
        r.model_rate,
        r.f0,
        r.onnxruntime
    );
    let _ = writeln!(s, "  {}", r.models_note);
    let _ = writeln!(
        s,
        "  index: {} vectors, d {}, {} lists (RVC-shaped synthetic, faiss IVF-Flat)",
        r.vectors, r.d, r.nlist
    );
    let _ = writeln!(
        s,
        "\nworker time per block, median of {} blocks (share of the block's worker time):",
        r.settings.first().map_or(0, |b| b.blocks)
    );
    let mut header = format!("  {:<12}", "stage");
    for b in &r.settings {
        let _ = write!(header, " {:>22}", format!("block {} s", b.block_seconds));
    }
    let _ = writeln!(s, "{header}");
    for (i, stage) in STAGES.iter().enumerate() {
        let mut line = format!("  {stage:<12}");
        for b in &r.settings {
            let st = &b.stages[i];
            let _ = write!(
                line,
                " {:>22}",
                format!(
                    "{:.3} ms {:5.1} %",
                    st.median_ns as f64 / 1e6,
                    100.0 * st.share
                )
            );
        }
        let _ = writeln!(s, "{line}");
    }
    let rows: [Row; 5] = [
        ("other", &|b| {
            format!(
                "{:.3} ms {:5.1} %",
                b.other_ns as f64 / 1e6,
                100.0 * b.other_ns as f64 / b.worker_median_ns.max(1) as f64
            )
        }),
        ("total", &|b| {
            format!(
                "{:.3} ms (max {:.3})",
                b.worker_median_ns as f64 / 1e6,
                b.worker_max_ns as f64 / 1e6
            )
        }),
        ("RTF", &|b| format!("{:.4}", b.real_time_factor)),
        ("retrieval", &|b| {
            format!(
                "{:.2} % {}",
                100.0 * b.retrieval_share,
                if b.retrieval_pass { "PASS" } else { "MISS" }
            )
        }),
        ("model errors", &|b| b.model_errors.to_string()),
    ];
    for (label, cell) in rows {
        let mut line = format!("  {label:<12}");
        for b in &r.settings {
            let _ = write!(line, " {:>22}", cell(b));
        }
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(
        s,
        "  RTF = worker time / block duration; retrieval: its share of the worker time, target \
         < {:.0} % (PASS/MISS); of the block's duration it is {}",
        100.0 * r.retrieval_target,
        r.settings
            .iter()
            .map(|b| format!(
                "{:.3} % at {} s",
                100.0 * b.retrieval_share_of_block,
                b.block_seconds
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if r.models == "stand-in" {
        let _ = writeln!(
            s,
            "  (stand-in models: the worker time lacks real ContentVec and synthesizer time, so \
             retrieval's share here is far above what it is with real models)"
        );
    }
    let st = &r.stream;
    let _ = writeln!(
        s,
        "\nstream: {:.0} s through the threaded stream, block {} s, {}-sample callbacks at {} Hz \
         paced in real time; latency {:.1} ms",
        st.seconds, st.block_seconds, st.callback, r.host_rate, st.latency_ms
    );
    let _ = writeln!(
        s,
        "  underruns {}, dry samples {}, blocks {} (skipped {}), restarts {}, model errors {}; \
         worker mean {:.2} ms, max {:.2} ms per block",
        st.underruns,
        st.dry_samples,
        st.blocks,
        st.skipped_blocks,
        st.restarts,
        st.model_errors,
        st.worker_mean_ms,
        st.worker_max_ms
    );
    let _ = writeln!(
        s,
        "  callback (StreamAudio::process): p50 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs of the \
         {:.0} µs deadline; {} callbacks started over a period late; callback thread {}",
        st.callback_p50_us,
        st.callback_p999_us,
        st.callback_max_us,
        st.callback_deadline_us,
        st.callbacks_late,
        if st.callback_thread_realtime {
            "SCHED_FIFO"
        } else {
            "not realtime (no permission)"
        }
    );
    s
}
