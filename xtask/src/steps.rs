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
    /// The step did not run; the reason says why.
    Skipped(String),
    /// The step ran and failed.
    Failed(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Reused(_) => "reused",
            Outcome::Skipped(_) => "SKIPPED",
            Outcome::Failed(_) => "FAILED",
        }
    }
}

struct Row {
    name: String,
    outcome: Outcome,
    took: Duration,
}

/// A sequence of named steps run one after the other.
pub struct Steps {
    title: String,
    total: usize,
    started: Instant,
    rows: Vec<Row>,
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
        }
    }

    /// Runs one step: prints a banner, runs `body`, prints the result with its duration.
    /// An error from `body` becomes a failed step (the task carries on; [`Steps::finish`]
    /// reports it).
    pub fn run(&mut self, name: &str, body: impl FnOnce() -> Result<Outcome>) -> Outcome {
        let index = self.rows.len() + 1;
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
            Outcome::Skipped(reason) => println!("SKIPPED: {reason}"),
            Outcome::Failed(reason) => {
                println!("FAILED: {name}: {reason} (after {})", format_duration(took))
            }
        }
        self.record(name, outcome.clone(), took);
        outcome
    }

    /// Records a step that is not run at all (for example because an earlier one failed).
    pub fn skip(&mut self, name: &str, reason: &str) {
        let index = self.rows.len() + 1;
        println!();
        println!("==> [{index}/{}] {name}", self.total);
        println!("SKIPPED: {reason}");
        self.record(name, Outcome::Skipped(reason.to_string()), Duration::ZERO);
    }

    fn record(&mut self, name: &str, outcome: Outcome, took: Duration) {
        self.rows.push(Row {
            name: name.to_string(),
            outcome,
            took,
        });
    }

    /// True when any step so far failed.
    pub fn any_failed(&self) -> bool {
        self.rows
            .iter()
            .any(|r| matches!(r.outcome, Outcome::Failed(_)))
    }

    /// Prints the summary table; fails when any step failed.
    pub fn finish(self) -> Result<()> {
        let failed = self.any_failed();
        println!();
        println!("{self}");
        if failed {
            bail!("{}: some steps failed (see above)", self.title);
        }
        Ok(())
    }
}

impl fmt::Display for Steps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        writeln!(f, "=== {} summary ===", self.title)?;
        for row in &self.rows {
            let head = format!(
                "  {:<7}  {:>8}  ",
                row.outcome.label(),
                format_duration(row.took)
            );
            match &row.outcome {
                Outcome::Passed => writeln!(f, "{head}{}", row.name)?,
                Outcome::Reused(why) | Outcome::Skipped(why) | Outcome::Failed(why) => {
                    writeln!(f, "{head}{:<width$}  ({})", row.name, first_line(why))?
                }
            }
        }
        let verdict = if self.any_failed() { "FAILED" } else { "ok" };
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
    fn skipped_steps_do_not_fail_the_task() {
        let mut steps = Steps::new("t", 1);
        steps.run("maybe", || Ok(Outcome::Skipped("not there yet".into())));
        assert!(steps.finish().is_ok());
    }
}
