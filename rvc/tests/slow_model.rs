//! A synthesizer slower than realtime, on the threaded stream (a real worker thread), with the
//! audio side driven at realtime pace: the audio side never waits for the worker (every
//! `StreamAudio::process` returns within microseconds and allocates nothing), the underruns
//! are counted, and what plays instead is the latency-compensated dry signal, faded in and
//! out, never cut. The negative control runs the same setup with the normal stand-in: no
//! underruns once warmed up.
//!
//! The last test drives the same stream manually with a worker as slow (3.5 blocks per block,
//! deterministic) at budgets of one block and more, and checks that a block the worker skips
//! to catch up is played as the dry signal, never as silence.
//! `synth_v2_40k_slow.onnx` (see `fixtures/make_models.py`) computes the standard stand-in's
//! audio plus zero times the sum of a chain of dense 768 × 768 MatMuls, so its output is
//! exactly the standard one's and only its time differs.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf};
use knnblend::live::{live, Controller, LiveConfig, LoadOutcome, Validator};
use knnblend_rvc::models::{ContentVec, Synthesizer};
use knnblend_rvc::pipeline::{Controls, Framing, RvcConverter, VoiceModels};
use knnblend_rvc::stream::{stream, stream_manual, Converter, StreamConfig, StreamStats};

use common::{model, runtime, Rng};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const HOST: u32 = 48_000;
const DIM: usize = 768;
/// The host's buffer, 5.3 ms.
const HOST_BUFFER: usize = 256;
/// A hang check, not a performance figure: one `process` of 256 samples takes microseconds;
/// waiting for the slow worker would take one of its blocks (hundreds of milliseconds).
const MAX_CALL: Duration = Duration::from_millis(5);
const SLOW: &str = "synth_v2_40k_slow.onnx";
const FAST: &str = "synth_v2_40k.onnx";

fn framing() -> Framing {
    Framing {
        host_rate: HOST,
        block_seconds: 0.1,
        crossfade_seconds: 0.04,
        extra_seconds: 0.5,
    }
}

/// Stored frames near the stand-in ContentVec's feature curve (`(1 + c/C)·E + c/C − 0.5`), so
/// the retrieval blends meaningful neighbours.
fn write_index(dir: &Path) -> PathBuf {
    let n = 1000;
    let mut rng = Rng::new(23);
    let mut rows = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let e = 0.05 * (rng.next_f32() + 1.0);
        for c in 0..DIM {
            let r = c as f32 / DIM as f32;
            rows.push((1.0 + r) * e + (r - 0.5) + 0.01 * rng.next_f32());
        }
    }
    let ivf = FaissIvf::build(DIM, rvc_nlist(n), Metric::L2, &rows, &rows).unwrap();
    let path = dir.join(format!(
        "added_IVF{}_Flat_nprobe_1_slow_v2.index",
        rvc_nlist(n)
    ));
    ivf.write(&path).unwrap();
    path
}

fn dim_validator(dim: usize) -> Validator {
    Arc::new(move |index: &knnblend::index::AnyIndex| {
        if index.dim() == dim {
            Ok(())
        } else {
            Err(format!(
                "this index holds {}-dimensional features; the ContentVec model gives {dim}",
                index.dim()
            ))
        }
    })
}

/// The converter as `render.rs` assembles it: the index behind a `live` runtime with a dim
/// validator, the stand-in models, RVC's default Blend and Protect.
fn converter(index: &Path, synth: &str) -> (Controller, RvcConverter) {
    runtime();
    let (control, retrieval) = live(LiveConfig {
        max_dim: DIM,
        validator: Some(dim_validator(DIM)),
        ..LiveConfig::default()
    });
    match control.load(0, index).wait() {
        LoadOutcome::Published(_) => {}
        other => panic!("the index did not load: {other:?}"),
    }
    let models = VoiceModels {
        contentvec: ContentVec::open(model("vec-768-layer-12.onnx")).unwrap(),
        synth: Synthesizer::open(model(synth)).unwrap(),
        rmvpe: None,
    };
    let conv = RvcConverter::new(
        models,
        retrieval,
        framing(),
        Arc::new(Controls::default()),
        1,
    )
    .unwrap();
    (control, conv)
}

/// A voiced, smooth input: a 180 Hz sine with a slow swell (its largest step between samples
/// is about 0.01).
fn input(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = i as f32 / HOST as f32;
            let swell = 0.3 + 0.1 * (std::f32::consts::TAU * 0.7 * t).sin();
            swell * (std::f32::consts::TAU * 180.0 * t).sin()
        })
        .collect()
}

fn max_step(v: &[f32]) -> f32 {
    v.windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0f32, f32::max)
}

/// What a realtime run gives.
struct Realtime {
    input: Vec<f32>,
    converted: Vec<f32>,
    dry: Vec<f32>,
    latency: usize,
    fade: usize,
    block: usize,
    /// The longest `process` call.
    max_call: Duration,
    /// Counters after the warm-up (the first second) and at the end.
    warm: StreamStats,
    end: StreamStats,
}

/// Runs `seconds` of input through the threaded stream, the audio side called every
/// `HOST_BUFFER` samples' worth of wall time (a deadline schedule, so it keeps realtime pace
/// on average), each call inside `assert_no_alloc` and timed.
fn realtime(index: &Path, synth: &str, seconds: f64, budget_blocks: usize) -> Realtime {
    let (_control, conv) = converter(index, synth);
    let block = conv.host_block();
    let mut config = StreamConfig::new(block, HOST as f32);
    config.budget = budget_blocks * block;
    let (mut audio, worker) = stream(config, conv).unwrap();
    let latency = audio.latency();
    let n = (seconds * HOST as f64) as usize / HOST_BUFFER * HOST_BUFFER;
    let x = input(n);
    let (mut converted, mut dry) = (vec![0f32; n], vec![0f32; n]);
    let period = Duration::from_secs_f64(HOST_BUFFER as f64 / HOST as f64);
    let warm_up = HOST as usize / HOST_BUFFER; // one second of callbacks
    let mut warm = StreamStats::default();
    let mut max_call = Duration::ZERO;
    let start = Instant::now();
    for (i, ((x, c), d)) in x
        .chunks(HOST_BUFFER)
        .zip(converted.chunks_mut(HOST_BUFFER))
        .zip(dry.chunks_mut(HOST_BUFFER))
        .enumerate()
    {
        let t = Instant::now();
        assert_no_alloc(|| audio.process(x, c, d));
        max_call = max_call.max(t.elapsed());
        if i + 1 == warm_up {
            warm = audio.telemetry().snapshot();
        }
        let next = start + period * (i as u32 + 1);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let end = audio.telemetry().snapshot();
    drop(worker); // stops and joins the thread (after the block it is converting)
    Realtime {
        input: x,
        converted,
        dry,
        latency,
        fade: config.fade,
        block,
        max_call,
        warm,
        end,
    }
}

/// What every run must show, fast or slow: the audio side never blocked, the output is finite,
/// the dry output is the input delayed by exactly the latency, and wherever the stream played
/// dry it played exactly that dry signal.
fn check_common(r: &Realtime, what: &str) {
    assert!(
        r.max_call < MAX_CALL,
        "{what}: a process call took {:?}: the audio side waited",
        r.max_call
    );
    assert!(
        r.converted.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    for (n, &d) in r.dry.iter().enumerate() {
        let want = if n >= r.latency {
            r.input[n - r.latency]
        } else {
            0.0
        };
        assert_eq!(d, want, "{what}: dry output at {n}");
    }
    // Every sample counted dry has no converted sample in it: after an underrun's fade (at
    // most `fade` samples each) it is the dry sample itself, bit for bit.
    let equal = r
        .converted
        .iter()
        .zip(&r.dry)
        .filter(|(c, d)| c.to_bits() == d.to_bits())
        .count() as u64;
    let owed = r
        .end
        .dry_samples
        .saturating_sub(r.end.underruns * r.fade as u64);
    assert!(
        equal >= owed,
        "{what}: only {equal} output samples are the dry signal, but {} were played dry \
         ({} underruns of a {}-sample fade)",
        r.end.dry_samples,
        r.end.underruns,
        r.fade
    );
}

#[test]
fn a_slower_than_realtime_synthesizer_gives_counted_underruns_and_the_dry_signal() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_index(dir.path());
    let r = realtime(&index, SLOW, 3.0, 1);
    let what = "slow synthesizer";
    let s = r.end;
    let block_seconds = r.block as f64 / HOST as f64;
    let mean_block = s.total_block_ns as f64 / s.blocks.max(1) as f64 / 1e9;
    eprintln!(
        "{what}: {} blocks converted, {} skipped, {} underruns, {} dry samples of {}, {} \
         restarts; worker {:.0} ms per block (max {:.0} ms) for a {:.0} ms block; longest \
         process call {:?}",
        s.blocks,
        s.skipped_blocks,
        s.underruns,
        s.dry_samples,
        r.converted.len(),
        s.restarts,
        mean_block * 1e3,
        s.max_block_ns as f64 / 1e6,
        block_seconds * 1e3,
        r.max_call
    );
    // The setup is what it claims: the worker is slower than realtime.
    assert!(
        s.blocks >= 2,
        "{what}: the worker converted {} blocks",
        s.blocks
    );
    assert!(
        mean_block > 1.5 * block_seconds,
        "{what}: the slow stand-in took {:.0} ms per {:.0} ms block: not slower than realtime \
         on this machine (raise SLOW_MATMULS in make_models.py)",
        mean_block * 1e3,
        block_seconds * 1e3
    );
    check_common(&r, what);
    assert!(s.underruns > 0, "{what}: no underrun counted: {s:?}");
    assert!(s.dry_samples > 0, "{what}: no dry sample counted: {s:?}");
    // Mostly dry: the worker is never on time.
    assert!(
        s.dry_samples as usize > r.converted.len() / 2,
        "{what}: {s:?}"
    );
    // No glitch: the output moves no faster than the input does, plus what a fade between
    // the converted level (about 0.2) and the dry signal adds per sample (0.5 / 240).
    let (out_step, in_step) = (max_step(&r.converted), max_step(&r.input));
    assert!(
        out_step <= in_step + 0.01,
        "{what}: a step of {out_step} in the output (the input's largest is {in_step})"
    );
}

#[test]
fn the_normal_stand_in_with_the_same_setup_keeps_up() {
    // Negative control: the same stream, input and pace with the fast stand-in.
    let dir = tempfile::tempdir().unwrap();
    let index = write_index(dir.path());
    let r = realtime(&index, FAST, 3.0, 1);
    let what = "fast synthesizer";
    let (w, s) = (r.warm, r.end);
    eprintln!(
        "{what}: {} blocks converted, {} skipped, {} underruns ({} in the first second), {} \
         dry samples; worker {:.1} ms per block (max {:.1} ms); longest process call {:?}",
        s.blocks,
        s.skipped_blocks,
        s.underruns,
        w.underruns,
        s.dry_samples,
        s.total_block_ns as f64 / s.blocks.max(1) as f64 / 1e6,
        s.max_block_ns as f64 / 1e6,
        r.max_call
    );
    check_common(&r, what);
    assert_eq!(
        (s.underruns - w.underruns, s.dry_samples - w.dry_samples),
        (0, 0),
        "{what}: underruns after the warm-up: {s:?}"
    );
    assert_eq!(s.skipped_blocks, 0, "{what}: {s:?}");
    // It plays the converted signal, not the dry one.
    let after = r.latency + r.block;
    let dry_like = (after..r.converted.len())
        .filter(|&n| r.converted[n] == r.dry[n])
        .count();
    assert!(
        dry_like < (r.converted.len() - after) / 100,
        "{what}: {dry_like} samples equal the dry signal"
    );
    // And what it plays is the conversion: the same samples as a manually driven stream.
    let (_control, conv) = converter(&index, FAST);
    let (mut audio, mut worker) = stream_manual(StreamConfig::new(r.block, HOST as f32), conv);
    let mut want = vec![0f32; r.input.len()];
    let mut scratch = vec![0f32; HOST_BUFFER];
    for (x, c) in r
        .input
        .chunks(HOST_BUFFER)
        .zip(want.chunks_mut(HOST_BUFFER))
    {
        audio.process(x, c, &mut scratch[..x.len()]);
        while worker.step() {}
    }
    let errors = worker.converter().times().model_errors.load(Relaxed);
    assert_eq!(errors, 0);
    let differ = want.iter().zip(&r.converted).position(|(a, b)| a != b);
    assert_eq!(
        differ, None,
        "{what}: the realtime output differs from the manual one"
    );
}

/// The manually driven stream with a worker that takes `busy` host samples per converted
/// block: after each callback it steps only when its last conversion is done (skips are
/// instant, as in `ManualWorker::step`), exactly what the worker thread does with a
/// converter that slow, but deterministic.
fn simulated_slow_worker(index: &Path, x: &[f32], budget_blocks: usize, busy: usize) -> Sim {
    let (_control, conv) = converter(index, FAST);
    let converter_delay = conv.delay();
    let mut config = StreamConfig::new(conv.host_block(), HOST as f32);
    config.budget = budget_blocks * config.block;
    let (mut audio, mut worker) = stream_manual(config, conv);
    let telemetry = audio.telemetry().clone();
    let n = x.len();
    let (mut out, mut dry) = (vec![0f32; n], vec![0f32; n]);
    let mut free_at = 0;
    for (i, ((x, c), d)) in x
        .chunks(HOST_BUFFER)
        .zip(out.chunks_mut(HOST_BUFFER))
        .zip(dry.chunks_mut(HOST_BUFFER))
        .enumerate()
    {
        audio.process(x, c, d);
        let now = (i + 1) * HOST_BUFFER;
        while now >= free_at {
            let converted = telemetry.snapshot().blocks;
            if !worker.step() {
                break;
            }
            if telemetry.snapshot().blocks > converted {
                free_at = now + busy;
            }
        }
    }
    Sim {
        out,
        dry,
        stats: telemetry.snapshot(),
        latency: audio.latency(),
        converter_delay,
        fade: config.fade,
        block: config.block,
    }
}

/// What [`simulated_slow_worker`] gives.
struct Sim {
    out: Vec<f32>,
    dry: Vec<f32>,
    stats: StreamStats,
    latency: usize,
    converter_delay: usize,
    fade: usize,
    block: usize,
}

/// The longest stretch in which, wherever the dry signal is loud (|dry| > 0.1), the output is
/// near silence (|out| < 0.02): a dropout. Samples where the dry signal is quiet neither
/// count nor end a stretch.
fn longest_dropout(out: &[f32], dry: &[f32]) -> usize {
    let (mut longest, mut run) = (0, 0);
    for (o, d) in out.iter().zip(dry) {
        if d.abs() > 0.1 {
            if o.abs() < 0.02 {
                run += 1;
                longest = longest.max(run);
            } else {
                run = 0;
            }
        }
    }
    longest
}

#[test]
fn a_worker_that_skips_blocks_fades_to_dry_and_never_plays_silence() {
    // A worker taking 3.5 blocks per block falls behind and skips blocks to catch up, at
    // budgets of one block (`StreamConfig::new`) and more (the budget only has to exceed the
    // host buffer plus the worker's time). Whatever the budget, a sample no converted block
    // covers must be the dry signal (faded to, counted), never a gap.
    let dir = tempfile::tempdir().unwrap();
    let index = write_index(dir.path());
    let n = 6 * HOST as usize / HOST_BUFFER * HOST_BUFFER;
    let x = input(n);
    // The converted signal when the worker keeps up, for its own largest step once settled.
    let reference = simulated_slow_worker(&index, &x, 1, 0);
    let r = reference.stats;
    assert_eq!((r.underruns, r.skipped_blocks), (0, 0), "{r:?}");
    let settled = HOST as usize;
    // A cut is a step the size of the signal (the converted level is about 0.2–0.3). The
    // bound allows the input's and the settled converted signal's own steps, a fade's
    // (0.5 / 240 per sample), and the few hundredths the converted signal itself can jump
    // by when the converter resumes after a skipped block (its window lost a block; measured
    // 0.023 at a one-block budget).
    let bound = max_step(&x) + max_step(&reference.out[settled..]) + 0.05;
    let block = reference.block;
    let mut failures = Vec::new();
    for budget in [1usize, 2, 4] {
        let sim = simulated_slow_worker(&index, &x, budget, 7 * block / 2);
        let s = sim.stats;
        let what = format!("budget {budget} block(s)");
        assert!(s.skipped_blocks > 0 && s.blocks > 2, "{what}: {s:?}");
        assert!(sim.out.iter().all(|v| v.is_finite()), "{what}");
        // Samples played after the lead-in (the first converted sample is due at latency −
        // converter delay) that no converted block can have covered: they must all have been
        // counted dry.
        let played = (n - (sim.latency - sim.converter_delay)) as u64;
        let uncovered = played.saturating_sub(s.blocks * block as u64);
        let start = sim.latency;
        let dropout = longest_dropout(&sim.out[start..], &sim.dry[start..]);
        let step = max_step(&sim.out[settled..]);
        eprintln!(
            "{what}: {s:?}; longest dropout {dropout} samples, largest step {step} (bound \
             {bound}), samples no converted block covers at least {uncovered}"
        );
        if s.dry_samples < uncovered {
            failures.push(format!(
                "{what}: {} blocks converted, {} skipped, but only {} samples counted dry of \
                 the at least {uncovered} that no converted block covers ({} underruns counted)",
                s.blocks, s.skipped_blocks, s.dry_samples, s.underruns
            ));
        }
        if dropout > sim.fade {
            failures.push(format!(
                "{what}: the output is silent for {dropout} samples ({:.0} ms) where the dry \
                 signal plays",
                dropout as f64 * 1e3 / HOST as f64
            ));
        }
        if step > bound {
            failures.push(format!(
                "{what}: a step of {step} in the output (a cut; the input's and the converted \
                 signal's own steps allow {bound})"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "SKIPPED BLOCKS ARE PLAYED AS SILENCE (ManualWorker::step pushes a skipped block's \
         output as 0.0, which reaches the audio side on time whenever the budget exceeds about \
         one block, and plays as converted audio instead of the dry signal):\n{}",
        failures.join("\n")
    );
}
