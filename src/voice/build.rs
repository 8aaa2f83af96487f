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
//! Other index types by faiss factory string ([`Factory`], `--factory`): `IVF<n>,Flat` (the
//! recipe above with that many lists) and IVF-PQ FastScan, `IVF<n>,PQ<M>x4fs[r][_<bbs>]`,
//! optionally refined with the exact vectors (`,RFlat` or `,Refine(Flat)`), which faiss trains
//! and fills on the same prepared rows; the faiss index is read back into [`PqParts`] and
//! written as a PQ `.kbi`. Every other factory string is refused by name before faiss runs.
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
use crate::format::{
    read_faiss_fastscan_file, write_kbi, write_pq_kbi, FormatError, IndexParts, Metadata, Metric,
    PqParts, MAX_NLIST,
};
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

/// Largest FastScan block (`_<bbs>`, vectors per block) accepted; the `.kbi` reader's limit.
pub const MAX_BBS: usize = 1 << 16;

/// An index type `knnblend build` trains and knnblend serves, named by its faiss factory
/// string ([`Factory::parse`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Factory {
    /// `IVF<nlist>,Flat`: RVC's index type, written as a Flat `.kbi`.
    IvfFlat {
        /// Lists.
        nlist: usize,
    },
    /// `IVF<nlist>,PQ<m>x4fs[r][_<bbs>][,RFlat]`: IVF-PQ FastScan, 4-bit codes, written as a
    /// PQ `.kbi`.
    IvfPqFastScan {
        /// Lists.
        nlist: usize,
        /// Sub-quantizers (must divide the dimension).
        m: usize,
        /// Codes of residuals from the list centroid (`x4fsr`).
        by_residual: bool,
        /// Vectors per block of packed codes (a multiple of 32; faiss's default 32).
        bbs: usize,
        /// The exact vectors kept for re-ranking (`,RFlat`, also written `,Refine(Flat)`).
        refine: bool,
    },
}

/// Splits at top-level commas (not inside parentheses).
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// `digits` with faiss's optional `k` (×1024) or `M` (×1024²) suffix.
fn count(digits: &str) -> Option<usize> {
    let (num, mul) = match digits.as_bytes().last()? {
        b'k' => (&digits[..digits.len() - 1], 1usize << 10),
        b'M' => (&digits[..digits.len() - 1], 1 << 20),
        _ => (digits, 1),
    };
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse::<usize>().ok()?.checked_mul(mul)
}

const SERVED: &str =
    "knnblend builds and serves `IVF<n>,Flat` and `IVF<n>,PQ<M>x4fs[r][_<bbs>][,RFlat]`";

fn refuse(factory: &str, why: impl std::fmt::Display) -> String {
    format!("--factory \"{factory}\": {why}; {SERVED}")
}

/// Why the first component of a factory string is not `IVF<n>`, when it names something else.
fn first_refusal(first: &str) -> Option<&'static str> {
    const PRE: [(&str, &str); 7] = [
        ("OPQ", "OPQ is a pre-transform (a rotation before the quantizer), which knnblend does not apply at search time"),
        ("PCA", "PCA is a pre-transform (a projection before the index), which knnblend does not apply at search time"),
        ("ITQ", "ITQ is a pre-transform, which knnblend does not apply at search time"),
        ("RR", "a random rotation is a pre-transform, which knnblend does not apply at search time"),
        ("Pad", "padding is a pre-transform, which knnblend does not apply at search time"),
        ("L2norm", "L2norm is a pre-transform; use --metric ip, which normalises the rows (and knnblend the queries)"),
        ("IDMap", "IDMap indexes have caller-chosen ids; a build numbers its rows itself"),
    ];
    if let Some((_, why)) = PRE.iter().find(|(p, _)| first.starts_with(p)) {
        return Some(why);
    }
    Some(if first == "Flat" {
        "`Flat` alone is brute-force search without inverted lists"
    } else if first.starts_with("HNSW") {
        "HNSW is a graph index, not an inverted file"
    } else if first.starts_with("NSG") {
        "NSG is a graph index, not an inverted file"
    } else if first.starts_with("PQ") {
        "product quantization without inverted lists (no `IVF<n>,` in front)"
    } else if first.starts_with("SQ") {
        "a scalar quantizer without inverted lists"
    } else if first.starts_with("LSH") {
        "LSH is a binary hashing index"
    } else if first.starts_with("IMI") {
        "a multi-index (IMI) coarse quantizer"
    } else if first.starts_with("Residual") {
        "a residual coarse quantizer"
    } else if first.starts_with("IVF") {
        return None;
    } else {
        "it does not start with `IVF<n>,` (an inverted file)"
    })
}

/// Why an encoding (the part after `IVF<n>,`) is not one knnblend serves.
fn encoding_refusal(enc: &str) -> String {
    let pq = enc.strip_prefix("PQ");
    if let Some(rest) = pq {
        let m: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        let after = &rest[m.len()..];
        if !m.is_empty() {
            if after.is_empty() || after == "np" {
                return format!("`{enc}` is IVF-PQ with 8-bit codes (faiss's default), which knnblend does not serve; 4-bit FastScan codes are written `PQ{m}x4fs`");
            }
            if let Some(bits) = after.strip_prefix('x') {
                let b: String = bits.chars().take_while(|c| c.is_ascii_digit()).collect();
                if !b.is_empty() && b != "4" {
                    return format!("`{enc}` is IVF-PQ with {b}-bit codes, which knnblend does not serve; only 4-bit FastScan codes (`PQ{m}x4fs`) are");
                }
                if b == "4" && !bits[1..].starts_with("fs") {
                    return format!("`{enc}` is 4-bit IVF-PQ without FastScan, which knnblend does not serve; write `PQ{m}x4fs`");
                }
            }
            if after.starts_with('+') {
                return format!("`{enc}` is IVF-PQ with PQ refinement (IVFPQR), which knnblend does not serve; flat refinement is `,RFlat`");
            }
        }
        return format!("`{enc}` is not a product quantizer knnblend reads (expected `PQ<M>x4fs`, `PQ<M>x4fsr`, optionally `_<bbs>`)");
    }
    if enc.starts_with("SQ") {
        return format!("`{enc}` is a scalar quantizer, which knnblend does not serve");
    }
    for aq in ["RQ", "LSQ", "PRQ", "PLSQ"] {
        if enc.starts_with(aq) {
            return format!(
                "`{enc}` is an additive quantizer ({aq}), which knnblend does not serve"
            );
        }
    }
    if enc.starts_with("RaBitQ") {
        return format!("`{enc}` is RaBitQ, which knnblend does not serve");
    }
    if enc.starts_with("FlatDedup") {
        return format!("`{enc}` is IVF-Flat with deduplication, which knnblend does not serve");
    }
    format!("`{enc}` is not an encoding knnblend serves")
}

impl Factory {
    /// Parses a faiss factory string, refusing by name what knnblend cannot serve: other codes
    /// than `Flat` and 4-bit FastScan PQ (8-bit PQ, scalar and additive quantizers), indexes
    /// without inverted lists (`Flat`, `PQ…`, `HNSW…`), pre-transforms (`OPQ…`, `PCA…`),
    /// non-flat refinement, coarse quantizers other than flat (`IVF…_HNSW…`). The dimension is
    /// checked later ([`check_dim`](Self::check_dim)).
    pub fn parse(factory: &str) -> Result<Factory, String> {
        let s = factory.trim();
        if s.is_empty() {
            return Err(refuse(factory, "it is empty"));
        }
        if s.contains(char::is_whitespace) {
            return Err(refuse(
                factory,
                "it contains spaces (faiss does not accept them)",
            ));
        }
        let parts = split_top(s);
        let first = parts[0];
        if let Some(why) = first_refusal(first) {
            return Err(refuse(factory, why));
        }
        let digits = &first[3..];
        if digits.contains('_') {
            return Err(refuse(
                factory,
                format!("`{first}` has a coarse quantizer other than flat (such as `_HNSW`), which knnblend does not read"),
            ));
        }
        if digits.contains('(') {
            return Err(refuse(
                factory,
                format!("`{first}` has a coarse quantizer other than flat, which knnblend does not read"),
            ));
        }
        let nlist = count(digits).ok_or_else(|| {
            refuse(
                factory,
                format!("`{first}` does not give the number of lists as `IVF<n>` (such as `IVF1024`; RVC's rule is min(16·√N, N/39))"),
            )
        })?;
        if nlist == 0 || nlist as u64 > MAX_NLIST {
            return Err(refuse(
                factory,
                format!("{nlist} lists is outside 1..={MAX_NLIST}"),
            ));
        }
        let Some(&enc) = parts.get(1) else {
            return Err(refuse(
                factory,
                format!("`{first}` names no encoding of the vectors (write `{first},Flat` or `{first},PQ<M>x4fs`)"),
            ));
        };
        let refine = match parts.get(2) {
            None => false,
            Some(&"RFlat") | Some(&"Refine(Flat)") => true,
            Some(r) if r.starts_with("Refine(") => {
                return Err(refuse(
                    factory,
                    format!("`{r}` is a refinement that is not flat (exact vectors); only `RFlat` / `Refine(Flat)` is served"),
                ))
            }
            Some(r) => {
                return Err(refuse(
                    factory,
                    format!("`{r}` after the encoding is not a refinement knnblend serves (`RFlat`)"),
                ))
            }
        };
        if parts.len() > 3 {
            return Err(refuse(
                factory,
                format!(
                    "it has {} components; at most three (`IVF<n>,<codes>,RFlat`)",
                    parts.len()
                ),
            ));
        }
        if enc == "Flat" {
            if refine {
                return Err(refuse(
                    factory,
                    "IVF-Flat already stores the exact vectors, so `,RFlat` would only double them",
                ));
            }
            return Ok(Factory::IvfFlat { nlist });
        }
        let parsed = enc.strip_prefix("PQ").and_then(|rest| {
            let m_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            let m: usize = rest[..m_len].parse().ok()?;
            let rest = rest[m_len..].strip_prefix("x4fs")?;
            let (by_residual, rest) = match rest.strip_prefix('r') {
                Some(r) => (true, r),
                None => (false, rest),
            };
            let bbs = match rest {
                "" => Some(32),
                r => r
                    .strip_prefix('_')
                    .filter(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|b| b.parse::<usize>().ok()),
            };
            Some((m, by_residual, bbs))
        });
        let Some((m, by_residual, bbs)) = parsed else {
            return Err(refuse(factory, encoding_refusal(enc)));
        };
        let Some(bbs) = bbs else {
            return Err(refuse(
                factory,
                format!("`{enc}` does not end in a block size `_<bbs>` (such as `_64`)"),
            ));
        };
        if m == 0 {
            return Err(refuse(factory, "PQ0 has no sub-quantizers"));
        }
        if bbs == 0 || !bbs.is_multiple_of(32) || bbs > MAX_BBS {
            return Err(refuse(
                factory,
                format!("the block size {bbs} is not a multiple of 32 from 32 to {MAX_BBS}"),
            ));
        }
        Ok(Factory::IvfPqFastScan {
            nlist,
            m,
            by_residual,
            bbs,
            refine,
        })
    }

    /// Lists.
    pub fn nlist(&self) -> usize {
        match *self {
            Factory::IvfFlat { nlist } | Factory::IvfPqFastScan { nlist, .. } => nlist,
        }
    }

    /// The canonical faiss factory string (`,Refine(Flat)` written `,RFlat`, `_32` left out).
    pub fn faiss_string(&self) -> String {
        match *self {
            Factory::IvfFlat { nlist } => format!("IVF{nlist},Flat"),
            Factory::IvfPqFastScan {
                nlist,
                m,
                by_residual,
                bbs,
                refine,
            } => format!(
                "IVF{nlist},{}",
                crate::format::pq_recipe(m, by_residual, bbs, refine)
            ),
        }
    }

    /// What the index is, in words: `IVF-Flat` or `IVF-PQ FastScan 128×4 bits, RFlat k_factor 1`.
    pub fn describe(&self) -> String {
        match *self {
            Factory::IvfFlat { .. } => "IVF-Flat".into(),
            Factory::IvfPqFastScan {
                m,
                by_residual,
                bbs,
                refine,
                ..
            } => format!(
                "IVF-PQ FastScan {m}×4 bits{}{}{}",
                if by_residual { " of residuals" } else { "" },
                if bbs == 32 {
                    String::new()
                } else {
                    format!(", blocks of {bbs}")
                },
                if refine { ", RFlat k_factor 1" } else { "" }
            ),
        }
    }

    /// Checks the factory against the data: `M` must divide the dimension.
    pub fn check_dim(&self, dim: usize) -> Result<(), BuildError> {
        if let Factory::IvfPqFastScan { m, .. } = *self {
            if !dim.is_multiple_of(m) {
                return Err(BuildError::Options(format!(
                    "--factory \"{}\": PQ{m} does not divide the dimension {dim} into equal sub-vectors (M must divide {dim})",
                    self.faiss_string()
                )));
            }
        }
        Ok(())
    }
}

/// How to build.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildOptions {
    /// Distance metric (`InnerProduct` = cosine on L2-normalised rows). Default L2.
    pub metric: Metric,
    /// Number of lists; default RVC's rule.
    pub nlist: Option<usize>,
    /// The index type (`None`: `IVF{nlist},Flat` with [`nlist`](Self::nlist) or RVC's rule).
    /// With an explicit `nlist`, they must agree.
    pub factory: Option<Factory>,
    /// Compress to this many k-means centroids first (when there are more rows).
    pub compress: Option<usize>,
    /// α-query expansion.
    pub alpha_expand: Option<AlphaExpand>,
    /// Seed of the shuffle (numpy legacy `np.random.seed`) and of k-means.
    pub seed: u32,
    /// Silent frames of recordings below this are dropped (audio builds).
    pub silence: SilenceRule,
    /// Split every list longer than this multiple of the mean list (`--max-list-factor`, at
    /// least 1): the largest list, and so a one-list probe's work, is bounded
    /// ([`index::balance`](crate::index::balance)). IVF-Flat only.
    pub max_list_factor: Option<f64>,
    /// Store copies of vectors in other lists, chosen by the SOAR loss with this λ
    /// (`--spill`; [`index::spill`](crate::index::spill)). With balancing, the copies respect
    /// the same bound. IVF-Flat only.
    pub spill: Option<f32>,
    /// With `spill`: copies per vector on average, placed where they help most
    /// (`--spill-copies`, in (0, 8]; the default 1.5 stores 2.5 times the vectors).
    pub spill_copies: f32,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            metric: Metric::L2,
            nlist: None,
            factory: None,
            compress: None,
            alpha_expand: None,
            seed: 0,
            silence: SilenceRule::default(),
            max_list_factor: None,
            spill: None,
            spill_copies: 1.5,
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
    /// Splitting long lists (`max_list_factor`).
    Balancing,
    /// Placing the copies (`spill`).
    Spilling,
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
    /// The faiss factory string of what was built (`IVF256,Flat`, `IVF16,PQ32x4fs,RFlat`).
    pub factory: String,
    /// What was built, in words (`IVF-Flat`, `IVF-PQ FastScan 32×4 bits, RFlat k_factor 1`).
    pub index_type: String,
    /// Frames (rows) read before compression.
    pub input_frames: usize,
    /// Silent frames dropped (audio builds).
    pub dropped_frames: usize,
    /// Source files.
    pub sources: usize,
    /// Duration of the source audio, seconds (0 for feature files).
    pub duration_seconds: f64,
    /// The list balancing applied, if any.
    pub balance: Option<crate::format::Balance>,
    /// The spilled assignment applied, if any (its copies are not in `vectors`).
    pub spill: Option<crate::format::Spill>,
    /// The recordings' pitch statistics (audio builds).
    pub pitch: Option<super::PitchStats>,
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
    if let (Some(n), Some(f)) = (opts.nlist, &opts.factory) {
        if n != f.nlist() {
            return Err(BuildError::Options(format!(
                "--nlist {n} contradicts --factory \"{}\", which has {} lists; give the number of lists once",
                f.faiss_string(),
                f.nlist()
            )));
        }
    }
    if opts.compress == Some(0) {
        return Err(BuildError::Options("--compress must be at least 1".into()));
    }
    if let Some(f) = opts.max_list_factor {
        if !(f.is_finite() && f >= 1.0) {
            return Err(BuildError::Options(format!(
                "--max-list-factor must be a number >= 1 (a multiple of the mean list length), not {f}"
            )));
        }
    }
    if let Some(l) = opts.spill {
        if !(l.is_finite() && (0.0..=100.0).contains(&l)) {
            return Err(BuildError::Options(format!(
                "--spill must be a λ from 0 to 100 (SOAR's λ, about 1 to 1.5), not {l}"
            )));
        }
        let b = opts.spill_copies;
        if !crate::index::valid_copies(b as f64) {
            return Err(BuildError::Options(format!(
                "--spill-copies must be a number of copies per vector above 0 and at most {}, not {b}",
                crate::index::MAX_COPIES_PER_VECTOR
            )));
        }
    }
    if let Some(f @ Factory::IvfPqFastScan { .. }) = &opts.factory {
        if opts.spill.is_some() || opts.max_list_factor.is_some() {
            return Err(BuildError::Options(format!(
                "--spill and --max-list-factor build IVF-Flat indexes; `{}` is IVF-PQ FastScan",
                f.faiss_string()
            )));
        }
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
    /// The faiss factory string trained.
    pub factory: String,
    /// The list balancing applied (`max_list_factor`).
    pub balance: Option<crate::format::Balance>,
    /// The spilled assignment applied (`spill`).
    pub spill: Option<crate::format::Spill>,
}

/// An index a build made: IVF-Flat or IVF-PQ FastScan.
#[derive(Clone, Debug, PartialEq)]
pub enum BuiltIndex {
    /// `IVF<n>,Flat`.
    Flat(IndexParts),
    /// `IVF<n>,PQ<M>x4fs…`.
    Pq(PqParts),
}

impl BuiltIndex {
    /// Lists.
    pub fn nlist(&self) -> usize {
        match self {
            BuiltIndex::Flat(p) => p.nlist(),
            BuiltIndex::Pq(p) => p.nlist(),
        }
    }

    /// Stored vectors.
    pub fn ntotal(&self) -> usize {
        match self {
            BuiltIndex::Flat(p) => p.ntotal(),
            BuiltIndex::Pq(p) => p.ntotal(),
        }
    }

    /// What the vectors are.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        match self {
            BuiltIndex::Flat(p) => &mut p.metadata,
            BuiltIndex::Pq(p) => &mut p.metadata,
        }
    }

    /// Writes the `.kbi` atomically (Flat or PQ); returns its size.
    pub fn write(&self, path: &Path) -> Result<u64, FormatError> {
        match self {
            BuiltIndex::Flat(p) => write_kbi(path, p),
            BuiltIndex::Pq(p) => write_pq_kbi(path, p),
        }
    }
}

/// Shuffle, optional compression, normalisation and expansion: the rows faiss trains on.
fn prepare_rows(
    rows: Vec<f32>,
    dim: usize,
    layout: VectorLayout,
    opts: &BuildOptions,
    rvc_compress: bool,
    progress: &mut dyn FnMut(BuildStage, u64, u64),
) -> Result<(Vec<f32>, RecipeFacts), BuildError> {
    check_options(opts)?;
    if dim == 0 || !rows.len().is_multiple_of(dim) {
        return Err(BuildError::NoData(format!(
            "rows are not whole vectors of dimension {dim}"
        )));
    }
    if let Some(f) = &opts.factory {
        f.check_dim(dim)?;
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
    Ok((rows, facts))
}

/// A factory's list count checked against the rows it trains on (k-means needs at least as
/// many rows as lists).
fn check_rows(factory: &Factory, n: usize, facts: &RecipeFacts) -> Result<(), BuildError> {
    let nlist = factory.nlist();
    let rows = match facts.compressed_to {
        Some(_) => format!("{n} rows (compressed from {})", facts.rows_in),
        None => format!("{n} rows"),
    };
    if nlist > n {
        return Err(BuildError::Options(format!(
            "--factory \"{}\" asks for {nlist} lists but there are only {rows} to train them on (k-means needs at least one row per list; RVC's rule would give {})",
            factory.faiss_string(),
            rvc_nlist(n)
        )));
    }
    if matches!(factory, Factory::IvfPqFastScan { .. }) && n < crate::format::PQ_KSUB {
        return Err(BuildError::Options(format!(
            "--factory \"{}\" needs at least {} rows to train 16 centroids per sub-quantizer, and there are {rows}",
            factory.faiss_string(),
            crate::format::PQ_KSUB
        )));
    }
    Ok(())
}

/// The directory faiss's temporary file goes to: the output's, when its path is UTF-8 (faiss
/// takes a C string), else the system's.
fn scratch_dir(output: &Path) -> PathBuf {
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.to_str().is_some() && dir.is_dir() {
        dir
    } else {
        std::env::temp_dir()
    }
}

/// IVF-PQ FastScan by faiss's factory on the prepared rows: trained on all, all added (ids
/// `0..n`), written by faiss to a temporary file in `scratch` and read back.
fn train_pq(
    factory: &Factory,
    rows: &[f32],
    dim: usize,
    metric: Metric,
    scratch: &Path,
) -> Result<PqParts, BuildError> {
    let desc = factory.faiss_string();
    let mt = match metric {
        Metric::L2 => MetricType::L2,
        Metric::InnerProduct => MetricType::InnerProduct,
    };
    let what = |w: &str| format!("{w} `{desc}`");
    let mut index: IndexImpl = faiss::index_factory(dim as u32, desc.as_str(), mt)
        .map_err(|e| faiss_err(&what("create"), e))?;
    index
        .train(rows)
        .map_err(|e| faiss_err(&what("train"), e))?;
    index
        .add(rows)
        .map_err(|e| faiss_err(&what("add the rows to"), e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".knnblend-faiss-")
        .suffix(".index")
        .tempfile_in(scratch)
        .map_err(|e| BuildError::Format(FormatError::io(scratch, e)))?;
    let tmp_path = tmp.path().to_path_buf();
    let p = tmp_path.to_str().ok_or_else(|| {
        BuildError::Options(format!(
            "the temporary file {} has a path faiss cannot take (not UTF-8)",
            tmp_path.display()
        ))
    })?;
    faiss::write_index(&index, p).map_err(|e| faiss_err(&what("write"), e))?;
    drop(index);
    let mut parts = read_faiss_fastscan_file(&tmp_path)?;
    drop(tmp);
    parts.metadata = Metadata::default();
    parts.nprobe = 1;
    Ok(parts)
}

/// The recipe of [`build_parts`] with the index type of `opts.factory` (IVF-Flat when
/// `None`): IVF-Flat parts, or IVF-PQ FastScan parts trained by faiss's `index_factory` on
/// the same prepared rows. `output` is where the index will go: faiss's temporary file is
/// written next to it. The parts' metadata is empty.
pub fn build_index(
    rows: Vec<f32>,
    dim: usize,
    layout: VectorLayout,
    opts: &BuildOptions,
    rvc_compress: bool,
    output: &Path,
    progress: &mut dyn FnMut(BuildStage, u64, u64),
) -> Result<(BuiltIndex, RecipeFacts), BuildError> {
    match &opts.factory {
        None | Some(Factory::IvfFlat { .. }) => {
            let (parts, facts) = build_parts(rows, dim, layout, opts, rvc_compress, progress)?;
            Ok((BuiltIndex::Flat(parts), facts))
        }
        Some(factory @ Factory::IvfPqFastScan { .. }) => {
            let (rows, mut facts) = prepare_rows(rows, dim, layout, opts, rvc_compress, progress)?;
            let n = rows.len() / dim;
            check_rows(factory, n, &facts)?;
            facts.nlist = factory.nlist();
            facts.factory = factory.faiss_string();
            progress(BuildStage::Training, 0, 1);
            let parts = train_pq(factory, &rows, dim, opts.metric, &scratch_dir(output))?;
            progress(BuildStage::Training, 1, 1);
            Ok((BuiltIndex::Pq(parts), facts))
        }
    }
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
    if let Some(f @ Factory::IvfPqFastScan { .. }) = &opts.factory {
        return Err(BuildError::Options(format!(
            "build_parts makes IVF-Flat; `{}` is built by build_index",
            f.faiss_string()
        )));
    }
    let (rows, mut facts) = prepare_rows(rows, dim, layout, opts, rvc_compress, progress)?;
    let n = rows.len() / dim;
    let nlist = match &opts.factory {
        Some(f) => {
            check_rows(f, n, &facts)?;
            f.nlist()
        }
        None => opts.nlist.unwrap_or_else(|| rvc_nlist(n)).clamp(1, n),
    };
    facts.nlist = nlist;
    facts.factory = format!("IVF{nlist},Flat");
    progress(BuildStage::Training, 0, 1);
    let ivf = FaissIvf::build(dim, nlist, opts.metric, &rows, &rows)?;
    let mut parts = ivf.to_parts()?;
    parts.nprobe = 1;
    progress(BuildStage::Training, 1, 1);
    if let Some(f) = opts.max_list_factor {
        progress(BuildStage::Balancing, 0, 1);
        let (balanced, report) = crate::index::balance(&parts, f, opts.seed as u64)?;
        parts = balanced;
        facts.balance = Some(report.balance);
        facts.nlist = parts.nlist();
        progress(BuildStage::Balancing, 1, 1);
    }
    if let Some(lambda) = opts.spill {
        progress(BuildStage::Spilling, 0, 1);
        // With balancing, the copies keep the same bound on the grown lists.
        let max_list = opts.max_list_factor.map(|f| {
            crate::index::spilled_list_cap(f, opts.spill_copies, parts.ntotal(), parts.nlist())
        });
        let spill_opts = crate::index::SpillOptions {
            lambda,
            max_list,
            copies: Some(opts.spill_copies),
            ..crate::index::SpillOptions::default()
        };
        let (spilled, report) = crate::index::spill(&parts, spill_opts)?;
        parts = spilled;
        facts.spill = Some(report.spill);
        progress(BuildStage::Spilling, 1, 1);
    }
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
            "factory": facts.factory,
            "metric": opts.metric.name(),
            "alpha_expand": opts.alpha_expand.map(|a| serde_json::json!({"k": a.k, "alpha": a.alpha})),
            "max_list_factor": opts.max_list_factor,
            "spill": opts.spill,
            "spill_copies": opts.spill.map(|_| opts.spill_copies),
        }),
    );
    let mut meta = Metadata::default();
    meta.set_balance(facts.balance);
    meta.set_spill(facts.spill);
    extra.extend(meta.extra);
    extra
}

fn index_type(opts: &BuildOptions) -> String {
    opts.factory
        .as_ref()
        .map_or_else(|| "IVF-Flat".into(), Factory::describe)
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn write(
    output: &Path,
    index: &BuiltIndex,
    progress: &mut dyn FnMut(BuildStage, u64, u64),
) -> Result<u64, BuildError> {
    progress(BuildStage::Writing, 0, 1);
    let bytes = index.write(output)?;
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
    let (mut index, facts) = build_index(
        data.rows,
        dim,
        VectorLayout::Plain,
        opts,
        true,
        output,
        progress,
    )?;
    let features = rvc_feature_kind(dim);
    let meta = index.metadata_mut();
    meta.features = features.clone();
    meta.feature_params = serde_json::json!({ "dim": dim, "source": "RVC feature files (.npy)" });
    meta.sources = data.files.iter().map(|p| file_name(p)).collect();
    meta.frames = frames as u64;
    meta.extra = recipe_json(opts, &facts, "knnblend build --npy");
    let bytes = write(output, &index, progress)?;
    Ok(BuildSummary {
        output: output.to_path_buf(),
        bytes,
        features,
        dim,
        vectors: index.ntotal() - facts.spill.map_or(0, |s| s.duplicates as usize),
        balance: facts.balance,
        spill: facts.spill,
        pitch: None,
        nlist: index.nlist(),
        factory: facts.factory.clone(),
        index_type: index_type(opts),
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
    let mut pitch = super::PitchCollector::new(super::PitchSpec::default());
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
        let mono = audio.mono();
        let got = ex.extract(&mono, &opts.silence);
        pitch
            .add(&mono, audio.sample_rate)
            .map_err(BuildError::Options)?;
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
    let (mut index, facts) = build_index(rows, spec.dim(), layout, opts, false, output, progress)?;
    let sources = files.iter().map(|p| file_name(p)).collect();
    let mut meta = spec.metadata(sources, kept as u64, seconds);
    meta.extra = recipe_json(opts, &facts, "knnblend build --audio");
    meta.extra
        .insert("speaker_mean".into(), serde_json::json!(mean));
    meta.extra
        .insert("dropped_silent_frames".into(), dropped.into());
    let pitch = pitch.finish();
    pitch.store(&mut meta);
    *index.metadata_mut() = meta;
    let bytes = write(output, &index, progress)?;
    Ok(BuildSummary {
        output: output.to_path_buf(),
        bytes,
        features: spec.metadata_kind().to_string(),
        dim: spec.dim(),
        vectors: index.ntotal() - facts.spill.map_or(0, |s| s.duplicates as usize),
        balance: facts.balance,
        spill: facts.spill,
        pitch: Some(pitch),
        nlist: index.nlist(),
        factory: facts.factory.clone(),
        index_type: index_type(opts),
        input_frames: kept,
        dropped_frames: dropped,
        sources: files.len(),
        duration_seconds: seconds,
    })
}
