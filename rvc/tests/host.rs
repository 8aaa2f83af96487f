//! The plugin's voice host on stand-in models, with a real loader thread and real workers: a
//! voice opens off the audio thread while audio passes through at the reported latency; the
//! audio side never allocates or frees (the allocator aborts the test if it does); the latency
//! is the one the times give and does not move when the voice arrives; switching slots
//! crossfades; a new index in the serving slot goes through the voice's live runtime; bad files
//! and mismatched widths are refused with messages while the serving voice keeps serving.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf};
use knnblend_rvc::host::{
    fixed_latency, host, BlockParams, HostConfig, VoiceAudio, VoiceControl, VoiceState,
};
use knnblend_rvc::pipeline::Framing;
use knnblend_rvc::runtime::RuntimeSearch;
use knnblend_rvc::voice::VoiceFiles;

use common::{model, runtime, Rng};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const HOST: u32 = 48_000;
/// Host buffer: 10 ms.
const BUFFER: usize = 480;

fn params(slot: usize) -> BlockParams {
    BlockParams {
        active_slot: slot,
        block_seconds: 0.1,
        extra_seconds: 0.3,
        sola_seconds: 0.04,
        crossfade_seconds: 0.05,
        ..BlockParams::default()
    }
}

fn framing() -> Framing {
    Framing {
        host_rate: HOST,
        block_seconds: 0.1,
        crossfade_seconds: 0.04,
        extra_seconds: 0.3,
    }
}

/// An RVC `added_*.index` of `n` random rows near the stand-in ContentVec's curve, offset by
/// `level` (so two indexes give audibly different voices at Blend 1).
fn index(dir: &Path, name: &str, dim: usize, level: f32, seed: u64) -> PathBuf {
    let n = 400;
    let mut rng = Rng::new(seed);
    let rows: Vec<f32> = (0..n * dim)
        .map(|i| {
            let r = (i % dim) as f32 / dim as f32;
            r - 0.5 + level + 0.01 * rng.next_f32()
        })
        .collect();
    let ivf = FaissIvf::build(dim, rvc_nlist(n), Metric::L2, &rows, &rows).unwrap();
    let path = dir.join(name);
    ivf.write(&path).unwrap();
    path
}

fn files(synth: &str, cv: &str, index: &Path) -> VoiceFiles {
    VoiceFiles {
        model: model(synth),
        index: index.to_path_buf(),
        contentvec: model(cv),
        rmvpe: None,
    }
}

fn start() -> (VoiceControl, VoiceAudio) {
    runtime();
    host(HostConfig {
        host_rate: HOST,
        runtime: RuntimeSearch::default(),
        seed: 7,
        initial: params(0),
    })
    .unwrap()
}

/// A voiced input: 180 Hz sawtooth.
fn input_at(i: usize) -> f32 {
    let t = i as f32 / HOST as f32;
    0.3 * 2.0 * ((t * 180.0).fract() - 0.5)
}

/// Drives the audio side at about real time (the workers need wall time), the process call
/// under the allocation guard, until `done` or `timeout`. Returns (input, output) of the run.
struct Driver {
    at: usize,
    input: Vec<f32>,
    output: Vec<f32>,
    latencies: Vec<usize>,
}

impl Driver {
    fn new() -> Self {
        Driver {
            at: 0,
            input: Vec::new(),
            output: Vec::new(),
            latencies: Vec::new(),
        }
    }

    fn run(
        &mut self,
        audio: &mut VoiceAudio,
        p: &BlockParams,
        timeout: Duration,
        mut done: impl FnMut(&VoiceAudio) -> bool,
    ) -> bool {
        let began = Instant::now();
        let mut buffer = vec![0f32; BUFFER];
        while began.elapsed() < timeout {
            for (j, x) in buffer.iter_mut().enumerate() {
                *x = input_at(self.at + j);
            }
            self.input.extend_from_slice(&buffer);
            {
                let mut channels = [&mut buffer[..]];
                assert_no_alloc(|| audio.process(&mut channels, p));
            }
            self.output.extend_from_slice(&buffer);
            self.latencies.push(audio.latency());
            self.at += BUFFER;
            if done(audio) {
                return true;
            }
            // About real time, a little faster.
            let due = Duration::from_secs_f64(self.at as f64 / HOST as f64 * 0.8);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                std::thread::sleep(wait.min(Duration::from_millis(10)));
            }
        }
        false
    }
}

fn wait_state(
    control: &VoiceControl,
    slot: usize,
    want: impl Fn(&VoiceState) -> bool,
) -> VoiceState {
    let began = Instant::now();
    loop {
        let state = control.status(slot).state;
        if want(&state) {
            return state;
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "slot {slot} stuck in {state:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

fn max_step(x: &[f32]) -> f32 {
    x.windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_voice_opens_off_thread_at_a_fixed_latency_then_swaps_by_crossfade() {
    let dir = tempfile::tempdir().unwrap();
    let a = index(dir.path(), "added_a.index", 768, 0.0, 1);
    let (control, mut audio) = start();
    let expected = fixed_latency(&framing()).unwrap();
    let p = params(0);
    let mut drive = Driver::new();

    // Before any voice: pass-through, delayed by the latency the times give.
    drive.run(&mut audio, &p, Duration::from_millis(400), |_| false);
    assert!(!audio.is_serving());
    assert_eq!(audio.latency(), expected, "latency before the voice");
    let n = drive.output.len();
    for i in expected..n {
        assert_eq!(
            drive.output[i],
            drive.input[i - expected],
            "pass-through at {i} is not the input delayed by {expected}"
        );
    }

    control.set(
        0,
        Some(files("synth_v2_40k.onnx", "vec-768-layer-12.onnx", &a)),
    );
    assert!(
        drive.run(&mut audio, &p, Duration::from_secs(60), |a| a.is_serving()),
        "the voice never served: {:?}",
        control.status(0)
    );
    assert_eq!(control.status(0).state, VoiceState::Ready);
    // Converted audio for a while.
    let from = drive.output.len();
    drive.run(&mut audio, &p, Duration::from_secs(2), |_| false);
    let converted = &drive.output[from..];
    assert!(converted.iter().all(|v| v.is_finite()));
    let dry: Vec<f32> = (from..drive.output.len())
        .map(|i| drive.input[i - expected])
        .collect();
    let residual: Vec<f32> = converted.iter().zip(&dry).map(|(c, d)| c - d).collect();
    assert!(
        rms(&residual) > 0.1 * rms(&dry),
        "the output is still the dry signal: residual {} vs dry {}",
        rms(&residual),
        rms(&dry)
    );
    // The latency never moved.
    assert!(
        drive.latencies.iter().all(|&l| l == expected),
        "latency changed: {:?}",
        drive
            .latencies
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
    );
    let telemetry = control.telemetry();
    assert_eq!(telemetry.serving_slot, Some(0));
    assert_eq!(telemetry.latency, expected);
    assert!(telemetry.stream.blocks > 0);
    assert!(
        matches!(telemetry.runtime, Some(Ok(_))),
        "{:?}",
        telemetry.runtime
    );

    // A second voice (48 kHz model) in slot 1, then switching to it: crossfaded, no click.
    control.set(
        1,
        Some(files("synth_v2_48k.onnx", "vec-768-layer-12.onnx", &a)),
    );
    wait_state(&control, 1, |s| *s == VoiceState::Standby);
    let from = drive.output.len();
    let p1 = params(1);
    assert!(
        drive.run(&mut audio, &p1, Duration::from_secs(60), |_| {
            control.telemetry().serving_slot == Some(1)
        }),
        "slot 1 never served: {:?}",
        control.status(1)
    );
    drive.run(&mut audio, &p1, Duration::from_millis(500), |_| false);
    let around = &drive.output[from..];
    let bound = 2.0 * max_step(&drive.output[..from]) + 0.02;
    assert!(
        max_step(around) <= bound,
        "the switch clicked: step {} > {bound}",
        max_step(around)
    );
    assert!(drive.latencies.iter().all(|&l| l == expected));
    // Slot 0's voice was handed back and dropped off the audio thread; it is on standby.
    wait_state(&control, 0, |s| *s == VoiceState::Standby);
}

#[test]
fn bad_files_leave_a_message_and_the_serving_voice_serving() {
    let dir = tempfile::tempdir().unwrap();
    let a = index(dir.path(), "added_a.index", 768, 0.0, 1);
    let v1_index = index(dir.path(), "added_v1.index", 256, 0.0, 2);
    let (control, mut audio) = start();
    let mut drive = Driver::new();
    control.set(
        0,
        Some(files("synth_v2_40k.onnx", "vec-768-layer-12.onnx", &a)),
    );
    assert!(
        drive.run(&mut audio, &params(0), Duration::from_secs(60), |a| a
            .is_serving())
    );

    // A corrupt model, checked in standby.
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"not an onnx model at all").unwrap();
    let mut bad = files("synth_v2_40k.onnx", "vec-768-layer-12.onnx", &a);
    bad.model = corrupt;
    control.set(1, Some(bad));
    let state = wait_state(&control, 1, |s| matches!(s, VoiceState::Failed(_)));
    assert!(format!("{state:?}").contains("corrupt.onnx"), "{state:?}");

    // A v1 model with v2 features: named, with the ContentVec to use.
    control.set(
        2,
        Some(files(
            "synth_v1_40k.onnx",
            "vec-768-layer-12.onnx",
            &v1_index,
        )),
    );
    let state = wait_state(&control, 2, |s| matches!(s, VoiceState::Failed(_)));
    assert!(
        format!("{state:?}").contains("vec-256-layer-9.onnx"),
        "{state:?}"
    );

    // Models fine, index of the wrong width: refused when the slot becomes active, and the
    // serving voice (slot 0) keeps serving.
    control.set(
        3,
        Some(files(
            "synth_v2_40k.onnx",
            "vec-768-layer-12.onnx",
            &v1_index,
        )),
    );
    wait_state(&control, 3, |s| *s == VoiceState::Standby);
    drive.run(&mut audio, &params(3), Duration::from_secs(60), |_| {
        matches!(control.status(3).state, VoiceState::Failed(_))
    });
    let state = control.status(3).state;
    assert!(
        format!("{state:?}").contains("256-dimensional"),
        "{state:?}"
    );
    drive.run(&mut audio, &params(3), Duration::from_millis(300), |_| {
        false
    });
    assert_eq!(control.telemetry().serving_slot, Some(0));
    assert!(audio.is_serving());
    // A missing index in the serving slot: the voice and its index keep serving.
    control.set(
        0,
        Some(files(
            "synth_v2_40k.onnx",
            "vec-768-layer-12.onnx",
            &dir.path().join("missing.index"),
        )),
    );
    drive.run(&mut audio, &params(0), Duration::from_secs(30), |_| {
        matches!(control.status(0).state, VoiceState::Failed(_))
    });
    let status = control.status(0);
    assert!(
        format!("{:?}", status.state).contains("missing.index"),
        "{status:?}"
    );
    assert_eq!(status.info.unwrap().index_name, "added_a.index");
    assert_eq!(control.telemetry().serving_slot, Some(0));
}

#[test]
fn a_new_index_in_the_serving_slot_goes_through_its_live_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let a = index(dir.path(), "added_a.index", 768, 0.0, 1);
    let b = index(dir.path(), "added_b.index", 768, 0.4, 3);
    let (control, mut audio) = start();
    let mut drive = Driver::new();
    let mut p = params(0);
    p.index_rate = 1.0;
    control.set(
        0,
        Some(files("synth_v2_40k.onnx", "vec-768-layer-12.onnx", &a)),
    );
    assert!(drive.run(&mut audio, &p, Duration::from_secs(60), |a| a.is_serving()));
    drive.run(&mut audio, &p, Duration::from_secs(1), |_| false);
    let before = control.telemetry();
    let level_a = rms(&drive.output[drive.output.len() - HOST as usize / 2..]);

    control.set(
        0,
        Some(files("synth_v2_40k.onnx", "vec-768-layer-12.onnx", &b)),
    );
    drive.run(&mut audio, &p, Duration::from_secs(30), |_| {
        control
            .status(0)
            .info
            .is_some_and(|i| i.index_name == "added_b.index")
    });
    drive.run(&mut audio, &p, Duration::from_secs(1), |_| false);
    let level_b = rms(&drive.output[drive.output.len() - HOST as usize / 2..]);
    let after = control.telemetry();
    // No new voice: the same stream kept running (its block count only grew, no restart).
    assert_eq!(after.serving_slot, Some(0));
    assert!(after.stream.blocks > before.stream.blocks);
    assert_eq!(after.stream.restarts, 0);
    assert!(
        (level_b - level_a).abs() > 0.05,
        "index B did not change the voice: {level_a} vs {level_b}"
    );
}

#[test]
fn an_offline_bounce_waits_for_the_worker_and_never_plays_dry() {
    let dir = tempfile::tempdir().unwrap();
    let a = index(dir.path(), "added_a.index", 768, 0.0, 1);
    let (control, mut audio) = start();
    let mut drive = Driver::new();
    control.set(
        0,
        Some(files("synth_v2_40k.onnx", "vec-768-layer-12.onnx", &a)),
    );
    assert!(
        drive.run(&mut audio, &params(0), Duration::from_secs(60), |a| a
            .is_serving())
    );
    drive.run(&mut audio, &params(0), Duration::from_millis(500), |_| {
        false
    });
    let expected = audio.latency();

    // As fast as the host can call (no pacing), in buffers larger than the block: real-time
    // mode underruns (the negative control), offline mode waits and converts every sample.
    for offline in [false, true] {
        let p = BlockParams {
            offline,
            ..params(0)
        };
        let before = control.telemetry().stream;
        let began = Instant::now();
        let mut out = Vec::new();
        let mut buffer = vec![0f32; 8192];
        let start = drive.at;
        for _ in 0..30 {
            for (j, x) in buffer.iter_mut().enumerate() {
                *x = input_at(drive.at + j);
            }
            {
                let mut channels = [&mut buffer[..]];
                assert_no_alloc(|| audio.process(&mut channels, &p));
            }
            out.extend_from_slice(&buffer);
            drive.at += buffer.len();
        }
        let after = control.telemetry().stream;
        let dry = after.dry_samples - before.dry_samples;
        println!(
            "offline {offline}: {} s of audio in {:.2} s, {dry} dry samples, {} underruns",
            out.len() as f64 / HOST as f64,
            began.elapsed().as_secs_f64(),
            after.underruns - before.underruns
        );
        if offline {
            assert_eq!(dry, 0, "an offline bounce played {dry} dry samples");
            let residual: Vec<f32> = out
                .iter()
                .enumerate()
                .map(|(i, v)| v - input_at(start + i - expected.min(start + i)))
                .collect();
            assert!(rms(&residual) > 0.05, "the bounce is not converted");
            assert!(out.iter().all(|v| v.is_finite()));
        } else {
            assert!(
                dry > 0,
                "negative control: real-time mode at full speed must fall behind"
            );
        }
        // Back to real time; let the stream recover before the next case.
        drive.run(&mut audio, &params(0), Duration::from_secs(3), |_| false);
    }
}
