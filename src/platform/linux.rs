//! Linux: `mlock`, `madvise` (`WILLNEED`, `HUGEPAGE`), `MAP_POPULATE`, read leases, `getrusage(RUSAGE_THREAD)`,
//! `SCHED_FIFO`, `sched_setaffinity`, `sched_getcpu`, `posix_fadvise`, `dladdr`.
//!
//! The functions take `(ptr, len)` of memory the caller holds a reference to (see `raw` in
//! the module root), non-empty.

use std::fs::{File, Metadata, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::LeaseError;

pub(super) const NAME: &str = "linux";

pub(super) fn lock_memory(ptr: *const u8, len: usize) -> bool {
    // SAFETY: mlock only pins the pages of memory the caller holds; no memory is accessed.
    unsafe { libc::mlock(ptr.cast(), len) == 0 }
}

pub(super) fn unlock_memory(ptr: *const u8, len: usize) -> bool {
    // SAFETY: munlock only unpins pages; no memory is accessed.
    unsafe { libc::munlock(ptr.cast(), len) == 0 }
}

pub(super) fn advise_will_need(ptr: *const u8, len: usize) -> bool {
    let (start, len) = page_span(ptr, len);
    // SAFETY: the span covers only pages that hold part of the caller's memory, and
    // MADV_WILLNEED is advice that never changes their contents.
    unsafe { libc::madvise(start.cast_mut().cast(), len, libc::MADV_WILLNEED) == 0 }
}

pub(super) unsafe fn advise_huge_pages(ptr: *mut u8, len: usize) -> bool {
    // SAFETY: the caller owns the page-aligned span; MADV_HUGEPAGE changes only how future
    // faults in it are served, never its contents.
    unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) == 0 }
}

/// `ptr..ptr + len` widened to start on a page boundary, as `madvise` requires.
fn page_span(ptr: *const u8, len: usize) -> (*const u8, usize) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let skew = ptr as usize % page;
    (ptr.wrapping_sub(skew), len + skew)
}

pub(super) unsafe fn map_read_only(file: &File, populate: bool) -> io::Result<memmap2::Mmap> {
    let mut options = memmap2::MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: forwarded to the caller.
    unsafe { options.map(file) }
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

// Leases need F_SETSIG, whose value the libc crate does not export for glibc targets; this is
// its asm-generic value, which these architectures use.
cfg_if::cfg_if! {
    if #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    ))] {
        pub(super) const READ_LEASES: bool = true;

        /// `F_SETSIG` (asm-generic value).
        const F_SETSIG: libc::c_int = 10;

        /// A read lease held on `file`.
        pub(super) struct Lease {
            file: File,
        }

        pub(super) fn take_read_lease(file: File) -> Result<Lease, LeaseError> {
            let fd = file.as_raw_fd();
            // A lease break notifies its owner with a signal (SIGIO, fatal by default). Make it
            // SIGURG, which is ignored by default, then remove the owner so none is sent at all;
            // the holder asks with F_GETLEASE instead.
            // SAFETY: fcntl on a file descriptor we own; no pointers are passed.
            unsafe {
                if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
                    return Err(LeaseError::Unsupported);
                }
                if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
                    return match io::Error::last_os_error().raw_os_error() {
                        Some(libc::EAGAIN) | Some(libc::EBUSY) => Err(LeaseError::Busy),
                        // Not permitted (another user's file) or not supported here.
                        _ => Err(LeaseError::Unsupported),
                    };
                }
                libc::fcntl(fd, libc::F_SETOWN, 0);
            }
            Ok(Lease { file })
        }

        impl Lease {
            pub(super) fn intact(&self) -> bool {
                // SAFETY: fcntl on a file descriptor we own.
                unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_GETLEASE) == libc::F_RDLCK }
            }
        }

        impl Drop for Lease {
            fn drop(&mut self) {
                // SAFETY: fcntl on a file descriptor we own (closing it would release the lease
                // too).
                unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
            }
        }
    } else {
        pub(super) const READ_LEASES: bool = false;

        /// Never made: this architecture's `F_SETSIG` is not known here.
        pub(super) struct Lease {
            never: std::convert::Infallible,
        }

        pub(super) fn take_read_lease(_file: File) -> Result<Lease, LeaseError> {
            Err(LeaseError::Unsupported)
        }

        impl Lease {
            pub(super) fn intact(&self) -> bool {
                match self.never {}
            }
        }
    }
}

fn rusage(who: libc::c_int) -> Option<libc::rusage> {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(who, &mut u) == 0).then_some(u)
    }
}

pub(super) fn thread_usage() -> Option<super::ThreadUsage> {
    rusage(libc::RUSAGE_THREAD).map(|u| super::ThreadUsage {
        page_faults: (u.ru_minflt + u.ru_majflt) as u64,
        involuntary_switches: u.ru_nivcsw as u64,
    })
}

#[inline]
pub(super) fn current_thread_id() -> Option<u64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread; the clock id is written into
    // a local. glibc and musl compute it from the descriptor's tid, without a system call.
    let ok = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0;
    // A thread CPU clock: (!tid << 3) | CPUCLOCK_PERTHREAD (4) | CPUCLOCK_SCHED (2).
    (ok && clock & 7 == 6).then_some((!(clock >> 3)) as u32 as u64)
}

pub(super) fn thread_page_faults_of(thread_id: u64) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{thread_id}/stat")).ok()?;
    super::faults_from_stat(&stat)
}

pub(super) fn process_page_faults() -> Option<u64> {
    rusage(libc::RUSAGE_SELF).map(|u| (u.ru_minflt + u.ru_majflt) as u64)
}

pub(super) fn set_thread_realtime(priority: i32) -> bool {
    // SAFETY: plain call on the calling thread with a valid parameter struct.
    unsafe {
        let mut param: libc::sched_param = std::mem::zeroed();
        param.sched_priority = priority;
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) == 0
    }
}

pub(super) fn pin_thread_to_cpu(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: the set is a valid, zeroed cpu_set_t with `cpu` in range; pid 0 is the calling
    // thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

pub(super) fn current_cpu() -> Option<usize> {
    // SAFETY: no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

pub(super) fn drop_page_cache(file: &File) -> bool {
    // SAFETY: advisory call on a valid descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) == 0 }
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
