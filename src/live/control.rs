//! [`Controller`]: the control side. Loads indexes off the audio thread, publishes them to the
//! audio side through the forward queue, releases what comes back on the return queue, and
//! reports state, progress and telemetry.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use rtrb::{Consumer, Producer};

use super::audio::{Msg, Retired};
use super::clock::Calibration;
use super::entry::{Entry, IndexInfo, PreparedIndex};
use super::prepare::{self, Checks};
use super::telemetry::{IndexRef, SlotTelemetry, Telemetry, TelemetrySnapshot};
use super::ticket::{LoadOutcome, LoadTicket, TicketState};
use super::LoadError;
use crate::index::AnyIndex;

/// How often the loader thread releases retired indexes and retries queued publications
/// when it has nothing to load.
const COLLECT_INTERVAL: Duration = Duration::from_millis(20);

/// The load state of a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Nothing loaded, nothing loading.
    Empty,
    /// A load is running: bytes validated and prefaulted so far of the total. The previous
    /// index (see [`SlotStatus::info`]) serves meanwhile.
    Loading {
        /// Bytes done.
        done: u64,
        /// Bytes in total (0 until the file has been opened).
        total: u64,
    },
    /// An index is published in the slot.
    Ready,
    /// The last load failed with this message; the previous index (if any) still serves.
    Failed(String),
}

/// State and current index of a slot.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotStatus {
    /// Loading, ready, failed or empty.
    pub state: SlotState,
    /// The index published in the slot (it keeps serving while a newer load runs or after one
    /// failed).
    pub info: Option<IndexInfo>,
}

#[derive(Default)]
struct SlotCtl {
    /// Bumped by every request for the slot; a load publishes only if it is still current.
    generation: u64,
    loading: Option<Arc<TicketState>>,
    failed: Option<String>,
    info: Option<Arc<IndexInfo>>,
    /// A publication not yet in the forward queue (`Some(None)`: an unload).
    pending: Option<Option<Arc<Entry>>>,
}

struct State {
    slots: Vec<SlotCtl>,
    forward: Producer<Msg>,
}

pub(crate) struct Shared {
    nslots: usize,
    checks: Checks,
    state: Mutex<State>,
    returns: Mutex<Consumer<Retired>>,
    telemetry: Arc<Telemetry>,
    registry: Mutex<Vec<(Weak<Entry>, Arc<IndexInfo>)>>,
    calibration: Calibration,
    next_ticket: AtomicU64,
}

enum Request {
    Load {
        ticket: Arc<TicketState>,
        generation: u64,
    },
    Stop,
}

/// The control side of a live runtime: `Send + Sync`, share it with `Arc` between the GUI,
/// the host's background tasks and anything else that is not the audio thread.
///
/// It owns a loader thread that runs [`load`](Self::load) requests one after another and,
/// every 20 ms, releases retired indexes and retries publications the audio side has not had
/// room for yet. Dropping the controller stops that thread (after the load it is running).
pub struct Controller {
    shared: Arc<Shared>,
    requests: Sender<Request>,
    loader: Mutex<Option<JoinHandle<()>>>,
    /// Without a loader thread (unit tests), requests wait here for `Controller::run_queued_loads` (test builds only).
    #[cfg_attr(not(test), allow(dead_code))]
    queued: Option<Receiver<Request>>,
}

impl Controller {
    pub(crate) fn new(
        nslots: usize,
        checks: Checks,
        forward: Producer<Msg>,
        returns: Consumer<Retired>,
        telemetry: Arc<Telemetry>,
        spawn_loader: bool,
    ) -> Controller {
        let shared = Arc::new(Shared {
            nslots,
            checks,
            state: Mutex::new(State {
                slots: (0..nslots).map(|_| SlotCtl::default()).collect(),
                forward,
            }),
            returns: Mutex::new(returns),
            telemetry,
            registry: Mutex::new(Vec::new()),
            calibration: Calibration::start(),
            next_ticket: AtomicU64::new(1),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let (loader, queued) = if spawn_loader {
            let s = shared.clone();
            let handle = std::thread::Builder::new()
                .name("knnblend-loader".into())
                .spawn(move || loader_thread(s, rx))
                .expect("cannot start the index loader thread");
            (Some(handle), None)
        } else {
            (None, Some(rx))
        };
        Controller {
            shared,
            requests: tx,
            loader: Mutex::new(loader),
            queued,
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.shared.nslots
    }

    /// Largest vector dimension accepted.
    pub fn max_dim(&self) -> usize {
        self.shared.checks.max_dim
    }

    /// Loads `path` into `slot` on the loader thread and publishes it when it is ready.
    ///
    /// A later request for the same slot (another `load`, a [`publish`](Self::publish) or an
    /// [`unload`](Self::unload)) supersedes this one: if it has not been published by then, it
    /// never is. A failed load leaves the slot's current index serving. Follow it with the
    /// returned ticket or with [`status`](Self::status).
    pub fn load(&self, slot: usize, path: impl Into<PathBuf>) -> LoadTicket {
        let path = path.into();
        let id = self.shared.next_ticket.fetch_add(1, Relaxed);
        let ticket = TicketState::new(id, slot, path.clone());
        let out = LoadTicket {
            state: ticket.clone(),
        };
        if slot >= self.shared.nslots {
            ticket.finish(LoadOutcome::Failed(Arc::new(self.no_such_slot(slot))));
            return out;
        }
        let generation = {
            let mut st = self.shared.state.lock();
            let s = &mut st.slots[slot];
            s.generation += 1;
            s.loading = Some(ticket.clone());
            s.failed = None;
            s.generation
        };
        let request = Request::Load {
            ticket: ticket.clone(),
            generation,
        };
        if self.requests.send(request).is_err() {
            let e = Arc::new(LoadError::LoaderStopped { path });
            self.shared.fail(slot, generation, &e);
            ticket.finish(LoadOutcome::Failed(e));
        }
        out
    }

    /// Loads and checks `path` on the calling thread (for hosts that run their own background
    /// tasks): reads its header and runs the cheap checks on it (width, header validator), then
    /// validates every byte, prefaults, tries `mlock`, runs the validator.
    /// `progress(done, total)` counts bytes. Publish the result with [`publish`](Self::publish).
    pub fn prepare(
        &self,
        path: impl AsRef<Path>,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<PreparedIndex, LoadError> {
        prepare::prepare_file(path.as_ref(), &self.shared.checks, &mut progress)
    }

    /// Checks an index built in memory (dimension and header validator on its
    /// [`header`](AnyIndex::header), then the validator), prefaults and tries to lock it,
    /// ready for [`publish`](Self::publish). `name` is what the user interface shows.
    pub fn prepare_index(
        &self,
        index: impl Into<AnyIndex>,
        name: &str,
    ) -> Result<PreparedIndex, LoadError> {
        let index = index.into();
        let path = index.path().map(Path::to_path_buf).unwrap_or_default();
        prepare::finish(index, name.to_string(), &path, &self.shared.checks)
    }

    /// Publishes a prepared index into `slot`, superseding any load still running for it. The
    /// audio side picks it up at its next block (crossfading if the slot is active); the index
    /// it replaces is released on this side once the audio side hands it back.
    pub fn publish(&self, slot: usize, prepared: PreparedIndex) -> Result<(), LoadError> {
        if slot >= self.shared.nslots {
            return Err(self.no_such_slot(slot));
        }
        self.shared.install(slot, Some(prepared.entry), None);
        Ok(())
    }

    /// Empties `slot`, superseding any load still running for it. When it is the active slot,
    /// the output crossfades to the unprocessed query.
    pub fn unload(&self, slot: usize) -> Result<(), LoadError> {
        if slot >= self.shared.nslots {
            return Err(self.no_such_slot(slot));
        }
        self.shared.install(slot, None, None);
        Ok(())
    }

    /// The state of `slot` (a slot number out of range reports [`SlotState::Failed`]).
    pub fn status(&self, slot: usize) -> SlotStatus {
        if slot >= self.shared.nslots {
            return SlotStatus {
                state: SlotState::Failed(self.no_such_slot(slot).to_string()),
                info: None,
            };
        }
        let st = self.shared.state.lock();
        let s = &st.slots[slot];
        let state = if let Some(t) = &s.loading {
            SlotState::Loading {
                done: t.done.load(Relaxed),
                total: t.total.load(Relaxed),
            }
        } else if let Some(f) = &s.failed {
            SlotState::Failed(f.clone())
        } else if s.info.is_some() {
            SlotState::Ready
        } else {
            SlotState::Empty
        };
        SlotStatus {
            state,
            info: s.info.as_deref().cloned(),
        }
    }

    /// Releases the indexes the audio side has handed back and queues publications it had no
    /// room for. The loader thread does this every 20 ms; call it to release memory sooner.
    /// Returns how many references were released.
    pub fn collect(&self) -> usize {
        self.shared.collect()
    }

    /// Number of indexes this runtime holds in memory: serving, queued, handed back but not
    /// collected yet, and prepared but not yet published or dropped.
    pub fn indexes_alive(&self) -> usize {
        self.shared.checks.alive.load(Relaxed)
    }

    /// Restarts the maximum query and block times (at the audio side's next block).
    pub fn reset_peaks(&self) {
        self.shared.telemetry.reset_peaks.store(true, Relaxed);
    }

    /// Reads the audio side's telemetry (lock-free with respect to the audio side). The first
    /// call within 5 ms of creation waits for the rest of those 5 ms, to calibrate the clock.
    pub fn telemetry(&self) -> TelemetrySnapshot {
        let t = &*self.shared.telemetry;
        let ns_per_tick = self.shared.calibration.ns_per_tick();
        let ns = |a: &AtomicU64| Calibration::to_ns(a.load(Relaxed), ns_per_tick);
        let registry = self.shared.registry.lock();
        let lookup = |id: u64| -> Option<IndexRef> {
            (id != 0).then(|| IndexRef {
                id,
                name: registry
                    .iter()
                    .find(|(_, info)| info.id == id)
                    .map(|(_, info)| info.name.clone())
                    .unwrap_or_default(),
            })
        };
        TelemetrySnapshot {
            slots: (0..self.shared.nslots)
                .map(|s| SlotTelemetry {
                    index: lookup(t.slot_ids[s].load(Relaxed)),
                    queries: t.slot_queries[s].load(Relaxed),
                    last_query_ns: ns(&t.slot_last_ticks[s]),
                    max_query_ns: ns(&t.slot_max_ticks[s]),
                })
                .collect(),
            active_slot: t.active_slot.load(Relaxed),
            serving: lookup(t.serving_id.load(Relaxed)),
            fading_from: lookup(t.fading_from_id.load(Relaxed)),
            fading: t.fading.load(Relaxed),
            queries: t.queries.load(Relaxed),
            last_query_ns: ns(&t.last_query_ticks),
            max_query_ns: ns(&t.max_query_ticks),
            blocks: t.blocks.load(Relaxed),
            last_block_ns: ns(&t.last_block_ticks),
            max_block_ns: ns(&t.max_block_ticks),
            mismatched_queries: t.mismatched.load(Relaxed),
            deferred: t.deferred.load(Relaxed),
            indexes_alive: self.indexes_alive(),
        }
    }

    /// Runs the queued load requests on the calling thread (only without a loader thread).
    #[cfg(test)]
    pub(crate) fn run_queued_loads(&self) {
        if let Some(rx) = &self.queued {
            while let Ok(Request::Load { ticket, generation }) = rx.try_recv() {
                run_load(&self.shared, &ticket, generation);
            }
        }
    }

    fn no_such_slot(&self, slot: usize) -> LoadError {
        LoadError::NoSuchSlot {
            slot,
            slots: self.shared.nslots,
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.requests.send(Request::Stop);
        if let Some(h) = self.loader.lock().take() {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("slots", &self.shared.nslots)
            .field("indexes_alive", &self.indexes_alive())
            .finish()
    }
}

impl Shared {
    /// Makes `entry` the slot's published index (`None`: empties it). With `expect`, only if
    /// the slot's generation is still `expect` (a background load); otherwise it supersedes
    /// whatever is running. Returns whether it was installed.
    fn install(&self, slot: usize, entry: Option<Arc<Entry>>, expect: Option<u64>) -> bool {
        let garbage;
        let installed = {
            let mut st = self.state.lock();
            let s = &mut st.slots[slot];
            match expect {
                Some(g) if s.generation != g => {
                    garbage = entry;
                    false
                }
                _ => {
                    if expect.is_none() {
                        s.generation += 1;
                    }
                    s.loading = None;
                    s.failed = None;
                    s.info = entry.as_ref().map(|e| e.info.clone());
                    if let Some(e) = &entry {
                        self.registry
                            .lock()
                            .push((Arc::downgrade(e), e.info.clone()));
                    }
                    garbage = s.pending.replace(entry).flatten();
                    flush(&mut st);
                    true
                }
            }
        };
        drop(garbage); // released outside the lock
        installed
    }

    /// Records a failed load, if it is still the slot's current request.
    fn fail(&self, slot: usize, generation: u64, e: &LoadError) {
        let mut st = self.state.lock();
        let s = &mut st.slots[slot];
        if s.generation == generation {
            s.loading = None;
            s.failed = Some(e.to_string());
        }
    }

    fn is_current(&self, slot: usize, generation: u64) -> bool {
        self.state.lock().slots[slot].generation == generation
    }

    fn collect(&self) -> usize {
        let mut garbage: Vec<Arc<Entry>> = Vec::new();
        {
            let mut r = self.returns.lock();
            while let Ok(e) = r.pop() {
                garbage.extend(e);
            }
        }
        let released = garbage.len();
        drop(garbage); // the last reference of an index is dropped here, never on the audio side
        flush(&mut self.state.lock());
        self.registry.lock().retain(|(w, _)| w.strong_count() > 0);
        released
    }
}

/// Moves pending publications into the forward queue while it has room.
fn flush(st: &mut State) {
    let State { slots, forward } = st;
    for (slot, s) in slots.iter_mut().enumerate() {
        if forward.slots() == 0 {
            break;
        }
        if let Some(entry) = s.pending.take() {
            if let Err(rtrb::PushError::Full(msg)) = forward.push(Msg { slot, entry }) {
                s.pending = Some(msg.entry); // cannot happen: room was checked
            }
        }
    }
}

fn loader_thread(shared: Arc<Shared>, requests: Receiver<Request>) {
    loop {
        match requests.recv_timeout(COLLECT_INTERVAL) {
            Ok(Request::Load { ticket, generation }) => run_load(&shared, &ticket, generation),
            Ok(Request::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        shared.collect();
    }
    shared.collect();
}

fn run_load(shared: &Shared, ticket: &Arc<TicketState>, generation: u64) {
    let slot = ticket.slot;
    if !shared.is_current(slot, generation) {
        ticket.finish(LoadOutcome::Superseded);
        return;
    }
    // A panic in a validator must neither kill the loader nor leave the ticket unfinished.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        prepare::prepare_file(&ticket.path, &shared.checks, &mut |d, t| {
            ticket.progress(d, t)
        })
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(LoadError::Rejected {
            path: ticket.path.clone(),
            reason: format!("checking the index failed unexpectedly ({what})"),
        })
    });
    match result {
        Ok(prepared) => {
            let info = prepared.entry.info.clone();
            if shared.install(slot, Some(prepared.entry), Some(generation)) {
                ticket.finish(LoadOutcome::Published(info));
            } else {
                ticket.finish(LoadOutcome::Superseded);
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            shared.fail(slot, generation, &e);
            ticket.finish(LoadOutcome::Failed(e));
        }
    }
}

/// Used by `live()`.
pub(crate) fn alive_counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}
