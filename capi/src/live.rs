//! The live runtime's control side: `kb_live_new` (both halves), `kb_controller` (load,
//! publish, unload, status, telemetry) and `kb_ticket` (one load's progress and outcome).

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;
use std::time::Duration;

use knnblend_core::format::IndexHeader;
use knnblend_core::index::AnyIndex;
use knnblend_core::live::{
    live, Controller, HeaderValidator, LiveConfig, LoadOutcome, LoadTicket, SlotState, Validator,
    MAX_SLOTS,
};

use crate::audio::kb_audio;
use crate::error::*;
use crate::index::{kb_index, kb_index_info, KB_MAX_DIM};
use crate::util::{fill, text};

/// Most slots a runtime has.
pub const KB_MAX_SLOTS: usize = 8;
/// Size of `kb_slot_status.name`, NUL included.
pub const KB_NAME_CAP: usize = 256;
/// Size of `kb_slot_status.message`, NUL included.
pub const KB_MESSAGE_CAP: usize = 1024;
/// Size of the reason buffer a `kb_validate_fn` is given, NUL included.
pub const KB_REASON_CAP: usize = 512;
/// `kb_ticket_wait` timeout that waits until the load ends.
pub const KB_WAIT_FOREVER: u32 = 0xFFFF_FFFF;

/// A validator: called on the loader thread (or the thread calling `kb_controller_publish`)
/// for every index before it is published, with the index (lent for the call only: never
/// free, publish or keep it; inspect it with `kb_index_get_info`, `kb_index_features`,
/// `kb_index_metadata_json`). Return 0 to accept it; anything else refuses it, and the NUL-terminated UTF-8 text written to
/// `reason` (`reason_cap` bytes) becomes the load's `KB_ERR_REJECTED` message. It must not
/// throw (a C++ exception must not cross into the library), block for long or call the
/// controller. `user` is the config's `validate_user`: it is used from the loader thread, so
/// what it points to must be safe to use from there and must outlive the controller.
pub type kb_validate_fn = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        index: *const kb_index,
        reason: *mut c_char,
        reason_cap: usize,
    ) -> c_int,
>;

/// Settings of a live runtime, fixed at `kb_live_new`. Start from `kb_live_config_default()`
/// and change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kb_live_config {
    /// Number of slots, 1..KB_MAX_SLOTS (default 8).
    pub slots: usize,
    /// Largest vector dimension an index may have, 1..KB_MAX_DIM (default 768, RVC v2's
    /// ContentVec). The crossfade scratch is sized for it; wider indexes are refused with
    /// `KB_ERR_DIMENSION`.
    pub max_dim: usize,
    /// Crossfade time used when `kb_audio_begin_block` is given a negative or non-finite one
    /// (default 0.05 s; negative here: 0.05 s).
    pub crossfade_seconds: f32,
    /// Time one blended frame advances a crossfade: the feature frame period, hop / sample
    /// rate (default 0.01 s). Zero or less makes every switch instant.
    pub frame_period_seconds: f32,
    /// When not 0, every index must have exactly this dimension (others are refused with
    /// `KB_ERR_REJECTED`); 0 accepts any dimension up to `max_dim` (default 0).
    pub require_dim: usize,
    /// Optional validator (default NULL).
    pub validate: kb_validate_fn,
    /// Passed to `validate` (default NULL).
    pub validate_user: *mut c_void,
}

/// The control side of a live runtime: loads index files on the library's own loader thread,
/// publishes them to the audio side without locks, releases what the audio side let go of,
/// reports status and telemetry. Thread-safe: any number of non-realtime threads may call it
/// at once. Never call it from the realtime thread (it locks and allocates).
pub struct kb_controller {
    control: Controller,
}

/// One `kb_controller_load` request: poll it for progress and outcome, or wait on it.
/// Thread-safe; freeing it does not cancel the load.
pub struct kb_ticket {
    ticket: LoadTicket,
}

/// The load state of a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kb_slot_state {
    /// Nothing loaded, nothing loading.
    KB_SLOT_EMPTY = 0,
    /// A load is running (`done` of `total` bytes); the previous index, if any, serves.
    KB_SLOT_LOADING = 1,
    /// An index is published in the slot.
    KB_SLOT_READY = 2,
    /// The last load failed (`message` says why); the previous index, if any, still serves.
    KB_SLOT_FAILED = 3,
}

/// State of a slot (plain data, strings included: nothing to free).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct kb_slot_status {
    /// Empty, loading, ready or failed.
    pub state: kb_slot_state,
    /// Loading: bytes validated and prefaulted so far.
    pub done: u64,
    /// Loading: bytes in total (0 until the file is opened).
    pub total: u64,
    /// Whether an index is published in the slot (it keeps serving while a newer load runs
    /// and after one failed); `index` and `name` describe it.
    pub has_index: bool,
    /// The published index (all zero without one).
    pub index: kb_index_info,
    /// Its display name (the file name), NUL-terminated UTF-8, truncated to fit.
    pub name: [c_char; KB_NAME_CAP],
    /// `KB_SLOT_FAILED`: why, NUL-terminated UTF-8, truncated to fit (the load's ticket has
    /// the whole message). Empty otherwise.
    pub message: [c_char; KB_MESSAGE_CAP],
}

/// How a load is doing.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kb_load_state {
    /// Still queued or loading.
    KB_LOAD_PENDING = 0,
    /// Published into the slot; the audio side picks it up at its next block.
    KB_LOAD_PUBLISHED = 1,
    /// A newer request for the slot (load, publish or unload) replaced it before it was
    /// published.
    KB_LOAD_SUPERSEDED = 2,
    /// It failed (`error` and the poll's `kb_error` say why); the slot's index keeps serving.
    KB_LOAD_FAILED = 3,
}

/// Progress and outcome of a load (plain data).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct kb_ticket_status {
    /// Unique id of the request.
    pub ticket_id: u64,
    /// The slot it loads into.
    pub slot: usize,
    /// Pending, published, superseded or failed.
    pub state: kb_load_state,
    /// Bytes validated and prefaulted so far.
    pub done: u64,
    /// Bytes in total (0 until the file is opened).
    pub total: u64,
    /// `KB_LOAD_FAILED`: the failure's code (`KB_ERR_IO`, `KB_ERR_FORMAT`, ...); else `KB_OK`.
    pub error: kb_status,
    /// `KB_LOAD_PUBLISHED`: the index published (its `id` is what telemetry reports); all
    /// zero otherwise.
    pub index: kb_index_info,
}

/// Per-slot telemetry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kb_slot_telemetry {
    /// Id of the index the audio side holds in this slot (0: none).
    pub index_id: u64,
    /// Blended frames while this slot was the active one.
    pub queries: u64,
    /// Duration of the last of those, ns (a block blend counts its time divided by its
    /// frames).
    pub last_query_ns: u64,
    /// Longest of those since start or `kb_controller_reset_peaks`, ns.
    pub max_query_ns: u64,
}

/// A snapshot of the audio side's telemetry, read without disturbing it (relaxed atomics
/// published at every `kb_audio_end_block`; values of two consecutive blocks may mix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct kb_telemetry {
    /// Number of slots (entries of `slot` in use).
    pub slots: usize,
    /// Per slot.
    pub slot: [kb_slot_telemetry; KB_MAX_SLOTS],
    /// The slot the audio side was last told to use.
    pub active_slot: usize,
    /// Id of the index whose blend is output (the crossfade target during a crossfade; 0:
    /// none, frames pass through).
    pub serving_id: u64,
    /// Id of the index being faded out during a crossfade (0: none).
    pub fading_from_id: u64,
    /// Whether a crossfade is running.
    pub fading: bool,
    /// Blended frames in total.
    pub queries: u64,
    /// Duration of the last blended frame, ns.
    pub last_query_ns: u64,
    /// Longest since start or reset, ns.
    pub max_query_ns: u64,
    /// Blocks processed (`kb_audio_end_block` calls).
    pub blocks: u64,
    /// Time from `kb_audio_begin_block` to `kb_audio_end_block` of the last block, ns
    /// (includes the host's own work between them).
    pub last_block_ns: u64,
    /// Longest such block since start or reset, ns.
    pub max_block_ns: u64,
    /// Frames whose length did not match the serving index's dimension (passed through).
    pub mismatched_queries: u64,
    /// Times the audio side postponed a pick-up or release because the control side was not
    /// collecting.
    pub deferred: u64,
    /// Indexes this runtime holds in memory (serving, queued, retired but not collected).
    pub indexes_alive: usize,
}

/// The default settings: 8 slots, max_dim 768, 0.05 s crossfades, 0.01 s frames, no
/// validator.
///
/// Thread: any.
#[no_mangle]
pub extern "C" fn kb_live_config_default() -> kb_live_config {
    let d = LiveConfig::default();
    kb_live_config {
        slots: d.slots,
        max_dim: d.max_dim,
        crossfade_seconds: d.crossfade_seconds,
        frame_period_seconds: d.frame_period_seconds,
        require_dim: 0,
        validate: None,
        validate_user: std::ptr::null_mut(),
    }
}

/// The user pointer of a validator, moved to the loader thread (the header tells the caller
/// it must be usable from there).
#[derive(Clone, Copy)]
struct User(*mut c_void);
// SAFETY: the caller promises (header) what `validate_user` points to may be used from the
// loader thread and outlives the controller.
unsafe impl Send for User {}
// SAFETY: as above.
unsafe impl Sync for User {}

/// `require_dim` as a header check: a file of other features is refused from its header,
/// before anything is read or allocated for its vectors.
fn header_validator(require_dim: usize) -> Option<HeaderValidator> {
    if require_dim == 0 {
        return None;
    }
    Some(Arc::new(move |header: &IndexHeader| {
        if header.dim != require_dim {
            return Err(format!(
                "expected {require_dim}-dimensional features, found {}",
                header.dim
            ));
        }
        Ok(())
    }))
}

fn validator(validate: kb_validate_fn, user: User) -> Option<Validator> {
    validate?;
    Some(Arc::new(move |index: &AnyIndex| {
        if let Some(f) = validate {
            let mut reason = [0 as c_char; KB_REASON_CAP];
            let user = user;
            // SAFETY: a valid function pointer given by the caller, a view of a live index,
            // a writable buffer of the stated size.
            let lent = kb_index::lend(index);
            let refused = unsafe { f(user.0, &lent, reason.as_mut_ptr(), reason.len()) };
            if refused != 0 {
                reason[KB_REASON_CAP - 1] = 0;
                let bytes: Vec<u8> = reason
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                let text = String::from_utf8_lossy(&bytes).into_owned();
                return Err(if text.is_empty() {
                    "refused by the host's validator".to_string()
                } else {
                    text
                });
            }
        }
        Ok(())
    }))
}

/// Creates a live runtime: the control side `*control` (its loader thread starts now) and the
/// audio side `*audio`.
///
/// `config` NULL means `kb_live_config_default()`. A negative `crossfade_seconds` means the
/// default; values out of range are errors rather than clamped.
///
/// Thread: control. Ownership: `config` is read during the call; on success the caller owns
/// both handles (free them with `kb_controller_free` and `kb_audio_free`, in either order,
/// off the realtime thread); on failure neither pointer is written.
///
/// Errors: `KB_ERR_NULL` (`control` or `audio`), `KB_ERR_ARGUMENT` (slots outside
/// 1..KB_MAX_SLOTS, max_dim outside 1..KB_MAX_DIM, `require_dim > max_dim`, a NaN or infinite
/// time), `KB_ERR_PANIC` (also if the loader thread cannot be started).
///
/// Requires: `config` is NULL or readable; `control`, `audio` are NULL or writable; `err` as for
/// `kb_index_open`; a `validate` callback is a valid function and `validate_user` satisfies
/// `kb_validate_fn`'s rules.
#[no_mangle]
pub unsafe extern "C" fn kb_live_new(
    config: *const kb_live_config,
    control: *mut *mut kb_controller,
    audio: *mut *mut kb_audio,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    unsafe {
        crate::error::control(err, || {
            if control.is_null() || audio.is_null() {
                return Err(Error::null(if control.is_null() {
                    "control"
                } else {
                    "audio"
                }));
            }
            let c = config
                .as_ref()
                .copied()
                .unwrap_or_else(|| kb_live_config_default());
            if !(1..=MAX_SLOTS).contains(&c.slots) {
                return Err(Error::argument(format!(
                    "slots must be 1 to {MAX_SLOTS}, got {}",
                    c.slots
                )));
            }
            if !(1..=KB_MAX_DIM).contains(&c.max_dim) {
                return Err(Error::argument(format!(
                    "max_dim must be 1 to {KB_MAX_DIM}, got {}",
                    c.max_dim
                )));
            }
            if c.require_dim > c.max_dim {
                return Err(Error::argument(format!(
                    "require_dim {} is larger than max_dim {}",
                    c.require_dim, c.max_dim
                )));
            }
            if c.crossfade_seconds.is_nan()
                || c.crossfade_seconds.is_infinite()
                || !c.frame_period_seconds.is_finite()
            {
                return Err(Error::argument(
                    "crossfade_seconds and frame_period_seconds must be finite",
                ));
            }
            let d = LiveConfig::default();
            let (ctl, eng) = live(LiveConfig {
                slots: c.slots,
                max_dim: c.max_dim,
                crossfade_seconds: if c.crossfade_seconds < 0.0 {
                    d.crossfade_seconds
                } else {
                    c.crossfade_seconds
                },
                frame_period_seconds: c.frame_period_seconds,
                header_validator: header_validator(c.require_dim),
                validator: validator(c.validate, User(c.validate_user)),
            });
            control.write(Box::into_raw(Box::new(kb_controller { control: ctl })));
            audio.write(kb_audio::boxed(eng));
            Ok(())
        })
    }
}

/// Frees the control side and sets `*control` to NULL (NULL: does nothing). It stops the
/// loader thread, waiting for the load it is running (if any) to finish, and releases every
/// index the audio side has handed back. The audio side keeps working with what it holds;
/// tickets stay readable.
///
/// Thread: control (it joins a thread). Ownership: takes `*control`.
///
/// Requires: `control` is NULL or points to NULL or to a live controller no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_free(control: *mut *mut kb_controller) {
    if control.is_null() {
        return;
    }
    // SAFETY: `*control` is NULL or came from `Box::into_raw` in `kb_live_new`.
    let p = unsafe { control.replace(std::ptr::null_mut()) };
    if !p.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: as above; nothing else uses it.
            drop(unsafe { Box::from_raw(p) })
        }));
    }
}

/// Number of slots (0 for NULL).
///
/// Thread: any.
///
/// Requires: `control` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_slots(control: *const kb_controller) -> usize {
    // SAFETY: as the caller guarantees.
    unsafe { control.as_ref() }.map_or(0, |c| c.control.slots())
}

unsafe fn controller<'a>(c: *const kb_controller) -> Result<&'a Controller, Error> {
    // SAFETY: as the caller guarantees.
    unsafe { c.as_ref() }
        .map(|c| &c.control)
        .ok_or_else(|| Error::null("control"))
}

fn check_slot(c: &Controller, slot: usize) -> Result<(), Error> {
    if slot < c.slots() {
        Ok(())
    } else {
        Err(Error::new(
            KB_ERR_SLOT,
            format!(
                "there is no voice slot {slot}: slots are numbered 0 to {}",
                c.slots() - 1
            ),
        ))
    }
}

/// Loads the index file `path` (`.kbi` or faiss, UTF-8) into `slot` on the loader thread and
/// publishes it when it has been validated, prefaulted and (if allowed) locked in RAM; returns
/// at once. The audio side crossfades to it at its next block if the slot is active. A later
/// load, publish or unload of the same slot supersedes it; a failed load leaves the slot's
/// index serving. File errors (missing, corrupt, too wide, refused) are reported through the
/// ticket and `kb_controller_status`, not by this call.
///
/// Thread: control. Ownership: `path` is borrowed for the call; `*ticket` (if `ticket` is not
/// NULL) receives a new ticket the caller frees with `kb_ticket_free`.
///
/// Errors: `KB_ERR_NULL` (`control`, `path`), `KB_ERR_SLOT`, `KB_ERR_UTF8`, `KB_ERR_PANIC`.
///
/// Requires: `control` is NULL or live; `path` is NULL or NUL-terminated; `ticket` is NULL or writable;
/// `err` as for `kb_index_open`.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_load(
    control: *const kb_controller,
    slot: usize,
    path: *const c_char,
    ticket: *mut *mut kb_ticket,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    unsafe {
        crate::error::control(err, || {
            let c = controller(control)?;
            let p = crate::util::path(path)?;
            check_slot(c, slot)?;
            let t = c.load(slot, p);
            if !ticket.is_null() {
                ticket.write(Box::into_raw(Box::new(kb_ticket { ticket: t })));
            }
            Ok(())
        })
    }
}

/// Publishes an index the caller opened (`kb_index_open`) into `slot`, on the calling
/// thread: checks it against `max_dim` and the validator, prefaults it, tries to lock it in
/// RAM, then publishes it, superseding any load running for the slot. `name` (UTF-8, NULL:
/// the file name) is what `kb_slot_status.name` shows.
///
/// Thread: control. Ownership: `*index` is consumed and set to NULL once the call gets past
/// its argument checks, on success and on `KB_ERR_DIMENSION` / `KB_ERR_REJECTED` alike; on
/// `KB_ERR_NULL`, `KB_ERR_SLOT` and `KB_ERR_UTF8` it stays the caller's.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_SLOT`, `KB_ERR_UTF8` (`name`), `KB_ERR_DIMENSION` (wider
/// than max_dim), `KB_ERR_REJECTED`, `KB_ERR_PANIC`.
///
/// Requires: `control` is NULL or live; `index` is NULL or points to NULL or to a live index no other
/// thread is using; `name` is NULL or NUL-terminated; `err` as for `kb_index_open`.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_publish(
    control: *const kb_controller,
    slot: usize,
    index: *mut *mut kb_index,
    name: *const c_char,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    unsafe {
        crate::error::control(err, || {
            let c = controller(control)?;
            if index.is_null() || (*index).is_null() {
                return Err(Error::null("index"));
            }
            check_slot(c, slot)?;
            let name = if name.is_null() {
                None
            } else {
                Some(text(name, "name")?)
            };
            let Some(ix) = Box::from_raw(index.replace(std::ptr::null_mut())).into_owned() else {
                return Err(Error::argument("a validator's index cannot be published"));
            };
            let name = name.map(str::to_string).unwrap_or_else(|| {
                ix.path()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "index".to_string())
            });
            let prepared = c.prepare_index(ix, &name)?;
            c.publish(slot, prepared)?;
            Ok(())
        })
    }
}

/// Empties `slot`, superseding any load running for it. When it is the active slot, the
/// output crossfades to the unprocessed frames.
///
/// Thread: control. Errors: `KB_ERR_NULL`, `KB_ERR_SLOT`, `KB_ERR_PANIC`.
///
/// Requires: `control` is NULL or live; `err` as for `kb_index_open`.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_unload(
    control: *const kb_controller,
    slot: usize,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    unsafe {
        crate::error::control(err, || {
            let c = controller(control)?;
            check_slot(c, slot)?;
            c.unload(slot)?;
            Ok(())
        })
    }
}

/// The state of `slot` into `*out`.
///
/// Thread: control (it takes the controller's lock briefly; never the realtime thread).
/// Ownership: `out` borrowed; it holds no pointers.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_SLOT`, `KB_ERR_PANIC`.
///
/// Requires: `control` is NULL or live; `out` is NULL or writable; `err` as for `kb_index_open`.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_status(
    control: *const kb_controller,
    slot: usize,
    out: *mut kb_slot_status,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    unsafe {
        crate::error::control(err, || {
            let c = controller(control)?;
            if out.is_null() {
                return Err(Error::null("out"));
            }
            check_slot(c, slot)?;
            let st = c.status(slot);
            let mut s = kb_slot_status {
                state: kb_slot_state::KB_SLOT_EMPTY,
                done: 0,
                total: 0,
                has_index: st.info.is_some(),
                index: st
                    .info
                    .as_ref()
                    .map_or(kb_index_info::EMPTY, kb_index_info::of_info),
                name: [0; KB_NAME_CAP],
                message: [0; KB_MESSAGE_CAP],
            };
            if let Some(info) = &st.info {
                fill(&mut s.name, &info.name);
            }
            s.state = match &st.state {
                SlotState::Empty => kb_slot_state::KB_SLOT_EMPTY,
                SlotState::Loading { done, total } => {
                    s.done = *done;
                    s.total = *total;
                    kb_slot_state::KB_SLOT_LOADING
                }
                SlotState::Ready => kb_slot_state::KB_SLOT_READY,
                SlotState::Failed(m) => {
                    fill(&mut s.message, m);
                    kb_slot_state::KB_SLOT_FAILED
                }
            };
            out.write(s);
            Ok(())
        })
    }
}

/// Reads the audio side's telemetry into `*out` (lock-free with respect to the audio side).
/// The first call within 5 ms of `kb_live_new` waits for the rest of those 5 ms to calibrate
/// the clock.
///
/// Thread: control. Errors: `KB_ERR_NULL`, `KB_ERR_PANIC`.
///
/// Requires: `control` is NULL or live; `out` is NULL or writable; `err` as for `kb_index_open`.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_telemetry(
    control: *const kb_controller,
    out: *mut kb_telemetry,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    unsafe {
        crate::error::control(err, || {
            let c = controller(control)?;
            if out.is_null() {
                return Err(Error::null("out"));
            }
            let t = c.telemetry();
            let mut k = kb_telemetry {
                slots: t.slots.len(),
                active_slot: t.active_slot,
                serving_id: t.serving.as_ref().map_or(0, |r| r.id),
                fading_from_id: t.fading_from.as_ref().map_or(0, |r| r.id),
                fading: t.fading,
                queries: t.queries,
                last_query_ns: t.last_query_ns,
                max_query_ns: t.max_query_ns,
                blocks: t.blocks,
                last_block_ns: t.last_block_ns,
                max_block_ns: t.max_block_ns,
                mismatched_queries: t.mismatched_queries,
                deferred: t.deferred,
                indexes_alive: t.indexes_alive,
                ..kb_telemetry::default()
            };
            for (dst, s) in k.slot.iter_mut().zip(&t.slots) {
                *dst = kb_slot_telemetry {
                    index_id: s.index.as_ref().map_or(0, |r| r.id),
                    queries: s.queries,
                    last_query_ns: s.last_query_ns,
                    max_query_ns: s.max_query_ns,
                };
            }
            out.write(k);
            Ok(())
        })
    }
}

/// Restarts the maximum query and block times (from the audio side's next block).
///
/// Thread: control (any non-realtime). Errors: `KB_ERR_NULL`.
///
/// Requires: `control` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_reset_peaks(control: *const kb_controller) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe {
        crate::error::control(std::ptr::null_mut(), || {
            controller(control)?.reset_peaks();
            Ok(())
        })
    }
}

/// Releases the indexes the audio side has handed back now, rather than at the loader's next
/// 20 ms round; `*released` (if not NULL) receives how many references were released.
///
/// Thread: control (it may unmap and free). Errors: `KB_ERR_NULL`, `KB_ERR_PANIC`.
///
/// Requires: `control` is NULL or live; `released` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_collect(
    control: *const kb_controller,
    released: *mut usize,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    unsafe {
        crate::error::control(std::ptr::null_mut(), || {
            let n = controller(control)?.collect();
            if !released.is_null() {
                released.write(n);
            }
            Ok(())
        })
    }
}

/// Number of indexes the runtime holds in memory (serving, queued, handed back but not yet
/// released, prepared but not yet published); 0 for NULL.
///
/// Thread: any.
///
/// Requires: `control` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn kb_controller_indexes_alive(control: *const kb_controller) -> usize {
    // SAFETY: as the caller guarantees.
    unsafe { control.as_ref() }.map_or(0, |c| c.control.indexes_alive())
}

fn ticket_status(
    t: &LoadTicket,
    outcome: Option<LoadOutcome>,
) -> (kb_ticket_status, Option<Error>) {
    let (done, total) = t.progress();
    let mut s = kb_ticket_status {
        ticket_id: t.id(),
        slot: t.slot(),
        state: kb_load_state::KB_LOAD_PENDING,
        done,
        total,
        error: KB_OK,
        index: kb_index_info::EMPTY,
    };
    let mut failure = None;
    match outcome {
        None => {}
        Some(LoadOutcome::Published(info)) => {
            s.state = kb_load_state::KB_LOAD_PUBLISHED;
            s.index = kb_index_info::of_info(&info);
        }
        Some(LoadOutcome::Superseded) => s.state = kb_load_state::KB_LOAD_SUPERSEDED,
        Some(LoadOutcome::Failed(e)) => {
            s.state = kb_load_state::KB_LOAD_FAILED;
            s.error = load_code(&e);
            failure = Some(Error::new(s.error, e.to_string()));
        }
    }
    (s, failure)
}

unsafe fn wait_common(
    ticket: *const kb_ticket,
    timeout: Option<Duration>,
    out: *mut kb_ticket_status,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY (all blocks): as the callers' callers guarantee.
    unsafe {
        crate::error::control(err, || {
            let Some(t) = ticket.as_ref() else {
                return Err(Error::null("ticket"));
            };
            if out.is_null() {
                return Err(Error::null("out"));
            }
            let outcome = match timeout {
                Some(d) if d.is_zero() => t.ticket.outcome(),
                Some(d) => t.ticket.wait_timeout(d),
                None => Some(t.ticket.wait()),
            };
            let (s, failure) = ticket_status(&t.ticket, outcome);
            out.write(s);
            match failure {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }
}

/// The load's progress and outcome into `*out`, without waiting. Returns `KB_OK` while it
/// is pending and once it was published or superseded; once it failed, returns the
/// failure's code (as `out->error`) and, if `err` is not NULL, its message in `*err`.
///
/// Thread: control (it takes the ticket's lock briefly). Ownership: all borrowed; `*err` is
/// the caller's to free.
///
/// Errors: `KB_ERR_NULL` (`ticket`, `out`: nothing written), the failed load's code,
/// `KB_ERR_PANIC`.
///
/// Requires: `ticket` is NULL or live; `out` is NULL or writable; `err` as for `kb_index_open`.
#[no_mangle]
pub unsafe extern "C" fn kb_ticket_poll(
    ticket: *const kb_ticket,
    out: *mut kb_ticket_status,
    err: *mut *mut kb_error,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    unsafe { wait_common(ticket, Some(Duration::ZERO), out, err) }
}

/// As `kb_ticket_poll`, but first waits up to `timeout_ms` milliseconds for the load to end
/// (`KB_WAIT_FOREVER`: until it ends). A load still pending at the timeout reports
/// `KB_LOAD_PENDING` and `KB_OK`.
///
/// Thread: control; never the realtime or a GUI thread that must not block.
///
/// Requires: As `kb_ticket_poll`.
#[no_mangle]
pub unsafe extern "C" fn kb_ticket_wait(
    ticket: *const kb_ticket,
    timeout_ms: u32,
    out: *mut kb_ticket_status,
    err: *mut *mut kb_error,
) -> kb_status {
    let timeout = (timeout_ms != KB_WAIT_FOREVER).then(|| Duration::from_millis(timeout_ms.into()));
    // SAFETY: as the caller guarantees.
    unsafe { wait_common(ticket, timeout, out, err) }
}

/// Frees a ticket and sets `*ticket` to NULL (NULL: does nothing). The load goes on.
///
/// Thread: any non-realtime. Ownership: takes `*ticket`.
///
/// Requires: `ticket` is NULL or points to NULL or to a live ticket no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn kb_ticket_free(ticket: *mut *mut kb_ticket) {
    if ticket.is_null() {
        return;
    }
    // SAFETY: `*ticket` is NULL or came from `Box::into_raw` in `kb_controller_load`.
    unsafe {
        let p = ticket.replace(std::ptr::null_mut());
        if !p.is_null() {
            drop(Box::from_raw(p));
        }
    }
}
