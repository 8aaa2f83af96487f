//! Query-side α expansion at the shapes users run (d = 80, 256, 768): the expanded query equals
//! an f64 reference built from the k nearest vectors; a blend with expansion is the blend of
//! the neighbours of the expanded query with the original query; the live runtime's
//! `blend_block` gives what `blend` gives frame by frame; and expansion changes the neighbours
//! (a negative control: the tests would pass trivially if it did nothing).

#[path = "live_support/mod.rs"]
mod support;

use knnblend::index::{BlendParams, IvfIndex, QueryExpansion, Searcher};
use support::*;

fn reference_expansion(index: &IvfIndex, q: &[f32], exp: QueryExpansion) -> Vec<f64> {
    let mut exact = Searcher::new();
    exact.set_screening(false);
    let found = exact.search(index, q, exp.k, 1).to_vec();
    let qn = q.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let mut acc = vec![0f64; q.len()];
    let mut wsum = 0.0;
    for n in &found {
        let v = index.vector(n.pos as usize);
        let vn = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let cos = q
            .iter()
            .zip(v)
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
            / (qn * vn);
        let w = cos.max(0.0).powf(exp.alpha as f64);
        wsum += w;
        acc.iter_mut().zip(v).for_each(|(a, &x)| *a += w * x as f64);
    }
    let en = acc.iter().map(|x| (x / wsum).powi(2)).sum::<f64>().sqrt();
    acc.iter().map(|x| x / wsum * qn / en).collect()
}

#[test]
fn expansion_matches_the_f64_reference_and_feeds_the_blend() {
    let exp = QueryExpansion { k: 8, alpha: 3.0 };
    for shape in shapes() {
        let index = IvfIndex::from_parts(&parts(&shape, identity(1))).unwrap();
        let d = shape.dim;
        let qs = queries(d, 64, 11);
        let mut s = Searcher::new();
        let mut plain = Searcher::new();
        let mut expanded = vec![0f32; d];
        let (mut changed, mut worst) = (0, 0f64);
        for q in qs.chunks_exact(d) {
            let used = s.expand_query(&index, q, 1, &exp, &mut expanded);
            assert!(used > 0, "{}: no expansion", shape.label());
            let want = reference_expansion(&index, q, exp);
            let scale = want.iter().map(|x| x * x).sum::<f64>().sqrt();
            for (&g, &w) in expanded.iter().zip(&want) {
                worst = worst.max((g as f64 - w).abs() / scale);
            }
            // The blend with expansion: neighbours of the expanded query, mixed with q.
            let params = BlendParams {
                expansion: Some(exp),
                ..BlendParams::new(8, 1, 0.75)
            };
            let mut got = vec![0f32; d];
            s.blend(&index, q, &params, &mut got);
            let mut want_blend = vec![0f32; d];
            let neighbours = plain.search(&index, &expanded, 8, 1).to_vec();
            let direct = plain.search(&index, q, 8, 1).to_vec();
            changed += (neighbours != direct) as usize;
            // RVC's blend by hand: the expanded query's neighbours and scores, mixed with q.
            let scores: Vec<f32> = neighbours.iter().map(|n| n.distance).collect();
            let mut w = vec![0f64; scores.len()];
            knnblend::index::rvc_weights(&scores, &mut w);
            for (j, o) in want_blend.iter_mut().enumerate() {
                let mix: f64 = neighbours
                    .iter()
                    .zip(&w)
                    .map(|(n, w)| w * index.vector(n.pos as usize)[j] as f64)
                    .sum();
                *o = (0.75 * mix + 0.25 * q[j] as f64) as f32;
            }
            for (&g, &w) in got.iter().zip(&want_blend) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{}: blend {g} vs {w}",
                    shape.label()
                );
            }
        }
        println!(
            "{}: expanded queries within {worst:.2e} (relative) of the f64 reference; \
             neighbours changed for {changed} of 64 queries",
            shape.label()
        );
        assert!(worst < 1e-5, "{}: {worst}", shape.label());
        assert!(
            changed > 0,
            "{}: expansion never changed the neighbours",
            shape.label()
        );
    }
}

#[test]
fn the_live_runtime_expands_block_and_frame_alike() {
    for shape in shapes() {
        let d = shape.dim;
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "v.kbi", &shape, identity(1));
        let (control, mut audio) = runtime(d, 1, 0.0, 0.01);
        assert!(matches!(
            control.load(0, &file).wait(),
            knnblend::live::LoadOutcome::Published(_)
        ));
        let qs = queries(d, 40, 5);
        let exp = QueryExpansion { k: 8, alpha: 3.0 };
        let index = IvfIndex::open(&file).unwrap();
        let mut direct = Searcher::new();
        let params = BlendParams {
            expansion: Some(exp),
            ..BlendParams::new(8, 1, 0.9)
        };
        audio.begin_block(0, 0.0);
        audio.set_query_expansion(Some(exp));
        let mut by_block = vec![0f32; qs.len()];
        audio.blend_block(&qs, d, 8, 0.9, &mut by_block);
        let mut by_frame = vec![0f32; qs.len()];
        for (q, o) in qs.chunks_exact(d).zip(by_frame.chunks_exact_mut(d)) {
            audio.blend(q, 8, 0.9, o);
        }
        let mut want = vec![0f32; qs.len()];
        for (q, o) in qs.chunks_exact(d).zip(want.chunks_exact_mut(d)) {
            direct.blend(&index, q, &params, o);
        }
        assert_eq!(by_block, by_frame, "{}", shape.label());
        assert_eq!(by_block, want, "{}", shape.label());
        // Off again: the plain blend.
        audio.set_query_expansion(None);
        let mut plain = vec![0f32; qs.len()];
        audio.blend_block(&qs, d, 8, 0.9, &mut plain);
        assert_ne!(
            plain,
            by_block,
            "{}: expansion changed nothing",
            shape.label()
        );
        audio.end_block();
    }
}
