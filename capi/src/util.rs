//! Checked conversions of C arguments: slices from pointers and lengths, UTF-8 strings and
//! paths, and strings copied into callers' buffers. None of these allocates except `path` and
//! `text`, and none panics.

use std::ffi::{c_char, CStr};
use std::path::PathBuf;

use crate::error::{
    kb_status, Error, KB_ERR_ARGUMENT, KB_ERR_BUFFER, KB_ERR_NULL, KB_ERR_UTF8, KB_OK,
};

/// Whether `len` elements of `T` can form a slice (at most `isize::MAX` bytes).
fn fits<T>(len: usize) -> bool {
    len <= isize::MAX as usize / std::mem::size_of::<T>().max(1)
}

/// The `len` elements at `ptr`: `KB_ERR_NULL` for a NULL pointer, `KB_ERR_ARGUMENT` for a
/// misaligned one or a length no buffer can have.
///
/// Requires: A non-NULL `ptr` points to `len` readable, initialised elements that nothing writes while
/// the slice lives.
#[inline]
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Result<&'a [T], kb_status> {
    if ptr.is_null() {
        return Err(KB_ERR_NULL);
    }
    if !ptr.is_aligned() || !fits::<T>(len) {
        return Err(KB_ERR_ARGUMENT);
    }
    // SAFETY: non-NULL, aligned, in size range; readable as the caller guarantees.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The `len` elements at `ptr`, writable (see [`slice`]).
///
/// Requires: A non-NULL `ptr` points to `len` writable elements that nothing else accesses while the
/// slice lives.
#[inline]
pub(crate) unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> Result<&'a mut [T], kb_status> {
    if ptr.is_null() {
        return Err(KB_ERR_NULL);
    }
    if !ptr.is_aligned() || !fits::<T>(len) {
        return Err(KB_ERR_ARGUMENT);
    }
    // SAFETY: non-NULL, aligned, in size range; writable and unaliased as guaranteed.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Whether the byte ranges of two buffers overlap (an input that is also the output).
#[inline]
pub(crate) fn overlap<T, U>(a: *const T, a_len: usize, b: *const U, b_len: usize) -> bool {
    let (a0, b0) = (a as usize, b as usize);
    let a1 = a0.saturating_add(a_len.saturating_mul(std::mem::size_of::<T>()));
    let b1 = b0.saturating_add(b_len.saturating_mul(std::mem::size_of::<U>()));
    a0 < b1 && b0 < a1
}

/// A NUL-terminated UTF-8 string argument named `what`.
///
/// Requires: A non-NULL `s` points to a NUL-terminated string.
pub(crate) unsafe fn text<'a>(s: *const c_char, what: &str) -> Result<&'a str, Error> {
    if s.is_null() {
        return Err(Error::null(what));
    }
    // SAFETY: non-NULL and NUL-terminated, as the caller guarantees.
    let c = unsafe { CStr::from_ptr(s) };
    c.to_str().map_err(|e| {
        Error::new(
            KB_ERR_UTF8,
            format!(
                "{what} is not valid UTF-8 (invalid byte at offset {}): \"{}\"; paths and names \
                 are passed as UTF-8",
                e.valid_up_to(),
                c.to_string_lossy()
            ),
        )
    })
}

/// A path argument (UTF-8 on every platform).
///
/// Requires: As [`text`].
pub(crate) unsafe fn path(s: *const c_char) -> Result<PathBuf, Error> {
    // SAFETY: as guaranteed by the caller.
    unsafe { text(s, "path") }.map(PathBuf::from)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// Copies `s` into a fixed array as a NUL-terminated string, truncated at a character
/// boundary when it does not fit.
pub(crate) fn fill(dst: &mut [c_char], s: &str) {
    let Some(room) = dst.len().checked_sub(1) else {
        return;
    };
    let p = prefix(s, room);
    for (d, &b) in dst.iter_mut().zip(p.as_bytes()) {
        *d = b as c_char;
    }
    dst[p.len()..].fill(0);
}

/// The snprintf-like contract of the string getters: `*needed` (if not NULL) receives the
/// length of `s` in bytes without the NUL. `cap == 0` is a size query (`buf` may be NULL): it
/// returns `KB_OK` when `needed` is given, `KB_ERR_BUFFER` otherwise. When `cap > len`, `s` and
/// a NUL are written to `buf` and `KB_OK` is returned; otherwise the longest prefix that fits
/// (cut at a character boundary) and a NUL are written and `KB_ERR_BUFFER` is returned.
///
/// Requires: `buf` is NULL or points to `cap` writable bytes; `needed` is NULL or writable.
pub(crate) unsafe fn copy_out(
    s: &str,
    buf: *mut c_char,
    cap: usize,
    needed: *mut usize,
) -> kb_status {
    if !needed.is_null() {
        // SAFETY: writable, as the caller guarantees.
        unsafe { needed.write(s.len()) };
    }
    if cap == 0 {
        // A size query (buf may be NULL).
        return if needed.is_null() {
            KB_ERR_BUFFER
        } else {
            KB_OK
        };
    }
    // SAFETY: `cap` writable bytes at `buf`, as the caller guarantees.
    let dst = match unsafe { slice_mut(buf, cap) } {
        Ok(d) => d,
        Err(code) => return code,
    };
    fill(dst, s);
    if cap > s.len() {
        KB_OK
    } else {
        KB_ERR_BUFFER
    }
}
