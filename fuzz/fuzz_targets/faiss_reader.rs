//! faiss readers: bytes → `read_faiss_index` → `IvfIndex::from_parts` → searches, and bytes →
//! `read_faiss_fastscan` (IVF-PQ FastScan, bare or refined). Whatever a reader accepts must be
//! valid parts; IVF-Flat parts must build an index and read back unchanged.
#![no_main]

use knnblend::format;
use knnblend::index::IvfIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = format::sniff_bytes(data);
    fastscan(data);
    let parts = match format::read_faiss_index(data) {
        Ok(parts) => parts,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    parts
        .validate()
        .expect("the faiss reader returns valid parts");
    let index =
        IvfIndex::from_parts(&parts).expect("parts the faiss reader accepts build an index");
    assert_eq!(
        index.to_parts(),
        parts,
        "the index does not hold what the file holds"
    );
    knnblend_fuzz::exercise(&index, &data[data.len().saturating_sub(64)..]);
});

/// The IVF-PQ FastScan reader: a typed error, or parts whose every size agrees (the lists'
/// codes whole blocks, a refinement covering ids `0..ntotal` once each).
fn fastscan(data: &[u8]) {
    match format::read_faiss_fastscan(data) {
        Ok(parts) => {
            parts
                .validate()
                .expect("the FastScan reader returns valid parts");
            assert!(format::looks_like_faiss_fastscan(data));
            assert!(parts.ntotal() > 0, "a trained-only index was accepted");
            assert_eq!(parts.metadata.frames, parts.ntotal() as u64);
            for list in &parts.lists {
                assert_eq!(list.codes.len(), parts.list_code_bytes(list.ids.len()));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
