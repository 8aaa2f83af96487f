//! Where an index's bytes live: a read-only memory map of a `.kbi` or owned, page-aligned
//! memory holding the same image. Both index kinds ([`IvfIndex`](super::IvfIndex),
//! [`PqIndex`](super::PqIndex)) read their sections through it, so search code sees the same
//! slices either way.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::format::{self, AlignedBytes, FileKind, FormatError};
use crate::platform;

pub(crate) enum Backing {
    Mapped(Mmap),
    Owned(AlignedBytes),
}

impl Backing {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mapped(m) => m,
            Backing::Owned(b) => b.as_slice(),
        }
    }

    pub(crate) fn is_mapped(&self) -> bool {
        matches!(self, Backing::Mapped(_))
    }

    /// Advises the kernel that every page will be needed and reads one byte of every page.
    pub(crate) fn prefault(&self) {
        if let Backing::Mapped(m) = self {
            platform::advise_will_need(&m[..]);
        }
        let mut sum = 0u8;
        for page in self.bytes().chunks(4096) {
            // SAFETY: a valid reference to the first byte of the chunk.
            sum = sum.wrapping_add(unsafe { std::ptr::read_volatile(page.as_ptr()) });
        }
        std::hint::black_box(sum);
    }

    /// Unlocks owned pages (unmapping releases a mapping's locks by itself).
    pub(crate) fn unlock(&self) {
        if let Backing::Owned(b) = self {
            platform::unlock_memory(b.as_slice());
        }
    }
}

/// Opens the index file at `path` for either index type: its length, and for a `.kbi` its
/// read-only memory map (`None` for a faiss file, which each index type reads into owned
/// memory its own way). A directory or an unrecognised file is a typed error.
pub(crate) fn open_file(
    path: &Path,
    prefault: bool,
) -> Result<(u64, Option<Backing>), FormatError> {
    let meta = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?;
    if meta.is_dir() {
        return Err(FormatError::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "is a directory, not an index file",
            ),
        ));
    }
    match format::sniff(path)? {
        FileKind::Kbi => {
            let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
            // SAFETY: the mapping is read-only. knnblend's writers replace files by rename and
            // never modify them in place; another program overwriting the file in place can
            // change only the values searches read (every bound the indexes use is owned and
            // checked), and truncating it in place while it is mapped is the one hazard
            // (SIGBUS on access), documented in the README.
            let map = unsafe { platform::map_read_only(&file, prefault) }
                .map_err(|e| FormatError::io(path, e))?;
            Ok((meta.len(), Some(Backing::Mapped(map))))
        }
        FileKind::Faiss => Ok((meta.len(), None)),
    }
}

/// The values of type `T` in `range` of `bytes`.
///
/// # Safety contract (checked by the callers' layouts)
/// `range` lies inside `bytes`, starts at an offset aligned for `T` on a page-aligned base and
/// has a length that is a multiple of `size_of::<T>()`; `T` accepts any bits.
#[inline]
pub(crate) fn view<T>(bytes: &[u8], range: std::ops::Range<usize>) -> &[T] {
    let s = &bytes[range];
    assert_eq!(s.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: see the contract above; the slice was bounds-checked by indexing and its
    // alignment by the assertion.
    unsafe {
        std::slice::from_raw_parts(s.as_ptr().cast::<T>(), s.len() / std::mem::size_of::<T>())
    }
}
