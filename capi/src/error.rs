//! Status codes, owned error messages, and the two kinds of entry point: control-side bodies
//! run inside `catch_unwind`; audio-side ones cannot panic and report codes only.

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use knnblend_core::format::FormatError;
use knnblend_core::live::LoadError;

/// What a call did. `KB_OK` is 0; every error is a positive code. New codes may be added in
/// later versions: treat an unknown one as a failure and print `kb_status_str(code)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum kb_status {
    /// Success.
    KB_OK = 0,
    /// A required pointer was NULL, or a handle was already destroyed through the pointer
    /// passed (destroy functions set the caller's pointer to NULL).
    KB_ERR_NULL = 1,
    /// A value out of range (k, nprobe, a configuration field, unknown flag bits), buffers
    /// whose sizes do not fit each other, a misaligned or overlapping buffer.
    KB_ERR_ARGUMENT = 2,
    /// A vector's length differs from the index's dimension, or an index is wider than the
    /// runtime's `max_dim`.
    KB_ERR_DIMENSION = 3,
    /// A slot number outside `0..slots`.
    KB_ERR_SLOT = 4,
    /// A string (a path, a name) is not valid UTF-8.
    KB_ERR_UTF8 = 5,
    /// A file could not be opened or read (missing, a directory, no permission).
    KB_ERR_IO = 6,
    /// A file is not a usable index (unknown kind, truncated, corrupt, unsupported).
    KB_ERR_FORMAT = 7,
    /// A load could not run (the loader has stopped).
    KB_ERR_LOAD = 8,
    /// The file is being written by another program, or changed while it was loaded: load
    /// it again once it is complete.
    KB_ERR_BUSY = 9,
    /// The runtime's validator (`require_dim` or the `validate` callback) refused the index.
    KB_ERR_REJECTED = 10,
    /// A caller's buffer is too small; the size needed was reported.
    KB_ERR_BUFFER = 11,
    /// An internal error was caught at the boundary (a bug in knnblend: please report it).
    /// The handle stays usable.
    KB_ERR_PANIC = 12,
    /// A search or blend of an IVF-PQ FastScan index the `kb_searcher` was not sized for (a
    /// wider index, a larger k or nprobe, or `k * k_factor` above 4096): make the searcher
    /// with `kb_searcher_new_for` or `kb_searcher_new_sized` (`kb_searcher_fits` tells
    /// beforehand).
    KB_ERR_CAPACITY = 13,
}

pub use kb_status::*;

impl kb_status {
    fn text(self) -> &'static CStr {
        match self {
            KB_OK => c"ok",
            KB_ERR_NULL => c"a required pointer is NULL (or the handle was destroyed)",
            KB_ERR_ARGUMENT => c"invalid argument",
            KB_ERR_DIMENSION => c"vector length does not match the index dimension",
            KB_ERR_SLOT => c"no such slot",
            KB_ERR_UTF8 => c"string is not valid UTF-8",
            KB_ERR_IO => c"cannot read the file",
            KB_ERR_FORMAT => c"not a usable index file",
            KB_ERR_LOAD => c"the index could not be loaded",
            KB_ERR_BUSY => c"the file is being written by another program",
            KB_ERR_REJECTED => c"the index was refused by the validator",
            KB_ERR_BUFFER => c"buffer too small",
            KB_ERR_PANIC => c"internal error in knnblend",
            KB_ERR_CAPACITY => c"the search does not fit the searcher (make it for this index)",
        }
    }

    fn from_code(code: i32) -> Option<kb_status> {
        const ALL: [kb_status; 14] = [
            KB_OK,
            KB_ERR_NULL,
            KB_ERR_ARGUMENT,
            KB_ERR_DIMENSION,
            KB_ERR_SLOT,
            KB_ERR_UTF8,
            KB_ERR_IO,
            KB_ERR_FORMAT,
            KB_ERR_LOAD,
            KB_ERR_BUSY,
            KB_ERR_REJECTED,
            KB_ERR_BUFFER,
            KB_ERR_PANIC,
            KB_ERR_CAPACITY,
        ];
        ALL.into_iter().find(|s| *s as i32 == code)
    }
}

/// An error: its code and an owned, NUL-terminated UTF-8 message worded for the user (it names
/// the file and the problem). Created by the library when a call given a non-NULL
/// `kb_error** err` fails; read it with `kb_error_code` and `kb_error_message`, free it with
/// `kb_error_free`. Any thread may read or free it (one thread at a time).
pub struct kb_error {
    code: kb_status,
    message: CString,
}

/// An error on its way to the caller.
#[derive(Debug)]
pub(crate) struct Error {
    pub(crate) code: kb_status,
    pub(crate) message: String,
}

impl Error {
    pub(crate) fn new(code: kb_status, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Error {
        Error::new(KB_ERR_NULL, format!("{what} is NULL"))
    }

    pub(crate) fn argument(message: impl Into<String>) -> Error {
        Error::new(KB_ERR_ARGUMENT, message)
    }
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Error {
        Error::new(load_code(&e), e.to_string())
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Error {
        let code = match e {
            FormatError::Io { .. } => KB_ERR_IO,
            _ => KB_ERR_FORMAT,
        };
        Error::new(code, e.to_string())
    }
}

/// The status code of a load error.
pub(crate) fn load_code(e: &LoadError) -> kb_status {
    match e {
        LoadError::NoSuchSlot { .. } => KB_ERR_SLOT,
        LoadError::Io { .. } | LoadError::NotAFile { .. } => KB_ERR_IO,
        LoadError::Format { .. } => KB_ERR_FORMAT,
        LoadError::Changed { .. } | LoadError::Busy { .. } => KB_ERR_BUSY,
        LoadError::TooWide { .. } => KB_ERR_DIMENSION,
        LoadError::Rejected { .. } => KB_ERR_REJECTED,
        _ => KB_ERR_LOAD,
    }
}

/// A C string of `s`; interior NULs (impossible in paths, possible in callers' reasons)
/// become U+FFFD.
pub(crate) fn c_string(s: String) -> CString {
    CString::new(s).unwrap_or_else(|e| {
        let s = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\u{fffd}");
        CString::new(s).unwrap_or_default()
    })
}

/// Hands `e` to the caller through `err` (if it is not NULL) and returns its code.
///
/// Requires: `err` is NULL or points to a writable `kb_error*`.
pub(crate) unsafe fn report(err: *mut *mut kb_error, e: Error) -> kb_status {
    let code = e.code;
    if !err.is_null() {
        let boxed = Box::new(kb_error {
            code,
            message: c_string(e.message),
        });
        // SAFETY: the caller guarantees `err` is writable.
        unsafe { err.write(Box::into_raw(boxed)) };
    }
    code
}

/// Runs the body of a control-side entry point: an `Err` is reported through `err`, and a
/// panic is caught here (it never unwinds into C) and reported as `KB_ERR_PANIC`.
///
/// Requires: `err` is NULL or points to a writable `kb_error*`.
pub(crate) unsafe fn control(
    err: *mut *mut kb_error,
    body: impl FnOnce() -> Result<(), Error>,
) -> kb_status {
    let e = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return KB_OK,
        Ok(Err(e)) => e,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Error::new(
                KB_ERR_PANIC,
                format!("internal error in knnblend (please report it): {what}"),
            )
        }
    };
    // SAFETY: as guaranteed by the caller.
    unsafe { report(err, e) }
}

/// A static, NUL-terminated English description of a status code ("unknown status code" for
/// a code this version does not know). Never NULL; never free it.
///
/// Thread: any (realtime-safe).
#[no_mangle]
pub extern "C" fn kb_status_str(code: i32) -> *const c_char {
    match kb_status::from_code(code) {
        Some(s) => s.text().as_ptr(),
        None => c"unknown status code".as_ptr(),
    }
}

/// The code of an error; `KB_ERR_NULL` when `error` is NULL.
///
/// Thread: any. Ownership: `error` stays the caller's.
///
/// Requires: `error` is NULL or a live error from this library.
#[no_mangle]
pub unsafe extern "C" fn kb_error_code(error: *const kb_error) -> kb_status {
    // SAFETY: NULL or a live error, as the caller guarantees.
    match unsafe { error.as_ref() } {
        Some(e) => e.code,
        None => KB_ERR_NULL,
    }
}

/// The message of an error: NUL-terminated UTF-8, valid until the error is freed, owned by the
/// error (do not free it). For a NULL `error`, a static string saying so.
///
/// Thread: any. Ownership: `error` stays the caller's.
///
/// Requires: `error` is NULL or a live error from this library.
#[no_mangle]
pub unsafe extern "C" fn kb_error_message(error: *const kb_error) -> *const c_char {
    // SAFETY: NULL or a live error, as the caller guarantees.
    match unsafe { error.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"no error (the kb_error pointer is NULL)".as_ptr(),
    }
}

/// Frees an error and sets `*error` to NULL. `error` or `*error` NULL: does nothing.
///
/// Thread: any. Ownership: takes `*error`.
///
/// Requires: `error` is NULL or points to NULL or to a live error from this library.
#[no_mangle]
pub unsafe extern "C" fn kb_error_free(error: *mut *mut kb_error) {
    if error.is_null() {
        return;
    }
    // SAFETY: `error` points to NULL or to an error made by `Box::into_raw` in `report`.
    unsafe {
        let e = error.replace(std::ptr::null_mut());
        if !e.is_null() {
            drop(Box::from_raw(e));
        }
    }
}
