//! `cargo xtask test`: the README's test command and what `.ci/run` calls.
//!
//! 1. setup (system packages, `target/venv`);
//! 2. `cargo test --workspace --exclude knnblend-plugin --exclude knnblend-capi` — library,
//!    CLI, RVC path, integration tests, faiss parity (the tests enable the library's `build`
//!    feature); then `cargo test -p knnblend-capi` on its own, so the C ABI links the lean core;
//! 3. `cargo test -p knnblend --lib --features force-posix-platform`, then the same with
//!    `force-portable-platform` — the library's unit tests (loading, live, `platform`) on the
//!    macOS/POSIX and the no-op implementations of `platform`, compiled on Linux;
//! 4. bundle the plugin as a debug build with `assert_process_allocs` (with ONNX Runtime from
//!    `target/venv` copied beside it; see `bundle`), then prove the bundled binaries do not link
//!    faiss;
//! 5. `cargo test -p knnblend-plugin --features assert_process_allocs` — plugin tests,
//!    including the CLAP host harness that loads `target/bundled/knnblend.clap`;
//! 6. the VST3 host test: `target/venv/bin/python plugin/tests/vst3_host.py
//!    target/bundled/knnblend.vst3` (pedalboard).
//!
//! Steps whose inputs do not exist yet are skipped with the reason; the task fails when any
//! step fails. Child output is streamed so the runners' own summary lines appear.

use crate::linkcheck;
use crate::process::{self, cargo};
use crate::setup;
use crate::steps::{Outcome, Steps};
use crate::workspace::{
    Workspace, ASSERT_ALLOCS_FEATURE, CAPI_PACKAGE, LIBRARY_PACKAGE, PLUGIN_PACKAGE,
};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Options of `cargo xtask test`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Do not run setup first (for repeated local runs on a prepared machine).
    pub no_setup: bool,
}

const STEP_SETUP: &str = "setup";
const STEP_WORKSPACE: &str =
    "cargo test --workspace --exclude knnblend-plugin --exclude knnblend-capi";
/// The C ABI on its own: built with the whole workspace, cargo would unify the library's
/// features (the CLI's faiss) into `libknnblend.a`; alone it links the lean core, as users get it.
const STEP_CAPI: &str = "cargo test -p knnblend-capi (C ABI on the lean core, C and C++ hosts)";
const STEP_POSIX_PLATFORM: &str = "cargo test -p knnblend --lib --features force-posix-platform";
const STEP_PORTABLE_PLATFORM: &str =
    "cargo test -p knnblend --lib --features force-portable-platform";
/// The library's test-only features that compile another OS's `platform` implementation on
/// Linux, with the step that runs the unit tests on it.
const PLATFORM_FALLBACKS: [(&str, &str); 2] = [
    (STEP_POSIX_PLATFORM, "force-posix-platform"),
    (STEP_PORTABLE_PLATFORM, "force-portable-platform"),
];
const STEP_BUNDLE: &str = "bundle plugin (debug, assert_process_allocs) + no-faiss check";
const STEP_PLUGIN: &str = "cargo test -p knnblend-plugin --features assert_process_allocs";
const STEP_VST3: &str = "VST3 host test (pedalboard)";
const STEP_GUI: &str = "editor in an X11 window (plugin/tests/clap_gui.rs)";

/// Why the plugin's editor test will skip itself, if it will: it needs `DISPLAY` or an
/// `Xvfb` to start.
fn gui_test_skip_reason(has_display: bool, has_xvfb: bool) -> Option<&'static str> {
    (!has_display && !has_xvfb).then_some(
        "the editor test skipped itself: no DISPLAY and no Xvfb (run `cargo xtask setup`, \
         which installs the xvfb package)",
    )
}

/// Runs every test step.
pub fn run(ws: &Workspace, options: Options) -> Result<()> {
    // The editor test skips itself (inside a passing test, so cargo hides its message) when
    // it has no X server; look for the same conditions it does and say so.
    let gui_skip = gui_test_skip_reason(
        std::env::var_os("DISPLAY").is_some(),
        process::on_path("Xvfb"),
    );
    let mut steps = Steps::new("cargo xtask test", 8 + usize::from(gui_skip.is_some()));

    if options.no_setup {
        steps.skip(STEP_SETUP, "--no-setup given");
    } else {
        let outcome = steps.run(STEP_SETUP, || {
            setup::run(ws, setup::Options::default()).map(|()| Outcome::Passed)
        });
        if matches!(outcome, Outcome::Failed(_)) {
            for name in [
                STEP_WORKSPACE,
                STEP_CAPI,
                STEP_POSIX_PLATFORM,
                STEP_PORTABLE_PLATFORM,
                STEP_BUNDLE,
                STEP_PLUGIN,
                STEP_VST3,
            ] {
                steps.skip(name, "setup failed");
            }
            return steps.finish();
        }
    }

    steps.run(STEP_WORKSPACE, || {
        process::run(cargo(&ws.root).args([
            "test",
            "--workspace",
            "--exclude",
            PLUGIN_PACKAGE,
            "--exclude",
            CAPI_PACKAGE,
            "--no-fail-fast",
        ]))
        .map(|()| Outcome::Passed)
    });

    steps.run(STEP_CAPI, || {
        process::run(cargo(&ws.root).args(["test", "-p", CAPI_PACKAGE, "--no-fail-fast"]))
            .map(|()| Outcome::Passed)
    });

    for (name, feature) in PLATFORM_FALLBACKS {
        steps.run(name, || {
            process::run(cargo(&ws.root).args([
                "test",
                "-p",
                LIBRARY_PACKAGE,
                "--lib",
                "--features",
                feature,
                "--no-fail-fast",
            ]))
            .map(|()| Outcome::Passed)
        });
    }

    let plugin_ready = ws
        .plugin
        .as_ref()
        .is_some_and(|p| p.has_assert_allocs_feature());
    let not_ready_reason = match &ws.plugin {
        None => format!("the workspace has no `{PLUGIN_PACKAGE}` crate"),
        Some(_) => format!(
            "`{PLUGIN_PACKAGE}` has no `{ASSERT_ALLOCS_FEATURE}` feature yet (the plugin crate \
             is still a stub)"
        ),
    };

    let bundled = steps.run(STEP_BUNDLE, || {
        if !plugin_ready {
            return Ok(Outcome::Skipped(not_ready_reason.clone()));
        }
        bundle_and_check(ws).map(|()| Outcome::Passed)
    });

    steps.run(STEP_PLUGIN, || {
        if !plugin_ready {
            return Ok(Outcome::Skipped(not_ready_reason.clone()));
        }
        if let Some(reason) = gui_skip {
            println!("WARNING: {reason}");
        }
        process::run(cargo(&ws.root).args([
            "test",
            "-p",
            PLUGIN_PACKAGE,
            "--features",
            ASSERT_ALLOCS_FEATURE,
            "--no-fail-fast",
        ]))
        .map(|()| Outcome::Passed)
    });

    steps.run(STEP_VST3, || {
        let script = ws.vst3_host_test();
        if !script.is_file() {
            return Ok(Outcome::Skipped(format!(
                "{} does not exist yet",
                ws.show(&script)
            )));
        }
        if bundled != Outcome::Passed {
            return Ok(Outcome::Skipped(
                "no fresh VST3 bundle (the bundle step did not pass)".into(),
            ));
        }
        run_vst3_host_test(ws).map(|()| Outcome::Passed)
    });

    if let Some(reason) = gui_skip {
        steps.skip(STEP_GUI, reason);
    }

    if bundled == Outcome::Passed {
        println!(
            "\nnote: {} now holds a debug build with allocation assertions; \
             `cargo xtask install` bundles a release build before installing.",
            ws.show(&ws.bundled_dir())
        );
    }
    steps.finish()
}

/// Bundles the debug plugin with allocation assertions and checks it does not link faiss.
fn bundle_and_check(ws: &Workspace) -> Result<()> {
    // Remove old bundles so the checks below see this build, not a leftover.
    for old in [ws.clap_bundle(), ws.vst3_bundle()] {
        if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else if old.exists() {
            std::fs::remove_file(&old)
        } else {
            Ok(())
        }
        .with_context(|| format!("could not remove the old bundle {}", old.display()))?;
    }
    crate::bundle::bundle(
        ws,
        &[PLUGIN_PACKAGE.to_string()],
        &["--features".to_string(), ASSERT_ALLOCS_FEATURE.to_string()],
    )?;
    for (bundle, library) in [
        (ws.clap_bundle(), ws.clap_bundle()),
        (ws.vst3_bundle(), ws.vst3_library()),
    ] {
        if !library.is_file() {
            bail!(
                "expected {} after bundling; the plugin must export its CLAP and VST3 entry \
                 points and plugin/bundler.toml must map `{PLUGIN_PACKAGE}` to the name `knnblend`",
                ws.show(&library)
            );
        }
        let report = linkcheck::assert_no_faiss(&library)?;
        println!(
            "no faiss in {}: {} symbols checked{}, loads [{}]",
            ws.show(&bundle),
            report.symbols,
            if report.has_symtab {
                ""
            } else {
                " (stripped: dynamic symbols only)"
            },
            report.needed.join(", ")
        );
    }
    Ok(())
}

/// Runs the pedalboard VST3 test with the virtualenv's Python.
fn run_vst3_host_test(ws: &Workspace) -> Result<()> {
    let python = ws.venv_python();
    if !python.is_file() {
        bail!("{} is missing; run `cargo xtask setup`", ws.show(&python));
    }
    let mut cmd = Command::new(&python);
    cmd.current_dir(&ws.root)
        .arg(ws.vst3_host_test())
        .arg(ws.vst3_bundle())
        .env("PYTHONUNBUFFERED", "1");
    run_counting_runner(&mut cmd)
}

/// Runs a test runner that closes with an `N passed, M failed` line, streaming its output,
/// and fails on a bad exit status, on failures, on no tests, or on a missing closing line.
fn run_counting_runner(cmd: &mut Command) -> Result<()> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let line = process::describe(cmd);
    println!("$ {line}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut summary = None;
    if let Some(stdout) = child.stdout.take() {
        for text in BufReader::new(stdout).lines() {
            let text = text.with_context(|| format!("could not read the output of `{line}`"))?;
            println!("{text}");
            if let Some(counts) = parse_summary(&text) {
                summary = Some(counts);
            }
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("could not wait for `{line}`"))?;
    match summary {
        _ if !status.success() => bail!("`{line}` failed ({status})"),
        None => {
            bail!("`{line}` exited successfully but printed no closing `N passed, M failed` line")
        }
        Some((_, failed)) if failed > 0 => bail!("`{line}` reports {failed} failed"),
        Some((0, 0)) => bail!("`{line}` ran no tests"),
        Some(_) => Ok(()),
    }
}

/// Parses a line like `12 passed, 0 failed` (anywhere in the line).
fn parse_summary(line: &str) -> Option<(u32, u32)> {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    let count_before = |label: &str| {
        words
            .windows(2)
            .find(|w| w[1] == label)
            .and_then(|w| w[0].parse::<u32>().ok())
    };
    Some((count_before("passed")?, count_before("failed")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gui_skip_is_reported_only_without_an_x_server() {
        assert!(gui_test_skip_reason(false, false)
            .is_some_and(|r| r.contains("Xvfb") && r.contains("cargo xtask setup")));
        assert_eq!(gui_test_skip_reason(true, false), None);
        assert_eq!(gui_test_skip_reason(false, true), None);
    }

    #[test]
    fn platform_fallback_steps_run_features_the_library_has() {
        let manifest = include_str!("../../Cargo.toml");
        for (name, feature) in PLATFORM_FALLBACKS {
            assert!(name.ends_with(&format!("--features {feature}")), "{name}");
            assert!(
                manifest.contains(&format!("\n{feature} = []")),
                "the library has no `{feature}` feature"
            );
        }
    }

    #[test]
    fn runner_summary_lines_parse() {
        assert_eq!(parse_summary("12 passed, 0 failed"), Some((12, 0)));
        assert_eq!(
            parse_summary("vst3_host: 3 passed, 2 failed in 4.1s"),
            Some((3, 2))
        );
        assert_eq!(parse_summary("passed: all"), None);
        assert_eq!(parse_summary("5 passed"), None);
    }

    fn runner(script: &str) -> Result<()> {
        run_counting_runner(Command::new("sh").args(["-c", script]))
    }

    #[test]
    fn counting_runner_verdicts() {
        assert!(runner("echo 'case a ok'; echo '2 passed, 0 failed'").is_ok());
        let failed = runner("echo '1 passed, 1 failed'; exit 1").unwrap_err();
        assert!(
            failed.to_string().contains("failed (exit status: 1)"),
            "{failed}"
        );
        let counted = runner("echo '1 passed, 1 failed'").unwrap_err();
        assert!(
            counted.to_string().contains("reports 1 failed"),
            "{counted}"
        );
        let silent = runner("echo hello").unwrap_err();
        assert!(silent.to_string().contains("no closing"), "{silent}");
        let empty = runner("echo '0 passed, 0 failed'").unwrap_err();
        assert!(empty.to_string().contains("ran no tests"), "{empty}");
    }
}
