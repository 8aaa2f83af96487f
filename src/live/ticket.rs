//! [`LoadTicket`]: follows one background load from request to outcome.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{IndexInfo, LoadError};

/// How a background load ended.
#[derive(Clone, Debug)]
pub enum LoadOutcome {
    /// The index was published into the slot; the audio side picks it up at its next block.
    Published(Arc<IndexInfo>),
    /// A newer request for the same slot (load, publish or unload) replaced this one before it
    /// was published; the index it loaded (if any) was released.
    Superseded,
    /// Loading failed; the slot's current index keeps serving.
    Failed(Arc<LoadError>),
}

pub(crate) struct TicketState {
    pub(crate) id: u64,
    pub(crate) slot: usize,
    pub(crate) path: PathBuf,
    pub(crate) done: AtomicU64,
    pub(crate) total: AtomicU64,
    outcome: Mutex<Option<LoadOutcome>>,
    finished: Condvar,
}

impl TicketState {
    pub(crate) fn new(id: u64, slot: usize, path: PathBuf) -> Arc<TicketState> {
        Arc::new(TicketState {
            id,
            slot,
            path,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
            outcome: Mutex::new(None),
            finished: Condvar::new(),
        })
    }

    pub(crate) fn progress(&self, done: u64, total: u64) {
        self.total.store(total, Relaxed);
        self.done.store(done, Relaxed);
    }

    pub(crate) fn finish(&self, outcome: LoadOutcome) {
        let mut o = self.outcome.lock();
        if o.is_none() {
            *o = Some(outcome);
        }
        self.finished.notify_all();
    }
}

/// A handle on one [`Controller::load`](super::Controller::load) request. Cheap to clone;
/// dropping it does not cancel the load.
#[derive(Clone)]
pub struct LoadTicket {
    pub(crate) state: Arc<TicketState>,
}

impl LoadTicket {
    /// Unique id of the request.
    pub fn id(&self) -> u64 {
        self.state.id
    }

    /// The slot it loads into.
    pub fn slot(&self) -> usize {
        self.state.slot
    }

    /// The file it loads.
    pub fn path(&self) -> &Path {
        &self.state.path
    }

    /// Bytes validated and prefaulted so far, and the total (0 before loading starts).
    pub fn progress(&self) -> (u64, u64) {
        (
            self.state.done.load(Relaxed),
            self.state.total.load(Relaxed),
        )
    }

    /// The outcome, if the load has finished.
    pub fn outcome(&self) -> Option<LoadOutcome> {
        self.state.outcome.lock().clone()
    }

    /// Whether the load has finished.
    pub fn is_finished(&self) -> bool {
        self.state.outcome.lock().is_some()
    }

    /// Blocks until the load finishes (control side only).
    pub fn wait(&self) -> LoadOutcome {
        let mut o = self.state.outcome.lock();
        loop {
            if let Some(out) = &*o {
                return out.clone();
            }
            self.state.finished.wait(&mut o);
        }
    }

    /// Blocks until the load finishes or `timeout` passes.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<LoadOutcome> {
        let deadline = Instant::now() + timeout;
        let mut o = self.state.outcome.lock();
        loop {
            if let Some(out) = &*o {
                return Some(out.clone());
            }
            if self.state.finished.wait_until(&mut o, deadline).timed_out() {
                return o.clone();
            }
        }
    }
}

impl std::fmt::Debug for LoadTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadTicket")
            .field("id", &self.state.id)
            .field("slot", &self.state.slot)
            .field("path", &self.state.path)
            .field("progress", &self.progress())
            .finish()
    }
}
