//! Our reader and search engine against faiss itself, in the same process, on indexes built
//! with RVC's recipe (`IVF{n},Flat`, n = min(16√N, N//39), n_probe 1, k 8).

mod common;

use common::Clustered;
use knnblend::format::{self, FormatError, Metric};
use knnblend::index::{rvc_nlist, BlendOutcome, BlendParams, FaissIvf, IvfIndex, Searcher};

const K: usize = 8;

/// A case: faiss index + our index read from faiss's own file.
struct Case {
    dim: usize,
    data: Vec<f32>,
    queries: Vec<f32>,
    faiss: FaissIvf,
    ours: IvfIndex,
    _dir: tempfile::TempDir,
}

fn build_case(dim: usize, n: usize, nq: usize, metric: Metric, seed: u64) -> Case {
    let gen = Clustered::new(dim, 48, seed);
    let data = gen.rows(n, seed + 1);
    let queries = gen.rows(nq, seed + 2);
    let faiss = FaissIvf::build(dim, rvc_nlist(n), metric, &data, &data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!(
        "added_IVF{}_Flat_nprobe_1_test_v2.index",
        rvc_nlist(n)
    ));
    faiss.write(&path).unwrap();
    let ours = IvfIndex::open(&path).unwrap();
    Case {
        dim,
        data,
        queries,
        faiss,
        ours,
        _dir: dir,
    }
}

/// f64 distance from `q` to every centroid of `index` (L2 or negated IP: smaller is nearer),
/// sorted, skipping empty lists.
fn centroid_ranking(index: &IvfIndex, q: &[f32]) -> Vec<(f64, usize)> {
    let d = index.dim();
    let mut r: Vec<(f64, usize)> = index
        .centroids()
        .chunks_exact(d)
        .enumerate()
        .filter(|(l, _)| index.list_len(*l) > 0)
        .map(|(l, c)| {
            let v = match index.metric() {
                Metric::L2 => c
                    .iter()
                    .zip(q)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum(),
                Metric::InnerProduct => -c
                    .iter()
                    .zip(q)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>(),
            };
            (v, l)
        })
        .collect();
    r.sort_by(|a, b| a.0.total_cmp(&b.0));
    r
}

fn rel_close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * a.abs().max(b.abs()).max(1e-3)
}

/// Compares ids and distances query by query. A mismatch must be a near-tie, either between
/// the two nearest centroids (each engine probes a different list; both are right up to f32
/// rounding: relative gap < 1e-5) or between neighbour distances (same distances within 1e-4
/// relative, ids ordered differently among equals or at the k-th boundary). Both engines must
/// find neighbours for every query, and k of them for nearly every one (a list may hold fewer:
/// about 1 % of queries at these shapes).
fn assert_parity(case: &mut Case, k: usize) {
    let (fd, fi) = case.faiss.search(&case.queries, k).unwrap();
    assert_eq!(fd.len(), fi.len());
    let mut s = Searcher::new();
    let nq = case.queries.len() / case.dim;
    assert!(nq > 0);
    assert_eq!(
        fi.len(),
        nq * k,
        "faiss returned {} slots for {nq} queries",
        fi.len()
    );
    let (mut same, mut ties, mut full) = (0, 0, 0);
    for q in 0..nq {
        let query = &case.queries[q * case.dim..(q + 1) * case.dim];
        let res = s.search(&case.ours, query, k, 1);
        let (fd, fi) = (&fd[q * k..(q + 1) * k], &fi[q * k..(q + 1) * k]);
        let ids: Vec<i64> = res.iter().map(|n| n.id).collect();
        let faiss_n = fi.iter().take_while(|&&i| i >= 0).count();
        assert!(
            !res.is_empty() && faiss_n > 0,
            "query {q}: {} neighbours, faiss {faiss_n}",
            res.len()
        );
        full += (res.len() == k && faiss_n == k) as usize;
        if ids == fi[..faiss_n] {
            same += 1;
            for (n, &d) in res.iter().zip(fd) {
                assert!(
                    rel_close(n.distance, d, 1e-4),
                    "query {q}: distance {} vs faiss {d}",
                    n.distance
                );
            }
            continue;
        }
        let ranking = centroid_ranking(&case.ours, query);
        let centroid_tie = ranking.len() > 1
            && (ranking[1].0 - ranking[0].0).abs() <= 1e-5 * ranking[0].0.abs().max(1e-9);
        let distance_tie = res.len() == faiss_n
            && res
                .iter()
                .zip(fd)
                .all(|(n, &d)| rel_close(n.distance, d, 1e-4));
        assert!(
            centroid_tie || distance_tie,
            "query {q}: ids {ids:?} vs faiss {:?} is not a near-tie (centroid gaps {:?})",
            &fi[..faiss_n],
            &ranking[..ranking.len().min(2)]
        );
        ties += 1;
    }
    let rate = same as f64 / nq as f64;
    println!("parity: {same}/{nq} identical, {ties} near-ties, {full} with k neighbours");
    assert!(
        rate >= 0.995,
        "only {:.2}% of queries match faiss",
        rate * 100.0
    );
    assert!(
        full as f64 >= 0.95 * nq as f64,
        "only {full} of {nq} queries found {k} neighbours"
    );
}

#[test]
fn rvc_v1_shape_matches_faiss() {
    // d = 256 (RVC v1), N = 30 000 → 769 lists.
    let mut case = build_case(256, 30_000, 2_000, Metric::L2, 11);
    assert_eq!(case.ours.nlist(), 769);
    assert_eq!(case.ours.nprobe(), 1);
    assert_eq!(case.ours.metadata().features, "rvc-v1-256");
    assert_parity(&mut case, K);
}

#[test]
fn rvc_v2_shape_matches_faiss_and_blend_matches_f64_reference() {
    // d = 768 (RVC v2), N = 12 000 → 307 lists.
    let mut case = build_case(768, 12_000, 2_000, Metric::L2, 21);
    assert_eq!(case.ours.nlist(), 307);
    assert_eq!(case.ours.metadata().features, "rvc-v2-768");
    assert_parity(&mut case, K);

    // RVC's blend on faiss's neighbours, in f64, against ours.
    let d = case.dim;
    let ratio = 0.75f64;
    let (fd, fi) = case.faiss.search(&case.queries, K).unwrap();
    let scale = case.data.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let mut s = Searcher::new();
    let mut out = vec![0f32; d];
    let mut compared = 0;
    for q in 0..case.queries.len() / d {
        let query = &case.queries[q * d..(q + 1) * d];
        let ids: Vec<i64> = s
            .search(&case.ours, query, K, 1)
            .iter()
            .map(|n| n.id)
            .collect();
        if ids != fi[q * K..(q + 1) * K] {
            continue; // a near-tie (checked above): the neighbour sets differ legitimately
        }
        let params = BlendParams {
            expansion: None,
            k: K,
            nprobe: 1,
            ratio: ratio as f32,
        };
        let BlendOutcome::Blended {
            neighbours: K,
            nearest,
        } = s.blend(&case.ours, query, &params, &mut out)
        else {
            panic!("query {q}: not blended with {K} neighbours");
        };
        // The outcome's nearest distance is faiss's first score.
        let first = fd[q * K] as f64;
        assert!(
            (nearest as f64 - first).abs() <= 1e-5 * (1.0 + first),
            "query {q}: nearest {nearest} vs faiss {first}"
        );
        let w: Vec<f64> = fd[q * K..(q + 1) * K]
            .iter()
            .map(|&s| (1.0 / s as f64).powi(2))
            .collect();
        let sum: f64 = w.iter().sum();
        for j in 0..d {
            let blended: f64 = (0..K)
                .map(|i| w[i] / sum * case.data[ids[i] as usize * d + j] as f64)
                .sum();
            let want = ratio * blended + (1.0 - ratio) * query[j] as f64;
            assert!(
                (out[j] as f64 - want).abs() <= 1e-4 * scale,
                "query {q} dim {j}: {} vs {want}",
                out[j]
            );
        }
        compared += 1;
    }
    assert!(compared >= 1_900, "only {compared} blends compared");
}

#[test]
fn exact_matches_blend_to_the_stored_vector_without_nan() {
    let case = build_case(64, 4_000, 10, Metric::L2, 31);
    let d = case.dim;
    let mut s = Searcher::new();
    let mut out = vec![0f32; d];
    for id in [0usize, 17, 3_999] {
        let query = &case.data[id * d..(id + 1) * d];
        let params = BlendParams {
            expansion: None,
            k: 8,
            nprobe: 1,
            ratio: 1.0,
        };
        assert!(matches!(
            s.blend(&case.ours, query, &params, &mut out),
            BlendOutcome::Blended { .. }
        ));
        assert!(out.iter().all(|v| v.is_finite()));
        // RVC would emit NaN here (1/0² normalised); the clamped score makes the match dominate.
        for (o, q) in out.iter().zip(query) {
            assert!((o - q).abs() <= 1e-5 * q.abs().max(1.0), "{o} vs {q}");
        }
    }
}

#[test]
fn inner_product_index_matches_faiss() {
    let mut case = build_case(128, 8_000, 2_000, Metric::InnerProduct, 41);
    assert_eq!(case.ours.metric(), Metric::InnerProduct);
    assert_parity(&mut case, K);
}

#[test]
fn sparse_lists_read_and_empty_nearest_list_falls_back_to_next_non_empty() {
    // Train on broad data, then add only rows from a few clusters: most lists stay empty and
    // faiss stores the sizes as `sprs`.
    let dim = 32;
    let broad = Clustered::new(dim, 64, 51);
    let train = broad.rows(6_400, 52);
    let narrow = Clustered::new(dim, 2, 53).rows(500, 54);
    let mut faiss = FaissIvf::build(dim, 128, Metric::L2, &train, &narrow).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sparse.index");
    faiss.write(&path).unwrap();
    let raw = std::fs::read(&path).unwrap();
    assert!(
        raw.windows(4).any(|w| w == b"sprs"),
        "expected a sparse list encoding"
    );
    let ours = IvfIndex::open(&path).unwrap();
    let empty = (0..ours.nlist()).filter(|&l| ours.list_len(l) == 0).count();
    assert!(
        empty > ours.nlist() / 2,
        "{empty} empty lists of {}",
        ours.nlist()
    );

    let queries = broad.rows(500, 55);
    let (_, fi) = faiss.search(&queries, K).unwrap();
    let mut s = Searcher::new();
    let (mut agreed, mut fallbacks) = (0, 0);
    for q in 0..500 {
        let query = &queries[q * dim..(q + 1) * dim];
        let res: Vec<(i64, u32)> = s
            .search(&ours, query, K, 1)
            .iter()
            .map(|n| (n.id, n.pos))
            .collect();
        assert!(
            !res.is_empty(),
            "we always find neighbours in a non-empty index"
        );
        let faiss_ids = &fi[q * K..(q + 1) * K];
        if faiss_ids[0] >= 0 {
            let ids: Vec<i64> = res.iter().map(|r| r.0).collect();
            let n = faiss_ids.iter().take_while(|&&i| i >= 0).count();
            if ids == faiss_ids[..n] {
                agreed += 1;
            }
        } else {
            // faiss probed an empty list and found nothing; we took the nearest non-empty list.
            let nearest_nonempty = centroid_ranking(&ours, query)[0].1;
            let range = ours.list_range(nearest_nonempty);
            assert!(res.iter().all(|r| range.contains(&(r.1 as usize))));
            fallbacks += 1;
        }
    }
    println!("sparse: {agreed} agreed, {fallbacks} fell back to the next non-empty list");
    assert!(agreed + fallbacks >= 495);
    assert!(fallbacks > 0, "the test should exercise the fallback");
}

#[test]
fn trained_only_index_is_refused_with_a_helpful_message() {
    let dim = 16;
    let data = Clustered::new(dim, 8, 61).rows(2_000, 62);
    let faiss = FaissIvf::build(dim, 32, Metric::L2, &data, &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trained_IVF32_Flat_test_v2.index");
    faiss.write(&path).unwrap();
    let err = IvfIndex::open(&path).unwrap_err();
    assert!(matches!(err, FormatError::TrainedOnly), "{err}");
    assert!(err.to_string().contains("added_"), "{err}");
}

#[test]
fn faiss_import_to_kbi_round_trips_to_identical_results() {
    let case = build_case(96, 6_000, 500, Metric::L2, 71);
    let kbi = case._dir.path().join("voice.kbi");
    let faiss_path = std::fs::read_dir(case._dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // What `knnblend import` does: open the faiss file, write its parts as .kbi.
    let parts = IvfIndex::open(&faiss_path).unwrap().to_parts();
    format::write_kbi(&kbi, &parts).unwrap();
    let native = IvfIndex::open(&kbi).unwrap();
    assert!(native.is_mapped());
    assert!(
        native.to_parts() == parts,
        "the .kbi holds different data than the faiss file"
    );
    let (mut a, mut b) = (Searcher::new(), Searcher::new());
    for q in case.queries.chunks_exact(case.dim) {
        for nprobe in [1, 3] {
            let ours = a.search(&case.ours, q, K, nprobe);
            assert!(!ours.is_empty(), "no neighbours (n_probe {nprobe})");
            assert_eq!(ours, b.search(&native, q, K, nprobe));
        }
    }
}

#[test]
fn probing_every_list_is_exact_brute_force() {
    let case = build_case(24, 2_400, 100, Metric::L2, 81);
    let mut s = Searcher::new();
    let nlist = case.ours.nlist();
    assert!(nlist <= knnblend::index::MAX_NPROBE);
    for q in case.queries.chunks_exact(case.dim) {
        let got: Vec<i64> = s
            .search(&case.ours, q, K, nlist)
            .iter()
            .map(|n| n.id)
            .collect();
        let want = common::brute_force(&case.data, case.dim, q, K);
        assert_eq!(want.len(), K);
        assert_eq!(got.len(), K, "probing every list must find k neighbours");
        for (g, w) in got.iter().zip(&want) {
            // Ties aside, the ids agree; on a tie the distances must.
            if *g != w.1 as i64 {
                let dg = common::brute_force(&case.data, case.dim, q, 2_400)
                    .iter()
                    .find(|x| x.1 as i64 == *g)
                    .unwrap()
                    .0;
                assert!((dg - w.0).abs() <= 1e-5 * w.0.max(1e-9));
            }
        }
    }
}
