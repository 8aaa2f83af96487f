//! Offline renders through the real `Plugin::process()` with mocked host contexts: odd and
//! varying block sizes, automation, slot switching and loading mid-stream, hostile audio, nulls,
//! latency, and plugin state — every process call under the allocation guard when built with
//! `--features assert_process_allocs` (as `cargo xtask test` does).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use knnblend_plugin::engine::LoadState;
use knnblend_plugin::params::{KnnBlendParams, SLOTS};
use knnblend_plugin::slots::SlotStore;
use nice_plug::prelude::*;

const ODD_BLOCKS: &[usize] = &[1, 7, 64, 333, 512, 1024, 2049, 5, 8192, 97, 2, 480, 1000];

/// Waits (bounded) until no slot is loading any more.
fn wait_for_loads(store: &SlotStore) {
    let Some(control) = store.control() else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let busy = (0..SLOTS).any(|s| matches!(control.status(s).state, LoadState::Loading { .. }));
        if !busy {
            return;
        }
        assert!(Instant::now() < deadline, "loads did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn write_garbage(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn odd_blocks_automation_and_slot_changes_without_allocating() {
    let sample_rate = 48_000.0;
    let mut host = OfflineHost::new(sample_rate, 2);
    let input = test_signal(sample_rate, 4.0, 2);
    let mut audio = input.clone();

    // The control side works concurrently, as the editor or a state restore would.
    let dir = tempfile::tempdir().unwrap();
    let garbage = write_garbage(dir.path(), "garbage.kbi", b"not an index at all");
    let missing = dir.path().join("missing.kbi");
    let voice_a = make_voice(dir.path(), "a.kbi", true);
    let voice_b = make_voice(dir.path(), "b.kbi", false);
    // Two voices are there from the start; the rest changes while audio runs.
    host.params.slots.set_path(0, &voice_a).unwrap();
    host.params.slots.set_path(1, &voice_b).unwrap();
    wait_for_loads(&host.params.slots);
    let store = host.params.slots.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let control_thread = std::thread::spawn({
        let stop = stop.clone();
        let dir_path = dir.path().to_path_buf();
        move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let slot = i % SLOTS;
                match i % 6 {
                    0 => store.set_path(slot, &voice_a).unwrap(),
                    1 => store.set_path(slot, &garbage).unwrap(),
                    2 => store.set_path(slot, &voice_b).unwrap(),
                    3 => store.set_path(slot, &missing).unwrap(),
                    4 => store.set_path(slot, &dir_path).unwrap(),
                    _ => store.clear(slot),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });

    host.render(&mut audio, ODD_BLOCKS, |block, _pos, p, sr| {
        let x = (block as f32 * 0.37).sin() * 0.5 + 0.5;
        p.set_plain("blend", x, sr, false);
        p.set_plain("neighbours", 1.0 + (block % 16) as f32, sr, false);
        // Query expansion off, 4 and 8 neighbours in turn.
        p.set_plain("expand", ((block / 3) % 3) as f32 * 4.0, sr, false);
        p.set_plain("voice", 1.0 + ((block / 5) % SLOTS) as f32, sr, false);
        p.set_plain("crossfade", (block % 7) as f32 * 70.0, sr, false);
        p.set_plain("mix", 1.0 - 0.5 * x, sr, false);
        p.set_plain("gain", -24.0 + 36.0 * x, sr, false);
    });
    stop.store(true, Ordering::Relaxed);
    control_thread.join().unwrap();
    let telemetry = host.params.slots.control().unwrap().telemetry();
    assert!(
        telemetry.queries > 0,
        "no frame was retrieved: {telemetry:?}"
    );

    let in_peak = input.iter().map(|c| peak(c)).fold(0.0, f32::max);
    for channel in &audio {
        assert!(channel.iter().all(|x| x.is_finite()));
        // +12 dB output gain at most, plus generous headroom for the spectral reshaping.
        assert!(
            peak(channel) <= in_peak * 4.0 * 8.0,
            "peak {}",
            peak(channel)
        );
    }
    wait_for_loads(&host.params.slots);
}

/// Renders `input` with fixed parameters and returns the output.
fn render_fixed(host: &mut OfflineHost, input: &[Vec<f32>], blend: f32, mix: f32) -> Vec<Vec<f32>> {
    let sr = host.sample_rate;
    host.handles.set_plain("blend", blend, sr, true);
    host.handles.set_plain("mix", mix, sr, true);
    host.handles.set_plain("gain", 0.0, sr, true);
    host.plugin.reset();
    let mut audio = input.to_vec();
    host.render(&mut audio, ODD_BLOCKS, |_, _, _, _| {});
    audio
}

#[test]
fn nulls_at_blend_zero_and_dry_wet_zero() {
    let dir = tempfile::tempdir().unwrap();
    let voice = make_voice(dir.path(), "voice.kbi", true);
    for &sample_rate in &[44_100.0f32, 48_000.0, 96_000.0] {
        let mut host = OfflineHost::new(sample_rate, 2);
        host.params.slots.set_path(0, &voice).unwrap();
        wait_for_loads(&host.params.slots);
        let control = host.params.slots.control().unwrap();
        assert_eq!(control.status(0).state, LoadState::Ready);
        let input = test_signal(sample_rate, 1.5, 2);
        let latency = host.latency as usize;
        // Skip the first fade-in and compare where input and delayed output overlap.
        let settle = latency + (0.2 * sample_rate) as usize;
        let range = settle..input[0].len() - latency;

        for (blend, mix, what) in [(0.0, 1.0, "Blend 0"), (0.75, 0.0, "Dry/Wet 0")] {
            let output = render_fixed(&mut host, &input, blend, mix);
            for (c, (i, o)) in input.iter().zip(&output).enumerate() {
                let db = residual_dbfs(i, o, latency, range.clone());
                assert!(
                    db <= -100.0,
                    "{what} at {sample_rate} Hz, channel {c}: residual {db:.1} dBFS"
                );
            }
        }

        // The same setup at full blend does convert: the null above is not vacuous.
        let before = control.telemetry().queries;
        let output = render_fixed(&mut host, &input, 1.0, 1.0);
        assert!(
            control.telemetry().queries > before,
            "the voice was not queried"
        );
        let db = residual_dbfs(&input[0], &output[0], latency, range.clone());
        assert!(
            db > -60.0,
            "Blend 1 left the signal unchanged ({db:.1} dBFS)"
        );
    }
}

#[test]
fn query_expansion_is_off_by_default_and_changes_the_conversion_when_on() {
    let dir = tempfile::tempdir().unwrap();
    let voice = make_voice(dir.path(), "voice.kbi", true);
    let sample_rate = 48_000.0f32;
    let input = test_signal(sample_rate, 1.0, 2);
    // A fresh instance per setting (a render is deterministic from a fresh instance).
    let render = |expand: Option<f32>| {
        let mut host = OfflineHost::new(sample_rate, 2);
        host.params.slots.set_path(0, &voice).unwrap();
        wait_for_loads(&host.params.slots);
        if let Some(k) = expand {
            host.handles.set_plain("expand", k, sample_rate, true);
            host.handles
                .set_plain("expand_alpha", 3.0, sample_rate, true);
        } else {
            assert_eq!(
                host.params.expand.value(),
                0,
                "expansion must be off by default"
            );
            assert_eq!(host.params.expand.to_string(), "Off");
        }
        render_fixed(&mut host, &input, 1.0, 1.0)
    };
    let plain = render(None);
    assert_eq!(
        render(None),
        plain,
        "two fresh renders differ: the comparison means nothing"
    );
    assert_eq!(render(Some(0.0)), plain, "Off must be the default's output");
    let expanded = render(Some(8.0));
    assert!(expanded.iter().flatten().all(|x| x.is_finite()));
    let differ = plain[0]
        .iter()
        .zip(&expanded[0])
        .filter(|(a, b)| a != b)
        .count();
    assert!(differ > 0, "query expansion changed no sample");
}

#[test]
fn bypass_is_the_latency_compensated_input_at_unity_gain() {
    let dir = tempfile::tempdir().unwrap();
    let voice = make_voice(dir.path(), "voice.kbi", true);
    let sample_rate = 48_000.0;
    let mut host = OfflineHost::new(sample_rate, 2);
    host.params.slots.set_path(0, &voice).unwrap();
    wait_for_loads(&host.params.slots);
    // The CPU meter on (as with the editor open): its timing is inside the guarded region too.
    host.plugin.meter_handle().set_enabled(true);
    let input = test_signal(sample_rate, 1.5, 2);
    let latency = host.latency as usize;
    let settle = latency + (0.2 * sample_rate) as usize;
    let range = settle..input[0].len() - latency;
    let sr = host.sample_rate;
    host.handles.set_plain("blend", 1.0, sr, true);
    host.handles.set_plain("mix", 1.0, sr, true);
    host.handles.set_plain("gain", 6.0, sr, true);

    // Negative control: not bypassed, the voice converts (and the gain applies).
    host.handles.set_plain("bypass", 0.0, sr, true);
    let mut converted = input.clone();
    host.render(&mut converted, ODD_BLOCKS, |_, _, _, _| {});
    let db = residual_dbfs(&input[0], &converted[0], latency, range.clone());
    assert!(
        db > -60.0,
        "not bypassed, the signal was unchanged ({db:.1} dBFS)"
    );

    // Bypassed: after the 20 ms crossfade, the input delayed by the reported latency, at unity
    // gain whatever Blend, Dry/Wet and Output gain say.
    host.handles.set_plain("bypass", 1.0, sr, true);
    let mut bypassed = input.clone();
    host.render(&mut bypassed, ODD_BLOCKS, |_, _, _, _| {});
    for (c, (i, o)) in input.iter().zip(&bypassed).enumerate() {
        let db = residual_dbfs(i, o, latency, range.clone());
        assert!(db <= -100.0, "bypassed, channel {c}: residual {db:.1} dBFS");
    }
    assert!(
        host.plugin.meter_handle().read().samples > 0,
        "the meter measured nothing"
    );
    // Back from bypass (gliding over the 20 ms), the output stays finite.
    host.handles.set_plain("bypass", 0.0, sr, false);
    let mut back = input.clone();
    host.render(&mut back, &[64], |_, _, _, _| {});
    assert!(back[0].iter().all(|v| v.is_finite()));
}

/// Hostile input followed by a clean voice signal, and the same clean signal after silence.
fn hostile_then_clean(sample_rate: f32) -> (Vec<f32>, Vec<f32>, usize) {
    let seg = (0.25 * sample_rate) as usize;
    let clean = test_signal(sample_rate, 2.0, 1).remove(0);
    let kinds: Vec<Box<dyn Fn(usize) -> f32>> = vec![
        Box::new(|_| f32::NAN),
        Box::new(|_| f32::INFINITY),
        Box::new(|_| f32::NEG_INFINITY),
        Box::new(|i| if i % 2 == 0 { 1e-40 } else { -1e-42 }),
        Box::new(|i| if (i / 64) % 2 == 0 { 1.0 } else { -1.0 }),
        Box::new(|_| 1.0),
        Box::new(|_| 0.0),
        Box::new(|i| if i % 3 == 0 { f32::NAN } else { 0.5 }),
    ];
    let mut hostile: Vec<f32> = Vec::new();
    for kind in &kinds {
        hostile.extend((0..seg).map(kind));
    }
    let clean_start = hostile.len();
    hostile.extend_from_slice(&clean);
    let mut reference = vec![0.0f32; clean_start];
    reference.extend_from_slice(&clean);
    (hostile, reference, clean_start)
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[test]
fn hostile_audio_stays_finite_bounded_and_recovers() {
    let sample_rate = 48_000.0;
    let dir = tempfile::tempdir().unwrap();
    let voice = make_voice(dir.path(), "voice.kbi", false);
    let (hostile, reference_in, clean_start) = hostile_then_clean(sample_rate);

    for blend in [0.0f32, 1.0] {
        let mut host = OfflineHost::new(sample_rate, 2);
        let mut reference = OfflineHost::new(sample_rate, 2);
        for h in [&mut host, &mut reference] {
            h.params.slots.set_path(0, &voice).unwrap();
            wait_for_loads(&h.params.slots);
            h.handles.set_plain("blend", blend, sample_rate, true);
        }
        let latency = host.latency as usize;
        let mut out = vec![hostile.clone(), hostile.clone()];
        host.render(&mut out, &[256, 17], |_, _, _, _| {});
        let mut ref_out = vec![reference_in.clone(), reference_in.clone()];
        reference.render(&mut ref_out, &[256, 17], |_, _, _, _| {});

        // Finite everywhere, and never louder than full-scale input plus the voice path's wet
        // headroom (12 dB) at 0 dB output gain.
        for channel in &out {
            for (i, x) in channel.iter().enumerate() {
                assert!(x.is_finite(), "blend {blend}: sample {i} is {x}");
                assert!(x.abs() <= 4.0 * 1.05, "blend {blend}: sample {i} is {x}");
            }
        }
        // Recovered within a bounded number of samples after the hostile input ends.
        let recovery = 4 * latency + (0.1 * sample_rate) as usize;
        let check = clean_start + recovery..out[0].len();
        for (o, r) in out.iter().zip(&ref_out) {
            if blend == 0.0 {
                // Without conversion nothing depends on history: exactly the reference.
                let worst = check
                    .clone()
                    .map(|i| (o[i] - r[i]).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "no recovery at blend 0: difference {worst}");
            } else {
                // The converter adapts to the input speaker over seconds, so compare levels:
                // normal output again, neither silent nor blown up.
                let db = 20.0 * (rms(&o[check.clone()]) / rms(&r[check.clone()])).log10();
                assert!(
                    db.abs() <= 6.0,
                    "output level {db:.1} dB off after hostile input"
                );
            }
        }
    }
}

#[test]
fn latency_follows_the_sample_rate_and_mono_works() {
    let mut host = OfflineHost::new(44_100.0, 2);
    let at_44 = host.latency;
    assert_eq!(at_44, host.plugin.latency_samples());
    host.activate(96_000.0, 2);
    let at_96 = host.latency;
    assert_eq!(at_96, host.plugin.latency_samples());
    // The voice path delays its output by its analysis window (milliseconds, at every rate),
    // so a plugin reporting no latency at all is wrong, not a case to skip.
    let ms = |samples: u32, rate: f64| samples as f64 * 1000.0 / rate;
    assert!(
        (5.0..=200.0).contains(&ms(at_44, 44_100.0)),
        "latency {at_44} samples at 44.1 kHz ({:.1} ms)",
        ms(at_44, 44_100.0)
    );
    assert!(
        at_96 > at_44,
        "latency {at_44} at 44.1 kHz, {at_96} at 96 kHz"
    );
    let expected = at_44 as f64 * 96_000.0 / 44_100.0;
    assert!(
        (at_96 as f64 - expected).abs() <= expected * 0.05 + 2.0,
        "latency {at_96} at 96 kHz, expected about {expected:.0} (the same time as {at_44} at \
         44.1 kHz)"
    );

    let mut mono = OfflineHost::new(48_000.0, 1);
    let input = test_signal(48_000.0, 0.5, 1);
    let mut audio = input.clone();
    mono.render(&mut audio, &[31, 1024, 3], |_, _, _, _| {});
    assert!(audio[0].iter().all(|x| x.is_finite()));
}

#[test]
fn refused_files_report_per_slot_and_audio_keeps_flowing() {
    let sample_rate = 48_000.0;
    let mut host = OfflineHost::new(sample_rate, 2);
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write_garbage(dir.path(), "corrupt.kbi", &[0x4b; 4096]),
            "corrupt",
        ),
        (write_garbage(dir.path(), "empty.index", b""), "empty"),
        (dir.path().join("missing.kbi"), "missing"),
        (dir.path().to_path_buf(), "directory"),
    ];
    for (slot, (path, _)) in cases.iter().enumerate() {
        host.params.slots.set_path(slot, path).unwrap();
    }
    let input = test_signal(sample_rate, 1.0, 2);
    let mut audio = input.clone();
    host.render(&mut audio, &[128, 77], |block, _, p, sr| {
        p.set_plain("voice", 1.0 + (block % 4) as f32, sr, false);
    });
    assert!(audio.iter().flatten().all(|x| x.is_finite()));
    wait_for_loads(&host.params.slots);
    let control = host.params.slots.control().expect("activated");
    for (slot, (_, what)) in cases.iter().enumerate() {
        match control.status(slot).state {
            LoadState::Failed(message) => {
                assert!(!message.is_empty(), "{what}: empty message")
            }
            other => panic!("{what} file in slot {}: {other:?}", slot + 1),
        }
    }
    // Audio still flows after the failures.
    let mut again = input.clone();
    host.render(&mut again, &[512], |_, _, _, _| {});
    assert!(again.iter().flatten().all(|x| x.is_finite()));
}

#[test]
fn slot_state_round_trips_byte_identical() {
    let params = KnnBlendParams::default();
    params
        .slots
        .set_path(0, Path::new("/voices/alto.kbi"))
        .unwrap();
    params
        .slots
        .set_path(5, Path::new("/voices/tenor ü.index"))
        .unwrap();
    let saved = params.serialize_fields();

    let restored = KnnBlendParams::default();
    restored.deserialize_fields(&saved);
    assert_eq!(restored.slots.path(0).as_deref(), Some("/voices/alto.kbi"));
    assert_eq!(
        restored.slots.path(5).as_deref(),
        Some("/voices/tenor ü.index")
    );
    assert_eq!(restored.serialize_fields(), saved);
}

#[test]
fn hostile_slot_state_gives_messages_not_crashes() {
    use std::collections::BTreeMap;
    let cases = [
        "{\"version\":1,\"slots\":[\"/a.kbi\"",
        "\u{0}\u{1}garbage",
        "[1,2,3]",
        r#"{"slots":{"0":"/a.kbi"}}"#,
        r#"{"slots":["relative/path.kbi", 17, null, "/ok.kbi"], "unknown": true}"#,
        r#"{"slots":["/1","/2","/3","/4","/5","/6","/7","/8","/9","/10"]}"#,
    ];
    for text in cases {
        let mut state = PluginState {
            version: String::new(),
            params: BTreeMap::new(),
            fields: BTreeMap::from([("slots".to_string(), text.to_string())]),
        };
        knnblend_plugin::params::sanitize_state(&mut state);
        let params = KnnBlendParams::default();
        params.deserialize_fields(&state.fields);
        let messages = (0..SLOTS)
            .filter(|&s| params.slots.message(s).is_some())
            .count();
        assert!(messages > 0, "no message for {text:?}");
    }
}

/// The allocation guard really is armed in this build: a child test process that allocates
/// inside it must die.
#[test]
#[cfg(feature = "assert_process_allocs")]
fn allocation_guard_is_armed() {
    if std::env::var_os("KNNBLEND_ALLOC_PROBE").is_some() {
        no_alloc(|| std::hint::black_box(Box::new(7u64)));
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "allocation_guard_is_armed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KNNBLEND_ALLOC_PROBE", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "an allocation inside the guard went unnoticed"
    );
}

#[test]
fn refused_load_keeps_the_previous_voice_serving() {
    let sample_rate = 48_000.0;
    let dir = tempfile::tempdir().unwrap();
    let voice = make_voice(dir.path(), "alto.kbi", true);
    let corrupt = {
        // A real index with one byte flipped in the middle: a checksum failure.
        let mut bytes = std::fs::read(&voice).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        write_garbage(dir.path(), "corrupt.kbi", &bytes)
    };
    let truncated = {
        let bytes = std::fs::read(&voice).unwrap();
        write_garbage(dir.path(), "truncated.kbi", &bytes[..bytes.len() / 3])
    };
    let mismatched = make_mismatched(dir.path(), "rvc.kbi");

    let mut tested = OfflineHost::new(sample_rate, 2);
    let mut twin = OfflineHost::new(sample_rate, 2);
    for h in [&mut tested, &mut twin] {
        h.params.slots.set_path(0, &voice).unwrap();
        wait_for_loads(&h.params.slots);
        h.handles.set_plain("blend", 1.0, sample_rate, true);
    }
    let input = test_signal(sample_rate, 3.0, 2);
    let third = input[0].len() / 3;
    let part = |k: usize| -> Vec<Vec<f32>> {
        input
            .iter()
            .map(|c| c[k * third..(k + 1) * third].to_vec())
            .collect()
    };

    let mut out_tested = Vec::new();
    let mut out_twin = Vec::new();
    for (k, refused) in [
        (0, None),
        (1, Some(&corrupt)),
        (2, Some(&truncated)),
        (2, Some(&mismatched)),
    ] {
        if let Some(path) = refused {
            // Requested mid-stream; the loader refuses it while audio keeps running.
            tested.params.slots.set_path(0, path).unwrap();
        }
        let mut a = part(k);
        let mut b = part(k);
        tested.render(&mut a, &[256, 31], |_, _, _, _| {});
        twin.render(&mut b, &[256, 31], |_, _, _, _| {});
        wait_for_loads(&tested.params.slots);
        if let Some(path) = refused {
            let status = tested.params.slots.control().unwrap().status(0);
            match (&status.state, &status.info) {
                (LoadState::Failed(message), Some(info)) => {
                    assert!(!message.is_empty());
                    assert_eq!(info.path, voice, "serving {:?}", info.path);
                    if path == &mismatched {
                        // The feature check names what the file holds.
                        assert!(message.contains("rvc-v2-768"), "{message}");
                    }
                }
                other => panic!("{}: {other:?}", path.display()),
            }
            // What a saved project would reload is the voice that is actually serving.
            assert_eq!(
                tested.params.slots.saved().paths[0].as_deref(),
                voice.to_str()
            );
        }
        out_tested.push(a);
        out_twin.push(b);
    }
    for (a, b) in out_tested.iter().zip(&out_twin) {
        for (ca, cb) in a.iter().zip(b) {
            let worst = ca
                .iter()
                .zip(cb)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-6,
                "output changed after a refused load: {worst}"
            );
        }
    }
}

/// Largest step between neighbouring samples after `skip` samples.
fn max_step(x: &[f32], skip: usize) -> f32 {
    x.windows(2)
        .skip(skip)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0.0, f32::max)
}

#[test]
fn switching_voices_crossfades_without_clicks() {
    let sample_rate = 48_000.0;
    let dir = tempfile::tempdir().unwrap();
    let high = make_voice(dir.path(), "high.kbi", true);
    let low = make_voice(dir.path(), "low.kbi", false);
    let input = test_signal(sample_rate, 3.0, 1);
    let switch_every = (0.3 * sample_rate) as usize;

    let render = |switching: bool, fixed_voice: f32| -> Vec<f32> {
        let mut host = OfflineHost::new(sample_rate, 1);
        host.params.slots.set_path(0, &high).unwrap();
        host.params.slots.set_path(1, &low).unwrap();
        wait_for_loads(&host.params.slots);
        host.handles.set_plain("blend", 1.0, sample_rate, true);
        host.handles.set_plain("crossfade", 50.0, sample_rate, true);
        host.handles
            .set_plain("voice", fixed_voice, sample_rate, true);
        let mut audio = input.clone();
        host.render(&mut audio, &[128], |_, pos, p, sr| {
            if switching {
                p.set_plain("voice", 1.0 + ((pos / switch_every) % 2) as f32, sr, false);
            }
        });
        audio.remove(0)
    };
    let skip = (0.2 * sample_rate) as usize;
    let fixed = max_step(&render(false, 1.0), skip).max(max_step(&render(false, 2.0), skip));
    let switching = max_step(&render(true, 1.0), skip);
    assert!(
        switching <= fixed * 1.5,
        "a voice switch made a step of {switching} (fixed voices: {fixed})"
    );
}

#[test]
fn no_page_faults_in_process_once_running() {
    let sample_rate = 48_000.0;
    let dir = tempfile::tempdir().unwrap();
    let high = make_voice(dir.path(), "high.kbi", true);
    let low = make_voice(dir.path(), "low.kbi", false);
    let mut host = OfflineHost::new(sample_rate, 2);
    host.params.slots.set_path(0, &high).unwrap();
    host.params.slots.set_path(1, &low).unwrap();
    wait_for_loads(&host.params.slots);
    host.handles.set_plain("blend", 1.0, sample_rate, true);
    let input = test_signal(sample_rate, 1.0, 2);

    let mut warm = input.clone();
    host.render(&mut warm, ODD_BLOCKS, |block, _, p, sr| {
        p.set_plain("voice", 1.0 + (block % 2) as f32, sr, false);
    });
    println!("page faults in process() while warming up: {}", host.faults);

    host.faults = 0;
    let mut audio = input.clone();
    host.render(&mut audio, ODD_BLOCKS, |block, _, p, sr| {
        p.set_plain("voice", 1.0 + ((block / 3) % 2) as f32, sr, false);
        p.set_plain("neighbours", 1.0 + (block % 16) as f32, sr, false);
    });
    assert_eq!(host.faults, 0, "page faults inside process() after warm-up");
}
