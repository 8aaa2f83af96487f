//! What the model tests share: the workspace's Python, the stand-in models, the runtime.
//!
//! The tests find `target/venv/bin/python` (with `onnx` and `onnxruntime`, as `cargo xtask
//! setup` installs them) and ONNX Runtime (`ORT_DYLIB_PATH`, else the wheel's
//! `libonnxruntime.so*` in that venv) from the workspace root, `CARGO_MANIFEST_DIR/..`. When
//! either is missing they fail, saying to run `cargo xtask setup`: they never skip.
//!
//! The stand-ins (`fixtures/make_models.py`, formulas in its docstring) are generated once per
//! test binary into `CARGO_TARGET_TMPDIR/rvc-stand-ins`:
//! - ContentVec (`vec-256-layer-9.onnx`, `vec-768-layer-12.onnx`): `embed[n, c] =
//!   (1 + c/C)·E[n] + (c/C − 0.5)`, `E[n] = mean(x[320n + i]², i < 400)`.
//! - Synthesizers (`synth_{v1,v2}_{32,40,48}k[_nof0].onnx`): `audio[n·hop + j] = KA·mean_d
//!   phone[n, d] + KB·pitchf[n] + KC·pitch[n] + KD·ds + KE·rnd[0, n] + KF·j/hop`, standard
//!   KA = 1, KB = 0.001, the rest 0; `synth_v2_40k_wiring.onnx` KC = 0.01, KD = 0.1,
//!   KE = 0.5, KF = 0.25.
//! - RMVPE (`rmvpe.onnx`): `salience[t, k] = sigmoid(2·(max_b mel[b, t] + 5))·exp(−(k −
//!   200.25)²/4.5)`, zero everywhere when the frames are not padded to a multiple of 32.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `CARGO_MANIFEST_DIR/..`.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/venv/bin/python`, checked to import onnx and numpy; panics with the fix otherwise.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let python = workspace().join("target/venv/bin/python");
            assert!(
                python.is_file(),
                "{} is missing: run `cargo xtask setup` (it creates target/venv with onnx, \
                 onnxruntime and numpy)",
                python.display()
            );
            let ok = Command::new(&python)
                .args(["-c", "import onnx, numpy"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "{} cannot import onnx and numpy: run `cargo xtask setup`",
                python.display()
            );
            python
        })
        .clone()
}

/// `rvc/tests/fixtures/NAME`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs `python fixtures/SCRIPT args…`, panicking with its output when it fails.
pub fn run_python(script: &str, args: &[&std::ffi::OsStr]) {
    let output = Command::new(python())
        .arg(fixture(script))
        .args(args)
        .output()
        .expect("could not run python");
    assert!(
        output.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The folder of stand-in models, generated once per test binary.
pub fn models() -> &'static Path {
    static MODELS: OnceLock<PathBuf> = OnceLock::new();
    MODELS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("rvc-stand-ins");
        run_python("make_models.py", &[dir.as_os_str()]);
        dir
    })
}

/// A stand-in model's path.
pub fn model(name: &str) -> PathBuf {
    let path = models().join(name);
    assert!(path.is_file(), "{} was not generated", path.display());
    path
}

/// ONNX Runtime, loaded with the default search (ORT_DYLIB_PATH, else target/venv).
pub fn runtime() -> &'static knnblend_rvc::OnnxRuntime {
    match knnblend_rvc::OnnxRuntime::load(None) {
        Ok(runtime) => runtime,
        Err(e) => panic!("{e}\n(for the tests: run `cargo xtask setup`)"),
    }
}

/// A deterministic pseudo-random generator (xorshift64*), uniform in [-1, 1).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

/// Asserts `|a − b| ≤ tol·max(1, |b|)` elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Writes raw little-endian f32.
pub fn write_f32(path: &Path, data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// Reads raw little-endian f32.
pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
