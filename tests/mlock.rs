//! Locked index memory is unpinned when the index is freed (heap pages do not unlock themselves).
#![cfg(target_os = "linux")]

use knnblend::format::{IndexParts, ListParts, Metadata, Metric};
use knnblend::index::IvfIndex;

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
            println!("skipped: mlock is not permitted here (RLIMIT_MEMLOCK too small)");
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
