//! `knnblend render`: the live runtime and the voice engine over files, including a swap.

mod voice_common;

use std::path::{Path, PathBuf};

use knnblend::format::{write_kbi, Metadata, Metric};
use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend::voice::{
    flat_parts, read_audio, render_file, write_wav_f32, Audio, FeatureSpec, RenderError,
    RenderOptions,
};
use voice_common::*;

const SR: u32 = 32_000;

struct Fixture {
    _dir: tempfile::TempDir,
    input: PathBuf,
    high: PathBuf,
    other: PathBuf,
    out: PathBuf,
    left: Vec<f32>,
    right: Vec<f32>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sr = SR as f32;
    let spec = FeatureSpec::default();
    let left = synth_voice(&VoiceParams::low().with_seed(21), sr, 2.0);
    let right: Vec<f32> = left.iter().map(|v| 0.7 * v).collect();
    let input = dir.path().join("in.wav");
    write_wav_f32(
        &input,
        &Audio::from_channels(&[left.clone(), right.clone()], SR),
    )
    .unwrap();
    let high = dir.path().join("high.kbi");
    write_kbi(
        &high,
        &voice_parts(&synth_voice(&VoiceParams::high(), sr, 3.0), sr, &spec),
    )
    .unwrap();
    let other_voice = VoiceParams {
        f0_hz: 160.0,
        formant_scale: 0.9,
        open_quotient: 0.4,
        ..VoiceParams::low().with_seed(5)
    };
    let other = dir.path().join("other.kbi");
    write_kbi(
        &other,
        &voice_parts(&synth_voice(&other_voice, sr, 3.0), sr, &spec),
    )
    .unwrap();
    Fixture {
        input,
        high,
        other,
        out: dir.path().join("out.wav"),
        left,
        right,
        _dir: dir,
    }
}

fn opts(f: &Fixture) -> RenderOptions {
    RenderOptions {
        index: f.high.clone(),
        input: f.input.clone(),
        output: f.out.clone(),
        ..RenderOptions::default()
    }
}

fn render(o: &RenderOptions) -> Vec<Vec<f32>> {
    let summary = render_file(o, &mut |_, _, _| {}).unwrap();
    let audio = read_audio(&o.output).unwrap();
    assert_eq!((audio.sample_rate, audio.channels), (SR, 2));
    assert_eq!(summary.frames, audio.frames());
    audio.deinterleave()
}

#[test]
fn ratio_zero_renders_the_input_back_aligned() {
    let f = fixture();
    let out = render(&RenderOptions {
        ratio: 0.0,
        ..opts(&f)
    });
    assert_eq!(out[0].len(), f.left.len());
    let peak = out[0]
        .iter()
        .zip(&f.left)
        .chain(out[1].iter().zip(&f.right))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        20.0 * (peak as f64 + 1e-30).log10() <= -100.0,
        "residual {peak}"
    );
}

#[test]
fn a_swap_mid_file_makes_no_click() {
    let f = fixture();
    let swap_at = 1.0;
    let o = RenderOptions {
        ratio: 1.0,
        swap_to: Some(f.other.clone()),
        swap_at: Some(swap_at),
        ..opts(&f)
    };
    let out = render(&o);
    let plain = render(&RenderOptions {
        ratio: 1.0,
        ..opts(&f)
    });
    let at = (swap_at * SR as f64) as usize;
    let around = at - SR as usize / 5..at + SR as usize / 5;
    for (c, ch) in out.iter().enumerate() {
        let input_step = max_step(if c == 0 { &f.left } else { &f.right });
        assert!(ch.iter().all(|v| v.is_finite()));
        let step = max_step(&ch[around.clone()]);
        println!("channel {c}: largest step around the swap {step:.4}, input's largest step {input_step:.4}");
        assert!(
            step <= 2.0 * input_step,
            "click at the swap: step {step} vs input {input_step}"
        );
    }
    // Before the swap the render is the plain one (the swap happens at processing time, when
    // the output is one window behind: frames after it reach back that far into the aligned
    // output); after it, another voice.
    let window = 4 * 320; // 40 ms at 32 kHz
    let before = 0..at - window;
    assert_eq!(out[0][before.clone()], plain[0][before]);
    let after = at + SR as usize / 5..out[0].len();
    let diff = out[0][after.clone()]
        .iter()
        .zip(&plain[0][after])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-3, "the swap changed nothing");
}

#[test]
fn block_size_does_not_change_a_render() {
    let f = fixture();
    let a = render(&RenderOptions {
        block_size: 64,
        ..opts(&f)
    });
    let b = render(&RenderOptions {
        block_size: 4096,
        ..opts(&f)
    });
    assert_eq!(a, b);
}

fn load_error(o: &RenderOptions) -> String {
    match render_file(o, &mut |_, _, _| {}) {
        Err(e @ RenderError::Load { .. }) => e.to_string(),
        other => panic!("expected a load error, got {other:?}"),
    }
}

#[test]
fn bad_indexes_and_options_are_refused_with_a_message() {
    let f = fixture();
    // An RVC-feature index: the voice engine cannot use it, and says why.
    let rvc = f.input.with_file_name("rvc.kbi");
    let rows: Vec<f32> = (0..768 * 50).map(|i| (i % 13) as f32).collect();
    let meta = Metadata {
        features: "rvc-v2-768".into(),
        ..Metadata::default()
    };
    write_kbi(&rvc, &flat_parts(&rows, 768, Metric::L2, meta)).unwrap();
    let e = load_error(&RenderOptions {
        index: rvc,
        ..opts(&f)
    });
    assert!(
        e.contains("rvc-v2-768") && e.contains("knnblend-logmel-v1"),
        "{e}"
    );
    // Match voice on an index without pitch statistics (these fixtures are made from parts,
    // like indexes built before `build --audio` recorded them): refused, with what to do,
    // and nothing written.
    let o = RenderOptions {
        pitch: knnblend::voice::RenderPitch::Match,
        ..opts(&f)
    };
    let e = render_file(&o, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(
        e.contains("no pitch statistics") && e.contains("knnblend build --audio"),
        "{e}"
    );
    assert!(!o.output.exists());
    let e = load_error(&RenderOptions {
        swap_to: Some(Path::new("/nonexistent/voice.kbi").into()),
        swap_at: Some(0.5),
        ..opts(&f)
    });
    assert!(e.contains("voice.kbi"), "{e}");
    for bad in [
        RenderOptions {
            ratio: 1.5,
            ..opts(&f)
        },
        RenderOptions { k: 0, ..opts(&f) },
        RenderOptions {
            swap_at: Some(1.0),
            ..opts(&f)
        },
        RenderOptions {
            swap_to: Some(f.other.clone()),
            swap_at: Some(99.0),
            ..opts(&f)
        },
    ] {
        let e = render_file(&bad, &mut |_, _, _| {}).unwrap_err();
        assert!(matches!(e, RenderError::Options(_)), "{e}");
    }
    assert!(!f.out.exists(), "nothing written on failure");
}
