//! The Python package (`python/`, package `knnblend-python`): built with cargo into
//! `target/python` against `target/venv`'s interpreter, staged with its Python sources into
//! `target/python-pkg/knnblend/`, and tested there with pytest against PyPI faiss-cpu
//! (`python/tests`). The same files `maturin build` puts in the abi3 wheel.

use crate::process::{self, cargo};
use crate::workspace::Workspace;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// The extension module cargo builds (`[lib] name = "_knnblend"`).
const BUILT: &str = "release/lib_knnblend.so";
/// Its name inside the package, as maturin names an abi3 module.
const MODULE: &str = "_knnblend.abi3.so";

/// Builds the extension and stages the importable package; returns the directory to put on
/// `PYTHONPATH`.
pub fn stage(ws: &Workspace) -> Result<PathBuf> {
    let source = ws.root.join("python");
    let target = ws.target.join("python");
    process::run(
        cargo(&source)
            .args(["build", "--release", "--manifest-path"])
            .arg(source.join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .env("PYO3_PYTHON", ws.venv_python()),
    )?;
    let stage = ws.target.join("python-pkg");
    let package = stage.join("knnblend");
    std::fs::create_dir_all(&package)
        .with_context(|| format!("could not create {}", package.display()))?;
    for entry in std::fs::read_dir(source.join("knnblend"))? {
        let path = entry?.path();
        let keep = path
            .extension()
            .is_some_and(|e| e == "py" || e == "pyi" || e == "typed");
        if keep {
            let to = package.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &to).with_context(|| {
                format!("could not copy {} to {}", path.display(), to.display())
            })?;
        }
    }
    let built = target.join(BUILT);
    std::fs::copy(&built, package.join(MODULE))
        .with_context(|| format!("could not copy {}", built.display()))?;
    Ok(stage)
}

/// Builds, stages and runs `python/tests` with `target/venv`'s pytest.
pub fn test(ws: &Workspace) -> Result<()> {
    let stage = stage(ws)?;
    let tests = ws.root.join("python").join("tests");
    let path = std::env::join_paths([stage, tests.clone()])?;
    process::run(
        Command::new(ws.venv_python())
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"])
            .arg(&tests)
            .current_dir(&ws.root)
            .env("PYTHONPATH", path),
    )
}
