//! Test indexes for the C ABI tests: RVC-shaped parts (clustered feature frames filed under
//! their nearest centroid, as faiss's IVF training leaves them), written as `.kbi` by the
//! core's writer or in faiss's `write_index` IVF-Flat layout (what RVC ships as
//! `added_*.index`) by the small writer below, so no test needs faiss itself; and IVF-PQ
//! FastScan parts made from them by hand (`pq_parts`), written as PQ `.kbi`.
#![allow(dead_code)]

use std::path::Path;

use knnblend_core::format::{
    write_kbi, write_pq_kbi, IndexParts, ListParts, Metadata, Metric, PqList, PqParts,
    ProductQuantizer, RefineFlat, PQ_KSUB,
};

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

/// IVF-PQ FastScan parts made from `flat` without faiss: the same centroids and lists (ids in
/// the same storage order), `m` sub-quantizers whose 16 centroids are sub-vectors of 16 of the
/// frames (residuals when `by_residual`), every frame encoded by its nearest ones and packed in
/// faiss's block layout (`pq4_pack_codes`, see `format::PqParts`); refined with the exact
/// frames and `k_factor` when given (the ids of `rvc_parts` are `0..n`, as refinement needs).
pub fn pq_parts(flat: &IndexParts, m: usize, by_residual: bool, k_factor: Option<f32>) -> PqParts {
    let (d, nlist) = (flat.dim, flat.lists.len());
    assert_eq!(d % m, 0, "m must divide the dimension");
    let dsub = d / m;
    let ntotal: usize = flat.lists.iter().map(|l| l.ids.len()).sum();
    // What the codes encode, list by list, in storage order.
    let encoded = |l: usize, i: usize| -> Vec<f32> {
        let v = &flat.lists[l].vectors[i * d..(i + 1) * d];
        if by_residual {
            let c = &flat.centroids[l * d..(l + 1) * d];
            v.iter().zip(c).map(|(x, y)| x - y).collect()
        } else {
            v.to_vec()
        }
    };
    let rows: Vec<(usize, usize)> = (0..nlist)
        .flat_map(|l| (0..flat.lists[l].ids.len()).map(move |i| (l, i)))
        .collect();
    // Sub-quantizer j's centroid c: sub-vector j of frame number (c * ntotal / 16 + j) % ntotal.
    let mut codebooks = vec![0f32; m * PQ_KSUB * dsub];
    for j in 0..m {
        for c in 0..PQ_KSUB {
            let (l, i) = rows[(c * ntotal / PQ_KSUB + j) % ntotal];
            let v = encoded(l, i);
            let at = (j * PQ_KSUB + c) * dsub;
            codebooks[at..at + dsub].copy_from_slice(&v[j * dsub..(j + 1) * dsub]);
        }
    }
    let (bbs, m2) = (32, m.next_multiple_of(2));
    let lists = (0..nlist)
        .map(|l| {
            let n = flat.lists[l].ids.len();
            let mut codes = vec![0u8; n.div_ceil(bbs) * bbs * m2 / 2];
            for i in 0..n {
                let v = encoded(l, i);
                let (block, within) = (i / bbs, i % bbs);
                for j in 0..m {
                    let sub = &v[j * dsub..(j + 1) * dsub];
                    let c = (0..PQ_KSUB)
                        .min_by(|&a, &b| {
                            let dist = |c: usize| -> f32 {
                                let at = (j * PQ_KSUB + c) * dsub;
                                codebooks[at..at + dsub]
                                    .iter()
                                    .zip(sub)
                                    .map(|(x, y)| (x - y) * (x - y))
                                    .sum()
                            };
                            dist(a).total_cmp(&dist(b))
                        })
                        .unwrap() as u8;
                    let w = within % 16;
                    let k = if w < 8 { 2 * w } else { 2 * (w - 8) + 1 };
                    let at = block * bbs * m2 / 2
                        + (j / 2) * bbs
                        + (within / 32) * 32
                        + k
                        + 16 * (j % 2);
                    codes[at] |= if within % 32 >= 16 { c << 4 } else { c };
                }
            }
            PqList {
                ids: flat.lists[l].ids.clone(),
                codes,
            }
        })
        .collect();
    let refine = k_factor.map(|k_factor| {
        let mut vectors = vec![0f32; ntotal * d];
        for list in &flat.lists {
            for (i, &id) in list.ids.iter().enumerate() {
                let id = id as usize;
                vectors[id * d..(id + 1) * d].copy_from_slice(&list.vectors[i * d..(i + 1) * d]);
            }
        }
        RefineFlat { vectors, k_factor }
    });
    let parts = PqParts {
        dim: d,
        metric: flat.metric,
        nprobe: flat.nprobe,
        centroids: flat.centroids.clone(),
        pq: ProductQuantizer { m, dsub, codebooks },
        by_residual,
        bbs,
        implem: 0,
        qbs2: 0,
        lists,
        refine,
        metadata: flat.metadata.clone(),
    };
    parts.validate().unwrap();
    parts
}

/// Writes `parts` as an IVF-PQ FastScan `.kbi` (format version 2).
pub fn write_pq_kbi_file(path: &Path, parts: &PqParts) {
    write_pq_kbi(path, parts).unwrap();
}
