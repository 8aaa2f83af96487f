//! Index files that another program writes while we load them.
//!
//! Another program (a trainer, `cp`, a sync client) may write an index in place, without
//! knnblend's write-to-temporary-then-rename. Loading such a file must give a clean error or
//! the complete file, never a crash and never a mix. A `.kbi` is memory-mapped, so the one thing
//! the reader cannot survive is the file being truncated in place *after* it was mapped: the
//! next access to a page past the new end raises SIGBUS. That hazard is pinned down here in a
//! child process; the live loader limits it by comparing the file's identity, size and time
//! before and after loading (see `live::prepare`).

mod common;
mod handmade;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Clustered;
use knnblend::format::{self, kbi};
use knnblend::format::{
    FormatError, IndexParts, ListParts, Metadata, Metric, PqList, PqParts, ProductQuantizer,
    RefineFlat,
};
use knnblend::index::{AnyIndex, IvfIndex, OpenOptions};

fn parts(dim: usize, n: usize, nlist: usize, seed: u64) -> IndexParts {
    let gen = Clustered::new(dim, 6, seed);
    let data = gen.rows(n, seed + 1);
    let mut lists = vec![ListParts::default(); nlist];
    for (i, row) in data.chunks_exact(dim).enumerate() {
        let l = &mut lists[i % nlist];
        l.ids.push(i as i64);
        l.vectors.extend_from_slice(row);
    }
    IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: gen.rows(nlist, seed + 2),
        lists,
        metadata: Metadata {
            features: "test-16".into(),
            ..Metadata::default()
        },
    }
}

/// Writes `bytes` into `file` (already truncated) the way a careless program does: in chunks,
/// with pauses between them.
fn write_slowly(mut file: std::fs::File, bytes: &[u8], chunk: usize) {
    for c in bytes.chunks(chunk) {
        file.write_all(c).unwrap();
        std::thread::sleep(Duration::from_micros(30));
    }
}

/// Loads `path` over and over while `write` runs on another thread; every load must be a
/// clean error or hold exactly `want`. Returns (complete loads, errors).
fn load_while_writing(
    path: &Path,
    want: &IndexParts,
    write: impl FnOnce() + Send + 'static,
) -> (usize, usize) {
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            write();
            done.store(true, Ordering::Release);
        })
    };
    let (mut complete, mut errors) = (0, 0);
    loop {
        let finished = done.load(Ordering::Acquire);
        match IvfIndex::open(path) {
            Ok(index) => {
                assert_eq!(
                    &index.to_parts(),
                    want,
                    "a load returned something other than the file"
                );
                complete += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                errors += 1;
            }
        }
        if finished {
            break;
        }
    }
    writer.join().unwrap();
    (complete, errors)
}

/// A `.kbi` written in place while it is loaded: each load is an error or the whole file. The
/// file only grows while a load may hold a mapping of it (a new round starts after the reader
/// dropped its index), so no mapped page is ever cut off.
#[test]
fn a_kbi_being_written_in_place_loads_cleanly_or_completely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voice.kbi");
    let want = parts(16, 300, 6, 1);
    let image = kbi::encode(&want).unwrap().as_slice().to_vec();
    let (mut complete, mut errors) = (0, 0);
    for round in 0..8 {
        // Truncated here, before the reader starts: no load of this round can map the
        // previous round's complete file and then lose its pages.
        let file = std::fs::File::create(&path).unwrap();
        let bytes = image.clone();
        let chunk = 512 + round * 811;
        let (c, e) = load_while_writing(&path, &want, move || write_slowly(file, &bytes, chunk));
        complete += c;
        errors += e;
        assert!(
            c >= 1,
            "the last load after the writer finished must succeed"
        );
    }
    println!("kbi written in place: {complete} complete loads, {errors} clean errors");
    assert!(
        errors > 0,
        "no load saw a partial file; the test did not exercise anything"
    );
}

/// A faiss file rewritten in place (truncated, then written slowly) again and again while it
/// is loaded: faiss files are read into memory, not mapped, so truncation in the middle of a
/// read is harmless and shows as a clean error.
#[test]
fn a_faiss_file_rewritten_in_place_loads_cleanly_or_completely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("added_IVF6_Flat.index");
    let source = parts(16, 300, 6, 2);
    let bytes = handmade::faiss(&source, &handmade::FaissStyle::default()).bytes;
    std::fs::write(&path, &bytes).unwrap();
    let want = IvfIndex::open(&path).unwrap().to_parts();
    assert_eq!(want.lists, source.lists);
    let p = path.clone();
    let (complete, errors) = load_while_writing(&path, &want, move || {
        for round in 0..10 {
            write_slowly(
                std::fs::File::create(&p).unwrap(),
                &bytes,
                256 + round * 509,
            );
        }
    });
    println!("faiss rewritten in place: {complete} complete loads, {errors} clean errors");
    assert!(complete >= 1 && errors > 0);
}

/// Before a `.kbi` is mapped, truncation in place is just a short file: a clean error.
#[test]
fn a_kbi_truncated_in_place_before_loading_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voice.kbi");
    kbi::write_kbi(&path, &parts(16, 300, 6, 3)).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    for keep in [0, 7, 100, 4096, len / 2, len - 1] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let err = IvfIndex::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Truncated { .. }
                    | FormatError::UnknownFormat { .. }
                    | FormatError::Io { .. }
            ),
            "{keep}: {err}"
        );
    }
}

const CHILD: &str = "KNNBLEND_TRUNCATE_AFTER_MAPPING";

/// After a `.kbi` is mapped, truncating it in place cuts pages out from under the mapping; the
/// next access to them raises SIGBUS, even when the index was prefaulted and locked in RAM.
/// No reader of a shared mapping can prevent this (only a private copy could), which is why
/// knnblend's writers never modify a file in place and the live loader refuses a file whose
/// size or time changed while it loaded. Run in a child process, which must die of SIGBUS.
#[cfg(target_os = "linux")]
#[test]
fn truncating_a_mapped_kbi_in_place_raises_sigbus_in_the_process_that_mapped_it() {
    use std::os::unix::process::ExitStatusExt;
    for mode in ["plain", "prefaulted-and-locked"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_reads_a_kbi_truncated_after_mapping",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("mapped and truncated"),
            "{mode}: the child did not get to the truncation: {stdout}"
        );
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGBUS),
            "{mode}: {:?}\n{stdout}",
            out.status
        );
    }
}

#[test]
#[ignore = "run in a child process by truncating_a_mapped_kbi_in_place_raises_sigbus_in_the_process_that_mapped_it"]
fn child_reads_a_kbi_truncated_after_mapping() {
    let Some(mode) = std::env::var_os(CHILD) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voice.kbi");
    kbi::write_kbi(&path, &parts(16, 300, 6, 4)).unwrap();
    let locked = mode == "prefaulted-and-locked";
    let index = IvfIndex::open_with(
        &path,
        OpenOptions {
            prefault: locked,
            mlock: locked,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert!(index.is_mapped());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    println!(
        "mapped and truncated ({mode:?}, locked: {})",
        index.is_locked()
    );
    let sum: f32 = index.vectors().iter().sum();
    println!("read {sum} after truncation: no SIGBUS");
}

/// A small IVF-PQ FastScan index made by hand (16-d, M 8, refined, one empty list).
fn pq_parts(seed: u64) -> PqParts {
    let (dim, m) = (16, 8);
    let gen = Clustered::new(dim, 6, seed);
    let mut rng = common::Rng(seed);
    let mut parts = PqParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: gen.rows(4, seed + 1),
        pq: ProductQuantizer {
            m,
            dsub: dim / m,
            codebooks: (0..16 * dim).map(|_| rng.normal()).collect(),
        },
        by_residual: true,
        bbs: 32,
        implem: 0,
        qbs2: 0,
        lists: Vec::new(),
        refine: None,
        metadata: Metadata {
            features: "test-16".into(),
            ..Metadata::default()
        },
    };
    let mut next = 0i64;
    for n in [90usize, 0, 150, 60] {
        let codes = (0..parts.list_code_bytes(n))
            .map(|_| rng.next_u64() as u8)
            .collect();
        parts.lists.push(PqList {
            ids: (next..next + n as i64).collect(),
            codes,
        });
        next += n as i64;
    }
    parts.refine = Some(RefineFlat {
        vectors: gen.rows(next as usize, seed + 2),
        k_factor: 1.0,
    });
    parts
}

/// A PQ `.kbi` written in place while it is loaded (memory-mapped, as `.kbi` files of either
/// type are): each load is a clean error or the whole file, as for IVF-Flat above.
#[test]
fn a_pq_kbi_being_written_in_place_loads_cleanly_or_completely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voice.kbi");
    let want = pq_parts(5);
    let image = format::encode_pq_kbi(&want).unwrap().as_slice().to_vec();
    let (mut complete, mut errors) = (0, 0);
    for round in 0..6 {
        let file = std::fs::File::create(&path).unwrap();
        let bytes = image.clone();
        let chunk = 512 + round * 811;
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                write_slowly(file, &bytes, chunk);
                done.store(true, Ordering::Release);
            })
        };
        let mut last_ok;
        loop {
            let finished = done.load(Ordering::Acquire);
            match AnyIndex::open(&path) {
                Ok(index) => {
                    let pq = index.as_pq().expect("a PQ index");
                    assert!(
                        pq.to_parts() == want,
                        "a load returned something other than the file"
                    );
                    complete += 1;
                    last_ok = true;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    errors += 1;
                    last_ok = false;
                }
            }
            if finished {
                break;
            }
        }
        writer.join().unwrap();
        assert!(
            last_ok,
            "the last load after the writer finished must succeed"
        );
    }
    println!("PQ kbi written in place: {complete} complete loads, {errors} clean errors");
    assert!(errors > 0, "no load saw a partial file");
}

/// Before a PQ `.kbi` is mapped, truncation in place is just a short file: a clean error,
/// verified or not.
#[test]
fn a_pq_kbi_truncated_in_place_before_loading_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voice.kbi");
    format::write_pq_kbi(&path, &pq_parts(6)).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    for keep in [0, 7, 100, 4096, len / 2, len - 1] {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(keep)
            .unwrap();
        for verify in [true, false] {
            let opts = OpenOptions {
                verify,
                ..OpenOptions::default()
            };
            let err = AnyIndex::open_with(&path, opts).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::Truncated { .. }
                        | FormatError::UnknownFormat { .. }
                        | FormatError::InvalidField { .. }
                        | FormatError::Io { .. }
                ),
                "{keep}: {err}"
            );
        }
    }
}
