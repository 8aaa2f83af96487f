//! `knnblend.Runtime`: the core's live runtime for host loops (glue only). Loads run on the
//! library's loader thread with progress; a load into the slot being served, or a change of
//! slot, crossfades; replaced indexes are released off the calling thread.

use std::time::Duration;

use knnblend::live::{
    live, AudioEngine, Controller, IndexInfo, LiveConfig, LoadOutcome, LoadTicket, SlotState,
    MAX_SLOTS,
};
use numpy::{PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods};
use parking_lot::Mutex;
use pyo3::exceptions::{PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn info_dict<'py>(py: Python<'py>, i: &IndexInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", i.id)?;
    d.set_item("name", &i.name)?;
    d.set_item("path", &i.path)?;
    d.set_item("index_type", &i.description)?;
    d.set_item("d", i.dim)?;
    d.set_item("ntotal", i.ntotal)?;
    d.set_item("nlist", i.nlist)?;
    d.set_item("mapped", i.mapped)?;
    d.set_item("mlocked", i.mlocked)?;
    d.set_item("bytes", i.bytes)?;
    Ok(d)
}

/// A background load (`Runtime.load`).
#[pyclass(module = "knnblend._knnblend", frozen)]
struct Ticket {
    ticket: LoadTicket,
}

fn outcome<'py>(py: Python<'py>, o: LoadOutcome) -> PyResult<Option<Bound<'py, PyDict>>> {
    match o {
        LoadOutcome::Published(info) => Ok(Some(info_dict(py, &info)?)),
        LoadOutcome::Superseded => Ok(None),
        LoadOutcome::Failed(e) => Err(PyValueError::new_err(e.to_string())),
    }
}

#[pymethods]
impl Ticket {
    /// `(bytes done, bytes in total)` so far (total 0 until the file is open).
    #[getter]
    fn progress(&self) -> (u64, u64) {
        self.ticket.progress()
    }

    /// Whether the load has ended (published, superseded or failed).
    #[getter]
    fn done(&self) -> bool {
        self.ticket.is_finished()
    }

    /// Waits (GIL released) for the load: the published index's description, `None` when a
    /// newer request for the slot replaced it; raises `ValueError` with the library's message
    /// when it failed (the slot's old index keeps serving), `TimeoutError` after `timeout`
    /// seconds.
    #[pyo3(signature = (timeout=None))]
    fn wait<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let t = &self.ticket;
        let o = match timeout {
            None => py.detach(|| t.wait()),
            Some(s) if s.is_finite() && s >= 0.0 => {
                match py.detach(|| t.wait_timeout(Duration::from_secs_f64(s))) {
                    Some(o) => o,
                    None => {
                        return Err(PyTimeoutError::new_err(format!(
                            "still loading after {s} s"
                        )))
                    }
                }
            }
            Some(s) => {
                return Err(PyValueError::new_err(format!(
                    "timeout {s} is not a duration"
                )))
            }
        };
        outcome(py, o)
    }
}

/// The live runtime: slots of indexes loaded in the background and blended from a host loop
/// with crossfaded swaps.
#[pyclass(module = "knnblend._knnblend", frozen)]
struct Runtime {
    control: Controller,
    audio: Mutex<AudioEngine>,
    crossfade: f32,
}

#[pymethods]
impl Runtime {
    #[new]
    #[pyo3(signature = (slots=8, max_dim=1024, crossfade_seconds=0.05))]
    fn new(slots: usize, max_dim: usize, crossfade_seconds: f32) -> PyResult<Runtime> {
        if !(1..=MAX_SLOTS).contains(&slots) {
            return Err(PyValueError::new_err(format!(
                "slots = {slots} is outside 1..={MAX_SLOTS}"
            )));
        }
        if !(1..=65536).contains(&max_dim) {
            return Err(PyValueError::new_err(format!(
                "max_dim = {max_dim} is outside 1..=65536"
            )));
        }
        if !(crossfade_seconds.is_finite() && crossfade_seconds >= 0.0) {
            return Err(PyValueError::new_err(
                "crossfade_seconds must be a finite duration ≥ 0",
            ));
        }
        let config = LiveConfig {
            slots,
            max_dim,
            crossfade_seconds,
            ..LiveConfig::default()
        };
        let (control, audio) = live(config);
        Ok(Runtime {
            control,
            audio: Mutex::new(audio),
            crossfade: crossfade_seconds,
        })
    }

    /// Starts loading `path` into `slot` on the loader thread; returns at once. The slot's
    /// current index keeps serving until the new one is published.
    fn load(&self, slot: usize, path: std::path::PathBuf) -> Ticket {
        Ticket {
            ticket: self.control.load(slot, path),
        }
    }

    /// Empties `slot` (its index is released off the calling thread).
    fn unload(&self, slot: usize) -> PyResult<()> {
        self.control
            .unload(slot)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The slot's state: `{"state": "empty" | "loading" | "ready" | "failed", ...}` with the
    /// progress, the failure's message and the published index's description.
    fn status<'py>(&self, py: Python<'py>, slot: usize) -> PyResult<Bound<'py, PyDict>> {
        if slot >= self.control.slots() {
            return Err(PyValueError::new_err(format!(
                "there is no slot {slot}: slots are 0 to {}",
                self.control.slots() - 1
            )));
        }
        let s = self.control.status(slot);
        let d = PyDict::new(py);
        match s.state {
            SlotState::Empty => d.set_item("state", "empty")?,
            SlotState::Loading { done, total } => {
                d.set_item("state", "loading")?;
                d.set_item("progress", (done, total))?;
            }
            SlotState::Ready => d.set_item("state", "ready")?,
            SlotState::Failed(m) => {
                d.set_item("state", "failed")?;
                d.set_item("error", m)?;
            }
        }
        d.set_item(
            "index",
            s.info.as_ref().map(|i| info_dict(py, i)).transpose()?,
        )?;
        Ok(d)
    }

    /// The runtime's counters: queries, last and largest query and block times (ns),
    /// mismatched queries, the serving index and whether a crossfade is running.
    fn telemetry<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.control.telemetry();
        let d = PyDict::new(py);
        d.set_item("active_slot", t.active_slot)?;
        d.set_item("serving", t.serving.map(|r| (r.id, r.name)))?;
        d.set_item("fading", t.fading)?;
        d.set_item("queries", t.queries)?;
        d.set_item("last_query_ns", t.last_query_ns)?;
        d.set_item("max_query_ns", t.max_query_ns)?;
        d.set_item("blocks", t.blocks)?;
        d.set_item("last_block_ns", t.last_block_ns)?;
        d.set_item("max_block_ns", t.max_block_ns)?;
        d.set_item("mismatched_queries", t.mismatched_queries)?;
        Ok(d)
    }

    /// Blends one block of frames (C-contiguous float32 rows) against `slot`'s index into
    /// `out`: RVC's blend with `k` neighbours and index rate `ratio`; a change of slot or of
    /// the slot's index crossfades. Returns the frames blended (the rest were copied). The
    /// GIL is released; nothing is allocated.
    fn blend_into(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray2<'_, f32>,
        slot: usize,
        k: usize,
        ratio: f32,
        mut out: PyReadwriteArray2<'_, f32>,
    ) -> PyResult<usize> {
        if slot >= self.control.slots() {
            return Err(PyValueError::new_err(format!("there is no slot {slot}")));
        }
        if out.shape() != x.shape() {
            return Err(PyValueError::new_err("out must have the frames' shape"));
        }
        let dim = x.shape()[1];
        let q = crate::rows(&x, dim)?;
        let o = crate::writable(&mut out, "out", "float32")?;
        let xfade = self.crossfade;
        let audio = &self.audio;
        Ok(py.detach(|| {
            let mut a = audio.lock();
            a.begin_block(slot, xfade);
            let n = a.blend_block(q, dim, k, ratio, o);
            a.end_block();
            n
        }))
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Runtime>()?;
    m.add_class::<Ticket>()?;
    Ok(())
}
