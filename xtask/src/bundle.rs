//! `cargo xtask bundle`: builds and bundles plugins with nice-plug-xtask.
//!
//! nice-plug-xtask reads `bundler.toml` from its working directory. The repository keeps
//! that file next to the plugin crate (`plugin/bundler.toml`, mapping `knnblend-plugin` to
//! the bundle name `knnblend`), so bundling runs from the plugin crate's directory when the
//! root has no `bundler.toml`. Output goes to `target/bundled/`.
//!
//! Bundling the plugin also copies ONNX Runtime into its bundles, so the plugin loads it from
//! beside itself (`rvc::runtime`'s "beside" folders): the library from the `onnxruntime` wheel
//! that `cargo xtask setup` installs into `target/venv`, under its versioned name
//! (`libonnxruntime.so.1.32.0`), goes next to `target/bundled/knnblend.clap` (on Linux a
//! single file) and into `target/bundled/knnblend.vst3/Contents/x86_64-linux/`. Without that
//! library the bundle step fails under `CI=true` and warns otherwise.

use crate::workspace::{Workspace, PLUGIN_PACKAGE};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const USAGE: &str = "usage: cargo xtask bundle <package> [cargo build options]
       cargo xtask bundle -p <package1> -p <package2> ... [cargo build options]";

/// Splits `bundle` arguments into packages and the remaining `cargo build` options, the way
/// nice-plug-xtask does: either one leading package name, or one or more `-p <package>`.
pub fn split_args(args: &[String]) -> Result<(Vec<String>, Vec<String>)> {
    let mut packages = Vec::new();
    let mut rest = args.iter().peekable();
    if rest.peek().map(|s| s.as_str()) == Some("-p") {
        while rest.peek().map(|s| s.as_str()) == Some("-p") {
            rest.next();
            let package = rest
                .next()
                .with_context(|| format!("missing package name after -p\n\n{USAGE}"))?;
            packages.push(package.clone());
        }
    } else {
        match rest.next() {
            Some(package) if !package.starts_with('-') => packages.push(package.clone()),
            _ => bail!("missing package name\n\n{USAGE}"),
        }
    }
    Ok((packages, rest.cloned().collect()))
}

/// `cargo xtask bundle ARGS…`.
pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    let (packages, options) = split_args(args)?;
    bundle(ws, &packages, &options)
}

/// Builds `packages` with `cargo build OPTIONS` and bundles each into `target/bundled/`.
pub fn bundle(ws: &Workspace, packages: &[String], options: &[String]) -> Result<()> {
    std::env::set_current_dir(&ws.root)
        .with_context(|| format!("could not enter {}", ws.root.display()))?;
    println!(
        "$ cargo build -p {} {}",
        packages.join(" -p "),
        options.join(" ")
    );
    nice_plug_xtask::build(packages, options)?;
    for package in packages {
        let config_dir = bundler_config_dir(ws, package);
        std::env::set_current_dir(&config_dir)
            .with_context(|| format!("could not enter {}", config_dir.display()))?;
        let result = nice_plug_xtask::bundle(&ws.target, package, options, false);
        std::env::set_current_dir(&ws.root)
            .with_context(|| format!("could not enter {}", ws.root.display()))?;
        result.with_context(|| format!("could not bundle {package}"))?;
    }
    if packages.iter().any(|p| p == PLUGIN_PACKAGE) {
        bundle_onnx_runtime(ws, running_in_ci())?;
    }
    Ok(())
}

/// Whether `CI` says this runs in continuous integration (`CI=true`, as CI services set it).
fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Where the `onnxruntime` wheel in `target/venv` keeps its libraries (the pattern, as shown).
const VENV_ORT_DIRS: &str = "target/venv/lib/python3*/site-packages/onnxruntime/capi/";

/// Copies ONNX Runtime's library from `target/venv` beside the plugin in each bundle that
/// exists, and checks every copy. Without the library: an error when `ci`, else a warning.
fn bundle_onnx_runtime(ws: &Workspace, ci: bool) -> Result<()> {
    if !cfg!(target_os = "linux") {
        println!(
            "note: ONNX Runtime is copied into the bundles on Linux only; put the library \
             beside the plugin by hand"
        );
        return Ok(());
    }
    let Some(source) = venv_onnx_runtime(&ws.venv()) else {
        let problem = format!(
            "no ONNX Runtime library (libonnxruntime.so*) in {VENV_ORT_DIRS}: run `cargo xtask \
             setup`, which installs the onnxruntime wheel there"
        );
        if ci {
            bail!("{problem}; the plugin bundles must carry it (CI is set)");
        }
        println!(
            "WARNING: {problem}. The bundles in {} do not carry ONNX Runtime; the plugin's RVC \
             voices then need ORT_DYLIB_PATH or the library copied beside the plugin.",
            ws.show(&ws.bundled_dir())
        );
        return Ok(());
    };
    let mut destinations = Vec::new();
    if ws.clap_bundle().is_file() {
        destinations.push(ws.bundled_dir());
    }
    if let Some(dir) = ws.vst3_library().parent().filter(|d| d.is_dir()) {
        destinations.push(dir.to_path_buf());
    }
    for dir in destinations {
        let copied = copy_library(&source, &dir)?;
        println!(
            "ONNX Runtime: copied {} -> {} ({} bytes, size checked)",
            ws.show(&source),
            ws.show(&copied),
            std::fs::metadata(&copied)?.len()
        );
    }
    Ok(())
}

/// Whether `name` is ONNX Runtime's main library on Linux, as `rvc`'s loader accepts it:
/// `libonnxruntime.so` or `libonnxruntime.so.*` (not `libonnxruntime_providers_shared.so`).
fn is_onnx_runtime_name(name: &str) -> bool {
    name.strip_prefix("libonnxruntime")
        .is_some_and(|rest| rest == ".so" || rest.starts_with(".so."))
}

/// The library in the venv's `onnxruntime/capi/` folders (newest Python first), chosen as the
/// loader chooses (the unversioned name, else the highest version), as its real file: a
/// symbolic link is followed, so the copy gets the versioned name.
fn venv_onnx_runtime(venv: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/onnxruntime/capi"))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs.reverse();
    let chosen = dirs.iter().find_map(|d| onnx_runtime_in(d))?;
    match std::fs::canonicalize(&chosen) {
        Ok(real)
            if real
                .file_name()
                .is_some_and(|n| is_onnx_runtime_name(&n.to_string_lossy())) =>
        {
            Some(real)
        }
        _ => Some(chosen),
    }
}

/// The library in `dir`: the unversioned name when present, else the highest version (the
/// choice `rvc`'s `library_in` makes).
pub(crate) fn onnx_runtime_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            if !is_onnx_runtime_name(&name) || !entry.path().is_file() {
                return None;
            }
            let version = name.split('.').filter_map(|p| p.parse().ok()).collect();
            Some((version, entry.path()))
        })
        .collect();
    found.sort();
    if found.first().is_some_and(|(v, _)| v.is_empty()) {
        return found.into_iter().next().map(|(_, p)| p);
    }
    found.pop().map(|(_, p)| p)
}

/// Copies `source` into `dir` under its own name, first removing any other ONNX Runtime library
/// there (an older version would be a second candidate for the loader), then checks the copy
/// exists with the source's size. Returns the copy's path.
pub(crate) fn copy_library(source: &Path, dir: &Path) -> Result<PathBuf> {
    let name = source
        .file_name()
        .with_context(|| format!("{} has no file name", source.display()))?;
    let target = dir.join(name);
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?
    {
        let entry = entry?;
        let stale = entry.file_name();
        if stale != name && is_onnx_runtime_name(&stale.to_string_lossy()) {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("could not remove {}", entry.path().display()))?;
            println!("ONNX Runtime: removed the old {}", entry.path().display());
        }
    }
    // A copy beside the target, renamed over it: a reader never sees half a library.
    let partial = dir.join(format!(".{}.partial", name.to_string_lossy()));
    std::fs::copy(source, &partial).with_context(|| {
        format!(
            "could not copy {} to {}",
            source.display(),
            partial.display()
        )
    })?;
    std::fs::rename(&partial, &target).with_context(|| {
        format!(
            "could not rename {} to {}",
            partial.display(),
            target.display()
        )
    })?;
    check_copy(source, &target)?;
    Ok(target)
}

/// Fails unless `copy` exists as a file of `source`'s size.
fn check_copy(source: &Path, copy: &Path) -> Result<()> {
    let expected = std::fs::metadata(source)
        .with_context(|| format!("could not read {}", source.display()))?
        .len();
    match std::fs::metadata(copy) {
        Ok(m) if m.is_file() && m.len() == expected => Ok(()),
        Ok(m) => bail!(
            "the copy {} has {} bytes, its source {} has {expected}",
            copy.display(),
            m.len(),
            source.display()
        ),
        Err(error) => bail!(
            "the copy {} is missing after copying: {error}",
            copy.display()
        ),
    }
}

/// The directory whose `bundler.toml` applies to `package`: the workspace root if it has
/// one, else the package's own directory if that has one, else the root (default names).
fn bundler_config_dir(ws: &Workspace, package: &str) -> PathBuf {
    if has_bundler_toml(&ws.root) {
        return ws.root.clone();
    }
    let package_dir = match &ws.plugin {
        Some(plugin) if package == crate::workspace::PLUGIN_PACKAGE => Some(plugin.dir.clone()),
        _ => None,
    };
    match package_dir {
        Some(dir) if has_bundler_toml(&dir) => dir,
        _ => ws.root.clone(),
    }
}

fn has_bundler_toml(dir: &Path) -> bool {
    dir.join("bundler.toml").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn single_package_then_options() {
        let (p, o) = split_args(&strings(&["knnblend-plugin", "--release"])).unwrap();
        assert_eq!(p, ["knnblend-plugin"]);
        assert_eq!(o, ["--release"]);
    }

    #[test]
    fn several_packages_with_dash_p() {
        let (p, o) = split_args(&strings(&["-p", "a", "-p", "b", "--features", "x"])).unwrap();
        assert_eq!(p, ["a", "b"]);
        assert_eq!(o, ["--features", "x"]);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-bundle-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A workspace in `dir` whose venv holds `libs` (name, bytes) in Python `python`'s capi/,
    /// with a CLAP and a VST3 bundle in target/bundled.
    fn workspace_with(dir: &Path, python: &str, libs: &[(&str, &[u8])]) -> Workspace {
        let ws = Workspace {
            root: dir.to_path_buf(),
            target: dir.join("target"),
            plugin: None,
        };
        let capi = ws
            .venv()
            .join("lib")
            .join(python)
            .join("site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        for (name, bytes) in libs {
            std::fs::write(capi.join(name), bytes).unwrap();
        }
        std::fs::create_dir_all(ws.vst3_library().parent().unwrap()).unwrap();
        std::fs::write(ws.vst3_library(), b"vst3").unwrap();
        std::fs::write(ws.clap_bundle(), b"clap").unwrap();
        ws
    }

    #[test]
    fn onnx_runtime_names_are_the_loaders() {
        for name in [
            "libonnxruntime.so",
            "libonnxruntime.so.1",
            "libonnxruntime.so.1.32.0",
        ] {
            assert!(is_onnx_runtime_name(name), "{name}");
        }
        for name in [
            "libonnxruntime_providers_shared.so",
            "libonnxruntime.dylib",
            "onnxruntime.dll",
            "libonnxruntime.sox",
            ".libonnxruntime.so.1.32.0.partial",
        ] {
            assert!(!is_onnx_runtime_name(name), "{name}");
        }
    }

    #[test]
    fn the_venv_library_goes_beside_both_bundles_under_its_versioned_name() {
        let dir = scratch("copy");
        let lib: &[u8] = b"\x7fELF onnxruntime 1.32.0";
        let ws = workspace_with(
            &dir,
            "python3.12",
            &[
                ("libonnxruntime.so.1.9.0", b"old"),
                ("libonnxruntime.so.1.32.0", lib),
                ("libonnxruntime_providers_shared.so", b"providers"),
            ],
        );
        // A leftover of an older bundle: the loader would see two candidates.
        std::fs::write(ws.bundled_dir().join("libonnxruntime.so"), b"stale").unwrap();
        bundle_onnx_runtime(&ws, true).unwrap();
        let vst3_dir = ws.vst3_library().parent().unwrap().to_path_buf();
        for dir in [ws.bundled_dir(), vst3_dir] {
            assert_eq!(
                std::fs::read(dir.join("libonnxruntime.so.1.32.0")).unwrap(),
                lib
            );
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("onnxruntime"))
                .collect();
            names.sort();
            assert_eq!(names, ["libonnxruntime.so.1.32.0"], "{}", dir.display());
        }
        // The bundles themselves are untouched.
        assert_eq!(std::fs::read(ws.clap_bundle()).unwrap(), b"clap");
        assert_eq!(std::fs::read(ws.vst3_library()).unwrap(), b"vst3");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_library_is_copied_under_its_real_name() {
        let dir = scratch("symlink");
        let ws = workspace_with(&dir, "python3.11", &[("libonnxruntime.so.1.32.0", b"real")]);
        let capi = ws
            .venv()
            .join("lib/python3.11/site-packages/onnxruntime/capi");
        std::os::unix::fs::symlink("libonnxruntime.so.1.32.0", capi.join("libonnxruntime.so"))
            .unwrap();
        let source = venv_onnx_runtime(&ws.venv()).unwrap();
        assert_eq!(source.file_name().unwrap(), "libonnxruntime.so.1.32.0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_library_ci_fails_and_a_local_run_warns() {
        let dir = scratch("missing");
        let ws = workspace_with(
            &dir,
            "python3.12",
            &[("libonnxruntime_providers_shared.so", b"p")],
        );
        let error = bundle_onnx_runtime(&ws, true).unwrap_err().to_string();
        assert!(error.contains("cargo xtask setup"), "{error}");
        assert!(bundle_onnx_runtime(&ws, false).is_ok());
        assert!(!ws.bundled_dir().join("libonnxruntime.so").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn copies_are_checked_for_presence_and_size() {
        let dir = scratch("size");
        let source = dir.join("libonnxruntime.so.1.32.0");
        std::fs::write(&source, b"library").unwrap();
        let into = dir.join("bundle");
        std::fs::create_dir_all(&into).unwrap();
        let copied = copy_library(&source, &into).unwrap();
        assert_eq!(copied, into.join("libonnxruntime.so.1.32.0"));
        assert_eq!(std::fs::read(&copied).unwrap(), b"library");
        assert!(!into.join(".libonnxruntime.so.1.32.0.partial").exists());
        assert!(check_copy(&source, &copied).is_ok());
        std::fs::write(&copied, b"librar").unwrap();
        let short = check_copy(&source, &copied).unwrap_err().to_string();
        assert!(
            short.contains("has 6 bytes") && short.contains("has 7"),
            "{short}"
        );
        std::fs::remove_file(&copied).unwrap();
        let gone = check_copy(&source, &copied).unwrap_err().to_string();
        assert!(gone.contains("missing"), "{gone}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_package_is_a_usage_error() {
        assert!(split_args(&[]).is_err());
        assert!(split_args(&strings(&["--release"])).is_err());
        assert!(split_args(&strings(&["-p"])).is_err());
    }
}
