//! Small exact indexes without faiss: every vector in one inverted list, so n_probe 1 is an
//! exact search. For tests, demos and tiny voices.

use crate::format::{IndexParts, ListParts, Metadata, Metric};

/// An IVF index with a single list holding `rows` (`n × dim`, ids `0..n`), its centroid the
/// rows' mean.
///
/// # Panics
/// If `dim` is 0 or `rows.len()` is not a multiple of `dim`.
pub fn flat_parts(rows: &[f32], dim: usize, metric: Metric, metadata: Metadata) -> IndexParts {
    assert!(
        dim > 0 && rows.len().is_multiple_of(dim),
        "rows must be whole rows of dim {dim}"
    );
    let n = rows.len() / dim;
    let mut centroid = vec![0f64; dim];
    for row in rows.chunks_exact(dim) {
        centroid
            .iter_mut()
            .zip(row)
            .for_each(|(c, &v)| *c += v as f64);
    }
    IndexParts {
        dim,
        metric,
        nprobe: 1,
        centroids: centroid
            .iter()
            .map(|c| (c / n.max(1) as f64) as f32)
            .collect(),
        lists: vec![ListParts {
            ids: (0..n as i64).collect(),
            vectors: rows.to_vec(),
        }],
        metadata,
    }
}
