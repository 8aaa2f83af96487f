//! Step banners with elapsed time, per-step results, and the closing summary table.

use anyhow::{bail, Result};
use std::fmt;
use std::time::{Duration, Instant};

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The step ran and succeeded.
    Passed,
    /// The step's results were already there and up to date; the reason says which.
    Reused(String),
    /// The step did not run, or some of what it runs did not (tests that skipped themselves,
    /// listed under it); the reason says why. Never counted as passed; fails the task when
    /// skips are not allowed ([`Steps::fail_on_skips`]).
    Skipped(String),
    /// The step was left out on request (for example `--no-setup`): nothing it checks went
    /// untested, so it is not a skip.
    Omitted(String),
    /// The step ran and failed.
    Failed(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Reused(_) => "reused",
            Outcome::Skipped(_) => "SKIPPED",
            Outcome::Omitted(_) => "omitted",
            Outcome::Failed(_) => "FAILED",
        }
    }
}

struct Row {
    name: String,
    outcome: Outcome,
    took: Duration,
    /// A test inside the step above it (listed indented, not counted as a step).
    within: bool,
}

/// A sequence of named steps run one after the other.
pub struct Steps {
    title: String,
    total: usize,
    started: Instant,
    rows: Vec<Row>,
    /// Why skips fail the task, when they do.
    skips_fail: Option<String>,
}

impl Steps {
    /// Starts a task of `total` steps.
    pub fn new(title: &str, total: usize) -> Self {
        println!("=== {title} ===");
        Self {
            title: title.to_string(),
            total,
            started: Instant::now(),
            rows: Vec::new(),
            skips_fail: None,
        }
    }

    /// Makes any skipped step or test fail the task, for the reason `why` (under `CI=true`
    /// nothing may skip).
    pub fn fail_on_skips(&mut self, why: &str) {
        self.skips_fail = Some(why.to_string());
    }

    /// Runs one step: prints a banner, runs `body`, prints the result with its duration.
    /// An error from `body` becomes a failed step (the task carries on; [`Steps::finish`]
    /// reports it).
    pub fn run(&mut self, name: &str, body: impl FnOnce() -> Result<Outcome>) -> Outcome {
        let index = self.steps() + 1;
        println!();
        println!(
            "==> [{index}/{}] {name}   (task time {})",
            self.total,
            format_duration(self.started.elapsed())
        );
        let step_started = Instant::now();
        let outcome = match body() {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Failed(format!("{error:#}")),
        };
        let took = step_started.elapsed();
        match &outcome {
            Outcome::Passed => println!("<== {name}: passed in {}", format_duration(took)),
            Outcome::Reused(what) => {
                println!("<== {name}: reused ({what}) in {}", format_duration(took))
            }
            Outcome::Skipped(reason) => println!("SKIPPED: {name}: {reason}"),
            Outcome::Omitted(reason) => println!("<== {name}: omitted ({reason})"),
            Outcome::Failed(reason) => {
                println!("FAILED: {name}: {reason} (after {})", format_duration(took))
            }
        }
        self.record(name, outcome.clone(), took, false);
        outcome
    }

    /// Records a step that is not run at all (for example because an earlier one failed).
    pub fn skip(&mut self, name: &str, reason: &str) {
        self.not_run(name, Outcome::Skipped(reason.to_string()));
    }

    /// Records a step left out on request (see [`Outcome::Omitted`]).
    pub fn omit(&mut self, name: &str, reason: &str) {
        self.not_run(name, Outcome::Omitted(reason.to_string()));
    }

    fn not_run(&mut self, name: &str, outcome: Outcome) {
        let index = self.steps() + 1;
        println!();
        println!("==> [{index}/{}] {name}", self.total);
        match &outcome {
            Outcome::Omitted(reason) => println!("omitted: {reason}"),
            other => println!("SKIPPED: {}", reason_of(other)),
        }
        self.record(name, outcome, Duration::ZERO, false);
    }

    /// Records the tests inside the step just run that skipped themselves, as `(test,
    /// reason)`: each is listed under the step as SKIPPED (the step itself should then not be
    /// [`Outcome::Passed`]; see [`with_skipped_tests`]).
    pub fn skipped_tests(&mut self, tests: &[(String, String)]) {
        for (test, reason) in tests {
            println!("SKIPPED test {test}: {reason}");
            let outcome = Outcome::Skipped(reason.clone());
            self.record(test, outcome, Duration::ZERO, true);
        }
    }

    fn record(&mut self, name: &str, outcome: Outcome, took: Duration, within: bool) {
        self.rows.push(Row {
            name: name.to_string(),
            outcome,
            took,
            within,
        });
    }

    fn steps(&self) -> usize {
        self.rows.iter().filter(|r| !r.within).count()
    }

    /// True when any step so far failed.
    pub fn any_failed(&self) -> bool {
        self.rows
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }

    /// Steps that did not run and tests that skipped themselves, so far (a step that is
    /// SKIPPED only because of its tests counts once per test).
    pub fn skipped(&self) -> usize {
        self.rows
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                matches!(r.outcome, Outcome::Skipped(_))
                    && (r.within || !self.rows.get(i + 1).is_some_and(|next| next.within))
            })
            .count()
    }

    /// Prints the summary table; fails when any step failed, or when anything was skipped
    /// and skips fail ([`Steps::fail_on_skips`]).
    pub fn finish(self) -> Result<()> {
        let failed = self.any_failed();
        println!();
        println!("{self}");
        if failed {
            bail!("{}: some steps failed (see above)", self.title);
        }
        if let Some(why) = &self.skips_fail {
            if self.skipped() > 0 {
                bail!(
                    "{}: {} skipped, and {why}: nothing may skip (see above)",
                    self.title,
                    self.skipped()
                );
            }
        }
        Ok(())
    }
}

/// The outcome of a step whose own work succeeded, given the tests in it that skipped
/// themselves: passed when none did, else SKIPPED, naming how many.
pub fn with_skipped_tests(tests: &[(String, String)]) -> Outcome {
    match tests.len() {
        0 => Outcome::Passed,
        1 => Outcome::Skipped("1 test skipped itself (listed below)".into()),
        n => Outcome::Skipped(format!("{n} tests skipped themselves (listed below)")),
    }
}

fn reason_of(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Passed => "",
        Outcome::Reused(why) | Outcome::Skipped(why) | Outcome::Omitted(why) => why,
        Outcome::Failed(why) => why,
    }
}

impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |r: &Row| {
            if r.within {
                format!("  test {}", r.name)
            } else {
                r.name.clone()
            }
        };
        let width = self.rows.iter().map(|r| name(r).len()).max().unwrap_or(0);
        writeln!(f, "=== {} summary ===", self.title)?;
        for row in &self.rows {
            let took = if row.within {
                String::new()
            } else {
                format_duration(row.took)
            };
            let head = format!("  {:<7}  {:>8}  ", row.outcome.label(), took);
            match &row.outcome {
                Outcome::Passed => writeln!(f, "{head}{}", name(row))?,
                other => writeln!(
                    f,
                    "{head}{:<width$}  ({})",
                    name(row),
                    first_line(reason_of(other))
                )?,
            }
        }
        let skipped = self.skipped();
        let verdict = match (self.any_failed(), skipped, &self.skips_fail) {
            (true, _, _) => "FAILED".to_string(),
            (false, 0, _) => "ok".to_string(),
            (false, n, Some(why)) => format!("FAILED: {n} SKIPPED, and {why}"),
            (false, n, None) => format!("INCOMPLETE: {n} SKIPPED, the rest ok"),
        };
        write!(
            f,
            "=== {}: {verdict} in {} ===",
            self.title,
            format_duration(self.started.elapsed())
        )
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// `0.4s`, `12.3s`, `3m07s`, `1h02m`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else if secs < 3600.0 {
        let s = secs as u64;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let s = secs as u64;
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(400)), "0.4s");
        assert_eq!(format_duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn errors_become_failed_steps_and_fail_the_task() {
        let mut steps = Steps::new("t", 3);
        assert_eq!(steps.run("ok", || Ok(Outcome::Passed)), Outcome::Passed);
        let failed = steps.run("bad", || anyhow::bail!("boom"));
        assert_eq!(failed, Outcome::Failed("boom".into()));
        steps.skip("later", "because");
        let summary = steps.to_string();
        assert!(summary.contains("FAILED"), "{summary}");
        assert!(summary.contains("(because)"), "{summary}");
        assert!(steps.finish().is_err());
    }

    #[test]
    fn reused_steps_say_so_and_do_not_fail_the_task() {
        let mut steps = Steps::new("t", 1);
        steps.run("voices", || {
            Ok(Outcome::Reused("3 files up to date".into()))
        });
        let summary = steps.to_string();
        assert!(summary.contains("reused"), "{summary}");
        assert!(summary.contains("(3 files up to date)"), "{summary}");
        assert!(steps.finish().is_ok());
    }

    #[test]
    fn skipped_steps_do_not_fail_the_task_but_are_not_reported_ok() {
        let mut steps = Steps::new("t", 1);
        steps.run("maybe", || Ok(Outcome::Skipped("not there yet".into())));
        let summary = steps.to_string();
        assert!(summary.contains("SKIPPED"), "{summary}");
        assert!(
            summary.contains("=== t: INCOMPLETE: 1 SKIPPED, the rest ok in "),
            "{summary}"
        );
        assert!(!summary.contains(": ok in"), "{summary}");
        assert!(steps.finish().is_ok());
    }

    fn tests(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(t, r)| (t.to_string(), r.to_string()))
            .collect()
    }

    #[test]
    fn a_step_whose_tests_skipped_is_skipped_and_lists_them() {
        let skipped = tests(&[
            (
                "clap_gui::editor_opens",
                "no DISPLAY and no Xvfb (run `cargo xtask setup`)",
            ),
            ("mlock::unlocks", "mlock is not permitted"),
        ]);
        let mut steps = Steps::new("t", 2);
        steps.run("unit tests", || Ok(with_skipped_tests(&[])));
        let outcome = steps.run("plugin tests", || Ok(with_skipped_tests(&skipped)));
        assert!(matches!(outcome, Outcome::Skipped(_)), "{outcome:?}");
        steps.skipped_tests(&skipped);
        assert_eq!(steps.skipped(), 2);
        let summary = steps.to_string();
        let line = |needle: &str| {
            summary
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle}:\n{summary}"))
                .to_string()
        };
        assert!(
            line("unit tests").trim_start().starts_with("passed"),
            "{summary}"
        );
        assert!(
            line("plugin tests").trim_start().starts_with("SKIPPED"),
            "{summary}"
        );
        assert!(
            line("2 tests skipped themselves").contains("plugin tests"),
            "{summary}"
        );
        let gui = line("test clap_gui::editor_opens");
        assert!(gui.trim_start().starts_with("SKIPPED"), "{summary}");
        assert!(
            gui.contains("(no DISPLAY and no Xvfb (run `cargo xtask setup`))"),
            "{gui}"
        );
        assert!(line("test mlock::unlocks")
            .trim_start()
            .starts_with("SKIPPED"));
        assert!(summary.contains("INCOMPLETE: 2 SKIPPED"), "{summary}");
        // Locally a skip does not fail the task; the steps count only steps.
        assert!(steps.finish().is_ok());
    }

    #[test]
    fn when_skips_fail_any_skipped_step_or_test_fails_the_task() {
        let mut steps = Steps::new("t", 2);
        steps.fail_on_skips("CI=true");
        steps.run("a", || Ok(with_skipped_tests(&tests(&[("x::y", "why")]))));
        steps.skipped_tests(&tests(&[("x::y", "why")]));
        assert!(steps.to_string().contains("FAILED: 1 SKIPPED, and CI=true"));
        let err = steps.finish().unwrap_err();
        assert!(err.to_string().contains("1 skipped, and CI=true"), "{err}");

        let mut steps = Steps::new("t", 1);
        steps.fail_on_skips("CI=true");
        steps.skip("b", "not there");
        assert!(steps.finish().is_err());

        // Omitting a step on request is not a skip.
        let mut steps = Steps::new("t", 2);
        steps.fail_on_skips("CI=true");
        steps.omit("setup", "--no-setup given");
        steps.run("a", || Ok(with_skipped_tests(&[])));
        let summary = steps.to_string();
        assert!(
            summary.contains("omitted") && summary.contains(": ok in"),
            "{summary}"
        );
        assert!(steps.finish().is_ok());
    }
}
