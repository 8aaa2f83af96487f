//! [`CodedRows::centroids`]: an 8-bit copy of the centroids with per-centroid error bounds, so the
//! list-selection pass reads a quarter of the bytes (small enough to stay in L2 for RVC's list
//! counts) and still selects exactly the lists a full f32 scan would. The rows and their bounds
//! ([`RowBounds`]) are shared with the list codes (`codes.rs`), which screen the stored vectors
//! the same way.
//!
//! Centroid `c` is stored as bytes `ĉ` with a scale `s_c = max|c| / 127`; the query `q` is
//! quantised per query to `i16` values with a scale `t₁₆` (largest element 2¹⁴, error bound
//! `e₁₆`), then narrowed to 8-bit values `q̂` (in `[-64, 64]`, scale `t = 256·t₁₆`) by rounding
//! away the low byte, whose integer remainders `r` give `‖q − t q̂‖ ≤ e₁₆ + t₁₆·√(Σr²)` exactly
//! (`kernels::narrow_query`). The integer dot product `q̂ · ĉ` is exact (kernels.rs; one
//! `vpdpbusd` per 64 bytes with AVX-512 VNNI, `vpmaddubsw` with AVX2), and
//! `q · c − t·s_c·(q̂ · ĉ) = q · (c − s_c ĉ) + (q − t q̂) · s_c ĉ`, so by Cauchy–Schwarz the
//! screening key `key_c = β_c − α·s_c·t·(q̂ · ĉ)` (`β_c = ‖c‖²`, `α = 2` for L2, where the exact key
//! differs by the constant ‖q‖²; `β_c = 0`, `α = 1` for inner product) is within
//! `err_c = ‖q‖·R_c + ‖q − t q̂‖·N_c + B_c + ε·‖q‖² + A` of the exact key, with
//! `R_c = α·(‖c − s_c ĉ‖ + 4γ‖c‖)`, `N_c = α·s_c‖ĉ‖`, and `B_c = ε·|β_c|`, `ε·‖q‖²`, `4γ‖c‖`
//! covering f32 rounding (of the key and of the exact re-check), and `A` ([`underflow_slack`])
//! covering the absolute errors of products that underflow, which no relative term bounds
//! (‖q‖ is bounded from the kernel's ‖q‖² plus `A` for the same reason). The key is computed as
//! `β_c − α s_c·(t·(q̂ · ĉ))`: `t·(q̂ · ĉ)` is a normal number (or 0), whereas `α s_c·t` is
//! subnormal for tiny rows and queries and would carry a large relative error into the key.
//! Every list whose lower bound `key_c − err_c` is not above the n-th smallest upper bound
//! `key_j + err_j` is re-checked with the exact f32 kernel; no other list can be among the n
//! nearest.
//!
//! The table holds rows for the non-empty lists only (with the list each row stands for). An
//! empty list can never be probed, so it must not take part in the screen at all: its upper
//! bound would count towards the n smallest and could rule out a list that is among the n
//! nearest non-empty ones (with empty lists given a large finite key, a non-empty centroid of a
//! larger, still finite key was ruled out and the search found nothing).

use crate::format::{AlignedBytes, Metric};
use crate::platform;

use super::kernels::I8_MAX_DIM;

/// Tables of fewer dimensions are screened with the 16-bit query only, so they keep no byte
/// sums (measured on the plugin's 80-dimensional voices: the 8-bit query's looser bound failed
/// half the screens).
pub(crate) const MIN_BYTE_QUERY_DIM: usize = 128;

/// The constants of the screening bound of each 8-bit row (see the module docs):
/// `key = bias − scale·(t·(q̂·r̂))`,
/// `err = ‖q‖·radius + ‖q − t q̂‖·qradius + bias_slack + ε‖q‖² + floor`.
pub(crate) struct RowBounds {
    /// `β` (‖c‖², 0, or a per-row constant of the key).
    pub bias: Vec<f32>,
    /// `α·s`.
    pub scale: Vec<f32>,
    /// `R`, multiplied by ‖q‖ per query.
    pub radius: Vec<f32>,
    /// `N`, multiplied by ‖q − t q̂‖ per query.
    pub qradius: Vec<f32>,
    /// `B = ε·|β|`.
    pub bias_slack: Vec<f32>,
    /// `ε`, the relative slack for f32 rounding (of sums of `dim` terms and of the key).
    pub eps: f32,
    /// `A`, the absolute slack for underflow ([`underflow_slack`]), added to every bound and
    /// to ‖q‖² before its square root.
    pub floor: f32,
}

/// Absolute slack for underflow in `dim` dimensions. A product (or fused multiply-add) whose
/// result is subnormal or underflows is off by up to 2⁻¹⁵⁰, beyond any relative bound (sums of
/// subnormals are exact): the exact kernels take `dim` of them, ‖q‖² (a key term of the list
/// codes) as many again, and a key and its error a few more. `(2·dim + 32)·2⁻¹⁴⁹` is twice that
/// (about 3·10⁻⁴² at `dim` = 1024): nothing next to the bounds of any data whose squares are
/// normal numbers, and it keeps the screen exact for data whose squares are not.
pub(crate) fn underflow_slack(dim: usize) -> f64 {
    (2 * dim + 32) as f64 * f64::powi(2.0, -149)
}

impl RowBounds {
    /// Empty bounds for `rows` rows of `dim` dimensions with relative slack `eps`.
    pub fn with_capacity(rows: usize, eps: f64, dim: usize) -> RowBounds {
        RowBounds {
            bias: Vec::with_capacity(rows),
            scale: Vec::with_capacity(rows),
            radius: Vec::with_capacity(rows),
            qradius: Vec::with_capacity(rows),
            bias_slack: Vec::with_capacity(rows),
            eps: round_up(eps),
            floor: round_up(underflow_slack(dim)),
        }
    }

    /// Appends one row's constants: key bias `bias`, the row's code `code`, and `extra_radius`
    /// added to `α·‖v − s v̂‖` (rounding terms proportional to ‖v‖).
    pub fn push(&mut self, alpha: f64, bias: f64, code: &RowCode, extra_radius: f64) {
        self.bias.push(bias as f32);
        self.scale.push((alpha * code.scale as f64) as f32);
        self.radius
            .push(round_up(alpha * (code.err + extra_radius) * (1.0 + 1e-3)));
        self.qradius
            .push(round_up(alpha * code.qnorm * (1.0 + 1e-3)));
        self.bias_slack.push(round_up(self.eps as f64 * bias.abs()));
    }

    fn regions(&self) -> [&Vec<f32>; 5] {
        [
            &self.bias,
            &self.scale,
            &self.radius,
            &self.qradius,
            &self.bias_slack,
        ]
    }
}

/// What [`encode_row`] measured of one row.
pub(crate) struct RowCode {
    /// The row's scale `s` (bytes times `s` approximate the row).
    pub scale: f32,
    /// `‖v − s v̂‖`, from the stored bytes and this exact scale.
    pub err: f64,
    /// `‖v‖²`.
    pub norm2: f64,
    /// `‖s v̂‖`.
    pub qnorm: f64,
}

/// Quantises the row `v` to bytes `out` with scale `max|v| / 127` (rounded to f32) and
/// measures its error. Every value must be finite.
pub(crate) fn encode_row(v: &[f64], out: &mut [u8]) -> RowCode {
    debug_assert_eq!(v.len(), out.len());
    let max = v.iter().fold(0f64, |m, x| m.max(x.abs()));
    let s = if max > 0.0 { (max / 127.0) as f32 } else { 1.0 };
    let s = if s > 0.0 { s } else { f32::MIN_POSITIVE };
    let (sf, inv) = (s as f64, 1.0 / s as f64);
    let (mut err2, mut norm2, mut qnorm2) = (0f64, 0f64, 0f64);
    for (o, &x) in out.iter_mut().zip(v) {
        // Round half away from zero without a libm call; any rounding is fine, because the
        // error is measured from the byte actually stored.
        let r = x * inv;
        let b = ((r + 0.5f64.copysign(r)) as i32).clamp(-127, 127);
        let back = b as f64 * sf;
        err2 += (x - back) * (x - back);
        norm2 += x * x;
        qnorm2 += back * back;
        *o = b as i8 as u8;
    }
    RowCode {
        scale: s,
        err: err2.sqrt(),
        norm2,
        qnorm: qnorm2.sqrt(),
    }
}

/// Rounding of an f32 sum of `dim` products in the kernels (8-lane partial sums, then a
/// short tree): at most (dim/8 + 16) units of 2⁻²⁴ relative to the sum of magnitudes.
pub(crate) fn sum_rounding(dim: usize) -> f64 {
    (dim as f64 / 8.0 + 16.0) * f64::powi(2.0, -24)
}

/// Rows coded as bytes (`rows × dim`, row-major) with the constants of their screening bounds:
/// the centroid table ([`CodedRows::centroids`]) and the list codes (`CodedRows::lists`,
/// `codes.rs`).
pub(crate) struct CodedRows {
    bytes: AlignedBytes,
    dim: usize,
    rows: usize,
    /// Per-row bound constants.
    pub bounds: RowBounds,
    /// Per-row sums of the bytes, for the 8-bit query kernel (centroid tables of at least
    /// [`MIN_BYTE_QUERY_DIM`] dimensions; empty otherwise and for list codes).
    sums: Vec<i32>,
    /// The list each row of a centroid table codes (the non-empty lists, ascending); empty for
    /// list codes.
    lists: Vec<u32>,
}

impl CodedRows {
    /// Builds the 8-bit table of the centroids of the non-empty lists (in list order), or
    /// `None` when the dimension is beyond the integer kernels, some centroid is not finite or
    /// every list is empty (the searcher then scans the f32 centroids directly).
    pub fn centroids(
        centroids: &[f32],
        dim: usize,
        metric: Metric,
        list_offsets: &[u64],
    ) -> Option<CodedRows> {
        if dim == 0
            || !centroids.len().is_multiple_of(dim)
            || list_offsets.len() != centroids.len() / dim + 1
        {
            return None;
        }
        let lists = (0..centroids.len() / dim)
            .filter(|&l| list_offsets[l + 1] != list_offsets[l])
            .map(|l| l as u32)
            .collect();
        Self::centroid_rows(centroids, dim, metric, lists)
    }

    /// The 8-bit table of every centroid, empty lists included (for searches that, like
    /// faiss's, probe the nearest lists whether or not they hold vectors), or `None` as for
    /// [`centroids`](Self::centroids).
    pub fn all_centroids(centroids: &[f32], dim: usize, metric: Metric) -> Option<CodedRows> {
        if dim == 0 || !centroids.len().is_multiple_of(dim) {
            return None;
        }
        let lists = (0..(centroids.len() / dim) as u32).collect();
        Self::centroid_rows(centroids, dim, metric, lists)
    }

    /// The table of the centroids of `lists` (ascending).
    fn centroid_rows(
        centroids: &[f32],
        dim: usize,
        metric: Metric,
        lists: Vec<u32>,
    ) -> Option<CodedRows> {
        if dim == 0 || dim > I8_MAX_DIM || !centroids.iter().all(|v| v.is_finite()) {
            return None;
        }
        let rows = lists.len();
        if rows == 0 {
            return None;
        }
        let alpha = match metric {
            Metric::L2 => 2.0f64,
            Metric::InnerProduct => 1.0,
        };
        let gamma = sum_rounding(dim);
        let mut bytes = AlignedBytes::zeroed(rows * dim);
        let mut bounds = RowBounds::with_capacity(rows, 4.0 * gamma, dim);
        let out = bytes.as_mut_slice();
        let mut row = vec![0f64; dim];
        for (i, &l) in lists.iter().enumerate() {
            let c = &centroids[l as usize * dim..(l as usize + 1) * dim];
            for (r, &v) in row.iter_mut().zip(c) {
                *r = v as f64;
            }
            let code = encode_row(&row, &mut out[i * dim..(i + 1) * dim]);
            let b = match metric {
                Metric::L2 => code.norm2,
                Metric::InnerProduct => 0.0,
            };
            // The γ term covers the f32 key arithmetic and the cross term of the exact re-check.
            bounds.push(alpha, b, &code, 4.0 * gamma * code.norm2.sqrt());
        }
        let mut table = CodedRows::new(bytes, dim, rows, bounds);
        table.lists = lists;
        if dim >= MIN_BYTE_QUERY_DIM {
            table.sums = table
                .rows()
                .chunks_exact(dim)
                .map(|r| r.iter().map(|&b| b as i32).sum())
                .collect();
        }
        Some(table)
    }

    /// Wraps `rows × dim` coded bytes and their bounds.
    pub fn new(bytes: AlignedBytes, dim: usize, rows: usize, bounds: RowBounds) -> CodedRows {
        debug_assert!(bytes.len() >= rows * dim && bounds.bias.len() == rows);
        CodedRows {
            bytes,
            dim,
            rows,
            bounds,
            sums: Vec::new(),
            lists: Vec::new(),
        }
    }

    /// Number of rows.
    #[inline]
    pub fn row_count(&self) -> usize {
        self.rows
    }

    /// The list that row `row` of a centroid table codes.
    #[inline]
    pub fn list(&self, row: usize) -> usize {
        self.lists[row] as usize
    }

    /// Per-row byte sums (see [`Kernels::dot_u8_rows`](super::Kernels)); empty for list codes.
    #[inline]
    pub fn sums(&self) -> &[i32] {
        &self.sums
    }

    /// The bytes, `rows × dim`, row-major.
    #[inline]
    pub fn rows(&self) -> &[i8] {
        let b = &self.bytes.as_slice()[..self.rows * self.dim];
        // SAFETY: same length and alignment; any bits are a valid i8.
        unsafe { std::slice::from_raw_parts(b.as_ptr().cast::<i8>(), b.len()) }
    }

    /// Bytes held (codes and bound constants).
    pub fn byte_len(&self) -> usize {
        self.bytes.len() + self.rows * 20 + self.sums.len() * 4 + self.lists.len() * 4
    }

    /// Tries to lock the pages in RAM (best effort, like the index itself).
    pub fn lock(&self) -> bool {
        self.pin(true)
    }

    /// Releases what [`lock`](Self::lock) pinned (freeing heap memory does not unlock pages
    /// that other allocations may share).
    pub fn unlock(&self) {
        self.pin(false);
    }

    fn pin(&self, lock: bool) -> bool {
        fn f<T>(data: &[T], lock: bool) -> bool {
            if lock {
                platform::lock_memory(data)
            } else {
                platform::unlock_memory(data)
            }
        }
        let mut ok = f(self.bytes.as_slice(), lock);
        for v in self.bounds.regions() {
            ok &= f(v.as_slice(), lock);
        }
        ok &= f(&self.sums, lock);
        ok &= f(&self.lists, lock);
        ok
    }
}

/// The f32 at or above `x` (for bounds that must not shrink when stored as f32).
pub(crate) fn round_up(x: f64) -> f32 {
    let f = x as f32;
    if (f as f64) < x {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f
    }
}
