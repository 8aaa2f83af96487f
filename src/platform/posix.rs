//! Other Unix (macOS, the BSDs, Android): only calls POSIX defines and macOS has. `mlock`,
//! `madvise(MADV_WILLNEED)`, `fsync`, `getrusage(RUSAGE_SELF)`, `SCHED_FIFO`, `dladdr` (not
//! POSIX, but in every libc here); no read leases, no `MAP_POPULATE`, no per-thread fault
//! counts, no thread pinning, no `sched_getcpu`, no `posix_fadvise`.
//!
//! The feature `force-posix-platform` compiles this file on Linux too, so CI runs it.

use std::fs::{File, Metadata, Permissions};
use std::io;
use std::path::{Path, PathBuf};

use super::LeaseError;

pub(super) const NAME: &str = "posix";

pub(super) const READ_LEASES: bool = false;

pub(super) fn lock_memory(ptr: *const u8, len: usize) -> bool {
    // SAFETY: mlock only pins the pages of memory the caller holds; no memory is accessed.
    unsafe { libc::mlock(ptr.cast(), len) == 0 }
}

pub(super) fn unlock_memory(ptr: *const u8, len: usize) -> bool {
    // SAFETY: munlock only unpins pages; no memory is accessed.
    unsafe { libc::munlock(ptr.cast(), len) == 0 }
}

pub(super) unsafe fn advise_huge_pages(_ptr: *mut u8, _len: usize) -> bool {
    false
}

pub(super) fn advise_will_need(ptr: *const u8, len: usize) -> bool {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let skew = ptr as usize % page;
    let start = ptr.wrapping_sub(skew);
    // SAFETY: the span covers only pages that hold part of the caller's memory, and
    // MADV_WILLNEED is advice that never changes their contents.
    unsafe { libc::madvise(start.cast_mut().cast(), len + skew, libc::MADV_WILLNEED) == 0 }
}

pub(super) unsafe fn map_read_only(file: &File, _populate: bool) -> io::Result<memmap2::Mmap> {
    // No MAP_POPULATE outside Linux: the caller's prefault reads every page instead.
    // SAFETY: forwarded to the caller.
    unsafe { memmap2::MmapOptions::new().map(file) }
}

pub(super) fn sync_directory(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn file_identity(metadata: &Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

pub(super) fn new_file_permissions() -> Permissions {
    use std::os::unix::fs::PermissionsExt;
    Permissions::from_mode(0o644)
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

#[inline]
pub(super) fn current_thread_id() -> Option<u64> {
    #[cfg(target_os = "macos")]
    {
        let mut id: u64 = 0;
        // SAFETY: asks for the calling thread's id (pthread_self is valid), written to a local.
        let ok = unsafe { libc::pthread_threadid_np(libc::pthread_self(), &mut id) } == 0;
        ok.then_some(id)
    }
    #[cfg(not(target_os = "macos"))]
    {
        None
    }
}

pub(super) fn thread_page_faults_of(_thread_id: u64) -> Option<u64> {
    None
}

pub(super) fn process_page_faults() -> Option<u64> {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_SELF, &mut u) == 0)
            .then(|| (u.ru_minflt + u.ru_majflt) as u64)
    }
}

pub(super) fn set_thread_realtime(priority: i32) -> bool {
    // SAFETY: plain call on the calling thread with a valid parameter struct (zeroed first:
    // macOS's has a private field besides the priority).
    unsafe {
        let mut param: libc::sched_param = std::mem::zeroed();
        param.sched_priority = priority;
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) == 0
    }
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
    // This function is in the binary knnblend is linked into, so its address names that binary.
    let address = module_directory as fn() -> Option<PathBuf>;
    super::folder_of_module(loaded_file(address as *const libc::c_void))
}

/// The file of the loaded object (executable or shared library) holding `address`, as
/// `dladdr` names it (for the executable, glibc gives `argv[0]`).
pub(super) fn loaded_file(address: *const libc::c_void) -> Option<PathBuf> {
    use std::ffi::{CStr, OsStr};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero Dl_info is valid (null pointers); dladdr only writes into it, and
    // only looks the address up in the loader's tables (nothing is read there).
    let (found, info) = unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        let found = libc::dladdr(address, &mut info) != 0;
        (found, info)
    };
    (found && !info.dli_fname.is_null()).then(|| {
        // SAFETY: a NUL-terminated string of the loader's, valid while the object is loaded,
        // which the callers' is (it holds code they run).
        let name = unsafe { CStr::from_ptr(info.dli_fname) };
        PathBuf::from(OsStr::from_bytes(name.to_bytes()))
    })
}
