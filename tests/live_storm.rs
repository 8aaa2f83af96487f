//! Swap storm, at the shapes users run (`live_support`: the plugin's 80-d voices, RVC's 256-d
//! and 768-d indexes with RVC's list counts): an audio thread runs blocks at a fixed 1 ms
//! cadence (frames searched with `blend_block` in every other block, one `blend` per frame in
//! the others) while the control side swaps among four index files (background loads,
//! prepare + publish, unloads) and switches slots. Every index's vectors encode its identity,
//! so each blend reveals which index served it: every frame of a block must come from the
//! index the engine reports as serving (or, during a crossfade, lie between the two indexes'
//! identities, moving monotonically). At the end exactly the indexes held in slots remain
//! allocated and mapped; after the engine is dropped, none. The longest audio-side block is
//! printed.

#[path = "live_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knnblend::live::LoadOutcome;
use support::*;

const SLOTS: usize = 4;
const FRAMES: usize = 8;

#[test]
fn swap_storm_plugin_80() {
    swap_storm(plugin_80(), 1000);
}

#[test]
fn swap_storm_rvc_256() {
    swap_storm(rvc_256(), 200);
}

#[test]
fn swap_storm_rvc_768() {
    swap_storm(rvc_768(), 100);
}

fn swap_storm(shape: Shape, swaps: usize) {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let files = four_voices(dir.path(), "voice", &shape);
    assert_paths_engage(&shape, &files[2], &queries(shape.dim, 512, 5));
    let (control, mut audio) = runtime(shape.dim, SLOTS, 0.004, 0.001);
    let control = Arc::new(control);
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let audio_thread = {
        let (active, stop) = (active.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut work = Work::new(shape.dim, FRAMES, 5);
            let mut stats = Stats::default();
            let mut serving_identity = 0.0f32; // what served at the end of the previous block
            let mut fade_from = 0.0f32;
            let period = Duration::from_millis(1);
            let mut next = Instant::now();
            while !stop.load(Relaxed) {
                let slot = active.load(Relaxed);
                // Every third block switches instantly, the others crossfade (4 frames).
                let fade = if stats.blocks % 3 == 0 { 0.0 } else { 0.004 };
                let block = stats.blocks % 2 == 1;
                let t0 = Instant::now();
                let was_fading = audio.is_fading();
                audio.begin_block(slot, fade);
                let now_serving = audio.serving().map(identity_of).unwrap_or(0.0);
                if audio.is_fading() && !was_fading {
                    fade_from = serving_identity;
                    stats.fades += 1;
                }
                let mut values = [0f32; FRAMES];
                let mut fading = [false; FRAMES];
                if block {
                    // One call for the block: a fade running at its start may end inside it
                    // (the frames after its end are the new index's, inside the fade's range).
                    fading = [audio.is_fading(); FRAMES];
                    work.blend(&mut audio, true, 1.0);
                    for (i, v) in values.iter_mut().enumerate() {
                        *v = work.value(i);
                    }
                } else {
                    let dim = work.dim;
                    let frames = work.frames.chunks_exact(dim);
                    for (i, (q, o)) in frames.zip(work.out.chunks_exact_mut(dim)).enumerate() {
                        fading[i] = audio.is_fading();
                        audio.blend(q, K, 1.0, o);
                        values[i] = o[0];
                    }
                }
                audio.end_block();
                let dt = t0.elapsed();
                stats.max_block = stats.max_block.max(dt);

                // Consistency: one index (or one pair, fading) per block.
                let (lo, hi) = (fade_from.min(now_serving), fade_from.max(now_serving));
                for i in 0..FRAMES {
                    let v = values[i];
                    assert!(v.is_finite(), "block {}: non-finite output", stats.blocks);
                    if fading[i] {
                        assert!(
                            v >= lo - 1e-2 && v <= hi + 1e-2,
                            "block {} frame {i}: {v} outside the fade {fade_from} → {now_serving}",
                            stats.blocks
                        );
                        if i > 0 && fading[i - 1] {
                            let step = (v - values[i - 1]) * (now_serving - fade_from).signum();
                            assert!(
                                step >= -1e-2,
                                "block {}: the fade went backwards: {values:?}",
                                stats.blocks
                            );
                        }
                    } else {
                        assert!(
                            close(v, now_serving),
                            "block {} frame {i}: output {v} does not come from the serving index {now_serving} ({values:?})",
                            stats.blocks
                        );
                    }
                }
                if now_serving != serving_identity {
                    stats.changes += 1;
                }
                serving_identity = now_serving;
                stats.blocks += 1;
                next += period;
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                } else {
                    next = Instant::now();
                }
            }
            (audio, stats, work)
        })
    };

    let mut rng = Rng(2024);
    let mut tickets = Vec::new();
    let started = Instant::now();
    for i in 0..swaps {
        let slot = rng.below(SLOTS);
        let file = &files[rng.below(files.len())];
        // Every operation is a swap: a background load, a prepare + publish, or an unload.
        let op = match i % 10 {
            0..=6 => Swap::Load,
            7 | 8 => Swap::Publish,
            _ if rng.below(3) == 0 => Swap::Unload,
            _ => Swap::Load,
        };
        swap(&control, op, slot, file, &mut tickets);
        if i % 4 == 0 {
            active.store(rng.below(SLOTS), Relaxed);
        }
        std::thread::sleep(Duration::from_micros(rng.below(1500) as u64));
    }
    let mut outcomes = [0usize; 3];
    for t in &tickets {
        match t.wait() {
            LoadOutcome::Published(_) => outcomes[0] += 1,
            LoadOutcome::Superseded => outcomes[1] += 1,
            LoadOutcome::Failed(e) => panic!("load failed: {e}"),
        }
    }
    let storm_time = started.elapsed();
    // Let the audio side pick up everything and finish its fades; the loader collects meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Relaxed);
    let (audio, stats, work) = audio_thread.join().expect("the audio thread panicked");
    control.collect();

    let t = control.telemetry();
    let occupied: Vec<u64> = t
        .slots
        .iter()
        .filter_map(|s| s.index.as_ref().map(|r| r.id))
        .collect();
    println!(
        "storm at {}: {swaps} swaps in {storm_time:?} ({} loads published, {} superseded); \
         {} audio blocks, {} serving changes, {} crossfades, {} frames blended by blend_block; \
         max audio block {:?} (wall), max query {} ns, max block {} ns (engine telemetry); \
         deferred {}; {:.1} s in all",
        shape.label(),
        outcomes[0],
        outcomes[1],
        stats.blocks,
        stats.changes,
        stats.fades,
        work.by_block,
        stats.max_block,
        t.max_query_ns,
        t.max_block_ns,
        t.deferred,
        began.elapsed().as_secs_f64()
    );
    assert!(
        stats.changes > swaps as u64 / 20,
        "too few swaps reached the audio side: {}",
        stats.changes
    );
    assert!(
        stats.fades > swaps as u64 / 100,
        "too few crossfades: {}",
        stats.fades
    );
    assert!(work.by_block > 0, "blend_block blended nothing");
    assert!(!t.fading);

    // Exactly what the slots hold is alive and mapped.
    let mut distinct = occupied.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), occupied.len(), "slots hold distinct loads");
    assert_eq!(
        control.indexes_alive(),
        occupied.len(),
        "alive indexes vs slots {:?}",
        t.slots
    );
    assert_eq!(
        mappings_under(dir.path()),
        occupied.len(),
        "file mappings vs occupied slots"
    );
    for slot in 0..SLOTS {
        let status = control.status(slot);
        assert_eq!(
            status.info.map(|i| i.id),
            t.slots[slot].index.as_ref().map(|r| r.id)
        );
    }

    drop(audio);
    control.collect();
    assert_eq!(control.indexes_alive(), 0);
    assert_eq!(mappings_under(dir.path()), 0, "an index stayed mapped");
}

#[derive(Default)]
struct Stats {
    blocks: u64,
    changes: u64,
    fades: u64,
    max_block: Duration,
}
