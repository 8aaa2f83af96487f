//! The audio side makes no system calls, at the shapes users run (`live_support`: the plugin's
//! 80-d voices, RVC's 256-d and 768-d indexes with RVC's list counts): the audio thread installs
//! a seccomp filter that kills the whole process (SIGSYS) on any system call other than write,
//! exit and rt_sigreturn, and then picks up publications, blends (single and block searches,
//! alternately, with query-side α expansion on every other four blocks) and crossfades while
//! the control side swaps indexes. The same runs on the IVF-PQ FastScan audio path
//! (`live_support::pq_shapes`: 80-d `PQ40x4fs`, 256-d `PQ128x4fs`, 768-d `PQ192x4fs`) among a
//! refined (`RFlat`) and an unrefined PQ index, an IVF-Flat one and another refined one, so
//! swaps crossfade between the two index types (the child counts such fades and the blocks a
//! PQ index served; the parent checks both happened). It runs in a child process; the parent
//! checks the child survived. A second test makes one deliberate system call under the same
//! filter and checks the child is killed.
//!
//! (Seccomp *strict* mode cannot be used: it also disables `rdtsc`, which the engine reads.)
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

#[path = "live_support/mod.rs"]
mod support;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knnblend::index::QueryExpansion;
use knnblend::live::LoadOutcome;
use support::*;

/// `clean` or `violate`, then the shape's dimension, the number of swaps and the voices
/// (`flat`: [`four_voices`]; `pq`: [`pq_voices`]): `clean 768 24 pq`.
const CHILD_ENV: &str = "KNNBLEND_LIVE_SECCOMP_CHILD";
const PASSED: &str = "audio thread finished under the seccomp filter";

fn raw_write(msg: &str) {
    // SAFETY: write(2) of a valid buffer to stderr; allowed in strict mode.
    unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
}

#[test]
#[ignore = "run by the seccomp tests in a child process"]
fn seccomp_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let words: Vec<&str> = spec.split(' ').collect();
    let [mode, dim, swaps, voices] = words[..] else {
        panic!("{CHILD_ENV}={spec}: expected `clean|violate <dim> <swaps> flat|pq|spilled`")
    };
    let violate = mode == "violate";
    let swaps: usize = swaps.parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (shape, label, files) = if voices == "pq" {
        let pq = pq_shapes()
            .into_iter()
            .find(|s| s.shape.dim.to_string() == dim)
            .expect("a PQ shape of live_support");
        let files = pq_voices(dir.path(), "s", &pq);
        // What the child serves is the PQ index it is meant to be (a panic fails the child).
        let qs = queries(pq.shape.dim, 256, 9);
        assert_pq_index(&pq, &files[0], true, identity(1), &qs);
        assert_pq_index(&pq, &files[1], false, identity(2), &qs);
        (pq.shape, pq.label(), files)
    } else {
        let shape = shapes()
            .into_iter()
            .find(|s| s.dim.to_string() == dim)
            .expect("a shape of live_support");
        let files = if voices == "spilled" {
            four_spilled_voices(dir.path(), "s", &shape)
        } else {
            four_voices(dir.path(), "s", &shape)
        };
        (shape, shape.label(), files)
    };
    let (control, mut audio) = runtime(shape.dim, 2, 0.003, 0.001);
    assert!(matches!(
        control.load(0, &files[0]).wait(),
        LoadOutcome::Published(_)
    ));

    let blocks = Arc::new(AtomicU64::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    // Blocks served by an IVF-PQ index, and crossfades begun between IVF-Flat and IVF-PQ.
    let pq_blocks = Arc::new(AtomicU64::new(0));
    let mixed_fades = Arc::new(AtomicU64::new(0));
    {
        let (blocks, active, stop, finished) = (
            blocks.clone(),
            active.clone(),
            stop.clone(),
            finished.clone(),
        );
        let (pq_blocks, mixed_fades) = (pq_blocks.clone(), mixed_fades.clone());
        std::thread::spawn(move || {
            let mut work = Work::new(shape.dim, 16, 9);
            let mut n = 0u64;
            // The serving index's id and whether it is IVF-PQ, as of the previous block.
            let mut last: Option<(u64, bool)> = None;
            let mut run_block = |audio: &mut knnblend::live::AudioEngine| {
                audio.begin_block(active.load(SeqCst), -1.0);
                let now = audio
                    .serving_id()
                    .zip(audio.serving().map(|ix| ix.as_pq().is_some()));
                if let (Some((id, pq)), Some((last_id, last_pq))) = (now, last) {
                    if audio.is_fading() && id != last_id && pq != last_pq {
                        mixed_fades.fetch_add(1, SeqCst);
                    }
                }
                if now.is_some_and(|(_, pq)| pq) {
                    pq_blocks.fetch_add(1, SeqCst);
                }
                last = now;
                // Query-side α expansion on every other four blocks.
                let expand = n & 4 != 0;
                audio.set_query_expansion(expand.then_some(QueryExpansion { k: 8, alpha: 3.0 }));
                // Block search and single searches, alternately.
                work.blend(audio, n.is_multiple_of(2), 0.8);
                audio.end_block();
                n += 1;
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
    for i in 0..swaps {
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
    // Closing switches between files[2] and files[0] (with `pq` voices, an IVF-Flat and an
    // IVF-PQ index), each crossfaded, so such a fade runs whatever the draws above.
    for (slot, file) in [(0, &files[2]), (1, &files[0])] {
        let p = control.prepare(file, |_, _| {}).unwrap();
        control.publish(slot, p).unwrap();
    }
    for i in 0..4 {
        active.store(i % 2, SeqCst);
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
        "{PASSED}: {label}: {swaps} swaps, {} blocks, {} queries, pq_blocks={} mixed_fades={}\n",
        t.blocks,
        t.queries,
        pq_blocks.load(SeqCst),
        mixed_fades.load(SeqCst)
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

fn run_child(mode: &str, dim: usize, swaps: usize, voices: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seccomp_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{mode} {dim} {swaps} {voices}"))
        .output()
        .unwrap()
}

#[test]
fn the_audio_side_makes_no_system_calls_plugin_80() {
    no_system_calls(plugin_80(), 200);
}

#[test]
fn the_audio_side_makes_no_system_calls_rvc_256() {
    no_system_calls(rvc_256(), 45);
}

#[test]
fn the_audio_side_makes_no_system_calls_rvc_768() {
    no_system_calls(rvc_768(), 24);
}

fn no_system_calls(shape: Shape, swaps: usize) {
    let started = Instant::now();
    // The search paths the child runs, checked here (the child has no test harness output).
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "paths.kbi", &shape, 1.0);
    assert_paths_engage(&shape, &file, &queries(shape.dim, 512, 9));
    drop(dir);
    let line = run_clean_child(shape.dim, swaps, "flat", started);
    assert!(line.contains("pq_blocks=0 mixed_fades=0"), "{line}");
}

/// Spilled and balanced voices (lists holding second copies; each id reported once).
#[test]
fn the_spilled_balanced_audio_side_makes_no_system_calls_rvc_256() {
    let line = run_clean_child(rvc_256().dim, 45, "spilled", Instant::now());
    assert!(line.contains("pq_blocks=0 mixed_fades=0"), "{line}");
}

#[test]
fn the_spilled_balanced_audio_side_makes_no_system_calls_rvc_768() {
    let line = run_clean_child(rvc_768().dim, 24, "spilled", Instant::now());
    assert!(line.contains("pq_blocks=0 mixed_fades=0"), "{line}");
}

#[test]
fn the_ivf_pq_audio_side_makes_no_system_calls_pq_80() {
    pq_no_system_calls(pq_80(), 120);
}

#[test]
fn the_ivf_pq_audio_side_makes_no_system_calls_pq_256() {
    pq_no_system_calls(pq_256(), 45);
}

#[test]
fn the_ivf_pq_audio_side_makes_no_system_calls_pq_768() {
    pq_no_system_calls(pq_768(), 24);
}

/// The clean child among the IVF-PQ voices of `pq` (built and checked by the child); checks
/// that PQ indexes served blocks and that a crossfade between IVF-Flat and IVF-PQ ran.
fn pq_no_system_calls(pq: PqShape, swaps: usize) {
    let line = run_clean_child(pq.shape.dim, swaps, "pq", Instant::now());
    let count = |key: &str| -> u64 {
        let at = line
            .find(key)
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            + key.len();
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().unwrap()
    };
    assert!(
        count("pq_blocks=") > 0,
        "no block was served by a PQ index: {line}"
    );
    assert!(
        count("mixed_fades=") > 0,
        "no crossfade between an IVF-Flat and a PQ index ran: {line}"
    );
}

/// Runs the clean child at `dim` with `voices`, checks it survived and finished, prints and
/// returns its closing line.
fn run_clean_child(dim: usize, swaps: usize, voices: &str, started: Instant) -> String {
    let out = run_child("clean", dim, swaps, voices);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        None,
        "the child was killed: the audio side made a system call\n{stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(PASSED), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains(PASSED))
        .unwrap_or_default()
        .to_string();
    println!("{line}; {:.1} s", started.elapsed().as_secs_f64());
    line
}

#[test]
fn a_deliberate_system_call_under_the_filter_kills_the_child() {
    let out = run_child("violate", plugin_80().dim, 20, "flat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{stderr}");
    assert!(!stderr.contains("audio thread: done"), "{stderr}");
}
