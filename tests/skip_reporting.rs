//! The shared skip helper (`tests/skip/mod.rs`) does what `cargo xtask test` relies on: a
//! skipped test passes locally but writes its `KNNBLEND-SKIPPED:` line past the harness's
//! output capture and into `KNNBLEND_SKIP_LOG`; under `CI=true` it fails with the reason and
//! the fix. Both run a child test process that skips.

mod skip;

use std::process::{Command, Output};

const CHILD_ENV: &str = "KNNBLEND_SKIP_REPORTING_CHILD";

#[test]
#[ignore = "run by the skip reporting tests in a child process"]
fn skipping_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    skip::skip("the widget is missing", "run `make widget`");
    println!("returned after the skip");
}

/// Runs [`skipping_child`] with output captured (no `--nocapture`), `CI` as given.
fn run_child(ci: Option<&str>, log: &std::path::Path) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "skipping_child", "--ignored", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .env(skip::LOG_ENV, log)
        .env_remove("CI");
    if let Some(ci) = ci {
        cmd.env("CI", ci);
    }
    cmd.output().unwrap()
}

#[test]
fn a_skip_passes_locally_and_says_so_past_the_capture_and_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("skips.log");
    std::fs::write(
        &log,
        "KNNBLEND-SKIPPED: earlier::test: kept (appended to)\n",
    )
    .unwrap();
    let out = run_child(None, &log);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = "KNNBLEND-SKIPPED: skip_reporting::skipping_child: the widget is missing \
                (run `make widget`)";
    assert!(stderr.lines().any(|l| l == line), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("KNNBLEND-SKIPPED: earlier::test: kept (appended to)\n{line}\n")
    );
}

#[test]
fn a_skip_fails_under_ci_with_the_reason_and_the_fix() {
    for ci in ["true", "1"] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.log");
        let out = run_child(Some(ci), &log);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "CI={ci}: the skip passed:\n{all}");
        assert!(
            all.contains("the widget is missing") && all.contains("run `make widget`"),
            "{all}"
        );
        assert!(!all.contains("returned after the skip"), "{all}");
        assert!(
            !log.exists(),
            "CI={ci}: a failing skip is not logged as a skip"
        );
    }
}
