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

/// How a spilled index was built (`knnblend build --spill`): every vector is stored in its
/// nearest list and copies go, SOAR-style, to other lists (one per vector, or a budget of
/// copies placed where they are needed most: see `index::spill`), so a search that probes one
/// list also finds the neighbours that sit just across its border. Recorded in the metadata as `"spill"`; a `.kbi`
/// that carries it also sets [`FLAG_SPILLED`](super::kbi::FLAG_SPILLED) in its header, and
/// searches that probe more than one list of such an index report each id once.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spill {
    /// λ of the assignment loss `‖x−c′‖² + λ·⟨r, x−c′⟩²/‖r‖²` (r = x − c, c the nearest centroid).
    pub lambda: f64,
    /// Stored copies beyond the first (rows stored = distinct vectors + duplicates).
    pub duplicates: u64,
    /// How many of the nearest lists were considered for each second copy.
    pub candidates: u32,
    /// The copies' budget per vector when they were placed where the scaled loss is least
    /// across the whole index (`build --spill-copies`); absent for SOAR's one copy per vector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copies_per_vector: Option<f64>,
}

impl Spill {
    /// How the copies were placed, in words (`inspect`, `build`).
    pub fn rule(&self) -> String {
        match self.copies_per_vector {
            Some(b) => format!("{b} per vector on average, where they help most"),
            None => "one per vector".into(),
        }
    }
}

/// How a balanced index was built (`knnblend build --max-list-factor`): lists larger than
/// `max_list_factor` × the mean list were split by k-means on their members. Recorded in the
/// metadata as `"balance"`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    /// The bound, as a multiple of the mean list length before splitting.
    pub max_list_factor: f64,
    /// The largest list allowed (`ceil(max_list_factor × mean)` vectors).
    pub max_list: u64,
    /// Lists before splitting.
    pub lists_before: u64,
    /// Lists that were split.
    pub lists_split: u64,
}

impl Metadata {
    /// The spilled assignment this index was built with, if any (`None` also when the entry
    /// is present but malformed; [`check_spill`](Self::check_spill) says why).
    pub fn spill(&self) -> Option<Spill> {
        self.extra
            .get("spill")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Records (or with `None` removes) the spilled assignment.
    pub fn set_spill(&mut self, spill: Option<Spill>) {
        match spill {
            Some(s) => {
                let v = serde_json::to_value(s).expect("plain numbers serialise");
                self.extra.insert("spill".into(), v);
            }
            None => {
                self.extra.remove("spill");
            }
        }
    }

    /// The list balancing this index was built with, if any.
    pub fn balance(&self) -> Option<Balance> {
        self.extra
            .get("balance")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Records (or with `None` removes) the list balancing.
    pub fn set_balance(&mut self, balance: Option<Balance>) {
        match balance {
            Some(b) => {
                let v = serde_json::to_value(b).expect("plain numbers serialise");
                self.extra.insert("balance".into(), v);
            }
            None => {
                self.extra.remove("balance");
            }
        }
    }

    /// The voice's median f0 in Hz from the `"pitch"` entry `knnblend build --audio` records
    /// (`voice::PitchStats`), when it has one.
    pub fn voice_median_f0_hz(&self) -> Option<f64> {
        let p = self.extra.get("pitch")?;
        let voiced = p.get("voiced_frames")?.as_u64()?;
        let hz = p.get("median_hz")?.as_f64()?;
        (voiced > 0 && hz.is_finite() && hz > 0.0).then_some(hz)
    }

    /// Checks the `"spill"` entry of an index of `rows` stored rows: absent, or well formed
    /// with fewer duplicates than distinct vectors. Returns the entry.
    pub fn check_spill(&self, rows: u64) -> Result<Option<Spill>, FormatError> {
        let Some(v) = self.extra.get("spill") else {
            return Ok(None);
        };
        let s: Spill = serde_json::from_value(v.clone())
            .map_err(|e| FormatError::BadMetadata(format!("\"spill\": {e}")))?;
        if !(s.lambda.is_finite() && s.lambda >= 0.0) {
            return Err(FormatError::BadMetadata(format!(
                "\"spill\": lambda {} is not a number >= 0",
                s.lambda
            )));
        }
        // Copies per vector: one for SOAR's rule, at most the budget (rounded) otherwise.
        let per_vector = match s.copies_per_vector {
            None => 1.0,
            Some(b) if crate::index::valid_copies(b) => b,
            Some(b) => {
                return Err(FormatError::BadMetadata(format!(
                    "\"spill\": copies_per_vector {b} is not in (0, {}]",
                    crate::index::MAX_COPIES_PER_VECTOR
                )))
            }
        };
        let distinct = rows.saturating_sub(s.duplicates);
        if s.duplicates > rows || s.duplicates as f64 > (per_vector * distinct as f64).round() {
            return Err(FormatError::BadMetadata(format!(
                "\"spill\": {} duplicates among {rows} stored rows (at most {per_vector} copies per vector)",
                s.duplicates
            )));
        }
        Ok(Some(s))
    }
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
