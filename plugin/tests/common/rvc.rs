//! What the RVC slot tests share: the stand-in models (`rvc/tests/fixtures/make_models.py`, run
//! with the project's `target/venv/bin/python`, once per test binary), a 768-d RVC `.kbi`, the
//! same rows as a faiss IVF-PQ FastScan file written by PyPI faiss there, and the RVC host's
//! fixed latency for given times.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use knnblend_rvc::host::fixed_latency;
use knnblend_rvc::pipeline::Framing;

/// `CARGO_MANIFEST_DIR/..`.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether the tests run under CI (`CI=true` or `CI=1`), where nothing may skip.
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The folder of stand-in models, or why there is none (no venv, or the script failed), with
/// the fix in the message.
pub fn stand_in_models() -> Result<&'static Path, String> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let python = workspace().join("target/venv/bin/python");
        if !python.is_file() {
            return Err(format!(
                "{} is missing: run `cargo xtask setup` (it creates target/venv with onnx, \
                 onnxruntime and numpy, for the RVC stand-in models)",
                python.display()
            ));
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-rvc-stand-ins");
        let out = Command::new(&python)
            .arg(workspace().join("rvc/tests/fixtures/make_models.py"))
            .arg(&dir)
            .output()
            .map_err(|e| format!("could not run make_models.py: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "make_models.py failed (run `cargo xtask setup`):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(dir)
    })
    .as_deref()
    .map_err(Clone::clone)
}

/// A stand-in model's path; panics (with the fix) when the models cannot be made.
pub fn model(name: &str) -> PathBuf {
    let path = stand_in_models()
        .unwrap_or_else(|why| panic!("{why}"))
        .join(name);
    assert!(path.is_file(), "{} was not generated", path.display());
    path
}

/// A 768-d `.kbi` of rows near the stand-in ContentVec's curve `(1 + c/C)·E + (c/C − 0.5)`,
/// E from 0.02 to 0.07, offset by `level`.
pub fn rvc_index(dir: &Path, name: &str, level: f32) -> PathBuf {
    let dim = 768;
    let n = 256;
    let rows = rvc_rows(level);
    let metadata = knnblend::format::Metadata {
        features: "rvc-v2-768".to_string(),
        feature_params: serde_json::json!({}),
        sources: vec![],
        frames: n as u64,
        duration_seconds: n as f64 / 50.0,
        extra: Default::default(),
    };
    let parts = knnblend::voice::flat_parts(&rows, dim, knnblend::format::Metric::L2, metadata);
    let path = dir.join(name);
    knnblend::format::write_kbi(&path, &parts).expect("write the RVC index");
    path
}

/// The rows of [`rvc_index`] at `level`: 256 rows of 768.
fn rvc_rows(level: f32) -> Vec<f32> {
    let dim = 768;
    (0..256 * dim)
        .map(|i| {
            let (row, c) = (i / dim, i % dim);
            let r = c as f32 / dim as f32;
            let e = 0.02 + 0.0002 * row as f32;
            (1.0 + r) * e + (r - 0.5) + level
        })
        .collect()
}

/// The rows of [`rvc_index`] at `level` in an RVC-style faiss file of the given factory (e.g.
/// `IVF4,PQ192x4fs,RFlat`), trained, filled and written by the PyPI faiss (`faiss-cpu`) in
/// `target/venv`, the faiss RVC users run. Panics with the fix when there is no such Python.
pub fn faiss_rvc_index(dir: &Path, name: &str, level: f32, factory: &str) -> PathBuf {
    let python = workspace().join("target/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask setup` (it creates target/venv with faiss-cpu)",
        python.display()
    );
    let rows_path = dir.join(format!("{name}.f32"));
    let bytes: Vec<u8> = rvc_rows(level)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(&rows_path, bytes).unwrap();
    let path = dir.join(name);
    let script = "import sys, numpy as np, faiss\n\
                  rows = np.fromfile(sys.argv[1], dtype='<f4').reshape(-1, 768)\n\
                  ix = faiss.index_factory(768, sys.argv[3])\n\
                  ix.train(rows)\n\
                  ix.add(rows)\n\
                  faiss.write_index(ix, sys.argv[2])\n";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&rows_path)
        .arg(&path)
        .arg(factory)
        // One thread: faiss's spinning OpenMP threads crawl on a loaded two-core machine.
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success() && path.is_file(),
        "PyPI faiss could not write {factory} (run `cargo xtask setup`: it installs faiss-cpu \
         into target/venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&rows_path).unwrap();
    path
}

/// The RVC host's latency at `rate` for Block, Extra context and Block crossfade in ms.
pub fn rvc_latency(rate: f32, block_ms: f32, extra_ms: f32, sola_ms: f32) -> u32 {
    fixed_latency(&Framing {
        host_rate: rate as u32,
        block_seconds: block_ms as f64 / 1000.0,
        crossfade_seconds: sola_ms as f64 / 1000.0,
        extra_seconds: extra_ms as f64 / 1000.0,
    })
    .unwrap() as u32
}
