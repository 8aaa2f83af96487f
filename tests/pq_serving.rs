//! IVF-PQ FastScan indexes served like IVF-Flat ones: opened from a memory-mapped `.kbi` or a
//! faiss file by `AnyIndex`, blended as RVC blends (checked against an f64 reference built
//! from faiss's own search results), and served by the live runtime bit for bit as
//! `PqSearcher::blend` serves them, frame by frame and in blocks, across crossfades to and
//! from IVF-Flat indexes, with query expansion, and without allocating on the audio side, at
//! RVC's shapes (256-d `PQ128`, 768-d `PQ192`).

mod common;

use std::path::{Path, PathBuf};

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use common::Clustered;
use faiss::index::refine_flat::RefineFlatIndex;
use faiss::{index_factory, Index, MetricType};
use knnblend::format::{self, IndexParts, IndexStructure, ListParts, Metadata, Metric};
use knnblend::index::{
    AnyIndex, AnySearcher, BlendOutcome, BlendParams, IvfIndex, PqIndex, PqSearcher,
    QueryExpansion, SCORE_EPSILON,
};
use knnblend::live::{live, LiveConfig, LoadOutcome, PqInfo};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

const K: usize = 8;

struct Built {
    faiss_path: PathBuf,
    kbi_path: PathBuf,
    data: Vec<f32>,
    queries: Vec<f32>,
    faiss: Box<dyn Index>,
}

fn normalise(rows: &mut [f32], dim: usize) {
    for v in rows.chunks_exact_mut(dim) {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// `IVF64,PQ{m}x4fs` (refined with `,RFlat` as faiss builds it when `refine`), trained and
/// filled by faiss, saved by faiss and converted to a `.kbi`.
fn build(dir: &Path, dim: usize, m: usize, metric: Metric, refine: bool, seed: u64) -> Built {
    let gen = Clustered::new(dim, 24, seed);
    let mut data = gen.rows(3000, seed + 1);
    let mut queries = gen.rows(64, seed + 2);
    if metric == Metric::InnerProduct {
        normalise(&mut data, dim);
        normalise(&mut queries, dim);
    }
    let mt = match metric {
        Metric::L2 => MetricType::L2,
        Metric::InnerProduct => MetricType::InnerProduct,
    };
    let mut base = index_factory(dim as u32, format!("IVF64,PQ{m}x4fs"), mt).unwrap();
    base.train(&data).unwrap();
    let name = format!("pq{dim}{}{}", metric.name(), refine as u8);
    let faiss_path = dir.join(format!("{name}.index"));
    let faiss: Box<dyn Index> = if refine {
        let mut w = RefineFlatIndex::new(base).unwrap();
        w.add(&data).unwrap();
        faiss::write_index(&w, faiss_path.to_str().unwrap()).unwrap();
        Box::new(w)
    } else {
        base.add(&data).unwrap();
        faiss::write_index(&base, faiss_path.to_str().unwrap()).unwrap();
        Box::new(base)
    };
    let kbi_path = dir.join(format!("{name}.kbi"));
    let parts = format::read_faiss_fastscan_file(&faiss_path).unwrap();
    format::write_pq_kbi(&kbi_path, &parts).unwrap();
    Built {
        faiss_path,
        kbi_path,
        data,
        queries,
        faiss,
    }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn both_files_open_as_pq_and_find_what_faiss_finds() {
    let dir = tempfile::tempdir().unwrap();
    for (dim, m, metric) in [(256, 128, Metric::L2), (768, 192, Metric::InnerProduct)] {
        let mut b = build(dir.path(), dim, m, metric, true, dim as u64);
        let kbi = AnyIndex::open(&b.kbi_path).unwrap();
        let fai = AnyIndex::open(&b.faiss_path).unwrap();
        for (ix, mapped, kind) in [
            (&kbi, true, format::FileKind::Kbi),
            (&fai, false, format::FileKind::Faiss),
        ] {
            assert_eq!(
                ix.structure(),
                IndexStructure::IvfPqFastScan { refined: true }
            );
            assert_eq!(ix.is_mapped(), mapped);
            assert_eq!(ix.source_kind(), kind);
            assert_eq!((ix.dim(), ix.ntotal(), ix.metric()), (dim, 3000, metric));
            assert_eq!(
                format::read_header(ix.path().unwrap()).unwrap().structure,
                ix.structure()
            );
            assert!(
                ix.describe().contains(&format!("IVF64,PQ{m}x4fs,RFlat")),
                "{}",
                ix.describe()
            );
        }
        let mut s = AnySearcher::for_index(&kbi, K, 1);
        let (mut ia, mut da) = ([0i64; K], [0f32; K]);
        let (mut ib, mut db) = ([0i64; K], [0f32; K]);
        let mut agree = 0;
        for q in b.queries.chunks_exact(dim) {
            s.search(&kbi, q, K, 1, &mut ia, &mut da);
            s.search(&fai, q, K, 1, &mut ib, &mut db);
            assert_eq!(ia, ib);
            assert!(same_bits(&da, &db));
            let r = b.faiss.search(q, K).unwrap();
            let theirs: Vec<i64> = r
                .labels
                .iter()
                .map(|l| l.get().map_or(-1, |v| v as i64))
                .collect();
            agree += (theirs == ia) as usize;
        }
        let n = b.queries.len() / dim;
        assert!(
            agree * 100 >= n * 99,
            "{agree} of {n} queries agree with faiss at d = {dim}"
        );
    }
}

/// RVC's blend in f64 of `query` with neighbours (`ids`, faiss's `distances`) whose vectors
/// are `vector(id)`.
fn reference_blend(
    query: &[f32],
    ids: &[i64],
    distances: &[f32],
    metric: Metric,
    vector: impl Fn(i64) -> Vec<f32>,
    ratio: f64,
) -> Vec<f64> {
    let q2: f64 = query.iter().map(|&x| x as f64 * x as f64).sum();
    let mut rows = Vec::new();
    let mut w = Vec::new();
    for (&id, &d) in ids.iter().zip(distances) {
        if id < 0 {
            continue;
        }
        let v = vector(id);
        let score = match metric {
            Metric::L2 => d as f64,
            Metric::InnerProduct => {
                let v2: f64 = v.iter().map(|&x| x as f64 * x as f64).sum();
                (q2 + v2 - 2.0 * d as f64).max(0.0)
            }
        };
        let s = score.abs().max(SCORE_EPSILON);
        w.push(1.0 / (s * s));
        rows.push(v);
    }
    let sum: f64 = w.iter().sum();
    (0..query.len())
        .map(|j| {
            (1.0 - ratio) * query[j] as f64
                + ratio
                    * rows
                        .iter()
                        .zip(&w)
                        .map(|(v, w)| w / sum * v[j] as f64)
                        .sum::<f64>()
        })
        .collect()
}

#[test]
fn the_blend_is_rvcs_blend_of_faisss_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (256, 128, Metric::L2, true),
        (256, 128, Metric::L2, false),
        (768, 192, Metric::InnerProduct, true),
    ];
    for (dim, m, metric, refine) in cases {
        let mut b = build(dir.path(), dim, m, metric, refine, 11 + dim as u64);
        let index = PqIndex::open(&b.kbi_path).unwrap();
        let mut s = PqSearcher::for_index(&index, K, 1);
        let mut out = vec![0f32; dim];
        let mut worst = 0f64;
        for q in b.queries.chunks_exact(dim) {
            let got = s.blend(&index, q, &BlendParams::new(K, 1, 0.75), &mut out);
            assert!(
                matches!(got, BlendOutcome::Blended { neighbours: K, .. }),
                "{got:?}"
            );
            let r = b.faiss.search(q, K).unwrap();
            let ids: Vec<i64> = r
                .labels
                .iter()
                .map(|l| l.get().map_or(-1, |v| v as i64))
                .collect();
            // The outcome's nearest distance is faiss's first score (L2: the score is the
            // squared distance).
            if let (BlendOutcome::Blended { nearest, .. }, Metric::L2) = (got, metric) {
                let first = r.distances[0] as f64;
                assert!(
                    (nearest as f64 - first).abs() <= 1e-4 * (1.0 + first.abs()),
                    "nearest {nearest} vs faiss {first}"
                );
            }
            // Refined: the exact vectors (faiss's reconstruct of an IndexRefineFlat). Not
            // refined: the codes' reconstruction (faiss's reconstruct of the PQ index), taken
            // from the index at the neighbour's place.
            let found: Vec<_> = s.search(&index, q, K, 1).to_vec();
            let vector = |id: i64| -> Vec<f32> {
                if refine {
                    b.data[id as usize * dim..(id as usize + 1) * dim].to_vec()
                } else {
                    let nb = found.iter().find(|n| n.id == id).expect("same neighbours");
                    let mut v = vec![0f32; dim];
                    index.reconstruct(nb.list as usize, nb.offset as usize, &mut v);
                    v
                }
            };
            if ids != found.iter().map(|n| n.id).collect::<Vec<_>>() {
                continue; // a near-tie swapped: not a blend question
            }
            let want = reference_blend(q, &ids, &r.distances, metric, vector, 0.75);
            for (o, w) in out.iter().zip(&want) {
                worst = worst.max((*o as f64 - w).abs() / w.abs().max(1.0));
            }
        }
        assert!(
            worst < 1e-5,
            "d = {dim} {metric:?} refine {refine}: worst relative error {worst:e}"
        );
    }
}

fn flat_index(dim: usize, seed: u64) -> IvfIndex {
    let rows = Clustered::new(dim, 8, seed).rows(400, seed + 1);
    IvfIndex::from_parts(&IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: rows[..dim].to_vec(),
        lists: vec![ListParts {
            ids: (0..400).collect(),
            vectors: rows,
        }],
        metadata: Metadata::default(),
    })
    .unwrap()
}

#[test]
fn the_live_runtime_serves_pq_indexes_as_pq_searcher_blends_them_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for (dim, m) in [(256, 128), (768, 192)] {
        let b = build(dir.path(), dim, m, Metric::L2, true, 5 + dim as u64);
        let (control, mut audio) = live(LiveConfig {
            max_dim: 768,
            frame_period_seconds: 0.01,
            ..LiveConfig::default()
        });
        let t = control.load(0, &b.kbi_path);
        let info = match t.wait() {
            LoadOutcome::Published(info) => info,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            info.structure,
            IndexStructure::IvfPqFastScan { refined: true }
        );
        assert!(info.mapped && info.description.contains("PQ"), "{info:?}");
        let pq = PqIndex::open(&b.kbi_path).unwrap();
        assert_eq!(
            info.pq,
            Some(PqInfo {
                m,
                nbits: 4,
                by_residual: pq.by_residual(),
                bbs: pq.bbs(),
                k_factor: pq.k_factor(),
            })
        );
        assert!(pq.k_factor().is_some());
        control
            .publish(
                1,
                control.prepare_index(flat_index(dim, 3), "flat").unwrap(),
            )
            .unwrap();

        let reference = PqIndex::open(&b.kbi_path).unwrap();
        let mut rs = PqSearcher::for_index(&reference, K, 1);
        let frames = &b.queries[..16 * dim];
        let mut want = vec![0f32; frames.len()];
        let mut want_x = vec![0f32; frames.len()];
        let exp = QueryExpansion { k: 8, alpha: 3.0 };
        for (q, (o, ox)) in frames
            .chunks_exact(dim)
            .zip(want.chunks_exact_mut(dim).zip(want_x.chunks_exact_mut(dim)))
        {
            rs.blend(&reference, q, &BlendParams::new(K, 1, 0.75), o);
            let p = BlendParams {
                expansion: Some(exp),
                ..BlendParams::new(K, 1, 0.75)
            };
            rs.blend(&reference, q, &p, ox);
        }

        let mut single = vec![0f32; frames.len()];
        let mut block = vec![0f32; frames.len()];
        let mut expanded = vec![0f32; frames.len()];
        let mut faded = vec![0f32; frames.len()];
        assert_no_alloc(|| {
            // Pick up slot 0 instantly; blend frame by frame, then as one block.
            audio.begin_block(0, 0.0);
            for (q, o) in frames.chunks_exact(dim).zip(single.chunks_exact_mut(dim)) {
                audio.blend(q, K, 0.75, o);
            }
            audio.blend_block(frames, dim, K, 0.75, &mut block);
            audio.end_block();
            audio.set_query_expansion(Some(exp));
            audio.begin_block(0, 0.0);
            audio.blend_block(frames, dim, K, 0.75, &mut expanded);
            audio.end_block();
            audio.set_query_expansion(None);
            // Crossfade to the flat voice in slot 1 and back (0.05 s = 5 frames).
            audio.begin_block(1, 0.05);
            audio.blend_block(frames, dim, K, 0.75, &mut faded);
            audio.end_block();
            audio.begin_block(0, 0.05);
            audio.blend_block(frames, dim, K, 0.75, &mut faded);
            audio.end_block();
        });
        assert!(
            same_bits(&single, &want),
            "d = {dim}: live blend differs from PqSearcher::blend"
        );
        assert!(same_bits(&block, &want), "d = {dim}: blend_block differs");
        assert!(
            same_bits(&expanded, &want_x),
            "d = {dim}: expanded blend differs"
        );
        // After the fade back (5 frames) the PQ voice serves alone again.
        assert!(faded.iter().all(|x| x.is_finite()));
        assert!(
            same_bits(&faded[6 * dim..], &want[6 * dim..]),
            "d = {dim}: fade did not end on the PQ voice"
        );
        assert!(
            !same_bits(&faded[..dim], &want[..dim]),
            "d = {dim}: the fade's first frame mixes the flat voice"
        );
        // A query of another width is passed through and counted, not a crash.
        let mut short = vec![0f32; 80];
        audio.begin_block(0, 0.0);
        assert_eq!(
            audio.blend(&vec![1.0; 80], K, 0.75, &mut short),
            BlendOutcome::Empty
        );
        audio.end_block();
        drop(audio);
        drop(control);
    }
}

#[test]
fn a_pq_index_whose_k_factor_the_audio_side_cannot_rerank_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), 64, 16, Metric::L2, true, 99);
    let mut parts = format::read_pq_kbi(&b.kbi_path).unwrap();
    parts.refine.as_mut().unwrap().k_factor = 1000.0;
    let path = dir.path().join("greedy.kbi");
    format::write_pq_kbi(&path, &parts).unwrap();
    let (control, _audio) = live(LiveConfig::default());
    let t = control.load(0, &path);
    match t.wait() {
        LoadOutcome::Failed(e) => {
            let text = e.to_string();
            assert!(text.contains("k_factor") && text.contains("4096"), "{text}");
        }
        other => panic!("loaded: {other:?}"),
    }
}

/// The live loader takes faiss's own IVF-PQ FastScan files (refined and not) as they are: the
/// header it reads first and the index it then reads must describe the same file, or every
/// faiss PQ file was refused as "changed while it was being loaded".
#[test]
fn the_live_loader_takes_faiss_pq_files() {
    let dir = tempfile::tempdir().unwrap();
    let (control, _audio) = live(LiveConfig {
        max_dim: 768,
        frame_period_seconds: 0.01,
        ..LiveConfig::default()
    });
    for (slot, refine) in [(0, true), (1, false)] {
        let b = build(dir.path(), 256, 128, Metric::L2, refine, 11 + slot as u64);
        let header = format::read_header(&b.faiss_path).unwrap();
        let opened = AnyIndex::open(&b.faiss_path).unwrap();
        assert_eq!(opened.header(), header, "header and index disagree");
        let info = match control.load(slot, &b.faiss_path).wait() {
            LoadOutcome::Published(info) => info,
            other => panic!("refined {refine}: {other:?}"),
        };
        assert_eq!(
            (info.kind, info.structure, info.mapped),
            (
                format::FileKind::Faiss,
                IndexStructure::IvfPqFastScan { refined: refine },
                false
            )
        );
        assert_eq!(info.pq.map(|p| p.k_factor.is_some()), Some(refine));
    }
}
