use std::path::PathBuf;

use knnblend::index::IvfIndex;

/// Arguments of `knnblend verify`.
#[derive(clap::Args)]
pub struct Args {
    /// The index file (.kbi or faiss .index).
    index: PathBuf,
}

pub fn run(a: Args) -> crate::Result {
    // `open` validates the header, every section bound, list offsets, checksums and finiteness.
    let index = IvfIndex::open(&a.index)?;
    println!(
        "{}: ok ({}, {} vectors × {}, {} lists)",
        a.index.display(),
        index.source_kind().name(),
        index.ntotal(),
        index.dim(),
        index.nlist()
    );
    Ok(())
}
