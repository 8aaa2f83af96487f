//! ContentVec (HuBERT) as RVC runs it from ONNX.
//!
//! RVC's `onnx_inference.py` feeds the first input with 16 kHz audio of shape `[1, 1, T]` and
//! reads the first output, `[1, frames, C]`: C = 256 for v1 voices (`vec-256-layer-9.onnx`)
//! and 768 for v2 (`vec-768-layer-12.onnx`). The released files call them `source` and `embed`;
//! whatever they are called here, their dtype and rank are checked. HuBERT's convolutional
//! front end has a receptive field of 400 samples and a hop of 320 (20 ms), so
//! `frames = floor((T − 400) / 320) + 1` ([`ContentVec::frames_for`]).

use super::signature::{self, Dim, PortInfo};
use super::{inference, open_session};
use crate::error::{ModelKind, Port, RvcError};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};
use std::path::{Path, PathBuf};

const MODEL: ModelKind = ModelKind::ContentVec;

/// An opened ContentVec model.
#[derive(Debug)]
pub struct ContentVec {
    session: Session,
    path: PathBuf,
    output: usize,
    dim: usize,
}

impl ContentVec {
    /// Receptive field of HuBERT's front end, in 16 kHz samples.
    pub const WINDOW: usize = 400;
    /// Hop between frames, in 16 kHz samples (20 ms).
    pub const HOP: usize = 320;
    /// The channel counts RVC's ContentVec models have: v1, v2.
    pub const DIMS: [usize; 2] = [256, 768];

    /// Frames for `samples` of 16 kHz audio: `floor((samples − 400) / 320) + 1`, 0 below 400.
    pub fn frames_for(samples: usize) -> usize {
        if samples < Self::WINDOW {
            0
        } else {
            (samples - Self::WINDOW) / Self::HOP + 1
        }
    }

    /// Opens the model and checks its signature. When its channel count is not declared, one
    /// probe run on a second of quiet noise determines it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RvcError> {
        let path = path.as_ref();
        let session = open_session(MODEL, path)?;
        let inputs = signature::describe(session.inputs());
        let outputs = signature::describe(session.outputs());
        let input = signature::first(MODEL, path, Port::Input, &inputs, "audio input")?;
        signature::only(MODEL, path, &inputs, &[input.name.as_str()])?;
        signature::check(
            MODEL,
            path,
            Port::Input,
            input,
            TensorElementType::Float32,
            &[Dim::Is(1), Dim::Is(1), Dim::Any("T")],
        )?;
        let output = signature::first(MODEL, path, Port::Output, &outputs, "feature output")?;
        let dims = [Dim::Is(1), Dim::Any("frames"), Dim::OneOf(&[256, 768])];
        signature::check(
            MODEL,
            path,
            Port::Output,
            output,
            TensorElementType::Float32,
            &dims,
        )?;
        let output_index = output.index;
        let declared = output.shape[2];
        let mut model = ContentVec {
            session,
            path: path.to_path_buf(),
            output: output_index,
            dim: usize::try_from(declared).unwrap_or(0),
        };
        if declared < 0 {
            model.dim = model.probe_dim(output, &dims)?;
        }
        Ok(model)
    }

    /// Runs one second of low noise and reads the channel count from the result.
    fn probe_dim(&mut self, output: &PortInfo, dims: &[Dim]) -> Result<usize, RvcError> {
        let wav: Vec<f32> = (0..16_000u32)
            .map(|i| 1e-3 * ((i.wrapping_mul(2_654_435_761) >> 16) as f32 / 65_536.0 - 0.5))
            .collect();
        let mut out = Vec::new();
        let frames = self.run_raw(&wav, &mut out).map_err(|e| RvcError::Probe {
            model: MODEL,
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        let dim = out.len() / frames.max(1);
        if !Self::DIMS.contains(&dim) {
            let mut shown = output.clone();
            shown.shape = vec![1, frames as i64, dim as i64];
            return signature::check(
                MODEL,
                &self.path,
                Port::Output,
                &shown,
                TensorElementType::Float32,
                dims,
            )
            .map(|_| dim);
        }
        Ok(dim)
    }

    /// Channels per frame: 256 (v1) or 768 (v2).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// `"v1"` (256 channels) or `"v2"` (768).
    pub fn version(&self) -> &'static str {
        if self.dim == 256 {
            "v1"
        } else {
            "v2"
        }
    }

    /// The model file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Features of `wav16k` (16 kHz mono), frame-major (`out[frame * dim + channel]`), into
    /// `out` (cleared first, its capacity reused). Returns the frame count.
    pub fn run(&mut self, wav16k: &[f32], out: &mut Vec<f32>) -> Result<usize, RvcError> {
        let frames = self.run_raw(wav16k, out)?;
        if out.len() != frames * self.dim {
            return Err(RvcError::Inference {
                model: MODEL,
                reason: format!(
                    "returned {} values for {frames} frames, expected {} channels per frame",
                    out.len(),
                    self.dim
                ),
            });
        }
        Ok(frames)
    }

    fn run_raw(&mut self, wav16k: &[f32], out: &mut Vec<f32>) -> Result<usize, RvcError> {
        if wav16k.len() < Self::WINDOW {
            return Err(RvcError::InputTooShort {
                model: MODEL,
                samples: wav16k.len(),
                minimum: Self::WINDOW,
            });
        }
        let source = TensorRef::from_array_view(([1usize, 1, wav16k.len()], wav16k))
            .map_err(inference(MODEL))?;
        let outputs = self
            .session
            .run(ort::inputs![source])
            .map_err(inference(MODEL))?;
        let (shape, data) = outputs[self.output]
            .try_extract_tensor::<f32>()
            .map_err(inference(MODEL))?;
        if shape.len() != 3 || shape[0] != 1 {
            return Err(RvcError::Inference {
                model: MODEL,
                reason: format!(
                    "returned shape {}, expected [1, frames, channels]",
                    signature::shape_text(shape)
                ),
            });
        }
        out.clear();
        out.extend_from_slice(data);
        Ok(shape[1] as usize)
    }
}
