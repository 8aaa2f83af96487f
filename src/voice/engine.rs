//! [`VoiceEngine`]: the whole realtime voice path, in place on the host's buffers.
//!
//! Every `hop` samples one frame is analysed and resynthesised:
//!
//! 1. each channel's last `window` samples, sine-windowed and zero-padded, are transformed
//!    (`realfft`); the mid spectrum is their mean;
//! 2. the mid power spectrum gives the frame's envelope ([`BandLayout::features`]) and level;
//!    the query is the envelope relative to a running mean of the input's voiced frames, with
//!    the absolute envelope alongside (see [`features`](super::features));
//! 3. the retriever blends the query with its nearest stored neighbours at the blend ratio
//!    (RVC's `index_rate`); the blend's absolute half is the target envelope;
//! 4. per band, the amplitude gain is `exp((target − input) / 2)`, scaled towards 0 dB by the
//!    level gate (silence and near-silence are left alone) and limited to ±`max_gain_db`;
//!    interpolated onto bins (linear in mel); optionally renormalised so the frame keeps its
//!    energy (the conversion changes timbre, not loudness);
//! 5. every channel's spectrum is multiplied by the same gains (phases kept, stereo image held),
//!    inverse-transformed, sine-windowed and overlap-added with an exact normalisation, so unity
//!    gains reconstruct the input to float precision.
//!
//! The output lags the input by exactly `window` samples ([`VoiceEngine::latency_samples`]); the
//! dry signal is delayed by the same amount before the dry/wet mix. Ratio 0 therefore nulls
//! against the delayed input. Frames fall on fixed sample positions and parameters ramp per
//! sample, so the output does not depend on how the stream is cut into blocks.
//!
//! Input samples are sanitised first (NaN and ±∞ become 0, values beyond ±[`INPUT_LIMIT`] are
//! clamped, denormals are flushed), and a frame whose output is not finite clears the
//! resynthesis state, so hostile input can neither produce non-finite output nor leave the
//! engine broken after it ends.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use super::features::{BandLayout, FeatureSpec, Framing};
use super::pitch_control::{PitchControl, PitchMode, PitchState};
use super::ramp::Ramp;
use super::retriever::Retriever;
use super::shift::PeakShifter;
use super::snapshot::{Readout, SnapshotBoard};
use crate::index::{BlendOutcome, QueryExpansion, MAX_K};
use crate::live::AudioEngine;

/// Input samples are clamped to ±this (about +60 dBFS) before anything else.
pub const INPUT_LIMIT: f32 = 1000.0;

/// Per-block parameters from the host.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockParams {
    /// The slot whose index serves retrieval.
    pub active_slot: usize,
    /// Neighbours per frame, clamped to `1..=MAX_K` (RVC: 8).
    pub k: usize,
    /// Blend ratio (RVC's index rate) in `[0, 1]`; 0 leaves the voice unchanged.
    pub ratio: f32,
    /// Crossfade time when the active slot or its index changes, seconds.
    pub crossfade_seconds: f32,
    /// Dry/wet mix in `[0, 1]`; 1 is fully processed.
    pub dry_wet: f32,
    /// Linear output gain.
    pub output_gain: f32,
    /// Query-side α expansion of the retrieval ([`QueryExpansion`]); `None` (the default)
    /// searches with each frame itself, as RVC does.
    pub expansion: Option<QueryExpansion>,
    /// The Pitch control ([`PitchMode`]): off (the default), match the voice, or a fixed
    /// shift. The shift keeps the envelope retrieval chose (formants stay the target's).
    pub pitch: PitchMode,
}

impl Default for BlockParams {
    fn default() -> Self {
        BlockParams {
            active_slot: 0,
            k: 8,
            ratio: 0.75,
            crossfade_seconds: 0.05,
            dry_wet: 1.0,
            output_gain: 1.0,
            expansion: None,
            pitch: PitchMode::Off,
        }
    }
}

/// Resynthesis settings that are not part of the features.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VoiceSettings {
    /// Frame level (RMS of the windowed mid signal, dBFS) at and above which the transfer is
    /// fully applied.
    pub gate_open_db: f32,
    /// Frame level at and below which nothing is transferred (linear in between).
    pub gate_closed_db: f32,
    /// Largest boost or cut of one band, dB.
    pub max_gain_db: f32,
    /// Length of the ratio, dry/wet and gain ramps, ms.
    pub ramp_ms: f32,
    /// Renormalise each frame's gains so the frame keeps its energy.
    pub preserve_energy: bool,
    /// Time constant of the input speaker's running mean envelope, seconds of voiced frames
    /// (a plain average until that much has been heard).
    pub speaker_mean_seconds: f32,
    /// The processed (wet) signal is clamped to this many dB above the input's recent peak
    /// (instant attack, 100 ms release, looking ahead by the latency): a safety net for
    /// signals the conversion makes no sense for (DC steps, pure tones), never reached by a
    /// voice at ratio 0.
    pub wet_headroom_db: f32,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        VoiceSettings {
            gate_open_db: -50.0,
            gate_closed_db: -65.0,
            max_gain_db: 18.0,
            ramp_ms: 20.0,
            preserve_energy: true,
            speaker_mean_seconds: 3.0,
            wet_headroom_db: 12.0,
        }
    }
}

/// Counters for tests and meters (read from the audio thread's owner).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VoiceStats {
    /// Frames analysed.
    pub frames: u64,
    /// Frames whose retrieval blended neighbours.
    pub blended: u64,
    /// Frames whose output was not finite and whose state was cleared.
    pub recoveries: u64,
}

/// The realtime voice path. See the [module docs](self). `R` is where retrieval comes from:
/// the live runtime ([`AudioEngine`], the default) or any other [`Retriever`].
pub struct VoiceEngine<R: Retriever = AudioEngine> {
    retriever: R,
    layout: BandLayout,
    framing: Framing,
    settings: VoiceSettings,
    max_channels: usize,
    fft: Arc<dyn RealToComplex<f32>>,
    ifft: Arc<dyn ComplexToReal<f32>>,
    scratch: Vec<Complex<f32>>,
    window: Vec<f32>,
    /// Per position within a hop: window² overlap-add normalisation including 1/n_fft.
    ola_norm: Vec<f32>,
    time: Vec<f32>,
    /// Per channel, `window` samples each: the analysis input.
    input: Vec<f32>,
    /// Per channel, `window` samples each: the overlap-add accumulator.
    acc: Vec<f32>,
    /// Per channel, `hop` samples each: finished output of the last frame.
    ready: Vec<f32>,
    /// Per channel, `window` samples each: the dry delay line.
    dry: Vec<f32>,
    /// Per channel, `bins` values each: spectra.
    spectra: Vec<Complex<f32>>,
    mid: Vec<Complex<f32>>,
    power: Vec<f32>,
    envelope: Vec<f32>,
    query: Vec<f32>,
    blended: Vec<f32>,
    target: Vec<f32>,
    speaker_mean: Vec<f32>,
    mean_frames: u32,
    mean_horizon: u32,
    band_gain: Vec<f32>,
    bin_gain: Vec<f32>,
    fill: usize,
    dry_pos: usize,
    ratio: Ramp,
    dry_wet: Ramp,
    gain: Ramp,
    started: bool,
    peak: f32,
    peak_release: f32,
    headroom: f32,
    stats: VoiceStats,
    last_outcome: Option<BlendOutcome>,
    /// The Pitch control, the shifter, the shifted spectra and their envelope.
    pitch: PitchControl,
    pitch_mode: PitchMode,
    shifter: PeakShifter,
    shifted: Vec<Complex<f32>>,
    shifted_envelope: Vec<f32>,
    /// The hop's new mid samples for the pitch tracker.
    hop_mid: Vec<f32>,
    /// Where every frame is published for an editor (`None`: nowhere).
    snapshots: Option<Arc<SnapshotBoard>>,
}

/// The mid spectrum of the first `nch` channel spectra (each `out.len()` bins, laid end to
/// end in `spectra`): their mean, or the one channel itself.
fn mid_of(spectra: &[Complex<f32>], nch: usize, out: &mut [Complex<f32>]) {
    let bins = out.len();
    if nch == 1 {
        out.copy_from_slice(&spectra[..bins]);
    } else {
        let scale = 1.0 / nch as f32;
        for (b, m) in out.iter_mut().enumerate() {
            let mut s = Complex::default();
            for c in 0..nch {
                s += spectra[c * bins + b];
            }
            *m = s * scale;
        }
    }
}

fn finite_or(v: f32, fallback: f32) -> f32 {
    if v.is_finite() {
        v
    } else {
        fallback
    }
}

/// Touches every page of `buf` so no page fault happens later on the audio thread (zeroed
/// allocations are mapped lazily).
fn prefault<T: Copy>(buf: &mut [T]) {
    let step = (1024 / std::mem::size_of::<T>().max(1)).max(1);
    for i in (0..buf.len()).step_by(step) {
        // SAFETY: `i` is in bounds; a volatile write of the value already there.
        unsafe { std::ptr::write_volatile(&mut buf[i], buf[i]) };
    }
}

#[inline]
fn sanitize(x: f32) -> f32 {
    if !x.is_finite() || x.abs() < 1e-30 {
        0.0
    } else {
        x.clamp(-INPUT_LIMIT, INPUT_LIMIT)
    }
}

impl VoiceEngine<AudioEngine> {
    /// The voice path on a live runtime's audio side (see [`FeatureSpec::live_config`] for the
    /// runtime's configuration). Sets the runtime's crossfade frame period to this engine's hop
    /// at `sample_rate`. Allocates; call it off the audio thread.
    ///
    /// # Panics
    /// As [`with_retriever`](Self::with_retriever).
    pub fn new(
        mut audio: AudioEngine,
        spec: &FeatureSpec,
        sample_rate: f32,
        max_channels: usize,
    ) -> Self {
        if sample_rate.is_finite() && sample_rate > 0.0 {
            let framing = Framing::new(spec, sample_rate);
            audio.set_frame_period_seconds(framing.hop as f32 / sample_rate);
        }
        Self::with_retriever(audio, spec, sample_rate, max_channels)
    }

    /// Gives the runtime's audio side back (e.g. to build an engine for another sample rate).
    pub fn into_audio(self) -> AudioEngine {
        self.retriever
    }
}

impl<R: Retriever> VoiceEngine<R> {
    /// An engine for `spec` features at `sample_rate` Hz for up to `max_channels` channels,
    /// retrieving through `retriever`. All memory is allocated here.
    ///
    /// # Panics
    /// If `spec` is invalid ([`FeatureSpec::validate`]), or `sample_rate` is not a positive
    /// finite number.
    pub fn with_retriever(
        retriever: R,
        spec: &FeatureSpec,
        sample_rate: f32,
        max_channels: usize,
    ) -> Self {
        Self::with_settings(
            retriever,
            spec,
            sample_rate,
            max_channels,
            VoiceSettings::default(),
        )
    }

    /// [`with_retriever`](Self::with_retriever) with explicit [`VoiceSettings`].
    pub fn with_settings(
        retriever: R,
        spec: &FeatureSpec,
        sample_rate: f32,
        max_channels: usize,
        settings: VoiceSettings,
    ) -> Self {
        if let Err(e) = spec.validate() {
            panic!("invalid feature spec: {e}");
        }
        assert!(
            sample_rate.is_finite() && sample_rate > 0.0,
            "sample rate must be positive, not {sample_rate}"
        );
        let max_channels = max_channels.max(1);
        let framing = Framing::new(spec, sample_rate);
        let (hop, win, n_fft, bins) = (framing.hop, framing.window, framing.n_fft, framing.bins());
        let mut planner = RealFftPlanner::<f32>::new();
        let fft = planner.plan_fft_forward(n_fft);
        let ifft = planner.plan_fft_inverse(n_fft);
        let scratch = vec![Complex::default(); fft.get_scratch_len().max(ifft.get_scratch_len())];
        let window = framing.window_fn();
        let ola_norm = (0..hop)
            .map(|j| {
                let s: f64 = (j..win)
                    .step_by(hop)
                    .map(|i| (window[i] as f64).powi(2))
                    .sum();
                (1.0 / (s * n_fft as f64)) as f32
            })
            .collect();
        let ramp_len = (settings.ramp_ms.max(0.0) * sample_rate / 1000.0).round() as u32;
        let mut engine = VoiceEngine {
            retriever,
            layout: BandLayout::new(spec, sample_rate, n_fft),
            framing,
            settings,
            max_channels,
            fft,
            ifft,
            scratch,
            window,
            ola_norm,
            time: vec![0.0; n_fft],
            input: vec![0.0; max_channels * win],
            acc: vec![0.0; max_channels * win],
            ready: vec![0.0; max_channels * hop],
            dry: vec![0.0; max_channels * win],
            spectra: vec![Complex::default(); max_channels * bins],
            mid: vec![Complex::default(); bins],
            power: vec![0.0; bins],
            envelope: vec![0.0; spec.bands],
            query: vec![0.0; spec.dim()],
            blended: vec![0.0; spec.dim()],
            target: vec![0.0; spec.bands],
            speaker_mean: vec![0.0; spec.bands],
            mean_frames: 0,
            mean_horizon: ((settings.speaker_mean_seconds.max(0.0) * 1000.0 / spec.hop_ms).round()
                as u32)
                .max(1),
            band_gain: vec![0.0; spec.bands],
            bin_gain: vec![1.0; bins],
            fill: 0,
            dry_pos: 0,
            ratio: Ramp::new(0.0, ramp_len),
            dry_wet: Ramp::new(1.0, ramp_len),
            gain: Ramp::new(1.0, ramp_len),
            started: false,
            peak: 0.0,
            peak_release: (-1.0 / (0.1 * sample_rate)).exp(),
            headroom: 10f32.powf(settings.wet_headroom_db / 20.0),
            stats: VoiceStats::default(),
            last_outcome: None,
            pitch: PitchControl::new(sample_rate.max(1000.0), hop),
            pitch_mode: PitchMode::Off,
            shifter: PeakShifter::new(n_fft, hop),
            shifted: vec![Complex::default(); max_channels * bins],
            shifted_envelope: vec![0.0; spec.bands],
            hop_mid: vec![0.0; hop],
            snapshots: None,
        };
        engine.prefault();
        engine
    }

    fn prefault(&mut self) {
        prefault(&mut self.scratch);
        prefault(&mut self.time);
        prefault(&mut self.input);
        prefault(&mut self.acc);
        prefault(&mut self.ready);
        prefault(&mut self.dry);
        prefault(&mut self.spectra);
        prefault(&mut self.mid);
        prefault(&mut self.power);
        prefault(&mut self.bin_gain);
        prefault(&mut self.shifted);
        prefault(&mut self.hop_mid);
    }

    /// Output delay relative to the input, in samples (report it to the host).
    pub fn latency_samples(&self) -> u32 {
        self.framing.window as u32
    }

    /// The frame geometry at this sample rate.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// Counters since construction.
    pub fn stats(&self) -> VoiceStats {
        self.stats
    }

    /// What the last frame's retrieval did.
    pub fn last_outcome(&self) -> Option<BlendOutcome> {
        self.last_outcome
    }

    /// The retriever.
    pub fn retriever(&self) -> &R {
        &self.retriever
    }

    /// The retriever, mutably.
    pub fn retriever_mut(&mut self) -> &mut R {
        &mut self.retriever
    }

    /// Forgets all audio history (buffers to silence, ramps jump to the next block's values).
    /// Allocation-free.
    pub fn reset(&mut self) {
        self.input.fill(0.0);
        self.acc.fill(0.0);
        self.ready.fill(0.0);
        self.dry.fill(0.0);
        self.fill = 0;
        self.dry_pos = 0;
        self.started = false;
        self.speaker_mean.fill(0.0);
        self.mean_frames = 0;
        self.peak = 0.0;
        self.pitch.reset();
        self.shifter.reset();
    }

    /// Publishes every frame (input and blended envelopes, f0, shift) to `board` from now on
    /// (`None`: stops). Call it off the audio thread; publishing is wait-free.
    pub fn set_snapshots(&mut self, board: Option<Arc<SnapshotBoard>>) {
        self.snapshots = board;
    }

    /// What the Pitch control is doing: the input's f0 and running median, the shift.
    pub fn pitch_state(&self) -> PitchState {
        self.pitch.state()
    }

    /// Processes one block in place. `channels` are equally long slices (the shortest length
    /// is used); channels beyond `max_channels` are silenced. Any block length works, including
    /// 0. Allocation-, lock- and syscall-free (given a retriever that is).
    pub fn process(&mut self, channels: &mut [&mut [f32]], params: &BlockParams) {
        self.retriever
            .begin_block(params.active_slot, finite_or(params.crossfade_seconds, 0.0));
        let ratio = finite_or(params.ratio, 0.0).clamp(0.0, 1.0);
        let dry_wet = finite_or(params.dry_wet, 1.0).clamp(0.0, 1.0);
        let gain = finite_or(params.output_gain, 1.0).clamp(0.0, 1000.0);
        if self.started {
            self.ratio.set(ratio);
            self.dry_wet.set(dry_wet);
            self.gain.set(gain);
        } else {
            self.ratio.jump(ratio);
            self.dry_wet.jump(dry_wet);
            self.gain.jump(gain);
            self.started = true;
        }
        let k = params.k.clamp(1, MAX_K);
        self.retriever.set_query_expansion(params.expansion);
        // Match voice resolves to the serving voice's recorded median (none: hold).
        self.pitch_mode = match params.pitch {
            PitchMode::MatchVoice { range } => PitchMode::Match {
                target_hz: self.retriever.voice_median_f0_hz().unwrap_or(0.0),
                range,
            },
            other => other,
        };

        let nch = channels.len().min(self.max_channels);
        for extra in channels.iter_mut().skip(nch) {
            extra.fill(0.0);
        }
        let (channels, _) = channels.split_at_mut(nch);
        let len = channels.iter().map(|c| c.len()).min().unwrap_or(0);
        let (hop, win) = (self.framing.hop, self.framing.window);
        let base = win - hop;
        for i in 0..len {
            let r = self.ratio.next();
            let dw = self.dry_wet.next();
            let g = self.gain.next();
            let mut peak = self.peak * self.peak_release;
            for (c, ch) in channels.iter().enumerate() {
                let x = sanitize(ch[i]);
                self.input[c * win + base + self.fill] = x;
                peak = peak.max(x.abs());
            }
            self.peak = peak;
            let limit = peak * self.headroom;
            for (c, ch) in channels.iter_mut().enumerate() {
                let x = self.input[c * win + base + self.fill];
                let d = &mut self.dry[c * win + self.dry_pos];
                let delayed = *d;
                *d = x;
                let wet = self.ready[c * hop + self.fill].clamp(-limit, limit);
                ch[i] = (delayed * (1.0 - dw) + wet * dw) * g;
            }
            self.dry_pos = if self.dry_pos + 1 == win {
                0
            } else {
                self.dry_pos + 1
            };
            self.fill += 1;
            if self.fill == hop {
                self.fill = 0;
                self.frame(nch, k, r);
            }
        }
        self.retriever.end_block();
    }

    /// Analyses and resynthesises one frame from the last `window` input samples.
    fn frame(&mut self, nch: usize, k: usize, ratio: f32) {
        let (hop, win, n_fft, bins) = (
            self.framing.hop,
            self.framing.window,
            self.framing.n_fft,
            self.framing.bins(),
        );
        // 1. spectra of every channel and the mid spectrum.
        for c in 0..nch {
            let input = &self.input[c * win..(c + 1) * win];
            for ((t, &x), &w) in self.time.iter_mut().zip(input).zip(&self.window) {
                *t = x * w;
            }
            self.time[win..].fill(0.0);
            let spectrum = &mut self.spectra[c * bins..(c + 1) * bins];
            let _ = self
                .fft
                .process_with_scratch(&mut self.time, spectrum, &mut self.scratch);
        }
        mid_of(&self.spectra, nch, &mut self.mid);
        // 1b. the Pitch control: f0 of the hop's new samples, the shift for this frame.
        for (j, m) in self.hop_mid.iter_mut().enumerate() {
            let mut s = 0.0;
            for c in 0..nch {
                s += self.input[c * win + win - hop + j];
            }
            *m = s / nch as f32;
        }
        let semitones = self.pitch.hop(&self.hop_mid, self.pitch_mode);
        let shifting = semitones != 0.0;
        if shifting {
            let alpha = (semitones / 12.0).exp2();
            self.shifter
                .shift(alpha, &self.mid, &self.spectra, &mut self.shifted, nch);
        } else {
            self.shifter.reset();
        }

        // 2. power, level and features.
        let mut energy = 0.0f64;
        for (b, (p, m)) in self.power.iter_mut().zip(&self.mid).enumerate() {
            *p = m.norm_sqr();
            let twice = if b == 0 || b == bins - 1 { 1.0 } else { 2.0 };
            energy += twice * *p as f64;
        }
        // Parseval: Σ (x·w)² = energy / n_fft; Σ w² = win / 2 for the sine window.
        let mean_square = energy / n_fft as f64 / (win as f64 / 2.0);
        let level_db = 10.0 * (mean_square + 1e-30).log10() as f32;
        let s = &self.settings;
        let gate = ((level_db - s.gate_closed_db) / (s.gate_open_db - s.gate_closed_db).max(1e-3))
            .clamp(0.0, 1.0);
        self.layout.features(&self.power, &mut self.envelope);
        if gate >= 0.5 {
            self.mean_frames = (self.mean_frames + 1).min(self.mean_horizon);
            let w = 1.0 / self.mean_frames as f32;
            for (m, &e) in self.speaker_mean.iter_mut().zip(&self.envelope) {
                *m += w * (e - *m);
            }
        }
        // No transfer before the input speaker has been heard at all.
        let gate = if self.mean_frames == 0 { 0.0 } else { gate };
        FeatureSpec::compose(&self.envelope, &self.speaker_mean, &mut self.query);

        // 3. retrieval: the blend's absolute half is the target envelope.
        let outcome = self
            .retriever
            .blend(&self.query, k, ratio, &mut self.blended);
        FeatureSpec::absolute(&self.blended, &mut self.target);
        self.stats.frames += 1;
        if let BlendOutcome::Blended { .. } = outcome {
            self.stats.blended += 1;
        }
        self.last_outcome = Some(outcome);
        if let Some(board) = &self.snapshots {
            let p = self.pitch.state();
            let target_f0_hz = match self.pitch_mode {
                PitchMode::Match { target_hz, .. } => target_hz,
                _ => 0.0,
            };
            let match_spacings = match (outcome, self.retriever.typical_spacing()) {
                (BlendOutcome::Blended { nearest, .. }, Some(spacing)) if spacing > 0.0 => {
                    Some((nearest / spacing).sqrt()).filter(|m| m.is_finite())
                }
                _ => None,
            };
            let readout = Readout {
                input_f0_hz: p.input_hz,
                input_median_hz: p.input_median_hz,
                target_f0_hz,
                shift_semitones: p.semitones,
                level_db,
                match_spacings,
            };
            board.publish(self.stats.frames, &self.envelope, &self.target, readout);
        }

        // 4. band gains → bin gains. When shifting, against the shifted spectrum's own
        // envelope, so the output has the target envelope (formants stay where retrieval put
        // them, not where the shift moved them); the formant correction applies whatever the
        // gate: at Blend 0 the target is the input's own envelope, which this restores. The
        // shifted spectra become the frame's spectra (a swap), and the mid spectrum and power
        // are recomputed from them (the input's are not needed any more).
        if shifting {
            std::mem::swap(&mut self.spectra, &mut self.shifted);
            mid_of(&self.spectra, nch, &mut self.mid);
            for (p, m) in self.power.iter_mut().zip(&self.mid) {
                *p = m.norm_sqr();
            }
            self.layout
                .features(&self.power, &mut self.shifted_envelope);
        }
        let against = if shifting {
            &self.shifted_envelope
        } else {
            &self.envelope
        };
        let max_ln = s.max_gain_db * std::f32::consts::LN_10 / 20.0;
        let shift_ln = max_ln * (1.0 + (semitones.abs() / 12.0).min(1.0));
        let mut any = false;
        for (((g, &t), &f), &e) in self
            .band_gain
            .iter_mut()
            .zip(&self.target)
            .zip(against)
            .zip(&self.envelope)
        {
            // When shifting, the limit widens with the shift (to twice max_gain_db at an
            // octave): the formant correction undoes what the shift moved, on top of the
            // conversion.
            let v = if shifting {
                (0.5 * (gate * t + (1.0 - gate) * e - f)).clamp(-shift_ln, shift_ln)
            } else {
                (0.5 * (t - f) * gate).clamp(-max_ln, max_ln)
            };
            *g = if v.is_finite() { v } else { 0.0 };
            any |= *g != 0.0;
        }
        if any {
            self.layout
                .band_to_bins(&self.band_gain, &mut self.bin_gain);
            for g in self.bin_gain.iter_mut() {
                *g = g.exp();
            }
            if s.preserve_energy {
                let (mut num, mut den) = (0.0f64, 0.0f64);
                for (&g, &p) in self.bin_gain.iter().zip(&self.power) {
                    num += (p * g * g) as f64;
                    den += p as f64;
                }
                if num > 0.0 && den > 0.0 && num.is_finite() {
                    let norm = (den / num).sqrt() as f32;
                    self.bin_gain.iter_mut().for_each(|g| *g *= norm);
                }
            }
        }

        // 5. resynthesis of every channel.
        let mut finite = true;
        for c in 0..nch {
            let spectrum = &mut self.spectra[c * bins..(c + 1) * bins];
            if any {
                for (x, &g) in spectrum.iter_mut().zip(&self.bin_gain) {
                    *x *= g;
                }
            }
            spectrum[0].im = 0.0;
            spectrum[bins - 1].im = 0.0;
            let _ = self
                .ifft
                .process_with_scratch(spectrum, &mut self.time, &mut self.scratch);
            let acc = &mut self.acc[c * win..(c + 1) * win];
            for (i, (a, (&t, &w))) in acc
                .iter_mut()
                .zip(self.time.iter().zip(&self.window))
                .enumerate()
            {
                *a += t * w * self.ola_norm[i % hop];
            }
            let ready = &mut self.ready[c * hop..(c + 1) * hop];
            ready.copy_from_slice(&acc[..hop]);
            acc.copy_within(hop.., 0);
            acc[win - hop..].fill(0.0);
            finite &= ready.iter().all(|v| v.is_finite()) && acc.iter().all(|v| v.is_finite());
        }
        if !finite {
            self.acc.fill(0.0);
            self.ready.fill(0.0);
            self.stats.recoveries += 1;
        }

        // 6. the input window moves on by one hop.
        for c in 0..nch {
            self.input[c * win..(c + 1) * win].copy_within(hop.., 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::retriever::IndexRetriever;

    fn engine(sr: f32, ch: usize) -> VoiceEngine<IndexRetriever> {
        VoiceEngine::with_retriever(IndexRetriever::new(None), &FeatureSpec::default(), sr, ch)
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn identity_gains_reconstruct_the_delayed_input() {
        let mut e = engine(44_100.0, 2);
        let lat = e.latency_samples() as usize;
        let n = 3 * 4410 + lat;
        let l = noise(n, 1);
        let r: Vec<f32> = noise(n, 2).iter().map(|v| v * 0.3).collect();
        let (mut a, mut b) = (l.clone(), r.clone());
        let p = BlockParams {
            ratio: 0.0,
            ..Default::default()
        };
        for (ca, cb) in a.chunks_mut(300).zip(b.chunks_mut(300)) {
            e.process(&mut [ca, cb], &p);
        }
        let peak = (lat..n)
            .map(|i| (a[i] - l[i - lat]).abs().max((b[i] - r[i - lat]).abs()))
            .fold(0f32, f32::max);
        assert!(peak < 1e-5, "residual {peak}");
        assert!(a[..lat].iter().all(|&v| v.abs() < 1e-6));
    }

    #[test]
    fn extra_channels_are_silenced_and_empty_blocks_work() {
        let mut e = engine(48_000.0, 1);
        let mut a = vec![0.5f32; 64];
        let mut b = vec![0.5f32; 64];
        e.process(&mut [&mut a, &mut b], &BlockParams::default());
        assert!(b.iter().all(|&v| v == 0.0));
        e.process(&mut [&mut [][..]], &BlockParams::default());
        e.process(&mut [], &BlockParams::default());
    }
}
