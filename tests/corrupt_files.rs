//! A corpus of damaged files: every one must yield a typed error with a readable message,
//! never a panic, an out-of-bounds read or a huge allocation.

mod common;
mod handmade;

use knnblend::format::kbi::{self, KbiLayout, SectionKind, HEADER_LEN};
use knnblend::format::kbi_pq::{PqSectionKind, PQ_HEADER_LEN};
use knnblend::format::{
    self, FormatError, IndexParts, ListParts, Metadata, Metric, PqKbiLayout, PqList, PqParts,
    ProductQuantizer, RefineFlat,
};
use knnblend::index::{AnyIndex, IvfIndex, OpenOptions, PqIndex, PqSearcher};
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
        metadata: Metadata {
            features: "test-8".into(),
            ..Metadata::default()
        },
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
        cuts.extend([
            r.start,
            r.start + 1,
            (r.start + r.end) / 2,
            r.end.saturating_sub(1),
        ]);
    }
    cuts.push(good.len() - 1);
    for cut in cuts {
        if cut >= good.len() {
            continue;
        }
        let err = open(&good[..cut])
            .err()
            .unwrap_or_else(|| panic!("truncated at {cut} opened"));
        assert!(
            matches!(
                err,
                FormatError::Truncated { .. } | FormatError::UnknownFormat { .. }
            ),
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
            let err = open(&b)
                .err()
                .unwrap_or_else(|| panic!("flip at {at} bit {bit} opened"));
            let ok = matches!(
                err,
                FormatError::Checksum { .. }
                    | FormatError::UnsupportedVersion { .. }
                    | FormatError::NonFinite { .. }
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
    let fields: [(usize, usize); 9] = [
        (12, 4),
        (16, 4),
        (20, 4),
        (24, 4),
        (28, 4),
        (32, 8),
        (40, 8),
        (48, 8),
        (56, 4),
    ];
    for (at, width) in fields {
        for value in [
            0u64,
            1,
            3,
            0xFFFF,
            1 << 31,
            u32::MAX as u64,
            u64::MAX,
            1 << 40,
        ] {
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
                Err(e) => assert!(
                    !matches!(
                        e,
                        FormatError::Checksum {
                            section: "header",
                            ..
                        }
                    ),
                    "{e}"
                ),
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
    assert!(
        matches!(
            err,
            FormatError::BadSection { .. } | FormatError::InvalidField { .. }
        ),
        "{err}"
    );
}

#[test]
fn list_offsets_out_of_order_or_not_summing_are_refused() {
    let good = valid_kbi();
    let layout = KbiLayout::parse(&good).unwrap();
    let at = layout.section(SectionKind::ListOffsets).offset as usize;
    let cases: [&[u64]; 4] = [
        &[0, 30, 10, 60, 60],
        &[5, 20, 40, 60, 60],
        &[0, 20, 40, 60, 59],
        &[0, 20, 40, 60, 61],
    ];
    for offsets in cases {
        let mut b = good.clone();
        for (i, o) in offsets.iter().enumerate() {
            b[at + 8 * i..at + 8 * i + 8].copy_from_slice(&o.to_le_bytes());
        }
        rehash_section(&mut b, 2);
        let err = open(&b).unwrap_err();
        assert!(
            matches!(err, FormatError::BadLists(_)),
            "{offsets:?}: {err}"
        );
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
        assert!(
            matches!(
                err,
                FormatError::BadSection { .. } | FormatError::Truncated { .. }
            ),
            "{err}"
        );
    }
}

#[test]
fn non_finite_vectors_with_valid_checksums_are_refused() {
    let mut b = valid_kbi();
    let layout = KbiLayout::parse(&b).unwrap();
    let at = layout.section(SectionKind::Vectors).offset as usize + 12;
    b[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    rehash_section(&mut b, 3);
    assert!(matches!(
        open(&b).unwrap_err(),
        FormatError::NonFinite {
            section: "vectors",
            ..
        }
    ));
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
    assert!(matches!(
        IvfIndex::open(dir.path()).unwrap_err(),
        FormatError::Io { .. }
    ));
    assert!(matches!(
        IvfIndex::open(&dir.path().join("nope.kbi")).unwrap_err(),
        FormatError::Io { .. }
    ));
}

/// The parts of the small faiss file below: d 4, 4 lists, ids 0.. with vectors `id + j/4`.
fn handmade_faiss_parts(sparse: bool) -> IndexParts {
    let (d, nlist) = (4usize, 4usize);
    let lists: Vec<Vec<i64>> = if sparse {
        vec![vec![], vec![0, 1, 2], vec![], vec![]]
    } else {
        vec![vec![0], vec![1, 2], vec![3], vec![4]]
    };
    IndexParts {
        dim: d,
        metric: Metric::L2,
        nprobe: 7,
        centroids: (0..nlist * d).map(|i| i as f32).collect(),
        lists: lists
            .into_iter()
            .map(|ids| ListParts {
                vectors: ids
                    .iter()
                    .flat_map(|&id| (0..d).map(move |j| id as f32 + j as f32 * 0.25))
                    .collect(),
                ids,
            })
            .collect(),
        metadata: Metadata::default(),
    }
}

/// A faiss IVF-Flat file built by hand in faiss's layout, so this runs without faiss.
fn handmade_faiss_file(sparse: bool) -> handmade::Written {
    let style = handmade::FaissStyle {
        nprobe: 7,
        sparse,
        ..Default::default()
    };
    handmade::faiss(&handmade_faiss_parts(sparse), &style)
}

fn handmade_faiss(sparse: bool) -> Vec<u8> {
    handmade_faiss_file(sparse).bytes
}

#[test]
fn handmade_faiss_files_read_with_stored_nprobe() {
    for sparse in [false, true] {
        let p = format::read_faiss_index(&handmade_faiss(sparse)).unwrap();
        assert_eq!(p.nprobe, 7);
        assert_eq!(p.ntotal(), if sparse { 3 } else { 5 });
        assert_eq!(
            p.lists[1].ids,
            if sparse { vec![0, 1, 2] } else { vec![1, 2] }
        );
        assert_eq!(
            &p.lists[1].vectors[..4],
            &[
                if sparse { 0.0 } else { 1.0 },
                0.25 + if sparse { 0.0 } else { 1.0 },
                0.5 + if sparse { 0.0 } else { 1.0 },
                0.75 + if sparse { 0.0 } else { 1.0 }
            ]
        );
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
    let file = handmade_faiss_file(false);
    let mut b = file.bytes;
    // The centroid count field: claim 2^60 floats.
    let at = file
        .fields
        .iter()
        .find(|f| f.name == "centroid count")
        .unwrap()
        .at;
    assert_eq!(u64::from_le_bytes(b[at..at + 8].try_into().unwrap()), 16);
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(
        format::read_faiss_index(&b).unwrap_err(),
        FormatError::Truncated { .. } | FormatError::BadFaiss(_)
    ));
}

#[global_allocator]
static ALLOCATOR: handmade::Measuring = handmade::Measuring;

/// The largest allocation a reader may make for an input of `len` bytes: the parts it returns
/// (a copy of the data, one small struct per list, at most one list per 4 bytes) plus slack.
fn allocation_cap(len: usize) -> usize {
    16 * len + (1 << 20)
}

/// Reads faiss bytes, checking the allocation cap; whatever is accepted must build an index.
fn read_faiss_capped(bytes: &[u8]) -> Result<IndexParts, FormatError> {
    let (r, largest) = handmade::largest_allocation(|| format::read_faiss_index(bytes));
    assert!(
        largest <= allocation_cap(bytes.len()),
        "{largest} bytes allocated for a {}-byte file",
        bytes.len()
    );
    match &r {
        Ok(parts) => {
            parts.validate().unwrap();
            IvfIndex::from_parts(parts).unwrap();
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    r
}

/// A few faiss files covering every optional part of the layout.
fn faiss_variants() -> Vec<handmade::Written> {
    let mut ip = handmade_faiss_parts(false);
    ip.metric = Metric::InnerProduct;
    vec![
        handmade_faiss_file(false),
        handmade_faiss_file(true),
        handmade::faiss(
            &ip,
            &handmade::FaissStyle {
                direct_map: 1,
                ..Default::default()
            },
        ),
        handmade::faiss(
            &handmade_faiss_parts(true),
            &handmade::FaissStyle {
                direct_map: 2,
                sparse: true,
                ..Default::default()
            },
        ),
    ]
}

#[test]
fn faiss_truncated_at_every_field_boundary_names_what_is_missing() {
    for file in faiss_variants() {
        let good = &file.bytes;
        read_faiss_capped(good).unwrap();
        let mut cuts: Vec<usize> = file
            .fields
            .iter()
            .flat_map(|f| [f.at, f.at + 1, f.at + f.width - 1])
            .collect();
        cuts.extend(0..good.len());
        for cut in cuts {
            match read_faiss_capped(&good[..cut]) {
                Err(FormatError::Truncated {
                    what,
                    needed,
                    actual,
                }) => {
                    assert!(
                        !what.is_empty() && needed > actual && actual == cut as u64,
                        "cut at {cut}: {what} {needed} {actual}"
                    )
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_faiss_field_set_to_zero_max_or_absurd_is_a_typed_error_or_harmless() {
    // Structural fields must be refused when changed; the others (metric, n_probe, dummies,
    // values, a sparse list number moved to another list …) may read as a different index,
    // which must then be valid and build (checked by `read_faiss_capped`).
    let values: [u64; 9] = [
        0,
        1,
        2,
        3,
        0x7F,
        1 << 31,
        u32::MAX as u64,
        1 << 40,
        u64::MAX,
    ];
    for file in faiss_variants() {
        read_faiss_capped(&file.bytes).unwrap();
        for field in &file.fields {
            for value in values
                .iter()
                .copied()
                .chain([i64::MAX as u64, i64::MIN as u64])
            {
                let mut b = file.bytes.clone();
                b[field.at..field.at + field.width]
                    .copy_from_slice(&value.to_le_bytes()[..field.width]);
                let r = read_faiss_capped(&b);
                let must_fail = matches!(
                    field.name,
                    "index type"
                        | "quantizer type"
                        | "inverted lists type"
                        | "list size encoding"
                        | "code size"
                        | "d"
                        | "quantizer d"
                        | "nlist"
                        | "inverted lists nlist"
                        | "quantizer ntotal"
                        | "centroid count"
                        | "list size count"
                        | "sparse pair count"
                        | "ntotal"
                        | "list size"
                        | "direct map length"
                );
                if must_fail && b != file.bytes {
                    assert!(r.is_err(), "{} = {value:#x} was accepted", field.name);
                }
            }
        }
    }
}

#[test]
fn faiss_list_sizes_that_overflow_overlap_or_disagree_are_refused() {
    let full = handmade_faiss_file(false);
    let sizes: Vec<usize> = full
        .fields
        .iter()
        .filter(|f| f.name == "list size")
        .map(|f| f.at)
        .collect();
    let cases: [[u64; 4]; 5] = [
        [u64::MAX, 2, 1, 3], // the sum overflows
        [u64::MAX / 2, u64::MAX / 2, 1, 0],
        [1, 2, 1, 2], // adds up to more than ntotal
        [0, 0, 0, 0], // adds up to less
        [0, 1, 1, 1],
    ];
    // (Sizes with the right sum, such as [5, 0, 0, 0], re-partition the same bytes: faiss files
    // carry no checksum, so that reads as a different but well-formed index.)
    for case in cases {
        let mut b = full.bytes.clone();
        for (at, v) in sizes.iter().zip(case) {
            b[*at..*at + 8].copy_from_slice(&v.to_le_bytes());
        }
        let err = read_faiss_capped(&b).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadFaiss(_) | FormatError::Truncated { .. }
            ),
            "{case:?}: {err}"
        );
    }

    let sparse = handmade_faiss_file(true);
    let pair_at = sparse
        .fields
        .iter()
        .find(|f| f.name == "sparse pair count")
        .unwrap()
        .at;
    // One pair (1, 3) originally; make it two pairs that overlap or run backwards.
    for pairs in [[1u64, 3, 1, 0], [2, 1, 1, 2], [1, 3, 9, 0], [4, 3, 0, 0]] {
        let mut b = sparse.bytes[..pair_at].to_vec();
        b.extend(4u64.to_le_bytes());
        pairs.iter().for_each(|v| b.extend(v.to_le_bytes()));
        b.extend(&sparse.bytes[pair_at + 8 + 16..]);
        let err = read_faiss_capped(&b).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::BadFaiss(_) | FormatError::Truncated { .. }
            ),
            "{pairs:?}: {err}"
        );
    }
}

/// A faiss file whose coarse quantizer measures another metric than the IVF index (by its type
/// `IxF2`/`IxFI`, or by the metric in the header of a generic `IxFl`) would pick lists by one
/// distance and rank vectors by another: refused, and the message names both metrics. A generic
/// `IxFl` of the index's own metric is read.
#[test]
fn a_quantizer_of_another_metric_is_refused_naming_both_metrics() {
    let file = handmade_faiss_file(false); // L2 index, IxF2 quantizer, L2 in both headers
    let field = |name: &str| file.fields.iter().find(|f| f.name == name).unwrap().at;
    let (qtype, qmetric, metric) = (
        field("quantizer type"),
        field("quantizer metric"),
        field("metric"),
    );
    let with = |edits: &[(usize, &[u8])], metric_arg: bool| {
        let mut b = file.bytes.clone();
        for (at, bytes) in edits {
            b[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        if metric_arg {
            // faiss writes `metric_arg` (f32) after a metric code above 1.
            b.splice(qmetric + 4..qmetric + 4, 0.5f32.to_le_bytes());
        }
        b
    };
    let l1 = 2i32.to_le_bytes();
    let ip = 0i32.to_le_bytes();
    let cases: Vec<(&str, Vec<u8>, [&str; 2])> = vec![
        (
            "IxFl quantizer measuring L1",
            with(&[(qtype, b"IxFl"), (qmetric, &l1)], true),
            ["L1", "L2"],
        ),
        (
            "IxFI quantizer (inner product) of an L2 index",
            with(&[(qtype, b"IxFI"), (qmetric, &ip)], false),
            ["inner product", "L2"],
        ),
        (
            "IxFl quantizer measuring inner product",
            with(&[(qtype, b"IxFl"), (qmetric, &ip)], false),
            ["inner product", "L2"],
        ),
        (
            "inner-product index with an IxF2 (L2) quantizer",
            with(&[(metric, &ip)], false),
            ["L2", "inner product"],
        ),
        (
            "IxF2 quantizer whose header says inner product",
            with(&[(qmetric, &ip)], false),
            ["inner product", "L2"],
        ),
    ];
    for (what, bytes, [quantizer, ivf]) in cases {
        let err = read_faiss_capped(&bytes).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FormatError::BadFaiss(_)), "{what}: {msg}");
        assert!(
            msg.contains(&format!("quantizer measures {quantizer}"))
                && msg.contains(&format!("index measures {ivf}")),
            "{what}: the message must name both metrics: {msg}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("added.index");
        std::fs::write(&path, &bytes).unwrap();
        let err = IvfIndex::open(&path).unwrap_err();
        assert!(matches!(err, FormatError::BadFaiss(_)), "{what}: {err}");
        let err = format::read_header(&path).unwrap_err();
        assert!(matches!(err, FormatError::BadFaiss(_)), "{what}: {err}");
    }
    // A generic IxFl quantizer of the index's own metric is a faithful IVF-Flat.
    let generic = with(&[(qtype, b"IxFl")], false);
    assert_eq!(
        read_faiss_capped(&generic).unwrap().lists,
        handmade_faiss_parts(false).lists
    );
}

/// Opens bytes as a file and checks the allocation cap.
fn open_capped(bytes: &[u8]) -> Result<IvfIndex, FormatError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.kbi");
    std::fs::write(&path, bytes).unwrap();
    let (r, largest) = handmade::largest_allocation(|| IvfIndex::open(&path));
    assert!(
        largest <= allocation_cap(bytes.len()),
        "{largest} bytes allocated for a {}-byte file",
        bytes.len()
    );
    if let Err(e) = &r {
        assert!(!e.to_string().is_empty());
    }
    r
}

#[test]
fn section_table_entries_set_to_zero_max_or_absurd_are_refused() {
    let good = valid_kbi();
    let values = [0u64, 1, 4096, 4095, 1 << 40, u64::MAX - 4095, u64::MAX];
    for entry in 0..kbi::SECTION_COUNT {
        // kind, offset, length, checksum
        for (field, width) in [(0usize, 4usize), (8, 8), (16, 8), (24, 8)] {
            for value in values {
                let mut b = good.clone();
                let at = 64 + entry * 32 + field;
                b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                if b == good {
                    continue;
                }
                rehash_header(&mut b);
                let err = open_capped(&b)
                    .err()
                    .unwrap_or_else(|| panic!("entry {entry} field {field} = {value:#x} opened"));
                assert!(
                    matches!(
                        err,
                        FormatError::BadSection { .. }
                            | FormatError::Truncated { .. }
                            | FormatError::Checksum { .. }
                    ),
                    "entry {entry} field {field} = {value:#x}: {err}"
                );
            }
        }
    }
}

#[test]
fn list_offsets_overlapping_or_huge_are_refused() {
    let good = valid_kbi();
    let layout = KbiLayout::parse(&good).unwrap();
    let at = layout.section(SectionKind::ListOffsets).offset as usize;
    let cases: [&[u64]; 5] = [
        &[0, 40, 20, 60, 60],       // list 1 overlaps list 0
        &[0, u64::MAX, 40, 60, 60], // far outside, then back
        &[0, 20, 40, 60, u64::MAX], // the end beyond every vector
        &[u64::MAX, 20, 40, 60, 60],
        &[0, 1 << 63, 1 << 63, 1 << 63, 60],
    ];
    for offsets in cases {
        let mut b = good.clone();
        for (i, o) in offsets.iter().enumerate() {
            b[at + 8 * i..at + 8 * i + 8].copy_from_slice(&o.to_le_bytes());
        }
        rehash_section(&mut b, 2);
        let err = open_capped(&b).unwrap_err();
        assert!(
            matches!(err, FormatError::BadLists(_)),
            "{offsets:?}: {err}"
        );
    }
}

#[test]
fn header_counts_that_would_need_huge_allocations_are_refused_without_them() {
    let good = valid_kbi();
    // nlist, ntotal, dim at their maxima, and metadata length at its cap, one at a time.
    for (at, width, value) in [
        (32usize, 8usize, 1 << 24),
        (40, 8, u32::MAX as u64),
        (16, 4, 65_536),
        (64 + 6 * 32 + 16, 8, kbi::MAX_METADATA),
        (64 + 6 * 32 + 16, 8, kbi::MAX_METADATA + 1),
    ] {
        let mut b = good.clone();
        b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        rehash_header(&mut b);
        let err = open_capped(&b).unwrap_err();
        assert!(
            !matches!(
                err,
                FormatError::Checksum {
                    section: "header",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn indexes_with_more_lists_than_vectors_or_huge_values_import_and_convert() {
    let dir = tempfile::tempdir().unwrap();
    // More lists than vectors (4 lists, 3 vectors), and values whose squared norms overflow f32.
    let mut huge = handmade_faiss_parts(false);
    huge.centroids[5] = 3e38;
    huge.lists[1].vectors[2] = -2e20;
    for parts in [handmade_faiss_parts(true), huge] {
        let faiss = dir.path().join("added.index");
        std::fs::write(
            &faiss,
            handmade::faiss(
                &parts,
                &handmade::FaissStyle {
                    nprobe: 7,
                    ..Default::default()
                },
            )
            .bytes,
        )
        .unwrap();
        let imported = IvfIndex::open(&faiss).unwrap();
        let kbi_path = dir.path().join("converted.kbi");
        kbi::write_kbi(&kbi_path, &imported.to_parts()).unwrap();
        let reopened = IvfIndex::open(&kbi_path).unwrap();
        assert_eq!(reopened.to_parts().lists, parts.lists);
        assert_eq!(reopened.to_parts().centroids, parts.centroids);
    }
}

/// The seed inputs of the fuzz targets (`fuzz/seeds/<target>/<name>`): small real files.
fn fuzz_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let kbi_seed = |mode: u8, parts: &IndexParts| {
        let mut b = vec![mode];
        b.extend_from_slice(kbi::encode(parts).unwrap().as_slice());
        b
    };
    let pq_seed = |mode: u8, parts: &PqParts| {
        let mut b = vec![mode];
        b.extend_from_slice(format::encode_pq_kbi(parts).unwrap().as_slice());
        b
    };
    let ip = IndexParts {
        dim: 3,
        metric: Metric::InnerProduct,
        nprobe: 2,
        centroids: vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        lists: vec![
            ListParts {
                ids: vec![10, 11],
                vectors: vec![0.9, 0.1, 0.0, 1.1, -0.2, 0.1],
            },
            ListParts::default(),
            ListParts {
                ids: vec![12, -13, 14],
                vectors: vec![0.0, 0.1, 0.8, 0.1, 0.0, 1.2, -0.3, 0.2, 0.9],
            },
        ],
        metadata: Metadata {
            features: "knnblend-logmel-v1".into(),
            feature_params: serde_json::json!({ "sample_rate": 48000, "bands": 3 }),
            sources: vec!["voice.wav".into()],
            frames: 5,
            duration_seconds: 0.05,
            extra: [("tool".to_string(), serde_json::json!("knnblend 0.1.0"))]
                .into_iter()
                .collect(),
        },
    };
    let empty = IndexParts {
        dim: 2,
        metric: Metric::L2,
        nprobe: 1,
        centroids: vec![0.0, 0.0, 1.0, 1.0],
        lists: vec![ListParts::default(); 2],
        metadata: Metadata::default(),
    };
    let variants = faiss_variants();
    let slots = r#"{\"slots\":[\"/voices/alto.kbi\",null,null,null,null,null,null,\"/voices/added_IVF256_Flat_nprobe_1_v2.index\"],\"version\":1}"#;
    vec![
        ("kbi_reader", "small_l2", kbi_seed(0, &sample_parts())),
        ("kbi_reader", "ip_empty_list_all_repairs", kbi_seed(7, &ip)),
        ("kbi_reader", "no_vectors_header_repair", kbi_seed(1, &empty)),
        ("pq_kbi_reader", "l2_residual_refined", pq_seed(0, &sample_pq_parts(true, Metric::L2, true))),
        ("pq_kbi_reader", "ip_empty_list_all_repairs", pq_seed(7, &sample_pq_parts(false, Metric::InnerProduct, false))),
        ("faiss_reader", "full.index", variants[0].bytes.clone()),
        ("faiss_reader", "sparse_more_lists_than_vectors.index", variants[1].bytes.clone()),
        ("faiss_reader", "ip_direct_map.index", variants[2].bytes.clone()),
        ("faiss_reader", "hashtable_direct_map.index", variants[3].bytes.clone()),
        ("faiss_reader", "trained_only.index", handmade::faiss(&IndexParts { dim: 2, ..empty }, &Default::default()).bytes),
        (
            "plugin_state",
            "state.json",
            format!(
                r#"{{"version":"0.1.0","params":{{"blend":{{"f32":0.75}},"crossfade":{{"f32":50.0}},"gain":{{"f32":0.0}},"mix":{{"f32":1.0}},"neighbours":{{"i32":8}},"voice":{{"i32":1}}}},"fields":{{"slots":"{slots}"}}}}"#
            )
            .into_bytes(),
        ),
        (
            "plugin_state",
            "hostile_state.json",
            br#"{"params":{"blend":{"f32":1e39},"voice":{"string":"x"},"neighbours":{"bool":true},"other":{"i32":3}},"fields":{"slots":"{\"slots\":[\"relative.kbi\",5,\"\",\"/a\\u0000b\",null,{\"a\":1}],\"version\":99,\"future\":[]}","unknown":"x"}}"#.to_vec(),
        ),
        ("plugin_state", "slot_field.json", br#"{"slots":["/voices/a.kbi",null,"/voices/b.index"],"version":1}"#.to_vec()),
        ("plugin_state", "bare_list.json", br#"["/a.kbi","/b.kbi","/c.kbi","/d.kbi","/e.kbi","/f.kbi","/g.kbi","/h.kbi","/i.kbi"]"#.to_vec()),
        ("plugin_state", "garbled.json", br#"{"slots": ["/a.kbi""#.to_vec()),
    ]
}

/// The committed fuzz seeds are exactly what the current writers produce, and the index seeds
/// read. After a format change, regenerate them with
/// `KNNBLEND_WRITE_FUZZ_SEEDS=1 cargo test --test corrupt_files fuzz_seeds`.
#[test]
fn fuzz_seeds_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds");
    let write = std::env::var_os("KNNBLEND_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, bytes) in fuzz_seeds() {
        match target {
            "kbi_reader" => {
                let mut image = format::AlignedBytes::zeroed(bytes.len() - 1);
                image.as_mut_slice().copy_from_slice(&bytes[1..]);
                IvfIndex::from_image(image).unwrap();
            }
            "pq_kbi_reader" => {
                let parts = format::decode_pq_kbi(&bytes[1..], true).unwrap();
                PqIndex::new(parts).unwrap();
            }
            "faiss_reader" if name.starts_with("trained_only") => {
                assert!(matches!(
                    format::read_faiss_index(&bytes),
                    Err(FormatError::TrainedOnly)
                ))
            }
            "faiss_reader" => {
                IvfIndex::from_parts(&format::read_faiss_index(&bytes).unwrap()).unwrap();
            }
            _ => {}
        }
        let path = root.join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let committed =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == bytes,
                "{} is out of date; regenerate it (see this test's doc)",
                path.display()
            );
        }
    }
}

// ---- IVF-PQ FastScan `.kbi` (format version 2), opened as the loader opens it ----
//
// `tests/pq_kbi.rs` covers the decoder (`decode_pq_kbi`) against faiss-made files: truncation
// at section boundaries, flipped bits in the header and sections, absurd header fields and
// duplicate refined ids. These cases go through the memory-mapped opener (`PqIndex::open_with`,
// verified and not, and `AnyIndex::open`) on a small file made by hand (no faiss), with the
// allocation cap: truncation anywhere, flipped bytes anywhere (padding included), wrong
// checksums (named), list offsets out of order or huge, counts that would need huge
// allocations, non-finite values behind valid checksums, and refined ids out of range. Whatever
// opens must search without panicking and return ids it holds.

/// A small IVF-PQ FastScan index made by hand: 8-d, M 4, blocks of 32, four lists of 5, 0, 40
/// and 3 vectors (one empty, one of two blocks), random codes.
fn sample_pq_parts(refine: bool, metric: Metric, by_residual: bool) -> PqParts {
    let (dim, m) = (8, 4);
    let mut rng = common::Rng(11);
    let mut next = 0i64;
    let mut parts = PqParts {
        dim,
        metric,
        nprobe: 2,
        centroids: common::Clustered::new(dim, 4, 12).rows(4, 13),
        pq: ProductQuantizer {
            m,
            dsub: dim / m,
            codebooks: (0..16 * dim).map(|_| rng.normal() * 0.5).collect(),
        },
        by_residual,
        bbs: 32,
        implem: 0,
        qbs2: 0,
        lists: Vec::new(),
        refine: None,
        metadata: Metadata {
            features: "test-pq-8".into(),
            ..Metadata::default()
        },
    };
    for n in [5usize, 0, 40, 3] {
        let ids = (next..next + n as i64).collect();
        next += n as i64;
        let codes = (0..parts.list_code_bytes(n))
            .map(|_| rng.next_u64() as u8)
            .collect();
        parts.lists.push(PqList { ids, codes });
    }
    if refine {
        parts.refine = Some(RefineFlat {
            vectors: common::Clustered::new(dim, 4, 14).rows(next as usize, 15),
            k_factor: 2.0,
        });
    }
    parts.validate().unwrap();
    parts
}

fn valid_pq_kbi() -> Vec<u8> {
    format::encode_pq_kbi(&sample_pq_parts(true, Metric::L2, true))
        .unwrap()
        .as_slice()
        .to_vec()
}

const PQ_TABLE_AT: usize = 104;

fn rehash_pq_header(b: &mut [u8]) {
    let at = PQ_HEADER_LEN - 8;
    let sum = xxh3_64(&b[..at]);
    b[at..PQ_HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

fn rehash_pq_section(b: &mut [u8], kind: PqSectionKind) {
    let layout = PqKbiLayout::parse(b).unwrap();
    let sum = xxh3_64(&b[layout.section(kind).range()]);
    let i = PqSectionKind::ALL.iter().position(|&k| k == kind).unwrap();
    let at = PQ_TABLE_AT + i * 32 + 24;
    b[at..at + 8].copy_from_slice(&sum.to_le_bytes());
    rehash_pq_header(b);
}

/// Searches an opened index a few ways; every id found must be one it holds.
fn search_pq(index: &PqIndex) {
    let dim = index.dim();
    let mut s = PqSearcher::for_index(index, 8, 4);
    let queries = [
        vec![0.0; dim],
        index.centroids()[..dim].to_vec(),
        (0..dim)
            .map(|i| if i % 2 == 0 { 1e30 } else { -1e29 })
            .collect(),
    ];
    for q in &queries {
        for nprobe in [1, 4] {
            if !s.fits(index, 8, nprobe) {
                continue;
            }
            for n in s.search(index, q, 8, nprobe) {
                assert!(n.id < 0 || index.ids().contains(&n.id), "{n:?}");
            }
        }
    }
}

/// Opens PQ `.kbi` bytes as the loader does (a memory map; verified or not), checking the
/// allocation cap, that `AnyIndex::open` agrees, and that whatever opens searches.
fn open_pq_capped(bytes: &[u8], verify: bool) -> Result<PqIndex, FormatError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.kbi");
    std::fs::write(&path, bytes).unwrap();
    let opts = || OpenOptions {
        verify,
        ..OpenOptions::default()
    };
    let (r, largest) = handmade::largest_allocation(|| PqIndex::open_with(&path, opts()));
    assert!(
        largest <= allocation_cap(bytes.len()),
        "{largest} bytes allocated for a {}-byte file",
        bytes.len()
    );
    let any = AnyIndex::open_with(&path, opts());
    match &r {
        Ok(index) => {
            assert!(index.is_mapped());
            assert!(any.is_ok_and(|a| a.as_pq().is_some()));
            search_pq(index);
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(any.is_err(), "AnyIndex opened what PqIndex refused: {e}");
        }
    }
    r
}

#[test]
fn the_valid_pq_kbi_opens_mapped_verified_or_not() {
    let good = valid_pq_kbi();
    let parts = sample_pq_parts(true, Metric::L2, true);
    for verify in [true, false] {
        let index = open_pq_capped(&good, verify).unwrap();
        assert_eq!(index.to_parts(), parts);
        assert_eq!(index.nlist(), 4);
    }
}

#[test]
fn a_pq_kbi_truncated_anywhere_is_refused_when_mapped() {
    let good = valid_pq_kbi();
    let layout = PqKbiLayout::parse(&good).unwrap();
    let mut cuts: Vec<usize> = (0..=PQ_HEADER_LEN).step_by(8).collect();
    cuts.extend((0..good.len()).step_by(4096));
    for s in layout.sections {
        let r = s.range();
        cuts.extend([r.start.saturating_sub(1), r.start, r.start + 1, r.end - 1]);
        cuts.push(r.start + r.len() / 2);
    }
    cuts.push(good.len() - 1);
    cuts.retain(|&c| c < good.len());
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        for verify in [true, false] {
            let err = open_pq_capped(&good[..cut], verify)
                .err()
                .unwrap_or_else(|| panic!("cut at {cut} opened (verify {verify})"));
            assert!(
                matches!(
                    err,
                    FormatError::Truncated { .. }
                        | FormatError::UnknownFormat { .. }
                        | FormatError::InvalidField { .. }
                        | FormatError::Io { .. }
                ),
                "cut at {cut}: {err}"
            );
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_in_a_pq_kbi_is_caught_or_harmless() {
    let good = valid_pq_kbi();
    let parts = sample_pq_parts(true, Metric::L2, true);
    let (mut caught, mut harmless) = (0, 0);
    for at in (0..good.len()).step_by(37).chain(8..PQ_HEADER_LEN) {
        let mut b = good.clone();
        b[at] ^= 0x5a;
        match open_pq_capped(&b, true) {
            Err(_) => caught += 1,
            // Only bytes no section or header field covers (zero padding) can change and
            // still verify; the index is then the same.
            Ok(index) => {
                assert_eq!(index.to_parts(), parts, "flip at {at} opened changed");
                harmless += 1;
            }
        }
        // Unverified, a flip in the data goes unnoticed, but must not break a search.
        let _ = open_pq_capped(&b, false);
    }
    assert!(
        caught > 0 && caught > harmless / 8,
        "{caught} caught, {harmless} harmless"
    );
}

#[test]
fn wrong_pq_kbi_checksums_name_the_section() {
    let good = valid_pq_kbi();
    for (i, kind) in PqSectionKind::ALL.into_iter().enumerate() {
        let mut b = good.clone();
        let at = PQ_TABLE_AT + i * 32 + 24;
        b[at] ^= 1;
        rehash_pq_header(&mut b);
        let err = open_pq_capped(&b, true).unwrap_err();
        assert!(
            matches!(err, FormatError::Checksum { section, .. } if section == kind.name()),
            "{kind:?}: {err}"
        );
        // Unverified opening checks the structure only: the data is intact.
        open_pq_capped(&b, false).unwrap();
    }
    let mut b = good.clone();
    b[PQ_HEADER_LEN - 1] ^= 0x80;
    for verify in [true, false] {
        let err = open_pq_capped(&b, verify).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::Checksum {
                    section: "header",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[test]
fn pq_kbi_list_offsets_out_of_order_or_huge_are_refused() {
    let good = valid_pq_kbi();
    let layout = PqKbiLayout::parse(&good).unwrap();
    let at = layout.section(PqSectionKind::ListOffsets).offset as usize;
    let cases: [&[u64]; 6] = [
        &[0, 5, 3, 45, 48],        // list 2 starts before list 1 ends
        &[0, 5, 5, 45, 47],        // not summing to ntotal
        &[0, u64::MAX, 5, 45, 48], // far outside, then back
        &[0, 5, 5, 45, u64::MAX],  // the end beyond every vector
        &[u64::MAX, 5, 5, 45, 48], // a start before nothing
        &[0, 1 << 63, 1 << 63, 1 << 63, 48],
    ];
    for offsets in cases {
        let mut b = good.clone();
        for (i, o) in offsets.iter().enumerate() {
            b[at + 8 * i..at + 8 * i + 8].copy_from_slice(&o.to_le_bytes());
        }
        rehash_pq_section(&mut b, PqSectionKind::ListOffsets);
        for verify in [true, false] {
            let err = open_pq_capped(&b, verify).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::BadLists(_) | FormatError::BadSection { .. }
                ),
                "{offsets:?}: {err}"
            );
        }
        assert!(format::decode_pq_kbi(&b, false).is_err(), "{offsets:?}");
    }
}

#[test]
fn pq_kbi_counts_that_would_need_huge_allocations_are_refused_without_them() {
    let good = valid_pq_kbi();
    let len_of = |i: usize| PQ_TABLE_AT + i * 32 + 16;
    // dim, nlist, ntotal, M, bbs at their maxima or beyond; section lengths (centroids, codes,
    // ids, refine vectors, metadata) far beyond the file.
    let fields: [(usize, usize, u64); 12] = [
        (16, 4, 65_536),
        (16, 4, u32::MAX as u64),
        (32, 8, 1 << 24),
        (32, 8, u64::MAX),
        (40, 8, u32::MAX as u64),
        (40, 8, u64::MAX),
        (64, 4, u32::MAX as u64),
        (72, 4, 1 << 20),
        (len_of(0), 8, 1 << 40),
        (len_of(3), 8, u64::MAX - 4095),
        (len_of(4), 8, 1 << 36),
        (len_of(6), 8, u64::MAX),
    ];
    for (at, width, value) in fields {
        let mut b = good.clone();
        b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        rehash_pq_header(&mut b);
        for verify in [true, false] {
            let err = open_pq_capped(&b, verify)
                .err()
                .unwrap_or_else(|| panic!("field at {at} = {value:#x} opened"));
            assert!(
                !matches!(
                    err,
                    FormatError::Checksum {
                        section: "header",
                        ..
                    }
                ),
                "field at {at} = {value:#x}: {err}"
            );
        }
    }
}

#[test]
fn non_finite_pq_values_behind_valid_checksums_are_refused_when_verified() {
    let good = valid_pq_kbi();
    let layout = PqKbiLayout::parse(&good).unwrap();
    for kind in [
        PqSectionKind::Centroids,
        PqSectionKind::Codebooks,
        PqSectionKind::RefineVectors,
    ] {
        for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut b = good.clone();
            let at = layout.section(kind).offset as usize + 4 * 3;
            b[at..at + 4].copy_from_slice(&value.to_le_bytes());
            rehash_pq_section(&mut b, kind);
            let err = open_pq_capped(&b, true).unwrap_err();
            assert!(
                err.to_string().contains(kind.name()),
                "{kind:?} {value}: {err}"
            );
            assert!(format::decode_pq_kbi(&b, true).is_err());
            // Unverified it opens (that is what skipping verification means) and searches
            // without panicking (`open_pq_capped`).
            open_pq_capped(&b, false).unwrap();
        }
    }
}

#[test]
fn refined_pq_ids_out_of_range_are_refused_even_unverified() {
    let good = valid_pq_kbi();
    let layout = PqKbiLayout::parse(&good).unwrap();
    let ids = layout.section(PqSectionKind::Ids).offset as usize;
    for (slot, id) in [
        (0usize, 48i64),
        (7, -1),
        (47, i64::MAX),
        (20, i64::MIN),
        (3, 4),
    ] {
        let mut b = good.clone();
        b[ids + 8 * slot..ids + 8 * slot + 8].copy_from_slice(&id.to_le_bytes());
        rehash_pq_section(&mut b, PqSectionKind::Ids);
        for verify in [true, false] {
            let err = open_pq_capped(&b, verify).unwrap_err();
            assert!(
                matches!(err, FormatError::BadLists(_)),
                "id {id} at {slot}: {err}"
            );
        }
    }
    // Unrefined, ids are only values: any of them opens and is returned as stored.
    let mut plain = sample_pq_parts(false, Metric::InnerProduct, false);
    plain.lists[2].ids[0] = i64::MAX;
    plain.lists[0].ids[1] = -7;
    let b = format::encode_pq_kbi(&plain).unwrap().as_slice().to_vec();
    assert_eq!(open_pq_capped(&b, true).unwrap().to_parts(), plain);
}
