//! The DSP pieces allocate nothing after construction: SOLA, the pitch cache, the built-in
//! tracker (and the core's YIN under it), coarse pitch and the feature steps, under an
//! allocation-asserting global allocator, with a child process showing the guard fires.

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use knnblend::voice::pitch::{Pitch, PitchSpec, Yin};
use knnblend_rvc::f0::{self, BuiltinF0, F0Method, PitchCache};
use knnblend_rvc::frames::{self, BlockFraming};
use knnblend_rvc::sola::Sola;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const CHILD_ENV: &str = "KNNBLEND_RVC_DSP_ALLOC_CHILD";

#[test]
fn every_dsp_step_runs_without_allocating() {
    // RVC's default framing at 40 kHz.
    let fr = BlockFraming::rvc(40_000, 0.25, 0.05, 2.5).unwrap();
    let (n, dim, f50) = (fr.frames(), 768, fr.contentvec_frames());
    let window16k: Vec<f32> = (0..fr.window_16k())
        .map(|i| 0.3 * (i as f32 * 0.07).sin() + 0.1 * (i as f32 * 0.013).cos())
        .collect();
    let f0_len = fr.f0_window(F0Method::Builtin);
    let mut tracker = BuiltinF0::new(f0_len);
    let mut extracted = vec![0f32; f0::extractor_frames(f0_len)];
    let mut cache = PitchCache::new(n);
    let mut coarse = vec![0i64; n];
    let blended: Vec<f32> = (0..f50 * dim).map(|i| (i % 97) as f32 * 0.01).collect();
    let raw: Vec<f32> = (0..f50 * dim).map(|i| (i % 89) as f32 * 0.02).collect();
    let mut feats = vec![0f32; n * dim];
    let mut feats0 = vec![0f32; n * dim];
    let mut fused = vec![0f32; n * dim];
    let mut sola = Sola::new(fr.sola_buffer, fr.sola_search, fr.block);
    let converted: Vec<f32> = (0..fr.sola_input())
        .map(|i| (i as f32 * 0.01).sin())
        .collect();
    let mut out = vec![0f32; fr.block];
    let mut yin48 = Yin::new(&PitchSpec::default(), 48_000.0).unwrap();
    let signal48: Vec<f32> = (0..48_000).map(|i| (i as f32 * 0.02).sin()).collect();
    let mut track = vec![Pitch::SILENT; yin48.frames(signal48.len())];

    // Warm up once (first touches), then the guarded rounds.
    let mut round = |key: f32, reset: bool| {
        if reset {
            cache.reset();
            sola.reset();
        }
        let w = &window16k[window16k.len() - f0_len..];
        let frames = tracker.process(w, &mut extracted);
        cache.update(fr.block_frames(), &extracted[..frames], key);
        f0::coarse_into(cache.hz(), &mut coarse);
        f0::shift(&mut extracted, key);
        frames::upsample2(&blended, dim, &mut feats);
        frames::upsample2(&raw, dim, &mut feats0);
        frames::apply_protect(&mut feats, &feats0, dim, cache.hz(), 0.33);
        frames::upsample2_protect(&blended, &raw, dim, cache.hz(), 0.33, &mut fused);
        let offset = sola.process(&converted, &mut out);
        let tracked = yin48.track(&signal48, &mut track);
        assert!(tracked == track.len() && feats == fused);
        offset
    };
    round(0.0, false);
    let offset = assert_no_alloc(|| {
        let mut last = 0;
        for k in 0..5 {
            last = round(k as f32 * 3.0 - 6.0, k == 3);
        }
        last
    });
    assert!(offset <= fr.sola_search);
    assert!(track.iter().all(|p| p.is_voiced()));
}

#[test]
#[ignore = "run by the_guard_fires_on_a_deliberate_allocation in a child process"]
fn deliberate_allocation_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut sola = Sola::new(64, 16, 128);
    let x = vec![0.5f32; sola.input_len()];
    let mut out = vec![0f32; 128];
    assert_no_alloc(|| sola.process(&x, &mut out));
    eprintln!("guarded DSP path passed; now allocating on purpose");
    let v = assert_no_alloc(|| std::hint::black_box(vec![1u8; 64]));
    eprintln!("NOT CAUGHT: allocated {} bytes inside the guard", v.len());
}

#[test]
fn the_guard_fires_on_a_deliberate_allocation() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "deliberate_allocation_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("guarded DSP path passed"),
        "the child did not reach the deliberate allocation:\n{stderr}"
    );
    assert!(
        !stderr.contains("NOT CAUGHT"),
        "the allocation guard did not fire:\n{stderr}"
    );
    assert!(
        !out.status.success(),
        "the child should have been aborted:\n{stderr}"
    );
}
