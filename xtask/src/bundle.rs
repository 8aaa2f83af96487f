//! `cargo xtask bundle`: builds and bundles plugins with nice-plug-xtask.
//!
//! nice-plug-xtask reads `bundler.toml` from its working directory. The repository keeps
//! that file next to the plugin crate (`plugin/bundler.toml`, mapping `knnblend-plugin` to
//! the bundle name `knnblend`), so bundling runs from the plugin crate's directory when the
//! root has no `bundler.toml`. Output goes to `target/bundled/`.

use crate::workspace::Workspace;
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
    Ok(())
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

    #[test]
    fn missing_package_is_a_usage_error() {
        assert!(split_args(&[]).is_err());
        assert!(split_args(&strings(&["--release"])).is_err());
        assert!(split_args(&strings(&["-p"])).is_err());
    }
}
