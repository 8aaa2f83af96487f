//! The live runtime's audio side (`kb_audio`): begin a block, blend frames (one at a time or
//! a block at once), end the block.
//!
//! # Why these functions cannot panic
//!
//! They are the realtime thread's: they must neither unwind into the host nor pay for
//! `catch_unwind` machinery that allocates when it fires, so they are written not to panic
//! at all, rather than to catch panics:
//! - every pointer is checked for NULL and alignment and every length for the size a slice
//!   may have before a slice is made (`util::slice`);
//! - every length the core asserts on is checked here first: `AudioEngine::blend` and
//!   `blend_block` themselves never assert (mismatched lengths pass the frame through), and
//!   the searches they make are only given frames of the serving index's dimension;
//! - the slot given to `begin_block` is checked here (the core clamps it anyway);
//! - nothing is indexed without a check, nothing is unwrapped, products are `checked_mul`.
//!
//! Should a panic happen all the same (a bug), Rust aborts the process at the `extern "C"`
//! boundary rather than unwinding into C or C++: defined behaviour, never a corrupt host.

use knnblend_core::live::AudioEngine;

use crate::error::*;
use crate::index::{kb_blend_outcome, pass_through, KB_MAX_K};
use crate::util::{overlap, slice, slice_mut};

/// The audio side of a live runtime: the realtime thread's. None of its functions
/// allocates, frees, locks, blocks, makes a system call or panics. Use it from one thread at
/// a time (normally the realtime thread; moving it between threads between calls is fine).
/// Per audio block call `kb_audio_begin_block`, any number of `kb_audio_blend` /
/// `kb_audio_blend_block`, then `kb_audio_end_block`. It holds indexes: create and free it
/// off the realtime thread.
pub struct kb_audio {
    engine: AudioEngine,
}

impl kb_audio {
    pub(crate) fn boxed(engine: AudioEngine) -> *mut kb_audio {
        Box::into_raw(Box::new(kb_audio { engine }))
    }
}

/// Frees the audio side and sets `*audio` to NULL (NULL: does nothing). It releases the
/// indexes it holds (unmapping or freeing them), so call it off the realtime thread, after the
/// last block (e.g. in the plugin's deactivate or destructor).
///
/// Thread: control. Ownership: takes `*audio`.
///
/// Requires: `audio` is NULL or points to NULL or to a live audio side no other thread is using.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_free(audio: *mut *mut kb_audio) {
    if audio.is_null() {
        return;
    }
    // SAFETY: `*audio` is NULL or came from `kb_audio::boxed` in `kb_live_new`.
    let p = unsafe { audio.replace(std::ptr::null_mut()) };
    if !p.is_null() {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: as above; nothing else uses it.
            drop(unsafe { Box::from_raw(p) })
        }));
    }
}

/// Starts a block: picks up what the control side has published, selects `active_slot`
/// and, if that changes the serving index, starts a crossfade of `crossfade_seconds`
/// (negative or non-finite: the configured default; shorter than one frame period: an
/// instant switch). A change requested while a crossfade runs starts when it ends.
///
/// With a slot out of range it returns `KB_ERR_SLOT` and begins the block with the active
/// slot unchanged (publications are still picked up).
///
/// Thread: audio (realtime-safe). Errors: `KB_ERR_NULL`, `KB_ERR_SLOT`.
///
/// Requires: `audio` is NULL or live and not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_begin_block(
    audio: *mut kb_audio,
    active_slot: usize,
    crossfade_seconds: f32,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    let Some(a) = (unsafe { audio.as_mut() }) else {
        return KB_ERR_NULL;
    };
    let e = &mut a.engine;
    if active_slot < e.slots() {
        e.begin_block(active_slot, crossfade_seconds);
        KB_OK
    } else {
        let keep = e.active_slot();
        e.begin_block(keep, crossfade_seconds);
        KB_ERR_SLOT
    }
}

/// Blends one feature frame (`len` floats) into `out` (`out_len` floats; the two must not
/// overlap): RVC's retrieval against the serving index, nprobe 1,
/// `out = ratio * sum(w_i * v_i) + (1 - ratio) * frame` over its `k` nearest stored vectors
/// (`ratio` clamped to [0, 1], NaN is 0). During a crossfade the old and the new index's blends
/// are mixed, the new one's share growing by one frame period per call. The result is bit for
/// bit that of `kb_blend` with the serving index (outside crossfades). `*outcome` (if not NULL)
/// receives what was done.
///
/// With no index serving, the frame is copied to `out` (`KB_BLEND_EMPTY`, `KB_OK`). On
/// `KB_ERR_DIMENSION` (the serving index has another dimension; counted in telemetry) and
/// `KB_ERR_ARGUMENT` other than overlap, `out` receives as much of the frame as fits, zeros
/// after it: audio keeps flowing.
///
/// Thread: audio (realtime-safe: no allocation, lock, system call or panic). Ownership: all
/// pointers borrowed for the call.
///
/// Errors: `KB_ERR_NULL` (nothing written), `KB_ERR_ARGUMENT` (`k` outside 1..KB_MAX_K,
/// `len != out_len`, overlap, misaligned buffers), `KB_ERR_DIMENSION`.
///
/// Requires: `audio` is NULL or live and not used by another thread during the call; `frame` and `out`
/// are NULL or valid for `len` and `out_len` floats.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_blend(
    audio: *mut kb_audio,
    frame: *const f32,
    len: usize,
    k: usize,
    ratio: f32,
    out: *mut f32,
    out_len: usize,
    outcome: *mut kb_blend_outcome,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    let Some(a) = (unsafe { audio.as_mut() }) else {
        return KB_ERR_NULL;
    };
    if !frame.is_null() && overlap(frame, len, out, out_len) {
        return KB_ERR_ARGUMENT;
    }
    let (q, o) = match unsafe { (slice(frame, len), slice_mut(out, out_len)) } {
        (Ok(q), Ok(o)) => (q, o),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let e = &mut a.engine;
    let code = if !(1..=KB_MAX_K).contains(&k) || len != out_len {
        pass_through(q, o);
        KB_ERR_ARGUMENT
    } else {
        let mismatch = e.serving().is_some_and(|ix| ix.dim() != len);
        let done = e.blend(q, k, ratio, o); // copies the frame on a mismatch
        if !outcome.is_null() {
            unsafe { outcome.write(crate::index::outcome(done)) };
        }
        return if mismatch { KB_ERR_DIMENSION } else { KB_OK };
    };
    if !outcome.is_null() {
        unsafe { outcome.write(kb_blend_outcome::KB_BLEND_EMPTY) };
    }
    code
}

/// Blends `nframes` feature frames of `dim` floats each (row-major in `frames`) into `out`
/// (`out_len` floats, `nframes * dim`; no overlap with `frames`): the same result, bit for
/// bit, as `kb_audio_blend` on each frame in turn (crossfades included), but each run of up
/// to `KB_BLOCK` frames is searched with one pass over the centroids, so a block of RVC
/// frames costs less. `*blended` (if not NULL) receives how many frames were blended with
/// neighbours (the others were copied: no index, ratio 0, non-finite frame).
///
/// Error outputs as for `kb_audio_blend` (`KB_ERR_DIMENSION`: `dim` is not the serving
/// index's; the frames were copied).
///
/// Thread: audio (realtime-safe). Ownership: all pointers borrowed for the call.
///
/// Errors: `KB_ERR_NULL`, `KB_ERR_ARGUMENT` (`k`, `dim == 0`, `out_len != nframes * dim`,
/// a size that overflows, overlap, misaligned buffers), `KB_ERR_DIMENSION`.
///
/// Requires: As `kb_audio_blend`, with `frames` valid for `nframes * dim` floats.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_blend_block(
    audio: *mut kb_audio,
    frames: *const f32,
    nframes: usize,
    dim: usize,
    k: usize,
    ratio: f32,
    out: *mut f32,
    out_len: usize,
    blended: *mut usize,
) -> kb_status {
    // SAFETY (all blocks): as the caller guarantees.
    let Some(a) = (unsafe { audio.as_mut() }) else {
        return KB_ERR_NULL;
    };
    let Some(total) = nframes.checked_mul(dim) else {
        return KB_ERR_ARGUMENT;
    };
    if !frames.is_null() && overlap(frames, total, out, out_len) {
        return KB_ERR_ARGUMENT;
    }
    let (q, o) = match unsafe { (slice(frames, total), slice_mut(out, out_len)) } {
        (Ok(q), Ok(o)) => (q, o),
        (Err(c), _) | (_, Err(c)) => return c,
    };
    let e = &mut a.engine;
    let (code, n) = if !(1..=KB_MAX_K).contains(&k) || dim == 0 || out_len != total {
        pass_through(q, o);
        (KB_ERR_ARGUMENT, 0)
    } else {
        let mismatch = e.serving().is_some_and(|ix| ix.dim() != dim);
        let n = e.blend_block(q, dim, k, ratio, o); // copies the frames on a mismatch
        (if mismatch { KB_ERR_DIMENSION } else { KB_OK }, n)
    };
    if !blended.is_null() {
        unsafe { blended.write(n) };
    }
    code
}

/// Ends a block: publishes telemetry (relaxed atomic stores).
///
/// Thread: audio (realtime-safe). Errors: `KB_ERR_NULL`.
///
/// Requires: `audio` is NULL or live and not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_end_block(audio: *mut kb_audio) -> kb_status {
    // SAFETY: as the caller guarantees.
    match unsafe { audio.as_mut() } {
        Some(a) => {
            a.engine.end_block();
            KB_OK
        }
        None => KB_ERR_NULL,
    }
}

/// Sets the time one blended frame advances a crossfade (the feature frame period: hop /
/// sample rate), for hosts that change sample rate. Zero or less makes switches instant.
///
/// Thread: audio (realtime-safe). Errors: `KB_ERR_NULL`, `KB_ERR_ARGUMENT` (NaN or infinite:
/// nothing changed).
///
/// Requires: `audio` is NULL or live and not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_set_frame_period(
    audio: *mut kb_audio,
    seconds: f32,
) -> kb_status {
    // SAFETY: as the caller guarantees.
    let Some(a) = (unsafe { audio.as_mut() }) else {
        return KB_ERR_NULL;
    };
    if !seconds.is_finite() {
        return KB_ERR_ARGUMENT;
    }
    a.engine.set_frame_period_seconds(seconds);
    KB_OK
}

/// Id of the index whose blend is output (the crossfade target during a crossfade), as in
/// `kb_index_info.id` of the load's ticket; 0 when none serves (or `audio` is NULL).
///
/// Thread: audio (realtime-safe).
///
/// Requires: `audio` is NULL or live and not used by another thread during the call.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_serving_id(audio: *const kb_audio) -> u64 {
    // SAFETY: as the caller guarantees.
    unsafe { audio.as_ref() }
        .and_then(|a| a.engine.serving_id())
        .unwrap_or(0)
}

/// Dimension of the serving index; 0 when none serves (or `audio` is NULL).
///
/// Thread: audio (realtime-safe).
///
/// Requires: As `kb_audio_serving_id`.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_serving_dim(audio: *const kb_audio) -> usize {
    // SAFETY: as the caller guarantees.
    unsafe { audio.as_ref() }
        .and_then(|a| a.engine.serving())
        .map_or(0, |ix| ix.dim())
}

/// Whether a crossfade is running (false for NULL).
///
/// Thread: audio (realtime-safe).
///
/// Requires: As `kb_audio_serving_id`.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_is_fading(audio: *const kb_audio) -> bool {
    // SAFETY: as the caller guarantees.
    unsafe { audio.as_ref() }.is_some_and(|a| a.engine.is_fading())
}

/// The slot in use, as last given to `kb_audio_begin_block` (0 for NULL).
///
/// Thread: audio (realtime-safe).
///
/// Requires: As `kb_audio_serving_id`.
#[no_mangle]
pub unsafe extern "C" fn kb_audio_active_slot(audio: *const kb_audio) -> usize {
    // SAFETY: as the caller guarantees.
    unsafe { audio.as_ref() }.map_or(0, |a| a.engine.active_slot())
}
