//! The faiss IVF-PQ FastScan reader (`IwPf`, bare or refined by `IxRF`) against faiss itself:
//! indexes built with faiss's factory (`IVF16,PQ{M}x4fs[r][,RFlat]`, RVC's `PQ128` at 256
//! dimensions and `PQ384`/`PQ192` at 768), L2 and inner product, read back and compared with
//! what faiss reports about them: shape, lists and ids, centroids, the codes (through faiss's
//! own encoder, `sa_encode`), the codebooks and `by_residual` (a small decoder here against
//! faiss's `reconstruct`), the refine vectors and `k_factor`. Then hand-written files in the
//! same layout, truncated and corrupted everywhere: typed errors, never a panic and never an
//! allocation larger than the file.

mod common;
mod handmade;

use std::os::raw::c_int;

use common::Clustered;
use faiss::index::refine_flat::RefineFlatIndex;
use faiss::{index_factory, Idx, Index, MetricType};
use handmade::{Field, Written};
use knnblend::format::{
    self, FormatError, Metadata, Metric, PqList, PqParts, ProductQuantizer, RefineFlat, PQ_KSUB,
};

#[global_allocator]
static ALLOCATOR: handmade::Measuring = handmade::Measuring;

/// The parts of faiss's C API this test asks about an index (the faiss crate wraps none of
/// them); linked from the static faiss the `faiss` crate builds.
#[allow(non_snake_case)]
mod ffi {
    use std::os::raw::c_int;
    pub type FaissIndex = std::ffi::c_void;
    extern "C" {
        pub fn faiss_IndexIVF_cast(index: *mut FaissIndex) -> *mut FaissIndex;
        pub fn faiss_IndexIVF_nlist(index: *const FaissIndex) -> usize;
        pub fn faiss_IndexIVF_nprobe(index: *const FaissIndex) -> usize;
        pub fn faiss_IndexIVF_set_nprobe(index: *mut FaissIndex, nprobe: usize);
        pub fn faiss_IndexIVF_quantizer(index: *const FaissIndex) -> *mut FaissIndex;
        pub fn faiss_IndexIVF_get_list_size(index: *const FaissIndex, list_no: usize) -> usize;
        pub fn faiss_IndexIVF_invlists_get_ids(
            index: *const FaissIndex,
            list_no: usize,
            invlist: *mut i64,
        );
        pub fn faiss_IndexIVF_make_direct_map(index: *mut FaissIndex, on: c_int) -> c_int;
        pub fn faiss_Index_reconstruct(index: *const FaissIndex, key: i64, out: *mut f32) -> c_int;
        pub fn faiss_Index_reconstruct_n(
            index: *const FaissIndex,
            i0: i64,
            n: i64,
            out: *mut f32,
        ) -> c_int;
        pub fn faiss_Index_sa_code_size(index: *const FaissIndex, size: *mut usize) -> c_int;
        pub fn faiss_Index_sa_encode(
            index: *const FaissIndex,
            n: i64,
            x: *const f32,
            bytes: *mut u8,
        ) -> c_int;
        pub fn faiss_IndexRefineFlat_cast(index: *mut FaissIndex) -> *mut FaissIndex;
        pub fn faiss_IndexRefineFlat_k_factor(index: *const FaissIndex) -> f32;
    }
}

fn ok(rc: c_int, what: &str) {
    assert_eq!(rc, 0, "faiss failed: {what}");
}

/// What faiss says about an IVF-PQ FastScan index (the base of a refined one).
struct FaissIvfView {
    nlist: usize,
    nprobe: usize,
    centroids: Vec<f32>,
    lists: Vec<Vec<i64>>,
}

/// Reads an IVF index's shape, centroids and lists through faiss's C API.
unsafe fn ivf_view(ptr: *mut ffi::FaissIndex, dim: usize) -> FaissIvfView {
    let ivf = ffi::faiss_IndexIVF_cast(ptr);
    assert!(!ivf.is_null(), "not an IndexIVF");
    let nlist = ffi::faiss_IndexIVF_nlist(ivf);
    let mut centroids = vec![0f32; nlist * dim];
    ok(
        ffi::faiss_Index_reconstruct_n(
            ffi::faiss_IndexIVF_quantizer(ivf),
            0,
            nlist as i64,
            centroids.as_mut_ptr(),
        ),
        "the quantizer's centroids",
    );
    let lists = (0..nlist)
        .map(|l| {
            let mut ids = vec![0i64; ffi::faiss_IndexIVF_get_list_size(ivf, l)];
            ffi::faiss_IndexIVF_invlists_get_ids(ivf, l, ids.as_mut_ptr());
            ids
        })
        .collect();
    FaissIvfView {
        nlist,
        nprobe: ffi::faiss_IndexIVF_nprobe(ivf),
        centroids,
        lists,
    }
}

/// faiss's own encoding of `x` (`sa_encode`): the list number (little-endian, as few bytes as
/// nlist needs), then the 4-bit codes, two per byte, low nibble first. For a refined index,
/// the base's code comes first.
fn faiss_codes(ptr: *mut ffi::FaissIndex, x: &[f32], dim: usize) -> (usize, Vec<u8>) {
    let mut size = 0usize;
    unsafe {
        ok(
            ffi::faiss_Index_sa_code_size(ptr, &mut size),
            "sa_code_size",
        )
    };
    let n = x.len() / dim;
    let mut out = vec![0u8; n * size];
    unsafe {
        ok(
            ffi::faiss_Index_sa_encode(ptr, n as i64, x.as_ptr(), out.as_mut_ptr()),
            "sa_encode",
        )
    };
    (size, out)
}

/// The 4-bit code of sub-quantizer `sq` of vector `i` of a list, from faiss's block layout
/// (`pq4_pack_codes`; see `format::PqParts`).
fn packed_code(p: &PqParts, codes: &[u8], i: usize, sq: usize) -> u8 {
    let bbs = p.bbs;
    let (block, within) = (i / bbs, i % bbs);
    let group = block * p.block_bytes() + (sq / 2) * bbs + (within / 32) * 32;
    let v = within % 16;
    let k = if v < 8 { 2 * v } else { 2 * (v - 8) + 1 };
    let byte = codes[group + k + 16 * (sq % 2)];
    if within % 32 >= 16 {
        byte >> 4
    } else {
        byte & 15
    }
}

/// Decodes vector `i` of list `l` with the product quantizer (and its centroid, by residual).
fn decode(p: &PqParts, l: usize, i: usize) -> Vec<f32> {
    let dsub = p.pq.dsub;
    let mut out = Vec::with_capacity(p.dim);
    for sq in 0..p.pq.m {
        let c = packed_code(p, &p.lists[l].codes, i, sq) as usize;
        out.extend_from_slice(&p.pq.codebook(sq)[c * dsub..(c + 1) * dsub]);
    }
    if p.by_residual {
        for (v, c) in out.iter_mut().zip(&p.centroids[l * p.dim..]) {
            *v += c;
        }
    }
    out
}

/// How a case is built.
#[derive(Clone, Copy)]
struct Recipe {
    dim: usize,
    m: usize,
    metric: Metric,
    residual: bool,
    /// `,RFlat`: through the factory string, or by wrapping the base (so faiss can be asked
    /// about the base too) with this `k_factor`.
    refine: Refine,
    /// Vectors to train on and to add.
    train: usize,
    add: usize,
    /// Add with ids `add − 1 … 0`.
    reversed_ids: bool,
    /// Keep a direct map in the file.
    direct_map: bool,
    /// `_64`: blocks of 64 vectors.
    bbs64: bool,
    nlist: usize,
    seed: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum Refine {
    None,
    Factory,
    Wrapped(f32),
}

impl Recipe {
    fn new(dim: usize, m: usize, metric: Metric) -> Recipe {
        Recipe {
            dim,
            m,
            metric,
            residual: false,
            refine: Refine::None,
            train: 2000,
            add: 2000,
            reversed_ids: false,
            direct_map: false,
            bbs64: false,
            nlist: 16,
            seed: dim as u64,
        }
    }

    fn base_factory(&self) -> String {
        format!(
            "IVF{},PQ{}x4fs{}{}",
            self.nlist,
            self.m,
            if self.residual { "r" } else { "" },
            if self.bbs64 { "_64" } else { "" }
        )
    }
}

fn faiss_metric(m: Metric) -> MetricType {
    match m {
        Metric::L2 => MetricType::L2,
        Metric::InnerProduct => MetricType::InnerProduct,
    }
}

/// A file faiss wrote, what we read from it, and what faiss reports.
struct Case {
    recipe: Recipe,
    data: Vec<f32>,
    bytes: Vec<u8>,
    ours: PqParts,
    view: Option<FaissIvfView>,
    /// faiss's `reconstruct` of every id (the base's decoding), when faiss can be asked.
    reconstructed: Option<Vec<f32>>,
    /// faiss's `sa_encode` of the added vectors (code size, codes), and whether each code
    /// carries the refinement's after the base's (a refined index asked as a whole).
    encoded: ((usize, Vec<u8>), bool),
    /// faiss's `reconstruct` of every id of a refined index (its exact vectors) and k_factor.
    refined: Option<(Vec<f32>, f32)>,
}

fn build(r: Recipe) -> Case {
    let gen = Clustered::new(r.dim, 24, r.seed);
    let mut train = gen.rows(r.train, r.seed + 1);
    let mut data = gen.rows(r.add, r.seed + 2);
    if r.metric == Metric::InnerProduct {
        for v in train
            .chunks_exact_mut(r.dim)
            .chain(data.chunks_exact_mut(r.dim))
        {
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= n);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fastscan.index");
    let dim = r.dim;
    let metric = faiss_metric(r.metric);
    let (view, reconstructed, encoded, refined);
    match r.refine {
        Refine::None | Refine::Wrapped(_) => {
            let mut base = index_factory(dim as u32, r.base_factory(), metric).unwrap();
            base.train(&train).unwrap();
            let ptr = base.inner_ptr() as *mut ffi::FaissIndex;
            unsafe { ffi::faiss_IndexIVF_set_nprobe(ffi::faiss_IndexIVF_cast(ptr), 3) };
            if r.direct_map {
                unsafe { ok(ffi::faiss_IndexIVF_make_direct_map(ptr, 1), "direct map") };
            }
            // Whichever owns the base (`ptr` stays valid while it lives).
            let (bare, wrapped) = if let Refine::Wrapped(k_factor) = r.refine {
                let mut w = RefineFlatIndex::new(base).unwrap();
                w.set_k_factor(k_factor);
                w.add(&data).unwrap();
                faiss::write_index(&w, path.to_str().unwrap()).unwrap();
                (None, Some(w))
            } else {
                if r.reversed_ids {
                    let ids: Vec<Idx> = (0..r.add as u64).rev().map(Idx::new).collect();
                    base.add_with_ids(&data, &ids).unwrap();
                } else {
                    base.add(&data).unwrap();
                }
                faiss::write_index(&base, path.to_str().unwrap()).unwrap();
                (Some(base), None)
            };
            // The base, asked after the file is written (so a file without a direct map
            // stays without).
            unsafe {
                view = Some(ivf_view(ptr, dim));
                if !r.direct_map {
                    ok(ffi::faiss_IndexIVF_make_direct_map(ptr, 1), "direct map");
                }
                let mut all = vec![0f32; r.add * dim];
                for (id, out) in all.chunks_exact_mut(dim).enumerate() {
                    ok(
                        ffi::faiss_Index_reconstruct(ptr, id as i64, out.as_mut_ptr()),
                        "reconstruct",
                    );
                }
                reconstructed = Some(all);
            }
            encoded = (faiss_codes(ptr, &data, dim), false);
            refined = wrapped.as_ref().map(|w| {
                let mut all = vec![0f32; r.add * dim];
                w.reconstruct_n(Idx::new(0), r.add, &mut all).unwrap();
                (all, w.k_factor())
            });
            drop((bare, wrapped));
        }
        Refine::Factory => {
            let description = format!("{},RFlat", r.base_factory());
            let mut index = index_factory(dim as u32, &description, metric).unwrap();
            index.train(&train).unwrap();
            index.add(&data).unwrap();
            faiss::write_index(&index, path.to_str().unwrap()).unwrap();
            let ptr = index.inner_ptr() as *mut ffi::FaissIndex;
            let rf = unsafe { ffi::faiss_IndexRefineFlat_cast(ptr) };
            assert!(!rf.is_null());
            let mut all = vec![0f32; r.add * dim];
            index.reconstruct_n(Idx::new(0), r.add, &mut all).unwrap();
            refined = Some((all, unsafe { ffi::faiss_IndexRefineFlat_k_factor(rf) }));
            encoded = (faiss_codes(ptr, &data, dim), true);
            view = None;
            reconstructed = None;
        }
    }
    let bytes = std::fs::read(&path).unwrap();
    let ours =
        format::read_faiss_fastscan(&bytes).unwrap_or_else(|e| panic!("{}: {e}", r.base_factory()));
    let from_file = format::read_faiss_fastscan_file(&path).unwrap();
    assert_eq!(from_file.metadata.sources, ["fastscan.index"]);
    assert_eq!(
        PqParts {
            metadata: ours.metadata.clone(),
            ..from_file
        },
        ours,
        "reading the file streamed and reading its bytes differ"
    );
    Case {
        recipe: r,
        data,
        bytes,
        ours,
        view,
        reconstructed,
        encoded,
        refined,
    }
}

/// Checks everything we read against what faiss reports.
fn check(case: &Case) {
    let (r, p) = (&case.recipe, &case.ours);
    let what = r.base_factory();
    p.validate().unwrap();
    assert_eq!(
        (p.dim, p.metric, p.nlist()),
        (r.dim, r.metric, r.nlist),
        "{what}"
    );
    assert_eq!(p.ntotal(), r.add, "{what}");
    assert_eq!(
        (p.pq.m, p.pq.dsub, p.pq.nbits()),
        (r.m, r.dim / r.m, 4),
        "{what}"
    );
    assert_eq!(p.pq.codebooks.len(), r.m * PQ_KSUB * (r.dim / r.m));
    assert_eq!(p.by_residual, r.residual, "{what}");
    assert_eq!(p.bbs, if r.bbs64 { 64 } else { 32 }, "{what}");
    for (l, list) in p.lists.iter().enumerate() {
        assert_eq!(
            list.codes.len(),
            list.ids.len().div_ceil(p.bbs) * p.block_bytes()
        );
        // Slots past the end of the list are zero in faiss's layout.
        let n = list.ids.len();
        for i in n..n.div_ceil(p.bbs) * p.bbs {
            for sq in 0..p.pq.m2() {
                assert_eq!(packed_code(p, &list.codes, i, sq), 0, "list {l} slot {i}");
            }
        }
    }
    assert_eq!(
        p.metadata.features,
        match r.dim {
            256 => "rvc-v1-256".to_string(),
            768 => "rvc-v2-768".to_string(),
            d => format!("unknown-{d}"),
        }
    );

    if let Some(view) = &case.view {
        assert_eq!(view.nlist, p.nlist());
        assert_eq!(p.nprobe as usize, view.nprobe);
        assert_eq!(p.nprobe, 3);
        assert_eq!(p.centroids, view.centroids, "{what}: centroids");
        let ids: Vec<&Vec<i64>> = p.lists.iter().map(|l| &l.ids).collect();
        assert_eq!(ids, view.lists.iter().collect::<Vec<_>>(), "{what}: ids");
    }

    // The codes, against faiss's own encoder: vector `v` was added with id `v` (or
    // `add − 1 − v`), and its stored code is what `sa_encode` gives for it.
    let ((size, codes), with_refine) = &case.encoded;
    let coarse = size - p.pq.code_size() - if *with_refine { r.dim * 4 } else { 0 };
    let mut position = std::collections::HashMap::new();
    for (l, list) in p.lists.iter().enumerate() {
        for (i, &id) in list.ids.iter().enumerate() {
            position.insert(id, (l, i));
        }
    }
    for v in 0..r.add {
        let id = if r.reversed_ids { r.add - 1 - v } else { v } as i64;
        let code = &codes[v * size..(v + 1) * size];
        let (l, i) = position[&id];
        let mut list_no = 0usize;
        for (b, &byte) in code[..coarse].iter().enumerate() {
            list_no |= (byte as usize) << (8 * b);
        }
        assert_eq!(
            list_no, l,
            "{what}: vector {v} is in list {l}, faiss encodes {list_no}"
        );
        for sq in 0..p.pq.m {
            let want = code[coarse + sq / 2] >> (4 * (sq % 2)) & 15;
            assert_eq!(
                packed_code(p, &p.lists[l].codes, i, sq),
                want,
                "{what}: vector {v} sub-quantizer {sq}"
            );
        }
    }

    // The codebooks and `by_residual`, against faiss's decoding. (faiss's `reconstruct`
    // addresses the packed codes as if blocks held 32 vectors, so with larger blocks only
    // the first 32 slots of each block are compared.)
    if let Some(all) = &case.reconstructed {
        let mut compared = 0;
        for (l, list) in p.lists.iter().enumerate() {
            for (i, &id) in list.ids.iter().enumerate() {
                if i % p.bbs >= 32 {
                    continue;
                }
                let want = &all[id as usize * r.dim..][..r.dim];
                let got = decode(p, l, i);
                assert!(
                    got.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{what}: id {id} decodes to {:?}…, faiss reconstructs {:?}…",
                    &got[..4],
                    &want[..4]
                );
                compared += 1;
            }
        }
        assert!(compared >= r.add / 2);
    }

    match (&p.refine, &case.refined) {
        (None, None) => {}
        (Some(ours), Some((vectors, k_factor))) => {
            assert_eq!(&ours.vectors, vectors, "{what}: refine vectors (faiss)");
            assert_eq!(ours.vectors, case.data, "{what}: refine vectors (data)");
            assert_eq!(ours.k_factor, *k_factor);
        }
        _ => panic!("{what}: refinement read {:?}", p.refine.is_some()),
    }

    // The IVF-Flat reader and the header reader still refuse these files by name.
    let err = format::read_faiss_index(&case.bytes).unwrap_err();
    assert!(
        matches!(err, FormatError::UnsupportedFaissType { .. }),
        "{err}"
    );
}

#[test]
fn v1_256_l2_pq128x4fs_rflat_reads_as_faiss_reports() {
    let case = build(Recipe {
        refine: Refine::Wrapped(3.0),
        add: 3000,
        ..Recipe::new(256, 128, Metric::L2)
    });
    check(&case);
    assert_eq!(case.ours.refine.as_ref().unwrap().k_factor, 3.0);
    assert_eq!(
        case.ours.metadata.extra["imported_from"],
        "faiss IndexRefineFlat(IndexIVFPQFastScan)"
    );
}

#[test]
fn v1_256_ip_pq128x4fsr_rflat_from_the_factory_string() {
    let case = build(Recipe {
        residual: true,
        refine: Refine::Factory,
        seed: 7,
        ..Recipe::new(256, 128, Metric::InnerProduct)
    });
    check(&case);
    assert_eq!(case.ours.refine.as_ref().unwrap().k_factor, 1.0);
}

#[test]
fn v1_256_ip_pq128x4fs_bare_with_a_direct_map() {
    check(&build(Recipe {
        seed: 11,
        direct_map: true,
        ..Recipe::new(256, 128, Metric::InnerProduct)
    }));
}

#[test]
fn v2_768_l2_pq384x4fsr_bare_with_reversed_ids() {
    let case = build(Recipe {
        residual: true,
        reversed_ids: true,
        ..Recipe::new(768, 384, Metric::L2)
    });
    check(&case);
    assert_eq!(
        case.ours.lists.iter().map(|l| l.ids.len()).sum::<usize>(),
        2000
    );
    assert_eq!(
        case.ours.metadata.extra["imported_from"],
        "faiss IndexIVFPQFastScan"
    );
}

#[test]
fn v2_768_ip_pq192x4fs_rflat() {
    check(&build(Recipe {
        refine: Refine::Wrapped(2.5),
        ..Recipe::new(768, 192, Metric::InnerProduct)
    }));
}

#[test]
fn v1_256_l2_pq128x4fsr_rflat_with_empty_lists() {
    // Trained on everything, then only a few vectors added: most lists stay empty.
    for refine in [Refine::None, Refine::Wrapped(4.0)] {
        let case = build(Recipe {
            residual: true,
            refine,
            add: 5,
            ..Recipe::new(256, 128, Metric::L2)
        });
        check(&case);
        let empty = case.ours.lists.iter().filter(|l| l.ids.is_empty()).count();
        assert!(empty >= 11, "{empty} empty lists");
        assert!(case
            .ours
            .lists
            .iter()
            .filter(|l| l.ids.is_empty())
            .all(|l| l.codes.is_empty()));
    }
}

#[test]
fn odd_m_and_blocks_of_64_vectors() {
    for (bbs64, residual) in [(true, false), (true, true), (false, true)] {
        check(&build(Recipe {
            bbs64,
            residual,
            refine: Refine::Wrapped(1.5),
            nlist: 4,
            train: 600,
            add: 300,
            ..Recipe::new(24, 3, Metric::L2)
        }));
    }
}

/// Re-writing what was read in faiss's layout gives faiss's file back, byte for byte: every
/// field of the file is accounted for.
#[test]
fn rewriting_what_was_read_gives_faiss_s_bytes_back() {
    for r in [
        Recipe {
            refine: Refine::Wrapped(2.0),
            nlist: 4,
            train: 600,
            add: 300,
            ..Recipe::new(24, 3, Metric::L2)
        },
        Recipe {
            residual: true,
            bbs64: true,
            nlist: 8,
            train: 600,
            add: 100,
            ..Recipe::new(32, 16, Metric::InnerProduct)
        },
    ] {
        let case = build(r);
        check(&case);
        let again = write_faiss(&case.ours, &Style::default());
        assert!(again.bytes == case.bytes, "{}", r.base_factory());
    }
}

#[test]
fn trained_only_indexes_are_refused_as_such() {
    for suffix in ["", ",RFlat"] {
        let d = 16;
        let train = Clustered::new(d, 8, 3).rows(700, 4);
        let mut index =
            index_factory(d as u32, format!("IVF4,PQ8x4fs{suffix}"), MetricType::L2).unwrap();
        index.train(&train).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trained.index");
        faiss::write_index(&index, path.to_str().unwrap()).unwrap();
        let err = format::read_faiss_fastscan(&std::fs::read(&path).unwrap()).unwrap_err();
        assert!(matches!(err, FormatError::TrainedOnly), "{suffix}: {err}");
    }
}

/// Files of other kinds are refused with a message that names what they are.
#[test]
fn other_faiss_types_are_refused_by_name() {
    let d = 16;
    let train = Clustered::new(d, 8, 5).rows(1000, 6);
    let dir = tempfile::tempdir().unwrap();
    for (description, want) in [
        ("IVF4,PQ8np", "IVF-PQ without FastScan"),
        ("IVF4,PQ4x8np", "IVF-PQ without FastScan"),
        ("IVF4,PQ8x4np", "IVF-PQ without FastScan"),
        ("OPQ8,IVF4,PQ8x4fs", "pre-transform"),
        ("OPQ8,IVF4,PQ8x4fs,RFlat", "pre-transform"),
        ("IVF4,Flat", "read_faiss_index"),
        ("IVF4,Flat,RFlat", "the refined (base) index is `IwFl`"),
        ("IVF4,PQ8x4fs,Refine(SQ8)", "not a flat index"),
        ("PQ8x4fs", "without inverted lists"),
        ("HNSW8", "HNSW"),
    ] {
        let mut index = index_factory(d as u32, description, MetricType::L2).unwrap();
        index.train(&train).unwrap();
        index.add(&train[..200 * d]).unwrap();
        let path = dir.path().join("other.index");
        faiss::write_index(&index, path.to_str().unwrap()).unwrap();
        let err = format::read_faiss_fastscan(&std::fs::read(&path).unwrap()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, FormatError::BadFaiss(_)),
            "{description}: {msg}"
        );
        assert!(msg.contains(want), "{description}: {msg}");
    }
    let err = format::read_faiss_fastscan(b"RIFF\0\0\0\0WAVE").unwrap_err();
    assert!(matches!(err, FormatError::UnknownFormat { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hand-written files in faiss's layout, for corruption.

/// The free choices of a hand-written file (the default is what faiss writes).
#[derive(Clone, Copy, Default)]
struct Style {
    /// Direct map type: 0 none, 1 array (one entry per vector), 2 hashtable.
    direct_map: u8,
    /// faiss writes a flat index as `IxF2` (L2) or `IxFI` (inner product); `IxFl` is generic.
    generic_flat: bool,
}

struct W {
    b: Vec<u8>,
    fields: Vec<Field>,
}

impl W {
    fn put(&mut self, name: &'static str, bytes: &[u8]) {
        self.fields.push(Field {
            name,
            at: self.b.len(),
            width: bytes.len(),
        });
        self.b.extend_from_slice(bytes);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.b.extend_from_slice(bytes);
    }
    /// A length-prefixed vector: its count as a field, its first item as a field, the rest raw.
    fn vector(&mut self, count: &'static str, first: &'static str, items: &[Vec<u8>]) {
        self.put(count, &(items.len() as u64).to_le_bytes());
        for (i, item) in items.iter().enumerate() {
            if i == 0 {
                self.put(first, item);
            } else {
                self.raw(item);
            }
        }
    }
    fn header(&mut self, names: [&'static str; 4], d: usize, ntotal: usize, metric: i32) {
        self.put(names[0], &(d as i32).to_le_bytes());
        self.put(names[1], &(ntotal as i64).to_le_bytes());
        self.raw(&(1i64 << 20).to_le_bytes());
        self.raw(&(1i64 << 20).to_le_bytes());
        self.put(names[2], &[1]);
        self.put(names[3], &metric.to_le_bytes());
    }
    fn flat_type(&mut self, name: &'static str, metric: Metric, style: &Style) {
        self.put(
            name,
            match (style.generic_flat, metric) {
                (true, _) => b"IxFl",
                (false, Metric::L2) => b"IxF2",
                (false, Metric::InnerProduct) => b"IxFI",
            },
        );
    }
}

fn floats(v: &[f32]) -> Vec<Vec<u8>> {
    v.iter().map(|x| x.to_le_bytes().to_vec()).collect()
}

/// `p` in faiss's `write_index` layout (`IxRF` around `IwPf` when it has a refinement).
fn write_faiss(p: &PqParts, style: &Style) -> Written {
    let (d, nlist, ntotal) = (p.dim, p.nlist(), p.ntotal());
    let metric: i32 = match p.metric {
        Metric::L2 => 1,
        Metric::InnerProduct => 0,
    };
    let mut w = W {
        b: Vec::new(),
        fields: Vec::new(),
    };
    if p.refine.is_some() {
        w.put("index type", b"IxRF");
        w.header(
            ["rf d", "rf ntotal", "rf is_trained", "rf metric"],
            d,
            ntotal,
            metric,
        );
        w.put("base type", b"IwPf");
    } else {
        w.put("index type", b"IwPf");
    }
    w.header(["d", "ntotal", "is_trained", "metric"], d, ntotal, metric);
    w.put("nlist", &(nlist as u64).to_le_bytes());
    w.put("nprobe", &(p.nprobe as u64).to_le_bytes());
    w.flat_type("quantizer type", p.metric, style);
    w.header(
        [
            "quantizer d",
            "quantizer ntotal",
            "quantizer is_trained",
            "quantizer metric",
        ],
        d,
        nlist,
        metric,
    );
    w.vector(
        "centroid count",
        "first centroid value",
        &floats(&p.centroids),
    );
    w.put("direct map type", &[style.direct_map]);
    let ids: Vec<Vec<u8>> = if style.direct_map == 0 {
        vec![]
    } else {
        (0..ntotal as i64)
            .map(|i| i.to_le_bytes().to_vec())
            .collect()
    };
    w.vector("direct map length", "first direct map entry", &ids);
    if style.direct_map == 2 {
        let pairs: Vec<Vec<u8>> = (0..2i64)
            .map(|i| [i.to_le_bytes(), i.to_le_bytes()].concat())
            .collect();
        w.vector(
            "direct map hashtable length",
            "first hashtable entry",
            &pairs,
        );
    }
    let (m2, code_size) = (p.pq.m2() as u64, p.pq.code_size() as u64);
    w.put("by_residual", &[p.by_residual as u8]);
    w.put("code_size", &code_size.to_le_bytes());
    w.put("bbs", &(p.bbs as i32).to_le_bytes());
    w.put("M2", &m2.to_le_bytes());
    w.put("implem", &p.implem.to_le_bytes());
    w.put("qbs2", &p.qbs2.to_le_bytes());
    w.put("pq d", &(d as u64).to_le_bytes());
    w.put("pq M", &(p.pq.m as u64).to_le_bytes());
    w.put("pq nbits", &4u64.to_le_bytes());
    w.vector(
        "codebook count",
        "first codebook value",
        &floats(&p.pq.codebooks),
    );
    w.put("inverted lists type", b"ilbl");
    w.put("inverted lists nlist", &(nlist as u64).to_le_bytes());
    // faiss's block lists have no code size of their own (`INVALID_CODE_SIZE`).
    w.put("inverted lists code_size", &u64::MAX.to_le_bytes());
    w.put("n_per_block", &(p.bbs as u64).to_le_bytes());
    w.put("block_size", &(p.block_bytes() as u64).to_le_bytes());
    for l in &p.lists {
        let ids: Vec<Vec<u8>> = l.ids.iter().map(|i| i.to_le_bytes().to_vec()).collect();
        w.vector("list size", "first id of a list", &ids);
        let codes: Vec<Vec<u8>> = l.codes.iter().map(|&b| vec![b]).collect();
        w.vector("list code bytes", "first code byte of a list", &codes);
    }
    if let Some(rf) = &p.refine {
        w.flat_type("refine type", p.metric, style);
        w.header(
            [
                "refine d",
                "refine ntotal",
                "refine is_trained",
                "refine metric",
            ],
            d,
            ntotal,
            metric,
        );
        w.vector(
            "refine value count",
            "first refine value",
            &floats(&rf.vectors),
        );
        w.put("k_factor", &rf.k_factor.to_le_bytes());
    }
    Written {
        bytes: w.b,
        fields: w.fields,
    }
}

/// Small parts: d 4, M 2 (or 3 sub-vectors of d 6 when `odd`), 3 lists (one of 33 vectors,
/// two blocks; one empty), codes that are not all zero.
fn small_parts(metric: Metric, residual: bool, refine: bool, odd: bool) -> PqParts {
    let (dim, m): (usize, usize) = if odd { (6, 3) } else { (4, 2) };
    let dsub = dim / m;
    let sizes = [33usize, 0, 5];
    let bbs = 32;
    let code_size = m.div_ceil(2);
    let mut next = 0i64;
    let lists = sizes
        .iter()
        .map(|&n| {
            let ids: Vec<i64> = (0..n as i64).map(|i| next + i).collect();
            next += n as i64;
            let blocks = n.div_ceil(bbs);
            let mut codes = vec![0u8; blocks * bbs * code_size];
            // Only the slots of real vectors carry codes (faiss leaves the rest zero).
            for (i, byte) in codes.iter_mut().enumerate() {
                *byte = (i * 37 % 251) as u8;
            }
            PqList { ids, codes }
        })
        .collect();
    let ntotal = sizes.iter().sum::<usize>();
    PqParts {
        dim,
        metric,
        nprobe: 2,
        centroids: (0..3 * dim).map(|i| i as f32 * 0.5).collect(),
        pq: ProductQuantizer {
            m,
            dsub,
            codebooks: (0..m * PQ_KSUB * dsub)
                .map(|i| i as f32 * 0.25 - 3.0)
                .collect(),
        },
        by_residual: residual,
        bbs,
        implem: 0,
        qbs2: 0,
        lists,
        refine: refine.then(|| RefineFlat {
            vectors: (0..ntotal * dim).map(|i| (i % 17) as f32 - 8.0).collect(),
            k_factor: 2.0,
        }),
        metadata: Metadata::default(),
    }
}

fn variants() -> Vec<(PqParts, Written)> {
    let mut out = Vec::new();
    for (metric, residual, refine, odd, style) in [
        (Metric::L2, false, false, false, Style::default()),
        (Metric::L2, true, true, false, Style::default()),
        (
            Metric::InnerProduct,
            false,
            true,
            true,
            Style {
                direct_map: 1,
                generic_flat: true,
            },
        ),
        (
            Metric::InnerProduct,
            true,
            false,
            true,
            Style {
                direct_map: 2,
                generic_flat: false,
            },
        ),
    ] {
        let p = small_parts(metric, residual, refine, odd);
        let w = write_faiss(&p, &style);
        out.push((p, w));
    }
    out
}

/// The largest allocation a reader may make for an input of `len` bytes.
fn allocation_cap(len: usize) -> usize {
    4 * len + (1 << 20)
}

/// Reads, checking the allocation cap; whatever is accepted must be valid parts.
fn read_capped(bytes: &[u8]) -> Result<PqParts, FormatError> {
    let (r, largest) = handmade::largest_allocation(|| format::read_faiss_fastscan(bytes));
    assert!(
        largest <= allocation_cap(bytes.len()),
        "{largest} bytes allocated for a {}-byte file",
        bytes.len()
    );
    match &r {
        Ok(parts) => parts.validate().unwrap(),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    r
}

#[test]
fn hand_written_files_read_back_as_written() {
    for (p, w) in variants() {
        let mut got = read_capped(&w.bytes).unwrap();
        assert_eq!(got.metadata.frames, p.ntotal() as u64);
        got.metadata = Metadata::default();
        assert_eq!(got, p);
    }
}

#[test]
fn truncated_at_every_byte_names_what_is_missing() {
    for (_, file) in variants() {
        let good = &file.bytes;
        for cut in 0..good.len() {
            match read_capped(&good[..cut]) {
                Err(FormatError::Truncated {
                    what,
                    needed,
                    actual,
                }) => assert!(
                    !what.is_empty() && needed > actual && actual == cut as u64,
                    "cut at {cut}: {what} {needed} {actual}"
                ),
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn every_field_set_to_zero_max_or_absurd_is_a_typed_error_or_harmless() {
    let values: [u64; 11] = [
        0,
        1,
        2,
        3,
        0x7F,
        1 << 31,
        u32::MAX as u64,
        1 << 40,
        u64::MAX,
        i64::MAX as u64,
        i64::MIN as u64,
    ];
    for (_, file) in variants() {
        for field in &file.fields {
            for value in values {
                let mut b = file.bytes.clone();
                let wide = [value.to_le_bytes(), value.to_le_bytes()].concat();
                b[field.at..field.at + field.width].copy_from_slice(&wide[..field.width]);
                if b == file.bytes {
                    continue;
                }
                let r = read_capped(&b);
                // Structural fields must be refused when changed; the others (n_probe,
                // is_trained, implem, qbs2, values, an id of a bare index, M 2 → 1 at d 4,
                // which packs the same bytes …) may read as a different index, which must
                // then be valid (checked by `read_capped`).
                let must_fail = !matches!(
                    field.name,
                    "nprobe"
                        | "rf is_trained"
                        | "is_trained"
                        | "quantizer is_trained"
                        | "refine is_trained"
                        | "implem"
                        | "qbs2"
                        | "first centroid value"
                        | "first codebook value"
                        | "first code byte of a list"
                        | "first refine value"
                        | "direct map type"
                        | "pq M"
                        | "inverted lists code_size"
                        | "first direct map entry"
                        | "first hashtable entry"
                        | "first id of a list"
                        | "k_factor"
                        | "by_residual"
                        | "metric"
                        | "rf metric"
                        | "quantizer metric"
                        | "refine metric"
                );
                if must_fail {
                    assert!(r.is_err(), "{} = {value:#x} was accepted", field.name);
                }
            }
        }
    }
}

/// The fields whose change must be caught even though the result could still parse: values a
/// refined index depends on, and metrics that must agree.
#[test]
fn inconsistent_values_are_refused_naming_the_problem() {
    let (p, file) = variants().swap_remove(1); // L2, by residual, refined
    let at = |name: &str| file.fields.iter().find(|f| f.name == name).unwrap().at;
    let with = |name: &str, bytes: &[u8]| {
        let mut b = file.bytes.clone();
        b[at(name)..at(name) + bytes.len()].copy_from_slice(bytes);
        b
    };
    let ip = 0i32.to_le_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "an id out of range",
            with("first id of a list", &99i64.to_le_bytes()),
            "holds id 99",
        ),
        (
            "an id twice",
            with("first id of a list", &1i64.to_le_bytes()),
            "stored twice",
        ),
        (
            "k_factor below 1",
            with("k_factor", &0.5f32.to_le_bytes()),
            "k_factor",
        ),
        (
            "k_factor NaN",
            with("k_factor", &f32::NAN.to_le_bytes()),
            "k_factor",
        ),
        (
            "a NaN centroid",
            with("first centroid value", &f32::NAN.to_le_bytes()),
            "not finite",
        ),
        (
            "a NaN codebook value",
            with("first codebook value", &f32::INFINITY.to_le_bytes()),
            "not finite",
        ),
        (
            "a NaN refine value",
            with("first refine value", &f32::NAN.to_le_bytes()),
            "not finite",
        ),
        ("by_residual 2", with("by_residual", &[2]), "boolean"),
        (
            "quantizer metric",
            with("quantizer metric", &ip),
            "quantizer measures inner product",
        ),
        ("index metric", with("metric", &ip), "quantizer measures L2"),
        (
            "refine metric",
            with("refine metric", &ip),
            "refine index measures inner product",
        ),
        (
            "wrapper metric",
            with("rf metric", &ip),
            "refine wrapper measures inner product",
        ),
        (
            "8-bit codes",
            with("pq nbits", &8u64.to_le_bytes()),
            "8-bit codes",
        ),
        (
            "M not dividing d",
            with("pq M", &3u64.to_le_bytes()),
            "must divide d",
        ),
        (
            "bbs 48",
            with("bbs", &48i32.to_le_bytes()),
            "multiple of 32",
        ),
        (
            "block_size",
            with("block_size", &33u64.to_le_bytes()),
            "do not fit bbs",
        ),
        (
            "n_per_block",
            with("n_per_block", &64u64.to_le_bytes()),
            "do not fit bbs",
        ),
        ("M2", with("M2", &4u64.to_le_bytes()), "do not fit M"),
        (
            "code_size",
            with("code_size", &2u64.to_le_bytes()),
            "do not fit M",
        ),
        (
            "list code_size",
            with("inverted lists code_size", &2u64.to_le_bytes()),
            "code size",
        ),
        (
            "array lists",
            with("inverted lists type", b"ilar"),
            "`ilar`",
        ),
        (
            "no lists",
            with("inverted lists type", b"il00"),
            "no inverted lists",
        ),
        (
            "an HNSW quantizer",
            with("quantizer type", b"IHNf"),
            "not a flat index",
        ),
        (
            "an SQ refinement",
            with("refine type", b"IxSQ"),
            "scalar quantizer",
        ),
        (
            "an IVF-PQ base",
            with("base type", b"IwPQ"),
            "IVF-PQ without FastScan",
        ),
        (
            "an OPQ wrapper",
            with("index type", b"IxPT"),
            "pre-transform",
        ),
    ];
    for (what, bytes, want) in cases {
        let err = read_capped(&bytes).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                FormatError::BadFaiss(_) | FormatError::InvalidField { .. }
            ),
            "{what}: {msg}"
        );
        assert!(msg.contains(want), "{what}: {msg}");
    }
    // The same value changes in a bare index are another valid index.
    let _ = p;
    let (_, bare) = variants().swap_remove(0);
    let at = bare
        .fields
        .iter()
        .find(|f| f.name == "first id of a list")
        .unwrap()
        .at;
    let mut b = bare.bytes.clone();
    b[at..at + 8].copy_from_slice(&(-5i64).to_le_bytes());
    assert_eq!(read_capped(&b).unwrap().lists[0].ids[0], -5);
}

#[test]
fn counts_larger_than_the_file_do_not_allocate() {
    for (_, file) in variants() {
        for field in file.fields.iter().filter(|f| {
            f.name.ends_with("count")
                || f.name.ends_with("length")
                || f.name == "list size"
                || f.name == "list code bytes"
        }) {
            for value in [
                1u64 << 60,
                (1 << 40) + 1,
                u64::MAX / 8,
                file.bytes.len() as u64,
            ] {
                let mut b = file.bytes.clone();
                b[field.at..field.at + 8].copy_from_slice(&value.to_le_bytes());
                let err = read_capped(&b).unwrap_err();
                assert!(
                    matches!(
                        err,
                        FormatError::Truncated { .. } | FormatError::BadFaiss(_)
                    ),
                    "{} = {value}: {err}",
                    field.name
                );
            }
        }
    }
}

/// The seed inputs of the faiss fuzz target for this reader (`fuzz/seeds/faiss_reader/`):
/// the hand-written files above, exactly as the current writer produces them. After a format
/// change, regenerate them with
/// `KNNBLEND_WRITE_FUZZ_SEEDS=1 cargo test --test faiss_fastscan_read fuzz_seeds`.
#[test]
fn fuzz_seeds_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("seeds")
        .join("faiss_reader");
    let write = std::env::var_os("KNNBLEND_WRITE_FUZZ_SEEDS").is_some();
    let names = [
        "fastscan_l2.index",
        "fastscan_residual_rflat.index",
        "fastscan_ip_odd_m_rflat_direct_map.index",
        "fastscan_ip_residual_hashtable.index",
    ];
    for (name, (_, file)) in names.iter().zip(variants()) {
        read_capped(&file.bytes).unwrap();
        let path = root.join(name);
        if write {
            std::fs::write(&path, &file.bytes).unwrap();
        } else {
            let committed =
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                committed == file.bytes,
                "{} is out of date; regenerate it (see this test's doc)",
                path.display()
            );
        }
    }
}
