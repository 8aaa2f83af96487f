use std::path::PathBuf;

use knnblend::format::{self, FileKind, PqParts};
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
    let head = crate::import::head(&a.index).map_err(|e| format!("{}: {e}", a.index.display()))?;
    if format::looks_like_pq_kbi(&head) {
        let bytes = std::fs::read(&a.index).map_err(|e| format!("{}: {e}", a.index.display()))?;
        // Structure first (a damaged one is fatal), then the checksums, reported.
        let layout = format::PqKbiLayout::parse(&bytes)?;
        let parts = format::decode_pq_kbi(&bytes, false)?;
        let checksums = format::kbi_pq::verify_pq_sections(&bytes, &layout, &mut |_, _| {})
            .map_err(|e| e.to_string());
        return pq(
            &a,
            FileKind::Kbi,
            &parts,
            bytes.len() as u64,
            Some(checksums),
        );
    }
    if format::looks_like_faiss_fastscan(&head) {
        let parts = format::read_faiss_fastscan_file(&a.index)?;
        let file_bytes = std::fs::metadata(&a.index)?.len();
        return pq(&a, FileKind::Faiss, &parts, file_bytes, None);
    }
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
    let median = {
        let mut s = sizes.clone();
        s.sort_unstable();
        s.get(s.len() / 2).copied().unwrap_or(0)
    };
    let (spill, balance) = (index.spill(), index.metadata().balance());
    let pitch = knnblend::voice::PitchStats::from_metadata(index.metadata());
    if a.json {
        let v = serde_json::json!({
            "path": a.index.display().to_string(),
            "format": index.source_kind().name(),
            "type": "ivf-flat",
            "dim": index.dim(),
            "metric": index.metric().name(),
            "ntotal": index.ntotal(),
            "nlist": index.nlist(),
            "nprobe": index.nprobe(),
            "list_min": min,
            "list_mean": mean,
            "list_max": max,
            "list_median": median,
            "list_max_over_mean": max as f64 / mean.max(f64::MIN_POSITIVE),
            "empty_lists": sizes.iter().filter(|&&s| s == 0).count(),
            "distinct_vectors": index.distinct_vectors(),
            "spilled": index.is_spilled(),
            "spill": spill,
            "balance": balance,
            "pitch": pitch,
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
    println!("  type        IVF-Flat");
    println!(
        "  vectors     {} × {} ({})",
        index.distinct_vectors(),
        index.dim(),
        index.metric().name()
    );
    println!(
        "  lists       {} (sizes min {min}, median {median}, mean {mean:.1}, max {max}: {:.1} × the mean)",
        index.nlist(),
        max as f64 / mean.max(f64::MIN_POSITIVE)
    );
    match spill {
        Some(s) => println!(
            "  spilled     yes: {} copies ({} rows stored; λ {}, among the {} nearest lists; {})",
            s.duplicates,
            index.ntotal(),
            s.lambda,
            s.candidates,
            s.rule()
        ),
        None => println!("  spilled     no"),
    }
    if let Some(b) = balance {
        println!(
            "  balanced    {} of {} lists split to at most {} vectors ({} × the mean)",
            b.lists_split, b.lists_before, b.max_list, b.max_list_factor
        );
    }
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
    match pitch {
        Some(p) => println!("  pitch       {}", p.describe()),
        None if m.features.starts_with("knnblend") => println!(
            "  pitch       not recorded (built before pitch statistics; rebuild with `knnblend build --audio` to match pitch to this voice)"
        ),
        None => {}
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

/// Bytes an IVF-PQ FastScan index holds in memory, part by part.
struct PqMemory {
    codes: u64,
    ids: u64,
    refine: u64,
    centroids: u64,
    codebooks: u64,
}

impl PqMemory {
    fn of(p: &PqParts) -> PqMemory {
        PqMemory {
            codes: p.lists.iter().map(|l| l.codes.len() as u64).sum(),
            ids: p.ntotal() as u64 * 8,
            refine: p.refine.as_ref().map_or(0, |r| r.vectors.len() as u64 * 4),
            centroids: p.centroids.len() as u64 * 4,
            codebooks: p.pq.codebooks.len() as u64 * 4,
        }
    }

    fn total(&self) -> u64 {
        self.codes + self.ids + self.refine + self.centroids + self.codebooks
    }
}

/// `inspect` of an IVF-PQ FastScan index (faiss `IwPf` / `IxRF`, or a PQ .kbi).
fn pq(
    a: &Args,
    kind: FileKind,
    p: &PqParts,
    file_bytes: u64,
    checksums: Option<Result<(), String>>,
) -> crate::Result {
    let format = match kind {
        FileKind::Kbi => "knnblend",
        FileKind::Faiss => "faiss-ivfpq-fastscan",
    };
    let (ty, type_name) = if p.refine.is_some() {
        (
            "ivf-pq-fastscan-rflat",
            "IVF-PQ FastScan with RFlat refinement",
        )
    } else {
        ("ivf-pq-fastscan", "IVF-PQ FastScan")
    };
    let sizes: Vec<usize> = p.lists.iter().map(|l| l.ids.len()).collect();
    let (min, max) = (
        sizes.iter().min().copied().unwrap_or(0),
        sizes.iter().max().copied().unwrap_or(0),
    );
    let ntotal = p.ntotal();
    let mean = ntotal as f64 / p.nlist().max(1) as f64;
    let k_factor = p.refine.as_ref().map(|r| r.k_factor);
    let mem = PqMemory::of(p);
    let per_vector = mem.total() as f64 / ntotal.max(1) as f64;
    if a.json {
        let v = serde_json::json!({
            "path": a.index.display().to_string(),
            "format": format,
            "type": ty,
            "factory": format!("IVF{},{}", p.nlist(), p.recipe()),
            "dim": p.dim,
            "metric": p.metric.name(),
            "ntotal": ntotal,
            "nlist": p.nlist(),
            "nprobe": p.nprobe,
            "m": p.pq.m,
            "nbits": p.pq.nbits(),
            "by_residual": p.by_residual,
            "bbs": p.bbs,
            "k_factor": k_factor,
            "list_min": min,
            "list_mean": mean,
            "list_max": max,
            "empty_lists": sizes.iter().filter(|&&s| s == 0).count(),
            "memory": {
                "codes_bytes": mem.codes,
                "ids_bytes": mem.ids,
                "refine_bytes": mem.refine,
                "centroids_bytes": mem.centroids,
                "codebooks_bytes": mem.codebooks,
                "total_bytes": mem.total(),
                "bytes_per_vector": per_vector,
            },
            "metadata": p.metadata,
            "file_bytes": file_bytes,
            "checksums_ok": checksums.as_ref().map(|c| c.is_ok()),
            "checksum_error": checksums.as_ref().and_then(|c| c.as_ref().err()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let m = &p.metadata;
    println!("{}", a.index.display());
    println!("  format      {format}");
    println!(
        "  type        {type_name} (IVF{},{})",
        p.nlist(),
        p.recipe()
    );
    println!("  vectors     {ntotal} × {} ({})", p.dim, p.metric.name());
    println!(
        "  lists       {} (sizes min {min}, mean {mean:.1}, max {max})",
        p.nlist()
    );
    println!("  n_probe     {} (stored)", p.nprobe);
    println!(
        "  codes       M {} × {} bits, by_residual {}, blocks of {} vectors",
        p.pq.m,
        p.pq.nbits(),
        p.by_residual,
        p.bbs
    );
    match k_factor {
        Some(k) => println!("  refine      flat vectors, k_factor {k}"),
        None => println!("  refine      none"),
    }
    println!(
        "  features    {}",
        if m.features.is_empty() {
            "(not recorded)"
        } else {
            &m.features
        }
    );
    for s in m.sources.iter().take(5) {
        println!("  from        {s}");
    }
    if m.sources.len() > 5 {
        println!("  from        … and {} more", m.sources.len() - 5);
    }
    println!(
        "  memory      {} bytes, {per_vector:.1} per vector: codes {}, ids {}, refine vectors {}, centroids {}, codebooks {}",
        mem.total(),
        mem.codes,
        mem.ids,
        mem.refine,
        mem.centroids,
        mem.codebooks
    );
    println!("  file        {file_bytes} bytes");
    match checksums {
        Some(Ok(())) => println!("  checksums   ok"),
        Some(Err(e)) => println!("  checksums   FAILED: {e}"),
        None => println!("  checksums   none (faiss files carry none)"),
    }
    Ok(())
}
