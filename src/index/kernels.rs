//! Distance kernels: AVX2+FMA with runtime detection, and a portable fallback.
//!
//! The set is chosen once (when a [`Searcher`](super::Searcher) is created) and called through
//! plain function pointers, so the hot loop carries no feature checks.

/// The distance kernels one searcher uses.
#[derive(Clone, Copy)]
pub struct Kernels {
    /// Squared Euclidean distance ‖a − b‖².
    pub l2sq: fn(&[f32], &[f32]) -> f32,
    /// Inner product a · b.
    pub dot: fn(&[f32], &[f32]) -> f32,
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
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Kernels {
                    l2sq: avx2::l2sq,
                    dot: avx2::dot,
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
            name: "scalar",
        }
    }
}

mod scalar {
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
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
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
        unsafe { l2sq_impl(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn l2sq_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)));
                *acc = _mm256_fmadd_ps(d, d, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            let d = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
            acc[0] = _mm256_fmadd_ps(d, d, acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
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
        unsafe { dot_impl(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8 * j)), _mm256_loadu_ps(pb.add(i + 8 * j)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        while i < n {
            s += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], b: &[f32]) -> (f64, f64) {
        let l2 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
        let dot = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        (l2, dot)
    }

    #[test]
    fn kernels_match_f64_reference_for_every_length() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for k in [Kernels::scalar(), Kernels::detect()] {
            for n in (0..80).chain([255, 256, 257, 767, 768, 769]) {
                let a: Vec<f32> = (0..n).map(|_| next()).collect();
                let b: Vec<f32> = (0..n).map(|_| next()).collect();
                let (l2, dot) = reference(&a, &b);
                let tol = 1e-5 * (n as f64 + 1.0);
                assert!(((k.l2sq)(&a, &b) as f64 - l2).abs() <= tol, "{} l2 n={n}", k.name);
                assert!(((k.dot)(&a, &b) as f64 - dot).abs() <= tol, "{} dot n={n}", k.name);
            }
        }
    }
}
