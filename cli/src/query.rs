use std::path::PathBuf;

use knnblend::format::Metric;
use knnblend::index::{BlendParams, IvfIndex, Searcher, MAX_K, MAX_NPROBE};
use ndarray::{Array2, ArrayView2};
use ndarray_npy::{read_npy, write_npy};

/// Arguments of `knnblend query`.
#[derive(clap::Args)]
pub struct Args {
    /// The index (.kbi or faiss .index).
    index: PathBuf,
    /// Queries: an (n, d) float32 .npy.
    #[arg(long)]
    queries: PathBuf,
    /// Neighbours per query.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=MAX_K as u64))]
    k: u64,
    /// Lists probed per query.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_NPROBE as u64))]
    nprobe: u64,
    /// Output: (n, k) int64 ids, -1 where fewer than k were found.
    #[arg(long)]
    ids: PathBuf,
    /// Output: (n, k) float32 distances (squared L2, or inner product), ±inf where missing.
    #[arg(long)]
    distances: PathBuf,
    /// Blend ratio (RVC's index_rate) for --blended.
    #[arg(long, default_value_t = 0.75)]
    ratio: f32,
    /// Output: (n, d) float32 RVC blends of each query with its neighbours.
    #[arg(long)]
    blended: Option<PathBuf>,
}

pub fn run(a: Args) -> crate::Result {
    if !(0.0..=1.0).contains(&a.ratio) {
        return Err(format!("--ratio {} is outside 0..=1", a.ratio).into());
    }
    let index = IvfIndex::open(&a.index)?;
    let q: Array2<f32> = read_npy(&a.queries).map_err(|e| {
        format!(
            "{}: {e} (expected an (n, d) float32 .npy)",
            a.queries.display()
        )
    })?;
    let q = q.as_standard_layout();
    let (n, d) = q.dim();
    if d != index.dim() {
        return Err(format!(
            "queries have {d} columns but the index has dim {}",
            index.dim()
        )
        .into());
    }
    let (k, nprobe) = (a.k as usize, a.nprobe as usize);
    let missing = match index.metric() {
        Metric::L2 => f32::INFINITY,
        Metric::InnerProduct => f32::NEG_INFINITY,
    };
    let mut ids = Array2::<i64>::from_elem((n, k), -1);
    let mut dist = Array2::<f32>::from_elem((n, k), missing);
    let mut blended = a.blended.as_ref().map(|_| Array2::<f32>::zeros((n, d)));
    let mut s = Searcher::new();
    let qv: ArrayView2<f32> = q.view();
    let mut non_finite = 0;
    for (i, row) in qv.outer_iter().enumerate() {
        let row = row.as_slice().expect("standard layout");
        if !row.iter().all(|v| v.is_finite()) {
            non_finite += 1;
        }
        for (j, nb) in s.search(&index, row, k, nprobe).iter().enumerate() {
            ids[[i, j]] = nb.id;
            dist[[i, j]] = nb.distance;
        }
        if let Some(b) = blended.as_mut() {
            let params = BlendParams {
                k,
                nprobe,
                ratio: a.ratio,
            };
            let mut out = b.row_mut(i);
            s.blend(
                &index,
                row,
                &params,
                out.as_slice_mut().expect("standard layout"),
            );
        }
    }
    write_npy(&a.ids, &ids)?;
    write_npy(&a.distances, &dist)?;
    if let (Some(p), Some(b)) = (&a.blended, &blended) {
        write_npy(p, b)?;
    }
    if non_finite > 0 {
        eprintln!("warning: {non_finite} queries held NaN or infinity: no neighbours, blends copy the query");
    }
    println!("{n} queries, k = {k}, n_probe = {nprobe}");
    Ok(())
}
