//! Spilled assignment (`knnblend build --spill λ`): every vector is stored in its own list and
//! copies of vectors go to other lists, chosen with SOAR's loss (Sun et al., "SOAR: Improved
//! Indexing for Approximate Nearest Neighbor Search", NeurIPS 2023; ScaNN's `spilled
//! assignment`): placing a copy of `x` in the list of centroid `c′` costs
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
//! Two rules place the copies ([`SpillOptions::copies`]):
//! - **One per vector** (SOAR as published): every vector's copy goes to the list of least loss.
//! - **A budget** of `B` copies per vector on average, placed where they are needed most: each
//!   (vector, list) pair is scored by its loss above the vector's own distance,
//!   `(loss − ‖x − c‖²) / s_c`, with `s_c` the median `‖x − c‖²` of the vector's list (so the
//!   score does not depend on how spread a region of the data is), and the `B·N` pairs of least
//!   score across the whole index get a copy. A vector deep inside its list gets none (every
//!   query near it lands in its list anyway); one on a corner of several lists gets several.
//!   With 1.5 copies per vector (the default) recall@8 at one probed list rises 2.2–2.4× on
//!   the bench's 30 000- and 100 000-vector RVC shapes, where one copy per vector gives
//!   1.4–1.6×, and beats probing two lists of the plain index (`bench --recall`,
//!   docs/PERFORMANCE.md).
//!
//! Build time only: this allocates freely and never runs on an audio thread.

use crate::format::{FormatError, IndexParts, Spill};

use super::{IvfIndex, Kernels, Searcher, MAX_NPROBE};

/// The most copies of one vector the budget rule places (and so the largest budget).
pub const MAX_COPIES_PER_VECTOR: usize = 8;

/// Whether `b` is a budget of copies per vector the rule takes: above 0, at most
/// [`MAX_COPIES_PER_VECTOR`].
pub fn valid_copies(b: f64) -> bool {
    b > 0.0 && b <= MAX_COPIES_PER_VECTOR as f64
}

/// The list cap that keeps a balanced index's bound once it is spilled: `max_list_factor`
/// times the mean list of the grown index (`1 + copies` rows per vector over `nlist` lists).
pub fn spilled_list_cap(max_list_factor: f64, copies: f32, vectors: usize, nlist: usize) -> usize {
    (max_list_factor * (1.0 + copies as f64) * vectors as f64 / nlist as f64).ceil() as usize
}

/// How [`spill`] assigns the copies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpillOptions {
    /// λ of the loss (SOAR's λ; around 1 to 1.5 works best). 0 is the plain distance to the list.
    pub lambda: f32,
    /// How many of the nearest other lists compete for each copy (the loss is at least
    /// `‖x − c′‖²`, so a far list cannot win; see [`SpillReport::exact`]).
    pub candidates: usize,
    /// No list grows beyond this many rows: a copy whose best list is full goes to its best
    /// list with room (used with balanced lists; `None`: no limit).
    pub max_list: Option<usize>,
    /// `Some(B)` (the default, B = 1.5): `B × N` copies (B in `(0, 8]`) where the scaled loss is
    /// least across the index (see the module documentation); a vector gets from none to
    /// [`MAX_COPIES_PER_VECTOR`]. `None`: one copy of every vector, in its list of least loss
    /// (SOAR's rule as published).
    pub copies: Option<f32>,
}

impl Default for SpillOptions {
    fn default() -> Self {
        SpillOptions {
            lambda: 1.0,
            candidates: 32,
            max_list: None,
            copies: Some(1.5),
        }
    }
}

/// What [`spill`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpillReport {
    /// The metadata entry the spilled index carries.
    pub spill: Spill,
    /// Vectors whose copies are provably the rule's choice over every list, not only over the
    /// candidates: the nearest list left out of the candidates could not have scored better.
    pub exact: u64,
    /// Copies the rule could not place: for one copy per vector, vectors left without one (a
    /// single non-empty list, or every candidate list full); for a budget, what is left of it.
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

/// One vector's candidate lists, scored.
struct Scored {
    /// `‖x − c‖²` to its own centroid.
    own_dist: f32,
    /// (loss, list) of the candidates other than its own list, least loss first (at most
    /// [`MAX_COPIES_PER_VECTOR`] for a budget).
    best: Vec<(f32, u32)>,
    /// No list outside `best` has a loss below this: the farthest candidate's distance, or
    /// the loss of the best candidate dropped from `best`.
    floor: f32,
}

/// Scores the candidate lists of every vector (in list order, then storage order).
fn score_all(
    parts: &IndexParts,
    opts: &SpillOptions,
    m: usize,
) -> Result<Vec<Scored>, FormatError> {
    let index = IvfIndex::from_parts(parts)?;
    let d = parts.dim;
    let kernels = Kernels::detect();
    let mut searcher = Searcher::new();
    let (mut r, mut scratch) = (vec![0f32; d], vec![0f32; d]);
    let mut out = Vec::with_capacity(parts.ntotal());
    let mut all = Vec::with_capacity(m);
    for (own, list) in parts.lists.iter().enumerate() {
        let c = &parts.centroids[own * d..(own + 1) * d];
        for x in list.vectors.chunks_exact(d) {
            for ((rv, &xv), &cv) in r.iter_mut().zip(x).zip(c) {
                *rv = xv - cv;
            }
            let rr = (kernels.dot)(&r, &r);
            let (_, lists) = searcher.nearest_lists(&index, x, m);
            all.clear();
            let mut farthest = 0f32;
            for &l in lists {
                if l as usize == own {
                    continue;
                }
                let c2 = &parts.centroids[l as usize * d..(l as usize + 1) * d];
                let (v, near) = loss(&kernels, opts.lambda, (x, &r, rr), c2, &mut scratch);
                farthest = farthest.max(near);
                all.push((v, l));
            }
            all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            // Every list outside the candidates is at least `farthest` away, and the loss is
            // at least the squared distance.
            let mut floor = if lists.len() < m {
                f32::INFINITY
            } else {
                farthest
            };
            // A budget keeps a vector's best few (one copy per vector keeps them all, for
            // when the best lists are full).
            if opts.copies.is_some() {
                if let Some(&(v, _)) = all.get(MAX_COPIES_PER_VECTOR) {
                    floor = floor.min(v);
                }
                all.truncate(MAX_COPIES_PER_VECTOR);
            }
            out.push(Scored {
                own_dist: rr,
                best: all.clone(),
                floor,
            });
        }
    }
    Ok(out)
}

/// The median of `v` (0 when empty); reorders `v`.
fn median(v: &mut [f32]) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let mid = v.len() / 2;
    *v.select_nth_unstable_by(mid, |a, b| a.total_cmp(b)).1
}

/// Rows per list as copies are placed, and the cap they must stay under.
struct Sizes {
    rows: Vec<usize>,
    cap: Option<usize>,
}

impl Sizes {
    fn full(&self, l: u32) -> bool {
        self.cap.is_some_and(|cap| self.rows[l as usize] >= cap)
    }
}

/// Placed copies as (target list, vector's index in `scored`), with the counts of
/// [`SpillReport`]: `exact`, `unplaced`.
type Placement = (Vec<(u32, u32)>, u64, u64);

/// SOAR's rule: every vector's copy in its candidate of least loss with room.
fn one_per_vector(scored: &[Scored], sizes: &mut Sizes) -> Placement {
    let (mut placed, mut exact, mut unplaced) = (Vec::with_capacity(scored.len()), 0, 0);
    for (v, s) in scored.iter().enumerate() {
        let Some(&(loss, l)) = s.best.iter().find(|&&(_, l)| !sizes.full(l)) else {
            unplaced += 1;
            continue;
        };
        if s.floor >= loss {
            exact += 1;
        }
        sizes.rows[l as usize] += 1;
        placed.push((l, v as u32));
    }
    (placed, exact, unplaced)
}

/// The budget rule: `b × N` copies on the pairs of least scaled loss across the index.
fn budget(
    scored: &[Scored],
    origin: &[(usize, usize)],
    nlist: usize,
    b: f32,
    sizes: &mut Sizes,
) -> Placement {
    // Each list's scale: the median distance of its vectors to their centroid (the median
    // over the index where a list's is 0, and 1 where every one is).
    let mut per_list: Vec<Vec<f32>> = vec![Vec::new(); nlist];
    for (s, &(l, _)) in scored.iter().zip(origin) {
        per_list[l].push(s.own_dist);
    }
    let scale: Vec<f32> = per_list.iter_mut().map(|d| median(d)).collect();
    let mut all: Vec<f32> = scored
        .iter()
        .map(|s| s.own_dist)
        .filter(|&v| v > 0.0)
        .collect();
    let fallback = match median(&mut all) {
        v if v > 0.0 => v,
        _ => 1.0,
    };
    let score = |v: usize, loss: f32| {
        let s = match scale[origin[v].0] {
            s if s > 0.0 => s,
            _ => fallback,
        };
        (loss - scored[v].own_dist) / s
    };
    let mut pairs: Vec<(f32, u32, u32)> = scored
        .iter()
        .enumerate()
        .flat_map(|(v, s)| s.best.iter().map(move |&(loss, l)| (v, loss, l)))
        .map(|(v, loss, l)| (score(v, loss), v as u32, l))
        .collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let budget = (b as f64 * scored.len() as f64).round() as usize;
    let mut placed = Vec::with_capacity(budget);
    let mut threshold = f32::NEG_INFINITY;
    for &(sc, v, l) in &pairs {
        if placed.len() == budget {
            break;
        }
        if sizes.full(l) {
            continue;
        }
        sizes.rows[l as usize] += 1;
        placed.push((l, v));
        threshold = sc;
    }
    let unplaced = (budget - placed.len()) as u64;
    // A vector's copies are the rule's choice over every list when no list outside its
    // candidates could have scored within the last placed copy's score.
    let exact = (0..scored.len())
        .filter(|&v| score(v, scored[v].floor) >= threshold)
        .count() as u64;
    (placed, exact, unplaced)
}

/// Adds copies of the vectors of `parts` to other lists by SOAR's loss, one per vector or a
/// budget of them (see the module documentation), and records it in the metadata
/// (`"spill"`). The ids, the centroids and each list's own vectors are unchanged; copies
/// follow a list's own vectors, in the order of the lists and positions they come from.
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
    if let Some(b) = opts.copies {
        if !valid_copies(b as f64) {
            return Err(FormatError::InvalidParts(format!(
                "the spill copies per vector must be a number in (0, {MAX_COPIES_PER_VECTOR}], not {b}"
            )));
        }
    }
    let d = parts.dim;
    let m = opts.candidates.clamp(1, MAX_NPROBE - 1) + 1; // the vector's own list comes too
    let scored = score_all(parts, &opts, m)?;
    // Each scored vector's (list, position).
    let origin: Vec<(usize, usize)> = parts
        .lists
        .iter()
        .enumerate()
        .flat_map(|(l, list)| (0..list.ids.len()).map(move |p| (l, p)))
        .collect();
    let mut sizes = Sizes {
        rows: parts.lists.iter().map(|l| l.ids.len()).collect(),
        cap: opts.max_list,
    };
    let (mut placed, exact, unplaced) = match opts.copies {
        None => one_per_vector(&scored, &mut sizes),
        Some(b) => budget(&scored, &origin, parts.nlist(), b, &mut sizes),
    };
    placed.sort_unstable_by_key(|&(l, v)| (l, v));
    let mut out = parts.clone();
    for &(l, v) in &placed {
        let (from, p) = origin[v as usize];
        let src = &parts.lists[from];
        let dst = &mut out.lists[l as usize];
        dst.ids.push(src.ids[p]);
        dst.vectors
            .extend_from_slice(&src.vectors[p * d..(p + 1) * d]);
    }
    let spill = Spill {
        lambda: opts.lambda as f64,
        duplicates: placed.len() as u64,
        candidates: (m - 1) as u32,
        copies_per_vector: opts.copies.map(|b| b as f64),
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
    use crate::format::{ListParts, Metadata, Metric};

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
            copies: None,
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
                copies: None,
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
                copies: None,
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
    #[test]
    fn a_budget_goes_to_the_pairs_of_least_scaled_loss_across_the_index() {
        let p = parts(24, 12, 600, 9);
        let d = p.dim;
        let opts = SpillOptions {
            lambda: 1.0,
            candidates: 63,
            max_list: None,
            copies: Some(1.5),
        };
        let (s, report) = spill(&p, opts).unwrap();
        assert_eq!(report.spill.duplicates, 900);
        assert_eq!(report.spill.copies_per_vector, Some(1.5));
        assert_eq!((report.exact, report.unplaced), (600, 0));
        // The oracle, in f64: every (vector, other non-empty list) pair scored by its loss
        // above the vector's own distance over its list's median distance.
        let dist = |x: &[f32], l: usize| -> f64 {
            x.iter()
                .zip(&p.centroids[l * d..(l + 1) * d])
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum()
        };
        let mut pairs = Vec::new();
        for (own, list) in p.lists.iter().enumerate() {
            let mut ds: Vec<f64> = list.vectors.chunks_exact(d).map(|x| dist(x, own)).collect();
            ds.sort_by(f64::total_cmp);
            let Some(&med) = ds.get(ds.len() / 2) else {
                continue;
            };
            let c = &p.centroids[own * d..(own + 1) * d];
            for (&id, x) in list.ids.iter().zip(list.vectors.chunks_exact(d)) {
                for l in (0..p.nlist()).filter(|&l| l != own && !p.lists[l].ids.is_empty()) {
                    let c2 = &p.centroids[l * d..(l + 1) * d];
                    pairs.push(((loss64(1.0, x, c, c2) - dist(x, own)) / med, id, l));
                }
            }
        }
        pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let threshold = pairs[899].0;
        let mut per_vector = std::collections::HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (l, list) in s.lists.iter().enumerate() {
            for &id in &list.ids[p.lists[l].ids.len()..] {
                assert!(seen.insert((id, l)), "id {id} twice in list {l}");
                assert!(!p.lists[l].ids.contains(&id), "a copy in its own list");
                let score = pairs.iter().find(|q| q.1 == id && q.2 == l).unwrap().0;
                assert!(
                    score <= threshold + 1e-4 * threshold.abs().max(1e-3),
                    "id {id} list {l}: score {score} above the budget's {threshold}"
                );
                *per_vector.entry(id).or_insert(0usize) += 1;
            }
        }
        // Adaptive: some vectors get no copy, some several.
        assert!(per_vector.len() < 600, "every vector got a copy");
        assert!(
            per_vector.values().any(|&n| n >= 2),
            "no vector got two copies"
        );
        assert!(per_vector.values().all(|&n| n <= MAX_COPIES_PER_VECTOR));

        // With a cap, no list passes it, and what does not fit is reported.
        let cap = 90;
        let (capped, rep) = spill(
            &p,
            SpillOptions {
                max_list: Some(cap),
                ..opts
            },
        )
        .unwrap();
        for (l, list) in capped.lists.iter().enumerate() {
            assert!(list.ids.len() <= cap.max(p.lists[l].ids.len()));
        }
        assert_eq!(rep.spill.duplicates + rep.unplaced, 900);
        for bad in [0.0, -1.0, f32::NAN, 8.5] {
            let e = spill(
                &p,
                SpillOptions {
                    copies: Some(bad),
                    ..opts
                },
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("copies per vector"), "{e}");
        }
    }
}
