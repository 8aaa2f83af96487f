//! The operating-system seam: every OS-specific call the library, the CLI and the plugin make
//! goes through this module, so a port is one file and nothing else names `libc` or
//! `windows-sys`.
//!
//! One implementation is compiled, chosen by one `cfg_if!` below:
//!
//! | implementation | compiled for | file |
//! | --- | --- | --- |
//! | `linux` | Linux | `linux.rs` |
//! | `posix` | other Unix (macOS, the BSDs, Android) | `posix.rs` |
//! | `windows` | Windows | `windows.rs` |
//! | `portable` | anything else | `portable.rs` |
//!
//! [`NAME`] says which one this build has. The test-only features `force-posix-platform` and
//! `force-portable-platform` compile the `posix` and `portable` implementations on Linux, so CI
//! runs them (no other target's standard library can be installed on its machines). The
//! `windows` implementation is not compiled in CI.
//!
//! | function | linux | posix | windows | portable |
//! | --- | --- | --- | --- | --- |
//! | [`lock_memory`] / [`unlock_memory`] | `mlock` / `munlock` | `mlock` / `munlock` | `VirtualLock` / `VirtualUnlock` | `false` |
//! | [`advise_will_need`] | `madvise(MADV_WILLNEED)` | `madvise(MADV_WILLNEED)` | `PrefetchVirtualMemory` | `false` |
//! | huge-page advice for fresh heap memory (crate-internal) | `madvise(MADV_HUGEPAGE)` | `false` | `false` | `false` |
//! | mapping with prefault (crate-internal) | `MAP_POPULATE` | plain map | plain map | plain map |
//! | [`take_read_lease`] | `fcntl(F_SETLEASE, F_RDLCK)` | [`LeaseError::Unsupported`] | [`LeaseError::Unsupported`] | [`LeaseError::Unsupported`] |
//! | [`sync_directory`] | `fsync` | `fsync` (`F_FULLFSYNC` on Apple) | no-op | no-op |
//! | [`file_identity`] | device, inode | device, inode | `None` | `None` |
//! | [`new_file_permissions`] | `0o644` | `0o644` | writable | a fresh temporary file's, writable |
//! | [`thread_usage`] | `getrusage(RUSAGE_THREAD)` | `None` | `None` | `None` |
//! | [`process_page_faults`] | `getrusage(RUSAGE_SELF)` | `getrusage(RUSAGE_SELF)` | `GetProcessMemoryInfo` | `None` |
//! | [`set_thread_realtime`] | `SCHED_FIFO` | `SCHED_FIFO` | `THREAD_PRIORITY_TIME_CRITICAL` | `false` |
//! | [`pin_thread_to_cpu`] | `sched_setaffinity` | `false` | `SetThreadAffinityMask` | `false` |
//! | [`current_cpu`] | `sched_getcpu` | `None` | `GetCurrentProcessorNumber` | `None` |
//! | [`drop_page_cache`] | `posix_fadvise(POSIX_FADV_DONTNEED)` | `false` | `false` | `false` |
//! | [`module_directory`] | `dladdr` | `dladdr` | `GetModuleHandleExW` + `GetModuleFileNameW` | `current_exe` |
//!
//! Everything here is for the control side (loader, GUI, benchmarks, tests): none of it is
//! called on the audio thread, and every function is a system call or several.

use std::fs::{File, Metadata, Permissions};
use std::io;
use std::path::{Path, PathBuf};

cfg_if::cfg_if! {
    if #[cfg(feature = "force-portable-platform")] {
        mod portable;
        use portable as imp;
    } else if #[cfg(all(feature = "force-posix-platform", unix))] {
        mod posix;
        use posix as imp;
    } else if #[cfg(target_os = "linux")] {
        mod linux;
        use linux as imp;
    } else if #[cfg(unix)] {
        mod posix;
        use posix as imp;
    } else if #[cfg(windows)] {
        mod windows;
        use windows as imp;
    } else {
        mod portable;
        use portable as imp;
    }
}

/// Which implementation this build has: `"linux"`, `"posix"`, `"windows"` or `"portable"`.
pub const NAME: &str = imp::NAME;

/// Whether [`take_read_lease`] can succeed in this build (true only on Linux, on the
/// architectures whose `F_SETSIG` value is known). Where it is false, the protection leases give
/// a load (see [`live`](crate::live)) is absent.
pub const READ_LEASES: bool = imp::READ_LEASES;

/// Tries to lock the pages holding `data` in RAM, so they are never paged out. Returns whether
/// it succeeded (an empty slice is trivially locked). Best effort by design: failure is
/// reported, never fatal.
///
/// - linux, posix: `mlock`. Fails beyond `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK` (Linux) or
///   the system's wired-memory limit (macOS).
/// - windows: `VirtualLock`. Fails beyond the process's minimum working set, which knnblend
///   does not raise.
/// - portable: does nothing and returns false.
///
/// Locks are per page: locking part of a page locks all of it, and heap pages stay locked when
/// the memory is freed, so pair every successful call with [`unlock_memory`].
pub fn lock_memory<T>(data: &[T]) -> bool {
    let (ptr, len) = raw(data);
    len == 0 || imp::lock_memory(ptr, len)
}

/// Releases the page locks [`lock_memory`] took on `data`. Returns whether it succeeded.
///
/// - linux, posix: `munlock`.
/// - windows: `VirtualUnlock` (fails if the pages were not locked).
/// - portable: does nothing and returns false.
///
/// Unmapping a file mapping releases its locks on every OS; heap memory needs this call.
pub fn unlock_memory<T>(data: &[T]) -> bool {
    let (ptr, len) = raw(data);
    len == 0 || imp::unlock_memory(ptr, len)
}

/// Tells the OS every page holding `data` will be read soon, so it starts reading them in
/// (from a mapped file, or from swap). Returns whether the OS took the advice. Advice only:
/// callers still touch every page to be sure (see [`IvfIndex::prefault`]).
///
/// - linux, posix: `madvise(MADV_WILLNEED)` on the pages holding `data`.
/// - windows: `PrefetchVirtualMemory` on the current process (Windows 8 and later).
/// - portable: does nothing and returns false.
///
/// [`IvfIndex::prefault`]: crate::index::IvfIndex::prefault
pub fn advise_will_need<T>(data: &[T]) -> bool {
    let (ptr, len) = raw(data);
    len == 0 || imp::advise_will_need(ptr, len)
}

/// The alignment that lets [`advise_huge_pages`] back a buffer with huge pages: 2 MiB, the
/// transparent huge page of x86-64 and of arm64 with 4 KiB base pages.
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// Asks the OS to back `len` bytes of fresh, not yet touched memory at `ptr` with transparent
/// huge pages, so a search's scattered reads of a large index miss the TLB far less often.
/// Returns whether the OS took the advice. Advice only, given before the first write: memory
/// already faulted in keeps its pages.
///
/// - linux: `madvise(MADV_HUGEPAGE)` (it takes effect where the kernel's transparent huge pages
///   are `always` or `madvise`, the common default; `never` ignores it).
/// - posix, windows, portable: does nothing and returns false (Windows' large pages need a
///   privilege a plugin does not have).
///
/// # Safety
/// `ptr..ptr + len` must be memory the caller allocated and owns, starting on a page boundary.
pub(crate) unsafe fn advise_huge_pages(ptr: *mut u8, len: usize) -> bool {
    // SAFETY: forwarded to the caller.
    len == 0 || unsafe { imp::advise_huge_pages(ptr, len) }
}

/// Maps `file` read-only. With `populate`, Linux maps it with `MAP_POPULATE` (the kernel reads
/// every page in before returning); elsewhere `populate` is ignored and the caller's own
/// prefaulting does that work.
///
/// # Safety
/// As [`memmap2::Mmap::map`]: the file must not be modified (truncated, above all) while the
/// mapping lives, or reads of it see the changes or raise `SIGBUS`.
pub(crate) unsafe fn map_read_only(file: &File, populate: bool) -> io::Result<memmap2::Mmap> {
    // SAFETY: forwarded to the caller.
    unsafe { imp::map_read_only(file, populate) }
}

/// Makes a rename or a new directory entry in `dir` durable.
///
/// - linux: opens the directory and `fsync`s it.
/// - posix: the same through `File::sync_all`, which is `fcntl(F_FULLFSYNC)` on Apple systems.
/// - windows: a documented no-op returning `Ok(())`: a directory cannot be flushed through a
///   handle the standard library opens, and NTFS journals the rename itself.
/// - portable: a no-op returning `Ok(())`.
pub fn sync_directory(dir: &Path) -> io::Result<()> {
    imp::sync_directory(dir)
}

/// What identifies a file on its file system, `(device, inode)`, for telling whether two
/// paths, or one path at two times, name the same file.
///
/// - linux, posix: `st_dev` and `st_ino`.
/// - windows, portable: `None` (the standard library exposes the volume serial number and file
///   index only on nightly); callers then compare size and modification time alone.
pub fn file_identity(metadata: &Metadata) -> Option<(u64, u64)> {
    imp::file_identity(metadata)
}

/// The permissions knnblend gives a file it creates (an index, a WAV), when it replaces no
/// existing file whose permissions it would keep.
///
/// - linux, posix: mode `0o644` (`rw-r--r--`).
/// - windows: not read-only.
/// - portable: the permissions a fresh temporary file gets, made writable.
pub fn new_file_permissions() -> Permissions {
    imp::new_file_permissions()
}

/// A read lease on an open file, taken by [`take_read_lease`]: while it is held, another
/// program's `open` for writing or `truncate` of the file waits (Linux: up to
/// `/proc/sys/fs/lease-break-time` seconds) for it to be released. Dropping it releases the
/// lease and closes the file.
pub struct ReadLease(imp::Lease);

impl ReadLease {
    /// Whether the lease is still held with no writer waiting for it. Once a writer has started
    /// waiting, the holder should finish quickly and drop the lease.
    pub fn intact(&self) -> bool {
        self.0.intact()
    }
}

impl std::fmt::Debug for ReadLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLease")
            .field("intact", &self.intact())
            .finish()
    }
}

/// Why [`take_read_lease`] gave no lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseError {
    /// Some program (this one included) has the file open for writing.
    Busy,
    /// Leases are not available here: not this OS ([`READ_LEASES`] is false), a file of another
    /// user without `CAP_LEASE`, or a file system without lease support. The caller proceeds
    /// without the protection.
    Unsupported,
}

/// Takes a read lease on `file` (open for reading), keeping it open for as long as the lease
/// is held.
///
/// - linux: `fcntl(F_SETLEASE, F_RDLCK)`. A lease break would notify the owner with a signal
///   (`SIGIO`, fatal by default): the lease is set to signal `SIGURG`, which is ignored by
///   default, and then given no owner, so no signal is sent at all and the holder polls
///   [`ReadLease::intact`] instead.
/// - posix, windows, portable: [`LeaseError::Unsupported`] (macOS and Windows have no
///   equivalent: an open for writing cannot be made to wait for a reader).
pub fn take_read_lease(file: File) -> Result<ReadLease, LeaseError> {
    imp::take_read_lease(file).map(ReadLease)
}

/// Resource counts of the calling thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadUsage {
    /// Page faults, minor (no I/O) and major (I/O) together.
    pub page_faults: u64,
    /// Involuntary context switches (the thread was preempted).
    pub involuntary_switches: u64,
}

/// The calling thread's page faults and involuntary context switches so far, or `None` where
/// the OS does not count them per thread.
///
/// - linux: `getrusage(RUSAGE_THREAD)`: `ru_minflt + ru_majflt` and `ru_nivcsw`.
/// - posix: `None` (macOS has no `RUSAGE_THREAD`; see [`process_page_faults`]).
/// - windows: `None` (Windows counts page faults per process only).
/// - portable: `None`.
pub fn thread_usage() -> Option<ThreadUsage> {
    imp::thread_usage()
}

/// The calling thread's page faults so far (minor and major): [`thread_usage`]'s count.
pub fn thread_page_faults() -> Option<u64> {
    thread_usage().map(|u| u.page_faults)
}

/// The calling thread's kernel thread id, read without a system call, or `None` where that is
/// not possible. Safe on the audio thread: an audio side records it per block, and the control
/// side reads that thread's counters with [`thread_page_faults_of`].
///
/// - linux: `pthread_getcpuclockid(pthread_self())`, which glibc and musl answer from the thread
///   descriptor (`tid`) without entering the kernel; the thread CPU clock id encodes the tid as
///   `(!tid << 3) | 6` (the kernel's `CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED`), decoded here.
/// - posix: `pthread_threadid_np` on macOS (reads the thread's own descriptor), else `None`.
/// - windows: `GetCurrentThreadId` (reads the thread environment block).
/// - portable: `None`.
#[inline]
pub fn current_thread_id() -> Option<u64> {
    imp::current_thread_id()
}

/// Page faults (minor and major) so far of the thread [`current_thread_id`] named, read from
/// another thread, or `None` where the OS does not tell (or the thread is gone). Control side
/// only (it reads a file).
///
/// - linux: fields 10 and 12 (`minflt`, `majflt`) of `/proc/self/task/<tid>/stat`.
/// - posix, windows, portable: `None` (no per-thread fault counts readable from outside).
pub fn thread_page_faults_of(thread_id: u64) -> Option<u64> {
    imp::thread_page_faults_of(thread_id)
}

/// The whole process's page faults so far, or `None` where they are not counted.
///
/// - linux, posix: `getrusage(RUSAGE_SELF)`: `ru_minflt + ru_majflt`.
/// - windows: `GetProcessMemoryInfo`'s `PageFaultCount` (soft and hard faults; a 32-bit count
///   that wraps).
/// - portable: `None`.
pub fn process_page_faults() -> Option<u64> {
    imp::process_page_faults()
}

/// Moves the calling thread to a realtime scheduling class, as audio threads run. Returns
/// whether the OS allowed it (it usually needs privileges or an rtprio limit).
///
/// - linux, posix: `pthread_setschedparam(SCHED_FIFO, priority)` (Linux accepts 1 to 99).
/// - windows: `SetThreadPriority(THREAD_PRIORITY_TIME_CRITICAL)`; `priority` is not used.
/// - portable: does nothing and returns false.
pub fn set_thread_realtime(priority: i32) -> bool {
    imp::set_thread_realtime(priority)
}

/// Restricts the calling thread to run on CPU `cpu` only. Returns whether it succeeded.
///
/// - linux: `sched_setaffinity` on the calling thread.
/// - posix: false (macOS has no way to pin a thread; its affinity tags are hints).
/// - windows: `SetThreadAffinityMask`, CPU numbers within the thread's processor group.
/// - portable: does nothing and returns false.
pub fn pin_thread_to_cpu(cpu: usize) -> bool {
    imp::pin_thread_to_cpu(cpu)
}

/// The CPU the calling thread is running on (it may have moved by the time the caller looks),
/// or `None` where the OS does not say.
///
/// - linux: `sched_getcpu`.
/// - posix: `None`.
/// - windows: `GetCurrentProcessorNumber` (within the thread's processor group).
/// - portable: `None`.
pub fn current_cpu() -> Option<usize> {
    imp::current_cpu()
}

/// Asks the OS to drop `file`'s clean pages from its page cache, so the next read really reads
/// the disk (cold-load benchmarks). Returns whether the OS accepted the request.
///
/// - linux: `posix_fadvise(POSIX_FADV_DONTNEED)` over the whole file.
/// - posix: false (macOS has no `posix_fadvise`; `F_NOCACHE` affects only later reads).
/// - windows: false (there is no per-file way short of reopening it unbuffered).
/// - portable: false.
pub fn drop_page_cache(file: &File) -> bool {
    imp::drop_page_cache(file)
}

/// The folder of the binary that holds knnblend's code: the shared library (a plugin's `.clap`
/// or `.so`, a host's `.dll`) when knnblend is linked into one, else the executable. A plugin
/// finds the files shipped beside it there (ONNX Runtime's `libonnxruntime.so`). `None` when the
/// OS says nothing usable.
///
/// - linux, posix: `dladdr` on the address of a function of this module; the parent of the
///   file it names (`dli_fname`), canonicalized where possible (symbolic links resolved: the
///   folder of the real file). When `dladdr` fails or that name is empty or relative (for the
///   executable, glibc reports `argv[0]`, which may be a bare name found on `PATH`),
///   `std::env::current_exe()` is used instead; so a library the host loaded by a relative path gets the executable's
///   folder (hosts load plugins by absolute paths).
/// - windows: `GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS |
///   GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT)` on the same address, then
///   `GetModuleFileNameW`; the parent of that absolute path, not canonicalized (which would
///   give it a `\\?\` prefix). Falls back to `std::env::current_exe()` if either call fails.
/// - portable: the parent of `std::env::current_exe()`, canonicalized where possible (right
///   for an executable, not for a shared library).
///
/// Any thread but the audio thread: it takes the dynamic loader's lock and reads the file
/// system (canonicalizing resolves every symbolic link on the path). Call it once, when loading.
pub fn module_directory() -> Option<PathBuf> {
    imp::module_directory()
}

/// The folder of the module whose file the OS reported as `reported` (`dladdr`'s `dli_fname`,
/// or nothing): `std::env::current_exe()` instead when it is empty or relative, canonicalized
/// where possible, then its parent.
#[cfg_attr(
    all(windows, not(feature = "force-portable-platform")),
    allow(dead_code) // the windows implementation reports absolute paths and keeps them
)]
fn folder_of_module(reported: Option<PathBuf>) -> Option<PathBuf> {
    let file = match reported {
        Some(file) if file.is_absolute() => file,
        _ => std::env::current_exe().ok()?,
    };
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    file.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// The start and byte length of a slice.
fn raw<T>(data: &[T]) -> (*const u8, usize) {
    (data.as_ptr().cast(), std::mem::size_of_val(data))
}

/// `minflt + majflt` from a `/proc/.../stat` line (fields 10 and 12, counted after the
/// parenthesised command name, which may itself hold spaces and parentheses).
#[allow(dead_code)]
fn faults_from_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": field 3 (state) is fields[0], so field n is fields[n - 3].
    let minflt: u64 = fields.get(10 - 3)?.parse().ok()?;
    let majflt: u64 = fields.get(12 - 3)?.parse().ok()?;
    Some(minflt + majflt)
}

#[cfg(test)]
mod tests;
