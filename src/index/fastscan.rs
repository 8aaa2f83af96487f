//! FastScan kernels: sums of 4-bit product-quantizer codes looked up in 8-bit tables, 32
//! vectors at a time, over codes packed in faiss's block layout (see [`crate::format::PqParts`]).
//!
//! A query's table (`LUT`) holds 16 bytes per sub-quantizer, `m2` rows (the sub-quantizer count
//! rounded up to even, the padding row zero), so the two tables of a pair of sub-quantizers are
//! 32 contiguous bytes: exactly the two 128-bit lanes that one `vpshufb` looks up in. For each
//! group of 32 vectors and each pair, the 32 code bytes hold one nibble per vector and
//! sub-quantizer; the kernels look both nibbles up and add the bytes into 16-bit sums. The sums
//! wrap modulo 2¹⁶ exactly as faiss's (`pq4_fast_scan_search_qbs.cpp`,
//! `kernel_accumulate_block`): every kernel here returns the same integers.
//!
//! Kernels: AVX-512BW (two pairs per instruction), AVX2 (one pair), and a portable scalar one;
//! [`FastScanKernels::detect`] picks the fastest the CPU has, once.

/// Vectors one kernel call sums: one group of the packed layout.
pub const GROUP: usize = 32;

/// `out[v] = Σ_j lut[j·16 + code_j(v)]` (wrapping in 16 bits) for the 32 vectors `v` of one
/// group. `codes` points at the group's first pair (block start + `group·32`), consecutive pairs
/// are `stride` bytes apart (the block's `bbs`), and `lut` holds `pairs·32` bytes.
pub type GroupSums =
    fn(codes: &[u8], stride: usize, pairs: usize, lut: &[u8], out: &mut [u16; GROUP]);

/// The FastScan kernel set one searcher uses.
#[derive(Clone, Copy)]
pub struct FastScanKernels {
    /// Sums of one group of 32 vectors (see [`GroupSums`]).
    pub group_sums: GroupSums,
    /// Name of the instruction set in use (`avx512bw`, `avx2` or `scalar`).
    pub name: &'static str,
}

impl std::fmt::Debug for FastScanKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl FastScanKernels {
    /// The fastest kernels this CPU supports.
    pub fn detect() -> FastScanKernels {
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(k) = Self::avx512() {
                return k;
            }
            if let Some(k) = Self::avx2() {
                return k;
            }
        }
        Self::scalar()
    }

    /// The portable kernels.
    pub fn scalar() -> FastScanKernels {
        FastScanKernels {
            group_sums: scalar_group_sums,
            name: "scalar",
        }
    }

    /// The AVX2 kernels, if the CPU has AVX2.
    pub fn avx2() -> Option<FastScanKernels> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some(FastScanKernels {
                group_sums: x86::avx2_group_sums,
                name: "avx2",
            });
        }
        None
    }

    /// The AVX-512BW kernels, if the CPU has AVX-512F and BW.
    pub fn avx512() -> Option<FastScanKernels> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx2")
        {
            return Some(FastScanKernels {
                group_sums: x86::avx512_group_sums,
                name: "avx512bw",
            });
        }
        None
    }

    /// Every kernel set this CPU can run (for tests and benchmarks).
    pub fn all_available() -> impl Iterator<Item = FastScanKernels> {
        [Some(Self::scalar()), Self::avx2(), Self::avx512()]
            .into_iter()
            .flatten()
    }
}

/// Checks the slice lengths a kernel relies on (every kernel runs this first, so the SIMD
/// loads below stay in bounds).
#[inline]
fn check(codes: &[u8], stride: usize, pairs: usize, lut: &[u8]) {
    assert!(lut.len() >= pairs * 32, "FastScan table too short");
    if pairs > 0 {
        assert!(
            stride >= GROUP && codes.len() >= (pairs - 1) * stride + GROUP,
            "FastScan codes too short"
        );
    }
}

/// The vector a code byte's low nibble belongs to (its high nibble: the same plus 16).
#[inline]
const fn vector_of_byte(k: usize) -> usize {
    if k.is_multiple_of(2) {
        k / 2
    } else {
        8 + k / 2
    }
}

fn scalar_group_sums(
    codes: &[u8],
    stride: usize,
    pairs: usize,
    lut: &[u8],
    out: &mut [u16; GROUP],
) {
    check(codes, stride, pairs, lut);
    *out = [0; GROUP];
    for p in 0..pairs {
        let c = &codes[p * stride..p * stride + GROUP];
        let (even, odd) = lut[p * 32..p * 32 + 32].split_at(16);
        for k in 0..16 {
            let v = vector_of_byte(k);
            let (e, o) = (c[k], c[16 + k]);
            let lo = even[(e & 15) as usize] as u16 + odd[(o & 15) as usize] as u16;
            let hi = even[(e >> 4) as usize] as u16 + odd[(o >> 4) as usize] as u16;
            out[v] = out[v].wrapping_add(lo);
            out[v + 16] = out[v + 16].wrapping_add(hi);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{check, GROUP};
    use std::arch::x86_64::*;

    pub fn avx2_group_sums(
        codes: &[u8],
        stride: usize,
        pairs: usize,
        lut: &[u8],
        out: &mut [u16; GROUP],
    ) {
        check(codes, stride, pairs, lut);
        // SAFETY: chosen only when the CPU has AVX2 (`FastScanKernels::avx2`); `check` bounds
        // every load.
        unsafe { avx2_impl(codes.as_ptr(), stride, pairs, lut.as_ptr(), out) }
    }

    pub fn avx512_group_sums(
        codes: &[u8],
        stride: usize,
        pairs: usize,
        lut: &[u8],
        out: &mut [u16; GROUP],
    ) {
        check(codes, stride, pairs, lut);
        // SAFETY: chosen only when the CPU has AVX-512F/BW and AVX2 (`FastScanKernels::avx512`);
        // `check` bounds every load.
        unsafe { avx512_impl(codes.as_ptr(), stride, pairs, lut.as_ptr(), out) }
    }

    /// One pair: adds the looked-up bytes of the low nibbles into `a0` (even bytes, in the low
    /// half of each 16-bit lane) / `a1` (odd bytes), and of the high nibbles into `a2` / `a3`.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn pair256(c: __m256i, t: __m256i, acc: &mut [__m256i; 4]) {
        let mask = _mm256_set1_epi8(15);
        let lo = _mm256_and_si256(c, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), mask);
        let r0 = _mm256_shuffle_epi8(t, lo);
        let r1 = _mm256_shuffle_epi8(t, hi);
        acc[0] = _mm256_add_epi16(acc[0], r0);
        acc[1] = _mm256_add_epi16(acc[1], _mm256_srli_epi16(r0, 8));
        acc[2] = _mm256_add_epi16(acc[2], r1);
        acc[3] = _mm256_add_epi16(acc[3], _mm256_srli_epi16(r1, 8));
    }

    /// Turns the four accumulators into the 32 sums: lane halves hold the even and odd
    /// sub-quantizers of the same vectors, so they are added; the even-byte sums are the
    /// accumulated 16-bit words minus 256 × the odd-byte sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn finish256(acc: [__m256i; 4], out: &mut [u16; GROUP]) {
        let e0 = _mm256_sub_epi16(acc[0], _mm256_slli_epi16(acc[1], 8));
        let e2 = _mm256_sub_epi16(acc[2], _mm256_slli_epi16(acc[3], 8));
        let fold = |a: __m256i, b: __m256i| {
            _mm256_add_epi16(
                _mm256_permute2x128_si256(a, b, 0x20),
                _mm256_permute2x128_si256(a, b, 0x31),
            )
        };
        let d0 = fold(e0, acc[1]);
        let d1 = fold(e2, acc[3]);
        let p = out.as_mut_ptr() as *mut __m256i;
        _mm256_storeu_si256(p, d0);
        _mm256_storeu_si256(p.add(1), d1);
    }

    #[target_feature(enable = "avx2")]
    unsafe fn avx2_impl(
        codes: *const u8,
        stride: usize,
        pairs: usize,
        lut: *const u8,
        out: &mut [u16; GROUP],
    ) {
        let mut acc = [_mm256_setzero_si256(); 4];
        for p in 0..pairs {
            let c = _mm256_loadu_si256(codes.add(p * stride) as *const __m256i);
            let t = _mm256_loadu_si256(lut.add(p * 32) as *const __m256i);
            pair256(c, t, &mut acc);
        }
        finish256(acc, out);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2")]
    unsafe fn avx512_impl(
        codes: *const u8,
        stride: usize,
        pairs: usize,
        lut: *const u8,
        out: &mut [u16; GROUP],
    ) {
        let mask = _mm512_set1_epi8(15);
        let mut a = [_mm512_setzero_si512(); 4];
        let mut p = 0;
        while p + 2 <= pairs {
            let c0 = _mm256_loadu_si256(codes.add(p * stride) as *const __m256i);
            let c1 = _mm256_loadu_si256(codes.add((p + 1) * stride) as *const __m256i);
            let c = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(c0), c1);
            let t = _mm512_loadu_si512(lut.add(p * 32) as *const __m512i);
            let lo = _mm512_and_si512(c, mask);
            let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(c), mask);
            let r0 = _mm512_shuffle_epi8(t, lo);
            let r1 = _mm512_shuffle_epi8(t, hi);
            a[0] = _mm512_add_epi16(a[0], r0);
            a[1] = _mm512_add_epi16(a[1], _mm512_srli_epi16::<8>(r0));
            a[2] = _mm512_add_epi16(a[2], r1);
            a[3] = _mm512_add_epi16(a[3], _mm512_srli_epi16::<8>(r1));
            p += 2;
        }
        // The two 256-bit halves hold two pairs laid out alike: add them.
        let half = |v: __m512i| {
            _mm256_add_epi16(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
        };
        let mut acc = [half(a[0]), half(a[1]), half(a[2]), half(a[3])];
        if p < pairs {
            let c = _mm256_loadu_si256(codes.add(p * stride) as *const __m256i);
            let t = _mm256_loadu_si256(lut.add(p * 32) as *const __m256i);
            pair256(c, t, &mut acc);
        }
        finish256(acc, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    /// Packs per-vector codes (`n × m2` nibbles) into faiss's block layout (`pq4_pack_codes`).
    fn pack(codes: &[u8], n: usize, m2: usize, bbs: usize) -> Vec<u8> {
        let blocks = n.div_ceil(bbs);
        let mut out = vec![0u8; blocks * bbs * m2 / 2];
        for i in 0..n {
            let (block, within) = (i / bbs, i % bbs);
            for sq in 0..m2 {
                let c = codes[i * m2 + sq];
                let v = within % 16;
                let k = if v < 8 { 2 * v } else { 2 * (v - 8) + 1 };
                let at =
                    block * bbs * m2 / 2 + (sq / 2) * bbs + (within / 32) * 32 + k + 16 * (sq % 2);
                out[at] |= if within % 32 >= 16 { c << 4 } else { c };
            }
        }
        out
    }

    #[test]
    fn every_kernel_gives_the_reference_sums() {
        let kernels: Vec<_> = FastScanKernels::all_available().collect();
        eprintln!("kernels: {kernels:?}");
        let mut rng = Rng(7);
        for &(m, n, bbs) in &[
            (1usize, 5usize, 32usize),
            (2, 32, 32),
            (3, 33, 32),
            (7, 70, 64),
            (128, 41, 32),
            (129, 100, 32),
            (192, 64, 64),
            (384, 45, 32),
            (383, 97, 96),
        ] {
            let m2 = m.next_multiple_of(2);
            // Codes: every nibble value, then random; the padding sub-quantizer is zero.
            let mut codes = vec![0u8; n * m2];
            for i in 0..n {
                for sq in 0..m {
                    codes[i * m2 + sq] = if i < 16 {
                        i as u8
                    } else {
                        (rng.next() & 15) as u8
                    };
                }
            }
            let packed = pack(&codes, n, m2, bbs);
            // Tables: extremes and random bytes, so the sums wrap at large m.
            let mut lut = vec![0u8; m2 * 16];
            for (j, t) in lut[..m * 16].iter_mut().enumerate() {
                *t = match j % 5 {
                    0 => 255,
                    1 => 0,
                    _ => rng.next() as u8,
                };
            }
            let block_bytes = bbs * m2 / 2;
            for i in 0..n.div_ceil(bbs) * bbs {
                let want = if i < n {
                    (0..m).fold(0u16, |s, sq| {
                        s.wrapping_add(lut[sq * 16 + codes[i * m2 + sq] as usize] as u16)
                    })
                } else {
                    // Empty slots have all codes zero.
                    (0..m).fold(0u16, |s, sq| s.wrapping_add(lut[sq * 16] as u16))
                };
                let (block, group) = (i / bbs, (i % bbs) / GROUP);
                let codes = &packed[block * block_bytes + group * GROUP..];
                for k in &kernels {
                    let mut out = [0u16; GROUP];
                    (k.group_sums)(codes, bbs, m2 / 2, &lut, &mut out);
                    assert_eq!(
                        out[i % GROUP],
                        want,
                        "{} m {m} n {n} bbs {bbs} vector {i}",
                        k.name
                    );
                }
            }
        }
    }

    #[test]
    fn kernels_agree_on_random_blocks() {
        let kernels: Vec<_> = FastScanKernels::all_available().collect();
        let mut rng = Rng(11);
        for round in 0..200 {
            let pairs = 1 + (rng.next() % 192) as usize;
            let stride = 32 * (1 + round % 3);
            let codes: Vec<u8> = (0..pairs * stride).map(|_| rng.next() as u8).collect();
            let lut: Vec<u8> = (0..pairs * 32).map(|_| rng.next() as u8).collect();
            let mut want = [0u16; GROUP];
            scalar_group_sums(&codes, stride, pairs, &lut, &mut want);
            for k in &kernels {
                let mut out = [1u16; GROUP];
                (k.group_sums)(&codes, stride, pairs, &lut, &mut out);
                assert_eq!(out, want, "{} pairs {pairs} stride {stride}", k.name);
            }
        }
    }
}
