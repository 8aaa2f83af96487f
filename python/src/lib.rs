//! `knnblend._knnblend`: the Python face of the core (glue only). An [`Index`] holds an
//! [`AnyIndex`] and one reusable [`AnySearcher`]; `search` and `blend` release the GIL and
//! write straight into numpy arrays, so a call allocates nothing beyond its outputs (none when
//! the caller passes them). The faiss conventions (dtypes, `-1` ids, `±FLT_MAX` distances)
//! and the input conversions live in `knnblend/__init__.py`, which calls these with
//! C-contiguous float32 arrays it has checked; `search_new` takes the common call (such an
//! array, no outputs given) in one step and declines anything else back to it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use knnblend::format::{FormatError, Metric};
use knnblend::index::{AnyIndex, AnySearcher, BlendParams, BLOCK, MAX_K, MAX_NPROBE};
use numpy::{
    Element, PyArray2, PyArrayMethods, PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods,
};
use parking_lot::Mutex;
use pyo3::exceptions::{PyIOError, PyValueError};
use pyo3::prelude::*;

mod runtime;

/// faiss's `METRIC_INNER_PRODUCT`.
const FAISS_METRIC_INNER_PRODUCT: i32 = 0;
/// faiss's `METRIC_L2`.
const FAISS_METRIC_L2: i32 = 1;

/// An index read from an RVC/faiss `.index` or a `.kbi` (see `knnblend.read_index`).
#[pyclass(module = "knnblend._knnblend", frozen)]
struct Index {
    index: AnyIndex,
    searcher: Mutex<AnySearcher>,
    nprobe: AtomicUsize,
    /// Storage position of each id (faiss's `reconstruct` takes ids), built when first needed.
    positions: Mutex<Option<HashMap<i64, usize>>>,
}

fn check_k(k: usize) -> PyResult<()> {
    if (1..=MAX_K).contains(&k) {
        Ok(())
    } else {
        Err(PyValueError::new_err(format!(
            "k = {k} is outside 1..={MAX_K} (knnblend serves at most {MAX_K} neighbours)"
        )))
    }
}

fn rows<'a>(x: &'a PyReadonlyArray2<'_, f32>, d: usize) -> PyResult<&'a [f32]> {
    let shape = x.shape();
    if shape[1] != d {
        return Err(PyValueError::new_err(format!(
            "the queries have {} columns, the index has d = {d}",
            shape[1]
        )));
    }
    x.as_slice()
        .map_err(|_| PyValueError::new_err("the queries must be C-contiguous float32"))
}

/// The elements of an output array the caller handed in, which is written in place.
pub(crate) fn writable<'a, T: Element>(
    a: &'a mut PyReadwriteArray2<'_, T>,
    name: &str,
    dtype: &str,
) -> PyResult<&'a mut [T]> {
    a.as_slice_mut()
        .map_err(|_| PyValueError::new_err(format!("{name} must be C-contiguous {dtype}")))
}

impl Index {
    /// The `k` nearest neighbours of each row of `q` into `dist`/`id` (rows of `k`, faiss's
    /// conventions), with the GIL released.
    fn search_rows(&self, py: Python<'_>, q: &[f32], k: usize, dist: &mut [f32], id: &mut [i64]) {
        let d = self.index.dim();
        let nprobe = self.nprobe.load(Ordering::Relaxed);
        let missing = match self.index.metric() {
            Metric::L2 => f32::MAX,
            Metric::InnerProduct => -f32::MAX,
        };
        let index = &self.index;
        let searcher = &self.searcher;
        py.detach(|| {
            let mut s = searcher.lock();
            match index {
                AnyIndex::Flat(flat) => {
                    dist.fill(missing);
                    id.fill(-1);
                    let mut row = 0;
                    for chunk in q.chunks(BLOCK * d) {
                        let res = s.flat().search_block(flat, chunk, k, nprobe);
                        for i in 0..res.len() {
                            let base = (row + i) * k;
                            for (j, nb) in res.get(i).iter().enumerate() {
                                dist[base + j] = nb.distance;
                                id[base + j] = nb.id;
                            }
                        }
                        row += res.len();
                    }
                }
                AnyIndex::Pq(_) => {
                    for (i, query) in q.chunks_exact(d).enumerate() {
                        let (dr, ir) = (&mut dist[i * k..(i + 1) * k], &mut id[i * k..(i + 1) * k]);
                        let found = s.search(index, query, k, nprobe, ir, dr);
                        dr[found..].fill(missing);
                        ir[found..].fill(-1);
                    }
                }
            }
        });
    }
}

#[pymethods]
impl Index {
    /// Vector dimension.
    #[getter]
    fn d(&self) -> usize {
        self.index.dim()
    }

    /// Number of stored vectors.
    #[getter]
    fn ntotal(&self) -> usize {
        self.index.distinct_vectors()
    }

    /// Number of inverted lists.
    #[getter]
    fn nlist(&self) -> usize {
        self.index.nlist()
    }

    /// Lists probed per query (faiss's `nprobe`; the file's value at first).
    #[getter]
    fn get_nprobe(&self) -> usize {
        self.nprobe.load(Ordering::Relaxed)
    }

    #[setter]
    fn set_nprobe(&self, nprobe: usize) -> PyResult<()> {
        if !(1..=MAX_NPROBE).contains(&nprobe) {
            return Err(PyValueError::new_err(format!(
                "nprobe = {nprobe} is outside 1..={MAX_NPROBE}"
            )));
        }
        self.nprobe.store(nprobe, Ordering::Relaxed);
        Ok(())
    }

    /// faiss's metric code: 1 (`METRIC_L2`) or 0 (`METRIC_INNER_PRODUCT`).
    #[getter]
    fn metric_type(&self) -> i32 {
        match self.index.metric() {
            Metric::L2 => FAISS_METRIC_L2,
            Metric::InnerProduct => FAISS_METRIC_INNER_PRODUCT,
        }
    }

    /// Always true: a file that reads is trained.
    #[getter]
    fn is_trained(&self) -> bool {
        true
    }

    /// The index type: `IVF-Flat`, or the faiss factory string of an IVF-PQ FastScan index.
    #[getter]
    fn index_type(&self) -> String {
        self.index.describe()
    }

    /// The path the index was read from.
    #[getter]
    fn path(&self) -> Option<PathBuf> {
        self.index.path().map(PathBuf::from)
    }

    /// The largest `k` a search takes.
    #[classattr]
    fn max_k() -> usize {
        MAX_K
    }

    /// Writes the `k` nearest neighbours of each row of `x` into `distances` and `ids`
    /// (rows of `k`), faiss's conventions. The GIL is released while it runs.
    fn search_into(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray2<'_, f32>,
        k: usize,
        mut distances: PyReadwriteArray2<'_, f32>,
        mut ids: PyReadwriteArray2<'_, i64>,
    ) -> PyResult<()> {
        check_k(k)?;
        let d = self.index.dim();
        let q = rows(&x, d)?;
        let n = q.len() / d;
        for (name, shape) in [("D", distances.shape()), ("I", ids.shape())] {
            if shape != [n, k] {
                return Err(PyValueError::new_err(format!(
                    "{name} has shape {shape:?}, the search needs ({n}, {k})"
                )));
            }
        }
        let dist = writable(&mut distances, "D", "float32")?;
        let id = writable(&mut ids, "I", "int64")?;
        self.search_rows(py, q, k, dist, id);
        Ok(())
    }

    /// `search` of the common call in one step: `x` a C-contiguous float32 ndarray of
    /// shape `(n, d)` and `1 <= k <= max_k`, the outputs made here. `None` for any other
    /// input, which `knnblend/__init__.py` then converts or refuses with its messages.
    #[allow(clippy::type_complexity)]
    fn search_new<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        k: usize,
    ) -> PyResult<Option<(Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<i64>>)>> {
        let Ok(x) = x.cast::<PyArray2<f32>>() else {
            return Ok(None);
        };
        let d = self.index.dim();
        if check_k(k).is_err() || !x.is_c_contiguous() || x.shape()[1] != d {
            return Ok(None);
        }
        let n = x.shape()[0];
        let (dist, ids) = (
            PyArray2::<f32>::zeros(py, [n, k], false),
            PyArray2::<i64>::zeros(py, [n, k], false),
        );
        {
            let q = x.readonly();
            let (mut dw, mut iw) = (dist.readwrite(), ids.readwrite());
            let q = rows(&q, d)?;
            let (dd, ii) = (
                writable(&mut dw, "D", "float32")?,
                writable(&mut iw, "I", "int64")?,
            );
            self.search_rows(py, q, k, dd, ii);
        }
        Ok(Some((dist, ids)))
    }

    /// RVC's blend of each row of `x` with its `k` neighbours (weights `1/score²`, normalised,
    /// index rate `ratio`) into `out`; rows without neighbours, or holding NaN/inf, are copied.
    /// Returns how many rows were blended. The GIL is released while it runs.
    fn blend_into(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray2<'_, f32>,
        k: usize,
        ratio: f32,
        mut out: PyReadwriteArray2<'_, f32>,
    ) -> PyResult<usize> {
        check_k(k)?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(PyValueError::new_err(format!(
                "ratio = {ratio} is outside [0, 1]"
            )));
        }
        let d = self.index.dim();
        let q = rows(&x, d)?;
        if out.shape() != x.shape() {
            return Err(PyValueError::new_err(format!(
                "out has shape {:?}, the blend needs {:?}",
                out.shape(),
                x.shape()
            )));
        }
        let o = writable(&mut out, "out", "float32")?;
        let params = BlendParams::new(k, self.nprobe.load(Ordering::Relaxed), ratio);
        let index = &self.index;
        let searcher = &self.searcher;
        Ok(py.detach(|| {
            let mut s = searcher.lock();
            let mut blended = 0;
            for (qr, or) in q.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
                if let knnblend::index::BlendOutcome::Blended { .. } =
                    s.blend(index, qr, &params, or)
                {
                    blended += 1;
                }
            }
            blended
        }))
    }

    /// Writes the stored vectors of ids `i0 .. i0 + n` into `out` (rows of `d`); ids not in
    /// the index give zero rows. An IVF-PQ index without exact vectors gives its codes'
    /// reconstructions, as faiss does.
    fn reconstruct_into(&self, i0: i64, mut out: PyReadwriteArray2<'_, f32>) -> PyResult<()> {
        let d = self.index.dim();
        let o = writable(&mut out, "out", "float32")?;
        let mut positions = self.positions.lock();
        let map = positions.get_or_insert_with(|| {
            let ids = match &self.index {
                AnyIndex::Flat(f) => f.ids(),
                AnyIndex::Pq(p) => p.ids(),
            };
            ids.iter().enumerate().map(|(pos, &id)| (id, pos)).collect()
        });
        for (r, row) in o.chunks_exact_mut(d).enumerate() {
            let id = i0 + r as i64;
            match (&self.index, map.get(&id)) {
                (_, None) => row.fill(0.0),
                (AnyIndex::Flat(f), Some(&pos)) => row.copy_from_slice(f.vector(pos)),
                (AnyIndex::Pq(p), Some(&pos)) => p.stored_vector(pos, row),
            }
        }
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "<knnblend.Index {} d={} ntotal={} nlist={} nprobe={} metric={}>",
            self.index.describe(),
            self.index.dim(),
            self.index.distinct_vectors(),
            self.index.nlist(),
            self.nprobe.load(Ordering::Relaxed),
            match self.index.metric() {
                Metric::L2 => "L2",
                Metric::InnerProduct => "IP",
            }
        )
    }
}

/// Reads an RVC/faiss IVF-Flat or IVF-PQ FastScan `.index` (into memory) or a `.kbi`
/// (memory-mapped), fully checked. Raises `OSError` for a missing file and `ValueError` for
/// one that is not a servable index, with the library's message.
#[pyfunction]
fn read_index(py: Python<'_>, path: PathBuf) -> PyResult<Index> {
    let index = py.detach(|| AnyIndex::open(&path)).map_err(|e| {
        let msg = format!("{}: {e}", path.display());
        match e {
            FormatError::Io { .. } => PyIOError::new_err(msg),
            _ => PyValueError::new_err(msg),
        }
    })?;
    if index.ntotal() == 0 {
        return Err(PyValueError::new_err(format!(
            "{}: the index holds no vectors (trained only): add vectors before serving it",
            path.display()
        )));
    }
    let searcher = AnySearcher::for_index(&index, MAX_K, MAX_NPROBE);
    let nprobe = (index.nprobe() as usize).clamp(1, MAX_NPROBE);
    Ok(Index {
        index,
        searcher: Mutex::new(searcher),
        nprobe: AtomicUsize::new(nprobe),
        positions: Mutex::new(None),
    })
}

#[pymodule]
fn _knnblend(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Index>()?;
    m.add_function(wrap_pyfunction!(read_index, m)?)?;
    runtime::register(m)?;
    m.add("MAX_K", MAX_K)?;
    m.add("MAX_NPROBE", MAX_NPROBE)?;
    Ok(())
}
