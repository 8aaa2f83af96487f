//! Test voices built with the library (no faiss): a synthetic voice's features in an exact
//! single-list index or in an IVF-PQ FastScan index (a PQ `.kbi`), and a valid index of the
//! wrong feature kind.

#![allow(dead_code)]

/// A synthetic voice's rows as `knnblend build --audio` composes them (the speaker-relative
/// envelopes and their metadata, with the speaker mean), without its faiss training step.
fn voice_rows(name: &str, high: bool) -> (Vec<f32>, usize, knnblend::format::Metadata) {
    use knnblend::voice::{synth, Extractor, FeatureSpec, SilenceRule};
    let spec = FeatureSpec::default();
    let sample_rate = 44_100.0;
    let seconds = 4.0;
    let params = if high {
        synth::VoiceParams::high()
    } else {
        synth::VoiceParams::low()
    };
    let audio = synth::synth_voice(&params, sample_rate, seconds);
    let extracted = Extractor::new(&spec, sample_rate).extract(&audio, &SilenceRule::default());
    assert!(extracted.frames > 10, "synthetic voice gave no frames");
    let (rows, mean) = spec.speaker_rows(&extracted.rows);
    let mut metadata = spec.metadata(
        vec![name.to_string()],
        extracted.frames as u64,
        seconds as f64,
    );
    metadata
        .extra
        .insert("speaker_mean".into(), serde_json::json!(mean));
    (rows, spec.dim(), metadata)
}

/// Builds a small voice index with the library (synthetic voice, exact single-list index) and
/// writes it as a `.kbi` in `dir`.
pub fn make_voice(dir: &std::path::Path, name: &str, high: bool) -> std::path::PathBuf {
    // One exact list is enough for a few hundred frames.
    let (rows, dim, metadata) = voice_rows(name, high);
    let parts = knnblend::voice::flat_parts(&rows, dim, knnblend::format::Metric::L2, metadata);
    let path = dir.join(name);
    knnblend::format::write_kbi(&path, &parts).expect("write test voice");
    path
}

/// [`make_voice`] with the pitch statistics `knnblend build --audio` records (median f0,
/// spread, voiced share of the same synthetic recording), so Match voice pitch has a target.
pub fn make_voice_with_pitch(dir: &std::path::Path, name: &str, high: bool) -> std::path::PathBuf {
    use knnblend::voice::{synth, PitchCollector, PitchSpec};
    let (rows, dim, mut metadata) = voice_rows(name, high);
    let params = if high {
        synth::VoiceParams::high()
    } else {
        synth::VoiceParams::low()
    };
    let mut pitch = PitchCollector::new(PitchSpec::default());
    pitch
        .add(&synth::synth_voice(&params, 44_100.0, 4.0), 44_100)
        .unwrap();
    let stats = pitch.finish();
    assert!(stats.has_median(), "{stats:?}");
    stats.store(&mut metadata);
    let parts = knnblend::voice::flat_parts(&rows, dim, knnblend::format::Metric::L2, metadata);
    let path = dir.join(name);
    knnblend::format::write_kbi(&path, &parts).expect("write test voice");
    path
}

/// How [`make_pq_voice`] stores a voice as IVF-PQ FastScan.
#[derive(Clone, Copy, Debug)]
pub struct PqRecipe {
    /// Inverted lists (k-means centroids of the rows).
    pub nlist: usize,
    /// Sub-quantizers (`PQ{m}x4fs`); divides the voice's 80 dimensions.
    pub m: usize,
    /// The refine vectors' `k_factor` (`,RFlat`), or `None` for an unrefined index.
    pub k_factor: Option<f32>,
}

/// The same voice as [`make_voice`] (same rows, same metadata) stored as an IVF-PQ FastScan
/// index (4-bit codes in faiss's block layout, not by residual, 32 vectors per block; refined
/// by the exact rows when `recipe.k_factor` is set), written as a PQ `.kbi` in `dir` by the
/// library's writer, as `knnblend import` writes one. Built here without faiss (the plugin's
/// tests do not link it): k-means codebooks and centroids, nearest-centroid codes.
pub fn make_pq_voice(
    dir: &std::path::Path,
    name: &str,
    high: bool,
    recipe: PqRecipe,
) -> std::path::PathBuf {
    use knnblend::format::{Metric, PqList, PqParts, ProductQuantizer, RefineFlat, PQ_KSUB};
    let (rows, dim, metadata) = voice_rows(name, high);
    let n = rows.len() / dim;
    let PqRecipe { nlist, m, k_factor } = recipe;
    assert_eq!(dim % m, 0, "PQ{m} does not divide {dim}");
    let dsub = dim / m;
    let centroids = kmeans(&rows, dim, nlist, 12);
    let mut codebooks = Vec::with_capacity(m * PQ_KSUB * dsub);
    for j in 0..m {
        let sub: Vec<f32> = rows
            .chunks_exact(dim)
            .flat_map(|r| r[j * dsub..(j + 1) * dsub].iter().copied())
            .collect();
        codebooks.extend(kmeans(&sub, dsub, PQ_KSUB, 12));
    }
    let bbs = 32;
    let m2 = m.next_multiple_of(2);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); nlist];
    for (i, r) in rows.chunks_exact(dim).enumerate() {
        members[nearest(&centroids, dim, r)].push(i);
    }
    let lists = members
        .iter()
        .map(|ids| {
            let mut codes = vec![0u8; ids.len().div_ceil(bbs) * bbs * m2 / 2];
            for (within_list, &i) in ids.iter().enumerate() {
                let r = &rows[i * dim..(i + 1) * dim];
                let (block, within) = (within_list / bbs, within_list % bbs);
                for sq in 0..m {
                    let book = &codebooks[sq * PQ_KSUB * dsub..(sq + 1) * PQ_KSUB * dsub];
                    let c = nearest(book, dsub, &r[sq * dsub..(sq + 1) * dsub]) as u8;
                    // faiss's pq4_pack_codes (see knnblend::format::pq).
                    let v = within % 16;
                    let k = if v < 8 { 2 * v } else { 2 * (v - 8) + 1 };
                    let at = block * bbs * m2 / 2
                        + (sq / 2) * bbs
                        + (within / 32) * 32
                        + k
                        + 16 * (sq % 2);
                    codes[at] |= if within % 32 >= 16 { c << 4 } else { c };
                }
            }
            PqList {
                ids: ids.iter().map(|&i| i as i64).collect(),
                codes,
            }
        })
        .collect();
    let parts = PqParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids,
        pq: ProductQuantizer { m, dsub, codebooks },
        by_residual: false,
        bbs,
        implem: 0,
        qbs2: 0,
        lists,
        refine: k_factor.map(|k_factor| RefineFlat {
            vectors: rows.clone(),
            k_factor,
        }),
        metadata,
    };
    assert_eq!(parts.ntotal(), n);
    let path = dir.join(name);
    knnblend::format::write_pq_kbi(&path, &parts).expect("write the PQ test voice");
    path
}

/// The row of `rows` (whole rows of `dim`) nearest to `x` (squared L2; the first of ties).
fn nearest(rows: &[f32], dim: usize, x: &[f32]) -> usize {
    let d2 = |r: &[f32]| r.iter().zip(x).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
    let mut best = (0, f32::INFINITY);
    for (i, r) in rows.chunks_exact(dim).enumerate() {
        let d = d2(r);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// `k` centroids of `rows` (whole rows of `dim`) by Lloyd's algorithm, `iters` rounds, started
/// from rows spread evenly over the input; a centroid left without rows keeps its place.
fn kmeans(rows: &[f32], dim: usize, k: usize, iters: usize) -> Vec<f32> {
    let n = rows.len() / dim;
    assert!(n >= k, "{n} rows for {k} centroids");
    let mut c: Vec<f32> = (0..k)
        .flat_map(|j| {
            rows[(j * n / k) * dim..(j * n / k + 1) * dim]
                .iter()
                .copied()
        })
        .collect();
    for _ in 0..iters {
        let mut sum = vec![0f64; k * dim];
        let mut count = vec![0usize; k];
        for r in rows.chunks_exact(dim) {
            let j = nearest(&c, dim, r);
            count[j] += 1;
            for (s, &v) in sum[j * dim..(j + 1) * dim].iter_mut().zip(r) {
                *s += v as f64;
            }
        }
        for j in 0..k {
            if count[j] > 0 {
                for (cv, s) in c[j * dim..(j + 1) * dim].iter_mut().zip(&sum[j * dim..]) {
                    *cv = (s / count[j] as f64) as f32;
                }
            }
        }
    }
    c
}

/// A valid index whose features do not match the voice engine (another feature kind).
pub fn make_mismatched(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dim = 768;
    let rows: Vec<f32> = (0..dim * 16).map(|i| (i % 97) as f32 / 97.0).collect();
    let metadata = knnblend::format::Metadata {
        features: "rvc-v2-768".to_string(),
        feature_params: serde_json::json!({}),
        sources: vec![],
        frames: 16,
        duration_seconds: 0.16,
        extra: Default::default(),
    };
    let parts = knnblend::voice::flat_parts(&rows, dim, knnblend::format::Metric::L2, metadata);
    let path = dir.join(name);
    knnblend::format::write_kbi(&path, &parts).expect("write mismatched index");
    path
}
