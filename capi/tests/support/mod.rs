//! Test indexes for the C ABI tests: RVC-shaped parts (clustered feature frames filed under
//! their nearest centroid, as faiss's IVF training leaves them), written as `.kbi` by the
//! core's writer or in faiss's `write_index` IVF-Flat layout (what RVC ships as
//! `added_*.index`) by the small writer below, so no test needs faiss itself.
#![allow(dead_code)]

use std::path::Path;

use knnblend_core::format::{write_kbi, IndexParts, ListParts, Metadata, Metric};

/// A small deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// `n` frames of `dim` around `nlist` cluster centres, each filed under its nearest centroid.
pub fn rvc_parts(seed: u64, dim: usize, n: usize, nlist: usize, features: &str) -> IndexParts {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let centroids: Vec<f32> = (0..nlist * dim).map(|_| rng.f32()).collect();
    let mut lists = vec![ListParts::default(); nlist];
    for i in 0..n {
        let c = i % nlist;
        let v: Vec<f32> = centroids[c * dim..(c + 1) * dim]
            .iter()
            .map(|&x| x + 0.35 * rng.f32())
            .collect();
        let nearest = (0..nlist)
            .min_by(|&a, &b| {
                let d = |l: usize| -> f32 {
                    centroids[l * dim..(l + 1) * dim]
                        .iter()
                        .zip(&v)
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum()
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        lists[nearest].ids.push(i as i64);
        lists[nearest].vectors.extend(v);
    }
    IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids,
        lists,
        metadata: Metadata {
            features: features.to_string(),
            ..Metadata::default()
        },
    }
}

/// Queries near the index's frames (centre plus noise), `count` rows of `parts.dim`.
pub fn queries(parts: &IndexParts, count: usize, seed: u64) -> Vec<f32> {
    let (d, nlist) = (parts.dim, parts.centroids.len() / parts.dim);
    let mut rng = Rng(seed | 1);
    (0..count)
        .flat_map(|i| {
            let c = (i * 5 + 3) % nlist;
            parts.centroids[c * d..(c + 1) * d]
                .iter()
                .map(|&x| x + 0.4 * rng.f32())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Writes `parts` as a `.kbi`.
pub fn write_kbi_file(path: &Path, parts: &IndexParts) {
    write_kbi(path, parts).unwrap();
}

/// Writes `parts` in faiss's `write_index` layout of an `IndexIVFFlat` (`IwFl`, a flat L2
/// quantizer `IxF2`, array inverted lists `ilar` with `full` list sizes, no direct map).
pub fn write_faiss_file(path: &Path, p: &IndexParts) {
    assert_eq!(p.metric, Metric::L2);
    let (d, nlist) = (p.dim, p.lists.len());
    let ntotal: usize = p.lists.iter().map(|l| l.ids.len()).sum();
    let mut b: Vec<u8> = Vec::new();
    let header = |b: &mut Vec<u8>, ntotal: i64| {
        b.extend((d as i32).to_le_bytes());
        b.extend(ntotal.to_le_bytes());
        b.extend((1i64 << 20).to_le_bytes()); // dummy
        b.extend((1i64 << 20).to_le_bytes()); // dummy
        b.push(1); // is_trained
        b.extend(1i32.to_le_bytes()); // METRIC_L2
    };
    b.extend(b"IwFl");
    header(&mut b, ntotal as i64);
    b.extend((nlist as u64).to_le_bytes());
    b.extend(1u64.to_le_bytes()); // nprobe
    b.extend(b"IxF2");
    header(&mut b, nlist as i64);
    b.extend((p.centroids.len() as u64).to_le_bytes());
    p.centroids.iter().for_each(|v| b.extend(v.to_le_bytes()));
    b.push(0); // direct map type: none
    b.extend(0u64.to_le_bytes());
    b.extend(b"ilar");
    b.extend((nlist as u64).to_le_bytes());
    b.extend(((d * 4) as u64).to_le_bytes()); // code size
    b.extend(b"full");
    b.extend((nlist as u64).to_le_bytes());
    p.lists
        .iter()
        .for_each(|l| b.extend((l.ids.len() as u64).to_le_bytes()));
    for l in &p.lists {
        l.vectors.iter().for_each(|v| b.extend(v.to_le_bytes()));
        l.ids.iter().for_each(|id| b.extend(id.to_le_bytes()));
    }
    std::fs::write(path, b).unwrap();
}
