//! Spilled assignment (`knnblend build --spill λ`): every vector is stored in its own list and
//! in a second one, chosen as SOAR does (Sun et al., "SOAR: Improved Indexing for Approximate
//! Nearest Neighbor Search", NeurIPS 2023; ScaNN's `spilled assignment`): among the other
//! lists, the one minimising
//!
//! ```text
//! ‖x − c′‖² + λ · ⟨r, x − c′⟩² / ‖r‖²        r = x − c, c the vector's own centroid
//! ```
//!
//! The second term penalises a residual `x − c′` parallel to the first residual: a query that
//! misses `x` through its own list is one whose residual is large along `r`, so the copy is
//! best placed where the residual is orthogonal to `r`. With one probed list, a search then
//! finds neighbours that sit just across a border; the search reports each id once when it
//! probes both copies (`Searcher`).
//!
//! Build time only: this allocates freely and never runs on an audio thread.

use crate::format::{FormatError, IndexParts, ListParts, Spill};

use super::{IvfIndex, Kernels, Searcher, MAX_NPROBE};

/// How [`spill`] assigns the second copies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpillOptions {
    /// λ of the loss (SOAR's λ; around 1 to 1.5 works best). 0 is the plain second-nearest list.
    pub lambda: f32,
    /// How many of the nearest other lists compete for each copy (the loss is at least
    /// `‖x − c′‖²`, so a far list cannot win; see [`SpillReport::exact`]).
    pub candidates: usize,
    /// No list grows beyond this many rows: a copy whose best list is full goes to its best
    /// list with room (used with balanced lists; `None`: no limit).
    pub max_list: Option<usize>,
}

impl Default for SpillOptions {
    fn default() -> Self {
        SpillOptions {
            lambda: 1.0,
            candidates: 32,
            max_list: None,
        }
    }
}

/// What [`spill`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpillReport {
    /// The metadata entry the spilled index carries.
    pub spill: Spill,
    /// Copies whose choice is provably the best over every list, not only over the
    /// candidates: the farthest candidate's distance was at least the winning loss.
    pub exact: u64,
    /// Vectors left without a copy (a single non-empty list, or every candidate list full).
    pub unplaced: u64,
}

/// The loss of placing a copy of `x` (residual `r` from its own centroid, `‖r‖² = rr`) in the
/// list of centroid `c2`, and the squared distance `‖x − c2‖²` it starts from.
fn loss(
    kernels: &Kernels,
    lambda: f32,
    (x, r, rr): (&[f32], &[f32], f32),
    c2: &[f32],
    scratch: &mut [f32],
) -> (f32, f32) {
    for ((s, &xv), &cv) in scratch.iter_mut().zip(x).zip(c2) {
        *s = xv - cv;
    }
    let near = (kernels.dot)(scratch, scratch);
    if rr > 0.0 {
        let along = (kernels.dot)(r, scratch);
        (near + lambda * along * along / rr, near)
    } else {
        (near, near)
    }
}

/// Adds a second copy of every vector of `parts` to the list the SOAR loss picks (see the
/// module documentation), and records it in the metadata (`"spill"`). The ids, the centroids
/// and each list's own vectors are unchanged; copies follow a list's own vectors.
pub fn spill(
    parts: &IndexParts,
    opts: SpillOptions,
) -> Result<(IndexParts, SpillReport), FormatError> {
    if parts.metadata.spill().is_some() {
        return Err(FormatError::InvalidParts(
            "the index is already spilled; spill the index it was built from".into(),
        ));
    }
    if !(opts.lambda.is_finite() && opts.lambda >= 0.0) {
        return Err(FormatError::InvalidParts(format!(
            "the spill λ must be a number >= 0, not {}",
            opts.lambda
        )));
    }
    let index = IvfIndex::from_parts(parts)?;
    let d = parts.dim;
    let m = opts.candidates.clamp(1, MAX_NPROBE - 1) + 1; // the vector's own list comes too
    let kernels = Kernels::detect();
    let mut searcher = Searcher::new();
    let mut sizes: Vec<usize> = parts.lists.iter().map(|l| l.ids.len()).collect();
    let mut copies: Vec<ListParts> = vec![ListParts::default(); parts.nlist()];
    let (mut exact, mut unplaced, mut duplicates) = (0u64, 0u64, 0u64);
    let (mut r, mut scratch) = (vec![0f32; d], vec![0f32; d]);
    for (own, list) in parts.lists.iter().enumerate() {
        let c = &parts.centroids[own * d..(own + 1) * d];
        for (&id, x) in list.ids.iter().zip(list.vectors.chunks_exact(d)) {
            for ((rv, &xv), &cv) in r.iter_mut().zip(x).zip(c) {
                *rv = xv - cv;
            }
            let rr = (kernels.dot)(&r, &r);
            let (_, lists) = searcher.nearest_lists(&index, x, m);
            let mut best: Option<(f32, usize)> = None;
            let mut farthest = 0f32;
            for &l in lists {
                let l = l as usize;
                if l == own {
                    continue;
                }
                let c2 = &parts.centroids[l * d..(l + 1) * d];
                let (v, near) = loss(&kernels, opts.lambda, (x, &r, rr), c2, &mut scratch);
                farthest = farthest.max(near);
                if opts.max_list.is_some_and(|cap| sizes[l] >= cap) {
                    continue;
                }
                if best.is_none_or(|(b, _)| v < b) {
                    best = Some((v, l));
                }
            }
            let Some((v, l)) = best else {
                unplaced += 1;
                continue;
            };
            // Every list outside the candidates is at least `farthest` away, and the loss is
            // at least the squared distance: none of them could have won.
            if lists.len() < m || farthest >= v {
                exact += 1;
            }
            sizes[l] += 1;
            duplicates += 1;
            copies[l].ids.push(id);
            copies[l].vectors.extend_from_slice(x);
        }
    }
    let mut out = parts.clone();
    for (list, extra) in out.lists.iter_mut().zip(copies) {
        list.ids.extend(extra.ids);
        list.vectors.extend(extra.vectors);
    }
    let spill = Spill {
        lambda: opts.lambda as f64,
        duplicates,
        candidates: (m - 1) as u32,
    };
    out.metadata.set_spill(Some(spill));
    Ok((
        out,
        SpillReport {
            spill,
            exact,
            unplaced,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Metadata, Metric};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    /// `n` random vectors in lists by their nearest of `nlist` random centroids.
    fn parts(dim: usize, nlist: usize, n: usize, seed: u64) -> IndexParts {
        let mut rng = Rng(seed);
        let centroids: Vec<f32> = (0..nlist * dim).map(|_| rng.next()).collect();
        let mut lists = vec![ListParts::default(); nlist];
        for i in 0..n {
            let x: Vec<f32> = (0..dim).map(|_| rng.next()).collect();
            let own = (0..nlist)
                .min_by(|&a, &b| {
                    let da: f32 = x
                        .iter()
                        .zip(&centroids[a * dim..])
                        .map(|(p, q)| (p - q) * (p - q))
                        .sum();
                    let db: f32 = x
                        .iter()
                        .zip(&centroids[b * dim..])
                        .map(|(p, q)| (p - q) * (p - q))
                        .sum();
                    da.total_cmp(&db)
                })
                .unwrap();
            lists[own].ids.push(i as i64);
            lists[own].vectors.extend_from_slice(&x);
        }
        IndexParts {
            dim,
            metric: Metric::L2,
            nprobe: 1,
            centroids,
            lists,
            metadata: Metadata::default(),
        }
    }

    /// The SOAR loss in f64, for the oracle.
    fn loss64(lambda: f64, x: &[f32], c: &[f32], c2: &[f32]) -> f64 {
        let r: Vec<f64> = x.iter().zip(c).map(|(a, b)| (*a - *b) as f64).collect();
        let r2: Vec<f64> = x.iter().zip(c2).map(|(a, b)| (*a - *b) as f64).collect();
        let rr: f64 = r.iter().map(|v| v * v).sum();
        let near: f64 = r2.iter().map(|v| v * v).sum();
        let along: f64 = r.iter().zip(&r2).map(|(a, b)| a * b).sum();
        near + if rr > 0.0 {
            lambda * along * along / rr
        } else {
            0.0
        }
    }

    #[test]
    fn every_vector_gets_one_copy_in_the_list_with_the_least_loss() {
        let p = parts(24, 12, 600, 7);
        let opts = SpillOptions {
            lambda: 1.0,
            candidates: 63, // every other list: the choice is over all of them
            max_list: None,
        };
        let (s, report) = spill(&p, opts).unwrap();
        assert_eq!(report.spill.duplicates, 600);
        assert_eq!(report.exact, 600);
        assert_eq!(s.ntotal(), 1200);
        let d = p.dim;
        for (l, list) in s.lists.iter().enumerate() {
            let own = p.lists[l].ids.len();
            assert_eq!(
                &list.ids[..own],
                &p.lists[l].ids[..],
                "own vectors stay first"
            );
            for (j, &id) in list.ids.iter().enumerate().skip(own) {
                let x = &list.vectors[j * d..(j + 1) * d];
                let home = p.lists.iter().position(|pl| pl.ids.contains(&id)).unwrap();
                assert_ne!(home, l, "a copy never lands in its own list");
                let c = &p.centroids[home * d..(home + 1) * d];
                let got = loss64(1.0, x, c, &p.centroids[l * d..(l + 1) * d]);
                let best = (0..p.nlist())
                    .filter(|&o| o != home && !p.lists[o].ids.is_empty())
                    .map(|o| loss64(1.0, x, c, &p.centroids[o * d..(o + 1) * d]))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    got <= best * (1.0 + 1e-5) + 1e-9,
                    "id {id}: loss {got} > best {best}"
                );
            }
        }
        let again = spill(&s, opts).unwrap_err().to_string();
        assert!(again.contains("already spilled"), "{again}");
    }

    #[test]
    fn lambda_zero_is_the_second_nearest_list_and_caps_hold() {
        let p = parts(16, 10, 400, 3);
        let d = p.dim;
        let (s, _) = spill(
            &p,
            SpillOptions {
                lambda: 0.0,
                candidates: 63,
                max_list: None,
            },
        )
        .unwrap();
        for (l, list) in s.lists.iter().enumerate() {
            for (j, _) in list.ids.iter().enumerate().skip(p.lists[l].ids.len()) {
                let x = &list.vectors[j * d..(j + 1) * d];
                // Empty lists are never probed, so never receive copies.
                let mut by: Vec<(f32, usize)> = (0..p.nlist())
                    .filter(|&o| !p.lists[o].ids.is_empty())
                    .map(|o| {
                        let dd: f32 = x
                            .iter()
                            .zip(&p.centroids[o * d..])
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum();
                        (dd, o)
                    })
                    .collect();
                by.sort_by(|a, b| a.0.total_cmp(&b.0));
                assert_eq!(
                    by[1].1, l,
                    "λ = 0 places the copy in the second-nearest list"
                );
            }
        }
        let cap = 70;
        let (capped, report) = spill(
            &p,
            SpillOptions {
                lambda: 1.0,
                candidates: 63,
                max_list: Some(cap),
            },
        )
        .unwrap();
        for (l, list) in capped.lists.iter().enumerate() {
            assert!(
                list.ids.len() <= cap.max(p.lists[l].ids.len()),
                "list {l} grew to {} past the cap {cap}",
                list.ids.len()
            );
        }
        assert_eq!(report.spill.duplicates + report.unplaced, 400);
        let bad = spill(
            &p,
            SpillOptions {
                lambda: f32::NAN,
                ..SpillOptions::default()
            },
        )
        .unwrap_err();
        assert!(bad.to_string().contains("λ"), "{bad}");
    }
}
