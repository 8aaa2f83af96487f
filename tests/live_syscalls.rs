//! The audio side makes no system calls: the audio thread installs a seccomp filter that kills
//! the whole process (SIGSYS) on any system call other than write, exit and rt_sigreturn, and
//! then picks up publications, blends and crossfades while the control side swaps indexes. It
//! runs in a child process; the parent checks the child survived. A second test makes one
//! deliberate system call under the same filter and checks the child is killed.
//!
//! (Seccomp *strict* mode cannot be used: it also disables `rdtsc`, which the engine reads.)
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

#[path = "live_support/mod.rs"]
mod support;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use knnblend::live::LoadOutcome;
use support::*;

const CHILD_ENV: &str = "KNNBLEND_LIVE_SECCOMP_CHILD";
const PASSED: &str = "audio thread finished under the seccomp filter";

fn raw_write(msg: &str) {
    // SAFETY: write(2) of a valid buffer to stderr; allowed in strict mode.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

#[test]
#[ignore = "run by the seccomp tests in a child process"]
fn seccomp_child() {
    let Some(mode) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let violate = mode == "violate";
    let dir = tempfile::tempdir().unwrap();
    let files = four_voices(dir.path(), "s", 2000);
    let (control, mut audio) = runtime(2, 0.003, 0.001);
    assert!(matches!(
        control.load(0, &files[0]).wait(),
        LoadOutcome::Published(_)
    ));

    let blocks = Arc::new(AtomicU64::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    {
        let (blocks, active, stop, finished) = (
            blocks.clone(),
            active.clone(),
            stop.clone(),
            finished.clone(),
        );
        std::thread::spawn(move || {
            let qs = queries(16, 9);
            let mut out = [0f32; DIM];
            let mut run_block = |audio: &mut knnblend::live::AudioEngine| {
                audio.begin_block(active.load(SeqCst), -1.0);
                for q in qs.chunks_exact(DIM) {
                    audio.blend(q, 8, 0.8, &mut out);
                }
                audio.end_block();
            };
            for _ in 0..100 {
                run_block(&mut audio); // warm up before the filter
            }
            install_filter();
            // From here on, any system call but write/exit/rt_sigreturn kills the process.
            while !stop.load(SeqCst) {
                run_block(&mut audio);
                blocks.fetch_add(1, SeqCst);
                for _ in 0..2000 {
                    std::hint::spin_loop(); // pace without sleeping (sleeping is a system call)
                }
            }
            if violate {
                // SAFETY: a plain getpid system call.
                unsafe { libc::syscall(libc::SYS_getpid) };
            }
            raw_write("audio thread: done\n");
            finished.store(true, SeqCst);
            // The thread may not return normally (that would make system calls); leave with
            // exit(2), the one way out the filter allows. `audio` is leaked deliberately.
            // SAFETY: ends this thread only.
            unsafe { libc::syscall(libc::SYS_exit, 0) };
        });
    }

    // The control side swaps indexes and slots while the audio thread runs under the filter.
    let mut rng = Rng(77);
    let mut last = blocks.load(SeqCst);
    for i in 0..200 {
        let slot = rng.below(2);
        if i % 3 == 0 {
            let p = control.prepare(&files[rng.below(4)], |_, _| {}).unwrap();
            control.publish(slot, p).unwrap();
        } else {
            control.load(slot, &files[rng.below(4)]).wait();
        }
        active.store(rng.below(2), SeqCst);
        // Wait until the audio side has run a few blocks since this swap.
        while blocks.load(SeqCst) < last + 3 {
            std::thread::sleep(Duration::from_micros(200));
        }
        last = blocks.load(SeqCst);
    }
    stop.store(true, SeqCst);
    while !finished.load(SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = control.telemetry();
    raw_write(&format!(
        "{PASSED}: {} blocks, {} queries\n",
        t.blocks, t.queries
    ));
}

/// Allows write, exit and rt_sigreturn on this thread; any other system call kills the process.
fn install_filter() {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let filter = [
        stmt(load, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(load, 0), // seccomp_data.nr
        jeq(libc::SYS_write as u32, 3, 0),
        jeq(libc::SYS_exit as u32, 2, 0),
        jeq(libc::SYS_rt_sigreturn as u32, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid, live filter program; it applies to this thread only.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let r = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        );
        assert_eq!(r, 0, "cannot install a seccomp filter");
    }
}

fn run_child(mode: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap()
}

#[test]
fn the_audio_side_makes_no_system_calls() {
    let out = run_child("clean");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        None,
        "the child was killed: the audio side made a system call\n{stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(PASSED), "{stderr}");
    println!(
        "{}",
        stderr
            .lines()
            .find(|l| l.contains(PASSED))
            .unwrap_or_default()
    );
}

#[test]
fn a_deliberate_system_call_under_the_filter_kills_the_child() {
    let out = run_child("violate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{stderr}");
    assert!(!stderr.contains("audio thread: done"), "{stderr}");
}
