//! A corpus of damaged files: every one must yield a typed error with a readable message,
//! never a panic, an out-of-bounds read or a huge allocation.

mod common;

use knnblend::format::kbi::{self, KbiLayout, SectionKind, HEADER_LEN};
use knnblend::format::{self, FormatError, IndexParts, ListParts, Metadata, Metric};
use knnblend::index::IvfIndex;
use xxhash_rust::xxh3::xxh3_64;

const HEADER_SUM_AT: usize = HEADER_LEN - 8;

fn sample_parts() -> IndexParts {
    let dim = 8;
    let data = common::Clustered::new(dim, 4, 5).rows(60, 6);
    let mut lists = vec![ListParts::default(); 4];
    for (i, row) in data.chunks_exact(dim).enumerate() {
        let l = &mut lists[i % 3]; // list 3 stays empty
        l.ids.push(i as i64);
        l.vectors.extend_from_slice(row);
    }
    IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: common::Clustered::new(dim, 4, 7).rows(4, 8),
        lists,
        metadata: Metadata { features: "test-8".into(), ..Metadata::default() },
    }
}

fn valid_kbi() -> Vec<u8> {
    kbi::encode(&sample_parts()).unwrap().as_slice().to_vec()
}

/// Opens bytes the way the loader does: from a file, fully verified.
fn open(bytes: &[u8]) -> Result<IvfIndex, FormatError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.kbi");
    std::fs::write(&path, bytes).unwrap();
    let r = IvfIndex::open(&path);
    if let Err(e) = &r {
        assert!(!e.to_string().is_empty());
    }
    r
}

fn rehash_header(b: &mut [u8]) {
    let sum = xxh3_64(&b[..HEADER_SUM_AT]);
    b[HEADER_SUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

fn rehash_section(b: &mut [u8], i: usize) {
    let layout = KbiLayout::parse(b).unwrap();
    let sum = xxh3_64(&b[layout.sections[i].range()]);
    let at = 64 + i * 32 + 24;
    b[at..at + 8].copy_from_slice(&sum.to_le_bytes());
    rehash_header(b);
}

#[test]
fn the_valid_file_opens() {
    let idx = open(&valid_kbi()).unwrap();
    assert_eq!((idx.dim(), idx.nlist(), idx.ntotal()), (8, 4, 60));
}

#[test]
fn truncation_at_every_field_and_section_boundary_is_an_error() {
    let good = valid_kbi();
    let layout = KbiLayout::parse(&good).unwrap();
    let mut cuts: Vec<usize> = (0..=HEADER_LEN).step_by(4).collect();
    for s in layout.sections {
        let r = s.range();
        cuts.extend([r.start, r.start + 1, (r.start + r.end) / 2, r.end.saturating_sub(1)]);
    }
    cuts.push(good.len() - 1);
    for cut in cuts {
        if cut >= good.len() {
            continue;
        }
        let err = open(&good[..cut]).err().unwrap_or_else(|| panic!("truncated at {cut} opened"));
        assert!(
            matches!(err, FormatError::Truncated { .. } | FormatError::UnknownFormat { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn a_flipped_bit_in_any_section_or_header_is_caught() {
    let good = valid_kbi();
    let layout = KbiLayout::parse(&good).unwrap();
    let mut spots: Vec<usize> = (8..HEADER_LEN).collect();
    for s in layout.sections {
        let r = s.range();
        if !r.is_empty() {
            spots.extend([r.start, r.start + r.len() / 2, r.end - 1]);
        }
    }
    for at in spots {
        for bit in [0u8, 3, 7] {
            let mut b = good.clone();
            b[at] ^= 1 << bit;
            let err = open(&b).err().unwrap_or_else(|| panic!("flip at {at} bit {bit} opened"));
            let ok = matches!(
                err,
                FormatError::Checksum { .. } | FormatError::UnsupportedVersion { .. } | FormatError::NonFinite { .. }
            );
            assert!(ok, "flip at {at}: {err}");
        }
    }
}

/// Header fields set to 0, max and absurd values, with the header checksum fixed so the
/// field validation itself is what must catch them.
#[test]
fn absurd_header_values_are_typed_errors() {
    let good = valid_kbi();
    let fields: [(usize, usize); 9] = [(12, 4), (16, 4), (20, 4), (24, 4), (28, 4), (32, 8), (40, 8), (48, 8), (56, 4)];
    for (at, width) in fields {
        for value in [0u64, 1, 3, 0xFFFF, 1 << 31, u32::MAX as u64, u64::MAX, 1 << 40] {
            let mut b = good.clone();
            let bytes = value.to_le_bytes();
            b[at..at + width].copy_from_slice(&bytes[..width]);
            if b == good {
                continue;
            }
            rehash_header(&mut b);
            // Valid alternatives: metric 1 (inner product) and any non-zero n_probe.
            if (at == 20 && value == 1) || (at == 28 && value as u32 != 0) {
                assert!(open(&b).is_ok(), "field at {at} = {value} is valid");
                continue;
            }
            match open(&b) {
                Ok(_) => panic!("field at {at} = {value} opened"),
                Err(e) => assert!(!matches!(e, FormatError::Checksum { section: "header", .. }), "{e}"),
            }
        }
    }
}

#[test]
fn sizes_that_overflow_when_multiplied_are_refused() {
    let mut b = valid_kbi();
    b[16..20].copy_from_slice(&65_536u32.to_le_bytes()); // dim
    b[32..40].copy_from_slice(&(1u64 << 24).to_le_bytes()); // nlist
    b[40..48].copy_from_slice(&(u32::MAX as u64).to_le_bytes()); // ntotal
    rehash_header(&mut b);
    let err = open(&b).unwrap_err();
    assert!(matches!(err, FormatError::BadSection { .. } | FormatError::InvalidField { .. }), "{err}");
}

#[test]
fn list_offsets_out_of_order_or_not_summing_are_refused() {
    let good = valid_kbi();
    let layout = KbiLayout::parse(&good).unwrap();
    let at = layout.section(SectionKind::ListOffsets).offset as usize;
    let cases: [&[u64]; 4] = [&[0, 30, 10, 60, 60], &[5, 20, 40, 60, 60], &[0, 20, 40, 60, 59], &[0, 20, 40, 60, 61]];
    for offsets in cases {
        let mut b = good.clone();
        for (i, o) in offsets.iter().enumerate() {
            b[at + 8 * i..at + 8 * i + 8].copy_from_slice(&o.to_le_bytes());
        }
        rehash_section(&mut b, 2);
        let err = open(&b).unwrap_err();
        assert!(matches!(err, FormatError::BadLists(_)), "{offsets:?}: {err}");
    }
}

#[test]
fn overlapping_or_misaligned_sections_are_refused() {
    let good = valid_kbi();
    for (entry, new_offset) in [(1usize, 4096u64), (3, 4097), (6, 0), (0, 1 << 50)] {
        let mut b = good.clone();
        let at = 64 + entry * 32 + 8;
        b[at..at + 8].copy_from_slice(&new_offset.to_le_bytes());
        rehash_header(&mut b);
        let err = open(&b).unwrap_err();
        assert!(matches!(err, FormatError::BadSection { .. } | FormatError::Truncated { .. }), "{err}");
    }
}

#[test]
fn non_finite_vectors_with_valid_checksums_are_refused() {
    let mut b = valid_kbi();
    let layout = KbiLayout::parse(&b).unwrap();
    let at = layout.section(SectionKind::Vectors).offset as usize + 12;
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    rehash_section(&mut b, 3);
    assert!(matches!(open(&b).unwrap_err(), FormatError::NonFinite { section: "vectors", .. }));
}

#[test]
fn garbage_metadata_is_refused() {
    let mut parts = sample_parts();
    parts.metadata.features = "x".into();
    let mut b = kbi::encode(&parts).unwrap().as_slice().to_vec();
    let layout = KbiLayout::parse(&b).unwrap();
    let at = layout.section(SectionKind::Metadata).offset as usize;
    b[at] = b'!';
    rehash_section(&mut b, 6);
    assert!(matches!(open(&b).unwrap_err(), FormatError::BadMetadata(_)));
}

#[test]
fn other_files_are_named_not_guessed() {
    for (bytes, want) in [
        (b"RIFF\0\0\0\0WAVE".as_slice(), "neither"),
        (b"IwPQ\0\0\0\0".as_slice(), "IVF-PQ"),
        (b"IwPf\0\0\0\0".as_slice(), "FastScan"),
        (b"IxRF\0\0\0\0".as_slice(), "refine"),
        (b"IHNf\0\0\0\0".as_slice(), "HNSW"),
        (b"".as_slice(), "neither"),
    ] {
        let err = open(bytes).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn directories_and_missing_files_are_io_errors() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(IvfIndex::open(dir.path()).unwrap_err(), FormatError::Io { .. }));
    assert!(matches!(IvfIndex::open(&dir.path().join("nope.kbi")).unwrap_err(), FormatError::Io { .. }));
}

/// A faiss IVF-Flat file built by hand in faiss's layout, so this runs without faiss.
fn handmade_faiss(sparse: bool) -> Vec<u8> {
    let (d, nlist) = (4usize, 4usize);
    let lists: Vec<Vec<i64>> = if sparse { vec![vec![], vec![0, 1, 2], vec![], vec![]] } else { vec![vec![0], vec![1, 2], vec![3], vec![4]] };
    let ntotal: usize = lists.iter().map(Vec::len).sum();
    let mut b = Vec::new();
    let header = |b: &mut Vec<u8>, ntotal: i64| {
        b.extend((d as i32).to_le_bytes());
        b.extend(ntotal.to_le_bytes());
        b.extend((1i64 << 20).to_le_bytes());
        b.extend((1i64 << 20).to_le_bytes());
        b.push(1);
        b.extend(1i32.to_le_bytes()); // METRIC_L2
    };
    b.extend(b"IwFl");
    header(&mut b, ntotal as i64);
    b.extend((nlist as u64).to_le_bytes());
    b.extend(7u64.to_le_bytes()); // nprobe 7, like old RVC files
    b.extend(b"IxF2");
    header(&mut b, nlist as i64);
    b.extend(((nlist * d) as u64).to_le_bytes());
    for i in 0..nlist * d {
        b.extend((i as f32).to_le_bytes());
    }
    b.push(0); // direct map: none
    b.extend(0u64.to_le_bytes());
    b.extend(b"ilar");
    b.extend((nlist as u64).to_le_bytes());
    b.extend(((d * 4) as u64).to_le_bytes());
    if sparse {
        b.extend(b"sprs");
        let pairs: Vec<u64> = lists.iter().enumerate().filter(|(_, l)| !l.is_empty()).flat_map(|(i, l)| [i as u64, l.len() as u64]).collect();
        b.extend((pairs.len() as u64).to_le_bytes());
        pairs.iter().for_each(|p| b.extend(p.to_le_bytes()));
    } else {
        b.extend(b"full");
        b.extend((nlist as u64).to_le_bytes());
        lists.iter().for_each(|l| b.extend((l.len() as u64).to_le_bytes()));
    }
    for l in &lists {
        for &id in l {
            for j in 0..d {
                b.extend((id as f32 + j as f32 * 0.25).to_le_bytes());
            }
        }
        l.iter().for_each(|id| b.extend(id.to_le_bytes()));
    }
    b
}

#[test]
fn handmade_faiss_files_read_with_stored_nprobe() {
    for sparse in [false, true] {
        let p = format::read_faiss_index(&handmade_faiss(sparse)).unwrap();
        assert_eq!(p.nprobe, 7);
        assert_eq!(p.ntotal(), if sparse { 3 } else { 5 });
        assert_eq!(p.lists[1].ids, if sparse { vec![0, 1, 2] } else { vec![1, 2] });
        assert_eq!(&p.lists[1].vectors[..4], &[if sparse { 0.0 } else { 1.0 }, 0.25 + if sparse { 0.0 } else { 1.0 }, 0.5 + if sparse { 0.0 } else { 1.0 }, 0.75 + if sparse { 0.0 } else { 1.0 }]);
    }
}

#[test]
fn faiss_files_truncated_anywhere_or_flipped_anywhere_never_panic() {
    for sparse in [false, true] {
        let good = handmade_faiss(sparse);
        for cut in 0..good.len() {
            let err = format::read_faiss_index(&good[..cut]).unwrap_err();
            assert!(!err.to_string().is_empty());
        }
        for at in 0..good.len() {
            for v in [0u8, 0xFF, 0x80, 0x01] {
                let mut b = good.clone();
                b[at] = v;
                // Either it still parses (a flipped float value) or it's a typed error.
                let _ = format::read_faiss_index(&b);
            }
        }
    }
}

#[test]
fn faiss_sizes_larger_than_the_file_do_not_allocate() {
    let mut b = handmade_faiss(false);
    // The centroid count field: claim 2^60 floats.
    let at = 4 + 33 + 16 + 4 + 33;
    assert_eq!(u64::from_le_bytes(b[at..at + 8].try_into().unwrap()), 16);
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(format::read_faiss_index(&b).unwrap_err(), FormatError::Truncated { .. } | FormatError::BadFaiss(_)));
}
