//! `AudioEngine::blend_block` never allocates or frees on the audio side, across swaps: blocks
//! of frames are blended (block by block and, to mix both paths, frame by frame) under
//! `assert_no_alloc`'s global allocator, which aborts the process on any (de)allocation inside
//! a guarded region, while the control side loads, publishes, unloads and switches slots.
//! `live_alloc.rs` shows the guard fires on a deliberate allocation.

#[path = "live_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use knnblend::live::LoadOutcome;
use support::*;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

#[test]
fn blend_block_never_allocates_or_frees_across_swaps() {
    if !cfg!(debug_assertions) {
        panic!("assert_no_alloc checks nothing without debug assertions: this would prove nothing");
    }
    let dir = tempfile::tempdir().unwrap();
    let files = four_voices(dir.path(), "b", 2000);
    let (control, mut audio) = runtime(3, 0.02, 0.005);
    let control = Arc::new(control);
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let audio_thread = {
        let (active, stop) = (active.clone(), stop.clone());
        std::thread::spawn(move || {
            // 20 frames: one run of 16 and one of 4 per call.
            let frames = queries(20, 5);
            let mut out = vec![0f32; frames.len()];
            let (mut blocks, mut fading_blocks, mut blended, mut changes) = (0u64, 0u64, 0, 0);
            let mut last = 0;
            while !stop.load(Relaxed) {
                assert_no_alloc(|| {
                    let fade = if blocks % 3 == 0 { 0.0 } else { -1.0 };
                    audio.begin_block(active.load(Relaxed), fade);
                    fading_blocks += audio.is_fading() as u64;
                    blended += audio.blend_block(&frames, DIM, 8, 0.9, &mut out);
                    if blocks % 4 == 0 {
                        for (q, o) in frames.chunks_exact(DIM).zip(out.chunks_exact_mut(DIM)) {
                            audio.blend(q, 8, 0.9, o);
                        }
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
            (audio, blocks, fading_blocks, blended, changes)
        })
    };

    let mut rng = Rng(7);
    let mut tickets = Vec::new();
    for i in 0..300 {
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
    let (audio, blocks, fading_blocks, blended, changes) = audio_thread.join().expect("audio");
    println!(
        "{blocks} guarded blocks ({fading_blocks} crossfading), {blended} frames blended by \
         blend_block, {changes} changes of the serving index"
    );
    assert!(blocks > 150, "too few blocks to prove anything: {blocks}");
    assert!(fading_blocks > 0, "no crossfade was exercised");
    assert!(changes > 15, "too few swaps were picked up: {changes}");
    assert!(blended > 0, "blend_block blended nothing");
    drop(audio);
    control.collect();
    assert_eq!(control.indexes_alive(), 0);
}
