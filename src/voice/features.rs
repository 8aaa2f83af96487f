//! The voice features: a loudness-independent log-mel spectral envelope, defined in physical
//! units (Hz, ms) so that an index built from recordings at one sample rate serves a session at
//! any other.
//!
//! Per analysis frame (sine window of `frame_ms`, hop `hop_ms`) the power spectrum is summed into
//! `bands` triangular bands whose centres are evenly spaced on the mel scale between `f_min_hz`
//! and `f_max_hz`. Each triangle reaches from its neighbour's centre to the next neighbour's
//! centre but is never narrower than `min_half_width_hz` on either side, so the low bands average
//! over several harmonics of a voice and describe its envelope rather than its pitch. Each band
//! is normalised to unit weight (a band energy is a mean, not a sum, so it does not depend on the
//! FFT size). The feature is `ln(energy + floor)` per band, minus its mean over the bands, where
//! the floor is `floor_db` below the frame's mean band energy: scaling the signal by any factor
//! leaves the feature unchanged. That per-frame vector is the frame's *envelope*.
//!
//! ## The stored and queried vector
//! Envelopes of two speakers differ by a long-term shape (vocal tract length, phonation) on top
//! of what is being said. Matching absolute envelopes across speakers therefore picks the
//! target frames that look most like the *input speaker*, and the conversion only goes part of
//! the way. As in speaker-normalised speech features, matching uses the envelope relative to the
//! speaker's long-term mean (the index's mean for stored frames, a running mean of the input
//! for queries). The absolute envelope rides along in the same vector, scaled by
//! [`ABSOLUTE_WEIGHT`] (2⁻¹⁰, an exact scaling) so that it has no say in the search, and RVC's
//! blend carries it through untouched:
//!
//! ```text
//! vector = [ envelope − speaker_mean (bands values) | 2⁻¹⁰ · envelope (bands values) ]
//! ```
//!
//! With the input's own absolute envelope in the query, `blend(query, ratio)`'s second half is
//! `2⁻¹⁰ · (r · Σ wᵢ targetᵢ + (1 − r) · input)`: the target envelope, and exactly the input
//! envelope at ratio 0 or whenever the query is copied (nothing loaded, crossfades included).

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::format::{IndexHeader, Metadata};
use crate::index::AnyIndex;
use crate::live::LiveConfig;

/// The feature kind stored in index metadata for [`FeatureSpec`] features.
pub const FEATURE_KIND: &str = "knnblend-logmel-v1";

/// Weight of the absolute envelope in the second half of a vector (2⁻¹⁰: scaling by it is exact).
pub const ABSOLUTE_WEIGHT: f32 = 1.0 / 1024.0;

/// The definition of the voice features, in physical units.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Number of bands (the feature dimension).
    pub bands: usize,
    /// Lowest band edge, Hz.
    pub f_min_hz: f32,
    /// Highest band edge, Hz. Sources must be sampled at more than twice this.
    pub f_max_hz: f32,
    /// Smallest half-width of a band triangle, Hz.
    pub min_half_width_hz: f32,
    /// Analysis frame length, ms (rounded to a whole number of hops).
    pub frame_ms: f32,
    /// Hop between frames, ms: the feature frame period.
    pub hop_ms: f32,
    /// Band energy floor relative to the frame's mean band energy, dB (negative).
    pub floor_db: f32,
}

impl Default for FeatureSpec {
    /// 40 bands, 50–7600 Hz (so 16 kHz recordings qualify), 200 Hz minimum half-width (a
    /// band always spans a harmonic of voices up to ~400 Hz f0), 40 ms frames, 10 ms hop (RVC's
    /// frame rate), floor 70 dB below the mean.
    fn default() -> Self {
        FeatureSpec {
            bands: 40,
            f_min_hz: 50.0,
            f_max_hz: 7600.0,
            min_half_width_hz: 200.0,
            frame_ms: 40.0,
            hop_ms: 10.0,
            floor_db: -70.0,
        }
    }
}

/// Converts Hz to mel (HTK formula).
pub fn hz_to_mel(f: f64) -> f64 {
    2595.0 * (1.0 + f / 700.0).log10()
}

/// Converts mel (HTK formula) to Hz.
pub fn mel_to_hz(m: f64) -> f64 {
    700.0 * (10f64.powf(m / 2595.0) - 1.0)
}

impl FeatureSpec {
    /// The feature kind written into index metadata.
    pub fn metadata_kind(&self) -> &'static str {
        FEATURE_KIND
    }

    /// The dimension of stored and queried vectors: `2 × bands` (relative envelope, then the
    /// down-weighted absolute envelope).
    pub fn dim(&self) -> usize {
        2 * self.bands
    }

    /// The envelope dimension, `bands`.
    pub fn envelope_dim(&self) -> usize {
        self.bands
    }

    /// Writes the vector `[envelope − mean | ABSOLUTE_WEIGHT · envelope]` into `out` (`dim()`
    /// values).
    pub fn compose(envelope: &[f32], mean: &[f32], out: &mut [f32]) {
        let b = envelope.len();
        debug_assert_eq!(mean.len(), b);
        debug_assert_eq!(out.len(), 2 * b);
        let (rel, abs) = out.split_at_mut(b);
        for ((r, a), (&e, &m)) in rel
            .iter_mut()
            .zip(abs.iter_mut())
            .zip(envelope.iter().zip(mean))
        {
            *r = e - m;
            *a = e * ABSOLUTE_WEIGHT;
        }
    }

    /// The absolute envelope carried in the second half of `vector`, into `out` (`bands` values).
    pub fn absolute(vector: &[f32], out: &mut [f32]) {
        let b = out.len();
        debug_assert_eq!(vector.len(), 2 * b);
        for (o, &v) in out.iter_mut().zip(&vector[b..]) {
            *o = v / ABSOLUTE_WEIGHT;
        }
    }

    /// Index rows from a speaker's envelopes (`n × bands`): every row composed against the
    /// envelopes' mean. Returns the rows (`n × dim()`) and the mean.
    pub fn speaker_rows(&self, envelopes: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let b = self.bands;
        let n = envelopes.len() / b;
        let mut mean = vec![0f64; b];
        for e in envelopes.chunks_exact(b) {
            mean.iter_mut().zip(e).for_each(|(m, &v)| *m += v as f64);
        }
        let mean: Vec<f32> = mean.iter().map(|m| (m / n.max(1) as f64) as f32).collect();
        let mut rows = vec![0f32; n * 2 * b];
        for (e, r) in envelopes.chunks_exact(b).zip(rows.chunks_exact_mut(2 * b)) {
            FeatureSpec::compose(e, &mean, r);
        }
        (rows, mean)
    }

    /// Checks that the parameters make sense; the message says which does not.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=512).contains(&self.bands) {
            return Err(format!("bands must be in 2..=512, not {}", self.bands));
        }
        let finite = [
            self.f_min_hz,
            self.f_max_hz,
            self.min_half_width_hz,
            self.frame_ms,
            self.hop_ms,
            self.floor_db,
        ];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err("every feature parameter must be a finite number".into());
        }
        if self.f_min_hz < 0.0 || self.f_max_hz <= self.f_min_hz {
            return Err(format!(
                "band edges must satisfy 0 <= f_min < f_max (got {} Hz and {} Hz)",
                self.f_min_hz, self.f_max_hz
            ));
        }
        if self.min_half_width_hz < 0.0 {
            return Err("min_half_width_hz must not be negative".into());
        }
        if !(0.5..=100.0).contains(&self.hop_ms) {
            return Err(format!(
                "hop_ms must be in 0.5..=100 ms, not {}",
                self.hop_ms
            ));
        }
        let overlap = (self.frame_ms / self.hop_ms).round();
        if !(2.0..=16.0).contains(&overlap) {
            return Err(format!(
                "frame_ms / hop_ms must round to 2..=16 (got {} ms / {} ms)",
                self.frame_ms, self.hop_ms
            ));
        }
        if self.floor_db >= 0.0 {
            return Err("floor_db must be negative".into());
        }
        Ok(())
    }

    /// The parameters as JSON, as stored in `Metadata::feature_params`.
    pub fn params_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a FeatureSpec always serialises")
    }

    /// `(kind, params)` for index metadata.
    pub fn to_metadata(&self) -> (String, serde_json::Value) {
        (FEATURE_KIND.to_string(), self.params_json())
    }

    /// Metadata for an index of these features.
    pub fn metadata(&self, sources: Vec<String>, frames: u64, duration_seconds: f64) -> Metadata {
        Metadata {
            features: FEATURE_KIND.to_string(),
            feature_params: self.params_json(),
            sources,
            frames,
            duration_seconds,
            extra: Default::default(),
        }
    }

    /// The spec an index's metadata describes, or a message saying what it contains instead.
    pub fn from_metadata(meta: &Metadata) -> Result<FeatureSpec, String> {
        if meta.features != FEATURE_KIND {
            let what = if meta.features.is_empty() {
                "features of unknown kind".to_string()
            } else {
                format!("'{}' features", meta.features)
            };
            return Err(what);
        }
        serde_json::from_value(meta.feature_params.clone())
            .map_err(|e| format!("{FEATURE_KIND} features with unreadable parameters ({e})"))
    }

    /// A short human description, e.g. `knnblend-logmel-v1 (40 bands, 50–7600 Hz, 40 ms frames, 10 ms hop)`.
    pub fn describe(&self) -> String {
        format!(
            "{FEATURE_KIND} ({} bands, {}–{} Hz, {} ms frames, {} ms hop)",
            self.bands, self.f_min_hz, self.f_max_hz, self.frame_ms, self.hop_ms
        )
    }

    /// Can `index` serve an engine extracting these features? The message says what the index
    /// holds and what is expected.
    pub fn check(&self, index: &AnyIndex) -> Result<(), String> {
        self.check_metadata(index.metadata(), index.dim())
    }

    /// A live runtime configuration for these features: `slots` slots, a frame period of one
    /// hop, and [`check_metadata`](Self::check_metadata) as the header validator, so that an
    /// index of other features is refused with a message saying what it holds as soon as its
    /// header is read, before anything large is loaded. `max_dim` is `dim()` but at least 1024,
    /// so that RVC indexes (256/768) reach that check and get its message rather than a bare
    /// width error (it only sizes a crossfade buffer).
    pub fn live_config(&self, slots: usize) -> LiveConfig {
        let spec = self.clone();
        LiveConfig {
            slots,
            max_dim: self.dim().max(1024),
            frame_period_seconds: self.hop_ms / 1000.0,
            header_validator: Some(Arc::new(move |header: &IndexHeader| {
                spec.check_metadata(&header.metadata, header.dim)
            })),
            ..LiveConfig::default()
        }
    }

    /// [`check`](Self::check) on metadata and dimension alone.
    pub fn check_metadata(&self, meta: &Metadata, dim: usize) -> Result<(), String> {
        let expected = format!(
            "this voice engine expects {}, dimension {}",
            self.describe(),
            self.dim()
        );
        let hint = "build one from recordings with `knnblend build --audio`";
        match FeatureSpec::from_metadata(meta) {
            Err(what) => Err(format!("the index holds {what} (dimension {dim}); {expected}; {hint}")),
            Ok(spec) if spec != *self => Err(format!(
                "the index holds {} features with different parameters; {expected}; rebuild it with this version",
                spec.describe()
            )),
            Ok(_) if dim != self.dim() => Err(format!(
                "the index says it holds {} but its vectors have dimension {dim}; {expected}",
                self.describe()
            )),
            Ok(_) => Ok(()),
        }
    }
}

/// Frame geometry of a [`FeatureSpec`] at one sample rate, in samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framing {
    /// Hop, samples.
    pub hop: usize,
    /// Window (frame) length, samples: a whole number of hops.
    pub window: usize,
    /// FFT size: the next power of two of twice the window (zero padding leaves room for the
    /// spectral gains' impulse response).
    pub n_fft: usize,
}

impl Framing {
    /// The framing of `spec` at `sample_rate` Hz.
    pub fn new(spec: &FeatureSpec, sample_rate: f32) -> Framing {
        let hop = ((spec.hop_ms as f64 * sample_rate as f64 / 1000.0).round() as usize).max(1);
        let overlap = ((spec.frame_ms / spec.hop_ms).round() as usize).max(2);
        let window = hop * overlap;
        let n_fft = (2 * window).next_power_of_two();
        Framing { hop, window, n_fft }
    }

    /// Number of spectrum bins, `n_fft / 2 + 1`.
    pub fn bins(&self) -> usize {
        self.n_fft / 2 + 1
    }

    /// The analysis and synthesis window: a periodic sine window (its square is a periodic
    /// Hann window, which overlap-adds to a constant at any whole number of hops).
    pub fn window_fn(&self) -> Vec<f32> {
        (0..self.window)
            .map(|n| (std::f64::consts::PI * (n as f64 + 0.5) / self.window as f64).sin() as f32)
            .collect()
    }
}

/// The bands of a [`FeatureSpec`] laid over the bins of one FFT size and sample rate, and the
/// interpolation of band values back onto bins. Built once, used per frame without allocating.
#[derive(Clone, Debug)]
pub struct BandLayout {
    /// Per band: first bin and normalised weights.
    bands: Vec<(usize, Vec<f32>)>,
    /// Per bin: lower band index and weight of the upper one, for band→bin interpolation.
    interp: Vec<(u32, f32)>,
    floor: f32,
}

impl BandLayout {
    /// Lays `spec`'s bands over an `n_fft`-point spectrum at `sample_rate` Hz.
    pub fn new(spec: &FeatureSpec, sample_rate: f32, n_fft: usize) -> BandLayout {
        let nb = spec.bands;
        let bins = n_fft / 2 + 1;
        let bin_hz = sample_rate as f64 / n_fft as f64;
        let (m_lo, m_hi) = (
            hz_to_mel(spec.f_min_hz as f64),
            hz_to_mel(spec.f_max_hz as f64),
        );
        let edge = |i: usize| mel_to_hz(m_lo + (m_hi - m_lo) * i as f64 / (nb + 1) as f64);
        let min_hw = spec.min_half_width_hz as f64;
        let mut centres = Vec::with_capacity(nb);
        let mut bands = Vec::with_capacity(nb);
        for b in 0..nb {
            let c = edge(b + 1);
            let lo = (c - edge(b)).max(min_hw).max(1e-9);
            let hi = (edge(b + 2) - c).max(min_hw).max(1e-9);
            let weight = |k: usize| {
                let f = k as f64 * bin_hz;
                let w = if f < c {
                    1.0 - (c - f) / lo
                } else {
                    1.0 - (f - c) / hi
                };
                w.max(0.0)
            };
            let first = (((c - lo) / bin_hz).floor().max(0.0) as usize).min(bins - 1);
            let last = (((c + hi) / bin_hz).ceil() as usize).min(bins - 1);
            let mut w: Vec<f64> = (first..=last).map(weight).collect();
            let total: f64 = w.iter().sum();
            let (first, w) = if total > 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
                (first, w)
            } else {
                // Narrower than a bin (or above Nyquist): the nearest bin.
                (((c / bin_hz).round() as usize).min(bins - 1), vec![1.0])
            };
            bands.push((first, w.into_iter().map(|v| v as f32).collect()));
            centres.push(hz_to_mel(c));
        }
        let interp = (0..bins)
            .map(|k| {
                let m = hz_to_mel(k as f64 * bin_hz);
                if m <= centres[0] {
                    (0, 0.0)
                } else if m >= centres[nb - 1] {
                    ((nb - 1) as u32, 0.0)
                } else {
                    let i = centres.partition_point(|&c| c <= m) - 1;
                    let frac = (m - centres[i]) / (centres[i + 1] - centres[i]);
                    (i as u32, frac as f32)
                }
            })
            .collect();
        BandLayout {
            bands,
            interp,
            floor: 10f32.powf(spec.floor_db / 10.0),
        }
    }

    /// Number of bands.
    pub fn len(&self) -> usize {
        self.bands.len()
    }

    /// Always false: a layout has at least two bands.
    pub fn is_empty(&self) -> bool {
        self.bands.is_empty()
    }

    /// Number of bins the layout was made for.
    pub fn bins(&self) -> usize {
        self.interp.len()
    }

    /// The envelope of one frame from its power spectrum (`bins()` values) into `out` (`len()`
    /// values). Allocation-free; finite for any finite, non-negative input.
    pub fn features(&self, power: &[f32], out: &mut [f32]) {
        debug_assert_eq!(power.len(), self.bins());
        debug_assert_eq!(out.len(), self.len());
        let mut mean = 0.0f64;
        for (o, (first, w)) in out.iter_mut().zip(&self.bands) {
            let e: f64 = w
                .iter()
                .zip(&power[*first..*first + w.len()])
                .map(|(&w, &p)| w as f64 * p as f64)
                .sum();
            *o = e as f32;
            mean += e;
        }
        mean /= out.len() as f64;
        let floor = mean * self.floor as f64 + 1e-30;
        let mut log_mean = 0.0f64;
        for o in out.iter_mut() {
            let l = (*o as f64 + floor).ln();
            *o = l as f32;
            log_mean += l;
        }
        let log_mean = (log_mean / out.len() as f64) as f32;
        for o in out.iter_mut() {
            *o -= log_mean;
        }
    }

    /// Interpolates per-band values onto bins (linear in mel between band centres, held
    /// beyond the outer centres): `out[k]` for every bin.
    pub fn band_to_bins(&self, bands: &[f32], out: &mut [f32]) {
        debug_assert_eq!(bands.len(), self.len());
        let last = bands.len() - 1;
        for (o, &(i, frac)) in out.iter_mut().zip(&self.interp) {
            let i = i as usize;
            *o = if frac == 0.0 {
                bands[i]
            } else {
                bands[i] + frac * (bands[(i + 1).min(last)] - bands[i])
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use realfft::RealFftPlanner;

    fn features_of(signal: &[f32], spec: &FeatureSpec, sr: f32) -> Vec<Vec<f32>> {
        let fr = Framing::new(spec, sr);
        let layout = BandLayout::new(spec, sr, fr.n_fft);
        let win = fr.window_fn();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(fr.n_fft);
        let mut buf = vec![0f32; fr.n_fft];
        let mut spec_out = fft.make_output_vec();
        let mut power = vec![0f32; fr.bins()];
        let mut rows = Vec::new();
        let mut start = 0;
        while start + fr.window <= signal.len() {
            buf.fill(0.0);
            for (b, (&x, &w)) in buf.iter_mut().zip(signal[start..].iter().zip(&win)) {
                *b = x * w;
            }
            fft.process(&mut buf, &mut spec_out).unwrap();
            for (p, c) in power.iter_mut().zip(&spec_out) {
                *p = c.norm_sqr();
            }
            let mut f = vec![0f32; layout.len()];
            layout.features(&power, &mut f);
            rows.push(f);
            start += fr.hop;
        }
        rows
    }

    fn tone_mix(sr: f32, seconds: f32) -> Vec<f32> {
        let n = (sr * seconds) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / sr;
                let mut s = 0.0;
                for (h, a) in [(1.0, 1.0), (2.0, 0.5), (3.0, 0.8), (7.0, 0.3), (15.0, 0.2)] {
                    s += a * (2.0 * std::f32::consts::PI * 180.0 * h * t).sin();
                }
                s * 0.2
            })
            .collect()
    }

    #[test]
    fn default_spec_is_valid_and_round_trips_through_metadata() {
        let spec = FeatureSpec::default();
        spec.validate().unwrap();
        let meta = spec.metadata(vec!["a.wav".into()], 10, 0.1);
        assert_eq!(FeatureSpec::from_metadata(&meta).unwrap(), spec);
        spec.check_metadata(&meta, 80).unwrap();
    }

    #[test]
    fn check_says_what_the_index_holds_and_what_is_expected() {
        let spec = FeatureSpec::default();
        let meta = Metadata {
            features: "rvc-v2-768".into(),
            ..Default::default()
        };
        let e = spec.check_metadata(&meta, 768).unwrap_err();
        assert!(
            e.contains("rvc-v2-768") && e.contains("768") && e.contains(FEATURE_KIND),
            "{e}"
        );
        let other = FeatureSpec {
            bands: 48,
            ..FeatureSpec::default()
        };
        let e = spec
            .check_metadata(&other.metadata(vec![], 0, 0.0), 48)
            .unwrap_err();
        assert!(e.contains("48 bands") && e.contains("40 bands"), "{e}");
        let e = spec
            .check_metadata(&spec.metadata(vec![], 0, 0.0), 41)
            .unwrap_err();
        assert!(e.contains("dimension 41"), "{e}");
    }

    #[test]
    fn framing_is_in_physical_units() {
        let spec = FeatureSpec::default();
        assert_eq!(
            Framing::new(&spec, 48_000.0),
            Framing {
                hop: 480,
                window: 1920,
                n_fft: 4096
            }
        );
        assert_eq!(Framing::new(&spec, 44_100.0).hop, 441);
        assert_eq!(Framing::new(&spec, 22_050.0).window, 884); // 221-sample hops
    }

    #[test]
    fn features_are_loudness_independent() {
        let spec = FeatureSpec::default();
        let x = tone_mix(48_000.0, 0.2);
        let loud = features_of(&x, &spec, 48_000.0);
        let quiet: Vec<f32> = x.iter().map(|v| v * 1e-3).collect();
        let quiet = features_of(&quiet, &spec, 48_000.0);
        for (a, b) in loud.iter().zip(&quiet) {
            for (p, q) in a.iter().zip(b) {
                assert!((p - q).abs() < 1e-3, "{p} vs {q}");
            }
            assert!(a.iter().sum::<f32>().abs() < 1e-3, "mean-normalised");
        }
    }

    #[test]
    fn features_barely_depend_on_the_sample_rate() {
        let spec = FeatureSpec::default();
        let mean = |rows: Vec<Vec<f32>>| {
            let mut m = vec![0f32; spec.bands];
            for r in &rows[2..rows.len() - 2] {
                m.iter_mut().zip(r).for_each(|(m, v)| *m += v);
            }
            let n = (rows.len() - 4) as f32;
            m.iter().map(|v| v / n).collect::<Vec<_>>()
        };
        let a = mean(features_of(&tone_mix(22_050.0, 0.3), &spec, 22_050.0));
        let b = mean(features_of(&tone_mix(48_000.0, 0.3), &spec, 48_000.0));
        let spread: f32 = a.iter().map(|v| v * v).sum::<f32>().sqrt();
        let diff: f32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt();
        assert!(
            diff < 0.1 * spread,
            "22.05 vs 48 kHz features differ by {diff} (spread {spread})"
        );
    }

    #[test]
    fn composed_vectors_carry_the_exact_absolute_envelope() {
        let spec = FeatureSpec::default();
        let env: Vec<f32> = (0..spec.bands)
            .map(|i| (i as f32 * 0.37).sin() * 5.0)
            .collect();
        let mean: Vec<f32> = (0..spec.bands).map(|i| i as f32 * 0.01).collect();
        let mut v = vec![0f32; spec.dim()];
        FeatureSpec::compose(&env, &mean, &mut v);
        let mut back = vec![0f32; spec.bands];
        FeatureSpec::absolute(&v, &mut back);
        assert_eq!(back, env);
        let (rows, m) = spec.speaker_rows(&[env.clone(), env.clone()].concat());
        assert_eq!(m, env);
        assert!(rows[..spec.bands].iter().all(|&r| r == 0.0));
    }

    #[test]
    fn band_to_bins_interpolates_and_holds() {
        let spec = FeatureSpec::default();
        let layout = BandLayout::new(&spec, 48_000.0, 4096);
        let bands: Vec<f32> = (0..spec.bands).map(|i| i as f32).collect();
        let mut bins = vec![0f32; layout.bins()];
        layout.band_to_bins(&bands, &mut bins);
        assert_eq!(bins[0], 0.0);
        assert_eq!(*bins.last().unwrap(), (spec.bands - 1) as f32);
        assert!(
            bins.windows(2).all(|w| w[1] >= w[0]),
            "monotone for monotone bands"
        );
    }
}
