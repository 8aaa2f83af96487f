//! The row shuffle of RVC's index recipe, reproducible: numpy's legacy `RandomState`
//! (MT19937) shuffle, so `rvc_permutation(n, seed)` is exactly the order
//! `np.random.seed(seed); idx = np.arange(n); np.random.shuffle(idx)` gives. RVC itself
//! shuffles without a seed; with this, a build is repeatable and can be reproduced in Python.

/// The Mersenne Twister MT19937 as numpy's legacy `RandomState` seeds and runs it.
struct Mt19937 {
    mt: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Mt19937 {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { mt, index: 624 }
    }

    fn twist(&mut self) {
        for i in 0..624 {
            let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
            let mut v = self.mt[(i + 397) % 624] ^ (y >> 1);
            if y & 1 != 0 {
                v ^= 0x9908_b0df;
            }
            self.mt[i] = v;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            self.twist();
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection.
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for s in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> s;
        }
        loop {
            let v = if max <= 0xffff_ffff {
                (self.next_u32() as u64) & mask
            } else {
                self.next_u64() & mask
            };
            if v <= max {
                return v;
            }
        }
    }
}

/// The permutation `np.random.seed(seed); idx = np.arange(n); np.random.shuffle(idx)` gives.
pub fn rvc_permutation(n: usize, seed: u32) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = Mt19937::new(seed);
    for i in (1..n).rev() {
        let j = rng.interval(i as u64) as usize;
        idx.swap(i, j);
    }
    idx
}

/// Rows (`n × dim`) reordered as RVC does: row `i` of the result is row `perm[i]` of the input.
pub fn shuffle_rows(rows: &[f32], dim: usize, seed: u32) -> Vec<f32> {
    let n = rows.len() / dim.max(1);
    let mut out = Vec::with_capacity(n * dim);
    for i in rvc_permutation(n, seed) {
        out.extend_from_slice(&rows[i * dim..(i + 1) * dim]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_legacy_shuffle() {
        // Values printed by numpy 2.x: np.random.seed(s); a = np.arange(n); np.random.shuffle(a)
        assert_eq!(rvc_permutation(10, 0), vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]);
        let p = rvc_permutation(1000, 1234);
        assert_eq!(p[..8], [681, 990, 155, 768, 438, 363, 688, 555]);
        assert_eq!(p[996..], [53, 294, 723, 815]);
        assert_eq!(rvc_permutation(1, 7), vec![0]);
        assert!(rvc_permutation(0, 7).is_empty());
    }

    #[test]
    fn shuffle_moves_whole_rows() {
        let rows: Vec<f32> = (0..30).map(|v| v as f32).collect();
        let s = shuffle_rows(&rows, 3, 0);
        let p = rvc_permutation(10, 0);
        for (i, &j) in p.iter().enumerate() {
            assert_eq!(s[i * 3..i * 3 + 3], rows[j * 3..j * 3 + 3]);
        }
    }
}
