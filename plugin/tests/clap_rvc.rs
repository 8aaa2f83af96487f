//! An RVC slot in the bundled CLAP plugin, in a real (small) host built on `clack-host`
//! (`common/clap.rs`), with ONNX Runtime found only beside the plugin in the bundle.
//!
//! - `rvc_slot_in_the_bundled_clap`: restores states (the state extension) naming an RVC voice
//!   in slot 1 — stand-in models with the official RVC signatures
//!   (`rvc/tests/fixtures/make_models.py`), a 768-d `.kbi`, the shared ContentVec — with Block
//!   100 ms, Extra 300 ms, Block crossfade 40 ms in the state's parameters, then at 44.1, 48
//!   and 96 kHz (a new activation per rate, a different synthesizer rate each time) processes
//!   stereo audio on an audio thread in buffers paced to real time (the RVC worker needs wall
//!   time). It checks that the latency extension reports `knnblend_rvc::host::fixed_latency`
//!   for those times at that rate; that the host is told about every latency change the way
//!   nice-plug does it (below); that until the voice serves the output is the mono mix of the
//!   input delayed by exactly that latency; that within a timeout the output becomes the
//!   converted signal (residual against the delayed input above −20 dB of the input, on both
//!   channels alike, finite, bounded) and stays so; and that ONNX Runtime was mapped from the
//!   bundle's folder. Then a switch to an index slot and back, by automation, re-reports the
//!   latency through a restart request.
//! - `corrupt_rvc_model_passes_audio_through`: the same with a corrupt synthesizer file: the
//!   plugin keeps passing audio (output = mono input delayed by the reported latency, to the
//!   sample) and does not crash; a good state restored afterwards converts.
//!
//! How nice-plug (0.4, CLAP wrapper) reports a latency change: `set_latency_samples` stores the
//! new value (the latency extension returns it at once) and, when it differs, queues a GUI task.
//! From `activate()` the request is delivered after the plugin is marked active, so the task
//! (run at once on the main thread) asks the host to restart (`host.request_restart()`); from
//! `process()` it arrives through `host.request_callback()` and, on the main thread, does the
//! same. On the next `activate()` nice-plug calls `host latency.changed()`. This host does what
//! a CLAP host should: on a restart request it deactivates and reactivates the plugin.
//!
//! `ORT_DYLIB_PATH` is removed from this process's environment before the bundle is loaded, so
//! the plugin's own search (beside its binary first) is what finds ONNX Runtime; both tests run
//! one after the other (a lock), in this test binary of their own.
//!
//! Needs the bundle (`cargo xtask bundle knnblend-plugin --features assert_process_allocs`,
//! which copies ONNX Runtime beside the plugin) and `target/venv` (`cargo xtask setup`).
//! Without the bundle the tests print why and pass, except under `CI=true`, where they fail;
//! without the venv they fail.

#[path = "common/clap.rs"]
mod clap_support;
mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use clack_host::prelude::*;
use clap_support::{bundle_or_skip, decode_state, encode_state, Instance};
use common::rvc::{model, rvc_index};
use knnblend_rvc::host::fixed_latency;
use knnblend_rvc::pipeline::Framing;
use serde_json::{json, Value};

const BLOCK_MS: f64 = 100.0;
const EXTRA_MS: f64 = 300.0;
const SOLA_MS: f64 = 40.0;
/// Host buffer sizes, cycled.
const BUFFERS: [usize; 4] = [512, 256, 1024, 333];
/// Analysis window, seconds.
const WINDOW: f64 = 0.05;
/// Converted: the residual against the delayed input is above this, relative to the input.
const CONVERTED_DB: f64 = -20.0;
/// How long the converted output is watched once it appears, seconds of audio.
const STEADY_SECONDS: f64 = 2.0;
/// Longest wall time to wait for the voice to serve.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The fixed latency for the test's times at `rate`.
fn expected_latency(rate: f64) -> u32 {
    fixed_latency(&Framing {
        host_rate: rate as u32,
        block_seconds: BLOCK_MS / 1000.0,
        crossfade_seconds: SOLA_MS / 1000.0,
        extra_seconds: EXTRA_MS / 1000.0,
    })
    .expect("fixed latency") as u32
}

/// Serialises the tests (one bundle, one ONNX Runtime, real-time pacing on two cores) and,
/// before the first loads the bundle, takes `ORT_DYLIB_PATH` out of the environment.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static ENV: OnceLock<()> = OnceLock::new();
    let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    ENV.get_or_init(|| {
        if let Some(value) = std::env::var_os("ORT_DYLIB_PATH") {
            println!(
                "removing ORT_DYLIB_PATH={} from the environment",
                value.to_string_lossy()
            );
        }
        // No other thread reads the environment now: the other test waits on the lock.
        std::env::remove_var("ORT_DYLIB_PATH");
    });
    guard
}

/// `base` (a saved state) with slot 1 an RVC slot of `synth`, `index` and `rmvpe`, ContentVec
/// set, the test's times, Voice = slot 1.
fn rvc_state(base: &[u8], synth: &Path, index: &Path, rmvpe: Option<&Path>) -> Vec<u8> {
    let mut state = decode_state(base);
    let params = &mut state["params"];
    params["block"] = json!({ "f32": BLOCK_MS });
    params["extra"] = json!({ "f32": EXTRA_MS });
    params["sola"] = json!({ "f32": SOLA_MS });
    params["voice"] = json!({ "i32": 1 });
    params["mix"] = json!({ "f32": 1.0 });
    let slots = json!({
        "version": 2,
        "contentvec": model("vec-768-layer-12.onnx"),
        "slots": [{ "kind": "rvc", "model": synth, "index": index, "rmvpe": rmvpe }],
    });
    state["fields"]["slots"] = Value::String(slots.to_string());
    encode_state(&state)
}

/// What one activation looked like to the host.
#[derive(Debug)]
struct Activation {
    /// Latency the extension reported after `activate()`.
    latency: u32,
    /// Whether the plugin asked for a restart during `activate()` (honoured at once).
    restarted: bool,
    /// `latency.changed()` calls during the activation and the restart.
    changed_calls: u32,
}

/// Activates at `rate` as a CLAP host does, honouring a restart request (deactivate, activate).
fn activate_like_a_host(plugin: &mut Instance, rate: f64) -> Activation {
    let before = plugin.latency_changes();
    assert!(
        !plugin.take_restart_request(),
        "a restart request was left over"
    );
    plugin.activate(rate);
    let latency = plugin.latency();
    let restarted = plugin.take_restart_request();
    if restarted {
        plugin.deactivate();
        plugin.activate(rate);
        assert_eq!(
            plugin.latency(),
            latency,
            "the latency moved on reactivation"
        );
        assert!(
            !plugin.take_restart_request(),
            "the plugin asked for a second restart after reactivating with the same latency"
        );
    }
    Activation {
        latency,
        restarted,
        changed_calls: plugin.latency_changes() - before,
    }
}

/// Checks the activation against the latency the host had before.
fn check_activation(activation: &Activation, previous: u32, what: &str) {
    if activation.latency != previous {
        assert!(
            activation.restarted && activation.changed_calls == 1,
            "{what}: the latency changed {previous} → {} but the host was not told as nice-plug \
             tells it (restart request, then latency.changed() on reactivation): {activation:?}",
            activation.latency
        );
    } else {
        assert!(
            !activation.restarted && activation.changed_calls == 0,
            "{what}: the latency stayed {previous} but the host was asked to restart or told it \
             changed: {activation:?}"
        );
    }
}

/// Windowed comparison of the output against the input's mono mix delayed by the latency.
struct Tracker {
    rate: f64,
    latency: usize,
    window: usize,
    /// Mono mix of the input (the RVC path averages the channels).
    mono: Vec<f32>,
    /// RMS of `mono`.
    input_rms: f64,
    /// Windows analysed: (start, residual relative to the input in dB, largest |difference|).
    windows: Vec<(usize, f64, f32)>,
    first_converted: Option<usize>,
    /// Windows starting earlier do not count as the first converted one.
    count_from: usize,
    converted_at_wall: Option<Duration>,
    started: Instant,
    peak: f32,
    finite: bool,
    channels_equal: bool,
}

impl Tracker {
    fn new(input: &[Vec<f32>], rate: f64, latency: usize) -> Tracker {
        let n = input[0].len();
        let mono: Vec<f32> = (0..n)
            .map(|i| input.iter().map(|c| c[i]).sum::<f32>() / input.len() as f32)
            .collect();
        let input_rms = rms(&mono);
        Tracker {
            rate,
            latency,
            window: (WINDOW * rate) as usize,
            mono,
            input_rms,
            windows: Vec::new(),
            first_converted: None,
            count_from: 0,
            converted_at_wall: None,
            started: Instant::now(),
            peak: 0.0,
            finite: true,
            channels_equal: true,
        }
    }

    /// The input as it should come out while nothing serves: mono, delayed by the latency.
    fn dry(&self, i: usize) -> f32 {
        if i < self.latency {
            0.0
        } else {
            self.mono[i - self.latency]
        }
    }

    /// Analyses every complete window of `output` not seen yet.
    fn update(&mut self, output: &[Vec<f32>]) {
        let done = output[0].len();
        loop {
            let start = self.windows.len() * self.window;
            let end = start + self.window;
            if end > done {
                break;
            }
            let mut sum = 0.0f64;
            let mut worst = 0.0f32;
            for i in start..end {
                let y = output[0][i];
                self.finite &= output.iter().all(|c| c[i].is_finite());
                self.channels_equal &= output.iter().all(|c| c[i] == y);
                self.peak = self.peak.max(y.abs());
                let d = y - self.dry(i);
                worst = worst.max(d.abs());
                sum += (d as f64).powi(2);
            }
            let rel = 20.0
                * ((sum / self.window as f64).sqrt() / self.input_rms)
                    .max(1e-12)
                    .log10();
            self.windows.push((start, rel, worst));
            if rel > CONVERTED_DB && self.first_converted.is_none() && start >= self.count_from {
                self.first_converted = Some(start);
                self.converted_at_wall = Some(self.started.elapsed());
            }
        }
    }

    /// Residuals (dB) of the windows from two after the first converted one on (the two
    /// before may hold the crossfade).
    fn converted_after(&self) -> Vec<f64> {
        let Some(first) = self.first_converted else {
            return Vec::new();
        };
        self.windows
            .iter()
            .filter(|(start, _, _)| *start >= first + 2 * self.window)
            .map(|w| w.1)
            .collect()
    }

    /// Whether the converted output has been watched long enough.
    fn steady_enough(&self) -> bool {
        self.first_converted.is_some_and(|first| {
            self.windows.len() * self.window >= first + (STEADY_SECONDS * self.rate) as usize
        })
    }
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Libraries named `libonnxruntime*` mapped into this process.
fn mapped_onnx_runtimes() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mut found: Vec<PathBuf> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime"))
        })
        .map(PathBuf::from)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Streams `input` in real time until the converted output has been steady for
/// [`STEADY_SECONDS`] (or the input ends, or the wall-time bound passes), checking on the way
/// that the latency and the restart state do not move. Output before `count_from` does not count
/// as converted.
fn stream_until_steady(
    plugin: &mut Instance,
    input: &[Vec<f32>],
    latency: u32,
    count_from: usize,
) -> Tracker {
    let rate = plugin.sample_rate;
    let mut tracker = Tracker::new(input, rate, latency as usize);
    tracker.count_from = count_from;
    let deadline = Instant::now() + SERVE_TIMEOUT + Duration::from_secs_f64(STEADY_SECONDS);
    let mut moved = None;
    let output = plugin.process_realtime(input, &BUFFERS, &[], |plugin, output| {
        tracker.update(output);
        let now = plugin.latency();
        if now != latency || plugin.take_restart_request() {
            moved = Some(now);
            return false;
        }
        !tracker.steady_enough() && Instant::now() < deadline
    });
    tracker.update(&output);
    assert_eq!(
        moved, None,
        "{rate} Hz: the fixed RVC latency {latency} moved (or a restart was requested) while \
         the voice came in"
    );
    tracker
}

#[test]
fn rvc_slot_in_the_bundled_clap() {
    let _lock = exclusive();
    let Some(bundle) = bundle_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let index = rvc_index(dir.path(), "added_stand_in_v2.kbi", 0.0);
    // SAFETY: loading a plugin library runs its initialisers; this is the bundle under test.
    let entry = unsafe { PluginEntry::load(&bundle) }.expect("load the CLAP bundle");
    let mut plugin = Instance::new(&entry);
    for name in [
        "Pitch",
        "Protect",
        "Block",
        "Extra Context",
        "Block Crossfade",
    ] {
        plugin.id(name);
    }
    let base = plugin.save();

    // A different synthesizer rate per host rate (the fixed latency covers all three), with
    // and without RMVPE.
    let runs: [(f64, &str, bool); 3] = [
        (44_100.0, "synth_v2_40k.onnx", true),
        (48_000.0, "synth_v2_48k.onnx", false),
        (96_000.0, "synth_v2_32k.onnx", true),
    ];
    let mut previous = 0;
    let mut summary = Vec::new();
    for (rate, synth, with_rmvpe) in runs {
        let rmvpe = with_rmvpe.then(|| model("rmvpe.onnx"));
        assert!(plugin.load(&rvc_state(&base, &model(synth), &index, rmvpe.as_deref())));
        assert_eq!(plugin.shown("Block"), "100 ms");
        assert_eq!(plugin.shown("Extra Context"), "300 ms");
        assert_eq!(plugin.shown("Block Crossfade"), "40 ms");

        let began = Instant::now();
        let activation = activate_like_a_host(&mut plugin, rate);
        let expected = expected_latency(rate);
        assert_eq!(
            activation.latency, expected,
            "{rate} Hz: the latency extension reports {} samples, the RVC host's fixed latency \
             for Block {BLOCK_MS} ms, Extra {EXTRA_MS} ms, crossfade {SOLA_MS} ms is {expected}",
            activation.latency
        );
        check_activation(&activation, previous, &format!("{rate} Hz"));
        previous = expected;

        let input = common::test_signal(rate as f32, 20.0, 2);
        let tracker = stream_until_steady(&mut plugin, &input, expected, 0);
        let Some(first) = tracker.first_converted else {
            let worst = tracker
                .windows
                .iter()
                .map(|w| w.1)
                .fold(f64::NEG_INFINITY, f64::max);
            panic!(
                "{rate} Hz: the RVC voice never served within {:.1} s of audio ({:.1} s wall); \
                 residual at most {worst:.1} dB",
                tracker.windows.len() as f64 * WINDOW,
                began.elapsed().as_secs_f64()
            );
        };
        assert!(tracker.finite, "{rate} Hz: non-finite output");
        assert!(
            tracker.channels_equal,
            "{rate} Hz: the voice does not go to every channel alike"
        );
        assert!(
            tracker.peak < 2.0,
            "{rate} Hz: output peak {}",
            tracker.peak
        );
        // Before the voice: the delayed mono input, to the sample (the window before the first
        // converted one may hold the start of the crossfade).
        let w = tracker.window;
        let before: Vec<_> = tracker
            .windows
            .iter()
            .filter(|(start, _, _)| start + 2 * w <= first)
            .collect();
        for &&(start, rel, worst) in &before {
            assert!(
                worst <= 1e-6,
                "{rate} Hz: before the voice served, the output at {:.3} s differs from the input \
                 delayed by {expected} samples by {worst} ({rel:.1} dB)",
                start as f64 / rate
            );
        }
        // With stand-in models the voice opens in milliseconds and may serve before the delayed
        // input reaches the output (its stream converts its own silent pre-roll): then only
        // the delay line's zeros pass through first. The corrupt-model test holds the
        // pass-through for seconds.
        let passed_signal = before
            .iter()
            .filter(|(start, _, _)| *start >= expected as usize)
            .count();
        // Once converting it stays converted (a window or two of crossfade allowed).
        let after = tracker.converted_after();
        assert!(after.len() as f64 * WINDOW >= STEADY_SECONDS - 2.0 * WINDOW);
        let lowest = after.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(
            lowest > CONVERTED_DB,
            "{rate} Hz: the output fell back towards the delayed input ({lowest:.1} dB)"
        );
        let mut sorted = after.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];

        // ONNX Runtime came from beside the plugin, not from ORT_DYLIB_PATH or target/venv.
        let mapped = mapped_onnx_runtimes();
        let bundle_dir = bundle
            .canonicalize()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        assert!(
            !mapped.is_empty() && mapped.iter().all(|p| p.parent() == Some(&bundle_dir)),
            "ONNX Runtime should be mapped from {} only: {mapped:?}",
            bundle_dir.display()
        );

        let served_audio = first as f64 / rate;
        let line = format!(
            "{rate} Hz ({synth}{}): latency {expected} samples ({:.1} ms), restart on \
             activation: {}; converted from {served_audio:.2} s of audio ({:.2} s wall after \
             activation; {} exact pass-through windows before, {passed_signal} of them past the \
             latency), residual against the delayed input {median:.1} dB median, {lowest:.1} dB \
             lowest over {:.1} s; peak {:.3}",
            if with_rmvpe { " + RMVPE" } else { "" },
            expected as f64 * 1000.0 / rate,
            activation.restarted,
            tracker.converted_at_wall.unwrap().as_secs_f64()
                + (tracker.started - began).as_secs_f64(),
            before.len(),
            after.len() as f64 * WINDOW,
            tracker.peak
        );
        println!("{line}");
        summary.push(line);
        plugin.deactivate();
    }

    // Automation to an index slot (slot 2, empty) and back: the latency changes in process(),
    // nice-plug asks for a restart through the main thread, the host restarts.
    let rate = 96_000.0;
    let mut activation = activate_like_a_host(&mut plugin, rate);
    check_activation(&activation, previous, "reactivating at 96 kHz");
    let rvc_latency = activation.latency;
    for (to, name) in [("Slot 2", "index slot"), ("Slot 1", "RVC slot")] {
        let value = plugin.parse("Voice", to);
        let input = common::test_signal(rate as f32, 0.5, 2);
        let mut asked = false;
        let out = plugin.process_realtime(&input, &BUFFERS, &[(100, "Voice", value)], |p, _| {
            asked |= p.take_restart_request();
            !asked
        });
        assert!(out.iter().flatten().all(|x| x.is_finite()));
        assert!(
            asked,
            "switching to the {name} changed no latency (or nice-plug asked for no restart)"
        );
        let now = plugin.latency();
        plugin.deactivate();
        let before = plugin.latency_changes();
        plugin.activate(rate);
        assert_eq!(
            plugin.latency_changes() - before,
            1,
            "no latency.changed() on the reactivation after switching to the {name}"
        );
        assert_eq!(plugin.latency(), now);
        activation.latency = now;
        println!("switched to the {name}: latency {now} samples, restart requested");
    }
    assert_eq!(activation.latency, rvc_latency);

    // Automating Block (100 → 200 ms) changes the fixed latency once the voice for the new
    // times serves (the RVC host lets the times settle for 250 ms, then reopens the voice):
    // again a restart request, then latency.changed() on reactivation.
    let longer = fixed_latency(&Framing {
        host_rate: rate as u32,
        block_seconds: 0.2,
        crossfade_seconds: SOLA_MS / 1000.0,
        extra_seconds: EXTRA_MS / 1000.0,
    })
    .unwrap() as u32;
    assert_ne!(longer, rvc_latency);
    let value = plugin.parse("Block", "200");
    let input = common::test_signal(rate as f32, 10.0, 2);
    let mut asked = false;
    let began = Instant::now();
    let out = plugin.process_realtime(&input, &BUFFERS, &[(100, "Block", value)], |p, _| {
        asked |= p.take_restart_request();
        !asked
    });
    let took = began.elapsed();
    assert!(out.iter().flatten().all(|x| x.is_finite()));
    assert!(asked, "Block 200 ms: no restart request within 10 s");
    assert_eq!(
        plugin.latency(),
        longer,
        "Block 200 ms: the latency reported"
    );
    plugin.deactivate();
    let before = plugin.latency_changes();
    plugin.activate(rate);
    assert_eq!(plugin.latency_changes() - before, 1);
    assert_eq!(plugin.latency(), longer);
    assert!(!plugin.take_restart_request());
    println!(
        "Block 100 → 200 ms by automation: latency {rvc_latency} → {longer} samples, restart \
         requested after {:.2} s",
        took.as_secs_f64()
    );
    plugin.deactivate();
    println!("clap rvc: {}", summary.join("\n           "));
}

#[test]
fn corrupt_rvc_model_passes_audio_through() {
    let _lock = exclusive();
    let Some(bundle) = bundle_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let index = rvc_index(dir.path(), "added_stand_in_v2.kbi", 0.0);
    let corrupt = dir.path().join("corrupt_v2_40k.onnx");
    std::fs::write(&corrupt, b"\x08\x07this is not an ONNX model").unwrap();
    // SAFETY: as above.
    let entry = unsafe { PluginEntry::load(&bundle) }.expect("load the CLAP bundle");
    let mut plugin = Instance::new(&entry);
    let base = plugin.save();
    assert!(plugin.load(&rvc_state(&base, &corrupt, &index, None)));

    let rate = 48_000.0;
    let activation = activate_like_a_host(&mut plugin, rate);
    let expected = expected_latency(rate);
    assert_eq!(activation.latency, expected);
    check_activation(&activation, 0, "48 kHz, corrupt model");
    let input = common::test_signal(rate as f32, 3.0, 2);
    let mut tracker = Tracker::new(&input, rate, expected as usize);
    let mut moved = false;
    let output = plugin.process_realtime(&input, &BUFFERS, &[], |plugin, output| {
        tracker.update(output);
        moved |= plugin.latency() != expected || plugin.take_restart_request();
        !moved
    });
    tracker.update(&output);
    assert!(!moved, "the latency moved with a corrupt model");
    assert_eq!(output[0].len(), input[0].len());
    assert!(tracker.finite && tracker.channels_equal);
    let worst = tracker.windows.iter().map(|w| w.2).fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-6,
        "with a corrupt model the output is not the input delayed by {expected} samples \
         (largest difference {worst})"
    );
    println!(
        "corrupt model: {:.1} s passed through, delayed by exactly {expected} samples (largest \
         difference {worst:e})",
        output[0].len() as f64 / rate
    );

    // The same instance takes a good voice afterwards.
    plugin.deactivate();
    assert!(plugin.load(&rvc_state(&base, &model("synth_v2_40k.onnx"), &index, None)));
    let activation = activate_like_a_host(&mut plugin, rate);
    check_activation(
        &activation,
        expected,
        "48 kHz, good model after the corrupt one",
    );
    let input = common::test_signal(rate as f32, 20.0, 2);
    // Same rate, same RVC host: its pass-through line still holds the corrupt run's last
    // `latency` samples (reset() does not clear it, see `reset_clears_the_rvc_path`), so only
    // output past the latency counts.
    let tracker = stream_until_steady(&mut plugin, &input, expected, expected as usize);
    let first = tracker
        .first_converted
        .expect("a good voice restored after the corrupt one never served");
    assert!(tracker.finite && tracker.channels_equal && tracker.peak < 2.0);
    let lowest = tracker
        .converted_after()
        .into_iter()
        .fold(f64::INFINITY, f64::min);
    assert!(lowest > CONVERTED_DB, "{lowest:.1} dB");
    println!(
        "good model afterwards: converted from {:.2} s of audio, residual at least {lowest:.1} dB",
        first as f64 / rate
    );
    plugin.deactivate();
}

/// `Plugin::reset()` (CLAP `start_processing`, a reactivation) clears the RVC path: the previous
/// session's last `latency` samples never come out again (they did before the reset restarted
/// the RVC host's streams and pass-through line).
#[test]
fn reset_clears_the_rvc_path() {
    let _lock = exclusive();
    let Some(bundle) = bundle_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let index = rvc_index(dir.path(), "added_stand_in_v2.kbi", 0.0);
    // A corrupt model keeps the RVC path on its pass-through, whose output is predictable.
    let corrupt = dir.path().join("corrupt_v2_40k.onnx");
    std::fs::write(&corrupt, b"\x08\x07this is not an ONNX model").unwrap();
    // SAFETY: as above.
    let entry = unsafe { PluginEntry::load(&bundle) }.expect("load the CLAP bundle");
    let mut plugin = Instance::new(&entry);
    let base = plugin.save();
    assert!(plugin.load(&rvc_state(&base, &corrupt, &index, None)));
    let rate = 48_000.0;
    activate_like_a_host(&mut plugin, rate);
    let input = common::test_signal(rate as f32, 1.0, 2);
    let silence = vec![vec![0.0f32; 24_000]; 2];
    // Each `process` call starts and stops processing: CLAP start_processing calls reset().
    plugin.process(&input, &[512], &[]);
    let out = plugin.process(&silence, &[512], &[]);
    let stale = out[0].iter().rposition(|x| *x != 0.0).map_or(0, |i| i + 1);
    assert_eq!(
        stale,
        0,
        "after reset() the RVC path played {stale} samples of the audio from before the reset \
         (peak {})",
        common::peak(&out[0])
    );
    // A reactivation at the same rate keeps the RVC host and must not replay either.
    plugin.process(&input, &[512], &[]);
    plugin.deactivate();
    activate_like_a_host(&mut plugin, rate);
    let out = plugin.process(&silence, &[512], &[]);
    assert_eq!(
        common::peak(&out[0]),
        0.0,
        "stale audio after a reactivation"
    );
    plugin.deactivate();
}
