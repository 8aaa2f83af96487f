//! # knnblend's C ABI
//!
//! `capi/include/knnblend.h` (generated from this crate by cbindgen; `tests/header.rs` fails
//! when it is stale) declares what this crate exports: `libknnblend.a` and `libknnblend.so`.
//! It is glue over the core crate: opening, inspecting, searching and blending an index
//! (`kb_index`, `kb_searcher`), and the live runtime's two halves (`kb_controller` for the
//! control side, `kb_audio` for the realtime thread) with load tickets (`kb_ticket`).
//!
//! Conventions, stated once in the header's preamble and per function:
//! - every function says its thread: *any*, *control* (any non-realtime thread: it may
//!   allocate, lock, do I/O) or *audio* (realtime-safe);
//! - errors are `kb_status` codes; control-side calls also take an optional `kb_error** err`
//!   that receives an owned message (`kb_error_message`, freed by `kb_error_free`);
//! - destroy functions take `T**` and set the caller's pointer to NULL, so a second destroy
//!   or a call through the same pointer gets `KB_ERR_NULL`;
//! - no panic crosses the boundary: control-side bodies run in `catch_unwind`
//!   (`error::control`) and report `KB_ERR_PANIC`; audio-side ones cannot panic (see
//!   `audio.rs`).
#![deny(unsafe_op_in_unsafe_fn)]
#![allow(
    non_camel_case_types,
    clippy::missing_safety_doc,
    clippy::too_many_arguments
)]

mod audio;
mod error;
mod index;
mod live;
mod util;

pub use audio::*;
pub use error::{
    kb_error, kb_error_code, kb_error_free, kb_error_message, kb_status, kb_status::*,
    kb_status_str,
};
pub use index::*;
pub use live::*;

use std::ffi::c_char;

/// Major version of the library this header belongs to.
pub const KB_VERSION_MAJOR: u32 = 0;
/// Minor version (before 1.0, a new minor version may change the ABI).
pub const KB_VERSION_MINOR: u32 = 1;
/// Patch version.
pub const KB_VERSION_PATCH: u32 = 0;
/// The version as one number: `major * 10000 + minor * 100 + patch`; compare it with
/// `kb_version_number()` to check the library loaded is the one compiled against.
pub const KB_VERSION_NUMBER: u32 = 100;

/// The library's version, e.g. "0.1.0" (static; never free it).
///
/// Thread: any.
#[no_mangle]
pub extern "C" fn kb_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The library's version as `KB_VERSION_NUMBER` encodes it.
///
/// Thread: any.
#[no_mangle]
pub extern "C" fn kb_version_number() -> u32 {
    KB_VERSION_NUMBER
}

#[cfg(test)]
mod tests;
