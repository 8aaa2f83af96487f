//! IVF-PQ FastScan voices in the plugin: a PQ `.kbi` (the library's PQ writer, as `knnblend
//! import` writes one; the voice's rows quantized here without faiss, `common::make_pq_voice`)
//! loads into an Index slot through the real loader, the slot reports the index type
//! (`IVF…,PQ40x4fs[,RFlat]`, also in the editor's line), and the real `Plugin::process()`
//! serves it, every call under the allocation guard (with `--features assert_process_allocs`,
//! as `cargo xtask test` runs it) and without page faults once running:
//!
//! - at Blend 1 the output differs from the latency-compensated input (the voice converts), at
//!   Blend 0 it nulls against it (the dry path), refined (`RFlat`) and unrefined;
//! - a refined PQ index whose re-ranking covers every stored frame (one list, `k_factor`
//!   large enough) finds the exact neighbours, so it sounds like the IVF-Flat index of the same
//!   rows (within rounding), while an unrefined one (neighbours by 4-bit codes) does not: the
//!   comparison can fail both ways;
//! - slots switch between an IVF-Flat and an IVF-PQ voice with the crossfade, finite and
//!   converting throughout.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use knnblend_plugin::engine::{LoadState, VoiceInfo};
use knnblend_plugin::params::SLOTS;
use knnblend_plugin::slots::SlotStore;
use nice_plug::prelude::*;

const BLOCKS: &[usize] = &[1, 7, 64, 333, 512, 1024, 2049, 5, 97, 480];
const SAMPLE_RATE: f32 = 48_000.0;

/// PQ40x4fs in 4 lists, refined with the rows (k_factor 2), as a small trained index would be.
const REFINED: PqRecipe = PqRecipe {
    nlist: 4,
    m: 40,
    k_factor: Some(2.0),
};
/// PQ40x4fs in 4 lists, codes only.
const UNREFINED: PqRecipe = PqRecipe {
    nlist: 4,
    m: 40,
    k_factor: None,
};
/// One list, refined with k_factor 128: the 8 neighbours are re-ranked from 1024 candidates,
/// more than the voice's frames, so they are the exact nearest frames.
const EXACT: PqRecipe = PqRecipe {
    nlist: 1,
    m: 40,
    k_factor: Some(128.0),
};

/// Waits (bounded) until no slot is loading any more.
fn wait_for_loads(store: &SlotStore) {
    let control = store.control().expect("activated");
    let deadline = Instant::now() + Duration::from_secs(120);
    while (0..SLOTS).any(|s| matches!(control.status(s).state, LoadState::Loading { .. })) {
        assert!(Instant::now() < deadline, "loads did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An activated stereo instance with `voice` loaded into slot 1 (checked ready); returns the
/// slot's info too.
fn host_with(voice: &Path) -> (OfflineHost, VoiceInfo) {
    let mut host = OfflineHost::new(SAMPLE_RATE, 2);
    host.params.slots.set_path(0, voice).unwrap();
    wait_for_loads(&host.params.slots);
    let status = host.params.slots.control().unwrap().status(0);
    assert_eq!(status.state, LoadState::Ready, "{}", voice.display());
    let info = status.info.expect("a ready slot has its info");
    host.handles.set_plain("neighbours", 8.0, SAMPLE_RATE, true);
    host.plugin.reset();
    (host, info)
}

/// Renders `input` at `blend` (Dry/Wet 1, 0 dB) from the instance's current state.
fn render(host: &mut OfflineHost, input: &[Vec<f32>], blend: f32) -> Vec<Vec<f32>> {
    let sr = host.sample_rate;
    host.handles.set_plain("blend", blend, sr, true);
    host.handles.set_plain("mix", 1.0, sr, true);
    host.handles.set_plain("gain", 0.0, sr, true);
    host.plugin.reset();
    let mut audio = input.to_vec();
    host.render(&mut audio, BLOCKS, |_, _, _, _| {});
    assert!(audio.iter().flatten().all(|x| x.is_finite()));
    audio
}

/// Peak of `a − b` over `range`, in dBFS.
fn difference_dbfs(a: &[f32], b: &[f32], range: std::ops::Range<usize>) -> f64 {
    residual_dbfs(&a[range.clone()], &b[range], 0, 0..usize::MAX)
}

#[test]
fn a_pq_kbi_voice_loads_reports_its_type_and_converts_refined_and_unrefined() {
    let dir = tempfile::tempdir().unwrap();
    let input = test_signal(SAMPLE_RATE, 1.5, 2);
    for (recipe, factory) in [
        (REFINED, "IVF4,PQ40x4fs,RFlat"),
        (UNREFINED, "IVF4,PQ40x4fs"),
    ] {
        let voice = make_pq_voice(dir.path(), &format!("{factory}.kbi"), true, recipe);
        let (mut host, info) = host_with(&voice);
        // The slot says what it serves: the index type, in the editor's line too.
        assert!(info.index_type.contains(factory), "{info:?}");
        assert!(info.index_type.contains("IVF-PQ FastScan"), "{info:?}");
        if recipe.k_factor.is_none() {
            assert!(!info.index_type.contains("RFlat"), "{info:?}");
        }
        let line = knnblend_plugin::editor::describe(&info);
        assert!(line.starts_with(&info.index_type), "{line}");
        assert_eq!((info.dim, info.lists), (80, 4), "{info:?}");
        assert_eq!(info.features, "knnblend-logmel-v1", "{info:?}");

        let latency = host.latency as usize;
        let settle = latency + (0.2 * SAMPLE_RATE) as usize;
        let range = settle..input[0].len() - latency;
        let control = host.params.slots.control().unwrap();
        let before = control.telemetry().queries;
        let converted = render(&mut host, &input, 1.0);
        let queries = control.telemetry().queries - before;
        assert!(queries > 50, "{factory}: {queries} frames retrieved");
        let db = residual_dbfs(&input[0], &converted[0], latency, range.clone());
        assert!(
            db > -60.0,
            "{factory}: Blend 1 left the signal unchanged ({db:.1} dBFS)"
        );
        let dry = render(&mut host, &input, 0.0);
        for (c, (i, o)) in input.iter().zip(&dry).enumerate() {
            let db = residual_dbfs(i, o, latency, range.clone());
            assert!(
                db <= -100.0,
                "{factory}: Blend 0, channel {c}: residual {db:.1} dBFS"
            );
        }
        // Once running, process() does not page-fault on the PQ path either.
        host.faults = 0;
        let _ = render(&mut host, &input, 1.0);
        assert_eq!(host.faults, 0, "{factory}: page faults inside process()");
        println!("{factory}: {queries} frames retrieved; Blend 1 residual {db:.1} dBFS; {line}");
    }
}

#[test]
fn a_pq_index_reranked_over_every_frame_sounds_like_the_flat_index_and_an_unrefined_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let input = test_signal(SAMPLE_RATE, 1.5, 2);
    let flat = make_voice(dir.path(), "flat.kbi", true);
    let exact = make_pq_voice(dir.path(), "exact.kbi", true, EXACT);
    let coded = make_pq_voice(dir.path(), "coded.kbi", true, UNREFINED);
    let mut outputs = Vec::new();
    for voice in [&flat, &exact, &coded] {
        let (mut host, info) = host_with(voice);
        outputs.push((render(&mut host, &input, 1.0), host.latency as usize, info));
    }
    let (flat_out, latency, flat_info) = &outputs[0];
    let (exact_out, _, exact_info) = &outputs[1];
    let (coded_out, _, _) = &outputs[2];
    assert_eq!(flat_info.index_type, "IVF-Flat", "{flat_info:?}");
    assert!(
        exact_info.vectors <= 8 * 128,
        "{exact_info:?}: re-ranking does not cover every frame"
    );
    let range = latency + (0.2 * SAMPLE_RATE) as usize..input[0].len();
    let converted = residual_dbfs(
        &input[0],
        &flat_out[0],
        *latency,
        0..input[0].len() - latency,
    );
    let exact_db = difference_dbfs(&flat_out[0], &exact_out[0], range.clone());
    let coded_db = difference_dbfs(&flat_out[0], &coded_out[0], range);
    println!(
        "IVF-Flat against the input: {converted:.1} dBFS; exact PQ against IVF-Flat: \
         {exact_db:.1} dBFS; unrefined PQ against IVF-Flat: {coded_db:.1} dBFS"
    );
    assert!(converted > -60.0, "the IVF-Flat voice did not convert");
    assert!(
        exact_db <= -80.0,
        "the exactly re-ranked PQ voice differs from the IVF-Flat one by {exact_db:.1} dBFS"
    );
    assert!(
        coded_db > -60.0,
        "the unrefined PQ voice sounds exactly like the IVF-Flat one ({coded_db:.1} dBFS): \
         the comparison above proves nothing"
    );
}

#[test]
fn switching_between_a_flat_and_a_pq_voice_crossfades_and_keeps_converting() {
    let dir = tempfile::tempdir().unwrap();
    let flat = make_voice(dir.path(), "low.kbi", false);
    let pq = make_pq_voice(dir.path(), "high-pq.kbi", true, REFINED);
    let mut host = OfflineHost::new(SAMPLE_RATE, 1);
    host.params.slots.set_path(0, &flat).unwrap();
    host.params.slots.set_path(1, &pq).unwrap();
    wait_for_loads(&host.params.slots);
    let control = host.params.slots.control().unwrap();
    for slot in 0..2 {
        assert_eq!(control.status(slot).state, LoadState::Ready);
    }
    let sr = SAMPLE_RATE;
    host.handles.set_plain("blend", 1.0, sr, true);
    host.handles.set_plain("crossfade", 50.0, sr, true);
    let input = test_signal(sr, 3.0, 1);
    let mut audio = input.clone();
    let switch_every = (0.3 * sr) as usize;
    let before = control.telemetry();
    host.render(&mut audio, &[128], |_, pos, p, sr| {
        p.set_plain("voice", 1.0 + ((pos / switch_every) % 2) as f32, sr, false);
    });
    let after = control.telemetry();
    assert!(audio[0].iter().all(|x| x.is_finite()));
    for slot in 0..2 {
        assert!(
            after.slot_queries[slot] > before.slot_queries[slot],
            "slot {} was not served: {after:?}",
            slot + 1
        );
    }
    let latency = host.latency as usize;
    let db = residual_dbfs(&input[0], &audio[0], latency, 0..input[0].len() - latency);
    assert!(db > -60.0, "switching voices left the signal unchanged");
}
