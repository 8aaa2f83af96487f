//! The RVC conversion of a block on stand-in models: the features given to the synthesizer are
//! RVC's formula applied with faiss to the same index; Pitch scales `pitchf` by 2^(n/12); the
//! stream's output does not depend on the host's buffer size; mismatched models and indexes are
//! refused by name.

mod common;

use std::path::Path;
use std::sync::Arc;

use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, AnyIndex, FaissIvf};
use knnblend::live::{live, AudioEngine, Controller, LiveConfig, LoadOutcome, Validator};
use knnblend_rvc::models::{ContentVec, Synthesizer};
use knnblend_rvc::pipeline::{Controls, Framing, RvcConverter, VoiceModels};
use knnblend_rvc::stream::{stream_manual, Converter, StreamConfig};

use common::{model, runtime, Rng};

const HOST: u32 = 48_000;

/// Stored frames near the stand-in ContentVec's feature curve (`(1 + c/C)·E + c/C − 0.5`), so
/// the neighbours of real input frames are meaningful.
fn voice_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut rows = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let e = 0.05 * (rng.next_f32() + 1.0);
        for c in 0..dim {
            let r = c as f32 / dim as f32;
            rows.push((1.0 + r) * e + (r - 0.5) + 0.01 * rng.next_f32());
        }
    }
    rows
}

/// An RVC `added_*.index` (faiss IVF-Flat, RVC's list count) of `rows`, and faiss itself.
fn faiss_index(dir: &Path, rows: &[f32], dim: usize) -> (std::path::PathBuf, FaissIvf) {
    let n = rows.len() / dim;
    let ivf = FaissIvf::build(dim, rvc_nlist(n), Metric::L2, rows, rows).unwrap();
    let path = dir.join(format!(
        "added_IVF{}_Flat_nprobe_1_test_v2.index",
        rvc_nlist(n)
    ));
    ivf.write(&path).unwrap();
    (path, ivf)
}

fn dim_validator(dim: usize) -> Validator {
    Arc::new(move |index: &AnyIndex| {
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

fn runtime_with(path: &Path, dim: usize) -> (Controller, AudioEngine) {
    let (control, audio) = live(LiveConfig {
        max_dim: 768,
        validator: Some(dim_validator(dim)),
        ..LiveConfig::default()
    });
    match control.load(0, path).wait() {
        LoadOutcome::Published(_) => {}
        other => panic!("the index did not load: {other:?}"),
    }
    (control, audio)
}

fn models(synth: &str, cv: &str, rmvpe: bool) -> VoiceModels {
    runtime();
    VoiceModels {
        contentvec: ContentVec::open(model(cv)).unwrap(),
        synth: Synthesizer::open(model(synth)).unwrap(),
        rmvpe: rmvpe.then(|| knnblend_rvc::Rmvpe::open(model("rmvpe.onnx")).unwrap()),
    }
}

fn framing() -> Framing {
    Framing {
        host_rate: HOST,
        block_seconds: 0.1,
        crossfade_seconds: 0.04,
        extra_seconds: 0.5,
    }
}

/// A voiced test signal: a 180 Hz sawtooth with a slow loudness swell, and short gaps.
fn voice_signal(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = i as f32 / HOST as f32;
            let saw = 2.0 * ((t * 180.0).fract() - 0.5);
            let swell = 0.2 + 0.15 * (t * 1.3).sin();
            let gap = if (t * 2.0).fract() < 0.85 { 1.0 } else { 0.0 };
            saw * swell * gap
        })
        .collect()
}

/// RVC's retrieval (`pipeline.py`) with faiss: `score, ix = index.search(npy, k=8)`,
/// `weight = square(1 / score)`, normalised, `npy = sum(big_npy[ix] * weight)`, then
/// `feats = npy·rate + (1 − rate)·feats`, in f64.
fn rvc_blend(ivf: &mut FaissIvf, rows: &[f32], feats: &[f32], dim: usize, rate: f32) -> Vec<f32> {
    let (scores, ids) = ivf.search(feats, 8).unwrap();
    let mut out = feats.to_vec();
    for (q, o) in out.chunks_mut(dim).enumerate() {
        let (s, ix) = (&scores[q * 8..q * 8 + 8], &ids[q * 8..q * 8 + 8]);
        let w: Vec<f64> = s.iter().map(|&d| (1.0 / d as f64).powi(2)).collect();
        let total: f64 = w.iter().sum();
        for (c, v) in o.iter_mut().enumerate() {
            let npy: f64 = ix
                .iter()
                .zip(&w)
                .map(|(&i, &wi)| rows[i as usize * dim + c] as f64 * wi / total)
                .sum();
            *v = (npy * rate as f64 + (1.0 - rate as f64) * *v as f64) as f32;
        }
    }
    out
}

#[test]
fn the_synthesizer_gets_rvcs_blend_computed_with_faiss() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 768;
    let rows = voice_rows(3000, dim, 7);
    let (path, mut ivf) = faiss_index(dir.path(), &rows, dim);
    let (_control, audio) = runtime_with(&path, dim);
    let controls = Arc::new(Controls::default());
    controls.set_index_rate(0.75);
    controls.set_protect(0.5); // off: the features are exactly the blend, ×2
    controls.set_index_crossfade_seconds(0.0);
    let mut conv = RvcConverter::new(
        models("synth_v2_40k.onnx", "vec-768-layer-12.onnx", false),
        audio,
        framing(),
        controls.clone(),
        1,
    )
    .unwrap();
    let mut cv = ContentVec::open(model("vec-768-layer-12.onnx")).unwrap();
    let block = conv.host_block();
    assert_eq!(block, 4800);
    let input = voice_signal(block * 12);
    let mut out = vec![0f32; block];
    let mut compared = 0;
    for (b, x) in input.chunks(block).enumerate() {
        conv.convert(x, &mut out);
        assert!(out.iter().all(|v| v.is_finite()), "block {b} failed");
        if b < 6 {
            continue; // the window is still filling
        }
        // The oracle: ContentVec on the same window, RVC's blend with faiss from
        // `blend_from` on, then ×2 (each frame twice, the last repeated).
        let mut feats = Vec::new();
        let frames = cv.run(conv.last_window_16k(), &mut feats).unwrap();
        let from = conv.framing().blend_from().min(frames) * dim;
        let tail = rvc_blend(&mut ivf, &rows, &feats[from..frames * dim], dim, 0.75);
        feats[from..frames * dim].copy_from_slice(&tail);
        let phone = conv.last_phone();
        let n = phone.len() / dim;
        assert_eq!(n, conv.framing().frames());
        for i in 0..n {
            let src = (i / 2).min(frames - 1);
            for c in 0..dim {
                let (got, want) = (phone[i * dim + c], feats[src * dim + c]);
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "block {b}, frame {i}, channel {c}: {got} vs RVC's {want}"
                );
            }
        }
        // The blend moved the features (so the comparison above is not of raw features).
        let mut raw = Vec::new();
        cv.run(conv.last_window_16k(), &mut raw).unwrap();
        let moved = (from..frames * dim)
            .filter(|&j| (raw[j] - feats[j]).abs() > 1e-3)
            .count();
        assert!(
            moved > (frames * dim - from) / 2,
            "only {moved} values moved"
        );
        compared += 1;
    }
    assert_eq!(compared, 6);
}

#[test]
fn blend_zero_passes_the_features_through() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 768;
    let rows = voice_rows(2000, dim, 9);
    let (path, _ivf) = faiss_index(dir.path(), &rows, dim);
    let (_control, audio) = runtime_with(&path, dim);
    let controls = Arc::new(Controls::default());
    controls.set_index_rate(0.0);
    controls.set_protect(0.5);
    let mut conv = RvcConverter::new(
        models("synth_v2_40k.onnx", "vec-768-layer-12.onnx", false),
        audio,
        framing(),
        controls,
        1,
    )
    .unwrap();
    let mut cv = ContentVec::open(model("vec-768-layer-12.onnx")).unwrap();
    let block = conv.host_block();
    let input = voice_signal(block * 8);
    let mut out = vec![0f32; block];
    for x in input.chunks(block) {
        conv.convert(x, &mut out);
    }
    let mut feats = Vec::new();
    let frames = cv.run(conv.last_window_16k(), &mut feats).unwrap();
    let phone = conv.last_phone();
    for i in 0..phone.len() / dim {
        let src = (i / 2).min(frames - 1);
        assert_eq!(
            &phone[i * dim..(i + 1) * dim],
            &feats[src * dim..(src + 1) * dim]
        );
    }
}

#[test]
fn pitch_scales_pitchf_by_two_to_the_n_over_twelve() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 768;
    let rows = voice_rows(2000, dim, 3);
    let (path, _ivf) = faiss_index(dir.path(), &rows, dim);
    let run = |semitones: f32| {
        let (_control, audio) = runtime_with(&path, dim);
        let controls = Arc::new(Controls::default());
        controls.set_pitch(semitones);
        let mut conv = RvcConverter::new(
            models("synth_v2_40k.onnx", "vec-768-layer-12.onnx", false),
            audio,
            framing(),
            controls,
            1,
        )
        .unwrap();
        let block = conv.host_block();
        let input = voice_signal(block * 8);
        let mut out = vec![0f32; block];
        for x in input.chunks(block) {
            conv.convert(x, &mut out);
        }
        conv.last_pitchf().to_vec()
    };
    let base = run(0.0);
    let voiced: Vec<usize> = (0..base.len()).filter(|&i| base[i] > 0.0).collect();
    assert!(
        voiced.len() > base.len() / 4,
        "too few voiced frames: {base:?}"
    );
    // The built-in tracker finds the sawtooth's 180 Hz.
    let median = {
        let mut v: Vec<f32> = voiced.iter().map(|&i| base[i]).collect();
        v.sort_by(f32::total_cmp);
        v[v.len() / 2]
    };
    assert!((median - 180.0).abs() < 180.0 * 0.02, "median f0 {median}");
    for (semitones, ratio) in [
        (12.0f32, 2.0f32),
        (-7.0, 2f32.powf(-7.0 / 12.0)),
        (5.0, 2f32.powf(5.0 / 12.0)),
    ] {
        let shifted = run(semitones);
        for &i in &voiced {
            let got = shifted[i] / base[i];
            assert!(
                (got - ratio).abs() < 1e-5,
                "{semitones} st, frame {i}: ×{got}"
            );
        }
    }
}

#[test]
fn the_stream_output_does_not_depend_on_the_host_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 768;
    let rows = voice_rows(2000, dim, 5);
    let (path, _ivf) = faiss_index(dir.path(), &rows, dim);
    let input = voice_signal(HOST as usize * 2);
    let render = |host: usize| {
        let (_control, audio) = runtime_with(&path, dim);
        let conv = RvcConverter::new(
            models("synth_v2_48k.onnx", "vec-768-layer-12.onnx", true),
            audio,
            framing(),
            Arc::new(Controls::default()),
            1,
        )
        .unwrap();
        let config = StreamConfig::new(conv.host_block(), HOST as f32);
        let (mut audio, mut worker) = stream_manual(config, conv);
        let (mut converted, mut dry) = (vec![0f32; input.len()], vec![0f32; input.len()]);
        for ((x, c), d) in input
            .chunks(host)
            .zip(converted.chunks_mut(host))
            .zip(dry.chunks_mut(host))
        {
            audio.process(x, c, d);
            while worker.step() {}
        }
        let stats = audio.telemetry().snapshot();
        assert_eq!(stats.underruns, 0, "{stats:?}");
        assert_eq!(
            worker
                .converter()
                .times()
                .model_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        (converted, audio.latency())
    };
    let (reference, latency) = render(480);
    assert!(
        reference[latency..].iter().any(|v| v.abs() > 1e-3),
        "the converted signal is silent"
    );
    for host in [64, 1000, 4096] {
        let (out, l) = render(host);
        assert_eq!(l, latency);
        assert_eq!(out, reference, "host buffer {host}");
    }
}

#[test]
fn mismatched_models_and_indexes_are_refused_by_name() {
    runtime();
    let dir = tempfile::tempdir().unwrap();
    // A v1 (256-d) synthesizer with the v2 (768-d) ContentVec.
    let rows = voice_rows(500, 768, 1);
    let (path, _ivf) = faiss_index(dir.path(), &rows, 768);
    let (_control, audio) = runtime_with(&path, 768);
    let err = RvcConverter::new(
        models("synth_v1_40k.onnx", "vec-768-layer-12.onnx", false),
        audio,
        framing(),
        Arc::new(Controls::default()),
        1,
    )
    .err()
    .expect("a v1 model with v2 features must be refused")
    .to_string();
    assert!(
        err.contains("768") && err.contains("256") && err.contains("vec-256-layer-9.onnx"),
        "{err}"
    );

    // A 256-d index into a runtime that serves 768-d ContentVec features: refused, and the
    // index already serving keeps serving.
    let (control, _audio) = runtime_with(&path, 768);
    let small = voice_rows(500, 256, 2);
    let (small_path, _) = faiss_index(dir.path(), &small, 256);
    match control.load(0, &small_path).wait() {
        LoadOutcome::Failed(e) => {
            let msg = e.to_string();
            assert!(msg.contains("256") && msg.contains("768"), "{msg}");
        }
        other => panic!("a 256-d index was accepted: {other:?}"),
    }
    let status = control.status(0);
    assert_eq!(status.info.as_ref().map(|i| i.dim), Some(768), "{status:?}");
}

/// Writes `rows` as an RVC feature file (`.npy`, little-endian f32, C order).
fn write_npy(path: &Path, rows: &[f32], dim: usize) {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {dim}), }}",
        rows.len() / dim
    );
    let pad = 64 - (10 + dict.len() + 1) % 64;
    let header = format!("{dict}{}\n", " ".repeat(pad % 64));
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in rows {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_spilled_balanced_index_from_a_feature_folder_serves_the_rvc_path() {
    use knnblend::index::{IvfIndex, Searcher};
    let dir = tempfile::tempdir().unwrap();
    let dim = 768;
    let rows = voice_rows(3000, dim, 7);
    let feat = dir.path().join("exp").join("3_feature768");
    std::fs::create_dir_all(&feat).unwrap();
    write_npy(&feat.join("0_a.npy"), &rows[..1500 * dim], dim);
    write_npy(&feat.join("1_b.npy"), &rows[1500 * dim..], dim);
    let path = dir.path().join("voice.kbi");
    let opts = knnblend::voice::BuildOptions {
        spill: Some(1.0),
        max_list_factor: Some(3.0),
        ..knnblend::voice::BuildOptions::default()
    };
    let summary =
        knnblend::voice::build_from_npy(&[dir.path().join("exp")], &path, &opts, &mut |_, _, _| {})
            .unwrap();
    assert!(summary.spill.is_some() && summary.balance.is_some());
    assert_eq!(summary.vectors, 3000);
    let index = IvfIndex::open(&path).unwrap();
    assert!(index.is_spilled() && index.metadata().features == "rvc-v2-768");

    let (_control, audio) = runtime_with(&path, dim);
    let controls = Arc::new(Controls::default());
    controls.set_index_rate(1.0);
    controls.set_protect(0.5); // off: the features are exactly the blend, ×2
    controls.set_index_crossfade_seconds(0.0);
    let mut conv = RvcConverter::new(
        models("synth_v2_40k.onnx", "vec-768-layer-12.onnx", false),
        audio,
        framing(),
        controls.clone(),
        1,
    )
    .unwrap();
    let mut cv = ContentVec::open(model("vec-768-layer-12.onnx")).unwrap();
    let block = conv.host_block();
    let input = voice_signal(block * 9);
    let mut out = vec![0f32; block];
    let mut lists = Searcher::new();
    let mut compared = 0;
    for (b, x) in input.chunks(block).enumerate() {
        conv.convert(x, &mut out);
        assert!(out.iter().all(|v| v.is_finite()), "block {b} failed");
        if b < 6 {
            continue;
        }
        // The oracle: RVC's formula (f64) over an exact scan of the one list a frame probes,
        // copies included, each stored vector once.
        let mut feats = Vec::new();
        let frames = cv.run(conv.last_window_16k(), &mut feats).unwrap();
        let from = conv.framing().blend_from().min(frames);
        let phone = conv.last_phone();
        for f in from..frames {
            let q = &feats[f * dim..(f + 1) * dim];
            let (_, l) = lists.nearest_lists(&index, q, 1);
            let mut near: Vec<(f64, usize)> = index
                .list_range(l[0] as usize)
                .map(|p| {
                    let d: f64 = index
                        .vector(p)
                        .iter()
                        .zip(q)
                        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                        .sum();
                    (d, p)
                })
                .collect();
            near.sort_by(|a, b| a.0.total_cmp(&b.0));
            near.truncate(8);
            let w: Vec<f64> = near.iter().map(|(d, _)| 1.0 / (d * d)).collect();
            let total: f64 = w.iter().sum();
            for i in [2 * f, 2 * f + 1]
                .into_iter()
                .filter(|&i| i < phone.len() / dim)
            {
                for c in (0..dim).step_by(37) {
                    let want: f64 = near
                        .iter()
                        .zip(&w)
                        .map(|((_, p), wi)| index.vector(*p)[c] as f64 * wi / total)
                        .sum();
                    let got = phone[i * dim + c] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "block {b}, frame {f}, channel {c}: {got} vs {want}"
                    );
                }
            }
        }
        compared += 1;
    }
    assert_eq!(compared, 3);
}
