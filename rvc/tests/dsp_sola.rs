//! SOLA between converted blocks: the offsets it finds are the ones injected, joins are
//! continuous, samples outside the crossfade pass through bit for bit, and every output bit
//! equals a plain f64 evaluation of RVC's formulas.

use knnblend_rvc::sola::Sola;

/// Deterministic uniform values in [0, 1) (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() * n as f64) as usize
    }
}

/// The model's output for block `n`: the signal from `base + n·block − delay`, for
/// `crossfade + search + block` samples.
fn converted(
    signal: &[f32],
    base: usize,
    n: usize,
    block: usize,
    len: usize,
    delay: usize,
) -> Vec<f32> {
    let start = base + n * block - delay;
    signal[start..start + len].to_vec()
}

/// 48 kHz framing of RVC's GUI: 40 ms crossfade, 10 ms search, 100 ms blocks.
const CF: usize = 1920;
const SEARCH: usize = 480;
const BLOCK: usize = 4800;

#[test]
fn the_offset_found_is_the_injected_one_and_the_output_is_the_signal() {
    // Noise has one correlation peak. Block n is delayed by a_n (a_0 = 0): the offset that
    // lines it up with the previous tail is a_n, and the output is then the signal itself.
    let blocks = 40;
    let mut rng = Rng(7);
    let signal: Vec<f32> = (0..(blocks + 2) * BLOCK + CF + 2 * SEARCH)
        .map(|_| (rng.next() - 0.5) as f32)
        .collect();
    let base = SEARCH;
    let mut sola = Sola::new(CF, SEARCH, BLOCK);
    let mut out = vec![0f32; BLOCK];
    let mut stream = Vec::new();
    for n in 0..blocks {
        let delay = if n == 0 { 0 } else { rng.below(SEARCH + 1) };
        let x = converted(&signal, base, n, BLOCK, sola.input_len(), delay);
        let offset = sola.process(&x, &mut out);
        assert_eq!(offset, delay, "block {n}");
        stream.extend_from_slice(&out);
    }
    // After the first block's fade-in the output is the signal, bit for bit.
    for (t, &y) in stream.iter().enumerate().skip(CF) {
        assert_eq!(y, signal[base + t], "sample {t}");
    }
}

#[test]
fn joins_are_continuous_for_sines_split_at_random_offsets() {
    let sr = 48_000.0f64;
    for (freq, unique) in [(80.0f64, true), (220.0, false), (1234.5, false)] {
        // 80 Hz: the period (600 samples) exceeds the search range, so the peak is unique and
        // the offset is the injected one; at higher pitches any offset a whole period away
        // lines up as well, and the test asks only for continuity.
        let blocks = 30;
        let amp = 0.8f64;
        let signal: Vec<f32> = (0..(blocks + 2) * BLOCK + CF + 2 * SEARCH)
            .map(|i| (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / sr).sin()) as f32)
            .collect();
        let mut rng = Rng(freq as u64);
        let mut sola = Sola::new(CF, SEARCH, BLOCK);
        let mut out = vec![0f32; BLOCK];
        let mut stream = Vec::new();
        for n in 0..blocks {
            let delay = if n == 0 { 0 } else { rng.below(SEARCH + 1) };
            let x = converted(&signal, SEARCH, n, BLOCK, sola.input_len(), delay);
            let offset = sola.process(&x, &mut out);
            if unique && n > 0 {
                assert_eq!(offset, delay, "{freq} Hz, block {n}");
            }
            stream.extend_from_slice(&out);
        }
        // The largest step of the sine itself, with a little room for float rounding and the
        // sub-sample misalignment a period-away offset leaves.
        let bound = amp * 2.0 * std::f64::consts::PI * freq / sr * 1.2 + 1e-4;
        let worst = stream
            .windows(2)
            .skip(BLOCK)
            .map(|w| (w[1] - w[0]).abs() as f64)
            .fold(0.0, f64::max);
        assert!(worst <= bound, "{freq} Hz: step {worst} > {bound}");
        // And no level dip at the joins.
        for n in 2..blocks {
            let join = n * BLOCK;
            let peak = stream[join - 1200..join + 1200]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            assert!(peak > 0.75, "{freq} Hz, join {n}: peak {peak}");
        }
    }
}

#[test]
fn samples_after_the_crossfade_pass_through_bit_for_bit() {
    let mut rng = Rng(99);
    for (cf, search, block) in [(CF, SEARCH, BLOCK), (64, 32, 100), (100, 10, 60), (5, 0, 5)] {
        let mut sola = Sola::new(cf, search, block);
        let mut out = vec![0f32; block];
        for _ in 0..8 {
            let x: Vec<f32> = (0..sola.input_len())
                .map(|_| (rng.next() * 2.0 - 1.0) as f32)
                .collect();
            let offset = sola.process(&x, &mut out);
            assert!(offset <= search);
            if block > cf {
                assert_eq!(&out[cf..], &x[offset + cf..offset + block]);
            }
            // The tail kept is the block's continuation (past the crossfade).
            let tail_from = block.max(cf);
            assert_eq!(
                &sola.tail()[tail_from - block..],
                &x[offset + tail_from..offset + block + cf]
            );
        }
    }
}

/// RVC's SOLA step written plainly: one loop per offset, f64 throughout.
struct Reference {
    cf: usize,
    search: usize,
    block: usize,
    tail: Vec<f32>,
}

impl Reference {
    fn process(&mut self, x: &[f32]) -> (usize, Vec<f32>) {
        let n = self.cf;
        let fade_in = |i: usize| {
            let t = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.0
            };
            (0.5 * std::f64::consts::PI * t).sin().powi(2)
        };
        let mut best = (0usize, f64::NEG_INFINITY);
        for k in 0..=self.search {
            let mut num = 0.0f64;
            let mut energy = 0.0f64;
            for i in 0..n {
                num += x[k + i] as f64 * self.tail[i] as f64;
                energy += x[k + i] as f64 * x[k + i] as f64;
            }
            let score = num / (energy + 1e-8).sqrt();
            if score > best.1 {
                best = (k, score);
            }
        }
        let offset = best.0;
        let mut y: Vec<f32> = x[offset..offset + self.block + n].to_vec();
        for i in 0..n {
            let w = fade_in(i);
            y[i] = (x[offset + i] as f64 * w + self.tail[i] as f64 * (1.0 - w)) as f32;
        }
        self.tail = y[self.block..self.block + n].to_vec();
        (offset, y[..self.block].to_vec())
    }
}

#[test]
fn bit_exact_against_a_plain_f64_reference() {
    let mut rng = Rng(2024);
    for (cf, search, block) in [
        (CF, SEARCH, BLOCK),
        (1600, 400, 10_000),
        (37, 11, 50),
        (40, 8, 16),
        (1, 3, 7),
        (3, 0, 3),
    ] {
        let mut sola = Sola::new(cf, search, block);
        let mut reference = Reference {
            cf,
            search,
            block,
            tail: vec![0.0; cf],
        };
        let mut out = vec![0f32; block];
        let mut offsets = Vec::new();
        for b in 0..12 {
            // Related blocks (a shared tone with noise) so offsets vary and are not all 0.
            let phase = rng.next() * 100.0;
            let x: Vec<f32> = (0..sola.input_len())
                .map(|i| {
                    let t = i as f64 + phase;
                    ((t * 0.031).sin() * 0.7 + (rng.next() - 0.5) * 0.3) as f32
                })
                .collect();
            let offset = sola.process(&x, &mut out);
            let (want_offset, want) = reference.process(&x);
            assert_eq!(offset, want_offset, "{cf}/{search}/{block} block {b}");
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&want), "{cf}/{search}/{block} block {b}");
            assert_eq!(bits(sola.tail()), bits(&reference.tail));
            offsets.push(offset);
        }
        if search > 4 {
            assert!(offsets.iter().any(|&o| o > 0), "{offsets:?}");
        }
    }
}
