//! Distance kernels: AVX2+FMA(+F16C) with runtime detection, and a portable fallback.
//!
//! The set is chosen once (when a [`Searcher`](super::Searcher) is created) and called through
//! plain function pointers, so the hot loop carries no feature checks.
//!
//! Besides the one-pair kernels ([`l2sq`](Kernels::l2sq), [`dot`](Kernels::dot)) there are
//! "many rows" kernels that keep one query in registers while streaming several stored rows
//! (contiguous lists and centroid tables), and kernels over the half-precision centroid table
//! the searcher screens lists with (see `coarse.rs`): one query against many rows, and a tile
//! of several queries against several rows, so a block of queries shares one pass over memory.

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
    /// `out[i] = q · rows[i]` where `rows` holds `out.len()` rows of `q.len()` IEEE half floats.
    pub dot_f16_rows: fn(q: &[f32], rows: &[u16], out: &mut [f32]),
    /// Tile of dot products: `queries` holds `m` rows of `dim` floats, `rows` holds `r` rows of
    /// `dim` halves, `out` (`m × r`) receives `out[qi * r + ri] = queries[qi] · rows[ri]`.
    pub dot_f16_tile: fn(queries: &[f32], dim: usize, rows: &[u16], out: &mut [f32]),
    /// Name of the instruction set in use (`avx2+fma` or `scalar`).
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
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Kernels {
                    l2sq: avx2::l2sq,
                    dot: avx2::dot,
                    l2sq_rows: avx2::l2sq_rows,
                    dot_rows: avx2::dot_rows,
                    dot_f16_rows: avx2::dot_f16_rows,
                    dot_f16_tile: avx2::dot_f16_tile,
                    name: "avx2+fma",
                };
            }
        }
        Kernels::scalar()
    }

    /// Portable kernels (the compiler vectorises them for the baseline target).
    pub fn scalar() -> Kernels {
        Kernels {
            l2sq: scalar::l2sq,
            dot: scalar::dot,
            l2sq_rows: scalar::l2sq_rows,
            dot_rows: scalar::dot_rows,
            dot_f16_rows: scalar::dot_f16_rows,
            dot_f16_tile: scalar::dot_f16_tile,
            name: "scalar",
        }
    }
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

/// IEEE 754 half (binary16) bits to f32 (exact: every half is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match exp {
        0 => {
            // Zero or subnormal: man × 2⁻²⁴, exact in f32.
            let v = man as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        31 => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 to IEEE 754 half bits, rounding to nearest even; overflow gives ±infinity.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x200 } else { 0 };
    }
    let e = exp - 112; // rebias 127 → 15
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal half (or zero): value = m × 2^(exp − 150), half unit 2⁻²⁴.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let mut h = m >> shift;
        let rem = m & ((1 << shift) - 1);
        let half = 1 << (shift - 1);
        if rem > half || (rem == half && h & 1 == 1) {
            h += 1;
        }
        return sign | h as u16;
    }
    let mut h = ((e as u32) << 10) | (man >> 13);
    let rem = man & 0x1fff;
    if rem > 0x1000 || (rem == 0x1000 && h & 1 == 1) {
        h += 1; // a carry into the exponent is the correct rounding (up to infinity)
    }
    sign | h as u16
}

mod scalar {
    use super::{check_rows, f16_to_f32};

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

    fn dot_f16(q: &[f32], r: &[u16]) -> f32 {
        let mut acc = [0f32; LANES];
        let (qc, qt) = q.split_at(q.len() / LANES * LANES);
        let (rc, rt) = r.split_at(qc.len());
        for (x, y) in qc.chunks_exact(LANES).zip(rc.chunks_exact(LANES)) {
            for i in 0..LANES {
                acc[i] += x[i] * f16_to_f32(y[i]);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, &y) in qt.iter().zip(rt) {
            s += x * f16_to_f32(y);
        }
        s
    }

    pub fn dot_f16_rows(q: &[f32], rows: &[u16], out: &mut [f32]) {
        check_rows(q.len(), rows.len(), out.len());
        if q.is_empty() {
            return out.fill(0.0);
        }
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(q.len())) {
            *o = dot_f16(q, r);
        }
    }

    pub fn dot_f16_tile(queries: &[f32], dim: usize, rows: &[u16], out: &mut [f32]) {
        if dim == 0 {
            return out.fill(0.0);
        }
        assert!(
            queries.len() % dim == 0 && rows.len() % dim == 0,
            "queries and rows must be whole rows"
        );
        let r = rows.len() / dim;
        assert_eq!(
            out.len(),
            queries.len() / dim * r,
            "out must hold one value per (query, row)"
        );
        for (q, o) in queries
            .chunks_exact(dim)
            .zip(out.chunks_exact_mut(r.max(1)))
        {
            dot_f16_rows(q, rows, &mut o[..r]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{check_rows, f16_to_f32};
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

    /// Eight halves at `p` as eight floats.
    #[inline(always)]
    unsafe fn load_h(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
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
    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2sq_rows_impl(q: &[f32], rows: *const f32, out: &mut [f32]) {
        let d = q.len();
        let pq = q.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i + 4 <= n {
            let r = [
                rows.add(i * d),
                rows.add((i + 1) * d),
                rows.add((i + 2) * d),
                rows.add((i + 3) * d),
            ];
            let mut a0 = [_mm256_setzero_ps(); 4];
            let mut a1 = [_mm256_setzero_ps(); 4];
            let mut j = 0;
            while j + 16 <= d {
                let q0 = _mm256_loadu_ps(pq.add(j));
                let q1 = _mm256_loadu_ps(pq.add(j + 8));
                for t in 0..4 {
                    let d0 = _mm256_sub_ps(q0, _mm256_loadu_ps(r[t].add(j)));
                    let d1 = _mm256_sub_ps(q1, _mm256_loadu_ps(r[t].add(j + 8)));
                    a0[t] = _mm256_fmadd_ps(d0, d0, a0[t]);
                    a1[t] = _mm256_fmadd_ps(d1, d1, a1[t]);
                }
                j += 16;
            }
            if j + 8 <= d {
                let q0 = _mm256_loadu_ps(pq.add(j));
                for t in 0..4 {
                    let d0 = _mm256_sub_ps(q0, _mm256_loadu_ps(r[t].add(j)));
                    a0[t] = _mm256_fmadd_ps(d0, d0, a0[t]);
                }
                j += 8;
            }
            for t in 0..4 {
                let mut s = hsum(_mm256_add_ps(a0[t], a1[t]));
                for jj in j..d {
                    let x = *pq.add(jj) - *r[t].add(jj);
                    s += x * x;
                }
                *out.get_unchecked_mut(i + t) = s;
            }
            i += 4;
        }
        while i < n {
            *out.get_unchecked_mut(i) = l2sq_impl(pq, rows.add(i * d), d);
            i += 1;
        }
    }

    pub fn dot_rows(q: &[f32], rows: &[f32], out: &mut [f32]) {
        check_rows(q.len(), rows.len(), out.len());
        // SAFETY: avx2+fma checked by `Kernels::detect`; `rows` holds out.len() rows of q.len().
        unsafe { dot_rows_impl(q, rows.as_ptr(), out) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_rows_impl(q: &[f32], rows: *const f32, out: &mut [f32]) {
        let d = q.len();
        let pq = q.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i + 4 <= n {
            let r = [
                rows.add(i * d),
                rows.add((i + 1) * d),
                rows.add((i + 2) * d),
                rows.add((i + 3) * d),
            ];
            let mut a0 = [_mm256_setzero_ps(); 4];
            let mut a1 = [_mm256_setzero_ps(); 4];
            let mut j = 0;
            while j + 16 <= d {
                let q0 = _mm256_loadu_ps(pq.add(j));
                let q1 = _mm256_loadu_ps(pq.add(j + 8));
                for t in 0..4 {
                    a0[t] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r[t].add(j)), a0[t]);
                    a1[t] = _mm256_fmadd_ps(q1, _mm256_loadu_ps(r[t].add(j + 8)), a1[t]);
                }
                j += 16;
            }
            if j + 8 <= d {
                let q0 = _mm256_loadu_ps(pq.add(j));
                for t in 0..4 {
                    a0[t] = _mm256_fmadd_ps(q0, _mm256_loadu_ps(r[t].add(j)), a0[t]);
                }
                j += 8;
            }
            for t in 0..4 {
                let mut s = hsum(_mm256_add_ps(a0[t], a1[t]));
                for jj in j..d {
                    s += *pq.add(jj) * *r[t].add(jj);
                }
                *out.get_unchecked_mut(i + t) = s;
            }
            i += 4;
        }
        while i < n {
            *out.get_unchecked_mut(i) = dot_impl(pq, rows.add(i * d), d);
            i += 1;
        }
    }

    pub fn dot_f16_rows(q: &[f32], rows: &[u16], out: &mut [f32]) {
        check_rows(q.len(), rows.len(), out.len());
        // SAFETY: avx2+fma+f16c checked by `Kernels::detect`; `rows` holds out.len() rows of q.len().
        unsafe { dot_f16_rows_impl(q, rows.as_ptr(), out) }
    }

    /// One query against four half rows per pass (two accumulators per row): per 16 elements,
    /// two query loads, eight conversions, eight FMAs.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16_rows_impl(q: &[f32], rows: *const u16, out: &mut [f32]) {
        let d = q.len();
        let pq = q.as_ptr();
        let n = out.len();
        let mut i = 0;
        while i < n {
            let t_n = (n - i).min(4);
            // Rows past the end alias the last real row (their results are discarded).
            let r = [
                rows.add(i * d),
                rows.add((i + 1.min(t_n - 1)) * d),
                rows.add((i + 2.min(t_n - 1)) * d),
                rows.add((i + 3.min(t_n - 1)) * d),
            ];
            let mut a0 = [_mm256_setzero_ps(); 4];
            let mut a1 = [_mm256_setzero_ps(); 4];
            let mut j = 0;
            while j + 16 <= d {
                let q0 = _mm256_loadu_ps(pq.add(j));
                let q1 = _mm256_loadu_ps(pq.add(j + 8));
                for t in 0..4 {
                    a0[t] = _mm256_fmadd_ps(q0, load_h(r[t].add(j)), a0[t]);
                    a1[t] = _mm256_fmadd_ps(q1, load_h(r[t].add(j + 8)), a1[t]);
                }
                j += 16;
            }
            if j + 8 <= d {
                let q0 = _mm256_loadu_ps(pq.add(j));
                for t in 0..4 {
                    a0[t] = _mm256_fmadd_ps(q0, load_h(r[t].add(j)), a0[t]);
                }
                j += 8;
            }
            for t in 0..t_n {
                let mut s = hsum(_mm256_add_ps(a0[t], a1[t]));
                for jj in j..d {
                    s += *pq.add(jj) * f16_to_f32(*r[t].add(jj));
                }
                *out.get_unchecked_mut(i + t) = s;
            }
            i += 4;
        }
    }

    pub fn dot_f16_tile(queries: &[f32], dim: usize, rows: &[u16], out: &mut [f32]) {
        if dim == 0 {
            return out.fill(0.0);
        }
        assert!(
            queries.len() % dim == 0 && rows.len() % dim == 0,
            "queries and rows must be whole rows"
        );
        let r = rows.len() / dim;
        let m = queries.len() / dim;
        assert_eq!(out.len(), m * r, "out must hold one value per (query, row)");
        // SAFETY: avx2+fma+f16c checked by `Kernels::detect`; shapes checked above.
        unsafe { dot_f16_tile_impl(queries.as_ptr(), m, dim, rows.as_ptr(), r, out.as_mut_ptr()) }
    }

    /// Two half rows × four queries per pass: eight accumulators; per eight elements, two
    /// conversions feed eight FMAs (the query loads fold into the FMAs). Each row pair is
    /// converted once per query quad and stays in L1 across the quads.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_f16_tile_impl(
        qs: *const f32,
        m: usize,
        d: usize,
        rows: *const u16,
        r: usize,
        out: *mut f32,
    ) {
        let mut ri = 0;
        while ri < r {
            let rn = (r - ri).min(2);
            let c = [rows.add(ri * d), rows.add((ri + rn - 1) * d)];
            let mut qi = 0;
            while qi < m {
                let qn = (m - qi).min(4);
                let q = [
                    qs.add(qi * d),
                    qs.add((qi + 1.min(qn - 1)) * d),
                    qs.add((qi + 2.min(qn - 1)) * d),
                    qs.add((qi + 3.min(qn - 1)) * d),
                ];
                let mut acc = [[_mm256_setzero_ps(); 4]; 2];
                let mut j = 0;
                while j + 8 <= d {
                    let c0 = load_h(c[0].add(j));
                    let c1 = load_h(c[1].add(j));
                    for t in 0..4 {
                        let qv = _mm256_loadu_ps(q[t].add(j));
                        acc[0][t] = _mm256_fmadd_ps(qv, c0, acc[0][t]);
                        acc[1][t] = _mm256_fmadd_ps(qv, c1, acc[1][t]);
                    }
                    j += 8;
                }
                for (rr, acc) in acc.iter().enumerate().take(rn) {
                    for t in 0..qn {
                        let mut s = hsum(acc[t]);
                        for jj in j..d {
                            s += *q[t].add(jj) * f16_to_f32(*c[rr].add(jj));
                        }
                        *out.add((qi + t) * r + ri + rr) = s;
                    }
                }
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
        for k in [Kernels::scalar(), Kernels::detect()] {
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
        for k in [Kernels::scalar(), Kernels::detect()] {
            for d in (0..40).chain([255, 256, 257, 767, 768]) {
                for n in [0usize, 1, 2, 3, 4, 5, 7, 8, 9, 13] {
                    let q: Vec<f32> = (0..d).map(|_| next()).collect();
                    let rows: Vec<f32> = (0..n * d).map(|_| next()).collect();
                    let halves: Vec<u16> = rows.iter().map(|&x| f32_to_f16(x)).collect();
                    let decoded: Vec<f32> = halves.iter().map(|&h| f16_to_f32(h)).collect();
                    let (mut l2, mut dot, mut dh) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
                    (k.l2sq_rows)(&q, &rows, &mut l2);
                    (k.dot_rows)(&q, &rows, &mut dot);
                    (k.dot_f16_rows)(&q, &halves, &mut dh);
                    let tol = 1e-5 * (d as f64 + 1.0);
                    for i in 0..n {
                        let (rl2, rdot) = reference(&q, &rows[i * d..(i + 1) * d]);
                        let (_, rdh) = reference(&q, &decoded[i * d..(i + 1) * d]);
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
                        assert!(
                            (dh[i] as f64 - rdh).abs() <= tol,
                            "{} dot_f16_rows d={d} n={n} i={i}",
                            k.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn tile_kernel_matches_row_kernel_for_every_shape() {
        let mut next = lcg(13);
        for k in [Kernels::scalar(), Kernels::detect()] {
            for d in [1usize, 7, 8, 9, 16, 17, 256, 768] {
                for m in 0..=6 {
                    for r in 0..=5 {
                        let qs: Vec<f32> = (0..m * d).map(|_| next()).collect();
                        let halves: Vec<u16> = (0..r * d).map(|_| f32_to_f16(next())).collect();
                        let mut out = vec![f32::NAN; m * r];
                        (k.dot_f16_tile)(&qs, d, &halves, &mut out);
                        for qi in 0..m {
                            let mut want = vec![0f32; r];
                            (k.dot_f16_rows)(&qs[qi * d..(qi + 1) * d], &halves, &mut want);
                            for ri in 0..r {
                                let got = out[qi * r + ri];
                                assert!(
                                    (got - want[ri]).abs() <= 1e-5 * (d as f32 + 1.0),
                                    "{} d={d} m={m} r={r}: {got} vs {}",
                                    k.name,
                                    want[ri]
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn half_conversion_round_trips_and_rounds_to_nearest_even() {
        // Every half converts to f32 and back unchanged (NaNs stay NaN).
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), h, "half {h:#06x} ({f})");
            }
        }
        // Rounding: the nearest half, ties to even, against an f64 search over neighbours.
        let mut next = lcg(17);
        for i in 0..200_000 {
            let scale = [1e-7f32, 1e-5, 1e-3, 1.0, 100.0, 60_000.0][i % 6];
            let x = next() * 2.0 * scale;
            let h = f32_to_f16(x);
            let got = f16_to_f32(h) as f64;
            let err = (got - x as f64).abs();
            for nb in [h.wrapping_sub(1), h.wrapping_add(1)] {
                let v = f16_to_f32(nb);
                if v.is_finite() && (v as f64).signum() == got.signum() {
                    assert!(
                        err <= (v as f64 - x as f64).abs(),
                        "{x}: {got} is not nearest ({v} is nearer)"
                    );
                }
            }
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds up to infinity
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
        assert_eq!(f32_to_f16(-0.0), 0x8000);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn software_half_conversion_matches_f16c() {
        if !std::arch::is_x86_feature_detected!("f16c") {
            return;
        }
        #[target_feature(enable = "f16c")]
        unsafe fn hw(x: [f32; 4]) -> [u16; 4] {
            use std::arch::x86_64::*;
            let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_loadu_ps(x.as_ptr()));
            let mut out = [0u16; 8];
            _mm_storeu_si128(out.as_mut_ptr().cast(), h);
            [out[0], out[1], out[2], out[3]]
        }
        let mut seed = 23u64;
        for _ in 0..100_000 {
            let mut x = [0f32; 4];
            for v in &mut x {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Random bits within the half range and below it (subnormals, zero).
                let bits = (seed >> 33) as u32 & 0x7fff_ffff;
                *v = f32::from_bits(bits % 0x4780_0000) * if seed & 1 == 0 { 1.0 } else { -1.0 };
            }
            // SAFETY: f16c detected above.
            let want = unsafe { hw(x) };
            for i in 0..4 {
                assert_eq!(f32_to_f16(x[i]), want[i], "{}", x[i]);
            }
        }
    }
}
