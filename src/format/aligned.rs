//! Page-aligned owned byte buffers, so owned indexes have the same alignment as mapped ones.
//! Buffers of a huge page or more are aligned to one and asked for huge pages before they are
//! first written: a search's reads of a large owned index then miss the TLB far less often.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::platform::HUGE_PAGE;

/// Alignment of [`AlignedBytes`]: one page, the same as sections of a mapped `.kbi`.
pub const ALIGN: usize = 4096;

/// A zero-initialised, page-aligned, fixed-size heap buffer.
pub struct AlignedBytes {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBytes uniquely owns its allocation, like a Vec<u8>.
unsafe impl Send for AlignedBytes {}
// SAFETY: shared access only hands out `&[u8]`.
unsafe impl Sync for AlignedBytes {}

impl AlignedBytes {
    /// Allocates `len` zeroed bytes aligned to `ALIGN` (4096 bytes; a huge page, 2 MiB, from
    /// that size on, with the OS asked to back them with huge pages). Panics only if the
    /// allocator fails (like `Vec`), or if `len` overflows a layout.
    pub fn zeroed(len: usize) -> Self {
        let layout = Self::layout(len);
        let ptr = if layout.align() == HUGE_PAGE {
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc::alloc(layout) };
            let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
            // SAFETY: the allocation is ours, huge-page aligned and not yet written; the
            // advice changes how its pages are faulted in, then every byte is zeroed.
            unsafe {
                crate::platform::advise_huge_pages(ptr.as_ptr(), len);
                std::ptr::write_bytes(ptr.as_ptr(), 0, len);
            }
            ptr
        } else {
            // SAFETY: the layout has a non-zero size.
            let raw = unsafe { alloc::alloc_zeroed(layout) };
            NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout))
        };
        AlignedBytes { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        let align = if len >= HUGE_PAGE { HUGE_PAGE } else { ALIGN };
        Layout::from_size_align(len.max(1), align).expect("buffer size overflows a layout")
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the buffer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AlignedBytes {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with the same layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

impl std::fmt::Debug for AlignedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBytes({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_page_aligned_and_zeroed() {
        for len in [1, 4095, 4096, 10_000, HUGE_PAGE, 3 * HUGE_PAGE + 5] {
            let b = AlignedBytes::zeroed(len);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
            if len >= HUGE_PAGE {
                assert_eq!(b.as_slice().as_ptr() as usize % HUGE_PAGE, 0);
            }
        }
    }
}
