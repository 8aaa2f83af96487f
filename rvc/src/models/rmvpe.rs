//! RMVPE, the pitch estimator RVC uses, run from `rmvpe.onnx` with the front end and the
//! decoding in Rust, exactly as RVC's `infer/lib/rmvpe.py` does them.
//!
//! Front end ([`MelSpectrogram`], RVC's `MelSpectrogram(is_half, 128, 16000, 1024, 160, None,
//! 30, 8000)`):
//! - STFT as `torch.stft(center=True)`: the signal is reflect-padded by 512 samples on each side
//!   (`pad_mode="reflect"`, the edge sample not repeated), frames of 1024 samples every 160
//!   (10 ms), so `frames = samples / 160 + 1`; window `torch.hann_window(1024)`, the periodic
//!   Hann window `0.5 − 0.5·cos(2πn/1024)`; magnitude `sqrt(re² + im²)` (not power).
//! - Mel: `librosa.filters.mel(sr=16000, n_fft=1024, n_mels=128, fmin=30, fmax=8000,
//!   htk=True)`: HTK mel scale (`2595·log10(1 + f/700)`), triangles between 130 equally spaced
//!   mel points, librosa's default Slaney area normalisation (`2 / (f[i+2] − f[i])`).
//! - `log(clamp(mel, min=1e-5))`.
//!
//! The model reads `[1, 128, frames]` with frames padded to a multiple of 32 (RVC's
//! `mel2hidden`; the current RVC pads with zeros, `mode="constant"`) and returns the salience
//! `[1, frames, 360]`, of which the first `frames` rows are kept.
//!
//! Decoding ([`decode_salience`], RVC's `decode` / `to_local_average_cents`): per frame, the
//! weighted mean of the cents of the 9 bins around the peak (bin `i` is `20·i + 1997.379…`
//! cents; bins outside 0–359 count as zero), 0 when the peak salience is at most the threshold
//! (RVC uses 0.03); Hz = `10·2^(cents/1200)`, and 0 cents gives 0 Hz (unvoiced).

use super::signature::{self, Dim};
use super::{inference, open_session};
use crate::error::{ModelKind, Port, RvcError};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};
use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MODEL: ModelKind = ModelKind::Rmvpe;

/// RVC's log-mel front end for RMVPE (see the module docs).
pub struct MelSpectrogram {
    fft: Arc<dyn RealToComplex<f32>>,
    window: Vec<f32>,
    /// Per band: first FFT bin with a non-zero weight, and the weights from there.
    bands: Vec<(usize, Vec<f32>)>,
    frame: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    scratch: Vec<Complex<f32>>,
    magnitude: Vec<f32>,
}

impl std::fmt::Debug for MelSpectrogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MelSpectrogram").finish_non_exhaustive()
    }
}

impl Default for MelSpectrogram {
    fn default() -> Self {
        Self::new()
    }
}

impl MelSpectrogram {
    /// Input sample rate.
    pub const SAMPLE_RATE: u32 = 16_000;
    /// FFT and window length.
    pub const N_FFT: usize = 1024;
    /// Hop between frames (10 ms).
    pub const HOP: usize = 160;
    /// Mel bands.
    pub const N_MELS: usize = 128;
    /// Lowest mel frequency, Hz.
    pub const FMIN: f64 = 30.0;
    /// Highest mel frequency, Hz.
    pub const FMAX: f64 = 8000.0;
    /// Floor before the logarithm.
    pub const CLAMP: f32 = 1e-5;
    /// FFT bins.
    pub const BINS: usize = Self::N_FFT / 2 + 1;

    /// Plans the FFT and builds the window and the filterbank.
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(Self::N_FFT);
        let window = (0..Self::N_FFT)
            .map(|n| {
                let phase = 2.0 * std::f64::consts::PI * n as f64 / Self::N_FFT as f64;
                (0.5 - 0.5 * phase.cos()) as f32
            })
            .collect();
        let basis = Self::filterbank();
        let bands = basis
            .chunks(Self::BINS)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                (first, row[first..last].to_vec())
            })
            .collect();
        MelSpectrogram {
            frame: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            magnitude: vec![0.0; Self::BINS],
            fft,
            window,
            bands,
        }
    }

    /// The mel filterbank, `N_MELS × BINS` row-major, as librosa computes it (float64 math,
    /// stored as float32).
    pub fn filterbank() -> Vec<f32> {
        let hz_to_mel = |f: f64| 2595.0 * (1.0 + f / 700.0).log10();
        let mel_to_hz = |m: f64| 700.0 * (10f64.powf(m / 2595.0) - 1.0);
        let points = Self::N_MELS + 2;
        let (lo, hi) = (hz_to_mel(Self::FMIN), hz_to_mel(Self::FMAX));
        // np.linspace: lo + i * step, the last point exactly hi.
        let step = (hi - lo) / (points - 1) as f64;
        let mel_f: Vec<f64> = (0..points)
            .map(|i| {
                if i == points - 1 {
                    mel_to_hz(hi)
                } else {
                    mel_to_hz(lo + i as f64 * step)
                }
            })
            .collect();
        let fft_freqs: Vec<f64> = (0..Self::BINS)
            .map(|k| k as f64 * Self::SAMPLE_RATE as f64 / Self::N_FFT as f64)
            .collect();
        let mut basis = vec![0f32; Self::N_MELS * Self::BINS];
        for band in 0..Self::N_MELS {
            let lower_width = mel_f[band + 1] - mel_f[band];
            let upper_width = mel_f[band + 2] - mel_f[band + 1];
            let enorm = 2.0 / (mel_f[band + 2] - mel_f[band]);
            for (k, &f) in fft_freqs.iter().enumerate() {
                let lower = -(mel_f[band] - f) / lower_width;
                let upper = (mel_f[band + 2] - f) / upper_width;
                let w = lower.min(upper).max(0.0) as f32;
                basis[band * Self::BINS + k] = (w as f64 * enorm) as f32;
            }
        }
        basis
    }

    /// Frames for `samples` of audio: `samples / 160 + 1`.
    pub fn frames_for(samples: usize) -> usize {
        samples / Self::HOP + 1
    }

    /// The log-mel of `wav16k` into `out` (resized), band-major: `out[band * frames + t]`,
    /// the layout of the model's `[1, 128, frames]` input. Returns `frames`.
    pub fn compute(&mut self, wav16k: &[f32], out: &mut Vec<f32>) -> usize {
        let frames = Self::frames_for(wav16k.len());
        self.compute_padded(wav16k, frames, out);
        frames
    }

    /// As [`compute`](Self::compute) with each band's row `padded ≥ frames` long, the frames
    /// beyond the signal's being zeros (RVC's constant padding to a multiple of 32).
    pub fn compute_padded(&mut self, wav16k: &[f32], padded: usize, out: &mut Vec<f32>) {
        let frames = Self::frames_for(wav16k.len());
        assert!(padded >= frames, "padded ({padded}) < frames ({frames})");
        out.clear();
        out.resize(Self::N_MELS * padded, 0.0);
        if wav16k.is_empty() {
            out.fill(Self::CLAMP.ln());
            return;
        }
        let half = (Self::N_FFT / 2) as isize;
        let len = wav16k.len() as isize;
        for t in 0..frames {
            let start = (t * Self::HOP) as isize - half;
            for (i, (slot, &w)) in self.frame.iter_mut().zip(&self.window).enumerate() {
                *slot = wav16k[reflect(start + i as isize, len)] * w;
            }
            self.fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)
                .expect("buffers were made by this FFT");
            for (m, c) in self.magnitude.iter_mut().zip(&self.spectrum) {
                *m = (c.re * c.re + c.im * c.im).sqrt();
            }
            for (band, (first, weights)) in self.bands.iter().enumerate() {
                let energy: f32 = weights
                    .iter()
                    .zip(&self.magnitude[*first..])
                    .map(|(w, m)| w * m)
                    .sum();
                out[band * padded + t] = energy.max(Self::CLAMP).ln();
            }
        }
    }
}

/// numpy/torch `reflect` padding: index `i` of a signal of `len` samples mirrored at both ends
/// without repeating the edge sample (repeatedly, for pads longer than the signal).
fn reflect(i: isize, len: isize) -> usize {
    if len == 1 {
        return 0;
    }
    let period = 2 * (len - 1);
    let mut i = i.rem_euclid(period);
    if i >= len {
        i = period - i;
    }
    i as usize
}

/// RVC's cents of salience bin `i`: `20·i + 1997.3794084376191`.
fn bin_cents(i: usize) -> f64 {
    // RVC writes 1997.3794084376191, which is this f64.
    20.0 * i as f64 + 1_997.379_408_437_619
}

/// Bins of the salience.
pub const SALIENCE_BINS: usize = 360;

/// RVC's `to_local_average_cents` for one frame of salience (360 values): the weighted mean of
/// the cents of the 9 bins around the peak, or 0 when the peak is at most `threshold`.
pub fn salience_to_cents(salience: &[f32], threshold: f32) -> f64 {
    // np.argmax: the first maximum.
    let (center, peak) =
        salience
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, s)| {
                if s > best.1 {
                    (i, s)
                } else {
                    best
                }
            });
    // np.max over the zero-padded row.
    if peak.max(0.0) <= threshold {
        return 0.0;
    }
    let (mut product, mut weight) = (0.0f64, 0.0f64);
    let start = center.saturating_sub(4);
    let end = (center + 5).min(salience.len());
    for (i, &s) in salience[start..end].iter().enumerate() {
        product += s as f64 * bin_cents(start + i);
        weight += s as f64;
    }
    if weight == 0.0 {
        0.0
    } else {
        product / weight
    }
}

/// RVC's `decode`: `frames` rows of 360 salience values → Hz per frame into `f0_out` (cleared
/// first), 0 for unvoiced frames.
pub fn decode_salience(salience: &[f32], frames: usize, threshold: f32, f0_out: &mut Vec<f32>) {
    f0_out.clear();
    f0_out.extend(
        salience
            .chunks_exact(SALIENCE_BINS)
            .take(frames)
            .map(|row| {
                let cents = salience_to_cents(row, threshold);
                let hz = 10.0 * (cents / 1200.0).exp2();
                if hz == 10.0 {
                    0.0
                } else {
                    hz as f32
                }
            }),
    );
}

/// An opened RMVPE model with its front end.
#[derive(Debug)]
pub struct Rmvpe {
    session: Session,
    path: PathBuf,
    output: usize,
    mel: MelSpectrogram,
    mel_buf: Vec<f32>,
    salience: Vec<f32>,
}

impl Rmvpe {
    /// RVC's voicing threshold.
    pub const THRESHOLD: f32 = 0.03;

    /// Opens `rmvpe.onnx` and checks its signature: one float32 input `[1, 128, frames]`, a
    /// float32 output `[1, frames, 360]` (names as the file has them).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RvcError> {
        let path = path.as_ref();
        let session = open_session(MODEL, path)?;
        let inputs = signature::describe(session.inputs());
        let outputs = signature::describe(session.outputs());
        let input = signature::first(MODEL, path, Port::Input, &inputs, "log-mel input")?;
        signature::only(MODEL, path, &inputs, &[input.name.as_str()])?;
        signature::check(
            MODEL,
            path,
            Port::Input,
            input,
            TensorElementType::Float32,
            &[
                Dim::Is(1),
                Dim::Is(MelSpectrogram::N_MELS as i64),
                Dim::Any("frames"),
            ],
        )?;
        let output = signature::first(MODEL, path, Port::Output, &outputs, "salience output")?;
        signature::check(
            MODEL,
            path,
            Port::Output,
            output,
            TensorElementType::Float32,
            &[
                Dim::Is(1),
                Dim::Any("frames"),
                Dim::Is(SALIENCE_BINS as i64),
            ],
        )?;
        let output = output.index;
        Ok(Rmvpe {
            session,
            path: path.to_path_buf(),
            output,
            mel: MelSpectrogram::new(),
            mel_buf: Vec::new(),
            salience: Vec::new(),
        })
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The salience of `wav16k` (16 kHz mono) into `out`, frame-major (`out[t * 360 + bin]`).
    /// Returns the frame count, `samples / 160 + 1`.
    pub fn salience(&mut self, wav16k: &[f32], out: &mut Vec<f32>) -> Result<usize, RvcError> {
        if wav16k.is_empty() {
            return Err(RvcError::InputTooShort {
                model: MODEL,
                samples: 0,
                minimum: 1,
            });
        }
        let frames = MelSpectrogram::frames_for(wav16k.len());
        let padded = frames.div_ceil(32) * 32;
        self.mel.compute_padded(wav16k, padded, &mut self.mel_buf);
        let err = inference(MODEL);
        let input = TensorRef::from_array_view((
            [1usize, MelSpectrogram::N_MELS, padded],
            &self.mel_buf[..],
        ))
        .map_err(&err)?;
        let outputs = self.session.run(ort::inputs![input]).map_err(&err)?;
        let (shape, data) = outputs[self.output]
            .try_extract_tensor::<f32>()
            .map_err(&err)?;
        if shape.len() != 3
            || shape[0] != 1
            || shape[2] != SALIENCE_BINS as i64
            || (shape[1] as usize) < frames
        {
            return Err(RvcError::Inference {
                model: MODEL,
                reason: format!(
                    "salience has shape {}, expected [1, {padded}, {SALIENCE_BINS}]",
                    signature::shape_text(shape)
                ),
            });
        }
        out.clear();
        out.extend_from_slice(&data[..frames * SALIENCE_BINS]);
        Ok(frames)
    }

    /// Pitch of `wav16k` (16 kHz mono) in Hz per 10 ms frame into `f0_out` (cleared first),
    /// 0 = unvoiced; `threshold` is RVC's voicing threshold ([`Rmvpe::THRESHOLD`]). Returns
    /// the frame count, `samples / 160 + 1`.
    pub fn run(
        &mut self,
        wav16k: &[f32],
        threshold: f32,
        f0_out: &mut Vec<f32>,
    ) -> Result<usize, RvcError> {
        let mut salience = std::mem::take(&mut self.salience);
        let result = self.salience(wav16k, &mut salience);
        if let Ok(frames) = result {
            decode_salience(&salience, frames, threshold, f0_out);
        }
        self.salience = salience;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_matches_numpy() {
        // np.pad(np.arange(4), 6, mode="reflect")
        let expected = [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3];
        let got: Vec<usize> = (-6..10).map(|i| reflect(i, 4)).collect();
        assert_eq!(&got[..], &expected[..]);
        assert_eq!(reflect(-3, 1), 0);
    }

    #[test]
    fn decode_finds_a_symmetric_peak_exactly() {
        let mut row = vec![0f32; SALIENCE_BINS];
        for (d, s) in [(-2i32, 0.2f32), (-1, 0.6), (0, 0.9), (1, 0.6), (2, 0.2)] {
            row[(100 + d) as usize] = s;
        }
        let cents = salience_to_cents(&row, 0.03);
        assert!((cents - bin_cents(100)).abs() < 1e-9, "{cents}");
        let mut f0 = Vec::new();
        decode_salience(&row, 1, 0.03, &mut f0);
        let hz = 10.0 * (bin_cents(100) / 1200.0).exp2();
        assert!((f0[0] as f64 - hz).abs() < 1e-3, "{} vs {hz}", f0[0]);
        // Below the threshold: unvoiced.
        decode_salience(&row, 1, 0.95, &mut f0);
        assert_eq!(f0, [0.0]);
        // A peak at the edge uses the zero padding.
        let mut edge = vec![0f32; SALIENCE_BINS];
        edge[0] = 0.5;
        edge[1] = 0.5;
        let cents = salience_to_cents(&edge, 0.03);
        assert!((cents - (bin_cents(0) + bin_cents(1)) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn frames_and_layout() {
        let mut mel = MelSpectrogram::new();
        let wav = vec![0.1f32; 1600];
        let mut out = Vec::new();
        assert_eq!(mel.compute(&wav, &mut out), 11);
        assert_eq!(out.len(), 128 * 11);
        mel.compute_padded(&wav, 32, &mut out);
        assert_eq!(out.len(), 128 * 32);
        assert_eq!(out[31], 0.0, "padding is zeros");
        assert!(out[10] != 0.0);
    }
}
