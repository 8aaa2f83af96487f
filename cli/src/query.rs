use std::path::PathBuf;

use knnblend::format::Metric;
use knnblend::index::{
    AnyIndex, AnySearcher, BlendParams, QueryExpansion, MAX_EXPAND_DIM, MAX_K, MAX_NPROBE,
};
use ndarray::{Array2, ArrayView2};
use ndarray_npy::{read_npy, write_npy};

/// Arguments of `knnblend query`.
#[derive(clap::Args)]
pub struct Args {
    /// The index: .kbi, or a faiss .index (IVF-Flat such as RVC's added_*.index, or IVF-PQ
    /// FastScan `IVF…,PQ…x4fs[,RFlat]`).
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
    /// Query-side α expansion: search (and blend) with the sim^α-weighted mean of each
    /// query's K nearest vectors (rescaled to the query's length) instead of the query; the
    /// blend still mixes in the query itself. Off by default.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=MAX_K as u64))]
    expand: Option<u64>,
    /// The α of --expand (exponent of the cosine similarity).
    #[arg(long, value_name = "A", default_value_t = 3.0, requires = "expand")]
    expand_alpha: f32,
}

pub fn run(a: Args) -> crate::Result {
    if !(0.0..=1.0).contains(&a.ratio) {
        return Err(format!("--ratio {} is outside 0..=1", a.ratio).into());
    }
    if !(a.expand_alpha.is_finite() && a.expand_alpha >= 0.0) {
        return Err(format!("--expand-alpha {} must be a number >= 0", a.expand_alpha).into());
    }
    let expansion = a.expand.map(|k| QueryExpansion {
        k: k as usize,
        alpha: a.expand_alpha,
    });
    let index = AnyIndex::open(&a.index)?;
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
    let mut s = AnySearcher::for_index(&index, k, nprobe);
    if !s.fits(&index, k, nprobe) {
        return Err(format!(
            "k = {k} with this index's k_factor asks for more than {} candidates per query",
            knnblend::index::PQ_MAX_BASE_K
        )
        .into());
    }
    let (mut row_ids, mut row_dist) = (vec![-1i64; k], vec![0f32; k]);
    let qv: ArrayView2<f32> = q.view();
    let mut non_finite = 0;
    let mut expanded = vec![0f32; d];
    if expansion.is_some() && d > MAX_EXPAND_DIM {
        eprintln!("warning: --expand works up to {MAX_EXPAND_DIM} dimensions; searching with the queries themselves");
    }
    for (i, row) in qv.outer_iter().enumerate() {
        let row = row.as_slice().expect("standard layout");
        if !row.iter().all(|v| v.is_finite()) {
            non_finite += 1;
        }
        let searched = match &expansion {
            Some(exp) if d <= MAX_EXPAND_DIM => {
                s.expand_query(&index, row, nprobe, exp, &mut expanded);
                &expanded[..]
            }
            _ => row,
        };
        let found = s.search(&index, searched, k, nprobe, &mut row_ids, &mut row_dist);
        for j in 0..found {
            ids[[i, j]] = row_ids[j];
            dist[[i, j]] = row_dist[j];
        }
        if let Some(b) = blended.as_mut() {
            let params = BlendParams {
                expansion,
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
    println!(
        "{n} queries, k = {k}, n_probe = {nprobe}, {}",
        index.describe()
    );
    Ok(())
}
