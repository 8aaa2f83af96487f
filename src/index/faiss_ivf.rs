//! Training IVF-Flat indexes with faiss (feature `faiss`): RVC's recipe, and the oracle that
//! tests and benchmarks compare against. Nothing here runs on an audio thread, and the plugin
//! never links it.

use std::path::Path;

use faiss::index::ivf_flat::IVFFlatIndexImpl;
use faiss::index::{Index, IndexImpl};
use faiss::MetricType;

use crate::format::{self, FormatError, IndexParts, Metric};

/// RVC's list count for `n` vectors: `min(int(16·√n), n // 39)`, at least 1.
pub fn rvc_nlist(n: usize) -> usize {
    let by_sqrt = (16.0 * (n as f64).sqrt()) as usize;
    by_sqrt.min(n / 39).max(1)
}

/// A faiss `IndexIVFFlat`, trained and filled.
pub struct FaissIvf {
    index: IVFFlatIndexImpl,
    dim: usize,
}

fn faiss_err(what: &str, e: faiss::error::Error) -> FormatError {
    FormatError::InvalidParts(format!("faiss failed to {what}: {e}"))
}

impl FaissIvf {
    /// Trains `IVF{nlist},Flat` on `train` and adds `add` with ids `0..n`, as RVC does
    /// (n_probe is set to 1 before training, so the file stores 1).
    pub fn build(
        dim: usize,
        nlist: usize,
        metric: Metric,
        train: &[f32],
        add: &[f32],
    ) -> Result<FaissIvf, FormatError> {
        if dim == 0 || !train.len().is_multiple_of(dim) || !add.len().is_multiple_of(dim) {
            return Err(FormatError::InvalidParts(format!(
                "data is not whole rows of dim {dim}"
            )));
        }
        let mt = match metric {
            Metric::L2 => MetricType::L2,
            Metric::InnerProduct => MetricType::InnerProduct,
        };
        let index: IndexImpl = faiss::index_factory(dim as u32, format!("IVF{nlist},Flat"), mt)
            .map_err(|e| faiss_err("create the index", e))?;
        let mut index = index
            .into_ivf_flat()
            .map_err(|e| faiss_err("cast to IVF-Flat", e))?;
        index.set_nprobe(1);
        index.train(train).map_err(|e| faiss_err("train", e))?;
        if !add.is_empty() {
            index.add(add).map_err(|e| faiss_err("add vectors", e))?;
        }
        Ok(FaissIvf { index, dim })
    }

    /// Sets the number of lists probed by [`search`](Self::search).
    pub fn set_nprobe(&mut self, nprobe: usize) {
        self.index.set_nprobe(nprobe as u32);
    }

    /// faiss's k nearest for each row of `queries`: (distances, ids), `k` per query, id -1 when missing.
    pub fn search(
        &mut self,
        queries: &[f32],
        k: usize,
    ) -> Result<(Vec<f32>, Vec<i64>), FormatError> {
        let r = self
            .index
            .search(queries, k)
            .map_err(|e| faiss_err("search", e))?;
        let ids = r
            .labels
            .iter()
            .map(|l| l.get().map_or(-1, |v| v as i64))
            .collect();
        Ok((r.distances, ids))
    }

    /// Writes the index with faiss's own `write_index` (the format RVC ships).
    pub fn write(&self, path: &Path) -> Result<(), FormatError> {
        let p = path
            .to_str()
            .ok_or_else(|| FormatError::InvalidParts("path is not UTF-8".into()))?;
        faiss::write_index(&self.index, p).map_err(|e| faiss_err("write the index", e))
    }

    /// The index as owned parts, by way of faiss's serialisation and our reader.
    pub fn to_parts(&self) -> Result<IndexParts, FormatError> {
        let dir = tempfile::tempdir().map_err(|e| FormatError::io(std::env::temp_dir(), e))?;
        let path = dir.path().join("ivf.index");
        self.write(&path)?;
        let bytes = std::fs::read(&path).map_err(|e| FormatError::io(&path, e))?;
        format::read_faiss_index(&bytes)
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The underlying faiss index.
    pub fn inner_mut(&mut self) -> &mut IVFFlatIndexImpl {
        &mut self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rvc_rule() {
        // min(int(16·√N), N // 39): the RVC shapes.
        assert_eq!(rvc_nlist(10_000), 256);
        assert_eq!(rvc_nlist(30_000), 769);
        assert_eq!(rvc_nlist(100_000), 2564);
        assert_eq!(rvc_nlist(200_000), 5128);
        assert_eq!(rvc_nlist(10), 1);
    }
}
