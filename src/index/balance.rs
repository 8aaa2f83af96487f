//! Balanced lists (`knnblend build --max-list-factor F`): RVC's k-means lists are uneven (on a
//! 30 000-vector index of 769 lists they hold 1 to 341 vectors, mean 39), so the frame whose
//! query lands in the largest list costs many times the median frame. Every list longer than
//! `F ×` the mean is split by k-means on its own members into lists of at most that length,
//! each with its own centroid, so the work of a one-list probe is bounded by construction.
//!
//! Build time only: this allocates freely and never runs on an audio thread.

use crate::format::{Balance, FormatError, IndexParts, ListParts};

/// What [`balance`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BalanceReport {
    /// The metadata entry the balanced index carries.
    pub balance: Balance,
    /// Lists after splitting.
    pub lists_after: u64,
    /// The longest list after splitting.
    pub longest: u64,
}

/// Splits every list of `parts` longer than `ceil(max_list_factor × mean)` (the mean over all
/// lists) into lists no longer than that, and records it in the metadata (`"balance"`). A split
/// list keeps its place (with the first part's centroid); the other parts are new lists at the
/// end. Ids and vectors are unchanged, each stored once; `seed` makes the k-means repeatable.
pub fn balance(
    parts: &IndexParts,
    max_list_factor: f64,
    seed: u64,
) -> Result<(IndexParts, BalanceReport), FormatError> {
    if !(max_list_factor.is_finite() && max_list_factor >= 1.0) {
        return Err(FormatError::InvalidParts(format!(
            "the list factor must be a number >= 1 (a multiple of the mean list), not {max_list_factor}"
        )));
    }
    if parts.metadata.spill().is_some() {
        return Err(FormatError::InvalidParts(
            "balance the index before spilling it: a spilled index's copies would be split apart"
                .into(),
        ));
    }
    let d = parts.dim;
    let nlist = parts.nlist();
    let mean = parts.ntotal() as f64 / nlist as f64;
    let cap = ((max_list_factor * mean).ceil() as usize).max(1);
    let mut out = parts.clone();
    let mut rng = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut split = 0u64;
    for l in 0..nlist {
        if out.lists[l].ids.len() <= cap {
            continue;
        }
        split += 1;
        let list = std::mem::take(&mut out.lists[l]);
        let mut pieces = Vec::new();
        split_list(list, d, cap, &mut rng, &mut pieces);
        let mut pieces = pieces.into_iter();
        let (c, first) = pieces.next().expect("a split gives at least one list");
        out.centroids[l * d..(l + 1) * d].copy_from_slice(&c);
        out.lists[l] = first;
        for (c, piece) in pieces {
            out.centroids.extend_from_slice(&c);
            out.lists.push(piece);
        }
    }
    let balance = Balance {
        max_list_factor,
        max_list: cap as u64,
        lists_before: nlist as u64,
        lists_split: split,
    };
    out.metadata.set_balance(Some(balance));
    let report = BalanceReport {
        balance,
        lists_after: out.lists.len() as u64,
        longest: out.lists.iter().map(|l| l.ids.len()).max().unwrap_or(0) as u64,
    };
    Ok((out, report))
}

/// Splits `list` into pieces of at most `cap` rows (with their centroids) into `out`: k-means
/// into twice as many parts as the bound needs, recursing into any part still too long; a
/// list k-means cannot divide (all its vectors equal) is cut into consecutive pieces.
fn split_list(
    list: ListParts,
    d: usize,
    cap: usize,
    rng: &mut u64,
    out: &mut Vec<(Vec<f32>, ListParts)>,
) {
    let n = list.ids.len();
    if n <= cap {
        out.push((mean_of(&list.vectors, d), list));
        return;
    }
    let k = n.div_ceil(cap).max(2).min(n);
    let assign = kmeans_assign(&list.vectors, d, k, rng);
    let mut parts = vec![ListParts::default(); k];
    for (i, &a) in assign.iter().enumerate() {
        parts[a].ids.push(list.ids[i]);
        parts[a]
            .vectors
            .extend_from_slice(&list.vectors[i * d..(i + 1) * d]);
    }
    parts.retain(|p| !p.ids.is_empty());
    if parts.len() < 2 {
        // Nothing to divide by: cut in order.
        for (ids, vectors) in list.ids.chunks(cap).zip(list.vectors.chunks(cap * d)) {
            let piece = ListParts {
                ids: ids.to_vec(),
                vectors: vectors.to_vec(),
            };
            out.push((mean_of(&piece.vectors, d), piece));
        }
        return;
    }
    for p in parts {
        split_list(p, d, cap, rng, out);
    }
}

fn next(rng: &mut u64) -> u64 {
    // splitmix64
    *rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let t = (*x - *y) as f64;
            t * t
        })
        .sum()
}

fn mean_of(rows: &[f32], d: usize) -> Vec<f32> {
    let n = rows.len() / d;
    let mut acc = vec![0f64; d];
    for r in rows.chunks_exact(d) {
        for (a, &v) in acc.iter_mut().zip(r) {
            *a += v as f64;
        }
    }
    acc.iter().map(|a| (a / n.max(1) as f64) as f32).collect()
}

/// Lloyd's k-means (k-means++ seeding, 20 rounds) of `rows`; the part of each row.
fn kmeans_assign(rows: &[f32], d: usize, k: usize, rng: &mut u64) -> Vec<usize> {
    let n = rows.len() / d;
    let row = |i: usize| &rows[i * d..(i + 1) * d];
    // k-means++: each next seed drawn with probability ∝ squared distance to the nearest seed.
    let mut centres: Vec<f32> = row((next(rng) % n as u64) as usize).to_vec();
    let mut near: Vec<f64> = (0..n).map(|i| dist2(row(i), &centres[..d])).collect();
    while centres.len() < k * d {
        let total: f64 = near.iter().sum();
        if total <= 0.0 {
            break; // every row equals a seed
        }
        let mut t = (next(rng) >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut pick = n - 1;
        for (i, &w) in near.iter().enumerate() {
            if t < w {
                pick = i;
                break;
            }
            t -= w;
        }
        let c = centres.len() / d;
        centres.extend_from_slice(row(pick));
        for (i, w) in near.iter_mut().enumerate() {
            *w = w.min(dist2(row(i), &centres[c * d..(c + 1) * d]));
        }
    }
    let k = centres.len() / d;
    let mut assign = vec![0usize; n];
    for _ in 0..20 {
        let mut moved = false;
        for (i, a) in assign.iter_mut().enumerate() {
            let best = (0..k)
                .map(|c| (dist2(row(i), &centres[c * d..(c + 1) * d]), c))
                .min_by(|x, y| x.0.total_cmp(&y.0))
                .map_or(0, |b| b.1);
            moved |= best != *a;
            *a = best;
        }
        let mut sums = vec![0f64; k * d];
        let mut counts = vec![0usize; k];
        for (i, &a) in assign.iter().enumerate() {
            counts[a] += 1;
            for (s, &v) in sums[a * d..(a + 1) * d].iter_mut().zip(row(i)) {
                *s += v as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for (dst, s) in centres[c * d..(c + 1) * d].iter_mut().zip(&sums[c * d..]) {
                    *dst = (s / counts[c] as f64) as f32;
                }
            }
        }
        if !moved {
            break;
        }
    }
    assign
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Metadata, Metric};

    fn skewed(dim: usize) -> IndexParts {
        // List 0 holds 500 vectors in three blobs, lists 1..10 hold 10 each, list 10 holds 300
        // copies of one vector (k-means cannot divide it).
        let mut s = 1u64;
        let mut r = || (next(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        let mut lists = Vec::new();
        let mut id = 0i64;
        let mut list = |n: usize, at: &dyn Fn(usize) -> Vec<f32>| {
            let mut l = ListParts::default();
            for i in 0..n {
                l.ids.push(id);
                id += 1;
                l.vectors.extend(at(i));
            }
            l
        };
        let blobs: Vec<Vec<f32>> = (0..500)
            .map(|i| {
                (0..dim)
                    .map(|j| ((i % 3) * 10) as f32 * (j == 0) as u8 as f32 + r())
                    .collect()
            })
            .collect();
        lists.push(list(500, &|i| blobs[i].clone()));
        for l in 1..10 {
            lists.push(list(10, &|_| vec![l as f32 * 100.0; dim]));
        }
        lists.push(list(300, &|_| vec![-50.0; dim]));
        let centroids = lists
            .iter()
            .flat_map(|l| mean_of(&l.vectors, dim))
            .collect();
        IndexParts {
            dim,
            metric: Metric::L2,
            nprobe: 1,
            centroids,
            lists,
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn long_lists_are_split_below_the_bound_and_nothing_is_lost() {
        let p = skewed(8);
        let (b, report) = balance(&p, 2.0, 5).unwrap();
        b.validate().unwrap();
        let cap = (2.0 * 890.0 / 11.0f64).ceil() as usize;
        assert_eq!(report.balance.max_list, cap as u64);
        assert_eq!(report.balance.lists_split, 2);
        assert!(b.lists.iter().all(|l| l.ids.len() <= cap));
        assert_eq!(
            report.longest as usize,
            b.lists.iter().map(|l| l.ids.len()).max().unwrap()
        );
        // Every (id, vector) pair is stored exactly once.
        let mut got: Vec<(i64, Vec<u32>)> = Vec::new();
        for l in &b.lists {
            for (i, &id) in l.ids.iter().enumerate() {
                got.push((
                    id,
                    l.vectors[i * 8..(i + 1) * 8]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect(),
                ));
            }
        }
        let mut want: Vec<(i64, Vec<u32>)> = Vec::new();
        for l in &p.lists {
            for (i, &id) in l.ids.iter().enumerate() {
                want.push((
                    id,
                    l.vectors[i * 8..(i + 1) * 8]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect(),
                ));
            }
        }
        got.sort();
        want.sort();
        assert_eq!(got, want);
        // Short lists keep their place and centroid.
        assert_eq!(b.lists[3], p.lists[3]);
        assert_eq!(b.centroids[3 * 8..4 * 8], p.centroids[3 * 8..4 * 8]);
        // Same seed, same split.
        assert_eq!(balance(&p, 2.0, 5).unwrap().0, b);
        assert_eq!(b.metadata.balance(), Some(report.balance));
    }

    #[test]
    fn bad_factors_are_refused() {
        let p = skewed(4);
        for f in [0.5, f64::NAN, f64::INFINITY] {
            let e = balance(&p, f, 0).unwrap_err().to_string();
            assert!(e.contains("list factor"), "{e}");
        }
    }
}
