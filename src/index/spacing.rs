//! A voice's typical spacing: how far apart its stored frames usually are, in the units a blend
//! reports ([`BlendOutcome::Blended`](super::BlendOutcome::Blended)'s `nearest`, squared
//! Euclidean distance). A query whose nearest neighbour lies about one spacing away is as well
//! covered as the voice's own frames are; ten spacings away, the voice has nothing like it.
//!
//! Measured once, off the audio thread, when an index is prepared: up to [`SPACING_SAMPLES`]
//! stored vectors, spread evenly over storage, are each searched at n_probe 1 (the search the
//! blend makes), and the median distance to the 5th nearest *other* vector (a different id, so
//! a spilled copy of the same frame does not count; the four nearest are skipped as the
//! frame's neighbours in time) is the spacing.

use super::{AnyIndex, PqSearcher, Searcher, MAX_K};
use crate::format::Metric;

/// Stored vectors the spacing is measured on (all of them when there are fewer).
pub const SPACING_SAMPLES: usize = 256;

/// Nearest other frames skipped: a frame's few nearest are usually its neighbours in time
/// (10–20 ms hops under 20–40 ms analysis windows make them near-copies), which an unseen
/// input never has. The spacing is the distance to the next one, the 5th nearest other frame,
/// about the middle of the k = 8 a blend takes. (Measured on espeak-ng voices, an unseen
/// sentence of the same voice then reads about 1.3 spacings, a male voice against a female
/// one about 2.4; counting from the very nearest they read 2.4 and 4.3.)
const SKIP: usize = 4;

/// The median squared distance from a stored vector to its 5th nearest other stored vector at
/// n_probe 1, over up to [`SPACING_SAMPLES`] of them; `None` when no sample has that many
/// others in its list. Allocates (a few vectors' worth); not for the audio thread.
pub fn typical_spacing(index: &AnyIndex) -> Option<f32> {
    let n = index.ntotal();
    let d = index.dim();
    if n < 2 || d == 0 {
        return None;
    }
    let samples = n.min(SPACING_SAMPLES);
    let mut nearest = Vec::with_capacity(samples);
    match index {
        AnyIndex::Flat(ix) => {
            let mut s = Searcher::new();
            let ids = ix.ids();
            let norms = ix.vector_norms();
            let ip = ix.metric() == Metric::InnerProduct;
            for i in 0..samples {
                let pos = i * n / samples;
                let q = ix.vector(pos);
                let qn = norms[pos];
                let found = s.search(ix, q, MAX_K, 1);
                if let Some(nb) = found.iter().filter(|nb| nb.id != ids[pos]).nth(SKIP) {
                    nearest.push(if ip {
                        (qn + norms[nb.pos as usize] - 2.0 * nb.distance).max(0.0)
                    } else {
                        nb.distance
                    });
                }
            }
        }
        AnyIndex::Pq(ix) => {
            let mut s = PqSearcher::for_index(ix, MAX_K, 1);
            let ip = ix.metric() == Metric::InnerProduct;
            let (mut q, mut v) = (vec![0f32; d], vec![0f32; d]);
            for i in 0..samples {
                let pos = i * n / samples;
                ix.stored_vector(pos, &mut q);
                let own = ix.ids()[pos];
                let qn: f32 = q.iter().map(|x| x * x).sum();
                let found = s.search(ix, &q, MAX_K, 1);
                let mut others = found.iter().filter(|nb| nb.id >= 0 && nb.id != own);
                if let Some(nb) = others.nth(SKIP) {
                    nearest.push(if ip {
                        ix.neighbour_vector(nb, &mut v);
                        let vn: f32 = v.iter().map(|x| x * x).sum();
                        (qn + vn - 2.0 * nb.distance).max(0.0)
                    } else {
                        nb.distance
                    });
                }
            }
        }
    }
    nearest.retain(|x| x.is_finite());
    if nearest.is_empty() {
        return None;
    }
    nearest.sort_by(f32::total_cmp);
    Some(nearest[nearest.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{IndexParts, ListParts, Metadata};
    use crate::index::IvfIndex;

    /// One list of points on a line `step` apart (`copies` times over, each copy under new
    /// ids). An interior point's other points lie 1, 1, 2, 2, 3 … steps away, so the 5th nearest
    /// is 3 steps away and the spacing (3·step)².
    fn line(step: f32, copies: usize) -> AnyIndex {
        let n = 40;
        let mut vectors = Vec::new();
        let mut ids = Vec::new();
        for c in 0..copies {
            for i in 0..n {
                vectors.extend([i as f32 * step, 0.0]);
                ids.push((c * n + i) as i64);
            }
        }
        let parts = IndexParts {
            dim: 2,
            metric: Metric::L2,
            nprobe: 1,
            centroids: vec![0.0, 0.0],
            lists: vec![ListParts { ids, vectors }],
            metadata: Metadata::default(),
        };
        AnyIndex::Flat(IvfIndex::from_parts(&parts).unwrap())
    }

    #[test]
    fn spacing_of_a_line_is_three_steps_squared() {
        // The frame itself (distance 0, its own id) is not counted: counted, the 5th would be
        // 2 steps away.
        let s = typical_spacing(&line(0.5, 1)).unwrap();
        assert!((s - 2.25).abs() < 1e-5, "{s}");
        let s = typical_spacing(&line(1.0, 1)).unwrap();
        assert!((s - 9.0).abs() < 1e-5, "{s}");
        // Negative control: exact duplicates under other ids are neighbours (0, then four at
        // one step).
        let s = typical_spacing(&line(0.5, 2)).unwrap();
        assert!((s - 0.25).abs() < 1e-5, "{s}");
    }

    #[test]
    fn one_vector_has_no_spacing() {
        let parts = IndexParts {
            dim: 2,
            metric: Metric::L2,
            nprobe: 1,
            centroids: vec![0.0, 0.0],
            lists: vec![ListParts {
                ids: vec![7],
                vectors: vec![1.0, 2.0],
            }],
            metadata: Metadata::default(),
        };
        let ix = AnyIndex::Flat(IvfIndex::from_parts(&parts).unwrap());
        assert_eq!(typical_spacing(&ix), None);
    }
}
