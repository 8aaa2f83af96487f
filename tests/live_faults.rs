//! No page faults on the audio thread, at the shapes users run (`live_support`: the plugin's
//! 80-d voices, RVC's 256-d and 768-d indexes with their list codes): right after a freshly
//! written and loaded index is published, ≥ 10 000 queries against it (including the crossfade
//! onto it; half the blocks searched with `blend_block`, half frame by frame) cause zero minor
//! and zero major faults on the audio thread (`getrusage(RUSAGE_THREAD)`). A control
//! experiment shows the measurement does see faults when an index is mapped without
//! prefaulting.

#[path = "live_support/mod.rs"]
mod support;

use std::sync::mpsc;
use std::time::Instant;

use knnblend::live::{live, AudioEngine, LiveConfig, LoadOutcome};
use support::*;

const QUERIES: usize = 10_240;
const PER_BLOCK: usize = 64;

/// Blends the first `n` frames of `qs` (whole rows of `dim`) in blocks of [`PER_BLOCK`] on
/// `slot`: even blocks with `blend_block`, odd ones frame by frame.
fn run(audio: &mut AudioEngine, qs: &[f32], out: &mut [f32], dim: usize, slot: usize, n: usize) {
    let rows = dim * PER_BLOCK;
    for (b, (block, out)) in qs
        .chunks_exact(rows)
        .zip(out.chunks_exact_mut(rows))
        .take(n / PER_BLOCK)
        .enumerate()
    {
        audio.begin_block(slot, 0.05);
        if b % 2 == 0 {
            audio.blend_block(block, dim, K, 0.75, out);
        } else {
            for (q, o) in block.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
                audio.blend(q, K, 0.75, o);
            }
        }
        audio.end_block();
    }
}

#[test]
fn queries_right_after_publishing_a_fresh_index_do_not_fault_plugin_80() {
    no_faults_after_publishing(plugin_80());
}

#[test]
fn queries_right_after_publishing_a_fresh_index_do_not_fault_rvc_256() {
    no_faults_after_publishing(rvc_256());
}

#[test]
fn queries_right_after_publishing_a_fresh_index_do_not_fault_rvc_768() {
    no_faults_after_publishing(rvc_768());
}

fn no_faults_after_publishing(shape: Shape) {
    let started = Instant::now();
    let dim = shape.dim;
    let dir = tempfile::tempdir().unwrap();
    let warm = write(dir.path(), "warm.kbi", &shape, 1.0);
    assert_paths_engage(&shape, &warm, &queries(dim, 512, 11));
    let (control, mut audio) = live(LiveConfig {
        slots: 2,
        max_dim: dim,
        crossfade_seconds: 0.05,
        frame_period_seconds: 0.01,
        ..LiveConfig::default()
    });
    assert!(matches!(
        control.load(0, &warm).wait(),
        LoadOutcome::Published(_)
    ));

    let (to_control, from_audio) = mpsc::channel::<()>();
    let (to_audio, from_control) = mpsc::channel::<()>();
    let audio_thread = std::thread::spawn(move || {
        let qs = queries(dim, QUERIES, 11);
        let mut out = vec![0f32; qs.len()];
        // Warm up this thread's stack, the searcher, the crossfade scratch, the output and the
        // code paths, against the first index (the fade from "nothing" onto it included), and
        // getrusage itself.
        run(&mut audio, &qs, &mut out, dim, 0, QUERIES);
        thread_faults();
        let warm_faults = thread_faults();
        run(&mut audio, &qs, &mut out, dim, 0, 2 * PER_BLOCK);
        let after_warm = thread_faults() - warm_faults;

        to_control.send(()).unwrap();
        from_control.recv().unwrap(); // the fresh index is published into slot 1

        let before = thread_faults();
        // Picks it up, crossfades onto it, queries it.
        run(&mut audio, &qs, &mut out, dim, 1, QUERIES);
        let faults = thread_faults() - before;
        (audio, after_warm, faults, out[1])
    });

    from_audio.recv().unwrap();
    // A file written just now, loaded through the library's loader thread.
    let fresh = write(dir.path(), "fresh.kbi", &shape, 2.0);
    let LoadOutcome::Published(info) = control.load(1, &fresh).wait() else {
        panic!("load failed")
    };
    println!(
        "fresh index: {} bytes, mlocked: {}",
        info.bytes, info.mlocked
    );
    to_audio.send(()).unwrap();

    let (audio, after_warm, faults, _) = audio_thread.join().unwrap();
    let t = control.telemetry();
    println!(
        "{}: audio thread page faults over {QUERIES} queries after publishing: {faults} \
         (steady state before: {after_warm}); max query {} ns; {:.1} s",
        shape.label(),
        t.max_query_ns,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        t.slots[1].queries, QUERIES as u64,
        "the queries ran against slot 1"
    );
    assert_eq!(
        t.serving.as_ref().map(|r| r.name.as_str()),
        Some("fresh.kbi")
    );
    assert_eq!(
        faults, 0,
        "the audio thread page-faulted after a publication"
    );
    drop(audio);
}

/// The measurement is not blind: the same experiment, but the published index's vector pages
/// are dropped from this process's page tables first (`munlock` + `madvise(MADV_DONTNEED)`, as
/// if evicted), does fault on the audio thread.
#[test]
fn the_fault_counter_sees_faults_when_an_index_is_not_resident_plugin_80() {
    the_fault_counter_sees_faults(plugin_80());
}

#[test]
fn the_fault_counter_sees_faults_when_an_index_is_not_resident_rvc_768() {
    the_fault_counter_sees_faults(rvc_768());
}

fn the_fault_counter_sees_faults(shape: Shape) {
    let dim = shape.dim;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cold.kbi", &shape, 3.0);
    let (control, mut audio) = live(LiveConfig {
        slots: 1,
        max_dim: dim,
        ..LiveConfig::default()
    });
    let prepared = control.prepare(&path, |_, _| {}).unwrap();
    let vectors = prepared.index().as_flat().unwrap().vectors();
    let (ptr, len) = (
        vectors.as_ptr() as *mut libc::c_void,
        std::mem::size_of_val(vectors),
    );
    assert_eq!(
        ptr as usize % 4096,
        0,
        "the vectors section is page-aligned"
    );
    // SAFETY: the range is a page-aligned part of the index's read-only file mapping; dropping
    // its page-table entries only makes the next reads fault the pages back in.
    unsafe {
        libc::munlock(ptr, len);
        assert_eq!(libc::madvise(ptr, len, libc::MADV_DONTNEED), 0);
    }
    control.publish(0, prepared).unwrap();
    let faults = std::thread::spawn(move || {
        let qs = queries(dim, QUERIES, 11);
        let mut out = vec![0f32; qs.len()];
        out.fill(1.0); // touched before counting
        thread_faults();
        let before = thread_faults();
        run(&mut audio, &qs, &mut out, dim, 0, QUERIES);
        let faults = thread_faults() - before;
        drop(audio);
        faults
    })
    .join()
    .unwrap();
    println!(
        "{}: faults querying a non-resident index: {faults}",
        shape.label()
    );
    assert!(
        faults > 0,
        "reading pages dropped from the page tables must fault"
    );
}
