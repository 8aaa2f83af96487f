//! The three models against their stand-ins (see `common` for the formulas): each opens with
//! the right info, computes the known function of its inputs, and every hostile variant is
//! refused with an error naming the problem.

mod common;

use common::{assert_close, model, Rng};
use knnblend_rvc::error::{ModelKind, Port};
use knnblend_rvc::models::{decode_salience, MelSpectrogram};
use knnblend_rvc::{ContentVec, Rmvpe, RvcError, SynthInfo, Synthesizer};

// ---------------------------------------------------------------------------------------
// ContentVec

/// The stand-in's features for `wav`: `(1 + c/C)·E[n] + (c/C − 0.5)`.
fn contentvec_expected(wav: &[f32], dim: usize) -> Vec<f32> {
    let frames = ContentVec::frames_for(wav.len());
    let mut out = Vec::with_capacity(frames * dim);
    for n in 0..frames {
        let window = &wav[n * 320..n * 320 + 400];
        let energy = window.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 400.0;
        for c in 0..dim {
            let r = c as f64 / dim as f64;
            out.push(((1.0 + r) * energy + (r - 0.5)) as f32);
        }
    }
    out
}

#[test]
fn contentvec_v1_and_v2_compute_framed_energies() {
    common::runtime();
    let mut rng = Rng::new(1);
    for (file, dim, version) in [
        ("vec-256-layer-9.onnx", 256, "v1"),
        ("vec-768-layer-12.onnx", 768, "v2"),
    ] {
        let mut cv = ContentVec::open(model(file)).unwrap();
        assert_eq!(cv.dim(), dim, "{file}");
        assert_eq!(cv.version(), version);
        let mut out = Vec::new();
        for samples in [400, 719, 720, 1040, 16_000, 16_321] {
            let wav = rng.vec(samples, 0.8);
            let frames = cv.run(&wav, &mut out).unwrap();
            assert_eq!(
                frames,
                (samples - 400) / 320 + 1,
                "{file}, {samples} samples"
            );
            assert_eq!(frames, ContentVec::frames_for(samples));
            assert_eq!(out.len(), frames * dim);
            assert_close(file, &out, &contentvec_expected(&wav, dim), 1e-5);
        }
    }
}

/// The output's width is a symbol in the file; ONNX Runtime's shape inference or the probe run
/// (whichever knows it) gives the width.
#[test]
fn an_undeclared_contentvec_width_is_still_known() {
    common::runtime();
    let mut cv = ContentVec::open(model("cv_768_undeclared.onnx")).unwrap();
    assert_eq!(cv.dim(), 768);
    let wav = Rng::new(7).vec(4_000, 0.5);
    let mut out = Vec::new();
    assert_eq!(cv.run(&wav, &mut out).unwrap(), 12);
    assert_close("undeclared", &out, &contentvec_expected(&wav, 768), 1e-5);

    let err = ContentVec::open(model("cv_512_undeclared.onnx")).unwrap_err();
    assert!(
        matches!(err, RvcError::WrongShape { .. }) && err.to_string().contains("512]"),
        "{err}"
    );
}

#[test]
fn contentvec_frame_formula() {
    assert_eq!(ContentVec::frames_for(399), 0);
    assert_eq!(ContentVec::frames_for(400), 1);
    assert_eq!(ContentVec::frames_for(719), 1);
    assert_eq!(ContentVec::frames_for(720), 2);
    assert_eq!(ContentVec::frames_for(16_000), 49);
}

#[test]
fn contentvec_refuses_short_input_and_bad_signatures() {
    common::runtime();
    let mut cv = ContentVec::open(model("vec-768-layer-12.onnx")).unwrap();
    let mut out = Vec::new();
    match cv.run(&[0.0; 399], &mut out) {
        Err(RvcError::InputTooShort {
            samples: 399,
            minimum: 400,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }

    let err = ContentVec::open(model("cv_512_channels.onnx")).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(&err, RvcError::WrongShape { model: ModelKind::ContentVec, port: Port::Output, name, .. } if name == "embed"),
        "{err:?}"
    );
    assert!(
        text.contains("[1, ?, 512]") && text.contains("256 or 768"),
        "{text}"
    );

    let err = ContentVec::open(model("cv_int16_input.onnx")).unwrap_err();
    assert_eq!(
        err.to_string().split(" (in").next().unwrap(),
        "ContentVec input `source` has type int16, expected float32"
    );
}

// ---------------------------------------------------------------------------------------
// Synthesizer

/// The stand-in's coefficients (KA, KB, KC, KD, KE, KF).
#[derive(Clone, Copy)]
struct K([f64; 6]);
const STANDARD: K = K([1.0, 0.001, 0.0, 0.0, 0.0, 0.0]);
const WIRING: K = K([1.0, 0.001, 0.01, 0.1, 0.5, 0.25]);

struct SynthInput {
    phone: Vec<f32>,
    pitch: Vec<i64>,
    pitchf: Vec<f32>,
    sid: i64,
    rnd: Vec<f32>,
}

fn synth_input(rng: &mut Rng, n: usize, dim: usize) -> SynthInput {
    SynthInput {
        phone: rng.vec(n * dim, 1.0),
        pitch: (0..n)
            .map(|_| 1 + ((rng.next_f32() + 1.0) * 127.0) as i64)
            .collect(),
        pitchf: (0..n)
            .map(|_| 100.0 + (rng.next_f32() + 1.0) * 200.0)
            .collect(),
        sid: 3,
        rnd: rng.vec(192 * n, 1.0),
    }
}

fn synth_expected(input: &SynthInput, info: SynthInfo, k: K) -> Vec<f32> {
    let n = input.phone.len() / info.dim;
    let mut out = Vec::with_capacity(n * info.hop);
    for frame in 0..n {
        let row = &input.phone[frame * info.dim..(frame + 1) * info.dim];
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / info.dim as f64;
        let mut v = k.0[0] * mean + k.0[3] * input.sid as f64 + k.0[4] * input.rnd[frame] as f64;
        if info.f0 {
            v += k.0[1] * input.pitchf[frame] as f64 + k.0[2] * input.pitch[frame] as f64;
        }
        for j in 0..info.hop {
            out.push((v + k.0[5] * j as f64 / info.hop as f64) as f32);
        }
    }
    out
}

#[test]
fn synthesizers_report_their_info_and_compute_the_known_function() {
    common::runtime();
    let mut rng = Rng::new(2);
    let mut out = Vec::new();
    for (rate, hop) in [(32_000u32, 320usize), (40_000, 400), (48_000, 480)] {
        for (dim, version) in [(256usize, "v1"), (768, "v2")] {
            for f0 in [true, false] {
                let file = format!(
                    "synth_{version}_{}k{}.onnx",
                    rate / 1000,
                    if f0 { "" } else { "_nof0" }
                );
                let mut synth = Synthesizer::open(model(&file)).unwrap();
                let info = synth.info();
                assert_eq!(
                    info,
                    SynthInfo {
                        dim,
                        f0,
                        sample_rate: rate,
                        hop
                    },
                    "{file}"
                );
                assert_eq!(info.version(), version);
                for n in [1, 7, 50] {
                    let input = synth_input(&mut rng, n, dim);
                    let (pitch, pitchf): (&[i64], &[f32]) = if f0 {
                        (&input.pitch, &input.pitchf)
                    } else {
                        (&[], &[])
                    };
                    let samples = synth
                        .run(&input.phone, pitch, pitchf, input.sid, &input.rnd, &mut out)
                        .unwrap();
                    assert_eq!(samples, n * hop, "{file}, {n} frames");
                    assert_close(&file, &out, &synth_expected(&input, info, STANDARD), 1e-5);
                }
            }
        }
    }
}

#[test]
fn every_synthesizer_input_is_wired_to_its_place() {
    common::runtime();
    let mut synth = Synthesizer::open(model("synth_v2_40k_wiring.onnx")).unwrap();
    let info = synth.info();
    let mut rng = Rng::new(3);
    let input = synth_input(&mut rng, 13, 768);
    let mut out = Vec::new();
    synth
        .run(
            &input.phone,
            &input.pitch,
            &input.pitchf,
            input.sid,
            &input.rnd,
            &mut out,
        )
        .unwrap();
    assert_close("wiring", &out, &synth_expected(&input, info, WIRING), 1e-5);
}

#[test]
fn an_undeclared_channel_count_is_found_by_the_probe() {
    common::runtime();
    let synth = Synthesizer::open(model("synth_v1_48k_dyndim.onnx")).unwrap();
    assert_eq!(
        synth.info(),
        SynthInfo {
            dim: 256,
            f0: true,
            sample_rate: 48_000,
            hop: 480
        }
    );
}

#[test]
fn metadata_that_agrees_is_accepted() {
    common::runtime();
    let synth = Synthesizer::open(model("synth_v2_48k_meta.onnx")).unwrap();
    assert_eq!(synth.info().sample_rate, 48_000);
    assert_eq!(synth.info().dim, 768);
}

#[test]
fn synthesizer_checks_lengths() {
    common::runtime();
    let mut synth = Synthesizer::open(model("synth_v2_40k.onnx")).unwrap();
    let mut rng = Rng::new(4);
    let input = synth_input(&mut rng, 10, 768);
    let mut out = Vec::new();
    /// (the argument cut short, phone, pitch, pitchf, rnd)
    type Case<'a> = (&'a str, &'a [f32], &'a [i64], &'a [f32], &'a [f32]);
    let cases: [Case; 4] = [
        (
            "phone",
            &input.phone[..767],
            &input.pitch,
            &input.pitchf,
            &input.rnd,
        ),
        (
            "pitch",
            &input.phone,
            &input.pitch[..9],
            &input.pitchf,
            &input.rnd,
        ),
        (
            "pitchf",
            &input.phone,
            &input.pitch,
            &input.pitchf[..9],
            &input.rnd,
        ),
        (
            "rnd",
            &input.phone,
            &input.pitch,
            &input.pitchf,
            &input.rnd[..191],
        ),
    ];
    for (name, phone, pitch, pitchf, rnd) in cases {
        match synth.run(phone, pitch, pitchf, 0, rnd, &mut out) {
            Err(RvcError::InputLength { name: got, .. }) if got == name => {}
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(synth.run(&[], &[], &[], 0, &[], &mut out).is_err());
}

/// The error's message without the trailing "(in PATH)".
fn message(err: &RvcError) -> String {
    let text = err.to_string();
    match text.find(" (in ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

#[test]
fn hostile_synthesizers_are_refused_by_name() {
    common::runtime();
    let open = |file: &str| Synthesizer::open(model(file)).unwrap_err();

    let err = open("synth_renamed_phone.onnx");
    assert!(
        matches!(&err, RvcError::MissingPort { port: Port::Input, name, found, .. }
            if name == "phone" && found.iter().any(|f| f == "feats")),
        "{err:?}"
    );
    assert!(err.to_string().contains("has no input `phone`"), "{err}");

    let err = open("synth_renamed_pitchf.onnx");
    assert!(
        matches!(&err, RvcError::MissingPort { name, .. } if name == "pitchf"),
        "{err:?}"
    );

    let err = open("synth_pitchf_int64.onnx");
    assert_eq!(
        message(&err),
        "synthesizer input `pitchf` has type int64, expected float32"
    );

    let err = open("synth_v1_labelled_v2.onnx");
    assert!(matches!(err, RvcError::LabelMismatch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("labelled v2 (metadata `version` = v2)")
            && text.contains("256 channels (v1)"),
        "{text}"
    );

    let err = open("synth_meta_says_48k.onnx");
    let text = err.to_string();
    assert!(
        text.contains("48000 Hz (metadata `sr`)")
            && text.contains("400 samples per frame (40000 Hz)"),
        "{text}"
    );

    let err = open("synth_hop512.onnx");
    assert!(
        matches!(err, RvcError::UnsupportedHop { hop: 512, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("512 samples per feature frame"),
        "{err}"
    );

    for file in ["synth_truncated.onnx", "not_onnx.onnx"] {
        let err = open(file);
        assert!(
            matches!(
                err,
                RvcError::ModelOpen {
                    model: ModelKind::Synthesizer,
                    ..
                }
            ),
            "{file}: {err:?}"
        );
        assert!(err.to_string().contains(file), "{err}");
    }

    let missing = common::models().join("no_such_model.onnx");
    let err = Synthesizer::open(&missing).unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
}

// ---------------------------------------------------------------------------------------
// RMVPE

/// 16 kHz test signal: `freq` Hz at amplitude 0.5 for `voiced` samples, then silence.
fn tone_then_silence(freq: f64, voiced: usize, total: usize) -> Vec<f32> {
    (0..total)
        .map(|i| {
            if i < voiced {
                (0.5 * (2.0 * std::f64::consts::PI * freq * i as f64 / 16_000.0).sin()) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// The stand-in's salience profile decoded: its peak is at bin 200.25.
fn stand_in_pitch() -> f32 {
    let profile: Vec<f32> = (0..360)
        .map(|k| (-(k as f64 - 200.25).powi(2) / (2.0 * 1.5 * 1.5)).exp() as f32)
        .collect();
    let mut f0 = Vec::new();
    decode_salience(&profile, 1, 0.03, &mut f0);
    f0[0]
}

#[test]
fn rmvpe_finds_the_stand_ins_pitch_in_voiced_frames_only() {
    common::runtime();
    let mut rmvpe = Rmvpe::open(model("rmvpe.onnx")).unwrap();
    let expected = stand_in_pitch();
    // Cents of bin 200.25 ≈ 6002.4: about 320.4 Hz.
    assert!((expected - 320.4).abs() < 0.5, "{expected}");
    let mut f0 = Vec::new();
    // Lengths whose frame counts are and are not multiples of 32 (the model needs padding).
    for (voiced, total) in [
        (8_000, 16_000),
        (3_200, 4_960),
        (800, 1_600),
        (5_000, 5_119),
    ] {
        let wav = tone_then_silence(220.0, voiced, total);
        let frames = rmvpe.run(&wav, Rmvpe::THRESHOLD, &mut f0).unwrap();
        assert_eq!(frames, total / 160 + 1);
        assert_eq!(f0.len(), frames);
        // Frames whose 1024-sample window lies wholly inside the tone, or wholly in silence.
        for (t, &hz) in f0.iter().enumerate() {
            let (start, end) = ((t * 160) as i64 - 512, (t * 160) as i64 + 512);
            if end <= voiced as i64 && start >= 0 {
                assert!((hz - expected).abs() < 1e-3, "frame {t}: {hz} Hz");
            } else if start >= voiced as i64 + 512 {
                assert_eq!(hz, 0.0, "frame {t} is silent");
            }
        }
    }
    let mut salience = Vec::new();
    let frames = rmvpe
        .salience(&tone_then_silence(220.0, 16_000, 16_000), &mut salience)
        .unwrap();
    assert_eq!(salience.len(), frames * 360);
    let peak = salience[360 * 50..360 * 51]
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    assert_eq!(peak, 200);
}

#[test]
fn rmvpe_refuses_a_model_with_other_mel_bands() {
    common::runtime();
    let err = Rmvpe::open(model("rmvpe_80_mels.onnx")).unwrap_err();
    assert!(
        matches!(&err, RvcError::WrongShape { model: ModelKind::Rmvpe, port: Port::Input, name, .. } if name == "input"),
        "{err:?}"
    );
    assert!(err.to_string().contains("[1, 80, ?]"), "{err}");
    assert!(err.to_string().contains("[1, 128, frames]"), "{err}");
}

#[test]
fn mel_filterbank_matches_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fb.f32");
    common::run_python(
        "rmvpe_reference.py",
        &["filterbank".as_ref(), out.as_os_str()],
    );
    let reference = common::read_f32(&out);
    let ours = MelSpectrogram::filterbank();
    assert_eq!(ours.len(), 128 * 513);
    for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
        assert!((a - b).abs() <= 1e-7, "weight {i}: {a} vs {b}");
    }
}

#[test]
fn log_mel_matches_the_numpy_reference() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let mut mel = MelSpectrogram::new();
    // Noise plus a tone, including lengths shorter than the 512-sample reflection.
    for samples in [16_000usize, 4_321, 700, 300] {
        let wav: Vec<f32> = tone_then_silence(440.0, samples, samples)
            .iter()
            .map(|&x| x + 0.1 * rng.next_f32())
            .collect();
        let wav_path = dir.path().join("wav.f32");
        let mel_path = dir.path().join("mel.f32");
        common::write_f32(&wav_path, &wav);
        common::run_python(
            "rmvpe_reference.py",
            &["mel".as_ref(), wav_path.as_os_str(), mel_path.as_os_str()],
        );
        let reference = common::read_f32(&mel_path);
        let mut ours = Vec::new();
        let frames = mel.compute(&wav, &mut ours);
        assert_eq!(frames, samples / 160 + 1);
        assert_eq!(ours.len(), reference.len(), "{samples} samples");
        // float32 STFT against float64: 1e-4 in the log domain is 0.01 % in magnitude (a
        // symmetric instead of periodic window is off by 0.025, reflect vs symmetric padding 0.6).
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("{samples} samples: worst log-mel difference {worst}");
        assert!(
            worst < 1e-4,
            "{samples} samples: worst log-mel difference {worst}"
        );
    }
}

#[test]
fn decode_matches_rvcs_numpy_decode() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(6);
    let frames = 64;
    let mut salience = vec![0f32; frames * 360];
    for t in 0..frames {
        let row = &mut salience[t * 360..(t + 1) * 360];
        for s in row.iter_mut() {
            *s = 0.01 * (rng.next_f32() + 1.0);
        }
        // A peak at a random bin (edges included), some frames below the threshold.
        let center = match t {
            0 => 0,
            1 => 359,
            2 => 3,
            _ => ((rng.next_f32() + 1.0) * 179.5) as usize,
        };
        let height = if t % 7 == 5 {
            0.005
        } else {
            0.3 + 0.6 * (rng.next_f32() + 1.0) / 2.0
        };
        for d in -4i64..=4 {
            let k = center as i64 + d;
            if (0..360).contains(&k) {
                row[k as usize] += height * (-(d as f32 + 0.3).powi(2) / 3.0).exp();
            }
        }
    }
    let sal_path = dir.path().join("salience.f32");
    let out_path = dir.path().join("f0.f32");
    common::write_f32(&sal_path, &salience);
    let frames_text = frames.to_string();
    common::run_python(
        "rmvpe_reference.py",
        &[
            "decode".as_ref(),
            sal_path.as_os_str(),
            frames_text.as_ref(),
            "0.03".as_ref(),
            out_path.as_os_str(),
        ],
    );
    let reference = common::read_f32(&out_path);
    let mut ours = Vec::new();
    decode_salience(&salience, frames, 0.03, &mut ours);
    assert!(
        reference.iter().filter(|&&f| f == 0.0).count() >= 3,
        "some frames unvoiced"
    );
    assert_close("f0", &ours, &reference, 1e-5);
}

#[test]
fn the_models_can_move_to_the_worker_thread() {
    fn send<T: Send + 'static>() {}
    send::<ContentVec>();
    send::<Synthesizer>();
    send::<Rmvpe>();
    send::<MelSpectrogram>();
    send::<&'static knnblend_rvc::OnnxRuntime>();
}
