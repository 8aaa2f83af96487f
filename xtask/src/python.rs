//! The Python package (`python/`, package `knnblend-python`): `maturin build` makes the abi3
//! wheel from `python/pyproject.toml` (cargo builds into `target/python`, the wheel lands in
//! `target/wheels`), pip installs it into `target/venv`, and `python/tests` run there with
//! pytest against PyPI faiss-cpu: the tests import the installed wheel, as a user would.

use crate::process;
use crate::workspace::Workspace;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Builds the wheel with `target/venv`'s maturin; returns its path.
pub fn wheel(ws: &Workspace) -> Result<PathBuf> {
    let source = ws.root.join("python");
    let out = ws.target.join("wheels");
    // A fresh folder, so the wheel found below is the one just built.
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("could not empty {}", out.display()))?;
    }
    process::run(
        Command::new(ws.venv().join("bin").join("maturin"))
            .args(["build", "--release", "--manifest-path"])
            .arg(source.join("Cargo.toml"))
            .arg("--out")
            .arg(&out)
            .arg("--interpreter")
            .arg(ws.venv_python())
            .current_dir(&ws.root)
            .env("CARGO_TARGET_DIR", ws.target.join("python")),
    )?;
    let mut wheels = std::fs::read_dir(&out)
        .with_context(|| format!("maturin wrote no {}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect::<Vec<_>>();
    match (wheels.pop(), wheels.is_empty()) {
        (Some(wheel), true) => Ok(wheel),
        (None, _) => bail!("maturin build left no wheel in {}", out.display()),
        (Some(_), false) => bail!("maturin build left several wheels in {}", out.display()),
    }
}

/// Builds the wheel and installs it into `target/venv` (replacing any earlier build).
pub fn install(ws: &Workspace) -> Result<PathBuf> {
    let wheel = wheel(ws)?;
    process::run(
        Command::new(ws.venv_python())
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(["--force-reinstall", "--no-deps"])
            .arg(&wheel),
    )?;
    Ok(wheel)
}

/// Builds and installs the wheel, then runs `python/tests` with `target/venv`'s pytest.
pub fn test(ws: &Workspace) -> Result<()> {
    let wheel = install(ws)?;
    println!(
        "python: installed {} into {}",
        ws.show(&wheel),
        ws.show(&ws.venv())
    );
    let tests = ws.root.join("python").join("tests");
    process::run(
        Command::new(ws.venv_python())
            .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"])
            .arg(&tests)
            .current_dir(&ws.root)
            .env("PYTHONPATH", &tests)
            .env("KNNBLEND_EXPECT_WHEEL", "1"),
    )
}
