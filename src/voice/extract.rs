//! Offline feature extraction: the same frames, windows and features as [`VoiceEngine`]
//! computes in real time, over a whole mono signal, with silent frames dropped.
//!
//! [`VoiceEngine`]: super::VoiceEngine

use realfft::RealFftPlanner;

use super::features::{BandLayout, FeatureSpec, Framing};

/// Which frames count as silent when building an index.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SilenceRule {
    /// Frames whose level (RMS of the windowed frame, dBFS) is below this are dropped.
    pub floor_db: f32,
    /// Frames more than this many dB below the signal's loudest frame are dropped too.
    pub below_peak_db: f32,
}

impl Default for SilenceRule {
    /// Drop frames under −55 dBFS or 45 dB below the loudest frame.
    fn default() -> Self {
        SilenceRule {
            floor_db: -55.0,
            below_peak_db: 45.0,
        }
    }
}

/// Features of a signal: kept rows and what was dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extracted {
    /// Kept feature rows, `frames × dim`, row-major.
    pub rows: Vec<f32>,
    /// Number of kept frames.
    pub frames: usize,
    /// Number of frames dropped as silent.
    pub dropped: usize,
}

/// A reusable extractor for one spec and sample rate.
pub struct Extractor {
    framing: Framing,
    layout: BandLayout,
    window: Vec<f32>,
    fft: std::sync::Arc<dyn realfft::RealToComplex<f32>>,
}

impl Extractor {
    /// An extractor of `spec` features at `sample_rate` Hz.
    pub fn new(spec: &FeatureSpec, sample_rate: f32) -> Extractor {
        let framing = Framing::new(spec, sample_rate);
        Extractor {
            layout: BandLayout::new(spec, sample_rate, framing.n_fft),
            window: framing.window_fn(),
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(framing.n_fft),
            framing,
        }
    }

    /// The frame geometry.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Every frame's features and level (dBFS): frames start at multiples of the hop and must
    /// lie wholly inside `signal`. Non-finite samples count as 0.
    pub fn all_frames(&self, signal: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let (hop, win, n_fft) = (self.framing.hop, self.framing.window, self.framing.n_fft);
        let dim = self.layout.len();
        let count = if signal.len() >= win {
            (signal.len() - win) / hop + 1
        } else {
            0
        };
        let mut rows = vec![0f32; count * dim];
        let mut levels = Vec::with_capacity(count);
        let mut time = vec![0f32; n_fft];
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; self.framing.bins()];
        for (f, row) in rows.chunks_exact_mut(dim).enumerate() {
            let frame = &signal[f * hop..f * hop + win];
            let mut sum_sq = 0.0f64;
            for ((t, &x), &w) in time.iter_mut().zip(frame).zip(&self.window) {
                let x = if x.is_finite() { x } else { 0.0 };
                *t = x * w;
                sum_sq += (*t as f64) * (*t as f64);
            }
            time[win..].fill(0.0);
            let _ = self
                .fft
                .process_with_scratch(&mut time, &mut spectrum, &mut scratch);
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            self.layout.features(&power, row);
            levels.push(10.0 * ((sum_sq / (win as f64 / 2.0)) + 1e-30).log10() as f32);
        }
        (rows, levels)
    }

    /// Features of the non-silent frames of `signal`.
    pub fn extract(&self, signal: &[f32], rule: &SilenceRule) -> Extracted {
        let dim = self.layout.len();
        let (rows, levels) = self.all_frames(signal);
        let peak = levels.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let threshold = rule.floor_db.max(peak - rule.below_peak_db);
        let mut out = Extracted::default();
        for (row, &level) in rows.chunks_exact(dim).zip(&levels) {
            if level >= threshold {
                out.rows.extend_from_slice(row);
                out.frames += 1;
            } else {
                out.dropped += 1;
            }
        }
        out
    }
}

/// Mixes interleaved multi-channel samples down to mono (the mean of the channels: the engine's
/// mid signal).
pub fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    let channels = channels.max(1);
    interleaved
        .chunks_exact(channels)
        .map(|f| f.iter().sum::<f32>() / channels as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_dropped_and_voice_kept() {
        let spec = FeatureSpec::default();
        let sr = 16_000.0;
        let ex = Extractor::new(&spec, sr);
        let mut sig =
            super::super::synth::synth_voice(&super::super::synth::VoiceParams::low(), sr, 0.5);
        sig.extend(std::iter::repeat_n(0.0, 8000));
        let got = ex.extract(&sig, &SilenceRule::default());
        assert!(got.frames > 30, "{got:?}");
        assert!(got.dropped >= 40, "{} dropped", got.dropped);
        assert_eq!(got.rows.len(), got.frames * spec.bands);
        assert!(got.rows.iter().all(|v| v.is_finite()));
    }
}
