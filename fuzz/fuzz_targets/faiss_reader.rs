//! faiss IVF-Flat reader: bytes → `read_faiss_index` → `IvfIndex::from_parts` → searches.
//! Whatever the reader accepts must be valid parts that build an index and read back unchanged.
#![no_main]

use knnblend::format;
use knnblend::index::IvfIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = format::sniff_bytes(data);
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
