//! The bundled CLAP plugin in a real (small) host built on `clack-host`: load the bundle, list
//! and set parameters, process audio at varying block sizes on an audio thread, restore a state
//! that names a voice and wait for it to serve, save and restore state into a fresh instance
//! (byte-identical, same output), deactivate and reactivate at another sample rate, and survive
//! hostile state.
//!
//! Needs `target/bundled/knnblend.clap` (`cargo xtask test` builds it first; or set
//! `KNNBLEND_CLAP_BUNDLE`). Without it the test prints why and passes, except under `CI=true`,
//! where it fails. The host itself is `common/clap.rs`, shared with `clap_rvc.rs`.

#[path = "common/clap.rs"]
mod clap_support;
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use clack_host::prelude::*;
use clap_support::{bundle_or_skip, decode_state, encode_state, Instance, PLUGIN_ID};

fn residual_db(input: &[f32], output: &[f32], latency: usize, from: usize) -> f64 {
    common::residual_dbfs(input, output, latency, from..input.len())
}

/// Processes chunks until the active voice visibly converts (output differs from the delayed
/// input at Blend 100 %), or gives up after a generous bound.
fn wait_until_converting(plugin: &mut Instance, probe: &[Vec<f32>], latency: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = plugin.process(probe, &[512], &[]);
        let db = residual_db(&probe[0], &out[0], latency, latency + 4800);
        if db > -60.0 {
            return db;
        }
        assert!(
            Instant::now() < deadline,
            "the restored voice never started serving (residual {db:.1} dBFS)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clap_bundle_in_a_real_host() {
    let Some(bundle) = bundle_or_skip() else {
        return;
    };
    // SAFETY: loading a plugin library runs its initialisers; this is the bundle under test.
    let entry = unsafe { PluginEntry::load(&bundle) }.expect("load the CLAP bundle");
    let factory = entry.get_plugin_factory().expect("plugin factory");
    let descriptor = factory
        .plugin_descriptors()
        .find(|d| d.id() == Some(PLUGIN_ID))
        .expect("kNN Blend is in the bundle");
    assert_eq!(descriptor.name().unwrap().to_bytes(), b"kNN Blend");

    let dir = tempfile::tempdir().unwrap();
    let voice = common::make_voice(dir.path(), "voice.kbi", true);

    // Parameters: all six, readable values.
    let mut a = Instance::new(&entry);
    let names: Vec<&str> = a.params.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "Blend",
        "Neighbours",
        "Voice",
        "Crossfade",
        "Dry/Wet",
        "Output Gain",
    ] {
        assert!(names.contains(&expected), "missing {expected} in {names:?}");
    }
    assert_eq!(a.shown("Blend"), "75%");
    assert_eq!(a.shown("Output Gain"), "0.0 dB");
    assert_eq!(a.shown("Voice"), "Slot 1");
    assert_eq!(a.shown("Crossfade"), "50 ms");
    let v = a.parse("Voice", "Slot 3");
    assert_eq!(a.text("Voice", v), "Slot 3");
    let v = a.parse("Output Gain", "-6.0");
    assert_eq!(a.text("Output Gain", v), "-6.0 dB");

    // A state naming the voice in slot 1, as a project would restore it.
    let mut state = decode_state(&a.save());
    state["fields"]["slots"] =
        serde_json::Value::String(serde_json::json!({"version": 1, "slots": [voice]}).to_string());
    assert!(a.load(&encode_state(&state)));

    // Activate, process at varying block sizes with parameter changes.
    a.activate(48_000.0);
    let latency_48 = a.latency() as usize;
    assert!(latency_48 > 0, "the voice path has latency");
    let input = common::test_signal(48_000.0, 2.0, 2);
    let changes: Vec<(usize, &str, f64)> = vec![
        (1000, "Blend", a.parse("Blend", "25%")),
        (20_000, "Neighbours", a.parse("Neighbours", "3")),
        (30_000, "Output Gain", a.parse("Output Gain", "-6.0")),
        (40_000, "Dry/Wet", a.parse("Dry/Wet", "50%")),
        (50_000, "Crossfade", a.parse("Crossfade", "120")),
        (60_000, "Voice", a.parse("Voice", "Slot 2")),
        (70_000, "Voice", a.parse("Voice", "Slot 1")),
    ];
    let out = a.process(&input, &[1, 17, 256, 4096, 333, 64], &changes);
    assert!(out.iter().flatten().all(|x| x.is_finite()));
    assert_eq!(a.shown("Blend"), "25%");
    assert_eq!(a.shown("Neighbours"), "3");
    assert_eq!(a.shown("Output Gain"), "-6.0 dB");
    assert_eq!(a.shown("Dry/Wet"), "50%");
    assert_eq!(a.shown("Crossfade"), "120 ms");
    assert_eq!(a.shown("Voice"), "Slot 1");

    // Full blend, full wet, unity gain; wait for the restored voice to serve.
    let probe = common::test_signal(48_000.0, 0.5, 2);
    let full = vec![
        (0, "Blend", a.parse("Blend", "100%")),
        (0, "Dry/Wet", a.parse("Dry/Wet", "100%")),
        (0, "Output Gain", a.parse("Output Gain", "0")),
        (0, "Neighbours", a.parse("Neighbours", "8")),
    ];
    a.process(&probe, &[512], &full);
    let db = wait_until_converting(&mut a, &probe, latency_48);
    println!("voice serving: residual against the input {db:.1} dBFS");

    // Save, restore into a fresh instance: byte-identical state, same voice, same output.
    let saved = a.save();
    let mut b = Instance::new(&entry);
    assert!(b.load(&saved));
    assert_eq!(b.save(), saved, "restored state differs from the saved one");
    b.activate(48_000.0);
    wait_until_converting(&mut b, &probe, latency_48);
    // Reactivating resets both to the same starting point.
    a.deactivate();
    a.activate(48_000.0);
    b.deactivate();
    b.activate(48_000.0);
    let out_a = a.process(&input, &[480, 7, 1024], &[]);
    let out_b = b.process(&input, &[64, 333], &[]);
    for (ca, cb) in out_a.iter().zip(&out_b) {
        let worst = ca
            .iter()
            .zip(cb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "restored instance sounds different ({worst})"
        );
    }

    // Deactivate and reactivate at another rate: latency follows, audio flows, voice stays.
    b.deactivate();
    b.activate(96_000.0);
    let latency_96 = b.latency() as usize;
    assert!(latency_96 > latency_48, "{latency_96} vs {latency_48}");
    let input_96 = common::test_signal(96_000.0, 0.5, 2);
    wait_until_converting(&mut b, &input_96, latency_96);

    // Hostile state: garbage, truncated, garbled fields. The plugin refuses or repairs and
    // keeps processing.
    let mut garbled = decode_state(&saved);
    garbled["fields"]["slots"] = serde_json::Value::String("{\"slots\": [".into());
    garbled["params"]["blend"] = serde_json::json!({"f32": 1e30});
    let cases: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        Vec::new(),
        saved[..saved.len() / 2].to_vec(),
        [&(u64::MAX).to_le_bytes()[..], b"{}"].concat(),
        encode_state(&serde_json::json!({"params": {}, "fields": {}, "extra": 1})),
        encode_state(&garbled),
    ];
    for case in &cases {
        let _ = b.load(case);
        let out = b.process(&input_96, &[256, 1], &[]);
        assert!(out.iter().flatten().all(|x| x.is_finite()));
        let blend = b.shown("Blend");
        let percent: f64 = blend.trim_end_matches('%').parse().unwrap();
        assert!((0.0..=100.0).contains(&percent), "blend {blend}");
    }

    b.deactivate();
    a.deactivate();
    let rescans = AtomicU32::new(0);
    rescans.fetch_add(
        a.instance.access_handler(|h| h.rescans.get()),
        Ordering::Relaxed,
    );
    println!(
        "clap host: {} parameter rescans seen, latency {} @ 48 kHz, {} @ 96 kHz",
        rescans.load(Ordering::Relaxed),
        latency_48,
        latency_96
    );
}
