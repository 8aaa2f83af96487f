use std::path::PathBuf;

/// Arguments of `knnblend build`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["audio", "npy"])))]
pub struct Args {
    /// Recordings of the target voice (WAV, FLAC, MP3, OGG; directories are searched).
    #[arg(long, num_args = 1.., value_name = "FILES_OR_DIRS")]
    audio: Vec<PathBuf>,
    /// RVC feature files (3_feature256 / 3_feature768 folders or .npy files), RVC's recipe.
    #[arg(long, num_args = 1.., value_name = "DIRS_OR_FILES")]
    npy: Vec<PathBuf>,
    /// The .kbi to write (atomically).
    #[arg(short, long)]
    output: PathBuf,
    /// Distance: l2 (RVC) or ip (cosine: rows L2-normalised, inner product).
    #[arg(long, value_parser = ["l2", "ip"], default_value = "l2")]
    metric: String,
    /// Number of inverted lists (default: RVC's rule min(16·√N, N/39), at least 1).
    #[arg(long)]
    nlist: Option<usize>,
    /// Index type, as a faiss factory string (default: RVC's IVF{n},Flat, n by RVC's rule
    /// min(16·√N, N/39) or --nlist).
    ///
    /// Served: IVF{n},Flat (a Flat .kbi) and IVF-PQ FastScan with 4-bit codes,
    /// IVF{n},PQ{M}x4fs (codes of the vectors) or IVF{n},PQ{M}x4fsr (of their residuals),
    /// optionally _{bbs} (vectors per block, a multiple of 32; default 32) and ,RFlat (the
    /// exact vectors kept to re-rank; also written ,Refine(Flat)), such as
    /// "IVF1024,PQ128x4fs,RFlat". n is explicit (lists ≤ rows); M must divide the dimension.
    /// faiss trains and fills it on the rows RVC's recipe prepares (shuffled, compressed,
    /// normalised with --metric ip, expanded), and it is written as a PQ .kbi. Refused by
    /// name: 8-bit PQ (PQ64, PQ64x8), OPQ and other pre-transforms, HNSW, Flat or PQ without
    /// IVF, SQ and additive quantizers, refinements that are not flat.
    #[arg(long, value_name = "STRING", verbatim_doc_comment)]
    factory: Option<String>,
    /// Compress to N k-means centroids first (RVC does 10 000 above 200 000 rows of --npy).
    #[arg(long, value_name = "N")]
    compress: Option<usize>,
    /// α-query expansion: replace each row by the sim^α-weighted sum of its K neighbours.
    #[arg(long, value_name = "K", requires = "alpha")]
    alpha_expand: Option<usize>,
    /// The α of --alpha-expand.
    #[arg(long, value_name = "A", requires = "alpha_expand")]
    alpha: Option<f32>,
    /// Seed of the shuffle (numpy's legacy np.random.seed, as RVC) and of k-means.
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Store copies of vectors in other lists too, chosen SOAR-style with this λ (about 1 to
    /// 1.5): better neighbours at n_probe 1. IVF-Flat only.
    #[arg(long, value_name = "LAMBDA")]
    spill: Option<f32>,
    /// With --spill: copies per vector on average (up to 8), placed where they help most:
    /// none for a vector deep inside its list, several on a corner of lists. The file holds
    /// 1 + B times the vectors.
    #[arg(long, value_name = "B", default_value_t = 1.5, requires = "spill")]
    spill_copies: f32,
    /// Split every list longer than F × the mean list (e.g. 3), so no frame's list costs much
    /// more than another's. IVF-Flat only.
    #[arg(long, value_name = "F")]
    max_list_factor: Option<f64>,
}

pub fn run(a: Args) -> crate::Result {
    use knnblend::format::Metric;
    use knnblend::voice::build::Factory;
    use knnblend::voice::{
        build_from_audio, build_from_npy, AlphaExpand, BuildOptions, FeatureSpec,
    };
    let factory = a.factory.as_deref().map(Factory::parse).transpose()?;
    let opts = BuildOptions {
        metric: if a.metric == "ip" {
            Metric::InnerProduct
        } else {
            Metric::L2
        },
        nlist: a.nlist,
        factory,
        compress: a.compress,
        alpha_expand: a
            .alpha_expand
            .zip(a.alpha)
            .map(|(k, alpha)| AlphaExpand { k, alpha }),
        seed: a.seed,
        spill: a.spill,
        spill_copies: a.spill_copies,
        max_list_factor: a.max_list_factor,
        ..BuildOptions::default()
    };
    let mut bar = crate::progress::StageBar::new();
    let mut report = |stage, done, total| bar.update(stage, done, total);
    let summary = if a.npy.is_empty() {
        build_from_audio(
            &a.audio,
            &a.output,
            &FeatureSpec::default(),
            &opts,
            &mut report,
        )
    } else {
        build_from_npy(&a.npy, &a.output, &opts, &mut report)
    };
    bar.finish();
    let s = summary?;
    println!(
        "wrote {} ({} bytes): {} ({}), {} vectors × {} ({}), {} lists, from {} file(s){}",
        s.output.display(),
        s.bytes,
        s.index_type,
        s.factory,
        s.vectors,
        s.dim,
        s.features,
        s.nlist,
        s.sources,
        if s.duration_seconds > 0.0 {
            format!(
                ", {:.1} s of audio, {} silent frames dropped",
                s.duration_seconds, s.dropped_frames
            )
        } else {
            String::new()
        }
    );
    if let Some(b) = s.balance {
        println!(
            "balanced: {} of {} lists split (longest at most {} vectors, {} × the mean)",
            b.lists_split, b.lists_before, b.max_list, b.max_list_factor
        );
    }
    if let Some(p) = s.pitch {
        println!("pitch: {}", p.describe());
    }
    if let Some(sp) = s.spill {
        println!(
            "spilled: {} copies (λ {}, among the {} nearest lists; {})",
            sp.duplicates,
            sp.lambda,
            sp.candidates,
            sp.rule()
        );
    }
    Ok(())
}
