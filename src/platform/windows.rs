//! Windows, through windows-sys: `VirtualLock`, `PrefetchVirtualMemory`,
//! `GetProcessMemoryInfo`, `SetThreadPriority`, `SetThreadAffinityMask`,
//! `GetCurrentProcessorNumber`, `GetModuleHandleExW`, `GetModuleFileNameW`. No read leases, no
//! per-thread fault counts, no page-cache eviction, and directory sync is a documented no-op.
//!
//! **Not compiled in CI**: the project's machines can install no Windows standard library, so
//! this file is written against windows-sys 0.61's declarations (checked in its source) but has
//! never been built. The `portable` implementation, which CI does run, is its fallback if it
//! ever fails to build.

use std::fs::{File, Metadata, Permissions};
use std::io;
use std::path::{Path, PathBuf};

use windows_sys::Win32::Foundation::HMODULE;
use windows_sys::Win32::System::LibraryLoader::{
    GetModuleFileNameW, GetModuleHandleExW, GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS,
    GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
};
use windows_sys::Win32::System::Memory::{
    PrefetchVirtualMemory, VirtualLock, VirtualUnlock, WIN32_MEMORY_RANGE_ENTRY,
};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetCurrentProcessorNumber, GetCurrentThread, SetThreadAffinityMask,
    SetThreadPriority, THREAD_PRIORITY_TIME_CRITICAL,
};

use super::LeaseError;

pub(super) const NAME: &str = "windows";

pub(super) const READ_LEASES: bool = false;

pub(super) fn lock_memory(ptr: *const u8, len: usize) -> bool {
    // SAFETY: VirtualLock only pins pages of memory the caller holds; no memory is accessed.
    unsafe { VirtualLock(ptr.cast(), len) != 0 }
}

pub(super) fn unlock_memory(ptr: *const u8, len: usize) -> bool {
    // SAFETY: VirtualUnlock only unpins pages; no memory is accessed.
    unsafe { VirtualUnlock(ptr.cast(), len) != 0 }
}

pub(super) unsafe fn advise_huge_pages(_ptr: *mut u8, _len: usize) -> bool {
    false
}

pub(super) fn advise_will_need(ptr: *const u8, len: usize) -> bool {
    let range = WIN32_MEMORY_RANGE_ENTRY {
        VirtualAddress: ptr.cast_mut().cast(),
        NumberOfBytes: len,
    };
    // SAFETY: one valid range entry of the caller's memory, of the current process (a pseudo
    // handle that needs no closing); prefetching never changes memory contents.
    unsafe { PrefetchVirtualMemory(GetCurrentProcess(), 1, &range, 0) != 0 }
}

pub(super) unsafe fn map_read_only(file: &File, _populate: bool) -> io::Result<memmap2::Mmap> {
    // No MAP_POPULATE on Windows: the caller's prefault reads every page instead.
    // SAFETY: forwarded to the caller.
    unsafe { memmap2::MmapOptions::new().map(file) }
}

pub(super) fn sync_directory(_dir: &Path) -> io::Result<()> {
    // A documented no-op: `File::open` cannot open a directory on Windows (that needs
    // FILE_FLAG_BACKUP_SEMANTICS, and flushing it write access), and NTFS journals the rename.
    Ok(())
}

pub(super) fn file_identity(_metadata: &Metadata) -> Option<(u64, u64)> {
    // The volume serial number and file index are exposed by std only on nightly.
    None
}

pub(super) fn new_file_permissions() -> Permissions {
    // Permissions can only be taken from an existing file; Windows has just a read-only flag.
    let mut p = tempfile::tempfile()
        .and_then(|f| f.metadata())
        .or_else(|_| std::fs::metadata("."))
        .map(|m| m.permissions())
        .expect("neither a temporary file nor the current directory can be examined");
    #[allow(clippy::permissions_set_readonly_false)] // only a flag on Windows
    p.set_readonly(false);
    p
}

/// Never made: Windows has no read leases.
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
    // Windows counts page faults per process only.
    None
}

#[inline]
pub(super) fn current_thread_id() -> Option<u64> {
    // SAFETY: no preconditions; reads the calling thread's environment block.
    Some(unsafe { windows_sys::Win32::System::Threading::GetCurrentThreadId() } as u64)
}

pub(super) fn thread_page_faults_of(_thread_id: u64) -> Option<u64> {
    None
}

pub(super) fn process_page_faults() -> Option<u64> {
    let cb = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    let mut counters = PROCESS_MEMORY_COUNTERS {
        cb,
        ..Default::default()
    };
    // SAFETY: a correctly sized struct we own, for the current process's pseudo handle.
    let ok = unsafe { K32GetProcessMemoryInfo(GetCurrentProcess(), &mut counters, cb) };
    (ok != 0).then_some(u64::from(counters.PageFaultCount))
}

pub(super) fn set_thread_realtime(_priority: i32) -> bool {
    // SAFETY: the calling thread's pseudo handle and a valid priority constant.
    unsafe { SetThreadPriority(GetCurrentThread(), THREAD_PRIORITY_TIME_CRITICAL) != 0 }
}

pub(super) fn pin_thread_to_cpu(cpu: usize) -> bool {
    if cpu >= usize::BITS as usize {
        return false;
    }
    // SAFETY: the calling thread's pseudo handle and a one-CPU mask.
    unsafe { SetThreadAffinityMask(GetCurrentThread(), 1usize << cpu) != 0 }
}

pub(super) fn current_cpu() -> Option<usize> {
    // SAFETY: no preconditions.
    Some(unsafe { GetCurrentProcessorNumber() } as usize)
}

pub(super) fn drop_page_cache(_file: &File) -> bool {
    false
}

pub(super) fn module_directory() -> Option<PathBuf> {
    let file = module_file()
        .filter(|file| file.is_absolute())
        .or_else(|| std::env::current_exe().ok())?;
    file.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// The file of the module (DLL or EXE) that holds this code, as the loader has it.
fn module_file() -> Option<PathBuf> {
    use std::ffi::OsString;
    use std::os::windows::ffi::OsStringExt;
    // This function is in the binary knnblend is linked into, so its address names that binary.
    let address = module_file as fn() -> Option<PathBuf>;
    let mut module: HMODULE = std::ptr::null_mut();
    // SAFETY: with FROM_ADDRESS the "name" argument is an address inside the module, not a
    // string (nothing is read there); UNCHANGED_REFCOUNT takes no reference, so there is no
    // FreeLibrary to pair it with, and the module cannot be unloaded while its code runs.
    let ok = unsafe {
        GetModuleHandleExW(
            GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
            address as *const u16,
            &mut module,
        )
    };
    if ok == 0 || module.is_null() {
        return None;
    }
    // MAX_PATH first; long paths reach 32 767 UTF-16 units.
    let mut buf: Vec<u16> = vec![0; 260];
    loop {
        let size = u32::try_from(buf.len()).ok()?;
        // SAFETY: a buffer of `size` UTF-16 units we own; the call writes at most that many.
        let len = unsafe { GetModuleFileNameW(module, buf.as_mut_ptr(), size) };
        if len == 0 {
            return None;
        }
        if len < size {
            // The whole name, without its terminating NUL.
            buf.truncate(len as usize);
            return Some(PathBuf::from(OsString::from_wide(&buf)));
        }
        // Truncated (the return value is the buffer size): try a bigger one.
        if buf.len() > 32_767 {
            return None;
        }
        buf.resize(buf.len() * 2, 0);
    }
}
