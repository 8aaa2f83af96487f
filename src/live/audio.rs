//! [`AudioEngine`]: the audio side. Picks up publications once per block, blends queries against
//! one consistent index, crossfades between indexes, hands every index it lets go of back to
//! the control side.

use std::sync::Arc;

use rtrb::{Consumer, Producer};

use super::clock::ticks;
use super::config::MAX_SLOTS;
use super::entry::Entry;
use super::telemetry::{Counters, Telemetry};
use crate::index::{
    blend_neighbours, clamp_ratio, AnyIndex, BlendOutcome, BlendParams, PqSearcher, QueryExpansion,
    Searcher, BLOCK, MAX_K, PQ_MAX_BASE_K,
};

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

/// The audio side's searchers, one per index type, their scratch sized when the engine is made.
struct Searchers {
    flat: Searcher,
    pq: PqSearcher,
}

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
    searchers: Searchers,
    scratch: Box<[f32]>,
    forward: Consumer<Msg>,
    returns: Producer<Retired>,
    telemetry: Arc<Telemetry>,
    counters: Counters,
    block_start: u64,
    expansion: Option<QueryExpansion>,
    /// The nearest-neighbour distances of this block's blends (for the match meter).
    nearest: Nearest,
}

/// Sum of the square roots of blends' nearest squared distances, and how many.
#[derive(Clone, Copy, Debug, Default)]
struct Nearest {
    sum: f64,
    n: u32,
}

impl Nearest {
    #[inline]
    fn add(&mut self, outcome: BlendOutcome) {
        if let BlendOutcome::Blended { nearest, .. } = outcome {
            self.add_squared(nearest);
        }
    }

    #[inline]
    fn add_squared(&mut self, nearest: f32) {
        if nearest.is_finite() {
            self.sum += (nearest.max(0.0) as f64).sqrt();
            self.n += 1;
        }
    }
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
            searchers: Searchers {
                flat: Searcher::new(),
                // n_probe 1 (what the engine searches), every k and every k_factor the
                // loader accepts (see prepare::publishable).
                pq: PqSearcher::new(max_dim, MAX_K, 1, (PQ_MAX_BASE_K / MAX_K) as f32),
            },
            scratch,
            forward,
            returns,
            telemetry,
            counters: Counters::default(),
            block_start: 0,
            nearest: Nearest::default(),
            expansion: None,
        }
    }

    /// Query-side α expansion for the blends from now on ([`QueryExpansion`]; `None`, the
    /// default, searches with each frame itself). With it, [`blend_block`](Self::blend_block)
    /// searches frame by frame (each expanded frame needs its own first search), which costs
    /// about twice a plain blend per frame. Realtime-safe: it only stores the setting.
    pub fn set_query_expansion(&mut self, expansion: Option<QueryExpansion>) {
        self.expansion = expansion.map(QueryExpansion::sanitized);
    }

    /// The query expansion in use.
    pub fn query_expansion(&self) -> Option<QueryExpansion> {
        self.expansion
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
    pub fn serving(&self) -> Option<&AnyIndex> {
        self.serving.as_deref().map(|e| &e.index)
    }

    /// The serving voice's median f0, Hz, if its index records one
    /// ([`IndexInfo::voice_median_f0_hz`](super::IndexInfo::voice_median_f0_hz)).
    pub fn serving_median_f0_hz(&self) -> Option<f32> {
        self.serving
            .as_deref()
            .and_then(|e| e.info.voice_median_f0_hz)
    }

    /// The serving voice's typical spacing
    /// ([`IndexInfo::typical_spacing`](super::IndexInfo::typical_spacing)).
    pub fn serving_typical_spacing(&self) -> Option<f32> {
        self.serving.as_deref().and_then(|e| e.info.typical_spacing)
    }

    /// The match meter of this block's blends (since [`begin_block`](Self::begin_block)): the
    /// mean distance from each blended frame to its nearest stored frame, in the serving
    /// voice's typical spacings ([`IndexInfo::typical_spacing`](super::IndexInfo::typical_spacing);
    /// 1: as close as the voice's own frames are to each other). `None` when nothing was
    /// blended or the spacing is unknown.
    pub fn block_match(&self) -> Option<f32> {
        let spacing = self.serving_typical_spacing()?;
        (self.nearest.n > 0 && spacing > 0.0)
            .then(|| (self.nearest.sum / self.nearest.n as f64 / (spacing as f64).sqrt()) as f32)
            .filter(|m| m.is_finite())
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
        self.nearest = Nearest::default();
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
        let mut mismatched = 0;
        let outcome = self.blend_frame(query, k, ratio, out, &mut mismatched);
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

    /// One frame of [`blend`](Self::blend) without the telemetry.
    fn blend_frame(
        &mut self,
        query: &[f32],
        k: usize,
        ratio: f32,
        out: &mut [f32],
        mismatched: &mut u64,
    ) -> BlendOutcome {
        let params = BlendParams {
            k: k.clamp(1, MAX_K),
            nprobe: 1,
            ratio,
            expansion: self.expansion,
        };
        let outcome = blend_one(
            &mut self.searchers,
            self.serving.as_deref(),
            query,
            &params,
            out,
            mismatched,
        );
        self.nearest.add(outcome);
        if self.fade.running {
            let g = (self.fade.pos + self.fade.step).min(1.0);
            self.fade.pos = g;
            let n = query.len().min(out.len());
            if n <= self.scratch.len() {
                let old = &mut self.scratch[..n];
                let mut ignored = 0;
                blend_one(
                    &mut self.searchers,
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
        outcome
    }

    /// Blends a block of frames: `frames` holds whole frames of `dim` values, `out` receives
    /// as many. The result is bit for bit what [`blend`](Self::blend) called on each frame in
    /// turn returns, crossfades included (the fade advances one frame period per frame), but
    /// each run of up to [`BLOCK`] frames is searched with one
    /// [`Searcher::search_block`] pass over the centroid table, so a block of RVC frames costs
    /// less than as many single blends. Any number of frames may be given.
    ///
    /// Returns how many frames were blended with neighbours of the serving index (the others
    /// were copied: no index serving, ratio 0, a frame holding NaN or infinity, or `dim`
    /// differing from the serving index's dimension, counted in telemetry once per frame).
    /// When `dim` is 0, `frames` is not whole frames or `out` is not as long as `frames`, as
    /// much of `frames` as fits is copied to `out`, the rest of `out` is zeroed, one
    /// mismatched query is counted and 0 is returned. Telemetry counts one query per frame,
    /// each taking the call's time divided by the frames.
    ///
    /// Never panics, allocates, locks or makes a system call.
    pub fn blend_block(
        &mut self,
        frames: &[f32],
        dim: usize,
        k: usize,
        ratio: f32,
        out: &mut [f32],
    ) -> usize {
        let t0 = ticks();
        let k = k.clamp(1, MAX_K);
        let mut mismatched = 0;
        let mut blended = 0;
        let whole = dim > 0 && frames.len() == out.len() && frames.len().is_multiple_of(dim);
        let count = if whole {
            // `dim <= frames.len()` here unless both are empty, so the product cannot overflow
            // for any real slice; saturating keeps it so for an empty one.
            if self.expansion.is_some() {
                // Each expanded frame needs its own first search: frame by frame.
                for (q, o) in frames.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
                    let outcome = self.blend_frame(q, k, ratio, o, &mut mismatched);
                    blended += matches!(outcome, BlendOutcome::Blended { .. }) as usize;
                }
            } else {
                let chunk = dim.saturating_mul(BLOCK);
                for (qs, os) in frames.chunks(chunk).zip(out.chunks_mut(chunk)) {
                    blended += self.blend_chunk(qs, dim, k, ratio, os, &mut mismatched);
                }
            }
            frames.len() / dim
        } else {
            let n = frames.len().min(out.len());
            out[..n].copy_from_slice(&frames[..n]);
            out[n..].fill(0.0);
            mismatched += 1;
            1
        };
        let c = &mut self.counters;
        c.mismatched += mismatched;
        c.queries += count as u64;
        let dt = ticks().wrapping_sub(t0) / (count.max(1) as u64);
        let s = self.active_slot;
        c.slot_queries[s] += count as u64;
        c.slot_last_ticks[s] = dt;
        c.slot_max_ticks[s] = c.slot_max_ticks[s].max(dt);
        c.last_query_ticks = dt;
        c.max_query_ticks = c.max_query_ticks.max(dt);
        blended
    }

    /// `blend_block` for at most [`BLOCK`] whole frames (`qs.len() == os.len()`, a multiple
    /// of `dim > 0`).
    fn blend_chunk(
        &mut self,
        qs: &[f32],
        dim: usize,
        k: usize,
        ratio: f32,
        os: &mut [f32],
        mismatched: &mut u64,
    ) -> usize {
        let r = clamp_ratio(ratio);
        let blended = blend_rows(
            &mut self.searchers,
            self.serving.as_deref(),
            qs,
            dim,
            k,
            r,
            os,
            mismatched,
            &mut self.nearest,
        );
        if !self.fade.running {
            return blended;
        }
        // The faded-out side, frame by frame into the scratch buffer, mixed in while the fade
        // runs (as `blend` does: the frames after the one that ends it are not mixed).
        let from = self
            .fade
            .from
            .as_deref()
            .map(|e| &e.index)
            .filter(|ix| ix.dim() == dim && dim <= self.scratch.len());
        let flat = from.and_then(AnyIndex::as_flat);
        let pq = from.and_then(AnyIndex::as_pq);
        let found = match flat {
            Some(ix) if r > 0.0 => Some(self.searchers.flat.search_block(ix, qs, k, 1)),
            _ => None,
        };
        for (i, (q, o)) in qs
            .chunks_exact(dim)
            .zip(os.chunks_exact_mut(dim))
            .enumerate()
        {
            if !self.fade.running {
                break;
            }
            let g = (self.fade.pos + self.fade.step).min(1.0);
            self.fade.pos = g;
            if dim <= self.scratch.len() {
                let old = &mut self.scratch[..dim];
                match (flat, found, pq) {
                    (Some(ix), Some(found), _) if !found.get(i).is_empty() => {
                        blend_neighbours(ix, q, found.get(i), r, old);
                    }
                    (_, _, Some(ix)) => {
                        let params = BlendParams::new(k, 1, r);
                        self.searchers.pq.blend(ix, q, &params, old);
                    }
                    _ => old.copy_from_slice(q),
                }
                mix(o, old, g);
            } else {
                // Wider than any index can be: the old side is the query itself.
                mix(o, q, g);
            }
            if g >= 1.0 {
                self.fade.running = false; // the old index is handed back at the next block
            }
        }
        blended
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

/// The blends of whole frames `qs` (at most [`BLOCK`]) against `entry` into `os`, searched in
/// one block; frames without neighbours are copied. `ratio` is clamped already. Returns how
/// many frames were blended with neighbours.
#[allow(clippy::too_many_arguments)]
#[inline]
fn blend_rows(
    searchers: &mut Searchers,
    entry: Option<&Entry>,
    qs: &[f32],
    dim: usize,
    k: usize,
    ratio: f32,
    os: &mut [f32],
    mismatched: &mut u64,
    nearest: &mut Nearest,
) -> usize {
    let index = match entry.map(|e| &e.index) {
        Some(AnyIndex::Flat(ix)) if ix.dim() == dim => ix,
        Some(AnyIndex::Pq(ix)) if ix.dim() == dim => {
            // No block search for IVF-PQ: frame by frame (a frame without neighbours, or with
            // NaN or infinity, is copied by the blend itself).
            let params = BlendParams::new(k, 1, ratio);
            let mut blended = 0;
            for (q, o) in qs.chunks_exact(dim).zip(os.chunks_exact_mut(dim)) {
                let outcome = searchers.pq.blend(ix, q, &params, o);
                nearest.add(outcome);
                blended += matches!(outcome, BlendOutcome::Blended { .. }) as usize;
            }
            return blended;
        }
        other => {
            if other.is_some() {
                *mismatched += (qs.len() / dim) as u64;
            }
            os.copy_from_slice(qs);
            return 0;
        }
    };
    if ratio == 0.0 {
        os.copy_from_slice(qs);
        return 0;
    }
    // Frames holding NaN or infinity get no neighbours from the search and are copied, as
    // `Searcher::blend` copies them.
    let found = searchers.flat.search_block(index, qs, k, 1);
    let mut blended = 0;
    for (i, (q, o)) in qs
        .chunks_exact(dim)
        .zip(os.chunks_exact_mut(dim))
        .enumerate()
    {
        let nb = found.get(i);
        if nb.is_empty() {
            o.copy_from_slice(q);
        } else {
            nearest.add_squared(blend_neighbours(index, q, nb, ratio, o));
            blended += 1;
        }
    }
    blended
}

/// One blend against `entry`, or a copy of the query when there is no usable index.
#[inline]
fn blend_one(
    searchers: &mut Searchers,
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
    match entry.map(|e| &e.index) {
        Some(AnyIndex::Flat(ix)) if ix.dim() == query.len() => {
            searchers.flat.blend(ix, query, params, out)
        }
        Some(AnyIndex::Pq(ix)) if ix.dim() == query.len() => {
            searchers.pq.blend(ix, query, params, out)
        }
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

#[cfg(test)]
mod blend_block_tests {
    //! `blend_block` against `blend` frame by frame, bit for bit: two runtimes fed the same
    //! publications, one blending frame by frame, the other block by block.

    use super::super::{build, Controller, LiveConfig};
    use super::*;
    use crate::format::{IndexParts, ListParts, Metadata, Metric};

    struct Rng(u64);
    impl Rng {
        fn f32(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// `n` vectors around `nlist` centroids (each filed under its own centroid).
    fn parts(seed: u64, dim: usize, n: usize, nlist: usize, metric: Metric) -> IndexParts {
        let mut rng = Rng(seed | 1);
        let centroids: Vec<f32> = (0..nlist * dim).map(|_| rng.f32()).collect();
        let mut lists = vec![ListParts::default(); nlist];
        for i in 0..n {
            let l = i % nlist;
            lists[l].ids.push(i as i64);
            let c = &centroids[l * dim..(l + 1) * dim];
            lists[l]
                .vectors
                .extend(c.iter().map(|&x| x + 0.2 * rng.f32()));
        }
        IndexParts {
            dim,
            metric,
            nprobe: 1,
            centroids,
            lists,
            metadata: Metadata::default(),
        }
    }

    fn config() -> LiveConfig {
        LiveConfig {
            slots: 3,
            max_dim: 256,
            crossfade_seconds: 0.05,
            frame_period_seconds: 0.01,
            header_validator: None,
            validator: None,
        }
    }

    fn publish(c: &Controller, slot: usize, p: &IndexParts) {
        let ix = crate::index::IvfIndex::from_parts(p).unwrap();
        c.publish(slot, c.prepare_index(ix, "x").unwrap()).unwrap();
    }

    /// Frames near the centroids of `p`, with a NaN frame at `nan` (if any).
    fn frames(p: &IndexParts, count: usize, seed: u64, nan: Option<usize>) -> Vec<f32> {
        let (d, nlist) = (p.dim, p.nlist());
        let mut rng = Rng(seed | 1);
        let mut out = Vec::with_capacity(count * d);
        for i in 0..count {
            let c = &p.centroids[(i * 7 % nlist) * d..(i * 7 % nlist + 1) * d];
            out.extend(c.iter().map(|&x| x + 0.3 * rng.f32()));
        }
        if let Some(i) = nan {
            out[i * d + 1] = f32::NAN;
        }
        out
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// Runs `blocks` blocks of `frames` through both engines; panics at the first difference.
    #[allow(clippy::too_many_arguments)]
    fn compare(
        single: &mut AudioEngine,
        block: &mut AudioEngine,
        slot: usize,
        fade: f32,
        qs: &[f32],
        dim: usize,
        k: usize,
        ratio: f32,
        blocks: usize,
    ) -> (usize, usize) {
        let mut a = vec![0f32; qs.len()];
        let mut b = vec![0f32; qs.len()];
        let (mut blended, mut fading) = (0, 0);
        for blk in 0..blocks {
            single.begin_block(slot, fade);
            block.begin_block(slot, fade);
            assert_eq!(single.is_fading(), block.is_fading());
            fading += single.is_fading() as usize;
            let mut n = 0;
            for (q, o) in qs.chunks_exact(dim).zip(a.chunks_exact_mut(dim)) {
                n += matches!(single.blend(q, k, ratio, o), BlendOutcome::Blended { .. }) as usize;
            }
            let m = block.blend_block(qs, dim, k, ratio, &mut b);
            assert_eq!(n, m, "block {blk}: frames blended");
            for (f, (x, y)) in a.chunks_exact(dim).zip(b.chunks_exact(dim)).enumerate() {
                assert!(
                    same_bits(x, y),
                    "block {blk}, frame {f}: blend and blend_block differ"
                );
            }
            assert_eq!(single.is_fading(), block.is_fading(), "block {blk}");
            single.end_block();
            block.end_block();
            blended += m;
        }
        (blended, fading)
    }

    fn check_shape(dim: usize, metric: Metric, frames_per_block: usize) {
        let a = parts(11, dim, 900, 24, metric);
        let b = parts(29, dim, 700, 16, metric);
        let (c1, mut single) = build(config(), false);
        let (c2, mut block) = build(config(), false);
        let qs = frames(&a, frames_per_block, 5, Some(3));

        // Nothing serving: every frame passes through.
        let (n, _) = compare(&mut single, &mut block, 0, 0.0, &qs, dim, 8, 0.75, 1);
        assert_eq!(n, 0);

        // A serving, then a crossfade to B long enough to span several blocks and end inside
        // one (frame period 0.01 s, 0.37 s: 37 frames), then B alone.
        for (c, p) in [(&c1, &a), (&c2, &a)] {
            publish(c, 0, p);
        }
        let (n, _) = compare(&mut single, &mut block, 0, 0.0, &qs, dim, 8, 0.75, 2);
        assert!(n > 0, "nothing was blended");
        for (c, p) in [(&c1, &b), (&c2, &b)] {
            publish(c, 1, p);
        }
        let blocks = 37 / frames_per_block + 2;
        let (_, fading) = compare(&mut single, &mut block, 1, 0.37, &qs, dim, 8, 0.75, blocks);
        assert!(fading >= 2, "the crossfade did not span blocks");
        assert!(!block.is_fading());

        // Other k, ratios 0 and 1, an out-of-range ratio and k.
        compare(&mut single, &mut block, 1, 0.0, &qs, dim, 3, 1.0, 1);
        compare(&mut single, &mut block, 1, 0.0, &qs, dim, 8, 0.0, 1);
        compare(&mut single, &mut block, 1, 0.0, &qs, dim, 99, 7.0, 1);

        // Back to A with a fade, then to the empty slot 2 with a fade (the new side is the
        // query itself).
        compare(&mut single, &mut block, 0, 0.05, &qs, dim, 8, 0.5, 3);
        compare(&mut single, &mut block, 2, 0.05, &qs, dim, 8, 0.5, 3);
        assert_eq!(single.serving_id(), None);
    }

    #[test]
    fn blend_block_is_blend_frame_by_frame_bit_for_bit() {
        // Below and above the 8-bit block screen's 128 dimensions, L2 and inner product, a
        // block shorter than BLOCK, exactly BLOCK and longer (split into runs of BLOCK).
        check_shape(32, Metric::L2, 5);
        check_shape(160, Metric::L2, BLOCK);
        check_shape(160, Metric::L2, 2 * BLOCK + 3);
        check_shape(160, Metric::InnerProduct, 21);
        check_shape(48, Metric::InnerProduct, 16);
    }

    #[test]
    fn blend_block_passes_through_what_it_cannot_blend_and_counts_it() {
        let p = parts(3, 32, 300, 8, Metric::L2);
        let (c, mut a) = build(config(), false);
        publish(&c, 0, &p);
        a.begin_block(0, 0.0);
        let qs = frames(&p, 4, 9, None);

        // The serving index has another dimension: copied, one mismatch per frame.
        let mut out = vec![0f32; 4 * 32];
        let wide = frames(&parts(4, 64, 100, 4, Metric::L2), 2, 1, None);
        assert_eq!(a.blend_block(&wide, 64, 8, 1.0, &mut out), 0);
        assert!(same_bits(&out, &wide));

        // Not whole frames, output of another length, dim 0: copied as far as it fits, the
        // rest zeroed, one mismatch each.
        let mut short = vec![9f32; 3 * 32];
        assert_eq!(a.blend_block(&qs, 32, 8, 1.0, &mut short), 0);
        assert!(same_bits(&short, &qs[..3 * 32]));
        let mut long = vec![9f32; 5 * 32];
        assert_eq!(a.blend_block(&qs, 32, 8, 1.0, &mut long), 0);
        assert!(same_bits(&long[..4 * 32], &qs) && long[4 * 32..].iter().all(|&x| x == 0.0));
        let mut same = vec![0f32; 4 * 32];
        assert_eq!(a.blend_block(&qs[..33], 32, 8, 1.0, &mut same[..33]), 0);
        assert_eq!(a.blend_block(&qs, 0, 8, 1.0, &mut same), 0);
        assert!(same_bits(&same, &qs));
        // Empty input is fine and blends nothing.
        assert_eq!(a.blend_block(&[], 32, 8, 1.0, &mut []), 0);

        // And a good call blends every frame.
        assert_eq!(a.blend_block(&qs, 32, 8, 1.0, &mut same), 4);
        a.end_block();
        let t = c.telemetry();
        assert_eq!(t.mismatched_queries, 2 + 4, "{t:?}");
        assert_eq!(t.queries, 2 + 4 + 4, "{t:?}");
        assert_eq!(t.slots[0].queries, t.queries);
    }
}
