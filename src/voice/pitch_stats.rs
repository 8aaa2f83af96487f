//! Pitch statistics of a voice: what `knnblend build --audio` records about the recordings'
//! fundamental frequency, so that pitch can later be matched to the voice (the input's running
//! median moved to the voice's median). Tracked with the crate's [`Yin`] at the recordings' own
//! rates (RVC's 50–1100 Hz range, 10 ms hop); stored in the index metadata as `"pitch"`.
//! Indexes built before carry none and stay valid.
//!
//! Build time only: this allocates freely and never runs on an audio thread.

use serde::{Deserialize, Serialize};

use super::pitch::{Pitch, PitchSpec, Yin};
use crate::format::Metadata;

/// Fewer voiced frames than this give no median (about a fifth of a second of voicing).
pub const MIN_VOICED_FRAMES: u64 = 20;

/// f0 statistics over a voice's recordings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PitchStats {
    /// Median f0 of the voiced frames, Hz (the median of log f0; 0 with fewer than
    /// [`MIN_VOICED_FRAMES`] voiced frames).
    pub median_hz: f64,
    /// Spread of log f0: half the distance between its 16th and 84th percentiles, semitones
    /// (a standard deviation for a normal distribution, robust to octave errors).
    pub spread_semitones: f64,
    /// Voiced frames over all frames tracked (silence counts as unvoiced).
    pub voiced_share: f64,
    /// Voiced frames.
    pub voiced_frames: u64,
    /// Frames tracked (10 ms each).
    pub frames: u64,
}

impl PitchStats {
    /// The statistics recorded in an index's metadata, if any.
    pub fn from_metadata(meta: &Metadata) -> Option<PitchStats> {
        meta.extra
            .get("pitch")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Records the statistics in `meta` (`"pitch"`).
    pub fn store(&self, meta: &mut Metadata) {
        let v = serde_json::to_value(self).expect("plain numbers serialise");
        meta.extra.insert("pitch".into(), v);
    }

    /// Whether there is a median to match (enough voiced frames).
    pub fn has_median(&self) -> bool {
        self.voiced_frames >= MIN_VOICED_FRAMES && self.median_hz > 0.0
    }

    /// One line for `inspect` and the demo's summary.
    pub fn describe(&self) -> String {
        if self.has_median() {
            format!(
                "median f0 {:.1} Hz, spread ±{:.1} semitones, voiced {:.0} % of {} frames",
                self.median_hz,
                self.spread_semitones,
                100.0 * self.voiced_share,
                self.frames
            )
        } else {
            format!(
                "too little voicing for a median ({} voiced of {} frames)",
                self.voiced_frames, self.frames
            )
        }
    }
}

/// Collects f0 over recordings at any rates.
pub struct PitchCollector {
    spec: PitchSpec,
    trackers: Vec<(u32, Yin)>,
    log2: Vec<f64>,
    frames: u64,
    buf: Vec<Pitch>,
}

impl PitchCollector {
    /// A collector tracking with `spec`.
    pub fn new(spec: PitchSpec) -> PitchCollector {
        PitchCollector {
            spec,
            trackers: Vec::new(),
            log2: Vec::new(),
            frames: 0,
            buf: Vec::new(),
        }
    }

    /// Tracks one mono recording at `rate` Hz.
    pub fn add(&mut self, signal: &[f32], rate: u32) -> Result<(), String> {
        let at = match self.trackers.iter().position(|(r, _)| *r == rate) {
            Some(i) => i,
            None => {
                self.trackers
                    .push((rate, Yin::new(&self.spec, rate as f32)?));
                self.trackers.len() - 1
            }
        };
        let yin = &mut self.trackers[at].1;
        self.buf.resize(yin.frames(signal.len()), Pitch::SILENT);
        let n = yin.track(signal, &mut self.buf);
        self.frames += n as u64;
        self.log2.extend(
            self.buf[..n]
                .iter()
                .filter(|p| p.is_voiced())
                .map(|p| (p.f0_hz as f64).log2()),
        );
        Ok(())
    }

    /// The statistics of everything added.
    pub fn finish(mut self) -> PitchStats {
        let voiced = self.log2.len() as u64;
        self.log2.sort_by(f64::total_cmp);
        let at = |p: f64| -> f64 {
            let i = ((p * (self.log2.len() - 1) as f64).round() as usize).min(self.log2.len() - 1);
            self.log2[i]
        };
        let (median_hz, spread) = if voiced >= MIN_VOICED_FRAMES {
            (at(0.5).exp2(), 6.0 * (at(0.84) - at(0.16)))
        } else {
            (0.0, 0.0)
        };
        PitchStats {
            median_hz,
            spread_semitones: spread,
            voiced_share: if self.frames > 0 {
                voiced as f64 / self.frames as f64
            } else {
                0.0
            },
            voiced_frames: voiced,
            frames: self.frames,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(f0: impl Fn(f64) -> f64, sr: u32, seconds: f64) -> Vec<f32> {
        let mut phase = 0.0f64;
        (0..(seconds * sr as f64) as usize)
            .map(|i| {
                phase += f0(i as f64 / sr as f64) / sr as f64;
                // A few harmonics, like a voiced sound.
                let p = 2.0 * std::f64::consts::PI * phase;
                (0.5 * p.sin() + 0.25 * (2.0 * p).sin() + 0.12 * (3.0 * p).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn median_spread_and_voicing_of_known_tones() {
        let mut c = PitchCollector::new(PitchSpec::default());
        // 2 s gliding 150 → 300 Hz (log-linear: the log-median is at 150·√2 ≈ 212 Hz and the
        // 16–84 % span is 0.68 octave, a spread of 4.1 semitones), then 1 s of silence, at two
        // rates.
        let glide = |t: f64| 150.0 * (t / 2.0).exp2();
        c.add(&tone(glide, 16_000, 2.0), 16_000).unwrap();
        c.add(&vec![0.0; 44_100], 44_100).unwrap();
        let s = c.finish();
        assert!(s.has_median());
        let st = 12.0 * (s.median_hz / 212.13).log2();
        assert!(st.abs() < 0.3, "median {} Hz", s.median_hz);
        assert!(
            (s.spread_semitones - 4.08).abs() < 0.4,
            "spread {}",
            s.spread_semitones
        );
        assert!(
            (s.voiced_share - 2.0 / 3.0).abs() < 0.05,
            "voiced {}",
            s.voiced_share
        );
        let mut meta = Metadata::default();
        s.store(&mut meta);
        assert_eq!(PitchStats::from_metadata(&meta), Some(s));
        assert!(s.describe().contains("Hz"));

        // Silence alone: no median, said so.
        let mut c = PitchCollector::new(PitchSpec::default());
        c.add(&vec![0.0; 16_000], 16_000).unwrap();
        let s = c.finish();
        assert!(!s.has_median() && s.voiced_share == 0.0);
        assert!(s.describe().contains("too little voicing"));
        assert_eq!(PitchStats::from_metadata(&Metadata::default()), None);
    }
}
