//! `cargo xtask fuzz`: runs every cargo-fuzz target in `fuzz/` (the `[[bin]]`s of
//! `fuzz/Cargo.toml`, each from its committed seeds in `fuzz/seeds/<target>/`) for a bounded
//! time.
//! Not part of `cargo xtask test`. Needs the nightly toolchain and cargo-fuzz (installed
//! when missing). Crash inputs land in `fuzz/artifacts/<target>/`.

use crate::process::{self, cargo};
use crate::steps::{Outcome, Steps};
use crate::workspace::Workspace;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Seconds per target.
    pub seconds: u64,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
}

/// Runs the fuzz targets.
pub fn run(ws: &Workspace, options: &Options) -> Result<()> {
    let manifest = ws.root.join("fuzz").join("Cargo.toml");
    if !manifest.is_file() {
        println!("SKIPPED: no fuzz/Cargo.toml (no fuzz targets yet)");
        return Ok(());
    }
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("could not read {}", manifest.display()))?;
    let all =
        fuzz_targets(&text).with_context(|| format!("could not parse {}", manifest.display()))?;
    let targets: Vec<String> = if options.targets.is_empty() {
        all
    } else {
        for t in &options.targets {
            if !all.contains(t) {
                bail!(
                    "unknown fuzz target `{t}`; fuzz/Cargo.toml lists: {}",
                    all.join(", ")
                );
            }
        }
        options.targets.clone()
    };
    if targets.is_empty() {
        println!("SKIPPED: fuzz/Cargo.toml lists no [[bin]] targets");
        return Ok(());
    }

    let mut steps = Steps::new("cargo xtask fuzz", targets.len() + 1);
    let tools = steps.run("nightly toolchain and cargo-fuzz", || {
        ensure_tools(ws).map(|()| Outcome::Passed)
    });
    for target in &targets {
        if tools != Outcome::Passed {
            steps.skip(target, "tools missing");
            continue;
        }
        steps.run(&format!("fuzz {target} for {}s", options.seconds), || {
            // The working corpus grows in fuzz/corpus (ignored by git); the committed seeds
            // are read as a second corpus. Memory caps make oversized allocations findings.
            let fuzz = ws.root.join("fuzz");
            let corpus = fuzz.join("corpus").join(target);
            let seeds = fuzz.join("seeds").join(target);
            std::fs::create_dir_all(&corpus)?;
            let mut command = nightly_cargo(ws);
            command.args(["fuzz", "run", target]).arg(&corpus);
            if seeds.is_dir() {
                command.arg(&seeds);
            }
            let result = process::run(command.args([
                "--".to_string(),
                format!("-max_total_time={}", options.seconds),
                "-rss_limit_mb=512".to_string(),
                "-malloc_limit_mb=256".to_string(),
            ]));
            if result.is_err() {
                println!(
                    "crash inputs (if any) are in {}",
                    ws.show(&ws.root.join("fuzz").join("artifacts").join(target))
                );
            }
            result.map(|()| Outcome::Passed)
        });
    }
    steps.finish()
}

/// `cargo +nightly` without the toolchain pin inherited from the stable task runner.
fn nightly_cargo(ws: &Workspace) -> Command {
    let mut cmd = cargo(&ws.root);
    cmd.arg("+nightly")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    cmd
}

/// Installs the nightly toolchain and cargo-fuzz when missing.
fn ensure_tools(ws: &Workspace) -> Result<()> {
    let has_nightly = process::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|list| list.lines().any(|l| l.starts_with("nightly")));
    if !has_nightly {
        println!("fuzz: installing the nightly toolchain (libFuzzer needs sanitizer flags)");
        process::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if !process::succeeds(nightly_cargo(ws).args(["fuzz", "--version"])) {
        println!("fuzz: installing cargo-fuzz");
        process::run(cargo(&ws.root).args(["install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Names of the `[[bin]]` targets in a cargo-fuzz manifest.
fn fuzz_targets(manifest: &str) -> Result<Vec<String>> {
    let table: toml::Table = toml::from_str(manifest)?;
    let bins = match table.get("bin") {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(bins)) => bins,
        Some(_) => bail!("`bin` should be an array of tables ([[bin]])"),
    };
    Ok(bins
        .iter()
        .filter_map(|b| b.get("name")?.as_str().map(str::to_string))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every reader of outside input has a target, and every target starts from committed
    /// seeds (`fuzz/seeds/<target>/`, made by `tests/corrupt_files.rs` and
    /// `tests/faiss_fastscan_read.rs`).
    #[test]
    fn the_real_targets_are_listed_and_seeded() {
        let targets = fuzz_targets(include_str!("../../fuzz/Cargo.toml")).unwrap();
        for t in [
            "kbi_reader",
            "pq_kbi_reader",
            "faiss_reader",
            "plugin_state",
        ] {
            assert!(targets.iter().any(|x| x == t), "fuzz/Cargo.toml lacks {t}");
        }
        let seeds = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        for t in &targets {
            let dir = seeds.join(t);
            let count = std::fs::read_dir(&dir)
                .map(|d| d.count())
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert!(count > 0, "{} is empty", dir.display());
        }
    }

    #[test]
    fn lists_bin_targets() {
        let manifest = r#"
[package]
name = "knnblend-fuzz"
version = "0.0.0"

[package.metadata]
cargo-fuzz = true

[dependencies]
libfuzzer-sys = "0.4"

[[bin]]
name = "kbi_reader"
path = "fuzz_targets/kbi_reader.rs"

[[bin]]
name = "faiss_reader"
path = "fuzz_targets/faiss_reader.rs"
"#;
        assert_eq!(
            fuzz_targets(manifest).unwrap(),
            ["kbi_reader", "faiss_reader"]
        );
        assert!(fuzz_targets("[package]\nname = \"x\"").unwrap().is_empty());
        assert!(fuzz_targets("bin = 3").is_err());
    }
}
