//! Property tests over random small indexes: exact search against brute force, n_probe = 1
//! against the nearest list, RVC blend weights and blends, and lossless round trips through the
//! `.kbi` writer/reader and the faiss reader.
//!
//! Two kinds of data: "grid" data (multiples of 1/4 in [-4, 4]) whose distances are exact in f32
//! whatever the summation order, so results must match the f64 reference exactly (ties
//! included), and continuous data compared with a rounding tolerance.

mod common;
mod handmade;

use common::Rng;
use knnblend::format::kbi::{self, KbiLayout};
use knnblend::format::{self, FormatError, IndexParts, ListParts, Metadata, Metric};
use knnblend::index::{
    rvc_weights, BlendOutcome, BlendParams, IvfIndex, Neighbour, Searcher, BLOCK, MAX_K,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::json;

/// How the values of a generated index are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Values {
    /// Multiples of 1/4 in [-4, 4]: every distance is exact in f32.
    Grid,
    /// Standard normal times 3.
    Normal,
    /// Up to ±1e37: distances and squared lengths overflow f32.
    Huge,
}

#[derive(Clone, Debug)]
struct Case {
    dim: usize,
    n: usize,
    nlist: usize,
    metric: Metric,
    values: Values,
    seed: u64,
}

fn case(values: impl Strategy<Value = Values>, max_n: usize) -> impl Strategy<Value = Case> {
    (
        // Small dimensions (every tail of the kernels' 8- and 16-lane bodies) and the shapes
        // users run, where the 8-bit centroid query and the list codes engage (from 128 on):
        // the plugin's 80, RVC's 256 and 768.
        prop_oneof![
            3 => 1usize..=24,
            1 => prop::sample::select(vec![80usize, 128, 256, 768]),
        ],
        0..=max_n,
        1usize..=64,
        any::<bool>(),
        values,
        any::<u64>(),
    )
        .prop_map(|(dim, n, nlist, ip, values, seed)| Case {
            dim,
            n,
            nlist,
            metric: if ip { Metric::InnerProduct } else { Metric::L2 },
            values,
            seed,
        })
}

fn value(rng: &mut Rng, values: Values) -> f32 {
    match values {
        Values::Grid => (rng.below(33) as f32 - 16.0) / 4.0,
        Values::Normal => 3.0 * rng.normal(),
        Values::Huge => rng.normal() * 10f32.powi(rng.below(38) as i32),
    }
}

/// A random index: random centroids, every vector in a random list (some lists stay empty,
/// some lists are favoured), distinct ids that are not storage positions.
fn build(case: &Case) -> (IndexParts, IvfIndex) {
    let mut rng = Rng(case.seed);
    let d = case.dim;
    let centroids: Vec<f32> = (0..case.nlist * d)
        .map(|_| value(&mut rng, case.values))
        .collect();
    let mut lists = vec![ListParts::default(); case.nlist];
    let favoured = rng.below(case.nlist);
    for i in 0..case.n {
        let l = if rng.uniform() < 0.3 {
            favoured
        } else {
            rng.below(case.nlist)
        };
        lists[l].ids.push(i as i64 * 7919 - 5000);
        lists[l]
            .vectors
            .extend((0..d).map(|_| value(&mut rng, case.values)));
    }
    let parts = IndexParts {
        dim: d,
        metric: case.metric,
        nprobe: 1,
        centroids,
        lists,
        metadata: Metadata::default(),
    };
    let index = IvfIndex::from_parts(&parts).expect("valid parts build an index");
    (parts, index)
}

/// Queries: fresh values, and (when the index holds any) stored vectors, so exact matches and
/// distance ties are exercised.
fn queries(case: &Case, parts: &IndexParts, count: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(case.seed ^ 0x5EED);
    let stored: Vec<&[f32]> = parts
        .lists
        .iter()
        .flat_map(|l| l.vectors.chunks_exact(case.dim))
        .collect();
    (0..count)
        .map(|i| {
            if i % 2 == 1 && !stored.is_empty() {
                stored[rng.below(stored.len())].to_vec()
            } else {
                (0..case.dim)
                    .map(|_| value(&mut rng, case.values))
                    .collect()
            }
        })
        .collect()
}

/// Smaller-is-nearer key in f64 (squared L2, or negated inner product) and the scale of the
/// rounding error an f32 computation of it may carry.
fn key(metric: Metric, q: &[f32], v: &[f32]) -> (f64, f64) {
    let mut k = 0.0;
    let mut scale = 0.0;
    for (&a, &b) in q.iter().zip(v) {
        let (a, b) = (a as f64, b as f64);
        match metric {
            Metric::L2 => {
                k += (a - b) * (a - b);
                scale += a * a + b * b;
            }
            Metric::InnerProduct => {
                k -= a * b;
                scale += (a * b).abs();
            }
        }
    }
    (k, scale)
}

/// The key a neighbour's reported distance stands for.
fn reported_key(metric: Metric, n: &Neighbour) -> f64 {
    match metric {
        Metric::L2 => n.distance as f64,
        Metric::InnerProduct => -(n.distance as f64),
    }
}

/// Stored vectors of the given lists as (key, scale, id), sorted nearest first.
fn brute_force(parts: &IndexParts, lists: &[usize], q: &[f32]) -> Vec<(f64, f64, i64)> {
    let mut all: Vec<(f64, f64, i64)> = lists
        .iter()
        .flat_map(|&l| {
            let list = &parts.lists[l];
            list.ids
                .iter()
                .zip(list.vectors.chunks_exact(parts.dim))
                .map(|(&id, v)| {
                    let (k, s) = key(parts.metric, q, v);
                    (k, s, id)
                })
        })
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all
}

/// Checks that `found` is the k nearest of `reference` (all candidates of the probed lists):
/// the right count, sorted, distinct ids, every reported distance that of its id, and no
/// candidate left out that is nearer than one returned. Exact for grid data; within the
/// rounding tolerance otherwise.
fn assert_k_nearest(
    case: &Case,
    found: &[Neighbour],
    reference: &[(f64, f64, i64)],
    k: usize,
) -> Result<(), TestCaseError> {
    let exact = case.values == Values::Grid;
    let tol = |scale: f64| if exact { 0.0 } else { 1e-5 * scale + 1e-30 };
    prop_assert_eq!(found.len(), k.clamp(1, MAX_K).min(reference.len()));
    for pair in found.windows(2) {
        prop_assert!(
            reported_key(case.metric, &pair[0]) <= reported_key(case.metric, &pair[1]),
            "not sorted: {:?}",
            found
        );
    }
    let mut ids: Vec<i64> = found.iter().map(|n| n.id).collect();
    ids.sort_unstable();
    ids.dedup();
    prop_assert_eq!(ids.len(), found.len(), "an id came back twice");
    for n in found {
        let &(true_key, scale, _) = reference.iter().find(|r| r.2 == n.id).ok_or_else(|| {
            TestCaseError::fail(format!("id {} is not in the probed lists", n.id))
        })?;
        let got = reported_key(case.metric, n);
        prop_assert!(
            (got - true_key).abs() <= tol(scale),
            "id {}: reported {got}, true {true_key}",
            n.id
        );
        // Nothing left out may be nearer than what was returned.
        if let Some(&(kth, kth_scale, _)) = reference.get(found.len() - 1) {
            prop_assert!(
                true_key <= kth + tol(scale) + tol(kth_scale),
                "id {} (key {true_key}) is not among the {} nearest (k-th key {kth})",
                n.id,
                found.len()
            );
        }
    }
    if exact {
        let want: Vec<f64> = reference.iter().take(found.len()).map(|r| r.0).collect();
        let got: Vec<f64> = found.iter().map(|n| reported_key(case.metric, n)).collect();
        prop_assert_eq!(got, want);
    }
    Ok(())
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// n_probe = nlist (every list) is an exact search: the brute-force k nearest.
    #[test]
    fn probing_every_list_is_exact_brute_force(
        case in case(prop_oneof![Just(Values::Grid), Just(Values::Normal)], 300),
        k in 0usize..=40,
    ) {
        let (parts, index) = build(&case);
        let all: Vec<usize> = (0..case.nlist).collect();
        let mut searcher = Searcher::new();
        let mut exact = Searcher::new();
        exact.set_screening(false);
        let qs = queries(&case, &parts, 6);
        for q in &qs {
            let reference = brute_force(&parts, &all, q);
            let found = searcher.search(&index, q, k, case.nlist).to_vec();
            assert_k_nearest(&case, &found, &reference, k)?;
            prop_assert_eq!(&found[..], exact.search(&index, q, k, case.nlist));
        }
        // A block of queries gives what they give one by one.
        let flat: Vec<f32> = qs.iter().take(BLOCK).flatten().copied().collect();
        let block = searcher.search_block(&index, &flat, k, case.nlist).clone();
        for (i, q) in qs.iter().take(BLOCK).enumerate() {
            prop_assert_eq!(block.get(i), exact.search(&index, q, k, case.nlist));
        }
    }

    /// n_probe = 1 returns exactly the k nearest within the nearest non-empty list.
    #[test]
    fn one_probe_is_the_k_nearest_of_the_nearest_list(
        case in case(prop_oneof![Just(Values::Grid), Just(Values::Normal)], 300),
        k in 1usize..=32,
    ) {
        let (parts, index) = build(&case);
        let mut searcher = Searcher::new();
        for q in queries(&case, &parts, 6) {
            let found = searcher.search(&index, &q, k, 1).to_vec();
            let ranked: Vec<(f64, f64, usize)> = (0..case.nlist)
                .filter(|&l| !parts.lists[l].ids.is_empty())
                .map(|l| {
                    let (k, s) = key(case.metric, &q, &parts.centroids[l * case.dim..(l + 1) * case.dim]);
                    (k, s, l)
                })
                .collect();
            let Some(best) = ranked.iter().map(|r| r.0).min_by(f64::total_cmp) else {
                prop_assert!(found.is_empty());
                continue;
            };
            // The nearest list (any of several at an exact tie, or within rounding for
            // continuous data).
            let tol = |s: f64| if case.values == Values::Grid { 0.0 } else { 1e-5 * s + 1e-30 };
            let nearest: Vec<usize> = ranked.iter().filter(|r| r.0 <= best + 2.0 * tol(r.1)).map(|r| r.2).collect();
            prop_assert!(!found.is_empty());
            let offsets = index.list_offsets();
            let list = (0..case.nlist)
                .find(|&l| (offsets[l]..offsets[l + 1]).contains(&(found[0].pos as u64)))
                .unwrap();
            prop_assert!(nearest.contains(&list), "searched list {list}, nearest are {nearest:?}");
            let reference = brute_force(&parts, &[list], &q);
            assert_k_nearest(&case, &found, &reference, k)?;
        }
    }

    /// Weights are finite, non-negative and sum to 1 for any scores: zeros (exact matches),
    /// huge, tiny, negative, infinite and NaN.
    #[test]
    fn blend_weights_are_a_partition_of_one(
        scores in proptest::collection::vec(prop_oneof![
            Just(0.0f32), Just(-0.0), Just(f32::MAX), Just(-f32::MAX), Just(f32::MIN_POSITIVE),
            Just(1e-45), Just(f32::INFINITY), Just(f32::NEG_INFINITY), Just(f32::NAN),
            any::<f32>(), -10.0f32..10.0,
        ], 1..=MAX_K),
    ) {
        let mut w = [f64::NAN; MAX_K];
        rvc_weights(&scores, &mut w);
        let w = &w[..scores.len()];
        prop_assert!(w.iter().all(|x| x.is_finite() && *x >= 0.0), "{scores:?} → {w:?}");
        prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{scores:?} → {w:?}");
    }

    /// Ratio 0 copies the query bit for bit, whatever it holds (NaN payloads, −0, subnormals).
    #[test]
    fn ratio_zero_returns_the_query_bit_for_bit(
        case in case(Just(Values::Normal), 100),
        bits in proptest::collection::vec(any::<u32>(), 768),
        negative_zero in any::<bool>(),
    ) {
        let (_, index) = build(&case);
        let query: Vec<f32> = bits[..case.dim].iter().map(|&b| f32::from_bits(b)).collect();
        let mut out = vec![1.0f32; case.dim];
        let ratio = if negative_zero { -0.0 } else { 0.0 };
        let params = BlendParams { expansion: None, k: 8, nprobe: 4, ratio };
        let outcome = Searcher::new().blend(&index, &query, &params, &mut out);
        prop_assert!(matches!(outcome, BlendOutcome::Copied | BlendOutcome::NonFiniteQuery));
        prop_assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            query.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    /// Blends of finite queries are finite, also with huge queries and huge stored values
    /// (whose distances overflow f32), and match the f64 blend of the neighbours returned.
    #[test]
    fn blends_of_finite_queries_are_finite(
        case in case(prop_oneof![Just(Values::Grid), Just(Values::Normal), Just(Values::Huge)], 200),
        huge_query in any::<bool>(),
        ratio in prop_oneof![Just(1.0f32), 0.0f32..=1.0, any::<f32>()],
        k in 1usize..=32,
        nprobe in 1usize..=8,
    ) {
        let (parts, index) = build(&case);
        let mut searcher = Searcher::new();
        let mut out = vec![0f32; case.dim];
        let mut qs = queries(&case, &parts, 4);
        if huge_query {
            qs.push((0..case.dim).map(|i| if i % 2 == 0 { f32::MAX } else { -3e37 }).collect());
        }
        for q in &qs {
            let outcome = searcher.blend(&index, q, &BlendParams { expansion: None, k, nprobe, ratio }, &mut out);
            prop_assert!(out.iter().all(|v| v.is_finite()), "{outcome:?}: {out:?}");
            let BlendOutcome::Blended { neighbours, nearest } = outcome else { continue };
            if case.values == Values::Huge || huge_query {
                continue;
            }
            // Against the f64 blend of the same neighbours.
            let found = searcher.search(&index, q, k, nprobe).to_vec();
            prop_assert_eq!(found.len(), neighbours);
            let r = ratio.clamp(0.0, 1.0) as f64;
            // Weights follow squared Euclidean distance for both metrics (for inner product:
            // ‖q‖² + ‖v‖² − 2·q·v from the stored norms).
            let qn: f32 = q.iter().map(|x| x * x).sum();
            let scores: Vec<f32> = found
                .iter()
                .map(|n| match index.metric() {
                    Metric::L2 => n.distance,
                    Metric::InnerProduct => (qn + index.vector_norms()[n.pos as usize] - 2.0 * n.distance).max(0.0),
                })
                .collect();
            let least = scores.iter().copied().fold(f32::INFINITY, f32::min);
            prop_assert_eq!(nearest, least, "the outcome reports the nearest score");
            let mut w = [0f64; MAX_K];
            rvc_weights(&scores, &mut w);
            for (j, (&o, &qv)) in out.iter().zip(q).enumerate() {
                let blended: f64 = found.iter().zip(&w).map(|(n, &w)| w * index.vector(n.pos as usize)[j] as f64).sum();
                let want = r * blended + (1.0 - r) * qv as f64;
                prop_assert!((o as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "element {j}: {o} vs {want}");
            }
        }
    }
}

/// Random metadata (keys of `extra` never shadow the named fields).
fn metadata() -> impl Strategy<Value = Metadata> {
    (
        ".{0,24}",
        proptest::collection::vec(".{0,16}", 0..4),
        any::<u64>(),
        prop_oneof![
            Just(0.0f64),
            0.0f64..1e6,
            any::<f64>().prop_filter("finite", |v| v.is_finite())
        ],
        proptest::collection::btree_map(
            "x_[a-z]{0,8}",
            prop_oneof![
                any::<i64>().prop_map(|v| json!(v)),
                ".{0,8}".prop_map(|v| json!(v)),
                any::<bool>().prop_map(|v| json!(v)),
                (-1e300f64..1e300).prop_map(|v| json!(v)),
            ],
            0..4,
        ),
        any::<u32>(),
    )
        .prop_map(
            |(features, sources, frames, duration_seconds, extra, sr)| Metadata {
                features,
                feature_params: json!({ "sample_rate": sr, "bands": [1, 2, 3] }),
                sources,
                frames,
                duration_seconds,
                extra: extra.into_iter().collect(),
            },
        )
}

/// Any finite f32, including −0, subnormals and the extremes (whose squared lengths overflow).
fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => any::<u32>().prop_map(f32::from_bits).prop_filter("finite", |v| v.is_finite()),
        1 => Just(-0.0f32),
        1 => Just(1e-45f32),
        1 => Just(f32::MAX),
        1 => Just(f32::MIN),
    ]
}

/// Random parts for round trips: any finite values, any ids, any list sizes (empty lists and
/// more lists than vectors included).
fn parts() -> impl Strategy<Value = IndexParts> {
    (
        1usize..=24,
        1usize..=16,
        any::<bool>(),
        1u32..=u32::MAX,
        metadata(),
    )
        .prop_flat_map(|(dim, nlist, ip, nprobe, metadata)| {
            (
                proptest::collection::vec(finite_f32(), nlist * dim),
                proptest::collection::vec(
                    proptest::collection::vec(
                        (any::<i64>(), proptest::collection::vec(finite_f32(), dim)),
                        0..6,
                    ),
                    nlist,
                ),
            )
                .prop_map(move |(centroids, lists)| IndexParts {
                    dim,
                    metric: if ip { Metric::InnerProduct } else { Metric::L2 },
                    nprobe,
                    centroids,
                    lists: lists
                        .into_iter()
                        .map(|l| ListParts {
                            ids: l.iter().map(|e| e.0).collect(),
                            vectors: l.into_iter().flat_map(|e| e.1).collect(),
                        })
                        .collect(),
                    metadata: metadata.clone(),
                })
        })
}

/// Equality that also tells −0 from 0 (to_parts must return the very bits written).
fn same_bits(a: &IndexParts, b: &IndexParts) -> bool {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    a == b
        && bits(&a.centroids) == bits(&b.centroids)
        && a.lists
            .iter()
            .zip(&b.lists)
            .all(|(x, y)| bits(&x.vectors) == bits(&y.vectors))
}

proptest! {
    #![proptest_config(config(256))]

    /// `.kbi` encode → parse → to_parts gives back exactly what was written, in memory and
    /// through a memory-mapped file.
    #[test]
    fn kbi_round_trips_exactly(parts in parts(), through_file in any::<bool>()) {
        let image = kbi::encode(&parts).unwrap();
        let layout = KbiLayout::parse(image.as_slice()).unwrap();
        prop_assert_eq!((layout.dim, layout.nlist, layout.ntotal, layout.metric, layout.nprobe),
            (parts.dim, parts.nlist(), parts.ntotal(), parts.metric, parts.nprobe));
        prop_assert_eq!(layout.file_len, image.len() as u64);
        let index = if through_file {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("x.kbi");
            let written = kbi::write_kbi(&path, &parts).unwrap();
            prop_assert_eq!(written, image.len() as u64);
            prop_assert_eq!(std::fs::read(&path).unwrap(), image.as_slice());
            let index = IvfIndex::open(&path).unwrap();
            prop_assert!(index.is_mapped());
            index
        } else {
            IvfIndex::from_image(image).unwrap()
        };
        let back = index.to_parts();
        prop_assert!(same_bits(&back, &parts), "{back:?}\n!=\n{parts:?}");
    }

    /// A faiss IVF-Flat file in faiss's own layout reads back exactly (full and sparse list
    /// sizes, every direct-map kind), and what it reads builds an index holding the same.
    #[test]
    fn faiss_files_read_back_exactly(
        parts in parts(),
        nprobe in prop_oneof![Just(0u64), 1u64..100, Just(u64::MAX)],
        sparse in any::<bool>(),
        direct_map in 0u8..=2,
        style in any::<u64>(),
    ) {
        let style = handmade::FaissStyle {
            nprobe,
            sparse,
            direct_map,
            dummy: style as i64,
            is_trained: (style & 1) as u8,
        };
        let bytes = handmade::faiss(&parts, &style).bytes;
        prop_assert!(matches!(format::sniff_bytes(&bytes), Ok(format::FileKind::Faiss)));
        let read = format::read_faiss_index(&bytes);
        if parts.ntotal() == 0 {
            prop_assert!(matches!(read, Err(FormatError::TrainedOnly)), "{read:?}");
            return Ok(());
        }
        let read = read.unwrap();
        let want = IndexParts {
            nprobe: nprobe.clamp(1, u32::MAX as u64) as u32,
            metadata: read.metadata.clone(),
            ..parts.clone()
        };
        prop_assert!(same_bits(&read, &want), "{read:?}\n!=\n{want:?}");
        prop_assert_eq!(read.metadata.frames, parts.ntotal() as u64);
        let index = IvfIndex::from_parts(&read).unwrap();
        prop_assert!(same_bits(&index.to_parts(), &read));
    }
}

#[test]
fn an_index_with_more_lists_than_vectors_round_trips() {
    // RVC-style imports can hold more (mostly empty) lists than vectors.
    let parts = IndexParts {
        dim: 2,
        metric: Metric::L2,
        nprobe: 1,
        centroids: vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0],
        lists: vec![
            ListParts::default(),
            ListParts {
                ids: vec![7],
                vectors: vec![1.0, 1.5],
            },
            ListParts::default(),
        ],
        metadata: Metadata::default(),
    };
    let index = IvfIndex::from_parts(&parts).unwrap();
    assert_eq!(index.to_parts(), parts);
    let found = Searcher::new().search(&index, &[0.0, 0.0], 4, 1).to_vec();
    assert_eq!(found.iter().map(|n| n.id).collect::<Vec<_>>(), [7]);
}

/// Regression: with inner product, a huge query makes every score +inf; the weights were
/// 0/0 and the blend NaN.
#[test]
fn an_inner_product_blend_whose_scores_all_overflow_is_finite() {
    let parts = IndexParts {
        dim: 2,
        metric: Metric::InnerProduct,
        nprobe: 1,
        centroids: vec![1.0, 1.0],
        lists: vec![ListParts {
            ids: vec![1, 2],
            vectors: vec![1e30, 1e30, 2e30, 1e30],
        }],
        metadata: Metadata::default(),
    };
    let index = IvfIndex::from_parts(&parts).unwrap();
    let query = [f32::MAX, 1.0];
    let mut searcher = Searcher::new();
    assert!(searcher
        .search(&index, &query, 2, 1)
        .iter()
        .all(|n| n.distance == f32::INFINITY));
    let mut out = [0f32; 2];
    let params = BlendParams {
        expansion: None,
        k: 2,
        nprobe: 1,
        ratio: 0.5,
    };
    let outcome = searcher.blend(&index, &query, &params, &mut out);
    assert!(
        matches!(outcome, BlendOutcome::Blended { neighbours: 2, .. }),
        "{outcome:?}"
    );
    assert!(out.iter().all(|v| v.is_finite()), "{out:?}");
}
