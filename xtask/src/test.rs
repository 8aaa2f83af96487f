//! `cargo xtask test`: the README's test command and what `.ci/run` calls.
//!
//! 1. setup (system packages, `target/venv`);
//! 2. `cargo test --workspace --exclude knnblend-plugin --exclude knnblend-capi` — library,
//!    CLI, RVC path, integration tests, faiss parity (the tests enable the library's `build`
//!    feature), including parity with PyPI faiss-cpu (`tests/pypi_faiss_parity.rs`, which runs
//!    `target/venv`'s Python; setup installs faiss-cpu there); then `cargo test -p
//!    knnblend-capi` on its own, so the C ABI links the lean core; then the Python package
//!    (`python/`, its own workspace): built, staged and tested with pytest against PyPI
//!    faiss-cpu (see `python`);
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
//!
//! Tests that cannot run here skip themselves through `tests/skip/mod.rs` (the Python VST3
//! test through its `skip()`): each writes a `KNNBLEND-SKIPPED: <test>: <reason>` line, to the
//! file `KNNBLEND_SKIP_LOG` names (set per step to `target/xtask-skips/<step>.log`) or to its
//! output. The summary lists every skipped test as SKIPPED under its step, and the step as
//! SKIPPED rather than passed. Under `CI=true` (or `CI=1`) tests fail instead of skipping,
//! and a skipped step or test fails the task.

use crate::linkcheck;
use crate::process::{self, cargo};
use crate::setup;
use crate::steps::{self, Outcome, Steps};
use crate::workspace::{
    Workspace, ASSERT_ALLOCS_FEATURE, CAPI_PACKAGE, LIBRARY_PACKAGE, PLUGIN_PACKAGE,
};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
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
/// The Python package on its own target dir (`python/` is its own workspace).
const STEP_PYTHON: &str =
    "Python package: maturin wheel installed into target/venv, pytest against PyPI faiss-cpu (python/tests)";
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

/// The file a test appends its skip line to (`tests/skip/mod.rs`).
const SKIP_LOG_ENV: &str = "KNNBLEND_SKIP_LOG";
/// What starts a skip line.
const SKIP_MARKER: &str = "KNNBLEND-SKIPPED: ";

/// A test that skipped itself: its name and the reason (with the fix), from its skip line.
type SkippedTest = (String, String);

/// Whether `CI` says this runs in continuous integration (`CI=true` or `CI=1`), where nothing
/// may skip (the tests' helper reads it the same way).
fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Parses a skip line, `KNNBLEND-SKIPPED: <test>: <reason>`.
fn parse_skip_line(line: &str) -> Option<SkippedTest> {
    let rest = line.trim_end().strip_prefix(SKIP_MARKER)?;
    let (test, reason) = rest.split_once(": ").unwrap_or((rest, "no reason given"));
    Some((test.trim().to_string(), reason.trim().to_string()))
}

/// The skip lines of a log (none when it does not exist), each test once.
fn read_skip_log(log: &Path) -> Result<Vec<SkippedTest>> {
    let text = match std::fs::read_to_string(log) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("could not read {}", log.display())),
    };
    let mut tests = Vec::new();
    for test in text.lines().filter_map(parse_skip_line) {
        if !tests.contains(&test) {
            tests.push(test);
        }
    }
    Ok(tests)
}

/// `target/xtask-skips/<step>.log` for a step name (its words joined by dashes).
fn skip_log_path(ws: &Workspace, step: &str) -> PathBuf {
    let slug: String = step
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(8)
        .collect::<Vec<_>>()
        .join("-");
    ws.target.join("xtask-skips").join(format!("{slug}.log"))
}

/// Runs a step that runs tests: `body` gets the skip log to hand to them (empty and fresh)
/// and returns the skip lines it saw in their output, if it reads it. Afterwards every test
/// that skipped itself is listed under the step, and the step is SKIPPED rather than passed.
fn run_test_step(
    steps: &mut Steps,
    log: &Path,
    name: &str,
    body: impl FnOnce(&Path) -> Result<Vec<SkippedTest>>,
) -> Outcome {
    let mut skipped = Vec::new();
    let outcome = steps.run(name, || {
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        match std::fs::remove_file(log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("could not remove {}", log.display()))
            }
            _ => {}
        }
        let result = body(log);
        // Read even when the step failed: its skips are listed either way.
        skipped = read_skip_log(log)?;
        for test in result.as_ref().map(Vec::as_slice).unwrap_or_default() {
            if !skipped.contains(test) {
                skipped.push(test.clone());
            }
        }
        result.map(|_| steps::with_skipped_tests(&skipped))
    });
    steps.skipped_tests(&skipped);
    outcome
}

/// Runs `cmd` (a `cargo test`) with the skip log set, streaming its output.
fn run_with_skip_log(cmd: &mut Command, log: &Path) -> Result<Vec<SkippedTest>> {
    process::run(cmd.env(SKIP_LOG_ENV, log)).map(|()| Vec::new())
}

/// Runs every test step.
pub fn run(ws: &Workspace, options: Options) -> Result<()> {
    let mut steps = Steps::new("cargo xtask test", 9);
    if running_in_ci() {
        println!("CI is set: tests fail instead of skipping, and a skipped step fails the task");
        steps.fail_on_skips("CI is set");
    }
    let log = |name: &str| skip_log_path(ws, name);

    if options.no_setup {
        steps.omit(STEP_SETUP, "--no-setup given");
    } else {
        let outcome = steps.run(STEP_SETUP, || {
            setup::run(ws, setup::Options::default()).map(|()| Outcome::Passed)
        });
        if matches!(outcome, Outcome::Failed(_)) {
            for name in [
                STEP_WORKSPACE,
                STEP_CAPI,
                STEP_PYTHON,
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

    run_test_step(&mut steps, &log(STEP_WORKSPACE), STEP_WORKSPACE, |log| {
        run_with_skip_log(
            cargo(&ws.root).args([
                "test",
                "--workspace",
                "--exclude",
                PLUGIN_PACKAGE,
                "--exclude",
                CAPI_PACKAGE,
                "--no-fail-fast",
            ]),
            log,
        )
    });

    run_test_step(&mut steps, &log(STEP_CAPI), STEP_CAPI, |log| {
        run_with_skip_log(
            cargo(&ws.root).args(["test", "-p", CAPI_PACKAGE, "--no-fail-fast"]),
            log,
        )
    });

    run_test_step(&mut steps, &log(STEP_PYTHON), STEP_PYTHON, |_| {
        crate::python::test(ws).map(|()| Vec::new())
    });

    for (name, feature) in PLATFORM_FALLBACKS {
        run_test_step(&mut steps, &log(name), name, |log| {
            run_with_skip_log(
                cargo(&ws.root).args([
                    "test",
                    "-p",
                    LIBRARY_PACKAGE,
                    "--lib",
                    "--features",
                    feature,
                    "--no-fail-fast",
                ]),
                log,
            )
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

    if plugin_ready {
        // The CLAP host and editor tests skip themselves without the bundle or an X server
        // (and fail under CI); their skip lines say so.
        run_test_step(&mut steps, &log(STEP_PLUGIN), STEP_PLUGIN, |log| {
            run_with_skip_log(
                cargo(&ws.root).args([
                    "test",
                    "-p",
                    PLUGIN_PACKAGE,
                    "--features",
                    ASSERT_ALLOCS_FEATURE,
                    "--no-fail-fast",
                ]),
                log,
            )
        });
    } else {
        steps.skip(STEP_PLUGIN, &not_ready_reason);
    }

    let script = ws.vst3_host_test();
    if !script.is_file() {
        steps.skip(
            STEP_VST3,
            &format!("{} does not exist yet", ws.show(&script)),
        );
    } else if bundled != Outcome::Passed {
        steps.skip(
            STEP_VST3,
            "no fresh VST3 bundle (the bundle step did not pass)",
        );
    } else {
        run_test_step(&mut steps, &log(STEP_VST3), STEP_VST3, |log| {
            run_vst3_host_test(ws, log)
        });
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

/// Runs the pedalboard VST3 test with the virtualenv's Python; returns the checks that
/// skipped themselves.
fn run_vst3_host_test(ws: &Workspace, log: &Path) -> Result<Vec<SkippedTest>> {
    let python = ws.venv_python();
    if !python.is_file() {
        bail!("{} is missing; run `cargo xtask setup`", ws.show(&python));
    }
    let mut cmd = Command::new(&python);
    cmd.current_dir(&ws.root)
        .arg(ws.vst3_host_test())
        .arg(ws.vst3_bundle())
        .env("PYTHONUNBUFFERED", "1")
        .env(SKIP_LOG_ENV, log);
    run_counting_runner(&mut cmd)
}

/// Runs a test runner that closes with an `N passed, M failed` line, streaming its output,
/// and fails on a bad exit status, on failures, on no tests, or on a missing closing line.
/// Returns the tests its skip lines (`KNNBLEND-SKIPPED: …`) name.
fn run_counting_runner(cmd: &mut Command) -> Result<Vec<SkippedTest>> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let line = process::describe(cmd);
    println!("$ {line}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut summary = None;
    let mut skipped = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for text in BufReader::new(stdout).lines() {
            let text = text.with_context(|| format!("could not read the output of `{line}`"))?;
            println!("{text}");
            if let Some(counts) = parse_summary(&text) {
                summary = Some(counts);
            }
            if let Some(test) = parse_skip_line(&text) {
                skipped.push(test);
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
        Some((0, 0)) if skipped.is_empty() => bail!("`{line}` ran no tests"),
        Some(_) => Ok(skipped),
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
    fn skip_lines_parse() {
        assert_eq!(
            parse_skip_line("KNNBLEND-SKIPPED: mlock::unlocks: not permitted (raise it)\n"),
            Some(("mlock::unlocks".into(), "not permitted (raise it)".into()))
        );
        assert_eq!(
            parse_skip_line("KNNBLEND-SKIPPED: clap_gui"),
            Some(("clap_gui".into(), "no reason given".into()))
        );
        assert_eq!(parse_skip_line("skipped: old style"), None);
        assert_eq!(parse_skip_line("  KNNBLEND-SKIPPED: indented: no"), None);
    }

    /// A fresh directory under the system's temporary directory.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sh(script: &str, log: &Path) -> Result<Vec<SkippedTest>> {
        run_with_skip_log(Command::new("sh").args(["-c", script]), log)
    }

    #[test]
    fn a_test_step_lists_the_tests_that_skipped_themselves_and_is_not_passed() {
        let dir = scratch_dir("skips");
        let log = dir.join("skips/step.log");
        let mut steps = Steps::new("t", 3);
        // Nothing skipped: passed (and a log left by an earlier run is not read).
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "KNNBLEND-SKIPPED: stale::test: old run\n").unwrap();
        assert_eq!(
            run_test_step(&mut steps, &log, "clean", |log| sh("true", log)),
            Outcome::Passed
        );
        // Tests append their lines to the file the step names (a test skipping twice, as
        // when it runs in two processes, is listed once).
        let skipping = r#"
            echo 'KNNBLEND-SKIPPED: clap_gui::editor: no DISPLAY (run `cargo xtask setup`)' >> "$KNNBLEND_SKIP_LOG"
            echo 'KNNBLEND-SKIPPED: mlock::unlocks: not permitted (raise it)' >> "$KNNBLEND_SKIP_LOG"
            echo 'KNNBLEND-SKIPPED: mlock::unlocks: not permitted (raise it)' >> "$KNNBLEND_SKIP_LOG"
        "#;
        let outcome = run_test_step(&mut steps, &log, "plugin tests", |log| sh(skipping, log));
        assert_eq!(
            outcome,
            Outcome::Skipped("2 tests skipped themselves (listed below)".into())
        );
        // A failing step stays failed, with its skipped tests listed too.
        let failing = format!("{skipping}\nexit 3");
        let outcome = run_test_step(&mut steps, &log, "failing", |log| sh(&failing, log));
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
        let summary = steps.to_string();
        assert_eq!(steps.skipped(), 4, "{summary}");
        assert!(!summary.contains("stale::test"), "{summary}");
        let rows: Vec<&str> = summary
            .lines()
            .filter(|l| l.contains("test clap_gui::editor"))
            .collect();
        assert_eq!(rows.len(), 2, "{summary}");
        assert!(
            rows.iter().all(|r| r.trim_start().starts_with("SKIPPED")
                && r.contains("(no DISPLAY (run `cargo xtask setup`))")),
            "{summary}"
        );
        assert!(steps.finish().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Every `assert_no_alloc` dev-dependency is built without its default
    /// `disable_release`, which removes `AllocDisabler` from release builds: with it,
    /// `cargo test --release` does not compile the allocation tests (and would prove nothing).
    #[test]
    fn allocation_guards_stay_armed_in_release_builds() {
        let manifests = [
            ("Cargo.toml", include_str!("../../Cargo.toml")),
            ("rvc/Cargo.toml", include_str!("../../rvc/Cargo.toml")),
            ("plugin/Cargo.toml", include_str!("../../plugin/Cargo.toml")),
            ("cli/Cargo.toml", include_str!("../../cli/Cargo.toml")),
            ("capi/Cargo.toml", include_str!("../../capi/Cargo.toml")),
        ];
        let mut found = 0;
        for (path, text) in manifests {
            let manifest: toml::Table = toml::from_str(text).unwrap();
            for section in ["dependencies", "dev-dependencies"] {
                let Some(dep) = manifest.get(section).and_then(|d| d.get("assert_no_alloc")) else {
                    continue;
                };
                found += 1;
                assert_eq!(
                    dep.get("default-features").and_then(toml::Value::as_bool),
                    Some(false),
                    "{path} [{section}] assert_no_alloc keeps `disable_release`: write \
                     `assert_no_alloc = {{ version = \"1\", default-features = false }}`"
                );
            }
        }
        assert!(
            found >= 2,
            "the root and rvc test crates use assert_no_alloc"
        );
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

    fn runner(script: &str) -> Result<Vec<SkippedTest>> {
        run_counting_runner(Command::new("sh").args(["-c", script]))
    }

    #[test]
    fn counting_runner_verdicts() {
        assert_eq!(
            runner("echo 'case a ok'; echo '2 passed, 0 failed'").unwrap(),
            vec![]
        );
        assert_eq!(
            runner(
                "echo 'KNNBLEND-SKIPPED: vst3_host.py: rvc voice: no models (run setup)'; \
                 echo '1 passed, 0 failed, 1 skipped'"
            )
            .unwrap(),
            vec![(
                "vst3_host.py".to_string(),
                "rvc voice: no models (run setup)".to_string()
            )]
        );
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
