//! Lock-free telemetry: the audio side stores plain counters into atomics once per block
//! ([`AudioEngine::end_block`](super::AudioEngine::end_block)); the control side reads them
//! into a [`TelemetrySnapshot`]. Each value is independent (relaxed loads and stores): a
//! snapshot may mix values of two consecutive blocks, never torn values.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use super::config::MAX_SLOTS;

/// The atomics shared by both sides.
#[derive(Default)]
pub(crate) struct Telemetry {
    pub(crate) slot_ids: [AtomicU64; MAX_SLOTS],
    pub(crate) slot_queries: [AtomicU64; MAX_SLOTS],
    pub(crate) slot_last_ticks: [AtomicU64; MAX_SLOTS],
    pub(crate) slot_max_ticks: [AtomicU64; MAX_SLOTS],
    pub(crate) active_slot: AtomicUsize,
    pub(crate) serving_id: AtomicU64,
    pub(crate) fading_from_id: AtomicU64,
    pub(crate) fading: AtomicBool,
    pub(crate) queries: AtomicU64,
    pub(crate) last_query_ticks: AtomicU64,
    pub(crate) max_query_ticks: AtomicU64,
    pub(crate) blocks: AtomicU64,
    pub(crate) last_block_ticks: AtomicU64,
    pub(crate) max_block_ticks: AtomicU64,
    pub(crate) mismatched: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) reset_peaks: AtomicBool,
}

/// The audio side's counters, kept in plain integers and published by `end_block`.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) slot_queries: [u64; MAX_SLOTS],
    pub(crate) slot_last_ticks: [u64; MAX_SLOTS],
    pub(crate) slot_max_ticks: [u64; MAX_SLOTS],
    pub(crate) queries: u64,
    pub(crate) last_query_ticks: u64,
    pub(crate) max_query_ticks: u64,
    pub(crate) blocks: u64,
    pub(crate) last_block_ticks: u64,
    pub(crate) max_block_ticks: u64,
    pub(crate) mismatched: u64,
    pub(crate) deferred: u64,
}

impl Telemetry {
    /// Audio side: publishes the counters (relaxed stores only).
    #[inline]
    pub(crate) fn store(&self, c: &mut Counters) {
        if self.reset_peaks.swap(false, Relaxed) {
            c.max_query_ticks = 0;
            c.max_block_ticks = 0;
            c.slot_max_ticks = [0; MAX_SLOTS];
        }
        for s in 0..MAX_SLOTS {
            self.slot_queries[s].store(c.slot_queries[s], Relaxed);
            self.slot_last_ticks[s].store(c.slot_last_ticks[s], Relaxed);
            self.slot_max_ticks[s].store(c.slot_max_ticks[s], Relaxed);
        }
        self.queries.store(c.queries, Relaxed);
        self.last_query_ticks.store(c.last_query_ticks, Relaxed);
        self.max_query_ticks.store(c.max_query_ticks, Relaxed);
        self.blocks.store(c.blocks, Relaxed);
        self.last_block_ticks.store(c.last_block_ticks, Relaxed);
        self.max_block_ticks.store(c.max_block_ticks, Relaxed);
        self.mismatched.store(c.mismatched, Relaxed);
        self.deferred.store(c.deferred, Relaxed);
    }
}

/// Which index a slot (or the output) is served by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexRef {
    /// The index's [`IndexInfo::id`](super::IndexInfo::id).
    pub id: u64,
    /// Its display name (empty if it was released since).
    pub name: String,
}

/// Per-slot telemetry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotTelemetry {
    /// The index the audio side holds in this slot (what it picked up, not what is still queued).
    pub index: Option<IndexRef>,
    /// Blend calls made while this slot was the active one.
    pub queries: u64,
    /// Duration of the last of those calls, ns.
    pub last_query_ns: u64,
    /// Longest of those calls since start or reset, ns.
    pub max_query_ns: u64,
}

/// A copy of the runtime's telemetry, read without locking the audio side.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetrySnapshot {
    /// One entry per slot.
    pub slots: Vec<SlotTelemetry>,
    /// The slot the audio side was last told to use.
    pub active_slot: usize,
    /// The index whose blend is output (the fade target while a crossfade runs).
    pub serving: Option<IndexRef>,
    /// The index being faded out, while a crossfade runs.
    pub fading_from: Option<IndexRef>,
    /// Whether a crossfade is running.
    pub fading: bool,
    /// Blend calls in total.
    pub queries: u64,
    /// Duration of the last blend call (both blends and the mix during a crossfade), ns.
    pub last_query_ns: u64,
    /// Longest blend call since start or [`Controller::reset_peaks`](super::Controller::reset_peaks), ns.
    pub max_query_ns: u64,
    /// Blocks processed (`end_block` calls).
    pub blocks: u64,
    /// Time from `begin_block` to `end_block` of the last block, ns (includes the caller's work
    /// between them).
    pub last_block_ns: u64,
    /// Longest such block since start or reset, ns.
    pub max_block_ns: u64,
    /// Blend calls whose query length did not match the serving index's dimension (the query
    /// was passed through).
    pub mismatched_queries: u64,
    /// Times the audio side postponed picking up a publication or releasing an index because
    /// the return queue was full (the control side was not collecting).
    pub deferred: u64,
    /// Indexes currently allocated by this runtime: serving, queued, retired but not yet
    /// collected, and prepared but not yet published.
    pub indexes_alive: usize,
}
