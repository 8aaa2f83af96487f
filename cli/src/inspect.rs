use std::path::PathBuf;

use knnblend::format::FileKind;
use knnblend::index::{IvfIndex, OpenOptions};

/// Arguments of `knnblend inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// The index file (.kbi or faiss .index).
    index: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> crate::Result {
    // Open without checksum verification so a corrupt section is reported, not fatal here.
    let index = IvfIndex::open_with(
        &a.index,
        OpenOptions {
            verify: false,
            ..OpenOptions::default()
        },
    )?;
    let checksums = match index.source_kind() {
        FileKind::Kbi => Some(index.verify(&mut |_, _| {}).map_err(|e| e.to_string())),
        FileKind::Faiss => None,
    };
    let sizes: Vec<usize> = (0..index.nlist()).map(|l| index.list_len(l)).collect();
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    let mean = index.ntotal() as f64 / index.nlist().max(1) as f64;
    if a.json {
        let v = serde_json::json!({
            "path": a.index.display().to_string(),
            "format": index.source_kind().name(),
            "dim": index.dim(),
            "metric": index.metric().name(),
            "ntotal": index.ntotal(),
            "nlist": index.nlist(),
            "nprobe": index.nprobe(),
            "list_min": min,
            "list_mean": mean,
            "list_max": max,
            "empty_lists": sizes.iter().filter(|&&s| s == 0).count(),
            "metadata": index.metadata(),
            "file_bytes": index.file_bytes(),
            "screening_bytes": index.screening_bytes(),
            "checksums_ok": checksums.as_ref().map(|c| c.is_ok()),
            "checksum_error": checksums.as_ref().and_then(|c| c.as_ref().err()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let m = index.metadata();
    println!("{}", a.index.display());
    println!("  format      {}", index.source_kind().name());
    println!(
        "  vectors     {} × {} ({})",
        index.ntotal(),
        index.dim(),
        index.metric().name()
    );
    println!(
        "  lists       {} (sizes min {min}, mean {mean:.1}, max {max})",
        index.nlist()
    );
    println!("  n_probe     {} (stored)", index.nprobe());
    println!(
        "  features    {}",
        if m.features.is_empty() {
            "(not recorded)"
        } else {
            &m.features
        }
    );
    if !m.feature_params.is_null() {
        println!("  parameters  {}", m.feature_params);
    }
    if m.duration_seconds > 0.0 {
        println!(
            "  source      {} frames, {:.1} s of audio",
            m.frames, m.duration_seconds
        );
    }
    for s in m.sources.iter().take(5) {
        println!("  from        {s}");
    }
    if m.sources.len() > 5 {
        println!("  from        … and {} more", m.sources.len() - 5);
    }
    println!("  file        {} bytes", index.file_bytes());
    println!(
        "  screening   {} bytes in memory (8-bit copies the search screens through)",
        index.screening_bytes()
    );
    match checksums {
        Some(Ok(())) => println!("  checksums   ok"),
        Some(Err(e)) => println!("  checksums   FAILED: {e}"),
        None => println!("  checksums   none (faiss files carry none)"),
    }
    Ok(())
}
