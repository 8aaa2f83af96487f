//! Swap storm: an audio thread runs blocks at a fixed 1 ms cadence while the control side swaps
//! among four index files 1 000 times (background loads, prepare + publish, unloads) and
//! switches slots. Every index's vectors encode its identity, so each blend reveals which index
//! served it: every frame of a block must come from the index the engine reports as serving
//! (or, during a crossfade, lie between the two indexes' identities, moving monotonically).
//! At the end exactly the indexes held in slots remain allocated and mapped; after the engine
//! is dropped, none. The longest audio-side block is printed.

#[path = "live_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knnblend::live::LoadOutcome;
use support::*;

const SLOTS: usize = 4;
const SWAPS: usize = 1000;
const FRAMES: usize = 8;

#[test]
fn swap_storm() {
    let dir = tempfile::tempdir().unwrap();
    let files = four_voices(dir.path(), "voice", 3000);
    let (control, mut audio) = runtime(SLOTS, 0.004, 0.001);
    let control = Arc::new(control);
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));

    let audio_thread = {
        let (active, stop) = (active.clone(), stop.clone());
        std::thread::spawn(move || {
            let q = queries(1, 5);
            let mut out = [0f32; DIM];
            let mut stats = Stats::default();
            let mut serving_identity = 0.0f32; // what served at the end of the previous block
            let mut fade_from = 0.0f32;
            let period = Duration::from_millis(1);
            let mut next = Instant::now();
            while !stop.load(Relaxed) {
                let slot = active.load(Relaxed);
                // Every third block switches instantly, the others crossfade (4 frames).
                let fade = if stats.blocks % 3 == 0 { 0.0 } else { 0.004 };
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
                for (v, f) in values.iter_mut().zip(&mut fading) {
                    *f = audio.is_fading();
                    audio.blend(&q, 8, 1.0, &mut out);
                    *v = out[0];
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
            (audio, stats)
        })
    };

    let mut rng = Rng(2024);
    let mut tickets = Vec::new();
    let started = Instant::now();
    for i in 0..SWAPS {
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
    let (audio, stats) = audio_thread.join().expect("the audio thread panicked");
    control.collect();

    let t = control.telemetry();
    let occupied: Vec<u64> = t
        .slots
        .iter()
        .filter_map(|s| s.index.as_ref().map(|r| r.id))
        .collect();
    println!(
        "storm: {SWAPS} swaps in {storm_time:?} ({} loads published, {} superseded); \
         {} audio blocks, {} serving changes, {} crossfades; max audio block {:?} (wall), \
         max query {} ns, max block {} ns (engine telemetry); deferred {}",
        outcomes[0],
        outcomes[1],
        stats.blocks,
        stats.changes,
        stats.fades,
        stats.max_block,
        t.max_query_ns,
        t.max_block_ns,
        t.deferred
    );
    assert!(
        stats.changes > 50,
        "too few swaps reached the audio side: {}",
        stats.changes
    );
    assert!(stats.fades > 10, "too few crossfades: {}", stats.fades);
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
