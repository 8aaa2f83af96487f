//! IVF-PQ FastScan indexes through the C ABI: PQ `.kbi` files made by hand from RVC-shaped
//! frames (`support::pq_parts`: unrefined, by residual and refined, inner product, sparse
//! lists, wider than the default searcher) are opened, described, searched, block-searched
//! and blended through the ABI with the core's `PqSearcher` results bit for bit; served by
//! the live runtime; and searches that do not fit a searcher are refused with
//! `KB_ERR_CAPACITY` and a pass-through, never a panic.

use std::sync::atomic::{AtomicUsize, Ordering};

use knnblend_core::format::{IndexParts, Metric, PqParts};
use knnblend_core::index::{PqIndex, PqNeighbour, PqSearcher, PQ_MAX_BASE_K};

use super::*;

/// One PQ test file: its path, the frames it was made from, and what it should report.
struct PqFile {
    path: PathBuf,
    frames: IndexParts,
    m: usize,
    by_residual: bool,
    k_factor: Option<f32>,
}

struct PqFiles {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    /// L2 `x4fs`; L2 `x4fsr,RFlat` (k_factor 2); inner product `x4fs,RFlat` (k_factor 1.5);
    /// sparse L2 `x4fsr` (lists of about 5 frames: searches find fewer than k).
    all: Vec<PqFile>,
}

fn pq_files() -> PqFiles {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    let mut add = |name: &str,
                   frames: IndexParts,
                   metric: Metric,
                   m: usize,
                   by_residual: bool,
                   k_factor: Option<f32>| {
        let mut parts: PqParts = pq_parts(&frames, m, by_residual, k_factor);
        parts.metric = metric;
        let path = dir.path().join(name);
        write_pq_kbi_file(&path, &parts);
        all.push(PqFile {
            path,
            frames,
            m,
            by_residual,
            k_factor,
        });
    };
    let a = rvc_parts(21, D, 1500, 24, "rvc-test-160");
    add("pq.kbi", a.clone(), Metric::L2, 40, false, None);
    add(
        "pqr_rflat.kbi",
        rvc_parts(22, D, 1200, 20, ""),
        Metric::L2,
        20,
        true,
        Some(2.0),
    );
    add(
        "ip_rflat.kbi",
        rvc_parts(23, D, 900, 16, "ip"),
        Metric::InnerProduct,
        40,
        false,
        Some(1.5),
    );
    add(
        "sparse.kbi",
        rvc_parts(24, D, 40, 8, ""),
        Metric::L2,
        40,
        true,
        None,
    );
    PqFiles {
        dir: dir.path().to_path_buf(),
        _dir: dir,
        all,
    }
}

/// A Rust-side searcher for every search the ABI's default searcher takes.
fn rust_searcher() -> PqSearcher {
    PqSearcher::new(
        KB_SEARCHER_DEFAULT_DIM,
        KB_MAX_K,
        KB_MAX_NPROBE,
        (PQ_MAX_BASE_K / KB_MAX_K) as f32,
    )
}

/// The storage position of a neighbour, as `kb_neighbour.pos` reports it.
fn pos_of(ix: &PqIndex, nb: &PqNeighbour) -> u32 {
    (ix.list_start(nb.list as usize) + nb.offset as usize) as u32
}

/// The core's neighbours without faiss's empty slots, as (distance bits, id, pos).
fn core_search(
    rs: &mut PqSearcher,
    ix: &PqIndex,
    q: &[f32],
    k: usize,
    nprobe: usize,
) -> Vec<(u32, i64, u32)> {
    rs.search(ix, q, k, nprobe)
        .iter()
        .filter(|nb| nb.id >= 0)
        .map(|nb| (nb.distance.to_bits(), nb.id, pos_of(ix, nb)))
        .collect()
}

fn abi_search(
    s: *mut kb_searcher,
    ix: *const kb_index,
    q: &[f32],
    k: usize,
    nprobe: usize,
) -> (kb_status, Vec<(u32, i64, u32)>) {
    let mut out = [kb_neighbour::default(); KB_MAX_K];
    let mut n = usize::MAX;
    // SAFETY: valid pointers and sizes.
    let code = unsafe {
        kb_search(
            s,
            ix,
            q.as_ptr(),
            q.len(),
            k,
            nprobe,
            out.as_mut_ptr(),
            KB_MAX_K,
            &mut n,
        )
    };
    if code != KB_OK {
        return (code, Vec::new());
    }
    let got = out[..n]
        .iter()
        .map(|nb| (nb.distance.to_bits(), nb.id, nb.pos))
        .collect();
    (code, got)
}

fn abi_blend(
    s: *mut kb_searcher,
    ix: *const kb_index,
    q: &[f32],
    k: usize,
    nprobe: usize,
    ratio: f32,
) -> (kb_status, kb_blend_outcome, Vec<f32>) {
    let mut out = vec![f32::NAN; q.len()];
    let mut oc = kb_blend_outcome::KB_BLEND_BLENDED;
    // SAFETY: valid pointers and sizes.
    let code = unsafe {
        kb_blend(
            s,
            ix,
            q.as_ptr(),
            q.len(),
            k,
            nprobe,
            ratio,
            out.as_mut_ptr(),
            out.len(),
            &mut oc,
        )
    };
    (code, oc, out)
}

fn info_of(ix: *const kb_index) -> kb_index_info {
    let mut info = kb_index_info::EMPTY;
    // SAFETY: valid pointers.
    assert_eq!(unsafe { kb_index_get_info(ix, &mut info) }, KB_OK);
    info
}

fn describe(ix: *const kb_index) -> String {
    let mut buf = [0 as c_char; 128];
    let mut needed = 0;
    // SAFETY: valid pointers and sizes.
    let code = unsafe { kb_index_describe(ix, buf.as_mut_ptr(), buf.len(), &mut needed) };
    assert_eq!(code, KB_OK);
    let s = text_of(&buf);
    assert_eq!(needed, s.len());
    s
}

fn searcher_sized(max_dim: usize, max_k: usize, max_nprobe: usize) -> *mut kb_searcher {
    let mut s = null_mut();
    // SAFETY: valid pointers.
    let got = call(|e| unsafe { kb_searcher_new_sized(max_dim, max_k, max_nprobe, &mut s, e) });
    expect(got, KB_OK, &[]);
    s
}

fn free(mut ix: *mut kb_index, mut s: *mut kb_searcher) {
    // SAFETY: live handles (or NULL).
    unsafe {
        kb_index_free(&mut ix);
        kb_searcher_free(&mut s);
    }
}

#[test]
fn pq_indexes_open_and_report_their_type_and_parameters() {
    let f = pq_files();
    for file in &f.all {
        for flags in [0, KB_OPEN_PREFAULT | KB_OPEN_MLOCK, KB_OPEN_NO_VERIFY] {
            let mut ix = null_mut();
            let p = cpath(&file.path);
            // SAFETY: valid pointers.
            let got = call(|e| unsafe { kb_index_open(p.as_ptr(), flags, &mut ix, e) });
            expect(got, KB_OK, &[]);
            let rust = PqIndex::open(&file.path).unwrap();
            let info = info_of(ix);
            assert_eq!(info.index_type, kb_index_type::KB_INDEX_IVF_PQ_FASTSCAN);
            assert_eq!(
                (info.dim, info.ntotal, info.nlist, info.nprobe),
                (D, rust.ntotal(), rust.nlist(), rust.nprobe())
            );
            assert_eq!(info.kind, kb_file_kind::KB_FILE_KBI);
            assert!(info.mapped);
            assert_eq!(
                (info.pq_m, info.pq_nbits, info.pq_by_residual),
                (file.m, 4, file.by_residual)
            );
            assert_eq!(info.refined, file.k_factor.is_some());
            assert_eq!(info.k_factor, file.k_factor.unwrap_or(0.0));
            assert_eq!(info.bytes, rust.byte_len() as u64);
            let metric = match rust.metric() {
                Metric::L2 => kb_metric::KB_METRIC_L2,
                Metric::InnerProduct => kb_metric::KB_METRIC_INNER_PRODUCT,
            };
            assert_eq!(info.metric, metric);
            let d = describe(ix);
            assert!(d.starts_with(&rust.factory()), "{d}");
            assert!(d.contains("IVF-PQ FastScan"), "{d}");
            if let Some(k) = file.k_factor {
                assert!(d.contains(&format!("k_factor {k}")), "{d}");
            }
            let mut buf = [0 as c_char; 64];
            // SAFETY: valid pointers and sizes.
            unsafe { kb_index_features(ix, buf.as_mut_ptr(), buf.len(), null_mut()) };
            assert_eq!(text_of(&buf), file.frames.metadata.features);
            free(ix, null_mut());
        }
    }
    // An IVF-Flat index says so, with the PQ fields zero.
    let (flat, _) = files();
    let ix = open(&flat.kbi);
    let info = info_of(ix);
    assert_eq!(info.index_type, kb_index_type::KB_INDEX_IVF_FLAT);
    assert_eq!(
        (
            info.pq_m,
            info.pq_nbits,
            info.pq_by_residual,
            info.refined,
            info.k_factor
        ),
        (0, 0, false, false, 0.0)
    );
    assert_eq!(describe(ix), "IVF-Flat");
    free(ix, null_mut());
}

#[test]
fn pq_searches_block_searches_blends_and_vectors_equal_the_core_bit_for_bit() {
    let f = pq_files();
    let (mut fewer, mut nonempty, mut total) = (0, 0, 0);
    for file in &f.all {
        let ix = open(&file.path);
        let rust = PqIndex::open(&file.path).unwrap();
        let mut rs = rust_searcher();
        // The default searcher and one made for the index give the same bits.
        let mut sized = null_mut();
        // SAFETY: valid pointers.
        let got = call(|e| unsafe { kb_searcher_new_for(ix, KB_MAX_K, 9, &mut sized, e) });
        expect(got, KB_OK, &[]);
        let searchers = [new_searcher(), sized];
        let qs = queries(&file.frames, 21, 5);
        let nq = qs.len() / D;
        for (k, nprobe) in [(8, 1), (1, 1), (32, 4), (5, 9)] {
            for &s in &searchers {
                // SAFETY: live handles.
                assert!(unsafe { kb_searcher_fits(s, ix, k, nprobe) });
                for q in qs.chunks_exact(D) {
                    let want = core_search(&mut rs, &rust, q, k, nprobe);
                    assert_eq!(
                        abi_search(s, ix, q, k, nprobe),
                        (KB_OK, want.clone()),
                        "{} k {k} nprobe {nprobe}",
                        file.path.display()
                    );
                    if want.len() < k {
                        fewer += 1;
                    }
                    if !want.is_empty() {
                        nonempty += 1;
                    }
                    total += 1;
                }
                // All queries in one block call: equal to the single searches.
                let mut out = vec![kb_neighbour::default(); nq * k];
                let mut found = vec![usize::MAX; nq];
                // SAFETY: valid pointers and sizes.
                let code = unsafe {
                    kb_search_block(
                        s,
                        ix,
                        qs.as_ptr(),
                        nq,
                        D,
                        k,
                        nprobe,
                        out.as_mut_ptr(),
                        out.len(),
                        found.as_mut_ptr(),
                    )
                };
                assert_eq!(code, KB_OK);
                for (i, q) in qs.chunks_exact(D).enumerate() {
                    let got: Vec<_> = out[i * k..i * k + found[i]]
                        .iter()
                        .map(|nb| (nb.distance.to_bits(), nb.id, nb.pos))
                        .collect();
                    assert_eq!(got, core_search(&mut rs, &rust, q, k, nprobe));
                }
            }
        }
        // Blends, including ratio 0, an out-of-range ratio and NaN in the query.
        let mut nan = qs[..D].to_vec();
        nan[7] = f32::NAN;
        for (k, nprobe, ratio) in [(8, 1, 0.75f32), (4, 3, 1.0), (8, 1, 0.0), (16, 2, 3.0)] {
            let params = BlendParams {
                expansion: None,
                k,
                nprobe,
                ratio,
            };
            for q in qs.chunks_exact(D).take(7).chain([&nan[..]]) {
                let mut want = vec![0f32; D];
                let o = rs.blend(&rust, q, &params, &mut want);
                for &s in &searchers {
                    let (code, oc, out) = abi_blend(s, ix, q, k, nprobe, ratio);
                    assert_eq!(code, KB_OK);
                    assert_eq!(bits(&out), bits(&want), "{}", file.path.display());
                    assert_eq!(oc, crate::index::outcome(o));
                }
            }
        }
        // The vector at a neighbour's position is the one the blend mixes.
        let mut v = vec![0f32; D];
        let mut w = vec![0f32; D];
        for q in qs.chunks_exact(D).take(5) {
            let nbs: Vec<PqNeighbour> = rs.search(&rust, q, 8, 2).to_vec();
            for nb in nbs.iter().filter(|nb| nb.id >= 0) {
                // SAFETY: valid pointers and sizes.
                let code =
                    unsafe { kb_index_vector(ix, pos_of(&rust, nb) as usize, v.as_mut_ptr(), D) };
                assert_eq!(code, KB_OK);
                rust.neighbour_vector(nb, &mut w);
                assert_eq!(bits(&v), bits(&w));
                if let Some(exact) = rust.refine_vector(nb.id) {
                    assert_eq!(bits(&v), bits(exact));
                }
            }
        }
        // Every position, refined or not: its list's reconstruction or the exact vector of
        // the id stored there (empty lists skipped, as a position never falls in one).
        let ids = rust.ids();
        for l in 0..rust.nlist() {
            for i in 0..rust.list_start(l + 1) - rust.list_start(l) {
                let pos = rust.list_start(l) + i;
                // SAFETY: valid pointers and sizes.
                assert_eq!(
                    unsafe { kb_index_vector(ix, pos, v.as_mut_ptr(), D) },
                    KB_OK
                );
                match rust.refine_vector(ids[pos]) {
                    Some(exact) => assert_eq!(bits(&v), bits(exact)),
                    None => {
                        rust.reconstruct(l, i, &mut w);
                        assert_eq!(bits(&v), bits(&w), "position {pos}");
                    }
                }
            }
        }
        // SAFETY: valid pointers.
        unsafe {
            assert_eq!(
                kb_index_vector(ix, rust.ntotal(), v.as_mut_ptr(), D),
                KB_ERR_ARGUMENT
            );
            assert_eq!(
                kb_index_vector(ix, 0, v.as_mut_ptr(), D - 1),
                KB_ERR_DIMENSION
            );
        }
        free(ix, searchers[0]);
        free(null_mut(), searchers[1]);
    }
    assert!(
        fewer > 0,
        "no search found fewer than k: the empty slots went untested"
    );
    assert!(
        nonempty * 10 >= total * 9,
        "only {nonempty} of {total} searches found anything"
    );
}

#[test]
fn pq_searches_that_do_not_fit_the_searcher_are_refused_with_kb_err_capacity() {
    let f = pq_files();
    let ix = open(&f.all[0].path);
    let q = queries(&f.all[0].frames, 1, 3);
    let narrow = searcher_sized(64, 8, 2); // the index is 160-dimensional
    let small = searcher_sized(D, 8, 2);
    // SAFETY: valid handles, pointers and sizes throughout.
    unsafe {
        assert!(!kb_searcher_fits(narrow, ix, 8, 1));
        assert!(kb_searcher_fits(small, ix, 8, 2));
        assert!(!kb_searcher_fits(small, ix, 9, 2));
        assert!(!kb_searcher_fits(small, ix, 8, 3));
        assert!(!kb_searcher_fits(small, ix, 0, 1));
        assert!(!kb_searcher_fits(small, ix, KB_MAX_K + 1, 1));
        assert!(!kb_searcher_fits(null(), ix, 8, 1));
        assert!(!kb_searcher_fits(small, null(), 8, 1));

        for (s, k, nprobe) in [(narrow, 8, 1), (small, 9, 2), (small, 8, 3)] {
            assert_eq!(abi_search(s, ix, &q, k, nprobe).0, KB_ERR_CAPACITY);
            // Blends pass the query through, whatever the ratio.
            for ratio in [0.75, 0.0] {
                let (code, oc, out) = abi_blend(s, ix, &q, k, nprobe, ratio);
                assert_eq!(code, KB_ERR_CAPACITY);
                assert_eq!(oc, kb_blend_outcome::KB_BLEND_EMPTY);
                assert_eq!(bits(&out), bits(&q));
            }
            let mut out = [kb_neighbour::default(); KB_MAX_K];
            let mut found = [0usize; 1];
            let code = kb_search_block(
                s,
                ix,
                q.as_ptr(),
                1,
                D,
                k,
                nprobe,
                out.as_mut_ptr(),
                KB_MAX_K,
                found.as_mut_ptr(),
            );
            assert_eq!(code, KB_ERR_CAPACITY);
        }
        // k and nprobe outside the ABI's ranges stay KB_ERR_ARGUMENT.
        assert_eq!(
            abi_search(small, ix, &q, KB_MAX_K + 1, 1).0,
            KB_ERR_ARGUMENT
        );
        assert_eq!(abi_search(small, ix, &q, 8, 0).0, KB_ERR_ARGUMENT);
        // What fits is served.
        assert_eq!(abi_search(small, ix, &q, 8, 2).0, KB_OK);
        assert_eq!(abi_blend(small, ix, &q, 8, 2, 1.0).0, KB_OK);

        // IVF-Flat searches need no sizing: the smallest searcher serves them all.
        let (flat, parts) = files();
        let fx = open(&flat.kbi);
        let tiny = searcher_sized(1, 1, 1);
        let fq = queries(&parts, 1, 4);
        assert!(kb_searcher_fits(tiny, fx, KB_MAX_K, KB_MAX_NPROBE));
        assert_eq!(abi_search(tiny, fx, &fq, KB_MAX_K, KB_MAX_NPROBE).0, KB_OK);
        assert_eq!(abi_blend(tiny, fx, &fq, 8, 3, 1.0).0, KB_OK);
        assert!(!kb_searcher_fits(tiny, ix, 1, 1));
        free(fx, tiny);
    }
    free(ix, narrow);
    free(null_mut(), small);

    // A refinement asking for more than 4096 candidates (k 32 x k_factor 200) does not fit
    // even the default searcher; k 16 (3200 candidates) does.
    let frames = rvc_parts(31, D, 300, 4, "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("greedy.kbi");
    write_pq_kbi_file(&path, &pq_parts(&frames, 40, false, Some(200.0)));
    let ix = open(&path);
    let s = new_searcher();
    let q = queries(&frames, 1, 8);
    // SAFETY: live handles.
    unsafe {
        assert!(!kb_searcher_fits(s, ix, 32, 1));
        assert!(kb_searcher_fits(s, ix, 16, 1));
    }
    assert_eq!(abi_search(s, ix, &q, 32, 1).0, KB_ERR_CAPACITY);
    let rust = PqIndex::open(&path).unwrap();
    assert_eq!(
        abi_search(s, ix, &q, 16, 1),
        (KB_OK, core_search(&mut rust_searcher(), &rust, &q, 16, 1))
    );
    free(ix, s);

    // A PQ index wider than KB_SEARCHER_DEFAULT_DIM needs a searcher made for it.
    let wide_d = KB_SEARCHER_DEFAULT_DIM + 32;
    let frames = rvc_parts(32, wide_d, 64, 2, "");
    let path = dir.path().join("wide.kbi");
    write_pq_kbi_file(&path, &pq_parts(&frames, wide_d / 8, true, None));
    let ix = open(&path);
    let s = new_searcher();
    let q = queries(&frames, 1, 9);
    assert_eq!(abi_search(s, ix, &q, 8, 1).0, KB_ERR_CAPACITY);
    let mut fitted = null_mut();
    // SAFETY: valid pointers.
    let got = call(|e| unsafe { kb_searcher_new_for(ix, 8, 1, &mut fitted, e) });
    expect(got, KB_OK, &[]);
    let rust = PqIndex::open(&path).unwrap();
    let mut rs = PqSearcher::for_index(&rust, 8, 1);
    assert_eq!(
        abi_search(fitted, ix, &q, 8, 1),
        (KB_OK, core_search(&mut rs, &rust, &q, 8, 1))
    );
    free(ix, s);
    free(null_mut(), fitted);
}

#[test]
fn searcher_sizes_out_of_range_and_null_pointers_are_refused() {
    let f = pq_files();
    let ix = open(&f.all[0].path);
    let mut s = null_mut();
    for (d, k, n, word) in [
        (0, 8, 1, "max_dim 0"),
        (KB_MAX_DIM + 1, 8, 1, "max_dim"),
        (16, 0, 1, "max_k 0"),
        (16, KB_MAX_K + 1, 1, "max_k"),
        (16, 8, 0, "max_nprobe 0"),
        (16, 8, KB_MAX_NPROBE + 1, "max_nprobe"),
    ] {
        // SAFETY: valid pointers.
        let got = call(|e| unsafe { kb_searcher_new_sized(d, k, n, &mut s, e) });
        expect(got, KB_ERR_ARGUMENT, &[word]);
        assert!(s.is_null(), "nothing is written on failure");
        // SAFETY: valid pointers.
        let got = call(|e| unsafe { kb_searcher_new_for(ix, k, n, &mut s, e) });
        if d != 0 && d <= KB_MAX_DIM {
            expect(got, KB_ERR_ARGUMENT, &[word]);
            assert!(s.is_null());
        } else {
            // The index's dimension replaces the bad max_dim.
            expect(got, KB_OK, &[]);
            free(null_mut(), s);
            s = null_mut();
        }
    }
    // SAFETY: NULL or valid pointers.
    unsafe {
        expect(
            call(|e| kb_searcher_new_sized(16, 8, 1, null_mut(), e)),
            KB_ERR_NULL,
            &["out"],
        );
        expect(
            call(|e| kb_searcher_new_for(null(), 8, 1, &mut s, e)),
            KB_ERR_NULL,
            &["index"],
        );
        expect(
            call(|e| kb_searcher_new_for(ix, 8, 1, null_mut(), e)),
            KB_ERR_NULL,
            &["out"],
        );
        assert!(s.is_null());
        let mut buf = [0 as c_char; 8];
        let mut needed = 0;
        assert_eq!(
            kb_index_describe(null(), buf.as_mut_ptr(), buf.len(), &mut needed),
            KB_ERR_NULL
        );
        // snprintf-like: a size query, then a truncated copy.
        assert_eq!(kb_index_describe(ix, null_mut(), 0, &mut needed), KB_OK);
        let full = describe(ix);
        assert_eq!(needed, full.len());
        assert_eq!(
            kb_index_describe(ix, buf.as_mut_ptr(), buf.len(), &mut needed),
            KB_ERR_BUFFER
        );
        assert_eq!(text_of(&buf), full[..7]);
    }
    // Error paths leave nothing allocated.
    let leaked = net_bytes(|| {
        let mut s = null_mut();
        // SAFETY: valid pointers.
        let got = call(|e| unsafe { kb_searcher_new_sized(0, 8, 1, &mut s, e) });
        assert_eq!(got.0, KB_ERR_ARGUMENT);
    });
    assert_eq!(leaked, 0);
    free(ix, null_mut());
}

/// A validator that records the type and M of the index it is shown (in the `AtomicUsize`
/// pair `user` points to) and accepts it.
unsafe extern "C" fn record_type(
    user: *mut c_void,
    index: *const kb_index,
    _reason: *mut c_char,
    _cap: usize,
) -> c_int {
    // SAFETY: the test's pair of atomics, and a lent index.
    unsafe {
        let seen = &*(user as *const [AtomicUsize; 2]);
        let mut info = kb_index_info::EMPTY;
        assert_eq!(kb_index_get_info(index, &mut info), KB_OK);
        seen[0].store(info.index_type as usize + 1, Ordering::SeqCst);
        seen[1].store(info.pq_m, Ordering::SeqCst);
    }
    0
}

#[test]
fn the_live_runtime_serves_a_pq_kbi_as_the_core_blends_it() {
    let f = pq_files();
    let seen = [AtomicUsize::new(0), AtomicUsize::new(0)];
    let c = kb_live_config {
        validate: Some(record_type),
        validate_user: &seen as *const _ as *mut c_void,
        ..config(2, 768)
    };
    let (mut ctl, mut audio) = new_live(&c);
    let file = &f.all[1]; // by residual, refined
                          // SAFETY: valid handles and pointers throughout.
    unsafe {
        let mut t = load(ctl, 0, &file.path);
        let (st, code, m) = poll(t);
        assert_eq!(
            (st.state, code, m),
            (kb_load_state::KB_LOAD_PUBLISHED, KB_OK, None)
        );
        kb_ticket_free(&mut t);
        // The validator was lent the PQ index.
        assert_eq!(
            seen[0].load(Ordering::SeqCst),
            kb_index_type::KB_INDEX_IVF_PQ_FASTSCAN as usize + 1
        );
        assert_eq!(seen[1].load(Ordering::SeqCst), file.m);
        // The runtime's description of it is the index's own (but for the load id).
        let ix = open(&file.path);
        let own = kb_index_info {
            id: st.index.id,
            mlocked: st.index.mlocked,
            ..info_of(ix)
        };
        assert_eq!(st.index, own);
        assert_eq!(status(ctl, 0).index, own);

        // Per frame and per block, equal to the core's PqSearcher at nprobe 1.
        let rust = PqIndex::open(&file.path).unwrap();
        let mut rs = rust_searcher();
        let qs = queries(&file.frames, 20, 4);
        assert_eq!(kb_audio_begin_block(audio, 0, 0.0), KB_OK);
        assert_eq!(kb_audio_serving_id(audio), st.index.id);
        let (per_frame, block) = audio_frames_and_block(audio, &qs);
        let params = BlendParams {
            expansion: None,
            k: 8,
            nprobe: 1,
            ratio: 0.75,
        };
        let mut want = vec![0f32; qs.len()];
        for (q, o) in qs.chunks_exact(D).zip(want.chunks_exact_mut(D)) {
            rs.blend(&rust, q, &params, o);
        }
        assert_eq!(bits(&per_frame), bits(&want), "kb_audio_blend");
        assert_eq!(bits(&block), bits(&want), "kb_audio_blend_block");
        // And equal to kb_blend through the ABI with the same parameters.
        let s = new_searcher();
        let (code, _, out) = abi_blend(s, ix, &qs[..D], 8, 1, 0.75);
        assert_eq!(code, KB_OK);
        assert_eq!(bits(&out), bits(&want[..D]));
        free(null_mut(), s);

        // An index the host opened and publishes is served too; its status says what it is.
        let mut other = open(&f.all[0].path);
        let name = cstr("pq voice");
        expect(
            call(|e| kb_controller_publish(ctl, 1, &mut other, name.as_ptr(), e)),
            KB_OK,
            &[],
        );
        assert!(other.is_null());
        let st1 = status(ctl, 1);
        assert_eq!(text_of(&st1.name), "pq voice");
        assert_eq!(
            (st1.index.index_type, st1.index.pq_m, st1.index.refined),
            (kb_index_type::KB_INDEX_IVF_PQ_FASTSCAN, f.all[0].m, false)
        );
        assert_eq!(seen[1].load(Ordering::SeqCst), f.all[0].m);
        // The audio side takes slot 1's index in and serves it.
        assert_eq!(kb_audio_begin_block(audio, 1, 0.0), KB_OK);
        assert_eq!(kb_audio_serving_id(audio), st1.index.id);
        let mut oc = kb_blend_outcome::KB_BLEND_EMPTY;
        let mut o = vec![0f32; D];
        let q1 = queries(&f.all[0].frames, 1, 6);
        assert_eq!(
            kb_audio_blend(audio, q1.as_ptr(), D, 8, 1.0, o.as_mut_ptr(), D, &mut oc),
            KB_OK
        );
        assert_eq!(oc, kb_blend_outcome::KB_BLEND_BLENDED);
        assert_eq!(kb_audio_end_block(audio), KB_OK);

        free(ix, null_mut());
        kb_audio_free(&mut audio);
        let mut released = 0;
        assert_eq!(kb_controller_collect(ctl, &mut released), KB_OK);
        assert_eq!(kb_controller_indexes_alive(ctl), 0);
        kb_controller_free(&mut ctl);
    }
    drop(f.dir);
}
