//! Running child processes: echo the command, stream its output, turn a bad exit into an
//! error that names the command.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// `cargo` with the repository root as working directory. The rustup proxy on `PATH`
/// honours the toolchain the task runner itself was started with.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}

/// Human-readable form of a command line.
pub fn describe(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        let special = |c: char| c.is_whitespace() || "<>|&;$*?'\"()`\\".contains(c);
        if arg.is_empty() || arg.contains(special) {
            line.push_str(&format!(" '{arg}'"));
        } else {
            line.push(' ');
            line.push_str(&arg);
        }
    }
    line
}

/// Runs a command with inherited stdio (its output streams to ours) and fails unless it
/// exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a quiet command (for example `pip install --quiet`) with a spinner so the user
/// sees it is alive. The spinner only draws on a terminal; errors still stream through.
pub fn run_with_spinner(message: &str, cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    spinner.set_message(message.to_string());
    spinner.enable_steady_tick(Duration::from_millis(120));
    let status = cmd.status();
    spinner.finish_and_clear();
    let status = status.with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs a command silently and reports whether it exited successfully (false when it
/// could not be started at all). For presence checks.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a command silently and returns its stdout when it exits successfully.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `program` can be found on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| {
                let candidate = dir.join(program);
                candidate.is_file() && is_executable(&candidate)
            })
        })
        .unwrap_or(false)
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_executable(_path: &Path) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_quotes_arguments_with_spaces() {
        let mut cmd = Command::new("cargo");
        cmd.args(["test", "--features", "a b", "", "cmake>=3.24"]);
        assert_eq!(
            describe(&cmd),
            "cargo test --features 'a b' '' 'cmake>=3.24'"
        );
    }

    #[test]
    fn failing_command_names_itself() {
        let err = run(Command::new("false").arg("--flag")).unwrap_err();
        assert!(err.to_string().contains("`false --flag` failed"), "{err}");
    }

    #[test]
    fn missing_program_is_an_error_not_a_panic() {
        let err = run(&mut Command::new("definitely-not-a-program-xyz")).unwrap_err();
        assert!(err.to_string().contains("could not start"), "{err}");
        assert!(!on_path("definitely-not-a-program-xyz"));
        assert!(on_path("sh"));
    }
}
