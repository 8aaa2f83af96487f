//! A small formant synthesiser: two clearly different default voices for tests and the demo,
//! made on the spot (no recordings needed).
//!
//! Source: a Rosenberg glottal pulse train (differentiated, for lip radiation) with a slow
//! intonation contour, vibrato and a little aspiration noise. Filter: a cascade of eight
//! Klatt-style two-pole formant resonators, moving between vowels (Peterson & Barney's adult
//! male averages, scaled per voice) with smooth transitions. A deterministic pseudo-random
//! sequence of vowels, durations and short pauses makes "a few seconds of varied vowels".

/// Vowel formants (F1, F2, F3 in Hz) of an adult male voice.
pub const VOWELS: [(&str, [f32; 3]); 7] = [
    ("a", [730.0, 1090.0, 2440.0]),
    ("i", [270.0, 2290.0, 3010.0]),
    ("u", [300.0, 870.0, 2240.0]),
    ("e", [530.0, 1840.0, 2480.0]),
    ("o", [570.0, 840.0, 2410.0]),
    ("ae", [660.0, 1720.0, 2410.0]),
    ("uh", [640.0, 1190.0, 2390.0]),
];

/// F4..F8 (Hz) of the unscaled voice: the higher resonances of the vocal tract keep the
/// spectrum above 4 kHz at a natural level (a cascade of five would roll off far too fast).
const UPPER_FORMANTS: [f32; 5] = [3300.0, 3750.0, 4900.0, 5900.0, 7000.0];
/// Formant bandwidths (Hz) F1..F8 of the unscaled voice.
const BANDWIDTHS: [f32; 8] = [80.0, 90.0, 120.0, 150.0, 200.0, 300.0, 400.0, 500.0];
/// Number of formant resonators in the cascade.
const FORMANTS: usize = 8;

/// What makes a synthetic voice.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceParams {
    /// Mean fundamental frequency, Hz.
    pub f0_hz: f32,
    /// Factor applied to every formant frequency and bandwidth (vocal tract length).
    pub formant_scale: f32,
    /// Glottal open quotient in `0.3..=0.9` (larger is softer, darker).
    pub open_quotient: f32,
    /// Aspiration noise relative to the pulse, `0..=1`.
    pub breath: f32,
    /// Vibrato depth, fraction of f0.
    pub vibrato_depth: f32,
    /// Seed of the vowel sequence and noise.
    pub seed: u64,
}

impl VoiceParams {
    /// A low voice: f0 110 Hz, unscaled formants, pressed phonation.
    pub fn low() -> VoiceParams {
        VoiceParams {
            f0_hz: 110.0,
            formant_scale: 1.0,
            open_quotient: 0.5,
            breath: 0.02,
            vibrato_depth: 0.01,
            seed: 1,
        }
    }

    /// A high voice: f0 220 Hz, formants 22 % higher, breathier.
    pub fn high() -> VoiceParams {
        VoiceParams {
            f0_hz: 220.0,
            formant_scale: 1.22,
            open_quotient: 0.7,
            breath: 0.08,
            vibrato_depth: 0.015,
            seed: 2,
        }
    }

    /// The same voice with another seed (other vowels, other timing).
    pub fn with_seed(mut self, seed: u64) -> VoiceParams {
        self.seed = seed;
        self
    }
}

/// A deterministic xorshift generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x2545_F491_4F6C_DD1D)
            | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One segment of the score: a vowel (or a pause) held for a while.
#[derive(Clone, Copy, Debug)]
struct Segment {
    vowel: usize,
    seconds: f64,
    pause: bool,
}

fn score(rng: &mut Rng, seconds: f64) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut t = 0.0;
    let mut last = usize::MAX;
    while t < seconds + 0.5 {
        let pause = !out.is_empty() && rng.unit() < 0.12;
        let mut vowel = (rng.next() % VOWELS.len() as u64) as usize;
        if vowel == last {
            vowel = (vowel + 1) % VOWELS.len();
        }
        let len = if pause {
            0.08 + 0.1 * rng.unit()
        } else {
            0.18 + 0.25 * rng.unit()
        };
        out.push(Segment {
            vowel,
            seconds: len,
            pause,
        });
        if !pause {
            last = vowel;
        }
        t += len;
    }
    out
}

/// A Klatt two-pole resonator with unity gain at DC.
#[derive(Clone, Copy, Default)]
struct Resonator {
    y1: f64,
    y2: f64,
}

impl Resonator {
    fn run(&mut self, x: f64, f: f64, bw: f64, sr: f64) -> f64 {
        let t = 1.0 / sr;
        let c = -(-2.0 * std::f64::consts::PI * bw * t).exp();
        let b = 2.0
            * (-std::f64::consts::PI * bw * t).exp()
            * (2.0 * std::f64::consts::PI * f * t).cos();
        let a = 1.0 - b - c;
        let y = a * x + b * self.y1 + c * self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// Rosenberg glottal flow at phase `p` in [0, 1) for open quotient `oq`.
fn glottal_flow(p: f64, oq: f64) -> f64 {
    let rise = oq * 0.8;
    let fall = oq * 0.2;
    if p < rise {
        0.5 * (1.0 - (std::f64::consts::PI * p / rise).cos())
    } else if p < rise + fall {
        (std::f64::consts::FRAC_PI_2 * (p - rise) / fall).cos()
    } else {
        0.0
    }
}

/// `seconds` of `voice` at `sample_rate` Hz, peak-normalised to 0.5.
pub fn synth_voice(voice: &VoiceParams, sample_rate: f32, seconds: f32) -> Vec<f32> {
    let sr = sample_rate as f64;
    let n = (seconds as f64 * sr).round() as usize;
    let mut rng = Rng::new(voice.seed);
    let segments = score(&mut rng, seconds as f64);
    let oq = (voice.open_quotient as f64).clamp(0.3, 0.9);
    let scale = voice.formant_scale as f64;
    let nyquist_guard = 0.45 * sr;
    let transition = 0.05;

    let mut out = vec![0f32; n];
    let mut resonators = [Resonator::default(); FORMANTS];
    let mut phase = 0.0f64;
    let mut prev_flow = 0.0f64;
    let mut seg = 0usize;
    let mut seg_start = 0.0f64;
    let mut amp = 0.0f64;
    let intonation_hz = 0.7 + 0.3 * rng.unit();
    let vibrato_hz = 5.0 + rng.unit();
    let formants_of = |s: &Segment| -> [f64; FORMANTS] {
        let v = VOWELS[s.vowel].1;
        let u = UPPER_FORMANTS;
        [v[0], v[1], v[2], u[0], u[1], u[2], u[3], u[4]].map(|f| f as f64 * scale)
    };
    let mut current = formants_of(&segments[0]);
    for (i, o) in out.iter_mut().enumerate() {
        let t = i as f64 / sr;
        while seg + 1 < segments.len() && t >= seg_start + segments[seg].seconds {
            seg_start += segments[seg].seconds;
            seg += 1;
        }
        let s = segments[seg];
        // Formants glide toward the segment's vowel (pauses keep the last vowel).
        if !s.pause {
            let target = formants_of(&s);
            let k = 1.0 - (-1.0 / (transition * sr / 3.0)).exp();
            for (c, t) in current.iter_mut().zip(target) {
                *c += k * (t - *c);
            }
        }
        let target_amp = if s.pause { 0.0 } else { 1.0 };
        amp += (target_amp - amp) * (1.0 - (-1.0 / (0.015 * sr)).exp());

        let f0 = voice.f0_hz as f64
            * (1.0 + 0.08 * (2.0 * std::f64::consts::PI * intonation_hz * t).sin())
            * (1.0
                + voice.vibrato_depth as f64 * (2.0 * std::f64::consts::PI * vibrato_hz * t).sin());
        phase += f0 / sr;
        phase -= phase.floor();
        let flow = glottal_flow(phase, oq);
        let pulse = (flow - prev_flow) * sr / (voice.f0_hz as f64 * 4.0);
        prev_flow = flow;
        let noise = (rng.unit() * 2.0 - 1.0) * voice.breath as f64 * (0.3 + flow);
        let mut x = (pulse + noise) * amp;
        for (r, (f, bw)) in resonators.iter_mut().zip(current.iter().zip(BANDWIDTHS)) {
            x = r.run(x, f.min(nyquist_guard), bw as f64 * scale, sr);
        }
        *o = x as f32;
    }
    let peak = out.iter().fold(0f32, |m, v| m.max(v.abs()));
    if peak > 0.0 {
        out.iter_mut().for_each(|v| *v *= 0.5 / peak);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voices_are_deterministic_finite_and_differ() {
        let a = synth_voice(&VoiceParams::low(), 16_000.0, 0.5);
        let b = synth_voice(&VoiceParams::low(), 16_000.0, 0.5);
        assert_eq!(a, b);
        assert!(a.iter().all(|v| v.is_finite()));
        let peak = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.5).abs() < 1e-6);
        let c = synth_voice(&VoiceParams::high(), 16_000.0, 0.5);
        assert_ne!(a, c);
    }
}
