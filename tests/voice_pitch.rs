//! The built-in voice path converts pitch too: Match voice moves the input's median f0 to the
//! voice's (recorded by `build --audio`), a manual shift moves it by that many semitones, and
//! the shift keeps the envelope retrieval chose, measured with a pitch-independent envelope
//! (cepstrally smoothed log spectrum, 200 Hz – 8 kHz). Two kinds of voices: espeak-ng (male
//! source, female target, different sentences for index and input; installed by `cargo xtask
//! setup`, and a missing espeak-ng fails here) and the project's synthesiser. Pitch Off at
//! Blend 0 stays a null; the output does not depend on the host's block size.

mod voice_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use knnblend::index::AnyIndex;
use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend::voice::{
    build_from_audio, read_audio, render_buffers, write_wav_f32, Audio, BlockParams, BuildOptions,
    FeatureSpec, IndexRetriever, PitchCollector, PitchMode, PitchSpec, PitchStats, Schedule,
    VoiceEngine,
};
use realfft::RealFftPlanner;
use voice_common::espeak;

/// A voice index of `wavs` as `knnblend build --audio` makes it, and its pitch statistics.
fn voice(dir: &Path, name: &str, wavs: &[PathBuf]) -> (Arc<AnyIndex>, PitchStats) {
    let out = dir.join(name);
    let s = build_from_audio(
        wavs,
        &out,
        &FeatureSpec::default(),
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    (Arc::new(AnyIndex::open(&out).unwrap()), s.pitch.unwrap())
}

/// `dir/high.kbi` of `seconds` of the built-in high voice (seed `seed`) at `sr`, by
/// [`voice`].
fn synth_voice_index(dir: &Path, sr: f32, seed: u64, seconds: f32) -> (Arc<AnyIndex>, PitchStats) {
    let rec = dir.join("high.wav");
    let x = synth_voice(&VoiceParams::high().with_seed(seed), sr, seconds);
    write_wav_f32(&rec, &Audio::from_channels(&[x], sr as u32)).unwrap();
    voice(dir, "high.kbi", &[rec])
}

fn run(
    index: &Arc<AnyIndex>,
    input: &[f32],
    sr: f32,
    ratio: f32,
    pitch: PitchMode,
    block: usize,
) -> Vec<f32> {
    let mut e = VoiceEngine::with_retriever(
        IndexRetriever::new(Some(index.clone())),
        &FeatureSpec::default(),
        sr,
        1,
    );
    let p = BlockParams {
        ratio,
        pitch,
        ..BlockParams::default()
    };
    // Aligned with the input: render_buffers removes the engine's latency.
    let out = render_buffers(
        &mut e,
        &[input.to_vec()],
        &Schedule::constant(p),
        &mut || block,
        &mut |_| {},
    );
    out[0].clone()
}

fn median_f0(x: &[f32], sr: f32) -> f64 {
    let mut c = PitchCollector::new(PitchSpec::default());
    c.add(x, sr as u32).unwrap();
    let s = c.finish();
    assert!(s.has_median(), "{s:?}");
    s.median_hz
}

/// The mean over loud frames of the cepstrally smoothed log power spectrum (lifter at 1.5 ms,
/// below any f0's quefrency up to 660 Hz), dB, 200 Hz – 8 kHz, mean removed.
fn envelope_db(x: &[f32], sr: f32) -> Vec<f64> {
    let n = 2048;
    let mut planner = RealFftPlanner::<f64>::new();
    let (fft, ifft) = (planner.plan_fft_forward(n), planner.plan_fft_inverse(n));
    let lifter = (0.0015 * sr as f64) as usize;
    let (lo, hi) = (
        (200.0 * n as f64 / sr as f64) as usize,
        (8000.0 * n as f64 / sr as f64) as usize,
    );
    let mut acc = vec![0f64; hi - lo];
    let (mut frames, mut buf, mut spec) = (0, vec![0f64; n], fft.make_output_vec());
    let energy: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64;
    let mut start = 0;
    while start + n <= x.len() {
        let e: f64 = x[start..start + n]
            .iter()
            .map(|v| (*v as f64).powi(2))
            .sum::<f64>()
            / n as f64;
        if e > 0.3 * energy {
            for i in 0..n {
                let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos();
                buf[i] = x[start + i] as f64 * w;
            }
            fft.process(&mut buf, &mut spec).unwrap();
            let mut logs: Vec<realfft::num_complex::Complex<f64>> = spec
                .iter()
                .map(|c| realfft::num_complex::Complex::new((c.norm_sqr() + 1e-12).ln(), 0.0))
                .collect();
            ifft.process(&mut logs, &mut buf).unwrap(); // the real cepstrum (× n)
            for (q, c) in buf.iter_mut().enumerate() {
                if q > lifter && q < n - lifter {
                    *c = 0.0;
                }
            }
            fft.process(&mut buf, &mut spec).unwrap();
            for (a, c) in acc.iter_mut().zip(&spec[lo..hi]) {
                *a += c.re / n as f64 * 10.0 / std::f64::consts::LN_10;
            }
            frames += 1;
        }
        start += n / 4;
    }
    assert!(frames > 10);
    let m = acc.iter().sum::<f64>() / acc.len() as f64 / frames as f64;
    acc.iter().map(|a| a / frames as f64 - m).collect()
}

fn distance(a: &[f64], b: &[f64]) -> f64 {
    (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
}

fn st(a: f64, b: f64) -> f64 {
    12.0 * (a / b).log2()
}

/// Converts `input` (rate `sr`) toward `index` (pitch statistics `target`) and checks the
/// issue's measures against `reference` (held-out speech of the target voice).
fn check_conversion(
    what: &str,
    index: &Arc<AnyIndex>,
    target: PitchStats,
    input: &[f32],
    reference: &[f32],
    sr: f32,
) {
    let env_target = envelope_db(reference, sr);
    let matched = PitchMode::Match {
        target_hz: target.median_hz as f32,
        range: 18.0,
    };
    let dry = run(index, input, sr, 0.0, PitchMode::Off, 512);
    let wet = run(index, input, sr, 1.0, matched, 512);
    let (f_in, f_out) = (median_f0(input, sr), median_f0(&wet, sr));
    let (d0, d1) = (
        distance(&envelope_db(&dry, sr), &env_target),
        distance(&envelope_db(&wet, sr), &env_target),
    );
    println!(
        "{what}: f0 input {f_in:.1} Hz → output {f_out:.1} Hz (voice {:.1} Hz, {:+.2} st off); envelope distance Blend 0 {d0:.2} dB → Blend 1 + Match {d1:.2} dB ({:.0} % less)",
        target.median_hz,
        st(f_out, target.median_hz),
        100.0 * (1.0 - d1 / d0)
    );
    assert!(
        st(f_out, target.median_hz).abs() <= 1.0,
        "{what}: output f0 {f_out:.1} vs the voice's {:.1}",
        target.median_hz
    );
    assert!(
        st(target.median_hz, f_in).abs() > 3.0,
        "{what}: the test needs voices apart in pitch"
    );
    assert!(
        d1 <= 0.5 * d0,
        "{what}: envelope distance {d0:.2} → {d1:.2} dB"
    );
    // Pitch Off at Blend 0 is a null (the input delayed by the latency, compensated here).
    let peak = dry
        .iter()
        .zip(input)
        .map(|(o, i)| (o - i).abs())
        .fold(0f32, f32::max);
    let db = 20.0 * (peak as f64 + 1e-30).log10();
    assert!(
        db <= -100.0,
        "{what}: Blend 0, Pitch Off residual {db:.1} dBFS"
    );
}

#[test]
fn espeak_male_to_female_reaches_the_target_pitch_and_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
        "A journey of a thousand miles begins with a single step taken in the early morning.",
        "Every morning the baker opens his shop and the smell of fresh bread fills the street.",
        "Music has the power to move people, to bring back memories and to change a mood.",
        "Bright violet flowers grew along the riverbank where the children used to play.",
        "The rain in Spain stays mainly in the plain, but the mountains get the snow in winter.",
        "We walked along the quiet beach at sunset and watched the boats come home.",
        "Nobody knows why the old lighthouse keeper left the island on that stormy night.",
    ];
    let female: Vec<PathBuf> = texts[..7]
        .iter()
        .enumerate()
        .map(|(i, t)| espeak(dir.path(), "en-us+f3", i, t))
        .collect();
    let (index, stats) = voice(dir.path(), "female.kbi", &female);
    let reference = read_audio(&espeak(dir.path(), "en-us+f3", 9, texts[7]))
        .unwrap()
        .mono();
    // Three sentences: the running median settles over the first seconds.
    let input = read_audio(&espeak(
        dir.path(),
        "en-us+m3",
        8,
        "The quick brown fox jumps over the lazy dog while the farmer watches from the gate. \
         Peter Piper picked a peck of pickled peppers before the market opened on Sunday. \
         How much wood would a woodchuck chuck if a woodchuck could chuck wood all winter long?",
    ))
    .unwrap();
    let sr = input.sample_rate as f32;
    check_conversion(
        "espeak-ng male → female",
        &index,
        stats,
        &input.mono(),
        &reference,
        sr,
    );
}

#[test]
fn synthetic_low_to_high_reaches_the_target_pitch_and_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let sr = 32_000.0;
    let (index, stats) = synth_voice_index(dir.path(), sr, 12, 8.0);
    let reference = synth_voice(&VoiceParams::high().with_seed(13), sr, 3.0);
    let input = synth_voice(&VoiceParams::low().with_seed(11), sr, 4.0);
    check_conversion("synth low → high", &index, stats, &input, &reference, sr);
}

#[test]
fn a_manual_shift_moves_f0_by_that_much_at_any_block_size() {
    let sr = 32_000.0;
    let input = synth_voice(&VoiceParams::low().with_seed(5), sr, 3.0);
    let index = voice_common::voice_index(
        &synth_voice(&VoiceParams::low().with_seed(6), sr, 3.0),
        sr,
        &FeatureSpec::default(),
    );
    let f_in = median_f0(&input, sr);
    for n in [-5.0f32, 7.0] {
        let out = run(&index, &input, sr, 0.0, PitchMode::Semitones(n), 512);
        let moved = st(median_f0(&out, sr), f_in);
        println!("{n:+} semitones: f0 moved {moved:+.2}");
        assert!(
            (moved - n as f64).abs() <= 0.5,
            "{n:+} st moved f0 by {moved:+.2}"
        );
        let other = run(&index, &input, sr, 0.0, PitchMode::Semitones(n), 97);
        assert_eq!(out, other, "the output depends on the block size");
    }
}

#[test]
fn changing_pitch_glides_without_a_click() {
    let sr = 32_000.0;
    let input = synth_voice(&VoiceParams::low().with_seed(7), sr, 3.0);
    let index = voice_common::voice_index(
        &synth_voice(&VoiceParams::high().with_seed(8), sr, 3.0),
        sr,
        &FeatureSpec::default(),
    );
    let mut e = VoiceEngine::with_retriever(
        IndexRetriever::new(Some(index)),
        &FeatureSpec::default(),
        sr,
        1,
    );
    let p = |pitch| BlockParams {
        ratio: 0.5,
        pitch,
        ..BlockParams::default()
    };
    let mut schedule = Schedule::constant(p(PitchMode::Off));
    let at = |s: f64| (s * sr as f64) as u64;
    schedule
        .changes
        .push((at(0.8), p(PitchMode::Semitones(7.0))));
    schedule
        .changes
        .push((at(1.6), p(PitchMode::Semitones(-5.0))));
    schedule.changes.push((at(2.3), p(PitchMode::Off)));
    let out = render_buffers(
        &mut e,
        std::slice::from_ref(&input),
        &schedule,
        &mut || 256,
        &mut |_| {},
    );
    let steady = voice_common::max_step(&out[0][at(0.3) as usize..at(0.75) as usize]);
    for (from, to) in [(0.78, 1.0), (1.58, 1.8), (2.28, 2.6)] {
        let s = voice_common::max_step(&out[0][at(from) as usize..at(to) as usize]);
        println!(
            "largest step after the change at {from} s: {s:.4} (before any change {steady:.4})"
        );
        assert!(
            s <= 2.0 * steady,
            "a step of {s} after {from} s (steady {steady})"
        );
    }
    assert!(out[0].iter().all(|v| v.is_finite()));
}

#[test]
fn match_voice_takes_the_serving_voices_median_from_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let sr = 32_000.0;
    let (index, stats) = synth_voice_index(dir.path(), sr, 2, 4.0);
    let input = synth_voice(&VoiceParams::low().with_seed(3), sr, 2.0);
    let explicit = PitchMode::Match {
        target_hz: stats.median_hz as f32,
        range: 18.0,
    };
    let from_index = PitchMode::MatchVoice { range: 18.0 };
    assert_eq!(
        run(&index, &input, sr, 1.0, from_index, 512),
        run(&index, &input, sr, 1.0, explicit, 512)
    );
    // A voice without pitch statistics: Match voice holds at no shift (the output is Off's).
    let bare = voice_common::voice_index(
        &synth_voice(&VoiceParams::high(), sr, 2.0),
        sr,
        &FeatureSpec::default(),
    );
    assert_eq!(
        run(&bare, &input, sr, 1.0, from_index, 512),
        run(&bare, &input, sr, 1.0, PitchMode::Off, 512)
    );

    // Through the live runtime (the plugin's path): the serving index's median, read when it
    // was prepared.
    let spec = FeatureSpec::default();
    let (control, audio) = knnblend::live::live(spec.live_config(1));
    match control.load(0, dir.path().join("high.kbi")).wait() {
        knnblend::live::LoadOutcome::Published(info) => {
            assert_eq!(info.voice_median_f0_hz, Some(stats.median_hz as f32))
        }
        other => panic!("{other:?}"),
    }
    let mut e = VoiceEngine::new(audio, &spec, sr, 1);
    let p = BlockParams {
        ratio: 1.0,
        pitch: from_index,
        ..BlockParams::default()
    };
    let out = render_buffers(
        &mut e,
        std::slice::from_ref(&input),
        &Schedule::constant(p),
        &mut || 128,
        &mut |_| {},
    );
    let goal = e.pitch_state().goal as f64;
    let want = st(stats.median_hz, median_f0(&input, sr));
    assert!(
        (goal - want).abs() < 1.0,
        "goal {goal:+.2} st, want about {want:+.2}"
    );
    assert!(out[0].iter().all(|v| v.is_finite()));
}
