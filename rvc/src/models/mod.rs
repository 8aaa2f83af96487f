//! The three ONNX models of the RVC path, each opened from a path with its signature checked.
//!
//! - [`ContentVec`]: 16 kHz audio → content features (256 channels for v1, 768 for v2).
//! - [`Synthesizer`]: the user's voice, as RVC WebUI's `infer/modules/onnx/export.py` exports it.
//! - [`Rmvpe`]: pitch, with RVC's log-mel front end ([`MelSpectrogram`]) and salience decoding
//!   ([`decode_salience`]) done here in Rust.
//!
//! Every model is opened with one intra-op and one inter-op thread, thread spinning off and all
//! graph optimisations on (the worker thread runs one model at a time; spinning would burn a
//! core the host needs). Its inputs and outputs are read from the session and checked by name
//! (where RVC fixes the names), element type and rank (and static sizes), and a mismatch is
//! refused with a message naming the input, e.g. "synthesizer input `pitchf` has type int64,
//! expected float32".
//!
//! The first model opened loads ONNX Runtime with the default search
//! ([`OnnxRuntime::get_or_load`](crate::runtime::OnnxRuntime::get_or_load)) unless the caller
//! loaded one before.
//!
//! None of this runs on the audio thread. `run` methods reuse the caller's output buffers and
//! their own scratch; ONNX Runtime itself allocates per run.

mod contentvec;
mod rmvpe;
pub(crate) mod signature;
mod synth;

pub use contentvec::ContentVec;
pub use rmvpe::{decode_salience, salience_to_cents, MelSpectrogram, Rmvpe};
pub use synth::{SynthInfo, Synthesizer};

use crate::error::{ModelKind, RvcError};
use crate::runtime::OnnxRuntime;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Opens `path` as a session with the crate's settings.
pub(crate) fn open_session(model: ModelKind, path: &Path) -> Result<Session, RvcError> {
    let runtime = OnnxRuntime::get_or_load()?;
    let fail = |reason: String| RvcError::ModelOpen {
        model,
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(fail(if path.exists() {
            "it is not a file".into()
        } else {
            "no such file".into()
        }));
    }
    let opened = catch_unwind(AssertUnwindSafe(|| -> Result<Session, String> {
        let text = |e: ort::Error<_>| e.to_string();
        Session::builder(runtime.environment())
            .map_err(|e| e.to_string())?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(text)?
            .with_intra_threads(1)
            .map_err(text)?
            .with_inter_threads(1)
            .map_err(text)?
            .with_intra_op_spinning(false)
            .map_err(text)?
            .with_inter_op_spinning(false)
            .map_err(text)?
            .commit_from_file(path)
            .map_err(|e| e.to_string())
    }));
    match opened {
        Ok(Ok(session)) => Ok(session),
        Ok(Err(reason)) => Err(fail(reason)),
        Err(_) => Err(fail(
            "ONNX Runtime's wrapper panicked while opening it".into(),
        )),
    }
}

/// A run's error as [`RvcError::Inference`].
pub(crate) fn inference(model: ModelKind) -> impl Fn(ort::Error) -> RvcError {
    move |e| RvcError::Inference {
        model,
        reason: e.to_string(),
    }
}
