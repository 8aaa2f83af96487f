//! RVC slots through the real `Plugin::process()` with mocked host contexts, on stand-in models
//! (the official RVC signatures; `rvc/tests/fixtures/make_models.py`) and a 768-d `.kbi`:
//! at 44.1, 48 and 96 kHz, mono and stereo, the voice opens off the audio thread, the reported
//! latency is the RVC host's fixed latency for the Block / Extra / Block crossfade times, the
//! output becomes the converted voice, every process call is under the allocation guard (with
//! `--features assert_process_allocs`, as `cargo xtask test` runs it) and makes no page fault
//! once running; switching to an index slot reports that path's latency; a state with RVC slots
//! round-trips; an RVC slot without ContentVec, or with a corrupt model, says so and passes
//! audio through at the reported latency. An RVC slot serves an IVF-PQ FastScan index, faiss's
//! own `IVF4,PQ192x4fs,RFlat` file (written by PyPI faiss) and the PQ `.kbi` imported from it,
//! and at Blend 1 sounds like the IVF-Flat index of the same rows, not like one of other rows.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::rvc::{faiss_rvc_index, model, rvc_index, rvc_latency};
use common::*;
use knnblend_plugin::engine::RvcState;
use knnblend_plugin::params::KnnBlendParams;
use knnblend_plugin::slots::RvcFile;
use nice_plug::prelude::*;

const BLOCK_MS: f32 = 100.0;
const EXTRA_MS: f32 = 300.0;
const SOLA_MS: f32 = 40.0;

fn expected_latency(rate: f32) -> u32 {
    rvc_latency(rate, BLOCK_MS, EXTRA_MS, SOLA_MS)
}

/// An instance with the RVC times set and slot 1 an RVC slot with `model_name`.
fn rvc_host(rate: f32, channels: usize, model_name: Option<&Path>, index: &Path) -> OfflineHost {
    let mut host = OfflineHost::new(rate, channels);
    for (id, v) in [("block", BLOCK_MS), ("extra", EXTRA_MS), ("sola", SOLA_MS)] {
        host.handles.set_plain(id, v, rate, true);
    }
    let slots = &host.params.slots;
    slots
        .set_contentvec(Some(&model("vec-768-layer-12.onnx")))
        .unwrap();
    let synth = model_name
        .map(Path::to_path_buf)
        .unwrap_or_else(|| model("synth_v2_40k.onnx"));
    slots.set_rvc_file(0, RvcFile::Model, Some(&synth)).unwrap();
    slots.set_rvc_file(0, RvcFile::Index, Some(index)).unwrap();
    // The times reach the voice host through process() and settle for 250 ms before they
    // count (a Block knob being dragged does not re-latency the host at every step).
    let began = Instant::now();
    while host.plugin.latency_samples() != expected_latency(rate) {
        let silence = vec![vec![0f32; (rate * 0.05) as usize]; channels];
        let _ = render_paced(&mut host, &silence, 512);
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the new times never took effect"
        );
    }
    host
}

/// Renders `input` in `buffer`-sample callbacks at about real time (the RVC worker needs wall
/// time), every callback under the allocation guard.
fn render_paced(host: &mut OfflineHost, input: &[Vec<f32>], buffer: usize) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = input.to_vec();
    let began = Instant::now();
    let total = input[0].len();
    let mut pos = 0;
    while pos < total {
        let n = buffer.min(total - pos);
        let mut chunk: Vec<Vec<f32>> = out.iter().map(|c| c[pos..pos + n].to_vec()).collect();
        host.render(&mut chunk, &[n], |_, _, _, _| {});
        for (o, c) in out.iter_mut().zip(&chunk) {
            o[pos..pos + n].copy_from_slice(c);
        }
        pos += n;
        let due = Duration::from_secs_f64(pos as f64 / host.sample_rate as f64 * 0.9);
        if let Some(wait) = due.checked_sub(began.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    out
}

fn serving(host: &OfflineHost) -> bool {
    host.params
        .slots
        .rvc_control()
        .is_some_and(|c| c.telemetry().serving_slot == Some(0))
}

fn db(x: f64) -> f64 {
    20.0 * x.max(1e-12).log10()
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Mono mix of `input` delayed by `latency`, at `i`.
fn dry_at(input: &[Vec<f32>], latency: usize, i: usize) -> f32 {
    if i < latency {
        return 0.0;
    }
    input.iter().map(|c| c[i - latency]).sum::<f32>() / input.len() as f32
}

#[test]
fn rvc_slot_converts_at_three_rates_without_allocating_or_faulting() {
    let dir = tempfile::tempdir().unwrap();
    let index = rvc_index(dir.path(), "added_test_v2.kbi", 0.0);
    for (rate, channels) in [(44_100.0, 2), (48_000.0, 1), (96_000.0, 2)] {
        let mut host = rvc_host(rate, channels, None, &index);
        let expected = expected_latency(rate);
        assert_eq!(
            host.plugin.latency_samples(),
            expected,
            "{rate} Hz: the RVC slot's latency before its voice serves"
        );
        // Until the voice serves: the input passes through, delayed by the latency.
        let began = Instant::now();
        let signal = test_signal(rate, 0.5, channels);
        while !serving(&host) {
            let out = render_paced(&mut host, &signal, 256);
            if !serving(&host) {
                for (i, &got) in out[0].iter().enumerate().skip(expected as usize) {
                    // Pass-through is the mono mix (the RVC path is mono), delayed.
                    let want = dry_at(&signal, expected as usize, i);
                    assert!((got - want).abs() < 1e-6 || serving(&host));
                }
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "{rate} Hz: the RVC voice never served: {:?}",
                host.params.slots.rvc_control().map(|c| c.status(0))
            );
        }
        // Converted, steady: no page faults, finite, clearly not the dry signal.
        let signal = test_signal(rate, 1.5, channels);
        let warm = render_paced(&mut host, &signal, 512);
        host.faults = 0;
        let out = render_paced(&mut host, &signal, 512);
        assert_eq!(host.faults, 0, "{rate} Hz: page faults inside process()");
        assert!(out.iter().flatten().all(|v| v.is_finite()));
        let residual: Vec<f32> = (0..out[0].len())
            .map(|i| out[0][i] - dry_at(&signal, 0, i))
            .collect();
        let rel = db(rms(&residual) / rms(&signal[0]));
        assert!(
            rel > -10.0,
            "{rate} Hz: the output is the dry signal ({rel:.1} dB)"
        );
        for c in 1..channels {
            assert_eq!(out[c], out[0], "{rate} Hz: the voice goes to every channel");
        }
        assert_eq!(host.plugin.latency_samples(), expected);
        let telemetry = host.params.slots.rvc_control().unwrap().telemetry();
        assert!(telemetry.stream.blocks > 0);
        println!(
            "{rate} Hz: latency {expected} samples ({:.0} ms), {} blocks, {} underruns, residual \
             {rel:.1} dB; warm-up output rms {:.3}",
            expected as f64 * 1000.0 / rate as f64,
            telemetry.stream.blocks,
            telemetry.stream.underruns,
            rms(&warm[0])
        );

        // Voice 2 is an index slot: its path's latency is reported.
        host.handles.set_plain("voice", 2.0, rate, true);
        let _ = render_paced(&mut host, &test_signal(rate, 0.05, channels), 512);
        let index_latency = host.plugin.latency_samples();
        assert_ne!(
            index_latency, expected,
            "{rate} Hz: switching kinds re-reports latency"
        );

        // And back: the RVC stream restarts (nothing from before the gap plays) and converts
        // again at its latency.
        host.handles.set_plain("voice", 1.0, rate, true);
        let signal = test_signal(rate, 1.5, channels);
        let out = render_paced(&mut host, &signal, 512);
        assert_eq!(host.plugin.latency_samples(), expected);
        let tail = out[0].len() - (rate * 0.4) as usize;
        let residual: Vec<f32> = (tail..out[0].len())
            .map(|i| out[0][i] - dry_at(&signal, expected as usize, i))
            .collect();
        let rel = db(rms(&residual) / rms(&signal[0][tail..]));
        assert!(
            rel > -10.0,
            "{rate} Hz: not converting after switching back ({rel:.1} dB)"
        );
        assert!(out.iter().flatten().all(|v| v.is_finite()));
    }
}

#[test]
fn state_with_rvc_slots_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let index = rvc_index(dir.path(), "added_test_v2.kbi", 0.0);
    let params = KnnBlendParams::default();
    let slots = &params.slots;
    slots
        .set_contentvec(Some(Path::new("/models/vec-768-layer-12.onnx")))
        .unwrap();
    slots
        .set_rvc_file(2, RvcFile::Model, Some(Path::new("/models/alto.onnx")))
        .unwrap();
    slots.set_rvc_file(2, RvcFile::Index, Some(&index)).unwrap();
    slots
        .set_rvc_file(2, RvcFile::Rmvpe, Some(Path::new("/models/rmvpe.onnx")))
        .unwrap();
    slots.set_rvc_kind(5, true);
    let saved = params.serialize_fields();
    let restored = KnnBlendParams::default();
    restored.deserialize_fields(&saved);
    assert_eq!(restored.slots.rvc(2), params.slots.rvc(2));
    assert_eq!(restored.slots.rvc(5), params.slots.rvc(5));
    assert_eq!(
        restored.slots.contentvec().as_deref(),
        Some("/models/vec-768-layer-12.onnx")
    );
    assert!(restored.slots.kinds().is_rvc(2) && restored.slots.kinds().is_rvc(5));
    assert_eq!(restored.serialize_fields(), saved);
}

#[test]
fn broken_rvc_slots_say_why_and_pass_audio_through() {
    let dir = tempfile::tempdir().unwrap();
    let index = rvc_index(dir.path(), "added_test_v2.kbi", 0.0);
    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x07garbage that is not a model").unwrap();
    let rate = 48_000.0;
    let mut host = rvc_host(rate, 2, Some(&corrupt), &index);
    let latency = host.plugin.latency_samples() as usize;
    assert_eq!(latency as u32, expected_latency(rate));
    let began = Instant::now();
    let signal = test_signal(rate, 0.3, 2);
    loop {
        let out = render_paced(&mut host, &signal, 480);
        for (i, &got) in out[0].iter().enumerate().skip(latency) {
            assert!((got - dry_at(&signal, latency, i)).abs() < 1e-6);
        }
        let status = host.params.slots.rvc_control().unwrap().status(0);
        if let RvcState::Failed(why) = &status.state {
            assert!(why.contains("corrupt.onnx"), "{why}");
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(30), "{status:?}");
    }
    assert!(!serving(&host));

    // Without ContentVec the slot is never sent to the host; the editor row says why.
    host.params.slots.set_contentvec(None).unwrap();
    let rows = knnblend_plugin::editor::slot_rows(&host.params.slots);
    let error = rows[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("ContentVec"), "{rows:?}");
    let out = render_paced(&mut host, &signal, 480);
    assert!(out.iter().flatten().all(|v| v.is_finite()));
}

/// The output level (rms over the last second) of an RVC slot serving `index` at Blend 1, once
/// its voice serves, mono at 48 kHz; checks the slot reports `vectors` and `lists`.
fn level_at_blend_1(index: &Path, vectors: u64, lists: usize) -> f64 {
    let rate = 48_000.0;
    let mut host = rvc_host(rate, 1, None, index);
    host.handles.set_plain("blend", 1.0, rate, true);
    let began = Instant::now();
    let signal = test_signal(rate, 0.3, 1);
    while !serving(&host) {
        let _ = render_paced(&mut host, &signal, 512);
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "{}: the RVC voice never served: {:?}",
            index.display(),
            host.params.slots.rvc_control().map(|c| c.status(0))
        );
    }
    let status = host.params.slots.rvc_control().unwrap().status(0);
    let info = status.info.expect("a serving voice has its info");
    assert_eq!(
        (info.vectors, info.lists),
        (vectors, lists),
        "{}: {info:?}",
        index.display()
    );
    let signal = test_signal(rate, 2.0, 1);
    let out = render_paced(&mut host, &signal, 512);
    assert!(out[0].iter().all(|v| v.is_finite()));
    let tail = &out[0][out[0].len() - rate as usize..];
    rms(tail)
}

/// RVC's rows at `level` as faiss's own `IVF4,PQ192x4fs,RFlat` file (PyPI faiss) and as the
/// PQ `.kbi` `knnblend import` makes of it (the library's reader and PQ writer), both checked
/// to declare a refined IVF-PQ FastScan index.
fn pq_files(dir: &Path, level: f32) -> (std::path::PathBuf, std::path::PathBuf) {
    let faiss_pq = faiss_rvc_index(dir, "added_pq_v2.index", level, "IVF4,PQ192x4fs,RFlat");
    let kbi_pq = dir.join("added_pq_v2.kbi");
    let parts = knnblend::format::read_faiss_fastscan_file(&faiss_pq).unwrap();
    knnblend::format::write_pq_kbi(&kbi_pq, &parts).unwrap();
    for file in [&faiss_pq, &kbi_pq] {
        let header = knnblend::format::read_header(file).unwrap();
        assert_eq!(
            header.structure,
            knnblend::format::IndexStructure::IvfPqFastScan { refined: true },
            "{}",
            file.display()
        );
    }
    (faiss_pq, kbi_pq)
}

/// At Blend 1 the stand-in synthesizer's level follows the blended features, so an index's
/// rows set the output level: the PQ `.kbi` imported from faiss's `IVF4,PQ192x4fs,RFlat` file
/// (re-ranked by the exact rows) sounds like the IVF-Flat index of the same rows, and two
/// IVF-Flat indexes whose rows differ by 0.3 sound different (the negative control).
#[test]
fn rvc_slot_serves_an_imported_ivf_pq_kbi_like_the_flat_index_of_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let level = 0.3;
    let (_, kbi_pq) = pq_files(dir.path(), level);
    let same = rvc_index(dir.path(), "same.kbi", level);
    let other = rvc_index(dir.path(), "other.kbi", 0.0);
    let pq = level_at_blend_1(&kbi_pq, 256, 4);
    let flat_same = level_at_blend_1(&same, 256, 1);
    let flat_other = level_at_blend_1(&other, 256, 1);
    println!(
        "output rms at Blend 1: imported PQ .kbi {pq:.4}, IVF-Flat of the same rows \
         {flat_same:.4}, IVF-Flat of rows {level} lower {flat_other:.4}"
    );
    assert!(
        db(flat_same / flat_other).abs() > 3.0,
        "indexes {level} apart sound alike: {flat_same} and {flat_other}"
    );
    assert!(
        db(pq / flat_same).abs() < 1.0,
        "imported PQ .kbi: level {pq}, the IVF-Flat index of the same rows gives {flat_same}"
    );
}

/// The faiss file itself in an RVC slot (RVC users pick their `added_*.index`): it must serve
/// like its imported `.kbi`. (Until `format::read_header` named a faiss PQ file's type as the
/// opened `PqIndex` does, the loader refused every such file as "changed while it was being
/// loaded".)
#[test]
fn rvc_slot_serves_a_faiss_ivf_pq_fastscan_file() {
    let dir = tempfile::tempdir().unwrap();
    let level = 0.3;
    let (faiss_pq, kbi_pq) = pq_files(dir.path(), level);
    let from_faiss = level_at_blend_1(&faiss_pq, 256, 4);
    let from_kbi = level_at_blend_1(&kbi_pq, 256, 4);
    let other = level_at_blend_1(&rvc_index(dir.path(), "other.kbi", 0.0), 256, 1);
    println!(
        "output rms at Blend 1: faiss {from_faiss:.4}, imported {from_kbi:.4}, other {other:.4}"
    );
    assert!(
        db(from_faiss / from_kbi).abs() < 1.0,
        "{from_faiss} against {from_kbi}"
    );
    assert!(
        db(from_faiss / other).abs() > 3.0,
        "{from_faiss} against {other}"
    );
}
