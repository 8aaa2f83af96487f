//! `.kbi` reader: header parse, section verification, list offsets, metadata, then searches.
//!
//! The first input byte selects repairs applied before reading, so the fuzzer gets past the
//! checksums and explores the validation behind them: bit 0 recomputes the header checksum,
//! bit 1 sets `file_len` to the real length, bit 2 recomputes every section checksum (when the
//! header parses). With no bits set the bytes are read exactly as given.
#![no_main]

use knnblend::format::kbi::{self, KbiLayout, HEADER_LEN, SECTION_COUNT};
use knnblend::format::AlignedBytes;
use knnblend::index::IvfIndex;
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

const HEADER_SUM_AT: usize = HEADER_LEN - 8;
const TABLE_AT: usize = 64;

fn fix_header(b: &mut [u8]) {
    if b.len() >= HEADER_LEN {
        let sum = xxh3_64(&b[..HEADER_SUM_AT]);
        b[HEADER_SUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut image = AlignedBytes::zeroed(file.len());
    image.as_mut_slice().copy_from_slice(file);
    let b = image.as_mut_slice();
    if mode & 2 != 0 && b.len() >= HEADER_LEN {
        let len = b.len() as u64;
        b[48..56].copy_from_slice(&len.to_le_bytes());
    }
    if mode & 1 != 0 {
        fix_header(b);
    }
    if mode & 4 != 0 {
        if let Ok(layout) = KbiLayout::parse(b) {
            for i in 0..SECTION_COUNT {
                let sum = xxh3_64(&b[layout.sections[i].range()]);
                let at = TABLE_AT + i * 32 + 24;
                b[at..at + 8].copy_from_slice(&sum.to_le_bytes());
            }
            fix_header(b);
        }
    }

    if let Ok(layout) = KbiLayout::parse(image.as_slice()) {
        // A parsed layout only names bytes inside the file, in order, without overlap.
        let mut end = kbi::PAGE as usize;
        for s in layout.sections {
            let r = s.range();
            assert!(r.start >= end && r.end <= image.len());
            end = r.end;
        }
    }
    let choices = file.get(..64.min(file.len())).unwrap_or_default().to_vec();
    match IvfIndex::from_image(image) {
        Ok(index) => knnblend_fuzz::exercise(&index, &choices),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
