//! One RVC voice opened from its files: ContentVec, the synthesizer, RMVPE when given, and the
//! voice's index behind a one-slot `live` runtime (so a later index swap crossfades), assembled
//! into an [`RvcConverter`]. The plugin's voice host ([`crate::host`]) and the offline render
//! open voices here, the same way.
//!
//! Everything is checked before anything heavy happens: the ContentVec and synthesizer widths
//! must agree (a v1 model with v2 features is refused naming the ContentVec to use) before the
//! index is read, and the index must hold features of that width.
//!
//! Runs on a loader thread (it opens files and builds ONNX sessions), never on the audio thread.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use knnblend::format::IndexHeader;
use knnblend::live::{live, Controller, HeaderValidator, LiveConfig, LoadOutcome};

use crate::f0::F0Method;
use crate::models::{ContentVec, Rmvpe, Synthesizer};
use crate::pipeline::{Controls, Framing, RvcConverter, VoiceModels};
use crate::RvcError;

/// The files of one RVC voice.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VoiceFiles {
    /// The RVC synthesizer (`.onnx`, RVC WebUI's export).
    pub model: PathBuf,
    /// Its index: RVC's `added_*.index`, or a `.kbi` imported from it.
    pub index: PathBuf,
    /// ContentVec: `vec-768-layer-12.onnx` (v2) or `vec-256-layer-9.onnx` (v1).
    pub contentvec: PathBuf,
    /// RMVPE (`rmvpe.onnx`); without it the built-in tracker finds f0.
    pub rmvpe: Option<PathBuf>,
}

/// What an opened voice is, for display.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceInfo {
    /// The synthesizer's file.
    pub model: PathBuf,
    /// `"v1"` (256-d features) or `"v2"` (768-d).
    pub version: &'static str,
    /// The synthesizer's output rate, Hz.
    pub model_rate: u32,
    /// Whether the synthesizer takes pitch.
    pub f0: bool,
    /// Feature dimension.
    pub dim: usize,
    /// Which f0 extractor runs.
    pub f0_method: F0Method,
    /// The index serving retrieval (file name).
    pub index_name: String,
    /// Its file.
    pub index_path: PathBuf,
    /// Its type in one line, e.g. `IVF-Flat` or `IVF1024,PQ128x4fs,RFlat (IVF-PQ FastScan,
    /// k_factor 1)` (empty before the index is loaded).
    pub index_type: String,
    /// Stored vectors.
    pub vectors: u64,
    /// Inverted lists.
    pub lists: usize,
}

/// How far opening a voice has come, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Opening ContentVec.
    ContentVec,
    /// Opening the synthesizer.
    Synthesizer,
    /// Opening RMVPE.
    Rmvpe,
    /// Reading the index: `done` of `total` bytes (`total` 0 when unknown).
    Index {
        /// Bytes read.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// Sizing the converter.
    Converter,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Stage::ContentVec => f.write_str("opening ContentVec"),
            Stage::Synthesizer => f.write_str("opening the synthesizer"),
            Stage::Rmvpe => f.write_str("opening RMVPE"),
            Stage::Index { done, total } if total > 0 => {
                write!(f, "reading the index ({}%)", done * 100 / total)
            }
            Stage::Index { .. } => f.write_str("reading the index"),
            Stage::Converter => f.write_str("preparing the converter"),
        }
    }
}

/// An opened voice: the converter (give it to a stream) and the control side of its index.
pub struct OpenedVoice {
    /// The conversion, ready for [`stream`](crate::stream::stream).
    pub converter: RvcConverter,
    /// The index's `live` controller (slot 0): load another index here and retrieval
    /// crossfades to it.
    pub index: Controller,
    /// What was opened.
    pub info: VoiceInfo,
}

/// The header validator that refuses an index not holding `dim`-dimensional features, as soon
/// as its header is read (before a large index of the wrong features is loaded).
pub fn dim_validator(dim: usize) -> HeaderValidator {
    Arc::new(move |header: &IndexHeader| {
        if header.dim == dim {
            Ok(())
        } else {
            Err(format!(
                "the index holds {}-dimensional features, but the ContentVec model gives {dim} \
                 (a {} index needs {})",
                header.dim,
                if header.dim == 256 { "v1" } else { "v2" },
                if header.dim == 256 {
                    "vec-256-layer-9.onnx and a v1 model"
                } else {
                    "vec-768-layer-12.onnx and a v2 model"
                }
            ))
        }
    })
}

/// The widths of ContentVec (`dim`, from `contentvec`) and the synthesizer must agree.
pub fn check_widths(dim: usize, contentvec: &Path, synth: &Synthesizer) -> Result<(), RvcError> {
    let info = synth.info();
    if dim == info.dim {
        return Ok(());
    }
    Err(RvcError::Other(format!(
        "ContentVec {} gives {dim}-dimensional features but the synthesizer {} takes {} ({} \
         model): use {} with this model",
        contentvec.display(),
        synth.path().display(),
        info.dim,
        info.version(),
        if info.dim == 256 {
            "vec-256-layer-9.onnx"
        } else {
            "vec-768-layer-12.onnx"
        }
    )))
}

/// Loads `path` into slot 0 of `index`, reporting progress, and returns what was published.
pub fn load_index(
    index: &Controller,
    path: &Path,
    progress: &mut dyn FnMut(Stage),
) -> Result<Arc<knnblend::live::IndexInfo>, RvcError> {
    let ticket = index.load(0, path);
    loop {
        if let Some(outcome) = ticket.wait_timeout(Duration::from_millis(50)) {
            return match outcome {
                LoadOutcome::Published(info) => Ok(info),
                LoadOutcome::Failed(e) => Err(RvcError::Other(e.to_string())),
                LoadOutcome::Superseded => {
                    Err(RvcError::Other("the index load was superseded".into()))
                }
            };
        }
        let (done, total) = ticket.progress();
        progress(Stage::Index { done, total });
    }
}

/// Opens the voice in `files` for `framing`, its converter reading the knobs from `controls`.
pub fn open_voice(
    files: &VoiceFiles,
    framing: Framing,
    controls: Arc<Controls>,
    seed: u64,
    progress: &mut dyn FnMut(Stage),
) -> Result<OpenedVoice, RvcError> {
    progress(Stage::ContentVec);
    let contentvec = ContentVec::open(&files.contentvec)?;
    progress(Stage::Synthesizer);
    let synth = Synthesizer::open(&files.model)?;
    check_widths(contentvec.dim(), contentvec.path(), &synth)?;
    let rmvpe = match &files.rmvpe {
        Some(path) => {
            progress(Stage::Rmvpe);
            Some(Rmvpe::open(path)?)
        }
        None => None,
    };
    let dim = contentvec.dim();
    let (index, retrieval) = live(LiveConfig {
        slots: 1,
        max_dim: dim,
        header_validator: Some(dim_validator(dim)),
        ..LiveConfig::default()
    });
    let published = load_index(&index, &files.index, progress)?;
    progress(Stage::Converter);
    let synth_info = synth.info();
    let models = VoiceModels {
        contentvec,
        synth,
        rmvpe,
    };
    let converter = RvcConverter::new(models, retrieval, framing, controls, seed)?;
    let info = VoiceInfo {
        model: files.model.clone(),
        version: synth_info.version(),
        model_rate: synth_info.sample_rate,
        f0: synth_info.f0,
        dim,
        f0_method: converter.f0_method(),
        index_name: published.name.clone(),
        index_path: published.path.clone(),
        index_type: published.description.clone(),
        vectors: published.ntotal as u64,
        lists: published.nlist,
    };
    Ok(OpenedVoice {
        converter,
        index,
        info,
    })
}
