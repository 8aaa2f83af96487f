//! The owned, in-memory description of an index: what writers take and readers of foreign
//! formats produce.

use serde::{Deserialize, Serialize};

use super::FormatError;

/// Largest vector dimension accepted anywhere.
pub const MAX_DIM: usize = 65_536;
/// Largest number of inverted lists accepted.
pub const MAX_NLIST: u64 = 1 << 24;
/// Largest number of vectors accepted (positions are stored as `u32` while searching).
pub const MAX_NTOTAL: u64 = u32::MAX as u64;

/// How distances are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Squared Euclidean distance; smaller is nearer (faiss `METRIC_L2`).
    L2,
    /// Inner product; larger is nearer (faiss `METRIC_INNER_PRODUCT`).
    InnerProduct,
}

impl Metric {
    /// Short name used by the CLI and JSON output: `l2` or `ip`.
    pub fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2",
            Metric::InnerProduct => "ip",
        }
    }
}

/// What the vectors of an index are and where they came from. Stored as JSON in the file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Metadata {
    /// Feature kind, e.g. `rvc-v2-768` or `knnblend-logmel-v1`.
    pub features: String,
    /// Every parameter that defines the features (sample rate, frame, hop, bands …).
    pub feature_params: serde_json::Value,
    /// Source files the vectors were extracted from.
    pub sources: Vec<String>,
    /// Number of feature frames the index was built from.
    pub frames: u64,
    /// Duration of the source audio in seconds (0 when unknown).
    pub duration_seconds: f64,
    /// Anything else (tool version, build recipe, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One inverted list: the ids and the vectors (row-major, `ids.len() × dim`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListParts {
    /// Caller-visible ids, one per vector.
    pub ids: Vec<i64>,
    /// The vectors, `ids.len() * dim` values.
    pub vectors: Vec<f32>,
}

/// A complete IVF-Flat index as owned data.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexParts {
    /// Vector dimension.
    pub dim: usize,
    /// Distance metric.
    pub metric: Metric,
    /// The n_probe the index was saved with (informational; search takes its own).
    pub nprobe: u32,
    /// Coarse centroids, `nlist × dim`, row-major.
    pub centroids: Vec<f32>,
    /// One list per centroid.
    pub lists: Vec<ListParts>,
    /// What the vectors are.
    pub metadata: Metadata,
}

impl IndexParts {
    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.lists.len()
    }

    /// Number of stored vectors.
    pub fn ntotal(&self) -> usize {
        self.lists.iter().map(|l| l.ids.len()).sum()
    }

    /// Checks that every size agrees and every value is finite.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::InvalidParts(m));
        if self.dim == 0 || self.dim > MAX_DIM {
            return bad(format!("dim {} is outside 1..={MAX_DIM}", self.dim));
        }
        let nlist = self.lists.len();
        if nlist == 0 || nlist as u64 > MAX_NLIST {
            return bad(format!("nlist {nlist} is outside 1..={MAX_NLIST}"));
        }
        if self.centroids.len() != nlist * self.dim {
            return bad(format!(
                "{} centroid values for {nlist} lists of dim {} (expected {})",
                self.centroids.len(),
                self.dim,
                nlist * self.dim
            ));
        }
        if let Some(i) = self.centroids.iter().position(|v| !v.is_finite()) {
            return bad(format!("centroid value {i} is not finite"));
        }
        let ntotal = self.ntotal() as u64;
        if ntotal > MAX_NTOTAL {
            return bad(format!("{ntotal} vectors exceed the limit of {MAX_NTOTAL}"));
        }
        for (l, list) in self.lists.iter().enumerate() {
            if list.vectors.len() != list.ids.len() * self.dim {
                return bad(format!(
                    "list {l} has {} ids but {} values (dim {})",
                    list.ids.len(),
                    list.vectors.len(),
                    self.dim
                ));
            }
            if let Some(i) = list.vectors.iter().position(|v| !v.is_finite()) {
                return bad(format!("list {l} value {i} is not finite"));
            }
        }
        Ok(())
    }
}
