//! Tests of every implementation that compiles on Linux: run them with no feature (`linux`),
//! with `force-posix-platform` and with `force-portable-platform`. Each checks the answer the
//! implementation gives against what the kernel did, read from `/proc` (when the tests run on
//! Linux), and checks the documented "no" where an implementation has none.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;
use crate::format::{write_kbi, AlignedBytes, IndexParts, ListParts, Metadata, Metric};
use crate::index::{IvfIndex, OpenOptions};
use crate::live::{live, LiveConfig, LoadError};

/// The alignment of [`AlignedBytes`]: one page (4 KiB pages are assumed, as for `.kbi`).
const ALIGN: usize = 4096;

/// Whether the implementation under test makes real calls for memory and usage (mlock,
/// madvise, getrusage): `linux` and `posix`.
fn unix_calls() -> bool {
    matches!(NAME, "linux" | "posix")
}

#[test]
fn the_forcing_features_choose_the_implementation() {
    if cfg!(feature = "force-portable-platform") {
        assert_eq!(NAME, "portable");
    } else if cfg!(feature = "force-posix-platform") {
        assert_eq!(NAME, "posix");
    } else if cfg!(target_os = "linux") {
        assert_eq!(NAME, "linux");
    }
    assert!(["linux", "posix", "windows", "portable"].contains(&NAME));
    assert!(NAME == "linux" || !READ_LEASES, "{NAME} claims read leases");
}

/// What `/proc/self/smaps` says of the mapping that holds `addr` (Linux hosts).
#[cfg(target_os = "linux")]
#[derive(Debug)]
struct Vma {
    size_kib: u64,
    rss_kib: u64,
    anon_huge_kib: u64,
    locked: bool,
}

#[cfg(target_os = "linux")]
fn vma(addr: *const u8) -> Vma {
    let addr = addr as u64;
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    let (mut size_kib, mut rss_kib, mut anon_huge_kib) = (0, 0, 0);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                inside = (a..b).contains(&addr);
                continue;
            }
        }
        if !inside {
            continue;
        }
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        if line.starts_with("Size:") {
            size_kib = kib();
        } else if line.starts_with("Rss:") {
            rss_kib = kib();
        } else if line.starts_with("AnonHugePages:") {
            anon_huge_kib = kib();
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            return Vma {
                size_kib,
                rss_kib,
                anon_huge_kib,
                locked: flags.split_whitespace().any(|f| f == "lo"),
            };
        }
    }
    panic!("no mapping holds {addr:#x}");
}

/// Whether this process may lock any amount of memory: `CAP_IPC_LOCK`, or an unlimited
/// `RLIMIT_MEMLOCK` (Linux hosts; elsewhere assumed not).
fn may_lock_everything() -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_ipc_lock = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0);
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let unlimited = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .is_some_and(|l| l.split_whitespace().nth(3) == Some("unlimited"));
    cap_ipc_lock || unlimited
}

#[test]
fn locking_memory_reports_what_the_kernel_did() {
    // Whole pages of our own, so no other allocation shares them.
    let mut buf = AlignedBytes::zeroed(16 * ALIGN);
    buf.as_mut_slice().fill(1);
    let locked = lock_memory(buf.as_slice());
    #[cfg(target_os = "linux")]
    assert_eq!(vma(buf.as_slice().as_ptr()).locked, locked, "{NAME}");
    if NAME == "portable" {
        assert!(!locked);
    } else if may_lock_everything() {
        assert!(
            locked,
            "{NAME}: mlock refused although this process may lock memory"
        );
    }
    let unlocked = unlock_memory(buf.as_slice());
    assert_eq!(unlocked, unix_calls(), "{NAME}");
    #[cfg(target_os = "linux")]
    assert!(!vma(buf.as_slice().as_ptr()).locked);
    // Nothing to lock is always locked, on every implementation.
    assert!(lock_memory::<f32>(&[]) && unlock_memory::<u8>(&[]));
}

/// Huge-page advice, against the `AnonHugePages` of the buffer's mapping: `AlignedBytes` of
/// 2 MiB or more asks for it. Linux makes the call (it takes where the kernel's transparent
/// huge pages exist) and the buffer is served by huge pages unless they are `never`; the other
/// implementations answer no, and in `madvise` mode their buffers get none, like a 4 KiB-aligned
/// buffer allocated without the advice (the control).
#[cfg(target_os = "linux")]
#[test]
fn huge_page_advice_reports_what_the_kernel_did() {
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok();
    let on = mode.as_deref().is_some_and(|m| !m.contains("[never]"));
    let madvise = mode.as_deref().is_some_and(|m| m.contains("[madvise]"));
    let len = 8 * HUGE_PAGE;
    let mut big = AlignedBytes::zeroed(len);
    assert_eq!(big.as_slice().as_ptr() as usize % HUGE_PAGE, 0);
    assert!(big.as_slice().iter().all(|&x| x == 0));
    let huge = vma(big.as_slice().as_ptr()).anon_huge_kib * 1024;
    // SAFETY: the buffer is ours and huge-page aligned; advice never changes its contents.
    let advised = unsafe { advise_huge_pages(big.as_mut_slice().as_mut_ptr(), len) };
    if NAME == "linux" {
        assert_eq!(advised, mode.is_some(), "{mode:?}");
        if on {
            assert!(
                huge >= 2 * HUGE_PAGE as u64,
                "{huge} bytes in huge pages, {mode:?}"
            );
        }
    } else {
        assert!(!advised, "{NAME} claims huge-page advice");
    }
    if !on || (madvise && NAME != "linux") {
        assert_eq!(huge, 0, "{NAME}, {mode:?}");
    }
    if madvise {
        // Control: the same size with 4 KiB alignment and no advice gets no huge pages.
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).unwrap();
        // SAFETY: non-zero size; freed below with the same layout.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!raw.is_null());
        // SAFETY: alloc_zeroed returned len initialised bytes.
        let plain = unsafe { std::slice::from_raw_parts(raw, len) };
        assert!(plain.iter().all(|&x| x == 0));
        assert_eq!(vma(raw).anon_huge_kib, 0);
        // SAFETY: allocated above with this layout.
        unsafe { std::alloc::dealloc(raw, layout) };
    }
    // SAFETY: an empty span; nothing is advised.
    assert!(unsafe { advise_huge_pages(std::ptr::null_mut(), 0) });
}

#[test]
fn will_need_advice_accepts_any_slice() {
    let buf = AlignedBytes::zeroed(8 * ALIGN);
    // Starts mid-page: the implementation must widen it to page boundaries.
    let ok = advise_will_need(&buf.as_slice()[100..5 * ALIGN + 7]);
    match NAME {
        "linux" | "posix" => assert!(ok),
        "portable" => assert!(!ok),
        _ => {}
    }
    assert!(advise_will_need::<u8>(&[]));
}

#[test]
fn fault_counters_rise_when_fresh_pages_are_touched() {
    const PAGES: usize = 256;
    // A fresh anonymous mapping: none of its pages is in the page tables yet (memory from the
    // allocator may be reused, already resident memory).
    let mut buf = memmap2::MmapMut::map_anon(PAGES * ALIGN).unwrap();
    let (thread_before, process_before) = (thread_usage(), process_page_faults());
    for page in buf.chunks_mut(ALIGN) {
        // SAFETY: a valid, exclusive reference to the first byte of the chunk.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 1) };
    }
    let (thread_after, process_after) = (thread_usage(), process_page_faults());
    std::hint::black_box(&buf);
    match NAME {
        "linux" => {
            let (b, a) = (thread_before.unwrap(), thread_after.unwrap());
            assert!(
                a.page_faults >= b.page_faults + PAGES as u64 / 2,
                "{b:?} → {a:?}"
            );
            assert!(a.involuntary_switches >= b.involuntary_switches);
            assert_eq!(thread_page_faults().map(|f| f >= a.page_faults), Some(true));
        }
        _ => {
            assert_eq!((thread_before, thread_after), (None, None));
            assert_eq!(thread_page_faults(), None);
        }
    }
    if unix_calls() {
        let (b, a) = (process_before.unwrap(), process_after.unwrap());
        assert!(a >= b + PAGES as u64 / 2, "{b} → {a}");
    } else if NAME == "portable" {
        assert_eq!((process_before, process_after), (None, None));
    }
}

/// The scheduling policy of the calling thread (`/proc/thread-self/stat`, field 41: 0 is
/// `SCHED_OTHER`, 1 `SCHED_FIFO`).
#[cfg(target_os = "linux")]
fn thread_policy() -> u32 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    // Fields from the third (state) on; policy is field 41.
    after_name
        .split_whitespace()
        .nth(41 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn scheduling_calls_answer_honestly() {
    // A thread of its own, so the test harness's thread keeps its scheduling.
    std::thread::spawn(|| {
        assert!(!pin_thread_to_cpu(usize::MAX));
        match NAME {
            "linux" => {
                let cpu = current_cpu().expect("sched_getcpu");
                assert!(
                    pin_thread_to_cpu(cpu),
                    "the CPU it runs on is an allowed one"
                );
                assert_eq!(current_cpu(), Some(cpu));
            }
            "posix" | "portable" => {
                assert_eq!(current_cpu(), None);
                assert!(!pin_thread_to_cpu(0));
            }
            _ => {}
        }
        #[cfg(target_os = "linux")]
        {
            // SCHED_FIFO priorities start at 1: 0 is refused wherever the call is made.
            assert!(!set_thread_realtime(0));
            assert_eq!(thread_policy(), 0);
            let fifo = set_thread_realtime(10);
            assert_eq!(thread_policy() == 1, fifo, "{NAME}");
            if NAME == "portable" {
                assert!(!fifo);
            }
        }
    })
    .join()
    .unwrap();
}

fn file_with(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn files_identity_directories_and_the_page_cache() {
    let dir = tempfile::tempdir().unwrap();
    let a = file_with(dir.path(), "a", b"aaaa");
    let b = file_with(dir.path(), "b", b"bbbb");
    let link = dir.path().join("a-link");
    std::fs::hard_link(&a, &link).unwrap();
    let id = |p: &Path| file_identity(&std::fs::metadata(p).unwrap());
    if unix_calls() {
        assert!(id(&a).is_some());
        assert_eq!(id(&a), id(&link));
        assert_ne!(id(&a), id(&b));
    } else if NAME == "portable" {
        assert_eq!((id(&a), id(&b)), (None, None));
    }

    let missing = dir.path().join("missing");
    assert!(sync_directory(dir.path()).is_ok());
    assert_eq!(sync_directory(&missing).is_err(), unix_calls(), "{NAME}");

    let dropped = drop_page_cache(&File::open(&a).unwrap());
    assert_eq!(dropped, NAME == "linux");

    let p = new_file_permissions();
    assert!(!p.readonly());
    #[cfg(unix)]
    if unix_calls() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(p.mode() & 0o777, 0o644);
    }
}

#[test]
fn read_leases_where_supported_and_a_documented_no_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let path = file_with(dir.path(), "leased", &[7u8; 8192]);
    let taken = take_read_lease(File::open(&path).unwrap());
    if !READ_LEASES {
        assert_eq!(taken.unwrap_err(), LeaseError::Unsupported);
        return;
    }
    let writer = {
        let lease = taken.expect("a read lease on our own file");
        assert!(lease.intact());
        // A writer's open waits for the lease, and the lease reports that it waits.
        let path = path.clone();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(b"more").unwrap();
        });
        let start = std::time::Instant::now();
        while lease.intact() {
            assert!(
                start.elapsed().as_secs() < 10,
                "the writer never broke the lease"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!writer.is_finished(), "the writer went ahead of the lease");
        writer
        // The lease is released here.
    };
    writer.join().unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 8196);

    // A file open for writing gets no lease.
    let w = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    assert_eq!(
        take_read_lease(File::open(&path).unwrap()).unwrap_err(),
        LeaseError::Busy
    );
    drop(w);
    assert!(take_read_lease(File::open(&path).unwrap()).is_ok());
}

fn small_index(dir: &Path) -> PathBuf {
    let dim = 16;
    let lists = (0..3)
        .map(|l| ListParts {
            ids: (0..100).map(|i| l * 100 + i).collect(),
            vectors: (0..100 * dim)
                .map(|i| ((i as i64 * 7 + l * 13) % 101) as f32 / 50.0 - 1.0)
                .collect(),
        })
        .collect();
    let parts = IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: (0..3 * dim).map(|i| (i % 5) as f32 / 5.0).collect(),
        lists,
        metadata: Metadata {
            features: "test".into(),
            ..Metadata::default()
        },
    };
    let path = dir.join("small.kbi");
    write_kbi(&path, &parts).unwrap();
    path
}

/// The lock an index reports matches its mapping's, and its mapping is resident.
fn check_loaded(index: &IvfIndex, reported_locked: bool) {
    assert!(index.is_mapped());
    assert_eq!(reported_locked, index.is_locked());
    #[cfg(target_os = "linux")]
    {
        let v = vma(index.vectors().as_ptr().cast());
        assert_eq!(
            v.rss_kib, v.size_kib,
            "{NAME}: prefaulting left pages out: {v:?}"
        );
        if reported_locked {
            assert!(
                v.locked,
                "{NAME}: reported locked, but the mapping is not: {v:?}"
            );
        }
        if NAME == "portable" {
            assert!(!v.locked);
        }
    }
    if NAME == "portable" {
        assert!(!reported_locked);
    } else if may_lock_everything() {
        assert!(reported_locked, "{NAME}: not locked although it may be");
    }
}

#[test]
fn a_kbi_opens_prefaulted_and_locked_as_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_index(dir.path());
    let index = IvfIndex::open_with(
        &path,
        OpenOptions {
            prefault: true,
            mlock: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!((index.ntotal(), index.nlist(), index.dim()), (300, 3, 16));
    assert!(index.is_verified());
    check_loaded(&index, index.is_locked());
}

#[test]
fn live_loads_a_kbi_and_reports_mlocked_truthfully() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_index(dir.path());
    let (control, _audio) = live(LiveConfig {
        max_dim: 16,
        ..LiveConfig::default()
    });
    let prepared = control.prepare(&path, |_, _| {}).unwrap();
    assert_eq!(prepared.info().ntotal, 300);
    check_loaded(prepared.index().as_flat().unwrap(), prepared.info().mlocked);

    // Without leases, a file open for writing elsewhere is loaded (the protection is absent,
    // as documented); with them, it is refused.
    let w = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let busy = control.prepare(&path, |_, _| {});
    if READ_LEASES {
        assert!(matches!(busy, Err(LoadError::Busy { .. })), "{busy:?}");
    } else {
        assert!(busy.is_ok(), "{busy:?}");
    }
    drop(w);
}

/// The folder of the test executable's real file (symbolic links resolved).
fn executable_folder() -> PathBuf {
    let exe = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    exe.parent().unwrap().to_path_buf()
}

#[test]
fn the_module_directory_of_a_test_binary_is_the_executables_folder() {
    // The unit tests are linked into the test executable, so it is the module holding them.
    let found = module_directory().unwrap_or_else(|| panic!("{NAME}: no module directory"));
    assert!(found.is_absolute() && found.is_dir(), "{NAME}: {found:?}");
    if NAME == "windows" {
        // Kept as the loader reports it; canonicalizing adds a `\\?\` prefix.
        assert_eq!(std::fs::canonicalize(&found).unwrap(), executable_folder());
    } else {
        assert_eq!(found, executable_folder(), "{NAME}");
    }
    // The same answer every time.
    assert_eq!(module_directory(), Some(found));
}

#[test]
fn a_module_reported_by_a_relative_or_empty_name_falls_back_to_the_executable() {
    assert_eq!(folder_of_module(None), Some(executable_folder()));
    for reported in ["", "knnblend", "./target/knnblend.clap"] {
        assert_eq!(
            folder_of_module(Some(PathBuf::from(reported))),
            Some(executable_folder()),
            "{reported:?}"
        );
    }
}

#[test]
fn a_module_reported_by_an_absolute_name_gives_its_real_folder() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::canonicalize(dir.path()).unwrap();
    let plugin = file_with(&real, "knnblend.clap", b"\x7fELF");
    assert_eq!(folder_of_module(Some(plugin.clone())), Some(real.clone()));
    // A file that is gone (a plugin replaced while loaded) still names its folder.
    let gone = real.join("gone").join("knnblend.clap");
    assert_eq!(folder_of_module(Some(gone)), Some(real.join("gone")));
    // Symbolic links are resolved: the folder of the real file, where its companions are.
    #[cfg(unix)]
    {
        let elsewhere = real.join("installed");
        std::fs::create_dir(&elsewhere).unwrap();
        let link = elsewhere.join("knnblend.clap");
        std::os::unix::fs::symlink(&plugin, &link).unwrap();
        assert_eq!(folder_of_module(Some(link)), Some(real));
    }
}

/// `dladdr` names the shared library that holds an address, not the executable: what a plugin
/// needs (linux and posix).
#[cfg(all(unix, not(feature = "force-portable-platform")))]
#[test]
fn dladdr_names_the_shared_library_holding_an_address() {
    let libc_file = imp::loaded_file(libc::getpid as *const libc::c_void).expect("dladdr");
    assert!(
        libc_file.is_absolute() && libc_file.is_file(),
        "{libc_file:?}"
    );
    let real = std::fs::canonicalize(&libc_file).unwrap();
    assert_ne!(
        real,
        std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap()
    );
    #[cfg(target_os = "linux")]
    assert!(
        real.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("libc"),
        "{real:?}"
    );
    // And this code's own address, the test executable.
    let own = imp::loaded_file(executable_folder as *const libc::c_void).expect("dladdr");
    assert_eq!(folder_of_module(Some(own)), Some(executable_folder()));
}

#[test]
fn a_threads_page_faults_are_readable_from_another_thread() {
    let id = current_thread_id();
    if NAME != "linux" {
        // posix (on Linux: not macOS) and portable have no such id; nor counts from outside.
        assert_eq!(id, None, "{NAME}");
        assert_eq!(thread_page_faults_of(1), None, "{NAME}");
        return;
    }
    // The id is the kernel's tid.
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u64;
    assert_eq!(id, Some(tid));

    // A thread faults in fresh pages; the main thread reads its count from /proc and compares
    // with what the thread itself counted (getrusage of the thread).
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let id = current_thread_id().unwrap();
        let before = thread_page_faults().unwrap();
        tx.send((id, before)).unwrap();
        go_rx.recv().unwrap();
        let pages = 256;
        let mut buffer = vec![0u8; pages * 4096];
        for page in 0..pages {
            // SAFETY: in bounds; volatile so the writes (and the faults) happen.
            unsafe { std::ptr::write_volatile(buffer.as_mut_ptr().add(page * 4096), 1) };
        }
        let after = thread_page_faults().unwrap();
        tx.send((id, after)).unwrap();
        go_rx.recv().unwrap();
        std::hint::black_box(buffer);
    });
    let (id, own_before) = rx.recv().unwrap();
    let seen_before = thread_page_faults_of(id).expect("readable from /proc");
    go_tx.send(()).unwrap();
    let (_, own_after) = rx.recv().unwrap();
    let seen_after = thread_page_faults_of(id).expect("readable from /proc");
    go_tx.send(()).unwrap();
    worker.join().unwrap();
    assert!(
        own_after - own_before >= 200,
        "touching 256 fresh pages faulted {} times",
        own_after - own_before
    );
    // The outside view sees the same faults, give or take the few the thread took between its
    // own readings and ours (sending on the channel may fault a page).
    let seen = seen_after - seen_before;
    let own = own_after - own_before;
    assert!(
        seen + 8 >= own && seen <= own + 16,
        "outside {seen} vs the thread's own {own}"
    );
    // A thread that is gone reads as None. `join` returns once the thread has cleared its
    // tid, which the kernel does before it removes the task from /proc: wait for that (a CI
    // run read the joined thread's 256 faults once).
    let gone = (0..200).any(|_| {
        thread_page_faults_of(id).is_none() || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            false
        }
    });
    assert!(gone, "thread {id} still readable 2 s after it was joined");
    assert_eq!(thread_page_faults_of(u32::MAX as u64), None);
}

#[test]
fn stat_lines_parse_with_odd_command_names() {
    let line = "1234 (a (weird) name) S 1 2 3 4 5 6 70 8 90 10 11 12 13";
    // Fields 10 and 12: minflt = 70, majflt = 90.
    assert_eq!(faults_from_stat(line), Some(160));
    assert_eq!(faults_from_stat("garbage"), None);
}
