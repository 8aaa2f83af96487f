//! No page faults on the audio thread, at the shapes users run (`live_support`: the plugin's
//! 80-d voices, RVC's 256-d and 768-d indexes with their list codes): right after a freshly
//! written and loaded index is published, ≥ 10 000 queries against it (including the crossfade
//! onto it; half the blocks searched with `blend_block`, half frame by frame) cause zero minor
//! and zero major faults on the audio thread (`getrusage(RUSAGE_THREAD)`). The same holds on the
//! IVF-PQ FastScan audio path (`live_support::pq_shapes`: 80-d `PQ40x4fs`, 256-d `PQ128x4fs`,
//! 768-d `PQ192x4fs`), refined (`RFlat`) and unrefined: the audio thread warms up on a PQ index
//! of the same kind and crossfades from it to an IVF-Flat index, then picks up the fresh PQ
//! index, crossfading onto it from the IVF-Flat one, with query-side α expansion on half the
//! blocks throughout. A control experiment shows the measurement does see faults when an
//! index (IVF-Flat vectors, IVF-PQ codes) is mapped without prefaulting.

#[path = "live_support/mod.rs"]
mod support;

use std::sync::mpsc;
use std::time::Instant;

use knnblend::format::kbi_pq::PqSectionKind;
use knnblend::format::IndexStructure;
use knnblend::index::QueryExpansion;
use knnblend::live::{live, AudioEngine, Controller, LiveConfig, LoadOutcome, PreparedIndex};
use support::*;

const QUERIES: usize = 10_240;
const PER_BLOCK: usize = 64;

/// Blends the first `n` frames of `qs` (whole rows of `dim`) in blocks of [`PER_BLOCK`] on
/// `slot`: even blocks with `blend_block`, odd ones frame by frame; when `expand`, blocks 2 and
/// 3 of every 4 with query-side α expansion.
fn run(audio: &mut AudioEngine, qs: &[f32], out: &mut [f32], dim: usize, slot: usize, n: usize) {
    run_with(audio, qs, out, dim, slot, n, false)
}

fn run_with(
    audio: &mut AudioEngine,
    qs: &[f32],
    out: &mut [f32],
    dim: usize,
    slot: usize,
    n: usize,
    expand: bool,
) {
    let rows = dim * PER_BLOCK;
    for (b, (block, out)) in qs
        .chunks_exact(rows)
        .zip(out.chunks_exact_mut(rows))
        .take(n / PER_BLOCK)
        .enumerate()
    {
        let expansion = QueryExpansion { k: 8, alpha: 3.0 };
        audio.set_query_expansion((expand && b % 4 >= 2).then_some(expansion));
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

/// Spilled and balanced voices (lists holding second copies) are published as quietly.
#[test]
fn spilled_balanced_queries_right_after_publishing_do_not_fault_rvc_256() {
    no_faults_after_publishing_with(rvc_256(), spilled_voice, false);
}

#[test]
fn spilled_balanced_queries_right_after_publishing_do_not_fault_rvc_768() {
    no_faults_after_publishing_with(rvc_768(), spilled_voice, false);
}

fn no_faults_after_publishing(shape: Shape) {
    no_faults_after_publishing_with(shape, write, true);
}

/// A fresh index (`voice(dir, name, shape, identity)`) is published while the audio thread
/// queries: none of its queries page-faults. `plain`: the voices are plain indexes of `shape`,
/// whose search paths are checked to engage.
fn no_faults_after_publishing_with(
    shape: Shape,
    voice: fn(&std::path::Path, &str, &Shape, f32) -> std::path::PathBuf,
    plain: bool,
) {
    let started = Instant::now();
    let dim = shape.dim;
    let dir = tempfile::tempdir().unwrap();
    let warm = voice(dir.path(), "warm.kbi", &shape, 1.0);
    if plain {
        assert_paths_engage(&shape, &warm, &queries(dim, 512, 11));
    }
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
    let fresh = voice(dir.path(), "fresh.kbi", &shape, 2.0);
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

#[test]
fn ivf_pq_queries_right_after_publishing_a_fresh_index_do_not_fault_pq_80_refined() {
    pq_no_faults_after_publishing(pq_80(), true);
}

#[test]
fn ivf_pq_queries_right_after_publishing_a_fresh_index_do_not_fault_pq_80_unrefined() {
    pq_no_faults_after_publishing(pq_80(), false);
}

#[test]
fn ivf_pq_queries_right_after_publishing_a_fresh_index_do_not_fault_pq_256_refined() {
    pq_no_faults_after_publishing(pq_256(), true);
}

#[test]
fn ivf_pq_queries_right_after_publishing_a_fresh_index_do_not_fault_pq_256_unrefined() {
    pq_no_faults_after_publishing(pq_256(), false);
}

#[test]
fn ivf_pq_queries_right_after_publishing_a_fresh_index_do_not_fault_pq_768_refined() {
    pq_no_faults_after_publishing(pq_768(), true);
}

#[test]
fn ivf_pq_queries_right_after_publishing_a_fresh_index_do_not_fault_pq_768_unrefined() {
    pq_no_faults_after_publishing(pq_768(), false);
}

/// [`no_faults_after_publishing`] on the IVF-PQ path: slot 0 holds a PQ index (refined as
/// `refined` says) and slot 2 an IVF-Flat one; the audio thread warms up on slot 0, crossfades
/// to slot 2 and queries it, then a freshly written PQ index is published into slot 1 and the
/// counted queries pick it up, crossfading onto it from the IVF-Flat index.
fn pq_no_faults_after_publishing(pq: PqShape, refined: bool) {
    let started = Instant::now();
    let dim = pq.shape.dim;
    let dir = tempfile::tempdir().unwrap();
    let warm = write_pq(dir.path(), "warm.kbi", &pq, 1.0, refined);
    let flat = write(dir.path(), "flat.kbi", &pq.shape, 3.0);
    assert_pq_index(&pq, &warm, refined, 1.0, &queries(dim, 256, 11));
    let (control, mut audio) = live(LiveConfig {
        slots: 3,
        max_dim: dim,
        crossfade_seconds: 0.05,
        frame_period_seconds: 0.01,
        ..LiveConfig::default()
    });
    for (slot, file) in [(0, &warm), (2, &flat)] {
        assert!(matches!(
            control.load(slot, file).wait(),
            LoadOutcome::Published(_)
        ));
    }

    let (to_control, from_audio) = mpsc::channel::<()>();
    let (to_audio, from_control) = mpsc::channel::<()>();
    let audio_thread = std::thread::spawn(move || {
        let qs = queries(dim, QUERIES, 11);
        let mut out = vec![0f32; qs.len()];
        // Warm up this thread's stack, the searchers, the crossfade and expansion scratch, the
        // output and the code paths: the PQ index (the fade from "nothing" onto it included),
        // the fade from it to the IVF-Flat index and that index; and getrusage itself.
        run_with(&mut audio, &qs, &mut out, dim, 0, QUERIES, true);
        run_with(&mut audio, &qs, &mut out, dim, 2, QUERIES / 2, true);
        thread_faults();
        let warm_faults = thread_faults();
        run_with(&mut audio, &qs, &mut out, dim, 2, 4 * PER_BLOCK, true);
        let after_warm = thread_faults() - warm_faults;

        to_control.send(()).unwrap();
        from_control.recv().unwrap(); // the fresh index is published into slot 1

        let before = thread_faults();
        // Picks it up, crossfades onto it from the IVF-Flat index, queries it.
        run_with(&mut audio, &qs, &mut out, dim, 1, QUERIES, true);
        let faults = thread_faults() - before;
        (audio, after_warm, faults)
    });

    from_audio.recv().unwrap();
    // A file written just now, loaded through the library's loader thread.
    let fresh = write_pq(dir.path(), "fresh.kbi", &pq, 2.0, refined);
    let LoadOutcome::Published(info) = control.load(1, &fresh).wait() else {
        panic!("load failed")
    };
    assert_eq!(info.structure, IndexStructure::IvfPqFastScan { refined });
    assert!(info.mapped, "{info:?}");
    println!(
        "fresh IVF-PQ index: {} bytes, mlocked: {}",
        info.bytes, info.mlocked
    );
    to_audio.send(()).unwrap();

    let (audio, after_warm, faults) = audio_thread.join().unwrap();
    let t = control.telemetry();
    println!(
        "{} refined {refined}: audio thread page faults over {QUERIES} queries after \
         publishing: {faults} (steady state before: {after_warm}); max query {} ns; {:.1} s",
        pq.label(),
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
        audio.serving().map(|ix| ix.structure()),
        Some(IndexStructure::IvfPqFastScan { refined })
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

/// Drops the page-table entries of `len` bytes at `ptr` (page-aligned, inside `prepared`'s
/// read-only file mapping), publishes `prepared` into slot 0 and returns the page faults of
/// an audio thread serving it.
fn faults_with_pages_dropped(
    control: &Controller,
    mut audio: AudioEngine,
    prepared: PreparedIndex,
    ptr: *mut libc::c_void,
    len: usize,
    dim: usize,
) -> u64 {
    // SAFETY: the range is a page-aligned part of the index's read-only file mapping; dropping
    // its page-table entries only makes the next reads fault the pages back in.
    unsafe {
        libc::munlock(ptr, len);
        assert_eq!(libc::madvise(ptr, len, libc::MADV_DONTNEED), 0);
    }
    control.publish(0, prepared).unwrap();
    std::thread::spawn(move || {
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
    .unwrap()
}

fn the_fault_counter_sees_faults(shape: Shape) {
    let dim = shape.dim;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cold.kbi", &shape, 3.0);
    let (control, audio) = live(LiveConfig {
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
    let faults = faults_with_pages_dropped(&control, audio, prepared, ptr, len, dim);
    println!(
        "{}: faults querying a non-resident index: {faults}",
        shape.label()
    );
    assert!(
        faults > 0,
        "reading pages dropped from the page tables must fault"
    );
}

/// The same control experiment on the IVF-PQ path: the published PQ index's packed codes (what
/// every FastScan query reads) are dropped from the page tables first, and the audio thread
/// faults.
#[test]
fn the_fault_counter_sees_faults_when_an_ivf_pq_index_is_not_resident_pq_80() {
    the_fault_counter_sees_pq_faults(pq_80());
}

#[test]
fn the_fault_counter_sees_faults_when_an_ivf_pq_index_is_not_resident_pq_768() {
    the_fault_counter_sees_pq_faults(pq_768());
}

fn the_fault_counter_sees_pq_faults(pq: PqShape) {
    let dim = pq.shape.dim;
    let dir = tempfile::tempdir().unwrap();
    let path = write_pq(dir.path(), "cold.kbi", &pq, 3.0, true);
    let (control, audio) = live(LiveConfig {
        slots: 1,
        max_dim: dim,
        ..LiveConfig::default()
    });
    let prepared = control.prepare(&path, |_, _| {}).unwrap();
    let index = prepared.index().as_pq().unwrap();
    assert!(index.is_mapped());
    // The image starts where the centroids section's offset says, before the centroids.
    let layout = index.layout();
    let image = index.centroids().as_ptr() as usize
        - layout.section(PqSectionKind::Centroids).range().start;
    let codes = layout.section(PqSectionKind::Codes).range();
    let (ptr, len) = ((image + codes.start) as *mut libc::c_void, codes.len());
    assert_eq!(ptr as usize % 4096, 0, "the codes section is page-aligned");
    assert!(len >= 4 * 4096, "{len} bytes of codes");
    let faults = faults_with_pages_dropped(&control, audio, prepared, ptr, len, dim);
    println!(
        "{}: faults querying a non-resident IVF-PQ index: {faults}",
        pq.label()
    );
    assert!(
        faults > 0,
        "reading pages dropped from the page tables must fault"
    );
}
