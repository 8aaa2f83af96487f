//! The realtime voice path: null at ratio 0, hostile input, block-size independence and the
//! conversion effect on two synthetic voices.

mod voice_common;

use std::sync::Arc;

use knnblend::index::AnyIndex;
use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend::voice::{
    render_buffers, BlockParams, FeatureSpec, IndexRetriever, Schedule, VoiceEngine,
};
use voice_common::*;

const SR: f32 = 32_000.0;

fn engine(index: Option<Arc<AnyIndex>>, sr: f32, channels: usize) -> VoiceEngine<IndexRetriever> {
    VoiceEngine::with_retriever(
        IndexRetriever::new(index),
        &FeatureSpec::default(),
        sr,
        channels,
    )
}

fn params(ratio: f32) -> BlockParams {
    BlockParams {
        ratio,
        ..BlockParams::default()
    }
}

fn render(
    e: &mut VoiceEngine<IndexRetriever>,
    input: &[Vec<f32>],
    p: BlockParams,
    block: usize,
) -> Vec<Vec<f32>> {
    render_buffers(e, input, &Schedule::constant(p), &mut || block, &mut |_| {})
}

fn target_index(sr: f32) -> Arc<AnyIndex> {
    voice_index(
        &synth_voice(&VoiceParams::high().with_seed(12), sr, 3.0),
        sr,
        &FeatureSpec::default(),
    )
}

#[test]
fn ratio_zero_nulls_against_the_input() {
    for sr in [SR, 44_100.0, 96_000.0] {
        let index = target_index(sr);
        let a = synth_voice(&VoiceParams::low().with_seed(3), sr, 1.0);
        let n = noise(a.len(), 9);
        let right: Vec<f32> = a.iter().zip(&n).map(|(x, y)| 0.6 * x + 0.05 * y).collect();
        let input = vec![a.clone(), right];
        for dry_wet in [1.0, 0.5] {
            let mut e = engine(Some(index.clone()), sr, 2);
            let p = BlockParams {
                dry_wet,
                ..params(0.0)
            };
            let out = render(&mut e, &input, p, 256);
            let peak = out
                .iter()
                .zip(&input)
                .flat_map(|(o, i)| o.iter().zip(i).map(|(x, y)| (x - y).abs()))
                .fold(0f32, f32::max);
            let db = 20.0 * (peak as f64 + 1e-30).log10();
            assert!(
                db <= -100.0,
                "{sr} Hz, dry/wet {dry_wet}: residual {db:.1} dBFS"
            );
        }
    }
}

#[test]
fn the_voice_moves_toward_the_target_monotonically_with_ratio() {
    let spec = FeatureSpec::default();
    let index = voice_index(
        &synth_voice(&VoiceParams::high().with_seed(12), SR, 5.0),
        SR,
        &spec,
    );
    let target = ltas_db(
        &synth_voice(&VoiceParams::high().with_seed(13), SR, 3.0),
        SR,
    );
    let input = synth_voice(&VoiceParams::low().with_seed(11), SR, 3.0);
    let d_input = distance(&ltas_db(&input, SR), &target);
    let mut last = f64::INFINITY;
    let mut report = Vec::new();
    for ratio in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let mut e = engine(Some(index.clone()), SR, 1);
        let out = render(&mut e, std::slice::from_ref(&input), params(ratio), 512);
        assert!(e.stats().blended > 0 || ratio == 0.0);
        let d = distance(&ltas_db(&out[0], SR), &target);
        report.push((ratio, d));
        assert!(
            d < last,
            "distance must fall with ratio: {report:?} (input {d_input:.2} dB)"
        );
        last = d;
    }
    println!("LTAS distance to the target: input {d_input:.2} dB, by ratio {report:?}");
    assert!(
        last <= 0.5 * d_input,
        "ratio 1 must halve the distance: {report:?}, input {d_input:.2} dB"
    );
}

#[test]
fn output_does_not_depend_on_block_size() {
    let index = target_index(SR);
    let a = synth_voice(&VoiceParams::low().with_seed(4), SR, 0.6);
    let input = vec![a.clone(), a.iter().map(|v| -0.5 * v).collect()];
    let p = params(0.8);
    let reference = render(&mut engine(Some(index.clone()), SR, 2), &input, p, 512);
    let mut seed = 12345u64;
    let mut random = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        1 + (seed >> 33) as usize % 1500
    };
    let outputs = [
        render(&mut engine(Some(index.clone()), SR, 2), &input, p, 1),
        render(&mut engine(Some(index.clone()), SR, 2), &input, p, 64),
        render_buffers(
            &mut engine(Some(index.clone()), SR, 2),
            &input,
            &Schedule::constant(p),
            &mut random,
            &mut |_| {},
        ),
    ];
    for out in &outputs {
        for (o, r) in out.iter().zip(&reference) {
            let diff = o
                .iter()
                .zip(r)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-6, "block size changed the output by {diff}");
        }
    }
}

#[test]
fn hostile_input_gives_finite_bounded_output_and_recovers() {
    let index = target_index(SR);
    let n = (SR * 0.5) as usize;
    let voice = synth_voice(&VoiceParams::low().with_seed(5), SR, 0.5);
    let full_noise: Vec<f32> = noise(n, 1);
    let dc = vec![1.0f32; n];
    let clipped: Vec<f32> = (0..n)
        .map(|i| (3.0 * (i as f32 * 0.02).sin()).clamp(-1.0, 1.0))
        .collect();
    let square: Vec<f32> = (0..n)
        .map(|i| if (i / 80) % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let denormal: Vec<f32> = noise(n, 2).iter().map(|v| v * 1e-39).collect();
    let silence = vec![0f32; n];
    let cases: [(&str, &[f32]); 6] = [
        ("full-scale noise", &full_noise),
        ("DC", &dc),
        ("clipped sine", &clipped),
        ("full-scale square", &square),
        ("denormals", &denormal),
        ("silence", &silence),
    ];
    for gain in [1.0f32, 0.5] {
        for (name, signal) in cases {
            let mut e = engine(Some(index.clone()), SR, 1);
            let p = BlockParams {
                output_gain: gain,
                ..params(1.0)
            };
            let out = render(&mut e, &[signal.to_vec()], p, 480);
            assert!(
                out[0].iter().all(|v| v.is_finite()),
                "{name}: non-finite output"
            );
            let peak_in = signal.iter().fold(0f32, |m, v| m.max(v.abs()));
            let peak_out = out[0].iter().fold(0f32, |m, v| m.max(v.abs()));
            // Never louder than the input by more than the output gain plus 12 dB headroom.
            assert!(
                peak_out <= gain * peak_in * 4.0 + 1e-12,
                "{name}: peak {peak_out} for input {peak_in}"
            );
            assert_eq!(e.stats().recoveries, 0, "{name}");
        }
    }
    // NaN and ±infinity bursts are silence to the engine: the stream afterwards is exactly what
    // it would be after real silence, and nothing non-finite ever comes out.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX] {
        let mut hostile = voice.clone();
        let mut clean = voice.clone();
        for i in n / 4..n / 2 {
            hostile[i] = if i % 3 == 0 { bad } else { 0.0 };
            clean[i] = if i % 3 == 0 && bad == f32::MAX {
                knnblend::voice::INPUT_LIMIT
            } else {
                0.0
            };
        }
        let a = render(
            &mut engine(Some(index.clone()), SR, 1),
            &[hostile],
            params(1.0),
            333,
        );
        let b = render(
            &mut engine(Some(index.clone()), SR, 1),
            &[clean],
            params(1.0),
            333,
        );
        assert!(
            a[0].iter().all(|v| v.is_finite()),
            "{bad}: non-finite output"
        );
        if bad != f32::MAX {
            assert_eq!(a, b, "{bad}: the stream must continue as after silence");
        }
        let tail = 3 * n / 4..n;
        let diff = a[0][tail.clone()]
            .iter()
            .zip(&b[0][tail])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{bad}: no recovery ({diff})");
    }
}

#[test]
fn silence_and_near_silence_are_left_alone() {
    let index = target_index(SR);
    // −80 dBFS noise: below the gate, so the transfer must not touch it.
    let quiet: Vec<f32> = noise((SR * 0.5) as usize, 7)
        .iter()
        .map(|v| v * 1e-4)
        .collect();
    let out = render(
        &mut engine(Some(index), SR, 1),
        std::slice::from_ref(&quiet),
        params(1.0),
        512,
    );
    let peak = out[0]
        .iter()
        .zip(&quiet)
        .map(|(o, i)| (o - i).abs())
        .fold(0f32, f32::max);
    assert!(peak < 1e-9, "near-silence changed by {peak}");
}

#[test]
fn no_index_passes_audio_through() {
    let a = synth_voice(&VoiceParams::high(), SR, 0.4);
    let mut e = engine(None, SR, 1);
    let out = render(&mut e, std::slice::from_ref(&a), params(1.0), 100);
    let peak = out[0]
        .iter()
        .zip(&a)
        .map(|(o, i)| (o - i).abs())
        .fold(0f32, f32::max);
    assert!(peak < 1e-5, "{peak}");
    assert_eq!(e.stats().blended, 0);
}

#[test]
fn an_index_from_22k_recordings_serves_a_48k_session() {
    let spec = FeatureSpec::default();
    let index = voice_index(
        &synth_voice(&VoiceParams::high().with_seed(12), 22_050.0, 5.0),
        22_050.0,
        &spec,
    );
    let sr = 48_000.0;
    let target = ltas_db(
        &synth_voice(&VoiceParams::high().with_seed(13), sr, 3.0),
        sr,
    );
    let input = synth_voice(&VoiceParams::low().with_seed(11), sr, 3.0);
    let d_input = distance(&ltas_db(&input, sr), &target);
    let out = render(&mut engine(Some(index), sr, 1), &[input], params(1.0), 512);
    let d = distance(&ltas_db(&out[0], sr), &target);
    println!("22.05 kHz index at 48 kHz: LTAS distance {d_input:.2} dB → {d:.2} dB");
    assert!(d <= 0.6 * d_input, "{d_input:.2} dB → {d:.2} dB");
}

/// An index of `signal`'s voiced frames by RVC's recipe (faiss `IVF{n},Flat`, n_probe 1), as
/// `knnblend build --audio` makes it, with `opts`' spill and list bound.
fn recipe_index(
    signal: &[f32],
    sr: f32,
    spec: &FeatureSpec,
    opts: &knnblend::voice::BuildOptions,
) -> Arc<AnyIndex> {
    use knnblend::voice::build::{build_parts, VectorLayout};
    use knnblend::voice::{Extractor, SilenceRule};
    let got = Extractor::new(spec, sr).extract(signal, &SilenceRule::default());
    let (rows, _) = spec.speaker_rows(&got.rows);
    let layout = VectorLayout::Voice { bands: spec.bands };
    let (mut parts, _) =
        build_parts(rows, spec.dim(), layout, opts, false, &mut |_, _, _| {}).unwrap();
    let mut meta = spec.metadata(vec!["synth".into()], got.frames as u64, 0.0);
    meta.extra.extend(std::mem::take(&mut parts.metadata.extra));
    parts.metadata = meta;
    Arc::new(
        knnblend::index::IvfIndex::from_parts(&parts)
            .unwrap()
            .into(),
    )
}

#[test]
fn a_spilled_balanced_index_converts_at_least_as_well_as_rvcs() {
    let spec = FeatureSpec::default();
    let recordings = synth_voice(&VoiceParams::high().with_seed(12), SR, 20.0);
    let plain_opts = knnblend::voice::BuildOptions::default();
    let plain = recipe_index(&recordings, SR, &spec, &plain_opts);
    let better_opts = knnblend::voice::BuildOptions {
        spill: Some(1.0),
        max_list_factor: Some(3.0),
        ..plain_opts.clone()
    };
    let better = recipe_index(&recordings, SR, &spec, &better_opts);
    let b = better.as_flat().unwrap();
    assert!(b.is_spilled() && b.metadata().balance().is_some());
    assert!(
        b.nlist() > 8,
        "the recordings should make an IVF index of many lists"
    );
    let target = ltas_db(
        &synth_voice(&VoiceParams::high().with_seed(13), SR, 3.0),
        SR,
    );
    let input = synth_voice(&VoiceParams::low().with_seed(11), SR, 3.0);
    let d_input = distance(&ltas_db(&input, SR), &target);
    let mut d = Vec::new();
    for index in [plain, better] {
        let mut e = engine(Some(index), SR, 1);
        let out = render(&mut e, std::slice::from_ref(&input), params(1.0), 512);
        assert!(e.stats().blended > 0);
        d.push(distance(&ltas_db(&out[0], SR), &target));
    }
    println!(
        "LTAS distance to the target: input {d_input:.2} dB, RVC's index {:.2} dB, spilled + balanced {:.2} dB",
        d[0], d[1]
    );
    assert!(
        d[0] < 0.7 * d_input,
        "the plain index must convert: {d:?}, input {d_input:.2}"
    );
    assert!(
        d[1] <= d[0] + 0.05,
        "spilled + balanced {:.2} dB vs RVC's {:.2} dB",
        d[1],
        d[0]
    );
}
