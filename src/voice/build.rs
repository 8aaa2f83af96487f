//! `knnblend build`: voice indexes from recordings ([`build_from_audio`]) and from RVC feature
//! folders ([`build_from_npy`]), trained with faiss (feature `faiss`).
//!
//! The recipe is RVC's `train_index`: rows concatenated in file order, shuffled (here with a
//! fixed seed and numpy's legacy shuffle, see [`shuffle`](super::shuffle)), compressed to 10 000
//! k-means centroids when there are more than 200 000 (RVC feature folders only, or when asked
//! with `compress`), `IVF{n_list},Flat` with `n_list = min(int(16·√N), N // 39)` (at least 1),
//! trained on all rows, every row added (ids are positions in the shuffled order), n_probe 1.
//! The index is written atomically as `.kbi` with metadata saying what the vectors are.
//!
//! Options from the retrieval literature: cosine similarity (`metric: InnerProduct`, rows
//! L2-normalised with an epsilon), α-query expansion of the database (each row replaced by the
//! `max(sim, 0)^α`-weighted sum of its `K` nearest rows by cosine, itself included, then
//! renormalised), k-means compression to `N` rows, and an explicit `n_list`.
//!
//! Voice indexes ([`FeatureSpec`] features) carry the absolute envelope in the second half of
//! each vector: normalisation and expansion act on the first (searched) half only; the second
//! half is averaged with the same weights, so it stays an envelope.

use std::path::{Path, PathBuf};

use faiss::cluster::{Clustering, ClusteringParameters};
use faiss::index::{Index, IndexImpl};
use faiss::MetricType;

use super::audio_file::{collect_audio_files, read_audio, AudioError};
use super::extract::{Extractor, SilenceRule};
use super::features::FeatureSpec;
use super::npy::{read_npy_rows, resolve_npy_inputs, rvc_feature_kind, NpyError};
use super::shuffle::shuffle_rows;
use crate::format::{write_kbi, FormatError, IndexParts, Metric};
use crate::index::{rvc_nlist, FaissIvf};

/// RVC compresses feature sets larger than this …
pub const RVC_COMPRESS_ABOVE: usize = 200_000;
/// … to this many k-means centroids.
pub const RVC_COMPRESS_TO: usize = 10_000;
/// Epsilon of the L2 normalisation for cosine indexes: rows are divided by `max(‖v‖, ε)`.
pub const NORMALISE_EPSILON: f32 = 1e-12;

/// α-query expansion of the database vectors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlphaExpand {
    /// Neighbours per row (the row itself included), at least 1.
    pub k: usize,
    /// Exponent α applied to the (non-negative part of the) cosine similarity.
    pub alpha: f32,
}

/// How to build.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// Distance metric (`InnerProduct` = cosine on L2-normalised rows). Default L2.
    pub metric: Metric,
    /// Number of lists; default RVC's rule.
    pub nlist: Option<usize>,
    /// Compress to this many k-means centroids first (when there are more rows).
    pub compress: Option<usize>,
    /// α-query expansion.
    pub alpha_expand: Option<AlphaExpand>,
    /// Seed of the shuffle (numpy legacy `np.random.seed`) and of k-means.
    pub seed: u32,
    /// Silent frames of recordings below this are dropped (audio builds).
    pub silence: SilenceRule,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            metric: Metric::L2,
            nlist: None,
            compress: None,
            alpha_expand: None,
            seed: 0,
            silence: SilenceRule::default(),
        }
    }
}

/// Stages reported while building.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildStage {
    /// Decoding audio files (files done, total).
    Decoding,
    /// Extracting features (files done, total).
    Extracting,
    /// Reading `.npy` files (files done, total).
    Reading,
    /// Shuffling rows.
    Shuffling,
    /// k-means compression.
    Compressing,
    /// α-query expansion.
    Expanding,
    /// Training the coarse quantiser and adding rows.
    Training,
    /// Writing the `.kbi`.
    Writing,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An audio file could not be read.
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// A feature file could not be read.
    #[error(transparent)]
    Npy(#[from] NpyError),
    /// A recording's sample rate is too low for the features.
    #[error("{path}: a sample rate of {rate} Hz is too low for features up to {f_max} Hz (at least {min} Hz needed)")]
    SampleRate {
        /// The file.
        path: PathBuf,
        /// Its rate.
        rate: u32,
        /// The features' top band edge.
        f_max: f32,
        /// The lowest rate accepted.
        min: u32,
    },
    /// Nothing usable was found.
    #[error("{0}")]
    NoData(String),
    /// The options do not make sense.
    #[error("{0}")]
    Options(String),
    /// faiss failed, or the result could not be written.
    #[error(transparent)]
    Format(#[from] FormatError),
}

/// What a build made.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildSummary {
    /// The file written.
    pub output: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Feature kind.
    pub features: String,
    /// Vector dimension.
    pub dim: usize,
    /// Vectors stored.
    pub vectors: usize,
    /// Lists.
    pub nlist: usize,
    /// Frames (rows) read before compression.
    pub input_frames: usize,
    /// Silent frames dropped (audio builds).
    pub dropped_frames: usize,
    /// Source files.
    pub sources: usize,
    /// Duration of the source audio, seconds (0 for feature files).
    pub duration_seconds: f64,
}

/// Which part of a row is searched (and normalised) and which is carried along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorLayout {
    /// The whole row is searched.
    Plain,
    /// [`FeatureSpec`] vectors: the first `bands` values are searched, the rest (the
    /// down-weighted absolute envelope) is carried.
    Voice {
        /// Envelope bands.
        bands: usize,
    },
}

impl VectorLayout {
    fn searched(self, dim: usize) -> usize {
        match self {
            VectorLayout::Plain => dim,
            VectorLayout::Voice { bands } => bands.min(dim),
        }
    }
}

fn faiss_err(what: &str, e: faiss::error::Error) -> BuildError {
    BuildError::Format(FormatError::InvalidParts(format!(
        "faiss failed to {what}: {e}"
    )))
}

fn check_options(opts: &BuildOptions) -> Result<(), BuildError> {
    if opts.nlist == Some(0) {
        return Err(BuildError::Options("--nlist must be at least 1".into()));
    }
    if opts.compress == Some(0) {
        return Err(BuildError::Options("--compress must be at least 1".into()));
    }
    if let Some(a) = opts.alpha_expand {
        if a.k == 0 || a.k > 1024 {
            return Err(BuildError::Options(format!(
                "--alpha-expand must be 1 to 1024 neighbours, not {}",
                a.k
            )));
        }
        if !(a.alpha.is_finite() && a.alpha >= 0.0) {
            return Err(BuildError::Options(format!(
                "--alpha must be a number >= 0, not {}",
                a.alpha
            )));
        }
    }
    Ok(())
}

/// k-means centroids of `rows` (faiss, 25 iterations, seeded), `k` of them.
pub fn kmeans(rows: &[f32], dim: usize, k: usize, seed: u32) -> Result<Vec<f32>, BuildError> {
    let mut params = ClusteringParameters::new();
    params.set_seed(seed);
    params.set_niter(25);
    let mut clustering = Clustering::new_with_params(dim as u32, k as u32, &params)
        .map_err(|e| faiss_err("set up k-means", e))?;
    let mut flat: IndexImpl = faiss::index_factory(dim as u32, "Flat", MetricType::L2)
        .map_err(|e| faiss_err("create a flat index", e))?;
    clustering
        .train(rows, &mut flat)
        .map_err(|e| faiss_err("run k-means", e))?;
    let centroids = clustering
        .centroids()
        .map_err(|e| faiss_err("read centroids", e))?;
    Ok(centroids.into_iter().flatten().copied().collect())
}

/// Divides the searched part of every row by `max(‖part‖, ε)`.
pub fn normalise_rows(rows: &mut [f32], dim: usize, layout: VectorLayout) {
    let s = layout.searched(dim);
    for row in rows.chunks_exact_mut(dim) {
        let norm = row[..s]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(NORMALISE_EPSILON);
        row[..s].iter_mut().for_each(|v| *v /= norm);
    }
}

/// α-query expansion: every row becomes the `max(cos, 0)^α`-weighted sum of its `k` nearest rows
/// by cosine of the searched part (itself included); the searched part is then renormalised
/// (to unit length for cosine indexes, to its former length otherwise) and the carried part
/// divided by the weight sum. Exact neighbour search with faiss (cost `N² · dim`).
pub fn alpha_expand(
    rows: &[f32],
    dim: usize,
    layout: VectorLayout,
    expand: AlphaExpand,
    unit: bool,
) -> Result<Vec<f32>, BuildError> {
    let s = layout.searched(dim);
    let n = rows.len() / dim;
    let k = expand.k.min(n).max(1);
    let mut unit_rows: Vec<f32> = rows
        .chunks_exact(dim)
        .flat_map(|r| r[..s].iter().copied())
        .collect();
    normalise_rows(&mut unit_rows, s, VectorLayout::Plain);
    let mut flat: IndexImpl = faiss::index_factory(s as u32, "Flat", MetricType::InnerProduct)
        .map_err(|e| faiss_err("create a flat index", e))?;
    flat.add(&unit_rows).map_err(|e| faiss_err("add rows", e))?;
    let found = flat
        .search(&unit_rows, k)
        .map_err(|e| faiss_err("search neighbours", e))?;
    let mut out = vec![0f32; rows.len()];
    for i in 0..n {
        let o = &mut out[i * dim..(i + 1) * dim];
        let mut wsum = 0f64;
        for j in 0..k {
            let Some(label) = found.labels[i * k + j].get() else {
                continue;
            };
            let sim = found.distances[i * k + j].max(0.0);
            let w = sim.powf(expand.alpha);
            if w.is_nan() || w <= 0.0 {
                continue;
            }
            wsum += w as f64;
            let src = &rows[label as usize * dim..(label as usize + 1) * dim];
            o.iter_mut().zip(src).for_each(|(o, &v)| *o += w * v);
        }
        let orig = &rows[i * dim..(i + 1) * dim];
        if wsum <= 0.0 {
            o.copy_from_slice(orig);
            continue;
        }
        let target = if unit {
            1.0
        } else {
            orig[..s].iter().map(|v| v * v).sum::<f32>().sqrt()
        };
        let norm = o[..s]
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(NORMALISE_EPSILON);
        o[..s].iter_mut().for_each(|v| *v *= target / norm);
        o[s..]
            .iter_mut()
            .for_each(|v| *v = (*v as f64 / wsum) as f32);
    }
    Ok(out)
}

/// What [`build_parts`] did besides the index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipeFacts {
    /// Rows in.
    pub rows_in: usize,
    /// Rows after compression (`None`: not compressed).
    pub compressed_to: Option<usize>,
    /// Lists.
    pub nlist: usize,
}

/// RVC's recipe on `rows` (`n × dim`): shuffle, optional compression, normalisation and
/// expansion, `IVF{n_list},Flat` trained and filled with faiss, n_probe 1. `rvc_compress` applies
/// RVC's automatic compression (above 200 000 rows to 10 000). The parts' metadata is empty.
pub fn build_parts(
    rows: Vec<f32>,
    dim: usize,
    layout: VectorLayout,
    opts: &BuildOptions,
    rvc_compress: bool,
    progress: &mut dyn FnMut(BuildStage, u64, u64),
) -> Result<(IndexParts, RecipeFacts), BuildError> {
    check_options(opts)?;
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(BuildError::NoData(format!(
            "rows are not whole vectors of dimension {dim}"
        )));
    }
    let n = rows.len() / dim;
    if n == 0 {
        return Err(BuildError::NoData("no feature rows to index".into()));
    }
    let mut facts = RecipeFacts {
        rows_in: n,
        ..Default::default()
    };
    progress(BuildStage::Shuffling, 0, 1);
    let mut rows = shuffle_rows(&rows, dim, opts.seed);
    progress(BuildStage::Shuffling, 1, 1);
    let compress = opts
        .compress
        .or((rvc_compress && n > RVC_COMPRESS_ABOVE).then_some(RVC_COMPRESS_TO));
    if let Some(c) = compress.filter(|&c| c < n) {
        progress(BuildStage::Compressing, 0, 1);
        rows = kmeans(&rows, dim, c, opts.seed)?;
        facts.compressed_to = Some(c);
        progress(BuildStage::Compressing, 1, 1);
    }
    let unit = opts.metric == Metric::InnerProduct;
    if unit {
        normalise_rows(&mut rows, dim, layout);
    }
    if let Some(expand) = opts.alpha_expand {
        progress(BuildStage::Expanding, 0, 1);
        rows = alpha_expand(&rows, dim, layout, expand, unit)?;
        progress(BuildStage::Expanding, 1, 1);
    }
    let n = rows.len() / dim;
    let nlist = opts.nlist.unwrap_or_else(|| rvc_nlist(n)).clamp(1, n);
    facts.nlist = nlist;
    progress(BuildStage::Training, 0, 1);
    let ivf = FaissIvf::build(dim, nlist, opts.metric, &rows, &rows)?;
    let mut parts = ivf.to_parts()?;
    parts.nprobe = 1;
    progress(BuildStage::Training, 1, 1);
    Ok((parts, facts))
}

fn recipe_json(
    opts: &BuildOptions,
    facts: &RecipeFacts,
    builder: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    extra.insert("builder".into(), builder.into());
    extra.insert("tool_version".into(), env!("CARGO_PKG_VERSION").into());
    extra.insert(
        "recipe".into(),
        serde_json::json!({
            "shuffle": "numpy legacy RandomState shuffle",
            "seed": opts.seed,
            "rows_in": facts.rows_in,
            "compressed_to": facts.compressed_to,
            "nlist": facts.nlist,
            "metric": opts.metric.name(),
            "alpha_expand": opts.alpha_expand.map(|a| serde_json::json!({"k": a.k, "alpha": a.alpha})),
        }),
    );
    extra
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn write(
    output: &Path,
    parts: &IndexParts,
    progress: &mut dyn FnMut(BuildStage, u64, u64),
) -> Result<u64, BuildError> {
    progress(BuildStage::Writing, 0, 1);
    let bytes = write_kbi(output, parts)?;
    progress(BuildStage::Writing, 1, 1);
    Ok(bytes)
}

/// `knnblend build --npy DIR_OR_FILES… -o OUTPUT`: RVC's recipe on RVC feature files (see
/// [`resolve_npy_inputs`] for how inputs are found). The feature kind is `rvc-v1-256` /
/// `rvc-v2-768` by dimension (`npy-<dim>` otherwise).
pub fn build_from_npy(
    inputs: &[PathBuf],
    output: &Path,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(BuildStage, u64, u64),
) -> Result<BuildSummary, BuildError> {
    check_options(opts)?;
    let files = resolve_npy_inputs(inputs)?;
    let data = read_npy_rows(&files, &mut |d, t| progress(BuildStage::Reading, d, t))?;
    let (dim, frames) = (data.dim, data.frames);
    let (mut parts, facts) =
        build_parts(data.rows, dim, VectorLayout::Plain, opts, true, progress)?;
    let features = rvc_feature_kind(dim);
    parts.metadata.features = features.clone();
    parts.metadata.feature_params =
        serde_json::json!({ "dim": dim, "source": "RVC feature files (.npy)" });
    parts.metadata.sources = data.files.iter().map(|p| file_name(p)).collect();
    parts.metadata.frames = frames as u64;
    parts.metadata.extra = recipe_json(opts, &facts, "knnblend build --npy");
    let bytes = write(output, &parts, progress)?;
    Ok(BuildSummary {
        output: output.to_path_buf(),
        bytes,
        features,
        dim,
        vectors: parts.ntotal(),
        nlist: parts.nlist(),
        input_frames: frames,
        dropped_frames: 0,
        sources: data.files.len(),
        duration_seconds: 0.0,
    })
}

/// `knnblend build --audio FILES_OR_DIRS… -o OUTPUT`: decode every recording (directories
/// searched recursively), extract `spec` features at the file's own rate (they are defined in
/// physical units, so no resampling is needed; rates below `2 × f_max` are refused), drop silent
/// frames, compose speaker-normalised vectors, and index them with RVC's recipe.
pub fn build_from_audio(
    inputs: &[PathBuf],
    output: &Path,
    spec: &FeatureSpec,
    opts: &BuildOptions,
    progress: &mut dyn FnMut(BuildStage, u64, u64),
) -> Result<BuildSummary, BuildError> {
    check_options(opts)?;
    spec.validate().map_err(BuildError::Options)?;
    let files = collect_audio_files(inputs)?;
    if files.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(BuildError::NoData(format!(
            "no audio files (wav, flac, mp3, ogg) in {}",
            names.join(", ")
        )));
    }
    let mut envelopes = Vec::new();
    let (mut kept, mut dropped, mut seconds) = (0usize, 0usize, 0f64);
    let mut extractors: Vec<(u32, Extractor)> = Vec::new();
    let min_rate = (2.0 * spec.f_max_hz).ceil() as u32;
    for (i, path) in files.iter().enumerate() {
        progress(BuildStage::Decoding, i as u64, files.len() as u64);
        let audio = read_audio(path)?;
        if audio.sample_rate < min_rate {
            return Err(BuildError::SampleRate {
                path: path.clone(),
                rate: audio.sample_rate,
                f_max: spec.f_max_hz,
                min: min_rate,
            });
        }
        progress(BuildStage::Extracting, i as u64, files.len() as u64);
        let ex = match extractors.iter().position(|(r, _)| *r == audio.sample_rate) {
            Some(p) => &extractors[p].1,
            None => {
                extractors.push((
                    audio.sample_rate,
                    Extractor::new(spec, audio.sample_rate as f32),
                ));
                &extractors.last().expect("just pushed").1
            }
        };
        let got = ex.extract(&audio.mono(), &opts.silence);
        envelopes.extend_from_slice(&got.rows);
        kept += got.frames;
        dropped += got.dropped;
        seconds += audio.seconds();
    }
    progress(
        BuildStage::Extracting,
        files.len() as u64,
        files.len() as u64,
    );
    if kept == 0 {
        return Err(BuildError::NoData(format!(
            "all {dropped} frames of the {} recording(s) are silent (below {} dBFS)",
            files.len(),
            opts.silence.floor_db
        )));
    }
    let (rows, mean) = spec.speaker_rows(&envelopes);
    drop(envelopes);
    let layout = VectorLayout::Voice { bands: spec.bands };
    let (mut parts, facts) = build_parts(rows, spec.dim(), layout, opts, false, progress)?;
    let sources = files.iter().map(|p| file_name(p)).collect();
    let mut meta = spec.metadata(sources, kept as u64, seconds);
    meta.extra = recipe_json(opts, &facts, "knnblend build --audio");
    meta.extra
        .insert("speaker_mean".into(), serde_json::json!(mean));
    meta.extra
        .insert("dropped_silent_frames".into(), dropped.into());
    parts.metadata = meta;
    let bytes = write(output, &parts, progress)?;
    Ok(BuildSummary {
        output: output.to_path_buf(),
        bytes,
        features: spec.metadata_kind().to_string(),
        dim: spec.dim(),
        vectors: parts.ntotal(),
        nlist: parts.nlist(),
        input_frames: kept,
        dropped_frames: dropped,
        sources: files.len(),
        duration_seconds: seconds,
    })
}
