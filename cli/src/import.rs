use std::path::PathBuf;

use knnblend::format::{self, FileKind};
use knnblend::index::IvfIndex;

/// Arguments of `knnblend import`.
#[derive(clap::Args)]
pub struct Args {
    /// A faiss IVF-Flat index, such as RVC's added_IVF*_Flat_*.index.
    input: PathBuf,
    /// The .kbi to write (atomically).
    #[arg(short, long)]
    output: PathBuf,
}

pub fn run(a: Args) -> crate::Result {
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
