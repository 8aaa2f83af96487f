//! IVF-PQ FastScan `.kbi` files (format version 2) against the faiss files they are made from:
//! indexes built by faiss's factory (`IVF…,PQ…x4fs`, `x4fsr`, `_64` blocks, `,RFlat` through
//! the factory and wrapped by hand), L2 and inner product, with empty lists, read as
//! [`PqParts`], written as `.kbi` and read back bit for bit; the index made from the `.kbi`
//! searches exactly like the one made from the faiss file. Then the `.kbi` truncated at every
//! section boundary, its bits flipped and its header fields set to absurd values: typed errors,
//! never a panic. And the IVF-Flat readers refuse it by name.

mod common;

use common::Clustered;
use faiss::index::refine_flat::RefineFlatIndex;
use faiss::{index_factory, Index, MetricType};
use knnblend::format::kbi_pq::{PqSectionKind, PQ_HEADER_LEN};
use knnblend::format::{self, FormatError, Metric, PqKbiLayout, PqParts};
use knnblend::index::{IvfIndex, PqIndex, PqSearcher};
use xxhash_rust::xxh3::xxh3_64;

#[derive(Clone, Copy, Debug)]
enum Refine {
    None,
    /// `,RFlat` in the factory string (k_factor 1).
    Factory,
    /// `IndexRefineFlat` around the base, with this k_factor.
    Wrapped(f32),
}

#[derive(Clone, Copy, Debug)]
struct Recipe {
    dim: usize,
    m: usize,
    metric: Metric,
    residual: bool,
    refine: Refine,
    bbs64: bool,
    nlist: usize,
    add: usize,
}

impl Recipe {
    fn new(dim: usize, m: usize, metric: Metric) -> Recipe {
        Recipe {
            dim,
            m,
            metric,
            residual: false,
            refine: Refine::None,
            bbs64: false,
            nlist: 32,
            add: 1500,
        }
    }

    fn factory(&self) -> String {
        format!(
            "IVF{},PQ{}x4fs{}{}",
            self.nlist,
            self.m,
            if self.residual { "r" } else { "" },
            if self.bbs64 { "_64" } else { "" }
        )
    }
}

fn normalise(rows: &mut [f32], dim: usize) {
    for v in rows.chunks_exact_mut(dim) {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// A faiss file built from `r`, read as parts; and queries for it.
struct Case {
    parts: PqParts,
    queries: Vec<f32>,
}

fn build(r: Recipe) -> Case {
    let seed = r.dim as u64 * 31 + r.m as u64;
    let gen = Clustered::new(r.dim, 12, seed);
    let mut data = gen.rows(r.add, seed + 1);
    // Training also sees a region no added vector comes from, so some lists stay empty.
    let mut train = data.clone();
    let mut far = gen.rows(r.add / 4, seed + 2);
    far.iter_mut().for_each(|x| *x += 6.0);
    train.extend_from_slice(&far);
    let mut queries = gen.rows(60, seed + 3);
    if r.metric == Metric::InnerProduct {
        normalise(&mut data, r.dim);
        normalise(&mut train, r.dim);
        normalise(&mut queries, r.dim);
    }
    let metric = match r.metric {
        Metric::L2 => MetricType::L2,
        Metric::InnerProduct => MetricType::InnerProduct,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastscan.index");
    let file = path.to_str().unwrap();
    match r.refine {
        Refine::None => {
            let mut base = index_factory(r.dim as u32, r.factory(), metric).unwrap();
            base.train(&train).unwrap();
            base.add(&data).unwrap();
            faiss::write_index(&base, file).unwrap();
        }
        Refine::Factory => {
            let description = format!("{},RFlat", r.factory());
            let mut index = index_factory(r.dim as u32, &description, metric).unwrap();
            index.train(&train).unwrap();
            index.add(&data).unwrap();
            faiss::write_index(&index, file).unwrap();
        }
        Refine::Wrapped(k_factor) => {
            let mut base = index_factory(r.dim as u32, r.factory(), metric).unwrap();
            base.train(&train).unwrap();
            let mut w = RefineFlatIndex::new(base).unwrap();
            w.set_k_factor(k_factor);
            w.add(&data).unwrap();
            faiss::write_index(&w, file).unwrap();
        }
    }
    let parts =
        format::read_faiss_fastscan_file(&path).unwrap_or_else(|e| panic!("{}: {e}", r.factory()));
    Case { parts, queries }
}

/// Every neighbour, bit for bit, of `queries` in `a` and `b`, k = 8, nprobe 1 and 4.
fn same_search(a: &PqIndex, b: &PqIndex, queries: &[f32], what: &str) {
    const K: usize = 8;
    let mut sa = PqSearcher::for_index(a, K, 4);
    let mut sb = PqSearcher::for_index(b, K, 4);
    let bits = |r: &[knnblend::index::PqNeighbour]| -> Vec<(i64, u32, u32, u32)> {
        r.iter()
            .map(|n| (n.id, n.distance.to_bits(), n.list, n.offset))
            .collect()
    };
    let mut found = 0;
    for nprobe in [1, 4] {
        for (qi, q) in queries.chunks_exact(a.dim()).enumerate() {
            let ra = bits(sa.search(a, q, K, nprobe));
            let rb = bits(sb.search(b, q, K, nprobe));
            assert_eq!(ra, rb, "{what}: query {qi}, nprobe {nprobe}");
            found += ra.iter().filter(|n| n.0 >= 0).count();
        }
    }
    assert!(found > 0, "{what}: the searches found nothing");
}

/// faiss file → parts → `.kbi` → parts, equal bit for bit; the file on disk is the image;
/// the two indexes search alike.
fn round_trip(r: Recipe) -> (Case, Vec<u8>) {
    let case = build(r);
    let what = format!("{} {:?} {:?}", r.factory(), r.metric, r.refine);
    let p = &case.parts;
    p.validate().unwrap();
    let empty = p.lists.iter().filter(|l| l.ids.is_empty()).count();
    assert!(empty > 0, "{what}: no empty list");
    assert_eq!(p.refine.is_some(), !matches!(r.refine, Refine::None));
    if let Refine::Wrapped(k) = r.refine {
        assert_eq!(p.refine.as_ref().unwrap().k_factor, k);
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pq.kbi");
    let written = format::write_pq_kbi(&path, p).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(written, bytes.len() as u64);
    assert_eq!(bytes, format::encode_pq_kbi(p).unwrap().as_slice());
    assert!(format::looks_like_pq_kbi(&bytes));
    assert_eq!(format::sniff(&path).unwrap(), format::FileKind::Kbi);

    let back = format::read_pq_kbi(&path).unwrap();
    assert_eq!(&back, p, "{what}: parts differ after the round trip");
    // Bit for bit, floats included (PartialEq on f32 would let -0.0 equal 0.0).
    let f = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(f(&back.centroids), f(&p.centroids));
    assert_eq!(f(&back.pq.codebooks), f(&p.pq.codebooks));
    if let (Some(a), Some(b)) = (&back.refine, &p.refine) {
        assert_eq!(f(&a.vectors), f(&b.vectors));
        assert_eq!(a.k_factor.to_bits(), b.k_factor.to_bits());
    }
    // Written again, the same bytes.
    assert_eq!(format::encode_pq_kbi(&back).unwrap().as_slice(), &bytes[..]);

    let layout = PqKbiLayout::parse(&bytes).unwrap();
    assert_eq!(
        (layout.dim, layout.m, layout.nbits, layout.bbs, layout.nlist),
        (r.dim, r.m, 4, if r.bbs64 { 64 } else { 32 }, r.nlist)
    );
    assert_eq!(layout.by_residual, r.residual);
    assert_eq!(layout.k_factor, p.refine.as_ref().map(|x| x.k_factor));
    let codes: usize = p.lists.iter().map(|l| l.codes.len()).sum();
    assert_eq!(layout.section(PqSectionKind::Codes).len as usize, codes);

    let from_faiss = PqIndex::new(p.clone()).unwrap();
    let from_kbi = PqIndex::new(back).unwrap();
    same_search(&from_faiss, &from_kbi, &case.queries, &what);
    (case, bytes)
}

#[test]
fn l2_x4fs_round_trips() {
    round_trip(Recipe::new(32, 16, Metric::L2));
}

#[test]
fn ip_x4fsr_round_trips() {
    round_trip(Recipe {
        residual: true,
        ..Recipe::new(32, 8, Metric::InnerProduct)
    });
}

#[test]
fn l2_x4fsr_rflat_from_the_factory_round_trips() {
    round_trip(Recipe {
        residual: true,
        refine: Refine::Factory,
        ..Recipe::new(48, 24, Metric::L2)
    });
}

#[test]
fn ip_x4fs_wrapped_rflat_with_odd_m_and_blocks_of_64_round_trips() {
    round_trip(Recipe {
        refine: Refine::Wrapped(3.0),
        bbs64: true,
        ..Recipe::new(30, 15, Metric::InnerProduct)
    });
}

#[test]
fn rvc_v1_shape_pq128x4fs_rflat_round_trips() {
    round_trip(Recipe {
        refine: Refine::Factory,
        nlist: 16,
        add: 800,
        ..Recipe::new(256, 128, Metric::L2)
    });
}

/// A small refined `.kbi` (with empty lists) and its parts.
fn small_kbi() -> (PqParts, Vec<u8>) {
    let r = Recipe {
        refine: Refine::Wrapped(2.0),
        residual: true,
        add: 700,
        nlist: 8,
        ..Recipe::new(16, 8, Metric::L2)
    };
    let case = build(r);
    let bytes = format::encode_pq_kbi(&case.parts)
        .unwrap()
        .as_slice()
        .to_vec();
    (case.parts, bytes)
}

fn decode(b: &[u8]) -> Result<PqParts, FormatError> {
    format::decode_pq_kbi(b, true)
}

fn rehash_header(b: &mut [u8]) {
    let at = PQ_HEADER_LEN - 8;
    let sum = xxh3_64(&b[..at]);
    b[at..PQ_HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

#[test]
fn truncation_at_every_section_boundary_is_an_error() {
    let (_, good) = small_kbi();
    let layout = PqKbiLayout::parse(&good).unwrap();
    let mut cuts: Vec<usize> = vec![0, 4, 8, 11, 12, 64, 104, PQ_HEADER_LEN - 1, PQ_HEADER_LEN];
    for s in layout.sections {
        let r = s.range();
        cuts.extend([r.start, r.start + 1, r.start + r.len() / 2, r.end]);
        cuts.push(r.end.saturating_sub(1));
    }
    cuts.retain(|&c| c < good.len());
    cuts.sort_unstable();
    cuts.dedup();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.kbi");
    for cut in cuts {
        let err = decode(&good[..cut])
            .err()
            .unwrap_or_else(|| panic!("truncated at {cut} read"));
        assert!(
            matches!(
                err,
                FormatError::Truncated { .. } | FormatError::UnknownFormat { .. }
            ),
            "cut at {cut}: {err}"
        );
        // The file readers, PQ and Flat alike.
        std::fs::write(&path, &good[..cut]).unwrap();
        assert!(format::read_pq_kbi(&path).is_err());
        assert!(IvfIndex::open(&path).is_err());
    }
    // One byte more is trailing data, also refused.
    let mut long = good.clone();
    long.push(0);
    let err = decode(&long).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::InvalidField {
                field: "file_len",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_flipped_bit_in_any_section_or_the_header_is_caught() {
    let (_, good) = small_kbi();
    let layout = PqKbiLayout::parse(&good).unwrap();
    let mut spots: Vec<usize> = (8..PQ_HEADER_LEN).collect();
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
            let err = decode(&b)
                .err()
                .unwrap_or_else(|| panic!("flip at {at} bit {bit} read"));
            assert!(
                matches!(
                    err,
                    FormatError::Checksum { .. } | FormatError::UnsupportedVersion { .. }
                ),
                "flip at {at} bit {bit}: {err}"
            );
        }
    }
}

/// Header fields set to 0, max and absurd values, the header checksum fixed so the field
/// checks themselves must catch them.
#[test]
fn absurd_header_values_are_typed_errors() {
    let (parts, good) = small_kbi();
    let fields: &[(usize, usize, &str)] = &[
        (12, 4, "header_len"),
        (16, 4, "dim"),
        (20, 4, "metric"),
        (24, 4, "element"),
        (28, 4, "nprobe"),
        (32, 8, "nlist"),
        (40, 8, "ntotal"),
        (48, 8, "file_len"),
        (56, 4, "section_count"),
        (60, 4, "kind"),
        (64, 4, "M"),
        (68, 4, "nbits"),
        (72, 4, "bbs"),
        (76, 4, "by_residual"),
        (80, 4, "refine"),
        (84, 4, "k_factor"),
        (92, 4, "reserved"),
    ];
    let mut fields = fields.to_vec();
    // Every section table entry: kind, offset, length.
    for i in 0..7 {
        let e = 104 + 32 * i;
        fields.extend([(e, 4, "kind"), (e + 8, 8, "offset"), (e + 16, 8, "len")]);
    }
    for &(at, width, name) in &fields {
        for value in [
            0u64,
            1,
            3,
            16,
            0xFFFF,
            1 << 31,
            u32::MAX as u64,
            u64::MAX,
            1 << 40,
        ] {
            let mut b = good.clone();
            b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            let value = value & (u64::MAX >> (64 - 8 * width));
            if b == good {
                continue;
            }
            rehash_header(&mut b);
            match decode(&b) {
                // Valid alternatives: another stored n_probe; the other metric or residual
                // choice (the sections stay consistent with either).
                Ok(p) => assert!(
                    (name == "nprobe" && value as u32 != 0)
                        || (name == "metric" && value == 1)
                        || (name == "by_residual" && value <= 1),
                    "{name} at {at} = {value} read: {:?}",
                    (p.nprobe, p.metric, p.by_residual)
                ),
                Err(e) => assert!(
                    !matches!(
                        e,
                        FormatError::Checksum {
                            section: "header",
                            ..
                        }
                    ),
                    "{name} at {at} = {value}: {e}"
                ),
            }
        }
    }
    // implem and qbs2 are faiss's choices, kept as they are.
    let mut b = good.clone();
    b[88..92].copy_from_slice(&13i32.to_le_bytes());
    b[96..104].copy_from_slice(&5u64.to_le_bytes());
    rehash_header(&mut b);
    let p = decode(&b).unwrap();
    assert_eq!((p.implem, p.qbs2), (13, 5));
    assert_eq!(p.lists, parts.lists);
}

#[test]
fn refined_ids_that_do_not_number_the_rows_are_refused() {
    let (parts, _) = small_kbi();
    let mut bad = parts.clone();
    // Two lists swap one id for a duplicate: still ntotal ids, but not 0..ntotal each once.
    let l = bad.lists.iter().position(|l| l.ids.len() >= 2).unwrap();
    bad.lists[l].ids[1] = bad.lists[l].ids[0];
    assert!(
        format::encode_pq_kbi(&bad).is_err(),
        "the writer refuses them"
    );
    // Written by hand: the same ids with a fixed checksum.
    let mut b = format::encode_pq_kbi(&parts).unwrap().as_slice().to_vec();
    let layout = PqKbiLayout::parse(&b).unwrap();
    let ids = layout.section(PqSectionKind::Ids);
    let first: usize = parts.lists[..l].iter().map(|x| x.ids.len()).sum();
    let at = ids.offset as usize + 8 * (first + 1);
    let dup = parts.lists[l].ids[0];
    b[at..at + 8].copy_from_slice(&dup.to_le_bytes());
    let sum = xxh3_64(&b[ids.range()]);
    let e = 104 + 32 * 4 + 24;
    b[e..e + 8].copy_from_slice(&sum.to_le_bytes());
    rehash_header(&mut b);
    let err = decode(&b).unwrap_err();
    assert!(matches!(err, FormatError::BadLists(_)), "{err}");
    assert!(err.to_string().contains("twice"), "{err}");
}

#[test]
fn the_flat_readers_refuse_a_pq_kbi_by_name() {
    let (_, bytes) = small_kbi();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pq.kbi");
    std::fs::write(&path, &bytes).unwrap();
    let errors = [
        IvfIndex::open(&path).unwrap_err(),
        format::KbiLayout::parse(&bytes).unwrap_err(),
    ];
    for err in errors {
        let text = err.to_string();
        assert!(
            matches!(err, FormatError::InvalidField { field: "kind", .. }),
            "{text}"
        );
        assert!(text.contains("an IVF-PQ FastScan index"), "{text}");
        assert!(text.contains("PQ8x4fsr,RFlat"), "{text}");
        assert!(text.contains("AnyIndex"), "{text}");
    }
    // The header reader and the any-type opener take it for what it is.
    let h = format::read_header(&path).unwrap();
    assert_eq!(
        h.structure,
        format::IndexStructure::IvfPqFastScan { refined: true }
    );
    let any = knnblend::index::AnyIndex::open(&path).unwrap();
    assert!(any.as_pq().is_some_and(|p| p.is_mapped()));
    assert_eq!(h, any.header());
    // A damaged PQ header is reported as damaged, not misread as Flat.
    let mut b = bytes.clone();
    b[70] ^= 1;
    let err = format::KbiLayout::parse(&b).unwrap_err();
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

#[test]
fn the_pq_reader_refuses_a_flat_kbi() {
    let dim = 8;
    let parts = format::IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: vec![0.0; dim],
        lists: vec![format::ListParts {
            ids: vec![0, 1],
            vectors: (0..2 * dim).map(|i| i as f32).collect(),
        }],
        metadata: Default::default(),
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flat.kbi");
    format::write_kbi(&path, &parts).unwrap();
    let head = std::fs::read(&path).unwrap();
    assert!(!format::looks_like_pq_kbi(&head));
    let err = format::read_pq_kbi(&path).unwrap_err().to_string();
    assert!(err.contains("IVF-Flat"), "{err}");
    // And the Flat file still opens as before.
    assert_eq!(IvfIndex::open(&path).unwrap().to_parts(), parts);
}
