//! Peak memory of loading a faiss IVF-Flat file at RVC's real shapes.
//!
//! A faiss file is read into owned memory (it is not laid out for a memory map), so loading it
//! costs RAM; the budget is 1.3× the file's size at its peak: the index's own image (the
//! file's bytes plus a norm per vector) and its 8-bit screening codes (`d + 20` bytes per
//! vector), and nothing else — no copy of the file, no intermediate lists. Each measurement runs
//! in a child process (this test binary re-executed), which reads its peak resident set
//! (`VmHWM` in `/proc/self/status`) before and after the load; the parent writes the file and
//! checks the figures.
#![cfg(target_os = "linux")]

use std::io::{BufWriter, Write};
use std::path::Path;

use knnblend::index::IvfIndex;
use knnblend::live::{live, LiveConfig};

const CHILD_ENV: &str = "KNNBLEND_LOAD_MEMORY_CHILD";
const FILE_ENV: &str = "KNNBLEND_LOAD_MEMORY_FILE";
/// The budget: peak growth of the resident set over the file's size.
const BUDGET: f64 = 1.3;

/// Writes a faiss `IwFl` file of `n` vectors of `dim` in `nlist` lists (RVC's layout: L2, a flat
/// `IxF2` quantizer, no direct map, `full` list sizes), streaming, so the writer holds no copy.
fn write_faiss(path: &Path, dim: usize, n: usize, nlist: usize) -> u64 {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut value = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let header = |w: &mut BufWriter<std::fs::File>, ntotal: u64| {
        w.write_all(&(dim as i32).to_le_bytes()).unwrap();
        w.write_all(&(ntotal as i64).to_le_bytes()).unwrap();
        w.write_all(&(1i64 << 20).to_le_bytes()).unwrap();
        w.write_all(&(1i64 << 20).to_le_bytes()).unwrap();
        w.write_all(&[1]).unwrap(); // is_trained
        w.write_all(&1i32.to_le_bytes()).unwrap(); // METRIC_L2
    };
    w.write_all(b"IwFl").unwrap();
    header(&mut w, n as u64);
    w.write_all(&(nlist as u64).to_le_bytes()).unwrap();
    w.write_all(&1u64.to_le_bytes()).unwrap(); // nprobe
    w.write_all(b"IxF2").unwrap();
    header(&mut w, nlist as u64);
    w.write_all(&((nlist * dim) as u64).to_le_bytes()).unwrap();
    for _ in 0..nlist * dim {
        w.write_all(&value().to_le_bytes()).unwrap();
    }
    w.write_all(&[0]).unwrap(); // direct map: none
    w.write_all(&0u64.to_le_bytes()).unwrap();
    w.write_all(b"ilar").unwrap();
    w.write_all(&(nlist as u64).to_le_bytes()).unwrap();
    w.write_all(&((dim * 4) as u64).to_le_bytes()).unwrap();
    w.write_all(b"full").unwrap();
    w.write_all(&(nlist as u64).to_le_bytes()).unwrap();
    let size = |l: usize| n / nlist + usize::from(l < n % nlist);
    for l in 0..nlist {
        w.write_all(&(size(l) as u64).to_le_bytes()).unwrap();
    }
    let mut id = 0i64;
    for l in 0..nlist {
        for _ in 0..size(l) * dim {
            w.write_all(&value().to_le_bytes()).unwrap();
        }
        for _ in 0..size(l) {
            w.write_all(&id.to_le_bytes()).unwrap();
            id += 1;
        }
    }
    w.into_inner().unwrap().sync_all().unwrap();
    std::fs::metadata(path).unwrap().len()
}

/// Peak resident set so far, in bytes.
fn vm_hwm() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

#[test]
#[ignore = "run in a child process by the load memory tests"]
fn load_memory_child() {
    let (Some(mode), Some(file)) = (std::env::var_os(CHILD_ENV), std::env::var_os(FILE_ENV)) else {
        return;
    };
    let path = Path::new(&file);
    let before = vm_hwm();
    let ntotal = match mode.to_str().unwrap() {
        "open" => IvfIndex::open(path).unwrap().ntotal(),
        "live" => {
            let (control, _audio) = live(LiveConfig {
                max_dim: 1024,
                ..LiveConfig::default()
            });
            let prepared = control.prepare(path, |_, _| {}).unwrap();
            prepared.info().ntotal
        }
        other => panic!("unknown mode {other}"),
    };
    let after = vm_hwm();
    println!("PEAK before={before} after={after} ntotal={ntotal}");
}

/// Runs the child in `mode` on `path`; returns the growth of its peak resident set.
fn peak_growth(mode: &str, path: &Path) -> u64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "load_memory_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env(FILE_ENV, path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{mode}: the child failed: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // (The child's line may follow its test harness's "test … " prefix.)
    let line = stdout
        .lines()
        .find_map(|l| l.find("PEAK ").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("{mode}: no figures from the child: {stdout}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(name))
            .unwrap()
            .parse()
            .unwrap()
    };
    field("after=") - field("before=")
}

fn check(dim: usize, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("added_IVF_Flat_v{dim}.index"));
    // RVC's list count: min(16·√n, n / 39).
    let nlist = ((16.0 * (n as f64).sqrt()) as usize).min(n / 39);
    let len = write_faiss(&path, dim, n, nlist);
    for mode in ["open", "live"] {
        let growth = peak_growth(mode, &path);
        let ratio = growth as f64 / len as f64;
        println!(
            "d = {dim}, {n} vectors, {nlist} lists: file {:.1} MB, {mode}: peak RSS grew by {:.1} MB = {ratio:.3}× the file",
            len as f64 / 1e6,
            growth as f64 / 1e6
        );
        assert!(
            ratio <= BUDGET,
            "{mode}: loading a {len}-byte faiss file raised the peak RSS by {growth} bytes ({ratio:.3}×, budget {BUDGET}×)"
        );
    }
}

/// RVC v2 (768-dimensional ContentVec features): a file of about 300 MB.
#[test]
fn a_v2_faiss_file_loads_within_1_3_times_its_size() {
    check(768, 97_000);
}

/// RVC v1 (256 dimensions): a file of about 200 MB.
#[test]
fn a_v1_faiss_file_loads_within_1_3_times_its_size() {
    check(256, 195_000);
}
