//! How a test that cannot run here says so: the one way to skip in this workspace, shared by
//! the test crates of every package (`mod skip;` in `tests/`, `#[path =
//! "../../tests/skip/mod.rs"] mod skip;` in another package's `tests/`).
//!
//! Under `CI=true` (or `CI=1`) a skip is a failure: [`skip`] panics with the reason and the fix.
//! Elsewhere the test passes, after writing the marker line
//! `KNNBLEND-SKIPPED: <test binary>::<test>: <reason> (<fix>)` straight to stderr (past the test
//! harness's output capture, so it shows in a plain `cargo test` too) and appending it to the
//! file named by `KNNBLEND_SKIP_LOG`, which `cargo xtask test` sets for each step and reads
//! afterwards: its summary lists every such test as SKIPPED, never as passed.
#![allow(dead_code)]

use std::io::Write;

/// What starts a skip line.
pub const MARKER: &str = "KNNBLEND-SKIPPED: ";
/// The file skip lines are appended to, when set.
pub const LOG_ENV: &str = "KNNBLEND_SKIP_LOG";

/// Whether `CI` says this runs in continuous integration (`CI=true` or `CI=1`), where nothing
/// may skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Reports that the calling test cannot run here because of `reason`, and what makes it run
/// (`fix`, e.g. "run `cargo xtask setup`"). Panics under CI; otherwise writes the skip line and
/// returns, and the caller returns without testing anything.
pub fn skip(reason: &str, fix: &str) {
    let test = test_name();
    if in_ci() {
        panic!("{test} cannot run: {reason}. Fix: {fix}. (CI is set, so this test does not skip.)");
    }
    let line = format!("{MARKER}{test}: {reason} ({fix})\n");
    // Unlike `eprintln!`, a direct write is not captured by the test harness.
    let _ = std::io::stderr().write_all(line.as_bytes());
    if let Some(path) = std::env::var_os(LOG_ENV) {
        // One short append per line: whole lines even when tests skip concurrently.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!(
                "cannot append the skip line to {} ({LOG_ENV}): {e}",
                std::path::Path::new(&path).display()
            );
        }
    }
}

/// `<test binary>::<test>`: the executable's name without cargo's hash, and the test harness's
/// name for the current thread (each test runs on a thread named after it).
pub fn test_name() -> String {
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let binary = match exe.rsplit_once('-') {
        Some((name, hash)) if !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => exe,
    };
    match std::thread::current().name() {
        Some(test) if test != "main" => format!("{binary}::{test}"),
        _ => binary,
    }
}
