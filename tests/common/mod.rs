//! Shared test data: deterministic, clustered vectors resembling speech feature frames.
#![allow(dead_code)]

/// SplitMix64: tiny, deterministic, good enough for test data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Clustered data: `clusters` centres (like phonemes), each row a centre plus anisotropic noise,
/// values on the scale of HuBERT/ContentVec features (|x| of order 1).
pub struct Clustered {
    pub dim: usize,
    centres: Vec<f32>,
    spread: Vec<f32>,
}

impl Clustered {
    pub fn new(dim: usize, clusters: usize, seed: u64) -> Clustered {
        let mut rng = Rng(seed);
        let centres = (0..clusters * dim).map(|_| rng.normal()).collect();
        let spread = (0..dim).map(|_| 0.15 + 0.35 * rng.uniform()).collect();
        Clustered {
            dim,
            centres,
            spread,
        }
    }

    pub fn rows(&self, n: usize, seed: u64) -> Vec<f32> {
        let mut rng = Rng(seed);
        let k = self.centres.len() / self.dim;
        let mut out = Vec::with_capacity(n * self.dim);
        for _ in 0..n {
            let c = rng.below(k);
            // Drift between two centres, like a transition between phonemes.
            let c2 = rng.below(k);
            let t = if rng.uniform() < 0.3 {
                rng.uniform() * 0.5
            } else {
                0.0
            };
            for j in 0..self.dim {
                let a = self.centres[c * self.dim + j];
                let b = self.centres[c2 * self.dim + j];
                out.push(a + t * (b - a) + self.spread[j] * rng.normal());
            }
        }
        out
    }
}

/// Brute-force k nearest (f64), as (squared distance, id) ascending.
pub fn brute_force(data: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<(f64, usize)> {
    let mut all: Vec<(f64, usize)> = data
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| {
            (
                v.iter()
                    .zip(query)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum(),
                i,
            )
        })
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    all.truncate(k);
    all
}
