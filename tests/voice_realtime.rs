//! The voice engine on the audio thread: no allocation, no page fault, any block size.

mod voice_common;

use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend::voice::{BlockParams, FeatureSpec, IndexRetriever, VoiceEngine};
use voice_common::*;

#[global_allocator]
static ALLOC: assert_no_alloc::AllocDisabler = assert_no_alloc::AllocDisabler;

fn minor_faults() -> i64 {
    // SAFETY: getrusage writes into the struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        u.ru_minflt + u.ru_majflt
    }
}

#[test]
fn process_allocates_nothing_and_touches_no_new_page() {
    let sr = 48_000.0;
    let spec = FeatureSpec::default();
    let index = voice_index(&synth_voice(&VoiceParams::high(), sr, 2.0), sr, &spec);
    let mut engine = VoiceEngine::with_retriever(IndexRetriever::new(Some(index)), &spec, sr, 2);
    let voice = synth_voice(&VoiceParams::low(), sr, 1.0);
    let mut left = vec![0f32; 20_000];
    let mut right = vec![0f32; 20_000];
    let sizes = [1usize, 7, 64, 480, 512, 4096, 8192, 20_000, 333];
    let mut params = BlockParams::default();
    // Warm up: every buffer and the index's list are touched once.
    left.copy_from_slice(&voice[..20_000]);
    engine.process(&mut [&mut left, &mut right], &params);
    let faults_before = minor_faults();
    assert_no_alloc::assert_no_alloc(|| {
        let mut pos = 0;
        for round in 0..4 {
            for &n in &sizes {
                for (i, (l, r)) in left[..n].iter_mut().zip(right[..n].iter_mut()).enumerate() {
                    let v = voice[(pos + i) % voice.len()];
                    *l = v;
                    *r = match round {
                        1 if i % 5 == 0 => f32::NAN,
                        2 => 1e-40,
                        _ => -v,
                    };
                }
                pos += n;
                params.ratio = (round as f32 * 0.3).min(1.0);
                params.dry_wet = 1.0 - 0.2 * round as f32;
                params.output_gain = 0.5 + 0.25 * round as f32;
                params.k = 1 + 9 * round;
                engine.process(&mut [&mut left[..n], &mut right[..n]], &params);
                assert!(left[..n].iter().chain(&right[..n]).all(|v| v.is_finite()));
            }
            engine.process(&mut [&mut left[..0], &mut right[..0]], &params);
            engine.process(&mut [&mut left[..100]], &params);
        }
        engine.reset();
        engine.process(&mut [&mut left[..1000], &mut right[..1000]], &params);
    });
    let faults = minor_faults() - faults_before;
    assert_eq!(faults, 0, "page faults while processing");
    assert!(engine.stats().blended > 100);
}

#[test]
fn prints_the_cost_of_realtime_processing() {
    // A figure, not an assertion (debug builds are slow; run with --release for real numbers).
    for sr in [48_000.0f32, 96_000.0] {
        let spec = FeatureSpec::default();
        let index = voice_index(&synth_voice(&VoiceParams::high(), sr, 2.0), sr, &spec);
        let mut engine =
            VoiceEngine::with_retriever(IndexRetriever::new(Some(index)), &spec, sr, 2);
        let voice = synth_voice(&VoiceParams::low(), sr, 1.0);
        let (mut l, mut r) = (voice.clone(), voice);
        let start = std::time::Instant::now();
        for (a, b) in l.chunks_mut(512).zip(r.chunks_mut(512)) {
            engine.process(&mut [a, b], &BlockParams::default());
        }
        let took = start.elapsed().as_secs_f64();
        println!(
            "{sr} Hz stereo: {:.1} µs per 10 ms frame, {:.1} % of one core in real time",
            took * 1e6 / engine.stats().frames as f64,
            100.0 * took
        );
    }
}
