//! `knnblend bench`: per-frame search against faiss in one process (see `knnblend::index::bench`).

use std::path::PathBuf;

/// Arguments of `knnblend bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Reduced set (N = 10 000 and 30 000, 5 000 queries): under a minute once indexes are cached.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON (an array with one object per case) instead of tables.
    #[arg(long)]
    json: bool,
    /// A real faiss IVF-Flat .index (e.g. RVC's added_*.index) to run as an extra case; repeatable.
    #[arg(long = "index", value_name = "PATH")]
    indexes: Vec<PathBuf>,
    /// Run only the --index cases, not the synthetic RVC-shaped ones.
    #[arg(long)]
    only_index: bool,
    /// Timed single queries per case.
    #[arg(long, default_value_t = 20_000)]
    queries: usize,
    /// Where built indexes are cached.
    #[arg(long, default_value = "target/bench-cache")]
    cache_dir: PathBuf,
    /// Seed of the synthetic data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instead of the comparison, time the phases of a search on this index (kernels, hot and
    /// rotating searches, block search).
    #[arg(long, value_name = "PATH")]
    phases: Option<PathBuf>,
}

#[cfg(feature = "faiss")]
pub fn run(a: Args) -> crate::Result {
    use knnblend::index::bench::{self, BenchOptions};
    if let Some(p) = &a.phases {
        let index = knnblend::index::IvfIndex::open(p)?;
        print!("{}", bench::phases(&index));
        return Ok(());
    }
    let opts = BenchOptions {
        quick: a.quick,
        queries: a.queries,
        cache_dir: a.cache_dir,
        indexes: a.indexes,
        seed: a.seed,
        only_indexes: a.only_index,
    };
    let report = bench::run(&opts, &mut |line| eprintln!("{line}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.cases)?);
    } else {
        print!("{}", bench::format_text(&report));
    }
    Ok(())
}

#[cfg(not(feature = "faiss"))]
pub fn run(_: Args) -> crate::Result {
    Err(
        "this knnblend was built without the `faiss` feature; the benchmark compares against faiss"
            .into(),
    )
}
