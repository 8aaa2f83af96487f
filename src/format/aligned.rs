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

    /// Where the kernel's transparent huge pages are on (`always` or `madvise`), a large buffer is
    /// served by them (`AnonHugePages` of its mapping in `/proc/self/smaps`); where they are `never`,
    /// it gets none. In `madvise` mode a 4 KiB-aligned buffer of the same size without the advice
    /// is the control: it gets none.
    #[cfg(all(
        target_os = "linux",
        not(feature = "force-posix-platform"),
        not(feature = "force-portable-platform")
    ))]
    #[test]
    fn large_buffers_get_huge_pages() {
        let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .expect("transparent huge pages are reported");
        let len = 8 * HUGE_PAGE;
        let big = AlignedBytes::zeroed(len);
        assert!(big.as_slice().iter().all(|&x| x == 0));
        if mode.contains("[never]") {
            // Huge pages are off on this machine: the advice is refused and changes nothing.
            assert_eq!(huge_bytes(big.as_slice()), 0, "{mode:?}");
            return;
        }
        assert!(huge_bytes(big.as_slice()) >= 2 * HUGE_PAGE, "{mode:?}");

        if mode.contains("[madvise]") {
            // Control: the same size with 4 KiB alignment and no advice gets no huge pages.
            let layout = Layout::from_size_align(len, ALIGN).unwrap();
            // SAFETY: non-zero size; freed below with the same layout.
            let raw = unsafe { alloc::alloc_zeroed(layout) };
            // SAFETY: alloc_zeroed returned len initialised bytes.
            let plain = unsafe { std::slice::from_raw_parts(raw, len) };
            assert!(plain.iter().all(|&x| x == 0));
            assert_eq!(huge_bytes(plain), 0);
            // SAFETY: allocated above with this layout.
            unsafe { alloc::dealloc(raw, layout) };
        }
    }

    /// `AnonHugePages` of the mappings of /proc/self/smaps that overlap `data`.
    #[cfg(target_os = "linux")]
    fn huge_bytes(data: &[u8]) -> usize {
        let (lo, hi) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps is readable");
        let mut inside = false;
        let mut total = 0;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let first = words.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-') {
                if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                {
                    inside = a < hi && lo < b;
                    continue;
                }
            }
            if inside && first == "AnonHugePages:" {
                total += words
                    .next()
                    .and_then(|kb| kb.parse::<usize>().ok())
                    .unwrap_or(0)
                    * 1024;
            }
        }
        total
    }
}
