//! Errors of the RVC path: each says what is wrong and what to do about it.

use std::fmt;
use std::path::PathBuf;

/// Which of the three ONNX models an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// ContentVec / HuBERT (`vec-768-layer-12.onnx`, `vec-256-layer-9.onnx`).
    ContentVec,
    /// The user's RVC synthesizer (RVC WebUI's ONNX export).
    Synthesizer,
    /// RMVPE (`rmvpe.onnx`), the pitch estimator.
    Rmvpe,
}

impl fmt::Display for ModelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ModelKind::ContentVec => "ContentVec",
            ModelKind::Synthesizer => "synthesizer",
            ModelKind::Rmvpe => "RMVPE",
        })
    }
}

/// A model's input or output, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// A graph input.
    Input,
    /// A graph output.
    Output,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Port::Input => "input",
            Port::Output => "output",
        })
    }
}

/// How to get ONNX Runtime, appended to every "not found" message.
pub const HOW_TO_GET_ONNXRUNTIME: &str = "get it with `pip install onnxruntime` (the wheel \
     carries onnxruntime/capi/libonnxruntime.so.*; point ORT_DYLIB_PATH at it), run `cargo xtask \
     setup` in a knnblend checkout (installs it into target/venv), or put libonnxruntime.so \
     beside the plugin";

/// What can go wrong while loading or running the RVC path.
#[derive(Debug, thiserror::Error)]
pub enum RvcError {
    /// No ONNX Runtime library was found in any searched place.
    #[error(
        "ONNX Runtime (libonnxruntime) was not found; searched:\n{}\n{HOW_TO_GET_ONNXRUNTIME}",
        .searched.iter().map(|s| format!("  - {s}")).collect::<Vec<_>>().join("\n")
    )]
    RuntimeNotFound {
        /// Every place looked at, in order, each with what was found there.
        searched: Vec<String>,
    },

    /// The file exists but could not be loaded as a shared library.
    #[error("could not load ONNX Runtime from {}: {reason}; {HOW_TO_GET_ONNXRUNTIME}", .path.display())]
    RuntimeLoad {
        /// The library file.
        path: PathBuf,
        /// What the dynamic loader said.
        reason: String,
    },

    /// The library loaded but is not an ONNX Runtime this build can use.
    #[error(
        "the ONNX Runtime at {} (version {version}) cannot be used: {reason}; this build needs \
         ONNX Runtime 1.{}.0 or newer (`pip install onnxruntime==1.32.0`)",
        .path.display(), ort::MINOR_VERSION
    )]
    RuntimeIncompatible {
        /// The library file.
        path: PathBuf,
        /// The version it reports (`unknown` when it reports none).
        version: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// An earlier load failed in a way that leaves the process unable to load ONNX Runtime.
    #[error("ONNX Runtime cannot be used in this process: {reason}")]
    RuntimeUnusable {
        /// What happened.
        reason: String,
    },

    /// The model file could not be opened by ONNX Runtime (missing, truncated, not ONNX, or
    /// using operators this ONNX Runtime lacks).
    #[error("could not open the {model} model {}: {reason}", .path.display())]
    ModelOpen {
        /// Which model.
        model: ModelKind,
        /// The model file.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
    },

    /// A required input or output is not in the model.
    #[error(
        "{model} model {} has no {port} `{name}` (it has: {}); is this the right file?",
        .path.display(), list(.found)
    )]
    MissingPort {
        /// Which model.
        model: ModelKind,
        /// The model file.
        path: PathBuf,
        /// Input or output.
        port: Port,
        /// The name that is required.
        name: String,
        /// The names the model has.
        found: Vec<String>,
    },

    /// The model has an input it is not known to take.
    #[error(
        "{model} model {} has an unexpected input `{name}` (expected only: {})",
        .path.display(), list(.expected)
    )]
    UnexpectedInput {
        /// Which model.
        model: ModelKind,
        /// The model file.
        path: PathBuf,
        /// The unknown input.
        name: String,
        /// The inputs such a model takes.
        expected: Vec<String>,
    },

    /// An input or output has the wrong element type.
    #[error("{model} {port} `{name}` has type {found}, expected {expected} (in {})", .path.display())]
    WrongType {
        /// Which model.
        model: ModelKind,
        /// The model file.
        path: PathBuf,
        /// Input or output.
        port: Port,
        /// Its name.
        name: String,
        /// The declared type.
        found: String,
        /// The type RVC uses.
        expected: String,
    },

    /// An input or output has the wrong rank or a wrong static dimension.
    #[error("{model} {port} `{name}` has shape {found}, expected {expected} (in {})", .path.display())]
    WrongShape {
        /// Which model.
        model: ModelKind,
        /// The model file.
        path: PathBuf,
        /// Input or output.
        port: Port,
        /// Its name.
        name: String,
        /// The declared shape (`?` for a dynamic axis).
        found: String,
        /// The shape RVC uses.
        expected: String,
    },

    /// The synthesizer makes a number of samples per feature frame that no RVC model makes.
    #[error(
        "synthesizer {} makes {hop} samples per feature frame ({samples} for {frames} frames); \
         RVC models make 320 (32 kHz), 400 (40 kHz) or 480 (48 kHz)",
        .path.display()
    )]
    UnsupportedHop {
        /// The model file.
        path: PathBuf,
        /// Output samples per frame (rounded down).
        hop: usize,
        /// Frames of the probe run.
        frames: usize,
        /// Samples it returned.
        samples: usize,
    },

    /// What the model's metadata says contradicts what the model is.
    #[error("{model} model {} is labelled {label} but {actual}", .path.display())]
    LabelMismatch {
        /// Which model.
        model: ModelKind,
        /// The model file.
        path: PathBuf,
        /// The label and where it comes from (e.g. "v2 (metadata `version`)").
        label: String,
        /// What the model really is.
        actual: String,
    },

    /// A probe run at open time, which determines what a model is, failed.
    #[error("{model} model {} failed its probe run: {reason}", .path.display())]
    Probe {
        /// Which model.
        model: ModelKind,
        /// The model file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// The caller passed buffers whose lengths do not fit together.
    #[error("{model}: `{name}` has {found} values, expected {expected}")]
    InputLength {
        /// Which model.
        model: ModelKind,
        /// The argument.
        name: &'static str,
        /// Its length.
        found: usize,
        /// The length required.
        expected: usize,
    },

    /// Too little audio for even one frame.
    #[error("{model}: {samples} samples is too short; at least {minimum} are needed")]
    InputTooShort {
        /// Which model.
        model: ModelKind,
        /// Samples given.
        samples: usize,
        /// Samples needed for one frame.
        minimum: usize,
    },

    /// ONNX Runtime failed while running the model, or returned something of the wrong shape.
    #[error("{model} inference failed: {reason}")]
    Inference {
        /// Which model.
        model: ModelKind,
        /// What went wrong.
        reason: String,
    },

    /// Anything not yet given its own variant.
    #[error("{0}")]
    Other(String),
}

fn list<S: AsRef<str>>(names: &[S]) -> String {
    if names.is_empty() {
        return "nothing".into();
    }
    names
        .iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}
