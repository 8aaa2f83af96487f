//! `cargo xtask install`: bundles the plugin in release mode and copies the bundles into the
//! user's plugin folders (`~/.clap`, `~/.vst3` on Linux).

use crate::bundle;
use crate::workspace::{Workspace, PLUGIN_PACKAGE};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};

/// Options of `cargo xtask install`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Copy whatever is in `target/bundled/` without rebuilding it in release mode.
    pub no_build: bool,
}

/// Runs the install.
pub fn run(ws: &Workspace, options: Options) -> Result<()> {
    if !options.no_build {
        // `cargo xtask test` leaves a debug build with allocation assertions in
        // target/bundled; always install a release build unless told otherwise.
        bundle::bundle(
            ws,
            &[PLUGIN_PACKAGE.to_string()],
            &["--release".to_string()],
        )?;
    }
    let home = home_dir()?;
    let (clap_dir, vst3_dir) = plugin_folders(&home)?;
    let pairs = [(ws.clap_bundle(), clap_dir), (ws.vst3_bundle(), vst3_dir)];
    for (from, _) in &pairs {
        if !from.exists() {
            bail!(
                "{} does not exist; build it with `cargo xtask bundle {PLUGIN_PACKAGE} --release` \
                 (the plugin crate must export CLAP and VST3 entry points and map its bundle \
                 name to `knnblend` in plugin/bundler.toml)",
                from.display()
            );
        }
    }
    for (from, dir) in &pairs {
        let name = from
            .file_name()
            .context("bundle path without a file name")?;
        let to = dir.join(name);
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        replace_recursively(from, &to)?;
        println!("installed {} -> {}", ws.show(from), to.display());
    }
    // The CLAP bundle is one file on Linux: ONNX Runtime (for RVC voices) goes beside it, as in
    // target/bundled. The VST3 bundle carries its own copy inside.
    let bundled = ws.clap_bundle();
    if let Some(library) = bundled.parent().and_then(bundle::onnx_runtime_in) {
        let copy = bundle::copy_library(&library, &pairs[0].1)?;
        println!("installed {} -> {}", ws.show(&library), copy.display());
    }
    println!(
        "Rescan plugins in your host (CLAP: {}, VST3: {}) to find \"kNN Blend\".",
        pairs[0].1.display(),
        pairs[1].1.display()
    );
    Ok(())
}

fn home_dir() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("$HOME is not set; cannot find the user's plugin folders")
}

/// The per-user CLAP and VST3 folders.
fn plugin_folders(home: &Path) -> Result<(PathBuf, PathBuf)> {
    if cfg!(target_os = "linux") {
        Ok((home.join(".clap"), home.join(".vst3")))
    } else if cfg!(target_os = "macos") {
        let base = home.join("Library/Audio/Plug-Ins");
        Ok((base.join("CLAP"), base.join("VST3")))
    } else {
        bail!("`cargo xtask install` knows the plugin folders of Linux and macOS only; copy the bundles from target/bundled by hand")
    }
}

/// Replaces `to` with a copy of `from` (a file or a directory tree).
pub fn replace_recursively(from: &Path, to: &Path) -> Result<()> {
    if to.is_dir() && !to.is_symlink() {
        fs::remove_dir_all(to).with_context(|| format!("could not remove {}", to.display()))?;
    } else if to.exists() || to.is_symlink() {
        fs::remove_file(to).with_context(|| format!("could not remove {}", to.display()))?;
    }
    copy_recursively(from, to)
}

fn copy_recursively(from: &Path, to: &Path) -> Result<()> {
    if from.is_dir() {
        fs::create_dir_all(to).with_context(|| format!("could not create {}", to.display()))?;
        for entry in
            fs::read_dir(from).with_context(|| format!("could not list {}", from.display()))?
        {
            let entry = entry?;
            copy_recursively(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        fs::copy(from, to)
            .with_context(|| format!("could not copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn copies_a_bundle_tree_and_replaces_the_old_one() {
        let dir = scratch("tree");
        let from = dir.join("knnblend.vst3");
        fs::create_dir_all(from.join("Contents/x86_64-linux")).unwrap();
        fs::write(from.join("Contents/x86_64-linux/knnblend.so"), b"new").unwrap();
        let to = dir.join("dest/knnblend.vst3");
        fs::create_dir_all(to.join("stale")).unwrap();
        replace_recursively(&from, &to).unwrap();
        assert_eq!(
            fs::read(to.join("Contents/x86_64-linux/knnblend.so")).unwrap(),
            b"new"
        );
        assert!(!to.join("stale").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copies_a_single_file_bundle() {
        let dir = scratch("file");
        let from = dir.join("knnblend.clap");
        fs::write(&from, b"clap").unwrap();
        let to = dir.join("knnblend-copy.clap");
        fs::write(&to, b"old").unwrap();
        replace_recursively(&from, &to).unwrap();
        assert_eq!(fs::read(&to).unwrap(), b"clap");
        fs::remove_dir_all(&dir).unwrap();
    }
}
