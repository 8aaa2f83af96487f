//! The audio side of the live runtime never allocates or frees, across many swaps, at the
//! shapes users run (the plugin's 80-d voices, RVC's 256-d and 768-d indexes with RVC's list
//! counts; `live_support`): pick-up, single and block blends (every search path of the shape:
//! the 16-bit or 8-bit centroid screen and the 16-bit rescreen, list codes, the shared block
//! screen), crossfades and slot switches run under `assert_no_alloc`'s global allocator, which
//! aborts the process on any (de)allocation inside a guarded region. The same runs on the
//! IVF-PQ FastScan audio path (`live_support::pq_shapes`: 80-d `PQ40x4fs`, 256-d `PQ128x4fs`,
//! 768-d `PQ192x4fs`; `pq_serving.rs` checks those blends bit for bit, without swaps) among
//! four voices, two refined (`RFlat`), one unrefined and one IVF-Flat, so swaps crossfade
//! between the two index types, with query expansion as above. A second test shows the
//! guard fires on a deliberate allocation (in a child process, since it aborts); it also fails
//! if the guard is inactive (the dev-dependency is built without `disable_release`, so the
//! guard is armed in release builds too).

#[path = "live_support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use knnblend::index::QueryExpansion;
use knnblend::live::{live, LiveConfig, LoadOutcome};
use support::*;

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const CHILD_ENV: &str = "KNNBLEND_LIVE_ALLOC_CHILD";

#[test]
fn the_ivf_pq_audio_side_never_allocates_or_frees_across_swaps_pq_80() {
    pq_never_allocates(pq_80(), 300);
}

#[test]
fn the_ivf_pq_audio_side_never_allocates_or_frees_across_swaps_pq_256() {
    pq_never_allocates(pq_256(), 120);
}

#[test]
fn the_ivf_pq_audio_side_never_allocates_or_frees_across_swaps_pq_768() {
    pq_never_allocates(pq_768(), 80);
}

#[test]
fn the_audio_side_never_allocates_or_frees_across_swaps_plugin_80() {
    never_allocates(plugin_80(), 400);
}

#[test]
fn the_audio_side_never_allocates_or_frees_across_swaps_rvc_256() {
    never_allocates(rvc_256(), 100);
}

#[test]
fn the_audio_side_never_allocates_or_frees_across_swaps_rvc_768() {
    never_allocates(rvc_768(), 60);
}

#[test]
fn the_audio_side_never_allocates_or_frees_across_swaps_spilled_balanced_256() {
    spilled_never_allocates(rvc_256(), 60);
}

#[test]
fn the_audio_side_never_allocates_or_frees_across_swaps_spilled_balanced_768() {
    spilled_never_allocates(rvc_768(), 40);
}

/// [`never_allocates`] among four voices of `shape` balanced (lists at most 3 × the mean)
/// and spilled (`build --max-list-factor 3 --spill 1`), so the audio side serves lists that
/// hold second copies.
fn spilled_never_allocates(shape: Shape, swaps: usize) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let files = four_spilled_voices(dir.path(), "s", &shape);
    let counts = swap_among(shape.dim, &files, swaps);
    println!(
        "spilled, balanced {}: {counts}; {:.1} s",
        shape.label(),
        started.elapsed().as_secs_f64()
    );
}

/// `swaps` control-side operations among four voices of `shape` while the audio thread runs
/// guarded blocks of 20 frames, blended alternately as one block and frame by frame.
fn never_allocates(shape: Shape, swaps: usize) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let files = four_voices(dir.path(), "v", &shape);
    assert_paths_engage(&shape, &files[0], &queries(shape.dim, 512, 3));
    let counts = swap_among(shape.dim, &files, swaps);
    println!(
        "{}: {counts}; {:.1} s",
        shape.label(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(counts.mixed_fades, 0, "IVF-Flat voices only");
    assert!(counts.metered > 0, "no block read the match meter");
}

/// [`never_allocates`] among the IVF-PQ voices of [`pq_voices`]: the guarded blocks also
/// blend through the refined and the unrefined PQ index and crossfade between a PQ and an
/// IVF-Flat index (checked to have happened).
fn pq_never_allocates(pq: PqShape, swaps: usize) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let files = pq_voices(dir.path(), "p", &pq);
    let built = started.elapsed().as_secs_f64();
    let qs = queries(pq.shape.dim, 256, 3);
    assert_pq_index(&pq, &files[0], true, identity(1), &qs);
    assert_pq_index(&pq, &files[1], false, identity(2), &qs);
    let counts = swap_among(pq.shape.dim, &files, swaps);
    println!(
        "{}: {counts}; {:.1} s ({built:.1} s building the voices)",
        pq.label(),
        started.elapsed().as_secs_f64()
    );
    assert!(counts.pq_blocks > 0, "no block was served by a PQ index");
    assert!(
        counts.mixed_fades > 0,
        "no crossfade between an IVF-Flat and a PQ index was exercised"
    );
}

/// What the guarded audio thread of [`swap_among`] saw.
struct Counts {
    swaps: usize,
    blocks: u64,
    fading_blocks: u64,
    expanded_blocks: u64,
    /// Changes of the serving index.
    changes: usize,
    /// Blocks served by an IVF-PQ index.
    pq_blocks: u64,
    /// Crossfades that began between an IVF-Flat and an IVF-PQ index (either way).
    mixed_fades: u64,
    by_block: u64,
    by_frame: u64,
    /// Blocks with a match meter reading.
    metered: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} swaps, {} guarded blocks, {} of them crossfading, {} changes of the serving \
             index, {} blocks served by IVF-PQ, {} crossfades between IVF-Flat and IVF-PQ, {} \
             frames blended by blend_block and {} by blend, {} blocks with query expansion, {} \
             with a match meter reading",
            self.swaps,
            self.blocks,
            self.fading_blocks,
            self.changes,
            self.pq_blocks,
            self.mixed_fades,
            self.by_block,
            self.by_frame,
            self.expanded_blocks,
            self.metered
        )
    }
}

/// `swaps` control-side operations among the four voices `files` (of dimension `dim`) while
/// the audio thread runs guarded blocks of 20 frames, blended alternately as one block and
/// frame by frame; checks what every proof needs (enough blocks, crossfades, expansions,
/// pick-ups, both searches, nothing left alive) and returns the counts.
fn swap_among(dim: usize, files: &[std::path::PathBuf], swaps: usize) -> Counts {
    let (control, mut audio) = runtime(dim, 4, 0.02, 0.005);
    let control = Arc::new(control);
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Every switch crossfades (set for the closing switches).
    let fade_all = Arc::new(AtomicBool::new(false));

    let audio_thread = {
        let (active, stop, fade_all) = (active.clone(), stop.clone(), fade_all.clone());
        std::thread::spawn(move || {
            let mut work = Work::new(dim, 20, 3);
            let mut seen = Vec::with_capacity(4096); // serving ids, recorded without allocating
            let mut blocks = 0u64;
            let mut fading_blocks = 0u64;
            let mut expanded_blocks = 0u64;
            let (mut pq_blocks, mut mixed_fades) = (0u64, 0u64);
            // The serving index's id and whether it is IVF-PQ, as of the previous block.
            let mut last: Option<(u64, bool)> = None;
            while !stop.load(Relaxed) {
                assert_no_alloc(|| {
                    let slot = active.load(Relaxed);
                    // Alternate instant and crossfaded switches.
                    let instant = blocks & 1 == 0 && !fade_all.load(Relaxed);
                    let fade = if instant { 0.0 } else { -1.0 };
                    audio.begin_block(slot, fade);
                    if audio.is_fading() {
                        fading_blocks += 1;
                    }
                    let now = audio
                        .serving_id()
                        .zip(audio.serving().map(|ix| ix.as_pq().is_some()));
                    if let (Some((id, pq)), Some((last_id, last_pq))) = (now, last) {
                        mixed_fades += (audio.is_fading() && id != last_id && pq != last_pq) as u64;
                    }
                    pq_blocks += now.is_some_and(|(_, pq)| pq) as u64;
                    last = now;
                    // Query-side α expansion on every other four blocks.
                    let expand = blocks & 4 != 0;
                    audio
                        .set_query_expansion(expand.then_some(QueryExpansion { k: 8, alpha: 3.0 }));
                    expanded_blocks += expand as u64;
                    // Block search on every other pair of blocks, single searches otherwise.
                    work.blend(&mut audio, blocks & 2 == 0, 0.9);
                    let id = audio.serving_id().unwrap_or(0);
                    if seen.last() != Some(&id) && seen.len() < seen.capacity() {
                        seen.push(id);
                    }
                    audio.end_block();
                });
                blocks += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            let counts = Counts {
                swaps: 0,
                blocks,
                fading_blocks,
                expanded_blocks,
                changes: seen.len(),
                pq_blocks,
                mixed_fades,
                by_block: work.by_block,
                by_frame: work.by_frame,
                metered: work.metered,
            };
            (audio, counts)
        })
    };

    // The control side swaps among the four files: background loads, prepare + publish, unloads
    // and slot switches.
    let mut rng = Rng(42);
    let mut tickets = Vec::new();
    for i in 0..swaps {
        let slot = rng.below(4);
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
    // Closing switches, each crossfaded, between files[0] and files[2] (an IVF-PQ and an
    // IVF-Flat voice among the IVF-PQ voices), so such a fade runs whatever the draws above.
    swap(&control, Swap::Publish, 2, &files[2], &mut tickets);
    swap(&control, Swap::Publish, 3, &files[0], &mut tickets);
    fade_all.store(true, Relaxed);
    for i in 0..4 {
        active.store(2 + i % 2, Relaxed);
        std::thread::sleep(Duration::from_millis(30));
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Relaxed);
    let (audio, mut counts) = audio_thread.join().expect("audio thread");
    counts.swaps = swaps;
    assert!(
        counts.blocks > 200,
        "the audio thread ran too few blocks to prove anything: {counts}"
    );
    assert!(
        counts.fading_blocks > 0,
        "no crossfade was exercised: {counts}"
    );
    assert!(
        counts.expanded_blocks > 0,
        "no expanded query was blended: {counts}"
    );
    assert!(
        counts.changes > swaps / 20,
        "too few swaps were picked up: {counts}"
    );
    assert!(
        counts.by_block > 0 && counts.by_frame > 0,
        "both searches ran: {counts}"
    );
    drop(audio);
    control.collect();
    assert_eq!(control.indexes_alive(), 0);
    counts
}

/// Runs in a child process: the audio path under the guard, then a deliberate allocation,
/// which must abort the process.
#[test]
#[ignore = "run by the_guard_fires_on_a_deliberate_allocation in a child process"]
fn deliberate_allocation_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let shape = small(500);
    let (control, mut audio) = live(LiveConfig {
        max_dim: shape.dim,
        ..LiveConfig::default()
    });
    let p = control.prepare_index(
        knnblend::index::IvfIndex::from_parts(&parts(&shape, 5.0)).unwrap(),
        "x",
    );
    control.publish(0, p.unwrap()).unwrap();
    let q = queries(shape.dim, 1, 1);
    let mut out = vec![0f32; shape.dim];
    assert_no_alloc(|| {
        audio.begin_block(0, 0.0);
        audio.blend(&q, 8, 1.0, &mut out);
        audio.end_block();
    });
    eprintln!("guarded audio path passed; now allocating on purpose");
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
        stderr.contains("guarded audio path passed"),
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
    assert!(
        stderr.contains("memory allocation of 64 bytes failed"),
        "{stderr}"
    );
}
