//! Unit tests of the live runtime: publication, crossfades, supersession, failures, and the
//! queue-full paths driven deterministically (no loader thread; collection by hand).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::audio::RETURN_CAPACITY;
use super::*;
use crate::format::kbi::SectionKind;
use crate::format::{write_kbi, IndexParts, ListParts, Metadata, Metric};
use crate::index::{AnyIndex, BlendOutcome, IvfIndex};

const DIM: usize = 16;

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// An index whose every vector has `identity` as component 0, so a blend at ratio 1 returns
/// `identity` there: the output reveals which index served it.
fn parts(identity: f32, dim: usize) -> IndexParts {
    let (n, nlist) = (200, 4);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ identity.to_bits() as u64);
    let row = |rng: &mut Rng| {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.f32()).collect();
        v[0] = identity;
        v
    };
    let centroids = (0..nlist).flat_map(|_| row(&mut rng)).collect();
    let mut lists = vec![ListParts::default(); nlist];
    for i in 0..n {
        lists[i % nlist].ids.push(i as i64);
        lists[i % nlist].vectors.extend(row(&mut rng));
    }
    IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids,
        lists,
        metadata: Metadata {
            features: "test".into(),
            ..Metadata::default()
        },
    }
}

fn index(identity: f32) -> IvfIndex {
    IvfIndex::from_parts(&parts(identity, DIM)).unwrap()
}

fn config() -> LiveConfig {
    LiveConfig {
        slots: 4,
        max_dim: 64,
        crossfade_seconds: 0.05,
        frame_period_seconds: 0.01,
        header_validator: None,
        validator: None,
    }
}

fn query() -> Vec<f32> {
    let mut q: Vec<f32> = (0..DIM).map(|i| (i as f32 * 0.37).sin()).collect();
    q[0] = 0.0;
    q
}

/// Component 0 of a full-ratio blend: the identity of the serving index (0: passthrough).
fn served(audio: &mut AudioEngine) -> f32 {
    let q = query();
    let mut out = vec![0f32; DIM];
    audio.blend(&q, 8, 1.0, &mut out);
    out[0]
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3 * b.abs().max(1.0)
}

fn publish(c: &Controller, slot: usize, identity: f32) {
    let p = c
        .prepare_index(index(identity), &format!("id{identity}"))
        .unwrap();
    c.publish(slot, p).unwrap();
}

fn write_file(dir: &Path, name: &str, identity: f32) -> PathBuf {
    let path = dir.join(name);
    write_kbi(&path, &parts(identity, DIM)).unwrap();
    path
}

#[test]
fn publishes_serves_and_unloads() {
    let (c, mut a) = build(config(), false);
    a.begin_block(0, 0.0);
    assert_eq!(
        served(&mut a),
        0.0,
        "nothing loaded: the query passes through"
    );
    a.end_block();

    publish(&c, 0, 100.0);
    a.begin_block(0, 0.0);
    assert!(close(served(&mut a), 100.0));
    a.end_block();
    assert_eq!(c.status(0).state, SlotState::Ready);
    assert_eq!(c.status(0).info.unwrap().name, "id100");

    c.unload(0).unwrap();
    assert_eq!(c.status(0).state, SlotState::Empty);
    a.begin_block(0, 0.0);
    let (q, mut out) = (query(), vec![1f32; DIM]);
    assert_eq!(a.blend(&q, 8, 1.0, &mut out), BlendOutcome::Empty);
    assert_eq!(out, q);
    a.end_block();

    assert_eq!(
        c.indexes_alive(),
        1,
        "the audio side handed it back; not collected yet"
    );
    assert!(c.collect() >= 1);
    assert_eq!(c.indexes_alive(), 0);
}

#[test]
fn crossfade_moves_linearly_from_old_to_new() {
    let (c, mut a) = build(config(), false);
    publish(&c, 0, 100.0);
    publish(&c, 1, 200.0);
    a.begin_block(0, 0.0);
    assert!(close(served(&mut a), 100.0));
    assert!(!a.is_fading());
    a.end_block();

    // 50 ms at 10 ms per frame: five frames, 20 % each.
    a.begin_block(1, 0.05);
    assert!(a.is_fading());
    let values: Vec<f32> = (0..7).map(|_| served(&mut a)).collect();
    a.end_block();
    for (i, want) in [120.0, 140.0, 160.0, 180.0].into_iter().enumerate() {
        assert!(
            (values[i] - want).abs() < 0.01,
            "frame {i}: {} (all: {values:?})",
            values[i]
        );
    }
    assert!(close(values[6], 200.0), "{values:?}");
    assert!(!a.is_fading());
    let t = c.telemetry();
    assert_eq!(t.serving.as_ref().map(|r| r.name.as_str()), Some("id200"));
    assert_eq!(
        t.fading_from.as_ref().map(|r| r.name.as_str()),
        Some("id100"),
        "handed back next block"
    );

    a.begin_block(1, 0.05);
    a.end_block();
    assert!(c.telemetry().fading_from.is_none());
    c.collect();
    assert_eq!(c.indexes_alive(), 2, "both stay loaded in their slots");
}

#[test]
fn a_switch_during_a_crossfade_waits_for_it_to_end() {
    let (c, mut a) = build(config(), false);
    for (slot, id) in [(0, 100.0), (1, 200.0), (2, 300.0)] {
        publish(&c, slot, id);
    }
    a.begin_block(0, 0.0);
    a.end_block();
    a.begin_block(1, 0.05);
    let first = served(&mut a);
    a.end_block();
    a.begin_block(2, 0.05);
    let mut seen = vec![first];
    for _ in 0..5 {
        seen.push(served(&mut a));
    }
    a.end_block();
    // Still the 100 → 200 fade, ending at 200: never a jump toward 300.
    assert!(seen.windows(2).all(|w| w[1] >= w[0] - 1e-3), "{seen:?}");
    assert!(seen.iter().all(|&v| v <= 200.0 + 1e-2), "{seen:?}");
    assert!(close(*seen.last().unwrap(), 200.0));
    // Next block: 200 → 300.
    a.begin_block(2, 0.05);
    assert!(a.is_fading());
    let v = served(&mut a);
    assert!((v - 220.0).abs() < 0.01, "{v}");
    a.end_block();
}

#[test]
fn unloading_the_active_slot_fades_to_the_query() {
    let (c, mut a) = build(config(), false);
    publish(&c, 0, 100.0);
    a.begin_block(0, 0.0);
    a.end_block();
    c.unload(0).unwrap();
    a.begin_block(0, 0.05);
    let v: Vec<f32> = (0..6).map(|_| served(&mut a)).collect();
    a.end_block();
    assert!((v[0] - 80.0).abs() < 0.01, "{v:?}");
    assert_eq!(v[5], 0.0, "{v:?}");
}

#[test]
fn a_full_return_queue_postpones_work_and_never_frees_on_the_audio_side() {
    let (c, mut a) = build(config(), false);
    let rounds = 3 * RETURN_CAPACITY;
    for i in 0..rounds {
        publish(&c, 0, 1000.0 + i as f32);
        let before = c.indexes_alive();
        a.begin_block(0, 0.0);
        served(&mut a);
        a.end_block();
        assert!(
            c.indexes_alive() >= before,
            "an index was released by the audio side"
        );
    }
    let t = c.telemetry();
    assert!(t.deferred > 0, "the return queue never filled up");
    assert!(
        served(&mut a) < 1000.0 + (rounds - 1) as f32,
        "the latest cannot have been picked up yet"
    );
    // What the audio side handed back is still allocated, waiting in the return queue.
    assert!(c.indexes_alive() > RETURN_CAPACITY, "{}", c.indexes_alive());

    // The control side collects: work resumes, the latest publication wins.
    for _ in 0..rounds {
        c.collect();
        a.begin_block(0, 0.0);
        a.end_block();
    }
    a.begin_block(0, 0.0);
    assert!(close(served(&mut a), 1000.0 + (rounds - 1) as f32));
    a.end_block();
    c.collect();
    assert_eq!(c.indexes_alive(), 1);
}

#[test]
fn a_full_return_queue_postpones_an_instant_switch() {
    let (c, mut a) = build(config(), false);
    publish(&c, 0, 100.0);
    publish(&c, 1, 200.0);
    a.begin_block(0, 0.0);
    a.end_block();
    // Fill the return queue: republish slot 2 repeatedly (each displaces the previous).
    for i in 0..RETURN_CAPACITY + 2 {
        publish(&c, 2, 500.0 + i as f32);
        a.begin_block(0, 0.0);
        a.end_block();
    }
    a.begin_block(1, 0.0);
    assert!(
        close(served(&mut a), 100.0),
        "no room to hand 100 back: it keeps serving"
    );
    a.end_block();
    c.collect();
    a.begin_block(1, 0.0);
    assert!(close(served(&mut a), 200.0));
    a.end_block();
}

#[test]
fn a_later_request_supersedes_an_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = (1..=3)
        .map(|i| write_file(dir.path(), &format!("v{i}.kbi"), 100.0 * i as f32))
        .collect();
    let (c, mut a) = build(config(), false);
    let tickets: Vec<_> = files.iter().map(|f| c.load(0, f)).collect();
    assert!(matches!(c.status(0).state, SlotState::Loading { .. }));
    c.run_queued_loads();
    assert!(matches!(tickets[0].wait(), LoadOutcome::Superseded));
    assert!(matches!(tickets[1].wait(), LoadOutcome::Superseded));
    let LoadOutcome::Published(info) = tickets[2].wait() else {
        panic!("the last load must publish")
    };
    assert_eq!(info.path, files[2]);
    assert_eq!(info.name, "v3.kbi");
    assert!(info.mapped);
    assert_eq!(c.status(0).state, SlotState::Ready);
    assert_eq!(c.status(0).info.unwrap().path, files[2]);
    a.begin_block(0, 0.0);
    assert!(close(served(&mut a), 300.0));
    a.end_block();

    // A publish supersedes a load that is still queued.
    let t = c.load(0, &files[0]);
    publish(&c, 0, 900.0);
    c.run_queued_loads();
    assert!(matches!(t.wait(), LoadOutcome::Superseded));
    a.begin_block(0, 0.0);
    assert!(close(served(&mut a), 900.0));
    a.end_block();
    c.collect();
    assert_eq!(c.indexes_alive(), 1);
}

#[test]
fn a_failed_load_leaves_the_current_index_serving() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(dir.path(), "good.kbi", 100.0);
    let (c, mut a) = build(config(), false);
    c.load(0, &good);
    c.run_queued_loads();
    a.begin_block(0, 0.0);
    a.end_block();

    let corrupt = write_file(dir.path(), "corrupt.kbi", 200.0);
    let vectors = IvfIndex::open(&corrupt)
        .unwrap()
        .layout()
        .section(SectionKind::Vectors)
        .range();
    let mut bytes = std::fs::read(&corrupt).unwrap();
    bytes[vectors.start + 100] ^= 0x40;
    std::fs::write(&corrupt, bytes).unwrap();
    let not_index = dir.path().join("notes.txt");
    std::fs::write(&not_index, "hello").unwrap();

    type Expect = fn(&LoadError) -> bool;
    let cases: [(PathBuf, Expect); 4] = [
        (dir.path().join("missing.kbi"), |e| {
            matches!(e, LoadError::Io { .. })
        }),
        (dir.path().to_path_buf(), |e| {
            matches!(e, LoadError::NotAFile { .. })
        }),
        (corrupt, |e| matches!(e, LoadError::Format { .. })),
        (not_index, |e| matches!(e, LoadError::Format { .. })),
    ];
    for (path, expected) in cases {
        let t = c.load(0, &path);
        c.run_queued_loads();
        let LoadOutcome::Failed(e) = t.wait() else {
            panic!("{} must fail", path.display())
        };
        assert!(expected(&e), "{}: {e}", path.display());
        let status = c.status(0);
        let SlotState::Failed(msg) = &status.state else {
            panic!("{status:?}")
        };
        assert_eq!(msg, &e.to_string());
        assert!(
            msg.contains(&*path.to_string_lossy()),
            "the message names the file: {msg}"
        );
        assert_eq!(
            status.info.unwrap().path,
            good,
            "the previous index is still reported"
        );
        a.begin_block(0, 0.0);
        assert!(close(served(&mut a), 100.0), "and still serves");
        a.end_block();
    }

    let t = c.load(7, &good);
    let LoadOutcome::Failed(e) = t.wait() else {
        panic!()
    };
    assert!(matches!(*e, LoadError::NoSuchSlot { slot: 7, slots: 4 }));
    assert!(c
        .publish(4, c.prepare_index(index(1.0), "x").unwrap())
        .is_err());
    assert!(c.unload(4).is_err());
    assert!(matches!(c.status(4).state, SlotState::Failed(_)));
}

#[test]
fn a_panicking_validator_fails_the_load_and_the_loader_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write_file(dir.path(), "bad.kbi", 666.0);
    let good = write_file(dir.path(), "good.kbi", 100.0);
    let cfg = LiveConfig {
        validator: Some(Arc::new(|ix: &AnyIndex| {
            assert!(ix.as_flat().unwrap().vector(0)[0] != 666.0, "validator bug");
            Ok(())
        })),
        ..config()
    };
    let (c, _a) = live(cfg);
    let LoadOutcome::Failed(e) = c.load(0, &bad).wait() else {
        panic!("must fail")
    };
    assert!(matches!(*e, LoadError::Rejected { .. }), "{e}");
    assert!(e.to_string().contains("validator bug"), "{e}");
    assert!(matches!(c.load(0, &good).wait(), LoadOutcome::Published(_)));
}

#[test]
fn the_validator_and_the_width_limit_refuse_indexes() {
    let cfg = LiveConfig {
        max_dim: 32,
        validator: Some(Arc::new(|ix: &AnyIndex| {
            if ix.as_flat().unwrap().vector(0)[0] == 666.0 {
                Err("this index holds the wrong features".to_string())
            } else {
                Ok(())
            }
        })),
        ..config()
    };
    let (c, _a) = build(cfg, false);
    let e = c.prepare_index(index(666.0), "bad").unwrap_err();
    assert!(matches!(e, LoadError::Rejected { .. }));
    assert_eq!(
        e.to_string(),
        "bad does not suit this voice engine: this index holds the wrong features"
    );
    let wide = IvfIndex::from_parts(&parts(1.0, 48)).unwrap();
    let e = c.prepare_index(wide, "wide").unwrap_err();
    assert!(
        matches!(
            e,
            LoadError::TooWide {
                dim: 48,
                max_dim: 32,
                ..
            }
        ),
        "{e}"
    );
    assert!(c.prepare_index(index(1.0), "fine").is_ok());
    assert_eq!(
        c.indexes_alive(),
        0,
        "refused and dropped indexes are not counted"
    );
}

#[test]
fn a_file_written_while_loading_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "growing.kbi", 100.0);
    let (c, _a) = build(config(), false);
    let mut writer = None;
    let e = c
        .prepare(&path, |_, _| {
            if writer.is_none() {
                // Another program starts appending while the file is being loaded. With a
                // lease held, its open waits until the load ends and the load gives way.
                let path = path.clone();
                writer = Some(std::thread::spawn(move || {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .unwrap();
                    f.write_all(&[0u8; 4096]).unwrap();
                }));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
        .unwrap_err();
    writer.unwrap().join().unwrap();
    if crate::platform::READ_LEASES {
        assert!(
            matches!(e, LoadError::Busy { .. } | LoadError::Changed { .. }),
            "{e}"
        );
    } else {
        // Without a lease the append goes ahead at once: the load sees a changed file or,
        // already at its header check, one with trailing data. Never a half-written index.
        assert!(
            matches!(
                e,
                LoadError::Busy { .. } | LoadError::Changed { .. } | LoadError::Format { .. }
            ),
            "{e}"
        );
    }
    // Once the writer is done, the file is judged on its (now damaged) contents.
    let e = c.prepare(&path, |_, _| {}).unwrap_err();
    assert!(matches!(e, LoadError::Format { .. }), "{e}");
}

/// A file another program holds open for writing is refused while it does (where the platform
/// has read leases; elsewhere that protection is documented as absent and the file loads).
#[test]
fn a_file_open_for_writing_elsewhere_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "open.kbi", 100.0);
    let (c, _a) = build(config(), false);
    let w = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    if !crate::platform::READ_LEASES {
        assert!(c.prepare(&path, |_, _| {}).is_ok());
        return;
    }
    let e = c.prepare(&path, |_, _| {}).unwrap_err();
    assert!(matches!(e, LoadError::Busy { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("is being written by another program"),
        "{e}"
    );
    drop(w);
    assert!(c.prepare(&path, |_, _| {}).is_ok());
}

#[test]
fn progress_counts_up_to_the_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "p.kbi", 100.0);
    let size = std::fs::metadata(&path).unwrap().len();
    let (c, _a) = build(config(), false);
    let mut seen = Vec::new();
    let p = c.prepare(&path, |d, t| seen.push((d, t))).unwrap();
    assert!(seen.len() >= 3, "{seen:?}");
    assert!(seen.iter().all(|&(_, t)| t == size));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    assert_eq!(*seen.last().unwrap(), (size, size));
    assert_eq!(p.info().bytes, size);

    let t = c.load(1, &path);
    c.run_queued_loads();
    t.wait();
    assert_eq!(t.progress(), (size, size));
}

#[test]
fn telemetry_names_what_serves_and_counts_queries() {
    let (c, mut a) = build(config(), false);
    publish(&c, 0, 100.0);
    publish(&c, 2, 300.0);
    a.begin_block(2, 0.0);
    for _ in 0..5 {
        served(&mut a);
    }
    a.end_block();
    a.begin_block(0, 0.0);
    served(&mut a);
    a.end_block();
    let t = c.telemetry();
    assert_eq!(t.slots.len(), 4);
    assert_eq!(t.slots[0].index.as_ref().unwrap().name, "id100");
    assert!(t.slots[1].index.is_none());
    assert_eq!(t.slots[2].index.as_ref().unwrap().name, "id300");
    assert_eq!(
        (t.slots[0].queries, t.slots[2].queries, t.queries),
        (1, 5, 6)
    );
    assert_eq!(t.blocks, 2);
    assert_eq!(t.active_slot, 0);
    assert!(t.max_query_ns >= t.last_query_ns && t.max_query_ns > 0);
    assert!(t.slots[2].max_query_ns > 0);
    assert!(t.max_block_ns >= t.last_block_ns);
    c.reset_peaks();
    a.begin_block(0, 0.0);
    a.end_block();
    assert!(c.telemetry().max_query_ns <= c.telemetry().last_query_ns);
}

#[test]
fn mismatched_queries_pass_through_without_panicking() {
    let (c, mut a) = build(config(), false);
    publish(&c, 0, 100.0);
    a.begin_block(0, 0.0);
    let q: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let mut out = vec![0f32; 8];
    assert_eq!(a.blend(&q, 8, 1.0, &mut out), BlendOutcome::Empty);
    assert_eq!(out, q);
    let mut short = vec![9f32; 4];
    assert_eq!(a.blend(&q, 8, 1.0, &mut short), BlendOutcome::Empty);
    assert_eq!(short, &q[..4]);
    let mut nan = query();
    nan[3] = f32::NAN;
    let mut out = vec![0f32; DIM];
    assert_eq!(
        a.blend(&nan, 8, 1.0, &mut out),
        BlendOutcome::NonFiniteQuery
    );
    a.end_block();
    assert_eq!(c.telemetry().mismatched_queries, 2);
}
