//! `AudioEngine::blend_block` never allocates or frees on the audio side, across swaps, at the
//! shapes users run (`live_support`: the plugin's 80-d voices, searched query by query inside
//! a block; RVC's 256-d and 768-d indexes, searched with the shared 8-bit block screen and its
//! tile kernels, list codes and, for glitch frames, the 16-bit rescreen): blocks of frames are
//! blended (block by block and, to mix both paths, frame by frame) under `assert_no_alloc`'s
//! global allocator, which aborts the process on any (de)allocation inside a guarded region,
//! while the control side loads, publishes, unloads and switches slots. `live_alloc.rs` shows
//! the guard fires on a deliberate allocation (in release builds too).

#[path = "live_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use knnblend::live::LoadOutcome;
use support::*;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn blend_block_never_allocates_or_frees_across_swaps_plugin_80() {
    blend_block_never_allocates(plugin_80(), 300);
}

#[test]
fn blend_block_never_allocates_or_frees_across_swaps_rvc_256() {
    blend_block_never_allocates(rvc_256(), 100);
}

#[test]
fn blend_block_never_allocates_or_frees_across_swaps_rvc_768() {
    blend_block_never_allocates(rvc_768(), 60);
}

fn blend_block_never_allocates(shape: Shape, swaps: usize) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let files = four_voices(dir.path(), "b", &shape);
    assert_paths_engage(&shape, &files[1], &queries(shape.dim, 512, 5));
    let (control, mut audio) = runtime(shape.dim, 3, 0.02, 0.005);
    let control = Arc::new(control);
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let audio_thread = {
        let (active, stop) = (active.clone(), stop.clone());
        std::thread::spawn(move || {
            // 20 frames: one run of 16 and one of 4 per call.
            let mut work = Work::new(shape.dim, 20, 5);
            let (mut blocks, mut fading_blocks, mut changes) = (0u64, 0u64, 0);
            let mut last = 0;
            while !stop.load(Relaxed) {
                assert_no_alloc(|| {
                    let fade = if blocks % 3 == 0 { 0.0 } else { -1.0 };
                    audio.begin_block(active.load(Relaxed), fade);
                    fading_blocks += audio.is_fading() as u64;
                    work.blend(&mut audio, true, 0.9);
                    if blocks % 4 == 0 {
                        work.blend(&mut audio, false, 0.9);
                    }
                    let id = audio.serving_id().unwrap_or(0);
                    if id != last {
                        changes += 1;
                        last = id;
                    }
                    audio.end_block();
                });
                blocks += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            (audio, blocks, fading_blocks, work, changes)
        })
    };

    let mut rng = Rng(7);
    let mut tickets = Vec::new();
    for i in 0..swaps {
        let slot = rng.below(3);
        let file = &files[rng.below(4)];
        match i % 5 {
            0 | 1 => swap(&control, Swap::Load, slot, file, &mut tickets),
            2 => swap(&control, Swap::Publish, slot, file, &mut tickets),
            3 => active.store(slot, Relaxed),
            _ if rng.below(4) == 0 => swap(&control, Swap::Unload, slot, file, &mut tickets),
            _ => {}
        }
        std::thread::sleep(Duration::from_micros(700));
    }
    for t in &tickets {
        assert!(!matches!(t.wait(), LoadOutcome::Failed(_)));
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Relaxed);
    let (audio, blocks, fading_blocks, work, changes) = audio_thread.join().expect("audio");
    println!(
        "{}: {swaps} swaps, {blocks} guarded blocks ({fading_blocks} crossfading), {} frames \
         blended by blend_block and {} by blend, {changes} changes of the serving index; \
         {:.1} s",
        shape.label(),
        work.by_block,
        work.by_frame,
        started.elapsed().as_secs_f64()
    );
    assert!(blocks > 150, "too few blocks to prove anything: {blocks}");
    assert!(fading_blocks > 0, "no crossfade was exercised");
    assert!(
        changes > swaps / 20,
        "too few swaps were picked up: {changes}"
    );
    assert!(work.by_block > 0, "blend_block blended nothing");
    drop(audio);
    control.collect();
    assert_eq!(control.indexes_alive(), 0);
}
