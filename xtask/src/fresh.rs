//! Make-style freshness: a product is reused when every output exists and none is older than
//! the newest of its inputs.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Whether a product's outputs can be reused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Every output exists and is at least as new as every input.
    UpToDate,
    /// This output does not exist yet.
    Missing(PathBuf),
    /// This output is older than this input.
    Stale {
        /// The oldest output.
        output: PathBuf,
        /// The newest input.
        input: PathBuf,
    },
}

impl Freshness {
    /// Why the product has to be made again (`None` when it is up to date), for the log.
    pub fn reason(&self, show: impl Fn(&Path) -> String) -> Option<String> {
        match self {
            Freshness::UpToDate => None,
            Freshness::Missing(output) => Some(format!("{} does not exist", show(output))),
            Freshness::Stale { output, input } => {
                Some(format!("{} is older than {}", show(output), show(input)))
            }
        }
    }
}

/// Compares the modification times of `outputs` with those of `inputs`. Every input must
/// exist (a missing input is an error: the product cannot be made from it).
pub fn check(inputs: &[PathBuf], outputs: &[PathBuf]) -> Result<Freshness> {
    let mut newest_input: Option<(SystemTime, &PathBuf)> = None;
    for input in inputs {
        let time = modified(input)?.with_context(|| {
            format!(
                "{} is missing (it is needed to make the next files)",
                input.display()
            )
        })?;
        if newest_input.is_none_or(|(t, _)| time > t) {
            newest_input = Some((time, input));
        }
    }
    let mut oldest_output: Option<(SystemTime, &PathBuf)> = None;
    for output in outputs {
        match modified(output)? {
            None => return Ok(Freshness::Missing(output.clone())),
            Some(time) => {
                if oldest_output.is_none_or(|(t, _)| time < t) {
                    oldest_output = Some((time, output));
                }
            }
        }
    }
    match (newest_input, oldest_output) {
        (Some((input_time, input)), Some((output_time, output))) if output_time < input_time => {
            Ok(Freshness::Stale {
                output: output.clone(),
                input: input.clone(),
            })
        }
        (_, None) if outputs.is_empty() => bail!("a product needs at least one output"),
        _ => Ok(Freshness::UpToDate),
    }
}

/// The modification time of `path`, `None` when it does not exist.
fn modified(path: &Path) -> Result<Option<SystemTime>> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.modified().with_context(|| {
            format!("no modification time for {}", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// an interrupted run never leaves a half-written file that looks up to date.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("could not write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| {
        let _ = std::fs::remove_file(&temporary);
        format!("could not move {} into place", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::time::Duration;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("xtask-fresh-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        /// Creates `name` with a modification time `seconds` after a fixed epoch.
        fn file_at(&self, name: &str, seconds: u64) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, name).unwrap();
            let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(time)
                .unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn outputs_newer_than_every_input_are_reused() {
        let s = Scratch::new("newer");
        let inputs = [s.file_at("cli", 10), s.file_at("voice.wav", 20)];
        let outputs = [s.file_at("voice.kbi", 30), s.file_at("other.kbi", 20)];
        // Equal times count as up to date (coarse file systems stamp both in the same tick).
        assert_eq!(check(&inputs, &outputs).unwrap(), Freshness::UpToDate);
        assert_eq!(
            Freshness::UpToDate.reason(|p| p.display().to_string()),
            None
        );
    }

    #[test]
    fn an_output_older_than_any_input_is_stale() {
        let s = Scratch::new("stale");
        let inputs = [s.file_at("cli", 50), s.file_at("voice.wav", 20)];
        let outputs = [s.file_at("a.wav", 60), s.file_at("b.wav", 40)];
        let verdict = check(&inputs, &outputs).unwrap();
        assert_eq!(
            verdict,
            Freshness::Stale {
                output: outputs[1].clone(),
                input: inputs[0].clone()
            }
        );
        let why = verdict
            .reason(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .unwrap();
        assert_eq!(why, "b.wav is older than cli");
    }

    #[test]
    fn a_missing_output_is_made_and_a_missing_input_is_an_error() {
        let s = Scratch::new("missing");
        let input = s.file_at("voice.wav", 10);
        let absent = s.0.join("voice.kbi");
        assert_eq!(
            check(std::slice::from_ref(&input), std::slice::from_ref(&absent)).unwrap(),
            Freshness::Missing(absent.clone())
        );
        let err = check(std::slice::from_ref(&absent), &[input]).unwrap_err();
        assert!(err.to_string().contains("voice.kbi is missing"), "{err}");
        assert!(check(&[], &[]).is_err());
    }

    #[test]
    fn no_inputs_means_existence_is_enough() {
        let s = Scratch::new("noinputs");
        let output = s.file_at("out", 0);
        assert_eq!(check(&[], &[output]).unwrap(), Freshness::UpToDate);
    }

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary_behind() {
        let s = Scratch::new("atomic");
        let path = s.0.join("sub/SUMMARY.md");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(s.0.join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["SUMMARY.md"]);
    }
}
