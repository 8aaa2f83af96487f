//! Distance kernels: AVX2+FMA(+F16C) with runtime detection, and a portable fallback.
//!
//! The set is chosen once (when a [`Searcher`](super::Searcher) is created) and called through
//! plain function pointers, so the hot loop carries no feature checks.
//!
//! Besides the one-pair kernels ([`l2sq`](Kernels::l2sq), [`dot`](Kernels::dot)) there are
//! "many rows" kernels that keep one query in registers while streaming several stored rows
//! (contiguous lists and centroid tables), and integer kernels over the 8-bit centroid table the
//! searcher screens lists with (see `coarse.rs`): an 8-bit query against many `i8` rows (the
//! centroid table: one `vpdpbusd` per 64 bytes), an `i16` query against many `i8` rows (list
//! codes, where a tighter bound saves reads from memory), and a tile of several 8-bit queries
//! against several rows, so a block of queries shares one pass over memory. Integer sums are
//! exact, and every kernel set quantises queries the same way.

/// The signature of [`Kernels::dot_u8_rows`].
pub type ByteQueryRows = fn(q: &[u8], rows: &[i8], sums: &[i32], out: &mut [i32]);
/// The signature of [`Kernels::dot_u8_tile`].
pub type ByteQueryTile = fn(queries: &[u8], dim: usize, rows: &[i8], sums: &[i32], out: &mut [i32]);

/// The distance kernels one searcher uses.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Squared Euclidean distance ‖a − b‖².
    pub l2sq: fn(&[f32], &[f32]) -> f32,
    /// Inner product a · b.
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `out[i] = ‖q − rows[i]‖²` for the `out.len()` rows of `q.len()` floats in `rows`.
    pub l2sq_rows: fn(q: &[f32], rows: &[f32], out: &mut [f32]),
    /// `out[i] = q · rows[i]` for the `out.len()` rows of `q.len()` floats in `rows`.
    pub dot_rows: fn(q: &[f32], rows: &[f32], out: &mut [f32]),
    /// Exact integer `out[i] = q · rows[i]` for the `out.len()` rows of `q.len()` bytes in `rows`.
    /// `q.len()` must not exceed [`I8_MAX_DIM`] (the sums then cannot overflow).
    pub dot_i8_rows: fn(q: &[i16], rows: &[i8], out: &mut [i32]),
    /// Quantises a finite query to `i16` (`q ≈ t·out`, largest magnitude [`I16_QUERY_MAX`],
    /// ties to even); returns `(t, e)` with `e ≥ ‖q − t·out‖` (a rigorous upper bound).
    pub quantise: fn(q: &[f32], out: &mut [i16]) -> (f32, f32),
    /// Exact integer `out[i] = Σ (q[j] − U8_QUERY_OFFSET)·rows[i][j]` for the `out.len()` rows of
    /// `q.len()` bytes in `rows`, given each row's byte sum in `sums` (see [`narrow_query`]);
    /// `q` values at most `2·U8_QUERY_OFFSET`, `q.len()` at most [`I8_MAX_DIM`].
    pub dot_u8_rows: ByteQueryRows,
    /// Tile of exact integer dot products of byte queries (as in [`dot_u8_rows`](Self::dot_u8_rows)):
    /// `queries` holds `m` rows of `dim` bytes (`dim` ≤ [`I8_MAX_DIM`]), `rows` holds `r` rows of
    /// `dim` with their byte sums in `sums`, and `out` (`m × r`) receives
    /// `out[qi * r + ri] = Σ (queries[qi][j] − U8_QUERY_OFFSET)·rows[ri][j]`.
    pub dot_u8_tile: ByteQueryTile,
    /// Name of the instruction sets in use (`avx2+fma`, `avx2+fma, avx512-vnni screen` or `scalar`).
    pub name: &'static str,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Kernels {
    /// The fastest kernels this CPU supports.
    pub fn detect() -> Kernels {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") {
                let avx2 = Kernels {
                    l2sq: avx2::l2sq,
                    dot: avx2::dot,
                    l2sq_rows: avx2::l2sq_rows,
                    dot_rows: avx2::dot_rows,
                    dot_i8_rows: avx2::dot_i8_rows,
                    quantise: avx2::quantise,
                    dot_u8_rows: avx2::dot_u8_rows,
                    dot_u8_tile: avx2::dot_u8_tile,
                    name: "avx2+fma",
                };
                if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                    // The screen is compute-bound in L2: VNNI multiplies, adds pairs and
                    // accumulates 32 elements in one instruction.
                    return Kernels {
                        dot_i8_rows: avx512::dot_i8_rows,
                        dot_u8_rows: avx512::dot_u8_rows,
                        dot_u8_tile: avx512::dot_u8_tile,
                        name: "avx2+fma, avx512-vnni screen",
                        ..avx2
                    };
                }
                return avx2;
            }
        }
        Kernels::scalar()
    }

    /// The AVX2+FMA set even on CPUs with AVX-512 (for comparisons), if the CPU has AVX2+FMA.
    pub fn avx2_only() -> Option<Kernels> {
        #[cfg(target_arch = "x86_64")]
        {
            let k = Kernels::detect();
            if k.name != "scalar" {
                return Some(Kernels {
                    dot_i8_rows: avx2::dot_i8_rows,
                    dot_u8_rows: avx2::dot_u8_rows,
                    dot_u8_tile: avx2::dot_u8_tile,
                    name: "avx2+fma",
                    ..k
                });
            }
        }
        None
    }

    /// Quantises a finite query to the bytes of an 8-bit query (16 bits first, into `scratch`,
    /// then [`narrow_query`]); returns `(t, e)` with `q ≈ t·(out − U8_QUERY_OFFSET)` and
    /// `e ≥ ‖q − t·(out − U8_QUERY_OFFSET)‖` (rigorous; infinite when `t` is).
    pub fn quantise_u8(&self, q: &[f32], scratch: &mut [i16], out: &mut [u8]) -> (f32, f32) {
        let (t16, e16) = (self.quantise)(q, scratch);
        narrow(scratch, t16, e16, out)
    }

    /// Portable kernels (the compiler vectorises them for the baseline target).
    pub fn scalar() -> Kernels {
        Kernels {
            l2sq: scalar::l2sq,
            dot: scalar::dot,
            l2sq_rows: scalar::l2sq_rows,
            dot_rows: scalar::dot_rows,
            dot_i8_rows: scalar::dot_i8_rows,
            quantise: scalar::quantise,
            dot_u8_rows: scalar::dot_u8_rows,
            dot_u8_tile: scalar::dot_u8_tile,
            name: "scalar",
        }
    }
}

/// Asks the CPU to start loading `bytes` bytes at `p` into cache (no effect elsewhere than
/// x86-64; never faults, whatever the address).
#[inline]
pub fn prefetch(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch is a hint; it never faults, even for invalid addresses.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast()) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// True when every element is finite: a branch-free pass the compiler vectorises (a
/// short-circuiting `all` tests one element at a time).
#[inline]
pub fn all_finite(v: &[f32]) -> bool {
    v.iter()
        .fold(true, |a, x| a & ((x.to_bits() & 0x7fff_ffff) < 0x7f80_0000))
}

/// Prefetches the cache line `ahead` bytes past each of four row pointers: the integer row
/// kernels call it once per 64 bytes of their rows with `ahead` = four rows, so the next group
/// of rows streams in from L2 (or further) while this one is multiplied. Four interleaved
/// streams are more than the L1 prefetcher follows; this made the whole-table screen about 20 %
/// faster. Past the last row it only prefetches what follows (never faults).
#[inline(always)]
#[cfg(target_arch = "x86_64")]
fn prefetch_next_rows(rows: &[*const i8; 4], ahead: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for r in rows {
        // SAFETY: prefetch is a hint; it never faults, even for invalid addresses.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(ahead)) };
    }
}

/// The query scale for largest magnitude `max`: `(t, 1/t)`. Magnitudes so small that `1/t`
/// would leave the normal range get an infinite `t` (the caller's bound then makes the
/// searcher scan exactly).
#[inline]
fn query_scale(max: f32) -> (f32, f32) {
    if max == 0.0 {
        (1.0, 1.0)
    } else if max >= f32::powi(2.0, -100) && max.is_finite() {
        let t = max / I16_QUERY_MAX as f32;
        (t, 1.0 / t)
    } else {
        (f32::INFINITY, 0.0)
    }
}

/// A rigorous bound on ‖q − t·q̂‖ from the residuals `e = x − b` computed in units of `t`
/// (`x = v·(1/t)` rounded, `b` its rounded integer; `x − b` is exact). `x` is within
/// `|v/t|·2⁻²³ ≤ 2⁻⁹` of `v/t`, so each true residual is within 2⁻⁹ units of `e`; the f32 sum
/// of squares is within far less than 10⁻⁴ relative.
#[inline]
fn residual_bound(err2_units: f32, t: f32, d: usize) -> f32 {
    t * ((err2_units * (1.0 + 1e-4)).sqrt() + (d as f32).sqrt() * f32::powi(2.0, -9)) * (1.0 + 1e-6)
}

/// Checks the shapes shared by every "many rows" kernel: `rows` holds exactly `n` rows of `d`.
#[inline]
fn check_rows(d: usize, rows: usize, n: usize) {
    assert_eq!(
        rows,
        d * n,
        "rows must hold exactly out.len() rows of the query's length"
    );
}

/// Largest magnitude of a quantised query element.
pub const I16_QUERY_MAX: i32 = 16_384;
/// Largest dimension the integer kernels accept: `I8_MAX_DIM · 127 · I16_QUERY_MAX < 2³¹`.
pub const I8_MAX_DIM: usize = 1024;
/// The offset of an 8-bit query: bytes `u = q̂ + 64` for `q̂` in `[-64, 64]`, so `u ≤ 128` and a
/// pair of products `u·r` fits in an `i16` (AVX2 `vpmaddubsw` then never saturates).
pub const U8_QUERY_OFFSET: i32 = 64;

/// Narrows a quantised query `q16` (`i16`, largest magnitude [`I16_QUERY_MAX`], scale `t`) to
/// the bytes of an 8-bit query with scale `256·t`: `out[j] = round(q16[j] / 256) + 64`
/// (in `0..=128`). Returns `Σ r²` of the integer remainders `r = q16 − 256·(out − 64)`, so
/// `‖t·q16 − 256t·(out − 64)‖ = t·√(Σ r²)` exactly: the 8-bit query's error bound is the 16-bit
/// one plus that. Portable code the compiler vectorises (one pass over `d` values).
pub fn narrow_query(q16: &[i16], out: &mut [u8]) -> u64 {
    assert_eq!(q16.len(), out.len(), "out must match the query");
    let mut sum = 0u64;
    for (o, &v) in out.iter_mut().zip(q16) {
        let v = (v as i32).clamp(-I16_QUERY_MAX, I16_QUERY_MAX);
        let h = (v + 128) >> 8; // round half up, in [-64, 64]
        let r = v - (h << 8);
        *o = (h + U8_QUERY_OFFSET) as u8;
        sum += (r * r) as u64;
    }
    sum
}

/// Checks the shapes of [`Kernels::dot_u8_tile`]: `Some((m, r))` queries and rows, `None`
/// for `dim == 0` (every product is then 0).
#[inline]
fn check_tile(
    queries: &[u8],
    dim: usize,
    rows: &[i8],
    sums: &[i32],
    out: &[i32],
) -> Option<(usize, usize)> {
    if dim == 0 {
        return None;
    }
    assert!(
        queries.len().is_multiple_of(dim) && rows.len().is_multiple_of(dim),
        "queries and rows must be whole rows"
    );
    assert!(
        dim <= I8_MAX_DIM,
        "integer kernels take at most {I8_MAX_DIM} dimensions"
    );
    let (m, r) = (queries.len() / dim, rows.len() / dim);
    assert_eq!(out.len(), m * r, "out must hold one value per (query, row)");
    assert_eq!(sums.len(), r, "sums must hold one value per row");
    Some((m, r))
}

/// The four rows of group `i` of `n` rows of `d` elements at `rows` (rows past the end alias
/// the last real one; their results are discarded), and how many are real.
#[inline(always)]
#[cfg(target_arch = "x86_64")]
unsafe fn row_group<T>(rows: *const T, d: usize, i: usize, n: usize) -> ([*const T; 4], usize) {
    let first = rows.add(i * d);
    if i + 4 <= n {
        return ([first, first.add(d), first.add(2 * d), first.add(3 * d)], 4);
    }
    let t_n = n - i;
    let at = |t: usize| first.add(t.min(t_n - 1) * d);
    ([at(0), at(1), at(2), at(3)], t_n)
}

/// A tile kernel's body: `(queries, m, dim, rows, sums, out)` (see [`Kernels::dot_u8_tile`]).
#[cfg(target_arch = "x86_64")]
type TileImpl = unsafe fn(*const u8, usize, usize, *const i8, &[i32], *mut i32);

/// Checks a tile's shapes, then runs `imp`.
///
/// # Safety
/// The CPU must have the instruction sets `imp` is compiled for.
#[cfg(target_arch = "x86_64")]
unsafe fn run_tile(
    queries: &[u8],
    dim: usize,
    rows: &[i8],
    sums: &[i32],
    out: &mut [i32],
    imp: TileImpl,
) {
    let Some((m, _)) = check_tile(queries, dim, rows, sums, out) else {
        return out.fill(0);
    };
    imp(
        queries.as_ptr(),
        m,
        dim,
        rows.as_ptr(),
        sums,
        out.as_mut_ptr(),
    )
}

/// Finishes a tile of two rows `c` (from row `ri`, `rn` real, byte sums in `row_sums`) × four
/// byte queries `q` (from query `qi`, `qn` real): adds the products of the elements `j..d` the
/// vector loop left over to the vector sums `raw[row][query]`, subtracts the query offset's
/// share, and stores the real ones in `out` (`r` values per query).
#[inline(always)]
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_tile(
    raw: [[i32; 4]; 2],
    q: &[*const u8; 4],
    c: &[*const i8; 2],
    (j, d): (usize, usize),
    (qi, qn): (usize, usize),
    (ri, rn): (usize, usize),
    (r, row_sums): (usize, &[i32]),
    out: *mut i32,
) {
    for (rr, raw) in raw.iter().enumerate().take(rn) {
        for t in 0..qn {
            let mut s = raw[t];
            for jj in j..d {
                s += *q[t].add(jj) as i32 * *c[rr].add(jj) as i32;
            }
            *out.add((qi + t) * r + ri + rr) = s - U8_QUERY_OFFSET * row_sums[ri + rr];
        }
    }
}

/// Finishes group `i` of a row kernel: adds the products of the elements `j..d` that the
/// vector loop left over to the four vector sums `raw`, subtracts `offset·sums[row]` (byte
/// queries) and stores the real rows' results.
#[inline(always)]
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn finish_group<Q: Copy + Into<i32>>(
    raw: [i32; 4],
    q: *const Q,
    r: &[*const i8; 4],
    (j, d): (usize, usize),
    (i, t_n): (usize, usize),
    offset: i32,
    sums: &[i32],
    out: &mut [i32],
) {
    if t_n == 4 && j == d {
        // The common case: a whole group and no leftover elements.
        let at = out.as_mut_ptr().add(i);
        if offset == 0 {
            return at.cast::<[i32; 4]>().write_unaligned(raw);
        }
        return store_corrected(raw, offset, sums.as_ptr().add(i), at);
    }
    for t in 0..t_n {
        let mut s = raw[t];
        for jj in j..d {
            s += (*q.add(jj)).into() * *r[t].add(jj) as i32;
        }
        if offset != 0 {
            s -= offset * sums[i + t];
        }
        *out.get_unchecked_mut(i + t) = s;
    }
}

/// Narrows a 16-bit query `q16` of scale `t16` and error bound `e16` to the bytes `out` of an
/// 8-bit query ([`narrow_query`]); returns its scale and error bound.
pub fn narrow(q16: &[i16], t16: f32, e16: f32, out: &mut [u8]) -> (f32, f32) {
    let r2 = narrow_query(q16, out);
    let e = (e16 as f64 + t16 as f64 * (r2 as f64).sqrt()) * (1.0 + 1e-9);
    (256.0 * t16, super::coarse::round_up(e))
}

/// Checks the shapes of the integer row kernels: `rows` holds exactly `n` rows of `d` bytes,
/// and `d` is at most [`I8_MAX_DIM`].
#[inline]
fn check_i8_rows(d: usize, rows: usize, n: usize) {
    check_rows(d, rows, n);
    assert!(
        d <= I8_MAX_DIM,
        "integer kernels take at most {I8_MAX_DIM} dimensions"
    );
}

/// Stores `raw[t] − offset·sums[t]` for four rows in four vector instructions.
#[inline]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn store_corrected(raw: [i32; 4], offset: i32, sums: *const i32, out: *mut i32) {
    use std::arch::x86_64::*;
    let raw = _mm_loadu_si128(raw.as_ptr().cast());
    let offset = _mm_mullo_epi32(_mm_loadu_si128(sums.cast()), _mm_set1_epi32(offset));
    _mm_storeu_si128(out.cast(), _mm_sub_epi32(raw, offset));
}

/// Checks the shapes of [`Kernels::dot_u8_rows`].
#[inline]
fn check_u8_rows(q: &[u8], rows: &[i8], sums: &[i32], out: &[i32]) {
    check_i8_rows(q.len(), rows.len(), out.len());
    assert_eq!(sums.len(), out.len(), "sums must hold one value per row");
}

mod scalar {
    use super::{
        check_i8_rows, check_rows, check_tile, check_u8_rows, query_scale, residual_bound,
        I16_QUERY_MAX, U8_QUERY_OFFSET,
    };

    const LANES: usize = 8;

    pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let mut acc = [0f32; LANES];
        let (ac, at) = a.split_at(a.len() / LANES * LANES);
        let (bc, bt) = b.split_at(ac.len());
        for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
            for i in 0..LANES {
                let d = x[i] - y[i];
                acc[i] += d * d;
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in at.iter().zip(bt) {
            s += (x - y) * (x - y);
        }
        s
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let mut acc = [0f32; LANES];
        let (ac, at) = a.split_at(a.len() / LANES * LANES);
        let (bc, bt) = b.split_at(ac.len());
        for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += x[i] * y[i];
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in at.iter().zip(bt) {
            s += x * y;
        }
        s
    }

    pub fn l2sq_rows(q: &[f32], rows: &[f32], out: &mut [f32]) {
        check_rows(q.len(), rows.len(), out.len());
        if q.is_empty() {
            return out.fill(0.0);
        }
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
            *o = l2sq(q, r);
        }
    }

    pub fn dot_rows(q: &[f32], rows: &[f32], out: &mut [f32]) {
        check_rows(q.len(), rows.len(), out.len());
        if q.is_empty() {
            return out.fill(0.0);
        }
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
            *o = dot(q, r);
        }
    }

    fn dot_i8(q: &[i16], r: &[i8]) -> i32 {
        q.iter().zip(r).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    pub fn dot_i8_rows(q: &[i16], rows: &[i8], out: &mut [i32]) {
        check_i8_rows(q.len(), rows.len(), out.len());
        if q.is_empty() {
            return out.fill(0);
        }
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
            *o = dot_i8(q, r);
        }
    }

    pub fn dot_u8_rows(q: &[u8], rows: &[i8], sums: &[i32], out: &mut [i32]) {
        check_u8_rows(q, rows, sums, out);
        if q.is_empty() {
            return out.fill(0);
        }
        for ((o, r), &s) in out.iter_mut().zip(rows.chunks_exact(q.len())).zip(sums) {
            let raw: i32 = q.iter().zip(r).map(|(&a, &b)| a as i32 * b as i32).sum();
            *o = raw - U8_QUERY_OFFSET * s;
        }
    }

    pub fn quantise(q: &[f32], out: &mut [i16]) -> (f32, f32) {
        assert_eq!(q.len(), out.len(), "out must match the query");
        let max = q
            .iter()
            .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m });
        let (t, inv) = query_scale(max);
        let limit = I16_QUERY_MAX as f32;
        let mut err2 = 0f32;
        for (o, &v) in out.iter_mut().zip(q) {
            let x = v * inv;
            let b = x.round_ties_even().clamp(-limit, limit);
            *o = b as i16;
            let e = x - b;
            err2 += e * e;
        }
        (t, residual_bound(err2, t, q.len()))
    }

    pub fn dot_u8_tile(queries: &[u8], dim: usize, rows: &[i8], sums: &[i32], out: &mut [i32]) {
        let Some((_, r)) = check_tile(queries, dim, rows, sums, out) else {
            return out.fill(0);
        };
        for (q, o) in queries
            .chunks_exact(dim)
            .zip(out.chunks_exact_mut(r.max(1)))
        {
            dot_u8_rows(q, rows, sums, &mut o[..r]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{
        check_i8_rows, check_rows, check_u8_rows, finish_group, finish_tile, prefetch_next_rows,
        query_scale, residual_bound, row_group, run_tile, I16_QUERY_MAX, U8_QUERY_OFFSET,
    };
    use std::arch::x86_64::*;

    /// Horizontal sum of 8 lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    pub fn l2sq(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: only installed by `Kernels::detect` after checking avx2 and fma.
        unsafe { l2sq_impl(a.as_ptr(), b.as_ptr(), a.len()) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2sq_impl(pa: *const f32, pb: *const f32, n: usize) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let d = _mm256_sub_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * j)),
                    _mm256_loadu_ps(pb.add(i + 8 * j)),
                );
                *acc = _mm256_fmadd_ps(d, d, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            let d = *pa.add(i) - *pb.add(i);
            s += d * d;
            i += 1;
        }
        s
    }

    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: only installed by `Kernels::detect` after checking avx2 and fma.
        unsafe { dot_impl(a.as_ptr(), b.as_ptr(), a.len()) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_impl(pa: *const f32, pb: *const f32, n: usize) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8 * j)),
                    _mm256_loadu_ps(pb.add(i + 8 * j)),
                    *acc,
                );
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i)),
                _mm256_loadu_ps(pb.add(i)),
                acc[0],
            );
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }

    pub fn l2sq_rows(q: &[f32], rows: &[f32], out: &mut [f32]) {
        check_rows(q.len(), rows.len(), out.len());
        // SAFETY: avx2+fma checked by `Kernels::detect`; `rows` holds out.len() rows of q.len().
        unsafe { l2sq_rows_impl(q, rows.as_ptr(), out) }
    }

    /// Four rows per pass, two accumulators each: the query chunk is loaded once for four rows.
    /// The rows left over go one at a time through the same code, so a row's result never
    /// depends on its position (the list screen's re-check relies on that).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2sq_rows_impl(q: &[f32], rows: *const f32, out: &mut [f32]) {
        let d = q.len();
        let n = out.len();
        let mut i = 0;
        while i + 4 <= n {
            l2sq_tile::<4>(q, rows.add(i * d), out.as_mut_ptr().add(i));
            i += 4;
        }
        while i < n {
            l2sq_tile::<1>(q, rows.add(i * d), out.as_mut_ptr().add(i));
            i += 1;
        }
    }

    /// Squared distances from `q` to `R` consecutive rows at `rows`, into `out[..R]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2sq_tile<const R: usize>(q: &[f32], rows: *const f32, out: *mut f32) {
        let d = q.len();
        let pq = q.as_ptr();
        let r: [*const f32; R] = std::array::from_fn(|t| rows.add(t * d));
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let mut j = 0;
        while j + 16 <= d {
            let q0 = _mm256_loadu_ps(pq.add(j));
            let q1 = _mm256_loadu_ps(pq.add(j + 8));
            for t in 0..R {
                let d0 = _mm256_sub_ps(q0, _mm256_loadu_ps(r[t].add(j)));
                let d1 = _mm256_sub_ps(q1, _mm256_loadu_ps(r[t].add(j + 8)));
                a0[t] = _mm256_fmadd_ps(d0, d0, a0[t]);
                a1[t] = _mm256_fmadd_ps(d1, d1, a1[t]);
            }
            j += 16;
        }
        if j + 8 <= d {
            let q0 = _mm256_loadu_ps(pq.add(j));
            for t in 0..R {
                let d0 = _mm256_sub_ps(q0, _mm256_loadu_ps(r[t].add(j)));
                a0[t] = _mm256_fmadd_ps(d0, d0, a0[t]);
            }
            j += 8;
        }
        for t in 0..R {
            let mut s = hsum(_mm256_add_ps(a0[t], a1[t]));
            for jj in j..d {
                let x = *pq.add(jj) - *r[t].add(jj);
                s += x * x;
            }
            *out.add(t) = s;
        }
    }

    pub fn dot_rows(q: &[f32], rows: &[f32], out: &mut [f32]) {
        check_rows(q.len(), rows.len(), out.len());
        // SAFETY: avx2+fma checked by `Kernels::detect`; `rows` holds out.len() rows of q.len().
        unsafe { dot_rows_impl(q, rows.as_ptr(), out) }
    }

    /// Like `l2sq_rows_impl`: four rows per pass, and the rows left over one at a time
    /// through the same code, so a row's inner product never depends on its position (two
    /// copies of a vector score the same, and ties resolve in storage order).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows_impl(q: &[f32], rows: *const f32, out: &mut [f32]) {
        let d = q.len();
        let n = out.len();
        let mut i = 0;
        while i + 4 <= n {
            dot_tile::<4>(q, rows.add(i * d), out.as_mut_ptr().add(i));
            i += 4;
        }
        while i < n {
            dot_tile::<1>(q, rows.add(i * d), out.as_mut_ptr().add(i));
            i += 1;
        }
    }

    /// Inner products of `q` with `R` consecutive rows at `rows`, into `out[..R]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_tile<const R: usize>(q: &[f32], rows: *const f32, out: *mut f32) {
        let d = q.len();
        let pq = q.as_ptr();
        let r: [*const f32; R] = std::array::from_fn(|t| rows.add(t * d));
        let mut a0 = [_mm256_setzero_ps(); R];
        let mut a1 = [_mm256_setzero_ps(); R];
        let mut j = 0;
        while j + 16 <= d {
            let q0 = _mm256_loadu_ps(pq.add(j));
            let q1 = _mm256_loadu_ps(pq.add(j + 8));
            for t in 0..R {
                a0[t] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r[t].add(j)), a0[t]);
                a1[t] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r[t].add(j + 8)), a1[t]);
            }
            j += 16;
        }
        if j + 8 <= d {
            let q0 = _mm256_loadu_ps(pq.add(j));
            for t in 0..R {
                a0[t] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r[t].add(j)), a0[t]);
            }
            j += 8;
        }
        for t in 0..R {
            let mut s = hsum(_mm256_add_ps(a0[t], a1[t]));
            for jj in j..d {
                s += *pq.add(jj) * *r[t].add(jj);
            }
            *out.add(t) = s;
        }
    }

    /// Sum of the eight i32 lanes.
    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        _mm_cvtsi128_si32(s)
    }

    /// Sixteen bytes at `p` sign-extended to sixteen i16.
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> __m256i {
        _mm256_cvtepi8_epi16(_mm_loadu_si128(p.cast()))
    }

    /// The lane sums of four accumulators in one tree: `[Σa, Σb, Σc, Σd]`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn reduce4(acc: [__m256i; 4]) -> [i32; 4] {
        let h = _mm256_hadd_epi32(
            _mm256_hadd_epi32(acc[0], acc[1]),
            _mm256_hadd_epi32(acc[2], acc[3]),
        );
        let mut sums = [0i32; 4];
        _mm_storeu_si128(
            sums.as_mut_ptr().cast(),
            _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h)),
        );
        sums
    }

    pub fn dot_i8_rows(q: &[i16], rows: &[i8], out: &mut [i32]) {
        check_i8_rows(q.len(), rows.len(), out.len());
        // SAFETY: avx2 checked by `Kernels::detect`; `rows` holds out.len() rows of q.len().
        unsafe { dot_i8_rows_impl(q, rows.as_ptr(), out) }
    }

    /// One query against four byte rows per pass: per 16 elements, one query load, four
    /// sign extensions, four multiply-add-pairs into exact i32 sums.
    #[target_feature(enable = "avx2")]
    unsafe fn dot_i8_rows_impl(q: &[i16], rows: *const i8, out: &mut [i32]) {
        let d = q.len();
        let pq = q.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i < n {
            let (r, t_n) = row_group(rows, d, i, n);
            let mut acc = [_mm256_setzero_si256(); 4];
            let mut j = 0;
            while j + 32 <= d {
                let q0 = _mm256_loadu_si256(pq.add(j).cast());
                let q1 = _mm256_loadu_si256(pq.add(j + 16).cast());
                if j % 64 == 0 && i + 8 <= n {
                    prefetch_next_rows(&r, j + 4 * d);
                }
                for t in 0..4 {
                    let a = _mm256_madd_epi16(q0, load_i8(r[t].add(j)));
                    let b = _mm256_madd_epi16(q1, load_i8(r[t].add(j + 16)));
                    acc[t] = _mm256_add_epi32(acc[t], _mm256_add_epi32(a, b));
                }
                j += 32;
            }
            if j + 16 <= d {
                let q0 = _mm256_loadu_si256(pq.add(j).cast());
                for t in 0..4 {
                    acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(q0, load_i8(r[t].add(j))));
                }
                j += 16;
            }
            finish_group(reduce4(acc), pq, &r, (j, d), (i, t_n), 0, &[], out);
            i += 4;
        }
    }

    pub fn dot_u8_rows(q: &[u8], rows: &[i8], sums: &[i32], out: &mut [i32]) {
        check_u8_rows(q, rows, sums, out);
        // SAFETY: avx2 checked by `Kernels::detect`; shapes checked above.
        unsafe { dot_u8_rows_impl(q, rows.as_ptr(), sums, out) }
    }

    /// One byte query against four byte rows per pass: per 32 elements, one query load and,
    /// per row, `vpmaddubsw` (pairs of products, exact in i16 because the query bytes are at
    /// most 128) and `vpmaddwd` by ones into i32 sums.
    #[target_feature(enable = "avx2")]
    unsafe fn dot_u8_rows_impl(q: &[u8], rows: *const i8, sums: &[i32], out: &mut [i32]) {
        let d = q.len();
        let pq = q.as_ptr();
        let n = out.len();
        let ones = _mm256_set1_epi16(1);
        let mut i = 0;
        while i < n {
            let (r, t_n) = row_group(rows, d, i, n);
            let mut acc = [_mm256_setzero_si256(); 4];
            let mut j = 0;
            while j + 32 <= d {
                let qv = _mm256_loadu_si256(pq.add(j).cast());
                if j % 64 == 0 && i + 8 <= n {
                    prefetch_next_rows(&r, j + 4 * d);
                }
                for t in 0..4 {
                    let pairs = _mm256_maddubs_epi16(qv, _mm256_loadu_si256(r[t].add(j).cast()));
                    acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(pairs, ones));
                }
                j += 32;
            }
            let raw = reduce4(acc);
            finish_group(raw, pq, &r, (j, d), (i, t_n), U8_QUERY_OFFSET, sums, out);
            i += 4;
        }
    }

    pub fn quantise(q: &[f32], out: &mut [i16]) -> (f32, f32) {
        assert_eq!(q.len(), out.len(), "out must match the query");
        // SAFETY: avx2+fma checked by `Kernels::detect`; lengths checked above.
        unsafe { quantise_impl(q, out) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn quantise_impl(q: &[f32], out: &mut [i16]) -> (f32, f32) {
        let d = q.len();
        let p = q.as_ptr();
        let sign = _mm256_set1_ps(-0.0);
        let mut vmax = _mm256_setzero_ps();
        let mut j = 0;
        while j + 8 <= d {
            vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(j))));
            j += 8;
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
        let mut max = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        for &v in &q[j..] {
            if v.abs() > max {
                max = v.abs();
            }
        }
        let (t, inv) = query_scale(max);
        let vinv = _mm256_set1_ps(inv);
        let (lo, hi) = (
            _mm256_set1_epi32(-I16_QUERY_MAX),
            _mm256_set1_epi32(I16_QUERY_MAX),
        );
        let mut acc = _mm256_setzero_ps();
        let o = out.as_mut_ptr();
        j = 0;
        while j + 8 <= d {
            let x = _mm256_mul_ps(_mm256_loadu_ps(p.add(j)), vinv);
            // Round to nearest even (the default MXCSR mode), like `round_ties_even`.
            let b = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(x)));
            let e = _mm256_sub_ps(x, _mm256_cvtepi32_ps(b));
            acc = _mm256_fmadd_ps(e, e, acc);
            let packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(b, b), 0b11_01_10_00);
            _mm_storeu_si128(o.add(j).cast(), _mm256_castsi256_si128(packed));
            j += 8;
        }
        let mut err2 = hsum(acc);
        let limit = I16_QUERY_MAX as f32;
        while j < d {
            let x = *p.add(j) * inv;
            let b = x.round_ties_even().clamp(-limit, limit);
            *o.add(j) = b as i16;
            let e = x - b;
            err2 += e * e;
            j += 1;
        }
        (t, residual_bound(err2, t, d))
    }

    pub fn dot_u8_tile(queries: &[u8], dim: usize, rows: &[i8], sums: &[i32], out: &mut [i32]) {
        // SAFETY: avx2 checked by `Kernels::detect`.
        unsafe { run_tile(queries, dim, rows, sums, out, dot_u8_tile_impl) }
    }

    /// Two byte rows × four byte queries per pass: eight accumulators; per 32 elements, two row
    /// loads feed eight `vpmaddubsw` + `vpmaddwd`. The row pair stays in L1 across the query
    /// quads.
    #[target_feature(enable = "avx2")]
    unsafe fn dot_u8_tile_impl(
        qs: *const u8,
        m: usize,
        d: usize,
        rows: *const i8,
        sums: &[i32],
        out: *mut i32,
    ) {
        let r = sums.len();
        let ones = _mm256_set1_epi16(1);
        let mut ri = 0;
        while ri < r {
            let rn = (r - ri).min(2);
            let c = [rows.add(ri * d), rows.add((ri + rn - 1) * d)];
            let mut qi = 0;
            while qi < m {
                let (q, qn) = row_group(qs, d, qi, m);
                let mut acc = [[_mm256_setzero_si256(); 4]; 2];
                let mut j = 0;
                while j + 32 <= d {
                    let c0 = _mm256_loadu_si256(c[0].add(j).cast());
                    let c1 = _mm256_loadu_si256(c[1].add(j).cast());
                    for t in 0..4 {
                        let qv = _mm256_loadu_si256(q[t].add(j).cast());
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(qv, c0), ones);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(qv, c1), ones);
                        acc[0][t] = _mm256_add_epi32(acc[0][t], p0);
                        acc[1][t] = _mm256_add_epi32(acc[1][t], p1);
                    }
                    j += 32;
                }
                let raw = acc.map(|a| a.map(|v| hsum_i32(v)));
                let spans = ((j, d), (qi, qn), (ri, rn), (r, sums));
                finish_tile(raw, &q, &c, spans.0, spans.1, spans.2, spans.3, out);
                qi += 4;
            }
            ri += 2;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{
        check_i8_rows, check_u8_rows, finish_group, finish_tile, prefetch_next_rows, row_group,
        run_tile, U8_QUERY_OFFSET,
    };
    use std::arch::x86_64::*;

    /// The lane sums of four accumulators at once, `[Σa, Σb, Σc, Σd]` (one transpose-and-add
    /// tree instead of four separate reductions).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn reduce4(acc: [__m512i; 4]) -> [i32; 4] {
        let ab = _mm512_add_epi32(
            _mm512_unpacklo_epi32(acc[0], acc[1]),
            _mm512_unpackhi_epi32(acc[0], acc[1]),
        );
        let cd = _mm512_add_epi32(
            _mm512_unpacklo_epi32(acc[2], acc[3]),
            _mm512_unpackhi_epi32(acc[2], acc[3]),
        );
        let abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
        let h = _mm256_add_epi32(
            _mm512_castsi512_si256(abcd),
            _mm512_extracti64x4_epi64::<1>(abcd),
        );
        let mut sums = [0i32; 4];
        _mm_storeu_si128(
            sums.as_mut_ptr().cast(),
            _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h)),
        );
        sums
    }

    /// Thirty-two bytes at `p` sign-extended to thirty-two i16.
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> __m512i {
        _mm512_cvtepi8_epi16(_mm256_loadu_si256(p.cast()))
    }

    pub fn dot_i8_rows(q: &[i16], rows: &[i8], out: &mut [i32]) {
        check_i8_rows(q.len(), rows.len(), out.len());
        // SAFETY: avx512bw+avx512vnni checked by `Kernels::detect`; `rows` holds out.len() rows of q.len().
        unsafe { dot_i8_rows_impl(q, rows.as_ptr(), out) }
    }

    /// One query against four byte rows per pass: per 32 elements, one query load, four sign
    /// extensions, four `vpdpwssd` into exact i32 sums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot_i8_rows_impl(q: &[i16], rows: *const i8, out: &mut [i32]) {
        let d = q.len();
        let pq = q.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i < n {
            let (r, t_n) = row_group(rows, d, i, n);
            let mut acc = [_mm512_setzero_si512(); 4];
            let mut j = 0;
            while j + 32 <= d {
                let qv = _mm512_loadu_si512(pq.add(j).cast());
                if j % 64 == 0 && i + 8 <= n {
                    prefetch_next_rows(&r, j + 4 * d);
                }
                for t in 0..4 {
                    acc[t] = _mm512_dpwssd_epi32(acc[t], qv, load_i8(r[t].add(j)));
                }
                j += 32;
            }
            finish_group(reduce4(acc), pq, &r, (j, d), (i, t_n), 0, &[], out);
            i += 4;
        }
    }

    pub fn dot_u8_rows(q: &[u8], rows: &[i8], sums: &[i32], out: &mut [i32]) {
        check_u8_rows(q, rows, sums, out);
        // SAFETY: avx512bw+avx512vnni checked by `Kernels::detect`; shapes checked above.
        unsafe { dot_u8_rows_impl(q, rows.as_ptr(), sums, out) }
    }

    /// One byte query against four byte rows per pass: per 64 elements, one query load and one
    /// `vpdpbusd` per row (unsigned query bytes times signed row bytes, four products summed
    /// into each i32 lane).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot_u8_rows_impl(q: &[u8], rows: *const i8, sums: &[i32], out: &mut [i32]) {
        let d = q.len();
        let pq = q.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i < n {
            let (r, t_n) = row_group(rows, d, i, n);
            let mut acc = [_mm512_setzero_si512(); 4];
            let mut j = 0;
            while j + 64 <= d {
                let qv = _mm512_loadu_si512(pq.add(j).cast());
                if i + 8 <= n {
                    prefetch_next_rows(&r, j + 4 * d);
                }
                for t in 0..4 {
                    let rv = _mm512_loadu_si512(r[t].add(j).cast());
                    acc[t] = _mm512_dpbusd_epi32(acc[t], qv, rv);
                }
                j += 64;
            }
            let raw = reduce4(acc);
            finish_group(raw, pq, &r, (j, d), (i, t_n), U8_QUERY_OFFSET, sums, out);
            i += 4;
        }
    }

    pub fn dot_u8_tile(queries: &[u8], dim: usize, rows: &[i8], sums: &[i32], out: &mut [i32]) {
        // SAFETY: avx512bw+avx512vnni checked by `Kernels::detect`.
        unsafe { run_tile(queries, dim, rows, sums, out, dot_u8_tile_impl) }
    }

    /// Two byte rows × four byte queries per pass: eight accumulators; per 64 elements, two row
    /// loads feed eight `vpdpbusd`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn dot_u8_tile_impl(
        qs: *const u8,
        m: usize,
        d: usize,
        rows: *const i8,
        sums: &[i32],
        out: *mut i32,
    ) {
        let r = sums.len();
        let mut ri = 0;
        while ri < r {
            let rn = (r - ri).min(2);
            let c = [rows.add(ri * d), rows.add((ri + rn - 1) * d)];
            let mut qi = 0;
            while qi < m {
                let (q, qn) = row_group(qs, d, qi, m);
                let mut acc = [[_mm512_setzero_si512(); 4]; 2];
                let mut j = 0;
                while j + 64 <= d {
                    let c0 = _mm512_loadu_si512(c[0].add(j).cast());
                    let c1 = _mm512_loadu_si512(c[1].add(j).cast());
                    for t in 0..4 {
                        let qv = _mm512_loadu_si512(q[t].add(j).cast());
                        acc[0][t] = _mm512_dpbusd_epi32(acc[0][t], qv, c0);
                        acc[1][t] = _mm512_dpbusd_epi32(acc[1][t], qv, c1);
                    }
                    j += 64;
                }
                let raw = acc.map(|a| a.map(|v| _mm512_reduce_add_epi32(v)));
                let spans = ((j, d), (qi, qn), (ri, rn), (r, sums));
                finish_tile(raw, &q, &c, spans.0, spans.1, spans.2, spans.3, out);
                qi += 4;
            }
            ri += 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], b: &[f32]) -> (f64, f64) {
        let l2 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        let dot = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        (l2, dot)
    }

    fn lcg(seed: u32) -> impl FnMut() -> f32 {
        let mut seed = seed;
        move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        }
    }

    #[test]
    fn kernels_match_f64_reference_for_every_length() {
        let mut next = lcg(7);
        for k in [
            Some(Kernels::scalar()),
            Kernels::avx2_only(),
            Some(Kernels::detect()),
        ]
        .into_iter()
        .flatten()
        {
            for n in (0..80).chain([255, 256, 257, 767, 768, 769]) {
                let a: Vec<f32> = (0..n).map(|_| next()).collect();
                let b: Vec<f32> = (0..n).map(|_| next()).collect();
                let (l2, dot) = reference(&a, &b);
                let tol = 1e-5 * (n as f64 + 1.0);
                assert!(
                    ((k.l2sq)(&a, &b) as f64 - l2).abs() <= tol,
                    "{} l2 n={n}",
                    k.name
                );
                assert!(
                    ((k.dot)(&a, &b) as f64 - dot).abs() <= tol,
                    "{} dot n={n}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn row_kernels_match_f64_reference_for_every_shape() {
        let mut next = lcg(11);
        for k in [
            Some(Kernels::scalar()),
            Kernels::avx2_only(),
            Some(Kernels::detect()),
        ]
        .into_iter()
        .flatten()
        {
            for d in (0..40).chain([255, 256, 257, 767, 768]) {
                for n in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 13] {
                    let q: Vec<f32> = (0..d).map(|_| next()).collect();
                    let rows: Vec<f32> = (0..n * d).map(|_| next()).collect();
                    let (mut l2, mut dot) = (vec![0f32; n], vec![0f32; n]);
                    (k.l2sq_rows)(&q, &rows, &mut l2);
                    (k.dot_rows)(&q, &rows, &mut dot);
                    let tol = 1e-5 * (d as f64 + 1.0);
                    for i in 0..n {
                        // A row's distance does not depend on where it sits in the call.
                        let mut one = [0f32];
                        (k.l2sq_rows)(&q, &rows[i * d..(i + 1) * d], &mut one);
                        assert_eq!(
                            one[0].to_bits(),
                            l2[i].to_bits(),
                            "{} l2_rows alone d={d} n={n} i={i}",
                            k.name
                        );
                        (k.dot_rows)(&q, &rows[i * d..(i + 1) * d], &mut one);
                        assert_eq!(
                            one[0].to_bits(),
                            dot[i].to_bits(),
                            "{} dot_rows alone d={d} n={n} i={i}",
                            k.name
                        );
                        let (rl2, rdot) = reference(&q, &rows[i * d..(i + 1) * d]);
                        assert!(
                            (l2[i] as f64 - rl2).abs() <= tol,
                            "{} l2_rows d={d} n={n} i={i}",
                            k.name
                        );
                        assert!(
                            (dot[i] as f64 - rdot).abs() <= tol,
                            "{} dot_rows d={d} n={n} i={i}",
                            k.name
                        );
                    }
                }
            }
        }
    }

    fn extreme_i16(next: &mut impl FnMut() -> f32) -> i16 {
        let x = next();
        if x > 0.45 {
            I16_QUERY_MAX as i16
        } else if x < -0.45 {
            -(I16_QUERY_MAX as i16)
        } else {
            (x * 2.0 * I16_QUERY_MAX as f32) as i16
        }
    }

    fn extreme_i8(next: &mut impl FnMut() -> f32) -> i8 {
        let x = next();
        if x > 0.45 {
            127
        } else if x < -0.45 {
            -127
        } else {
            (x * 254.0) as i8
        }
    }

    /// A query byte, often at either end of its range (0 or `2·U8_QUERY_OFFSET`).
    fn extreme_u8(next: &mut impl FnMut() -> f32) -> u8 {
        let x = next();
        let top = 2 * U8_QUERY_OFFSET;
        if x > 0.4 {
            top as u8
        } else if x < -0.4 {
            0
        } else {
            ((x + 0.4) / 0.8 * top as f32) as u8
        }
    }

    #[test]
    fn integer_kernels_are_exact_up_to_the_largest_dimension() {
        let mut next = lcg(19);
        for k in [
            Some(Kernels::scalar()),
            Kernels::avx2_only(),
            Some(Kernels::detect()),
        ]
        .into_iter()
        .flatten()
        {
            for d in (0..40).chain([255, 256, 257, 767, 768, 1023, I8_MAX_DIM]) {
                for n in [0usize, 1, 3, 4, 5, 9] {
                    let q: Vec<i16> = (0..d).map(|_| extreme_i16(&mut next)).collect();
                    let rows: Vec<i8> = (0..n * d).map(|_| extreme_i8(&mut next)).collect();
                    let mut out = vec![0i32; n];
                    (k.dot_i8_rows)(&q, &rows, &mut out);
                    for i in 0..n {
                        let want: i64 = q
                            .iter()
                            .zip(&rows[i * d..(i + 1) * d])
                            .map(|(&a, &b)| a as i64 * b as i64)
                            .sum();
                        assert_eq!(out[i] as i64, want, "{} d={d} n={n} i={i}", k.name);
                    }
                }
            }
            // The worst case: every product at its largest magnitude.
            let q = vec![I16_QUERY_MAX as i16; I8_MAX_DIM];
            let rows = vec![-127i8; 5 * I8_MAX_DIM];
            let mut out = vec![0i32; 5];
            (k.dot_i8_rows)(&q, &rows, &mut out);
            assert!(out
                .iter()
                .all(|&v| v as i64 == -(127 * I16_QUERY_MAX as i64 * I8_MAX_DIM as i64)));
        }
    }

    #[test]
    fn byte_query_kernels_are_exact_up_to_the_largest_dimension() {
        let mut next = lcg(23);
        for k in [
            Some(Kernels::scalar()),
            Kernels::avx2_only(),
            Some(Kernels::detect()),
        ]
        .into_iter()
        .flatten()
        {
            for d in (0..70).chain([255, 256, 257, 767, 768, 1023, I8_MAX_DIM]) {
                for n in [0usize, 1, 3, 4, 5, 9, 13] {
                    let q: Vec<u8> = (0..d).map(|_| extreme_u8(&mut next)).collect();
                    let rows: Vec<i8> = (0..n * d).map(|_| extreme_i8(&mut next)).collect();
                    let sums: Vec<i32> = rows
                        .chunks_exact(d.max(1))
                        .map(|r| r.iter().map(|&v| v as i32).sum())
                        .chain(std::iter::repeat(0))
                        .take(n)
                        .collect();
                    let mut out = vec![0i32; n];
                    (k.dot_u8_rows)(&q, &rows, &sums, &mut out);
                    for i in 0..n {
                        let want: i64 = q
                            .iter()
                            .zip(&rows[i * d..(i + 1) * d])
                            .map(|(&a, &b)| (a as i64 - U8_QUERY_OFFSET as i64) * b as i64)
                            .sum();
                        assert_eq!(out[i] as i64, want, "{} d={d} n={n} i={i}", k.name);
                    }
                }
            }
            // The worst cases: every product at its largest magnitude, both signs.
            for (qb, rb) in [(0u8, -128i8), (0, 127), (128, -128), (128, 127)] {
                let q = vec![qb; I8_MAX_DIM];
                let rows = vec![rb; 5 * I8_MAX_DIM];
                let sums = vec![rb as i32 * I8_MAX_DIM as i32; 5];
                let mut out = vec![0i32; 5];
                (k.dot_u8_rows)(&q, &rows, &sums, &mut out);
                let want = (qb as i64 - U8_QUERY_OFFSET as i64) * rb as i64 * I8_MAX_DIM as i64;
                assert!(out.iter().all(|&v| v as i64 == want), "{}: {out:?}", k.name);
            }
        }
    }

    #[test]
    fn narrowed_queries_stay_in_range_and_their_remainder_is_exact() {
        let mut next = lcg(31);
        for d in (0..40).chain([255, 768, I8_MAX_DIM]) {
            let q: Vec<i16> = (0..d).map(|_| extreme_i16(&mut next)).collect();
            let mut b = vec![0u8; d];
            let r2 = narrow_query(&q, &mut b);
            let mut want = 0u64;
            for (&v, &u) in q.iter().zip(&b) {
                assert!(u as i32 <= 2 * U8_QUERY_OFFSET);
                let r = v as i64 - 256 * (u as i64 - U8_QUERY_OFFSET as i64);
                assert!((-128..=128).contains(&r), "{v} -> {u}: remainder {r}");
                want += (r * r) as u64;
            }
            assert_eq!(r2, want, "d={d}");
        }
        let mut b = [0u8; 3];
        narrow_query(&[I16_QUERY_MAX as i16, -I16_QUERY_MAX as i16, 0], &mut b);
        assert_eq!(b, [128, 0, 64]);
    }

    #[test]
    fn quantised_queries_agree_and_the_residual_bound_holds() {
        let mut next = lcg(29);
        for d in (0..40).chain([255, 256, 768, 1000]) {
            for scale in [0.0f32, 1e-30, 1e-3, 1.0, 3e4, 1e30] {
                let q: Vec<f32> = (0..d).map(|_| next() * scale).collect();
                let (mut a, mut b) = (vec![0i16; d], vec![0i16; d]);
                let (ta, ea) = (Kernels::scalar().quantise)(&q, &mut a);
                let (tb, eb) = (Kernels::detect().quantise)(&q, &mut b);
                assert_eq!(a, b, "d={d} scale={scale}");
                assert_eq!(ta, tb);
                assert!(a.iter().all(|&v| (v as i32).abs() <= I16_QUERY_MAX));
                if ta.is_infinite() {
                    // Too small to quantise: the bound is infinite and the searcher scans exactly.
                    assert!(ea.is_infinite() && eb.is_infinite());
                    continue;
                }
                let truth: f64 = q
                    .iter()
                    .zip(&a)
                    .map(|(&v, &x)| (v as f64 - x as f64 * ta as f64).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    ea as f64 >= truth && eb as f64 >= truth,
                    "d={d} scale={scale}: {ea} {eb} < {truth}"
                );
                if scale >= 1e-3 {
                    let slack = ta as f64 * (d as f64).sqrt() * 4e-3;
                    assert!(
                        ea as f64 <= truth * 1.001 + slack,
                        "d={d} scale={scale}: bound too loose: {ea} vs {truth} (t {ta})"
                    );
                }
            }
        }
    }

    #[test]
    fn all_finite_rejects_every_nan_and_infinity_anywhere() {
        assert!(all_finite(&[]));
        let ok = [
            0.0,
            -0.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
            -1e-45,
        ];
        assert!(all_finite(&ok));
        for bad in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for len in [1, 7, 8, 9, 33] {
                for at in 0..len {
                    let mut v = vec![1.0f32; len];
                    v[at] = bad;
                    assert!(!all_finite(&v), "{bad} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn tile_kernel_matches_row_kernel_for_every_shape() {
        let mut next = lcg(13);
        for k in [
            Some(Kernels::scalar()),
            Kernels::avx2_only(),
            Some(Kernels::detect()),
        ]
        .into_iter()
        .flatten()
        {
            for d in [1usize, 7, 15, 16, 17, 33, 63, 64, 65, 256, 768] {
                for m in 0..=6 {
                    for r in 0..=5 {
                        let qs: Vec<u8> = (0..m * d).map(|_| extreme_u8(&mut next)).collect();
                        let rows: Vec<i8> = (0..r * d).map(|_| extreme_i8(&mut next)).collect();
                        let sums: Vec<i32> = (0..r)
                            .map(|i| rows[i * d..(i + 1) * d].iter().map(|&v| v as i32).sum())
                            .collect();
                        let mut out = vec![i32::MIN; m * r];
                        (k.dot_u8_tile)(&qs, d, &rows, &sums, &mut out);
                        for qi in 0..m {
                            let mut want = vec![0i32; r];
                            let q = &qs[qi * d..(qi + 1) * d];
                            (Kernels::scalar().dot_u8_rows)(q, &rows, &sums, &mut want);
                            assert_eq!(
                                &out[qi * r..(qi + 1) * r],
                                &want[..],
                                "{} d={d} m={m} r={r} qi={qi}",
                                k.name
                            );
                        }
                    }
                }
            }
        }
    }
}
