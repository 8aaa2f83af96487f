//! Any other target: documented no-ops built from the standard library alone. Nothing is
//! locked, advised, leased, counted or pinned, and every function says so in its return value
//! (`false`, `None`, [`LeaseError::Unsupported`]); mapping is memmap2's, which fails with its
//! own error on targets it does not support.
//!
//! The feature `force-portable-platform` compiles this file on Linux too, so CI runs it.

use std::fs::{File, Metadata, Permissions};
use std::io;
use std::path::{Path, PathBuf};

use super::LeaseError;

pub(super) const NAME: &str = "portable";

pub(super) const READ_LEASES: bool = false;

pub(super) fn lock_memory(_ptr: *const u8, _len: usize) -> bool {
    false
}

pub(super) fn unlock_memory(_ptr: *const u8, _len: usize) -> bool {
    false
}

pub(super) unsafe fn advise_huge_pages(_ptr: *mut u8, _len: usize) -> bool {
    false
}

pub(super) fn advise_will_need(_ptr: *const u8, _len: usize) -> bool {
    false
}

pub(super) unsafe fn map_read_only(file: &File, _populate: bool) -> io::Result<memmap2::Mmap> {
    // SAFETY: forwarded to the caller.
    unsafe { memmap2::MmapOptions::new().map(file) }
}

pub(super) fn sync_directory(_dir: &Path) -> io::Result<()> {
    Ok(())
}

pub(super) fn file_identity(_metadata: &Metadata) -> Option<(u64, u64)> {
    None
}

pub(super) fn new_file_permissions() -> Permissions {
    // Without OS-specific APIs, permissions can only be taken from an existing file.
    let mut p = tempfile::tempfile()
        .and_then(|f| f.metadata())
        .or_else(|_| std::fs::metadata("."))
        .map(|m| m.permissions())
        .expect("neither a temporary file nor the current directory can be examined");
    if p.readonly() {
        // Only clears a read-only flag; a writable file's permissions are kept as they are
        // (on Unix, clearing it would make the file writable for everyone).
        #[allow(clippy::permissions_set_readonly_false)]
        p.set_readonly(false);
    }
    p
}

/// Never made: there are no read leases here.
pub(super) struct Lease {
    never: std::convert::Infallible,
}

impl Lease {
    pub(super) fn intact(&self) -> bool {
        match self.never {}
    }
}

pub(super) fn take_read_lease(_file: File) -> Result<Lease, LeaseError> {
    Err(LeaseError::Unsupported)
}

pub(super) fn thread_usage() -> Option<super::ThreadUsage> {
    None
}

pub(super) fn current_thread_id() -> Option<u64> {
    None
}

pub(super) fn thread_page_faults_of(_thread_id: u64) -> Option<u64> {
    None
}

pub(super) fn process_page_faults() -> Option<u64> {
    None
}

pub(super) fn set_thread_realtime(_priority: i32) -> bool {
    false
}

pub(super) fn pin_thread_to_cpu(_cpu: usize) -> bool {
    false
}

pub(super) fn current_cpu() -> Option<usize> {
    None
}

pub(super) fn drop_page_cache(_file: &File) -> bool {
    false
}

pub(super) fn module_directory() -> Option<PathBuf> {
    // No way to ask which binary holds this code: the executable's folder.
    super::folder_of_module(None)
}
