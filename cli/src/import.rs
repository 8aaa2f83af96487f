use std::path::{Path, PathBuf};

use knnblend::format::{self, FileKind, PqParts};
use knnblend::index::IvfIndex;

/// Arguments of `knnblend import`.
#[derive(clap::Args)]
pub struct Args {
    /// A faiss IVF-Flat index, such as RVC's added_IVF*_Flat_*.index, or an IVF-PQ FastScan
    /// one (`IVF…,PQ…x4fs[r]`, optionally `,RFlat`).
    input: PathBuf,
    /// The .kbi to write (atomically).
    #[arg(short, long)]
    output: PathBuf,
}

/// The first bytes of the file at `path` (up to 16).
pub fn head(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)?.take(16).read_to_end(&mut head)?;
    Ok(head)
}

/// Reads the IVF-PQ FastScan index at `path` (faiss `IwPf` / `IxRF`, or a PQ .kbi), if it is
/// one.
pub fn read_pq(path: &Path) -> crate::Result<Option<(FileKind, PqParts)>> {
    let head = head(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(if format::looks_like_pq_kbi(&head) {
        Some((FileKind::Kbi, format::read_pq_kbi(path)?))
    } else if format::looks_like_faiss_fastscan(&head) {
        Some((FileKind::Faiss, format::read_faiss_fastscan_file(path)?))
    } else {
        None
    })
}

pub fn run(a: Args) -> crate::Result {
    if let Some((kind, parts)) = read_pq(&a.input)? {
        if kind == FileKind::Kbi {
            eprintln!(
                "note: {} is already a .kbi; writing a fresh copy",
                a.input.display()
            );
        }
        let bytes = format::write_pq_kbi(&a.output, &parts)?;
        println!(
            "wrote {} (IVF-PQ FastScan IVF{},{}: {} vectors × {}, {bytes} bytes)",
            a.output.display(),
            parts.nlist(),
            parts.recipe(),
            parts.ntotal(),
            parts.dim,
        );
        return Ok(());
    }
    let index = IvfIndex::open(&a.input)?;
    if index.source_kind() != FileKind::Faiss {
        eprintln!(
            "note: {} is already a .kbi; writing a fresh copy",
            a.input.display()
        );
    }
    let bytes = format::write_kbi(&a.output, &index.to_parts())?;
    println!(
        "wrote {} ({} vectors × {}, {} lists, {bytes} bytes)",
        a.output.display(),
        index.ntotal(),
        index.dim(),
        index.nlist()
    );
    Ok(())
}
