//! The live runtime: load indexes off the audio thread, publish them to the audio thread
//! without locks or allocation, crossfade between them, and release them off the audio thread.
//!
//! [`live`] creates the two halves of one runtime:
//!
//! - [`Controller`] (control side: GUI, host background tasks, the library's loader thread)
//!   loads `.kbi` and faiss files into up to [`MAX_SLOTS`] slots, reports progress, state and
//!   telemetry, and releases indexes the audio side has let go of.
//! - [`AudioEngine`] (audio side: one realtime thread) picks up publications once per block
//!   and blends feature frames against the active slot's index.
//!
//! ```no_run
//! use knnblend::live::{live, LiveConfig};
//! let (control, mut audio) = live(LiveConfig { max_dim: 768, ..LiveConfig::default() });
//! let ticket = control.load(0, "voices/alice.kbi");   // returns at once; loads on a thread
//! // … in the audio callback, per block:
//! # let (query, mut out) = (vec![0f32; 768], vec![0f32; 768]);
//! audio.begin_block(0, 0.05);
//! let outcome = audio.blend(&query, 8, 0.75, &mut out); // per feature frame
//! audio.end_block();
//! ```
//!
//! # Why the audio side is safe
//!
//! Everything the audio side touches was allocated and written before it gets it: its
//! [`Searcher`](crate::index::Searcher), its crossfade scratch buffer of `max_dim` floats
//! (every page written at creation), the two ring buffers (every cell cycled once at creation)
//! and the telemetry atomics. Indexes reach it inside an `Arc` that the control side created,
//! through a single-producer single-consumer [`rtrb`] queue (the *forward* queue); popping from
//! it is a few atomic loads and stores.
//!
//! The audio side never lets the last reference of an index go. Every reference it stops
//! using (the index a publication displaces from its slot, the index a crossfade faded out,
//! the old index of an instant switch) is pushed into a second `rtrb` queue (the *return*
//! queue) and dropped by the control side ([`Controller::collect`], run every 20 ms by the
//! loader thread). Before each step that lets go of a reference, the audio side checks that
//! the return queue has room for it; if not, it postpones that step to a later block (the
//! message stays in the forward queue, the old index keeps serving) and counts it in
//! [`TelemetrySnapshot::deferred`]. Because the audio side is the return queue's only producer,
//! room it has seen cannot disappear before it pushes. So an unmap or free never happens on the
//! audio thread, and a full queue never forces one. This is fundsp's realnet scheme; no
//! hand-written atomic protocol is involved (only `rtrb`, `Arc` reference counts and
//! independent relaxed telemetry counters), so there is nothing for a model checker beyond
//! what `rtrb` itself is tested for; the queue-full paths are tested deterministically.
//!
//! Indexes are prefaulted before they are published: a `.kbi` is mapped with `MAP_POPULATE`,
//! every byte is read while verifying checksums, `madvise(WILLNEED)` is given, every page is
//! touched once more and `mlock` is attempted (its failure, e.g. a small `RLIMIT_MEMLOCK`, is
//! reported in [`IndexInfo::mlocked`], not fatal). Page-table entries are per process, so pages
//! touched by the loader thread do not fault when the audio thread reads them.
//!
//! Query times are measured with the CPU's cycle counter (`rdtsc` / `cntvct_el0`), a register
//! read, converted to nanoseconds on the control side.
//!
//! ## What the audio side may do
//! - pop from the forward queue, push to the return queue, clone an `Arc` it holds (an atomic
//!   increment), read indexes it holds, write its own preallocated buffers, store relaxed
//!   atomics, read the cycle counter.
//!
//! ## What it may not do (and does not)
//! - allocate or free memory, drop the last `Arc` of an index (which would unmap or free it),
//!   take a lock (parking_lot and crossbeam belong to the control side), make a system call or
//!   any I/O including logging, touch a page that is not resident, run for an unbounded time
//!   (per block it pops at most the forward queue's capacity; per query it scans one list).
//!
//! The [`AudioEngine`] itself holds indexes: create it and drop it off the audio thread.
//!
//! # The memory-map hazard: files truncated in place
//!
//! A `.kbi` is served straight from its memory map. If another program **truncates the file in
//! place** (for example `cp new.kbi served.kbi`, which opens the existing file with `O_TRUNC`,
//! or a tool that rewrites a file through the same inode) while it is mapped, the kernel drops
//! the pages past the new end from every mapping, locked or not, and the next read of them
//! raises `SIGBUS`, which kills the host. Nothing in a process can prevent another program from
//! doing that; what knnblend does:
//!
//! - its own writers never modify a file in place: [`format::write_kbi`](crate::format::write_kbi)
//!   writes a temporary file, syncs it and renames it over the old name. A rename gives the
//!   name a new inode; the mapping keeps the old one, which stays intact (even if deleted)
//!   until it is unmapped, so a file replaced or deleted while serving keeps serving its old
//!   contents, and loading the path again picks up the new file.
//! - while loading, the loader holds a read lease on the file (Linux, `F_SETLEASE`): a file
//!   another program has open for writing is refused ([`LoadError::Busy`]), and another
//!   program's `open` for writing or `truncate` waits until the load has finished reading, so
//!   the loader's own reads can never hit a truncated page; if a writer started waiting, the load
//!   gives way to it ([`LoadError::Busy`]). Without lease support (a file of another user without
//!   `CAP_LEASE`, some network file systems) this protection is absent.
//! - the loader checks the file's declared size against its real size, verifies every section
//!   checksum, and compares the file's identity, size and modification time before and after
//!   loading: a file another program is writing gives [`LoadError::Busy`],
//!   [`LoadError::Changed`] or a format error, never a half-written index.
//! - faiss files are read into owned memory and are immune.
//!
//! A file overwritten in place *without* truncation (`dd conv=notrunc`, a tool writing through
//! the same inode) keeps its pages: the mapping shows the new bytes. Every bound a query uses
//! (section ranges, list offsets, screening tables) was copied into the index's own memory when
//! it was loaded, so such a write can change the values the audio side reads (it may blend
//! garbage) but cannot make it index out of bounds or panic.
//!
//! Replace index files by renaming (`mv`, or write elsewhere then rename), never by copying over
//! them, while a plugin may be serving them.

mod audio;
pub mod clock;
mod config;
mod control;
mod entry;
mod error;
mod prepare;
mod telemetry;
mod ticket;

use std::sync::Arc;

use rtrb::RingBuffer;

pub use audio::AudioEngine;
pub use config::{HeaderValidator, LiveConfig, Validator, MAX_SLOTS};
pub use control::{Controller, SlotState, SlotStatus};
pub use entry::{IndexInfo, PqInfo, PreparedIndex};
pub use error::LoadError;
pub use telemetry::{IndexRef, SlotTelemetry, TelemetrySnapshot};
pub use ticket::{LoadOutcome, LoadTicket};

use audio::{Msg, Retired, FORWARD_CAPACITY, RETURN_CAPACITY};
use telemetry::Telemetry;

/// Creates a live runtime: the control side (starts its loader thread) and the audio side.
/// Out-of-range settings are clamped (see [`LiveConfig`]).
pub fn live(config: LiveConfig) -> (Controller, AudioEngine) {
    build(config, true)
}

/// [`live`] with or without the loader thread (unit tests drive collection by hand).
pub(crate) fn build(config: LiveConfig, spawn_loader: bool) -> (Controller, AudioEngine) {
    let config = config.sanitized();
    let (mut fwd_tx, mut fwd_rx) = RingBuffer::<Msg>::new(FORWARD_CAPACITY);
    let (mut ret_tx, mut ret_rx) = RingBuffer::<Retired>::new(RETURN_CAPACITY);
    // Write every cell of both ring buffers once, so their pages are resident before the audio
    // thread uses them.
    for _ in 0..FORWARD_CAPACITY {
        let _ = fwd_tx.push(Msg {
            slot: 0,
            entry: None,
        });
    }
    while fwd_rx.pop().is_ok() {}
    for _ in 0..RETURN_CAPACITY {
        let _ = ret_tx.push(None);
    }
    while ret_rx.pop().is_ok() {}

    let telemetry = Arc::new(Telemetry::default());
    let checks = prepare::Checks::new(&config, control::alive_counter());
    let controller = Controller::new(
        config.slots,
        checks,
        fwd_tx,
        ret_rx,
        telemetry.clone(),
        spawn_loader,
    );
    let engine = AudioEngine::new(
        config.slots,
        config.max_dim,
        config.crossfade_seconds,
        config.frame_period_seconds,
        fwd_rx,
        ret_tx,
        telemetry,
    );
    (controller, engine)
}

#[cfg(test)]
mod tests;
