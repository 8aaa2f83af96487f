//! [`AudioEngine`]: the audio side. Picks up publications once per block, blends queries against
//! one consistent index, crossfades between indexes, hands every index it lets go of back to
//! the control side.

use std::sync::Arc;

use rtrb::{Consumer, Producer};

use super::clock::ticks;
use super::config::MAX_SLOTS;
use super::entry::Entry;
use super::telemetry::{Counters, Telemetry};
use crate::index::{BlendOutcome, BlendParams, IvfIndex, Searcher, MAX_K};

/// A publication: slot `slot` now holds `entry` (`None`: the slot was emptied).
pub(crate) struct Msg {
    pub(crate) slot: usize,
    pub(crate) entry: Option<Arc<Entry>>,
}

/// What travels back: a reference the audio side let go of.
pub(crate) type Retired = Option<Arc<Entry>>;

/// Capacity of the forward queue. The control side never has more than one message per slot
/// waiting to be queued (later ones replace it), so this only sets how many can be in flight.
pub(crate) const FORWARD_CAPACITY: usize = 2 * MAX_SLOTS;
/// Capacity of the return queue. Every step that lets go of a reference first checks there is
/// room for it, so a full return queue only postpones work to a later block.
pub(crate) const RETURN_CAPACITY: usize = 2 * MAX_SLOTS + 4;

struct Fade {
    running: bool,
    from: Option<Arc<Entry>>,
    pos: f32,
    step: f32,
}

/// The audio side of a live runtime (see the [module documentation](super) for the rules it
/// keeps). `Send`, used from one thread at a time: call [`begin_block`](Self::begin_block), any
/// number of [`blend`](Self::blend)s, then [`end_block`](Self::end_block) per audio block.
///
/// None of its methods allocates, frees, locks, blocks or makes a system call.
///
/// Dropping it releases the indexes it holds, so drop it off the audio thread (when the
/// plugin is deactivated or destroyed), never inside the audio callback.
pub struct AudioEngine {
    nslots: usize,
    slots: [Option<Arc<Entry>>; MAX_SLOTS],
    serving: Option<Arc<Entry>>,
    fade: Fade,
    active_slot: usize,
    frame_period: f32,
    default_crossfade: f32,
    searcher: Searcher,
    scratch: Box<[f32]>,
    forward: Consumer<Msg>,
    returns: Producer<Retired>,
    telemetry: Arc<Telemetry>,
    counters: Counters,
    block_start: u64,
}

impl AudioEngine {
    pub(crate) fn new(
        nslots: usize,
        max_dim: usize,
        crossfade_seconds: f32,
        frame_period_seconds: f32,
        forward: Consumer<Msg>,
        returns: Producer<Retired>,
        telemetry: Arc<Telemetry>,
    ) -> AudioEngine {
        let mut scratch = vec![0f32; max_dim].into_boxed_slice();
        // Zeroed allocations may be fresh untouched pages: write every page now so the audio
        // thread never takes the first-touch fault (volatile so it is not optimised away).
        for i in (0..scratch.len()).step_by(1024) {
            // SAFETY: i is in bounds.
            unsafe { std::ptr::write_volatile(scratch.as_mut_ptr().add(i), 0.0) };
        }
        AudioEngine {
            nslots,
            slots: Default::default(),
            serving: None,
            fade: Fade {
                running: false,
                from: None,
                pos: 0.0,
                step: 1.0,
            },
            active_slot: 0,
            frame_period: frame_period_seconds,
            default_crossfade: crossfade_seconds,
            searcher: Searcher::new(),
            scratch,
            forward,
            returns,
            telemetry,
            counters: Counters::default(),
            block_start: 0,
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.nslots
    }

    /// Largest query length a crossfade can mix (the configured `max_dim`).
    pub fn max_dim(&self) -> usize {
        self.scratch.len()
    }

    /// Sets the time one [`blend`](Self::blend) call advances a crossfade (the feature frame
    /// period); for hosts that change sample rate. Zero or less makes switches instant.
    pub fn set_frame_period_seconds(&mut self, seconds: f32) {
        self.frame_period = if seconds.is_finite() { seconds } else { 0.0 };
    }

    /// The index whose blend is output (the crossfade target while a crossfade runs), for
    /// reading its dimension or metadata. `None` when the active slot is empty.
    pub fn serving(&self) -> Option<&IvfIndex> {
        self.serving.as_deref().map(|e| &e.index)
    }

    /// The [`IndexInfo::id`](super::IndexInfo::id) of the serving index.
    pub fn serving_id(&self) -> Option<u64> {
        self.serving.as_deref().map(Entry::id)
    }

    /// Whether a crossfade is running.
    pub fn is_fading(&self) -> bool {
        self.fade.running
    }

    /// The slot in use (as last given to `begin_block`, clamped).
    pub fn active_slot(&self) -> usize {
        self.active_slot
    }

    /// Starts a block: picks up what the control side has published, selects `active_slot`
    /// (clamped to the slot count) and, if that changes the serving index, starts a crossfade
    /// of `crossfade_seconds` (negative or non-finite: the configured default; shorter than one
    /// frame period: an instant switch). A change requested while a crossfade runs starts when
    /// it ends.
    pub fn begin_block(&mut self, active_slot: usize, crossfade_seconds: f32) {
        self.block_start = ticks();
        self.active_slot = active_slot.min(self.nslots - 1);

        // 1. A finished crossfade: hand the faded-out index back.
        if !self.fade.running && self.fade.from.is_some() {
            if self.returns.slots() > 0 {
                let from = self.fade.from.take();
                self.retire(from);
            } else {
                self.counters.deferred += 1;
            }
        }

        // 2. Publications. Accept one only while what it displaces can be handed back.
        loop {
            if self.returns.slots() == 0 {
                if !self.forward.is_empty() {
                    self.counters.deferred += 1;
                }
                break;
            }
            let Ok(msg) = self.forward.pop() else { break };
            let displaced = if msg.slot < self.nslots {
                std::mem::replace(&mut self.slots[msg.slot], msg.entry)
            } else {
                msg.entry // the control side checks slots; never reached
            };
            self.retire(displaced);
        }

        // 3. A change of the serving index, unless a crossfade is still running or its old
        // index has not been handed back yet.
        let a = self.active_slot;
        if !self.fade.running && self.fade.from.is_none() && !same(&self.serving, &self.slots[a]) {
            let seconds = if crossfade_seconds.is_finite() && crossfade_seconds >= 0.0 {
                crossfade_seconds
            } else {
                self.default_crossfade
            };
            let frames = if self.frame_period > 0.0 {
                seconds / self.frame_period
            } else {
                0.0
            };
            if frames >= 1.0 {
                let target = self.slots[a].clone();
                self.fade = Fade {
                    running: true,
                    from: std::mem::replace(&mut self.serving, target),
                    pos: 0.0,
                    step: 1.0 / frames,
                };
            } else if self.serving.is_none() || self.returns.slots() > 0 {
                let target = self.slots[a].clone();
                let old = std::mem::replace(&mut self.serving, target);
                self.retire(old);
            } else {
                // No room to hand the old index back: keep serving it, switch next block.
                self.counters.deferred += 1;
            }
        }
    }

    /// Blends one query (RVC retrieval, n_probe 1): `out = ratio · Σ wᵢ vᵢ + (1 − ratio) · query`
    /// over the `k` nearest stored vectors of the serving index. While a crossfade runs, the
    /// blends of the old and the new index are mixed, the new one's share growing by one frame
    /// period per call. `out` must be as long as `query`.
    ///
    /// The query is copied to `out` (outcome [`BlendOutcome::Empty`]) when no index is serving
    /// or when its length differs from the index's dimension (counted in telemetry). Never
    /// panics, allocates, locks or makes a system call.
    pub fn blend(&mut self, query: &[f32], k: usize, ratio: f32, out: &mut [f32]) -> BlendOutcome {
        let t0 = ticks();
        let params = BlendParams {
            k: k.clamp(1, MAX_K),
            nprobe: 1,
            ratio,
        };
        let mut mismatched = 0;
        let outcome = blend_one(
            &mut self.searcher,
            self.serving.as_deref(),
            query,
            &params,
            out,
            &mut mismatched,
        );
        if self.fade.running {
            let g = (self.fade.pos + self.fade.step).min(1.0);
            self.fade.pos = g;
            let n = query.len().min(out.len());
            if n <= self.scratch.len() {
                let old = &mut self.scratch[..n];
                let mut ignored = 0;
                blend_one(
                    &mut self.searcher,
                    self.fade.from.as_deref(),
                    &query[..n],
                    &params,
                    old,
                    &mut ignored,
                );
                mix(&mut out[..n], old, g);
            } else {
                // Wider than any index can be: the old side is the query itself.
                mix(&mut out[..n], &query[..n], g);
            }
            if g >= 1.0 {
                self.fade.running = false; // the old index is handed back at the next block
            }
        }
        let c = &mut self.counters;
        c.mismatched += mismatched;
        c.queries += 1;
        let dt = ticks().wrapping_sub(t0);
        let s = self.active_slot;
        c.slot_queries[s] += 1;
        c.slot_last_ticks[s] = dt;
        c.slot_max_ticks[s] = c.slot_max_ticks[s].max(dt);
        c.last_query_ticks = dt;
        c.max_query_ticks = c.max_query_ticks.max(dt);
        outcome
    }

    /// Ends a block: publishes telemetry (relaxed atomic stores).
    pub fn end_block(&mut self) {
        let c = &mut self.counters;
        c.blocks += 1;
        let dt = ticks().wrapping_sub(self.block_start);
        c.last_block_ticks = dt;
        c.max_block_ticks = c.max_block_ticks.max(dt);
        let t = &*self.telemetry;
        use std::sync::atomic::Ordering::Relaxed;
        for (a, s) in t.slot_ids.iter().zip(&self.slots) {
            a.store(s.as_deref().map_or(0, Entry::id), Relaxed);
        }
        t.active_slot.store(self.active_slot, Relaxed);
        t.serving_id
            .store(self.serving.as_deref().map_or(0, Entry::id), Relaxed);
        t.fading_from_id
            .store(self.fade.from.as_deref().map_or(0, Entry::id), Relaxed);
        t.fading.store(self.fade.running, Relaxed);
        t.store(c);
    }

    /// Hands a reference back to the control side. Callers check there is room first.
    #[inline]
    fn retire(&mut self, entry: Retired) {
        if entry.is_none() {
            return;
        }
        if let Err(rtrb::PushError::Full(e)) = self.returns.push(entry) {
            // Unreachable: this side is the queue's only producer and checked for room. Should
            // it ever happen, leaking one reference is the safe outcome: freeing here is not.
            debug_assert!(false, "return queue full after a room check");
            std::mem::forget(e);
        }
    }
}

fn same(a: &Option<Arc<Entry>>, b: &Option<Arc<Entry>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    }
}

/// `out = old + g · (out − old)`: linear crossfade from `old` to `out`.
#[inline]
fn mix(out: &mut [f32], old: &[f32], g: f32) {
    for (o, &a) in out.iter_mut().zip(old) {
        *o = a + g * (*o - a);
    }
}

/// One blend against `entry`, or a copy of the query when there is no usable index.
#[inline]
fn blend_one(
    searcher: &mut Searcher,
    entry: Option<&Entry>,
    query: &[f32],
    params: &BlendParams,
    out: &mut [f32],
    mismatched: &mut u64,
) -> BlendOutcome {
    if out.len() != query.len() {
        let n = out.len().min(query.len());
        out[..n].copy_from_slice(&query[..n]);
        out[n..].fill(0.0);
        *mismatched += 1;
        return BlendOutcome::Empty;
    }
    match entry {
        Some(e) if e.index.dim() == query.len() => searcher.blend(&e.index, query, params, out),
        Some(_) => {
            *mismatched += 1;
            out.copy_from_slice(query);
            BlendOutcome::Empty
        }
        None => {
            out.copy_from_slice(query);
            BlendOutcome::Empty
        }
    }
}
