//! An index swap in the middle of an RVC stream crossfades: the live runtime is built as
//! `render.rs` builds it, the converter runs on the energy stand-ins, index A serves, then
//! index B is loaded into the serving slot (`Controller::load`) — or published into another
//! slot and made active — while the stream runs. With Blend 1 the synthesizer stand-in's
//! output level is the mean of the blended features (`mean(phone) + 0.001·pitchf`, and the
//! input is silence, so `pitchf` is 0), and every stored vector of A has mean `MEAN_A`, every
//! one of B `MEAN_B`: the output level reads the crossfade's progress directly.
//!
//! Before the swap the output is A's level, after it B's, and in between it moves gradually
//! and monotonically, with no step, over a time set by `Controls::set_index_crossfade_seconds`
//! (twice the setting, twice the time); an instant swap (crossfade 0) is the negative control.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf};
use knnblend::live::{live, Controller, LiveConfig, LoadOutcome, Validator};
use knnblend_rvc::models::{ContentVec, Synthesizer};
use knnblend_rvc::pipeline::{Controls, Framing, RvcConverter, VoiceModels};
use knnblend_rvc::stream::{stream_manual, StreamConfig};

use common::{model, runtime, Rng};

const HOST: u32 = 48_000;
const DIM: usize = 768;
const MEAN_A: f32 = 0.1;
const MEAN_B: f32 = 0.4;
const HOST_BUFFER: usize = 512;

/// Block 0.1 s (7 frames of 50 fps blended per block), and RVC's defaults (block 0.25 s,
/// SOLA crossfade 0.05 s, extra 2.5 s: 15 frames blended per block).
fn framings() -> [Framing; 2] {
    [
        Framing {
            host_rate: HOST,
            block_seconds: 0.1,
            crossfade_seconds: 0.04,
            extra_seconds: 0.5,
        },
        Framing {
            host_rate: HOST,
            ..Framing::default()
        },
    ]
}

/// An RVC index whose every row has mean `mean` over its 768 channels: `mean` plus a
/// zero-mean random pattern (so the neighbours differ from query to query, their blend's mean
/// does not).
fn write_index(dir: &Path, name: &str, mean: f32, seed: u64) -> PathBuf {
    let n = 600;
    let mut rng = Rng::new(seed);
    let mut rows = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let pattern = rng.vec(DIM, 0.2);
        let m = pattern.iter().map(|&v| v as f64).sum::<f64>() / DIM as f64;
        rows.extend(pattern.iter().map(|&v| (v as f64 - m + mean as f64) as f32));
    }
    let ivf = FaissIvf::build(DIM, rvc_nlist(n), Metric::L2, &rows, &rows).unwrap();
    let path = dir.join(format!(
        "added_IVF{}_Flat_nprobe_1_{name}_v2.index",
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

/// How the swap is made.
#[derive(Clone, Copy, Debug)]
enum Swap {
    /// `Controller::load(0, B)` into the serving slot.
    LoadIntoServingSlot,
    /// B prepared and published into slot 1 beforehand, then `Controls::set_active_slot(1)`.
    ActivateOtherSlot,
}

struct Run {
    out: Vec<f32>,
    /// The input sample at which the swap was made.
    swap_at: usize,
    latency: usize,
    block: usize,
}

fn run(a: &Path, b: &Path, framing: Framing, crossfade_seconds: f32, swap: Swap) -> Run {
    runtime();
    // The live runtime as render.rs builds it.
    let (control, retrieval): (Controller, _) = live(LiveConfig {
        max_dim: DIM,
        validator: Some(dim_validator(DIM)),
        ..LiveConfig::default()
    });
    match control.load(0, a).wait() {
        LoadOutcome::Published(_) => {}
        other => panic!("index A did not load: {other:?}"),
    }
    if let Swap::ActivateOtherSlot = swap {
        let prepared = control.prepare(b, |_, _| {}).unwrap();
        control.publish(1, prepared).unwrap();
    }
    let controls = Arc::new(Controls::default());
    controls.set_index_rate(1.0);
    controls.set_protect(0.5); // off: the features are the blend
                               // The stream's first block switches from no index to A: instantly, so the stream is on
                               // A's level from the start (with a crossfade it would fade in from the raw features).
    controls.set_index_crossfade_seconds(0.0);
    controls.set_active_slot(0);
    let models = VoiceModels {
        contentvec: ContentVec::open(model("vec-768-layer-12.onnx")).unwrap(),
        synth: Synthesizer::open(model("synth_v2_40k.onnx")).unwrap(),
        rmvpe: None,
    };
    let conv = RvcConverter::new(models, retrieval, framing, controls.clone(), 1).unwrap();
    let block = conv.host_block();
    let (mut audio, mut worker) = stream_manual(StreamConfig::new(block, HOST as f32), conv);
    let latency = audio.latency();
    // The swap once the output has settled on A's level, then room for a crossfade of up to
    // twice its setting and the stream's latency.
    let swap_at = (latency + 8 * block) / HOST_BUFFER * HOST_BUFFER;
    let n = swap_at + latency + (2.0 * crossfade_seconds as f64 * HOST as f64) as usize + 4 * block;
    let input = vec![0f32; n];
    let (mut out, mut dry) = (vec![0f32; n], vec![0f32; n]);
    for (i, ((x, c), d)) in input
        .chunks(HOST_BUFFER)
        .zip(out.chunks_mut(HOST_BUFFER))
        .zip(dry.chunks_mut(HOST_BUFFER))
        .enumerate()
    {
        if i * HOST_BUFFER == swap_at {
            controls.set_index_crossfade_seconds(crossfade_seconds);
            match swap {
                Swap::LoadIntoServingSlot => match control.load(0, b).wait() {
                    LoadOutcome::Published(_) => {}
                    other => panic!("index B did not load: {other:?}"),
                },
                Swap::ActivateOtherSlot => controls.set_active_slot(1),
            }
        }
        audio.process(x, c, d);
        while worker.step() {}
    }
    let stats = audio.telemetry().snapshot();
    assert_eq!((stats.underruns, stats.dry_samples), (0, 0), "{stats:?}");
    let errors = worker
        .converter()
        .times()
        .model_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(errors, 0);
    assert!(out.iter().all(|v| v.is_finite()));
    drop(control);
    Run {
        out,
        swap_at,
        latency,
        block,
    }
}

/// The transition read off one run.
#[derive(Debug)]
struct Transition {
    /// First and last output sample whose progress `(out − A) / (B − A)` is strictly between
    /// 2 % and 98 %.
    start: usize,
    end: usize,
    /// The largest step between consecutive output samples anywhere after the stream started
    /// converting, and the largest backwards move of the progress within the transition.
    max_step: f32,
    max_reversal: f32,
}

impl Transition {
    fn samples(&self) -> usize {
        self.end + 1 - self.start
    }
}

fn check(r: &Run, what: &str) -> Transition {
    let progress = |v: f32| (v - MEAN_A) / (MEAN_B - MEAN_A);
    // Settled on A from well after the start (the first blocks fade in from silence) to the
    // swap, and on B at the end.
    let settled = r.latency + 6 * r.block;
    let swap_out = r.swap_at + r.latency;
    for n in settled..swap_out - 2 * r.block {
        assert!(
            (r.out[n] - MEAN_A).abs() < 2e-3,
            "{what}: before the swap, sample {n} is {} (A's level is {MEAN_A})",
            r.out[n]
        );
    }
    let tail = r.out.len() - r.block;
    for n in tail..r.out.len() {
        assert!(
            (r.out[n] - MEAN_B).abs() < 2e-3,
            "{what}: at the end, sample {n} is {} (B's level is {MEAN_B})",
            r.out[n]
        );
    }
    let moving: Vec<usize> = (settled..r.out.len())
        .filter(|&n| {
            let p = progress(r.out[n]);
            p > 0.02 && p < 0.98
        })
        .collect();
    assert!(!moving.is_empty(), "{what}: no transition found");
    let (start, end) = (moving[0], *moving.last().unwrap());
    let max_step = r.out[settled..]
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0f32, f32::max);
    let mut best = f32::NEG_INFINITY;
    let mut max_reversal = 0f32;
    for &v in &r.out[start..=end] {
        let p = progress(v);
        best = best.max(p);
        max_reversal = max_reversal.max(best - p);
    }
    // The transition comes from the swap: it starts within two blocks of where the swap's
    // first block comes out.
    assert!(
        start + 2 * r.block >= swap_out && start <= swap_out + 2 * r.block,
        "{what}: the transition starts at {start}, the swap comes out at {swap_out}"
    );
    Transition {
        start,
        end,
        max_step,
        max_reversal,
    }
}

#[test]
fn an_index_swap_mid_stream_crossfades_from_as_level_to_bs() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_index(dir.path(), "a", MEAN_A, 1);
    let b = write_index(dir.path(), "b", MEAN_B, 2);
    let step_of_swap = (MEAN_B - MEAN_A).abs();
    let mut durations = Vec::new();
    let [short, default] = framings();
    let cases = [
        (short, Swap::LoadIntoServingSlot),
        (short, Swap::ActivateOtherSlot),
        (default, Swap::LoadIntoServingSlot),
    ];
    for (framing, swap) in cases {
        for crossfade in [0.3f32, 0.6] {
            let r = run(&a, &b, framing, crossfade, swap);
            let what = format!(
                "{swap:?}, block {} s, crossfade {crossfade} s",
                framing.block_seconds
            );
            let t = check(&r, &what);
            let seconds = t.samples() as f64 / HOST as f64;
            eprintln!(
                "{what}: transition (2 %–98 %) over {} samples = {seconds:.3} s ({:.2} blocks, \
                 {:.2} × the setting), largest step {}, largest reversal {}",
                t.samples(),
                t.samples() as f64 / r.block as f64,
                seconds / crossfade as f64,
                t.max_step,
                t.max_reversal
            );
            // Gradual: longer than a block (an instant switch changes one block's features
            // and comes out within SOLA's 40 ms crossfade).
            assert!(
                t.samples() > r.block,
                "{what}: the transition took {} samples, less than a block ({})",
                t.samples(),
                r.block
            );
            // No step: the largest move between samples is a small part of the level change.
            assert!(
                t.max_step < 0.05 * step_of_swap,
                "{what}: a step of {} (the level changes by {step_of_swap})",
                t.max_step
            );
            // Monotonic, up to the resamplers' ripple.
            assert!(
                t.max_reversal < 0.02,
                "{what}: the crossfade went back by {} of the way",
                t.max_reversal
            );
            durations.push((what, crossfade, seconds));
        }
    }
    // The crossfade time follows the setting: twice the time for twice the setting, and the
    // setting itself within 25 % (the converter sets the runtime's frame period to the block
    // over the frames it blends per block; what remains is the block's granularity).
    for pair in durations.chunks(2) {
        let ((what_a, x_a, d_a), (_, x_b, d_b)) = (&pair[0], &pair[1]);
        let ratio = d_b / d_a;
        let want = (*x_b / *x_a) as f64;
        assert!(
            (ratio / want - 1.0).abs() < 0.15,
            "{what_a}: crossfades of {x_a} s and {x_b} s took {d_a:.3} s and {d_b:.3} s \
             (ratio {ratio:.2}, want {want:.2})"
        );
        for &(x, d) in &[(*x_a, *d_a), (*x_b, *d_b)] {
            assert!(
                d > 0.75 * x as f64 && d < 1.25 * x as f64,
                "{what_a}: a crossfade set to {x} s took {d:.3} s"
            );
        }
    }
}

#[test]
fn an_instant_swap_is_not_gradual() {
    // Negative control for the gradualness check: crossfade 0 switches at one block, and the
    // output moves from A's level to B's within SOLA's crossfade, in less than a block.
    let dir = tempfile::tempdir().unwrap();
    let a = write_index(dir.path(), "a", MEAN_A, 1);
    let b = write_index(dir.path(), "b", MEAN_B, 2);
    let r = run(&a, &b, framings()[0], 0.0, Swap::LoadIntoServingSlot);
    let t = check(&r, "instant swap");
    eprintln!(
        "instant swap: transition over {} samples, largest step {}",
        t.samples(),
        t.max_step
    );
    assert!(
        t.samples() < r.block,
        "an instant swap took {} samples (a block is {})",
        t.samples(),
        r.block
    );
}
