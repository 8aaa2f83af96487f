//! The C ABI from a real C++ host: `examples/cpp/host.cpp`, compiled with the system `g++`
//! against the `libknnblend.a` and `libknnblend.so` cargo built for this test, runs a
//! processBlock-like realtime thread while its message thread loads, publishes, unloads and
//! switches three RVC-shaped indexes (768-dimensional ContentVec-like frames: an IVF-Flat
//! `.kbi`, a faiss IVF-Flat `added_*.index` and an IVF-PQ FastScan `.kbi`, `PQ96x4fsr,RFlat`)
//! between slots.
//!
//! It runs under the LD_PRELOAD allocation interposer `examples/cpp/alloc_counter.c`, which the
//! realtime thread opts in to, and the realtime thread installs a seccomp filter that kills
//! the process on any system call but write, exit, exit_group and rt_sigreturn. The tests
//! check:
//! - zero heap calls on the realtime thread, across the swaps, and the process alive (no
//!   system call), with enough blocks, crossfades and serving-index changes to mean something;
//! - every search, block search and blend the host made through the C ABI, and every realtime
//!   output it kept, equal the Rust API's on the same file and queries, bit for bit;
//! - negative controls: a deliberate `malloc` on the realtime thread is counted (so the
//!   interposer works), and a deliberate `getpid` under the filter kills the host with SIGSYS
//!   (so the filter works).
//!
//! Without `g++` the tests fail when `CI=true` and are skipped (with a message) otherwise.
#![cfg(all(target_os = "linux", target_arch = "x86_64"))]

#[path = "../../tests/skip/mod.rs"]
mod skip;
#[path = "support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use knnblend_core::index::{AnyIndex, AnySearcher, BlendParams};
use support::*;

const DIM: usize = 768;
const NQUERIES: usize = 48;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<PathBuf>,
    queries: Vec<f32>,
    queries_file: PathBuf,
    host_static: PathBuf,
    host_shared: PathBuf,
    interposer: PathBuf,
    minimal_c: PathBuf,
}

/// Whether the system compilers are there; without them the test fails in CI and is skipped
/// (saying so) elsewhere.
fn have_compilers() -> bool {
    let ok = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ok("g++") && ok("gcc") {
        return true;
    }
    skip::skip(
        "g++ or gcc is missing (the C and C++ hosts are built with them)",
        "run `cargo xtask setup`, or `apt-get install g++`",
    );
    false
}

/// The directory holding the `libknnblend.a` / `.so` cargo built with this test: `deps/`
/// next to the test binary (or the profile directory above it, after a `cargo build`).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    for d in [deps.clone(), deps.parent().unwrap().to_path_buf()] {
        if d.join("libknnblend.a").exists() && d.join("libknnblend.so").exists() {
            return d;
        }
    }
    panic!(
        "libknnblend.a and libknnblend.so are not in {} or its parent",
        deps.display()
    );
}

fn run_tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    // Checked (and a skip reported) for every test, not only the one that builds the fixture.
    if !have_compilers() {
        return None;
    }
    F.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // Three voices: a .kbi, a faiss file as RVC writes them, an IVF-PQ FastScan .kbi.
        let a = rvc_parts(11, DIM, 3000, 48, "rvc-v2-768");
        let b = rvc_parts(12, DIM, 2400, 40, "");
        let c = rvc_parts(13, DIM, 1800, 32, "rvc-v2-768");
        let files = vec![
            dir.join("alice.kbi"),
            dir.join("added_IVF40_Flat_nprobe_1_bob_v2.index"),
            dir.join("carol_pq.kbi"),
        ];
        write_kbi_file(&files[0], &a);
        write_faiss_file(&files[1], &b);
        write_pq_kbi_file(&files[2], &pq_parts(&c, 96, true, Some(2.0)));
        let mut queries = queries(&a, NQUERIES / 3, 1);
        queries.extend(support::queries(&b, NQUERIES / 3, 2));
        queries.extend(support::queries(&c, NQUERIES / 3, 3));
        let queries_file = dir.join("queries.f32");
        let bytes: Vec<u8> = queries.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&queries_file, bytes).unwrap();

        let src = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cpp = src.join("examples/cpp");
        let include = src.join("include");
        let libs = lib_dir();
        let interposer = dir.join("libkb_alloc_counter.so");
        run_tool(
            Command::new("gcc")
                .args([
                    "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                ])
                .arg(&interposer)
                .arg(cpp.join("alloc_counter.c")),
        );
        let gpp = || {
            let mut c = Command::new("g++");
            c.args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", "-I"])
                .arg(&include)
                .arg(cpp.join("host.cpp"));
            c
        };
        let host_static = dir.join("host_static");
        run_tool(
            gpp()
                .arg(libs.join("libknnblend.a"))
                .args(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s", "-o"])
                .arg(&host_static),
        );
        let host_shared = dir.join("host_shared");
        run_tool(
            gpp()
                .arg("-L")
                .arg(&libs)
                .arg("-lknnblend")
                .arg(format!("-Wl,-rpath,{}", libs.display()))
                .arg("-o")
                .arg(&host_shared),
        );
        // The README's C example, as strict C99.
        let minimal_c = dir.join("minimal_c");
        run_tool(
            Command::new("gcc")
                .args(["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I"])
                .arg(&include)
                .arg(src.join("examples/c/minimal.c"))
                .arg(libs.join("libknnblend.a"))
                .args(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s", "-o"])
                .arg(&minimal_c),
        );
        Some(Fixture {
            _dir: tmp,
            minimal_c,
            dir,
            files,
            queries,
            queries_file,
            host_static,
            host_shared,
            interposer,
        })
    })
    .as_ref()
}

/// Runs a host in `mode`, writing its outputs to `out`.
fn run_host(f: &Fixture, host: &Path, mode: &str, out: &Path) -> Output {
    let mut cmd = Command::new(host);
    cmd.arg(mode)
        .arg(out)
        .arg(&f.queries_file)
        .arg(DIM.to_string())
        .args(&f.files)
        .env("LD_PRELOAD", &f.interposer)
        // Resolve every symbol at start-up, not on a first call from the realtime thread.
        .env("LD_BIND_NOW", "1");
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The number after `key` in the line starting with `line`.
fn number(stdout: &str, line: &str, key: &str) -> u64 {
    let l = stdout
        .lines()
        .find(|l| l.starts_with(line))
        .unwrap_or_else(|| panic!("no line {line:?} in\n{stdout}"));
    let at = l.find(key).unwrap_or_else(|| panic!("no {key:?} in {l:?}"));
    let rest = &l[at + key.len()..];
    rest.trim_start_matches(['=', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key:?} in {l:?}"))
}

fn hex_bits(words: &[&str]) -> Vec<u32> {
    words
        .iter()
        .map(|w| u32::from_str_radix(w, 16).unwrap())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Neighbours written as `id:distance-bits`.
fn neighbours(words: &[&str]) -> Vec<(i64, u32)> {
    words
        .iter()
        .map(|w| {
            let (id, d) = w.split_once(':').unwrap();
            (id.parse().unwrap(), u32::from_str_radix(d, 16).unwrap())
        })
        .collect()
}

/// Checks every line of the host's output file against the Rust API; returns the number of
/// realtime records and the files that served them.
fn verify_against_rust(f: &Fixture, out: &Path) -> (usize, HashSet<usize>) {
    let indexes: Vec<AnyIndex> = f.files.iter().map(|p| AnyIndex::open(p).unwrap()).collect();
    assert!(
        indexes[0].as_flat().is_some()
            && indexes[1].as_flat().is_some()
            && indexes[2].as_pq().is_some()
    );
    let mut s = AnySearcher::new(DIM, 8, 2);
    let params = BlendParams {
        expansion: None,
        k: 8,
        nprobe: 1,
        ratio: 0.75,
    };
    let query = |q: usize| &f.queries[q * DIM..(q + 1) * DIM];
    let blend = |s: &mut AnySearcher, i: usize, q: &[f32]| {
        let mut o = vec![0f32; DIM];
        s.blend(&indexes[i], q, &params, &mut o);
        bits(&o)
    };
    let body = std::fs::read_to_string(out).unwrap();
    let (mut searches, mut blocks, mut blends, mut records) = (0, 0, 0, 0);
    let mut served = HashSet::new();
    for line in body.lines() {
        let w: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| -> usize { w[i].parse().unwrap() };
        match w[0] {
            "index" => assert_eq!(Path::new(w[2]), f.files[num(1)]),
            "search" | "sblock" => {
                let (i, q, n) = (num(1), num(2), num(3));
                let nprobe = if w[0] == "search" { 1 } else { 2 };
                let (mut ids, mut dists) = ([0i64; 8], [0f32; 8]);
                let found = s.search(&indexes[i], query(q), 8, nprobe, &mut ids, &mut dists);
                let want: Vec<(i64, u32)> = ids[..found]
                    .iter()
                    .zip(&dists[..found])
                    .map(|(&id, d)| (id, d.to_bits()))
                    .collect();
                assert_eq!(neighbours(&w[4..]), want, "{} of query {q} on {}", w[0], i);
                assert_eq!(n, want.len());
                if w[0] == "search" {
                    searches += 1
                } else {
                    blocks += 1
                }
            }
            "blend" => {
                let (i, q) = (num(1), num(2));
                assert_eq!(
                    hex_bits(&w[3..]),
                    blend(&mut s, i, query(q)),
                    "blend {q} on {i}"
                );
                blends += 1;
            }
            "live" => {
                let (i, offset, frames) = (num(1), num(2), num(3));
                assert_eq!(
                    (w[4], w[5 + frames * DIM]),
                    ("frame", "block"),
                    "record layout"
                );
                let per_frame = hex_bits(&w[5..5 + frames * DIM]);
                let block = hex_bits(&w[6 + frames * DIM..]);
                let want: Vec<u32> = (offset..offset + frames)
                    .flat_map(|q| blend(&mut s, i, query(q)))
                    .collect();
                assert_eq!(
                    per_frame, want,
                    "kb_audio_blend on the realtime thread ({i})"
                );
                assert_eq!(
                    block, want,
                    "kb_audio_blend_block on the realtime thread ({i})"
                );
                records += 1;
                served.insert(i);
            }
            other => panic!("unexpected line kind {other:?}"),
        }
    }
    let n = f.files.len() * NQUERIES;
    assert_eq!(
        (searches, blocks, blends),
        (n, n, n),
        "missing lines in {}",
        out.display()
    );
    (records, served)
}

fn check_run(host: impl Fn(&Fixture) -> &Path, name: &str) {
    let Some(f) = fixture() else { return };
    let out_file = f.dir.join(format!("{name}.out"));
    let out = run_host(f, host(f), "run", &out_file);
    let all = text(&out);
    println!("{all}");
    assert_eq!(
        out.status.signal(),
        None,
        "the host was killed: a system call on the realtime thread?\n{all}"
    );
    assert!(out.status.success(), "the host failed\n{all}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for kind in [
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
    ] {
        let n = number(&stdout, "rt allocations:", &format!(" {kind}="));
        assert_eq!(
            n, 0,
            "{kind} was called {n} times on the realtime thread\n{all}"
        );
    }
    assert!(stdout.contains("blocks under the seccomp filter"), "{all}");
    let blocks = number(&stdout, "rt:", "rt:");
    let changes = number(&stdout, "rt:", "crossfading,");
    let fading = number(&stdout, "rt:", "filter,");
    assert!(
        blocks >= 150,
        "too few realtime blocks to prove anything: {blocks}\n{all}"
    );
    assert!(
        changes >= 10,
        "too few swaps reached the realtime thread: {changes}\n{all}"
    );
    assert!(fading > 0, "no crossfade ran on the realtime thread\n{all}");
    assert_eq!(
        number(&stdout, "rt:", "index,"),
        0,
        "audio-side errors\n{all}"
    );
    assert_eq!(
        number(&stdout, "teardown:", "teardown:"),
        0,
        "indexes leaked\n{all}"
    );
    let (records, served) = verify_against_rust(f, &out_file);
    assert!(
        records >= 6,
        "too few realtime outputs were compared: {records}\n{all}"
    );
    assert!(
        served.len() >= 2,
        "realtime outputs of one index only: {served:?}\n{all}"
    );
    println!("{records} realtime blocks (of indexes {served:?}) equal the Rust API bit for bit");
}

#[test]
fn the_static_cpp_host_makes_no_allocation_or_system_call_on_its_realtime_thread() {
    check_run(|f| &f.host_static, "static");
}

#[test]
fn the_shared_cpp_host_makes_no_allocation_or_system_call_on_its_realtime_thread() {
    check_run(|f| &f.host_shared, "shared");
}

#[test]
fn the_interposer_counts_a_deliberate_allocation_on_the_realtime_thread() {
    let Some(f) = fixture() else { return };
    let out = run_host(f, &f.host_static, "violate-alloc", &f.dir.join("alloc.out"));
    let all = text(&out);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(3),
        "the host should report the allocation\n{all}"
    );
    assert_eq!(number(&stdout, "rt allocations:", " malloc="), 1, "{all}");
    assert!(stdout.contains("blocks under no filter"), "{all}");
}

#[test]
fn a_deliberate_system_call_on_the_realtime_thread_kills_the_host() {
    let Some(f) = fixture() else { return };
    let out = run_host(
        f,
        &f.host_static,
        "violate-syscall",
        &f.dir.join("syscall.out"),
    );
    let all = text(&out);
    assert_eq!(out.status.signal(), Some(libc_sigsys()), "{all}");
    assert!(!all.contains("NOT KILLED"), "{all}");
}

#[test]
fn the_readme_c_example_compiles_as_c99_and_blends_a_block() {
    let Some(f) = fixture() else { return };
    for file in &f.files {
        let out = Command::new(&f.minimal_c).arg(file).output().unwrap();
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        assert!(all.contains("16 of 16 frames blended"), "{all}");
    }
    let out = Command::new(&f.minimal_c)
        .arg(f.dir.join("missing.index"))
        .output()
        .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("not loaded: cannot read") && all.contains("missing.index"),
        "{all}"
    );
}

/// SIGSYS on Linux (31 on x86-64).
fn libc_sigsys() -> i32 {
    31
}
