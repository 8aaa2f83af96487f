//! Locked index memory is unpinned when the index is freed (heap pages do not unlock themselves).
#![cfg(target_os = "linux")]

mod skip;

use knnblend::format::{IndexParts, ListParts, Metadata, Metric};
use knnblend::index::IvfIndex;

/// The soft RLIMIT_MEMLOCK in KiB.
fn memlock_limit_kib() -> u64 {
    // SAFETY: getrlimit writes into the struct we pass.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r), 0);
        r.rlim_cur / 1024
    }
}

fn locked_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn dropping_a_locked_owned_index_unlocks_its_pages() {
    let dim = 64;
    // Small enough to come from the heap (large blocks are mmapped, and munmap unlocks).
    let rows = 128; // 32 KiB of vectors
    let parts = IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: vec![0.5; dim],
        lists: vec![ListParts {
            ids: (0..rows as i64).collect(),
            vectors: (0..rows * dim).map(|i| (i % 97) as f32).collect(),
        }],
        metadata: Metadata::default(),
    };
    let before = locked_kib();
    let mut index = IvfIndex::from_parts(&parts).unwrap();
    if !index.lock() {
        if knnblend::platform::NAME == "portable" {
            // The no-op platform locks nothing, and says so.
            assert_eq!(locked_kib(), before);
        } else {
            skip::skip(
                &format!(
                    "mlock is not permitted here (RLIMIT_MEMLOCK is {} KiB; 32 KiB are needed)",
                    memlock_limit_kib()
                ),
                "raise the locked-memory limit: `ulimit -l 1024` in the shell, `--ulimit \
                 memlock=-1` for a container, or LimitMEMLOCK= for a systemd service",
            );
        }
        return;
    }
    let during = locked_kib();
    assert!(during >= before + 32, "locked {before} → {during} KiB");
    drop(index);
    let after = locked_kib();
    assert!(
        after < before + 32,
        "still locked after drop: {before} → {after} KiB"
    );
}
