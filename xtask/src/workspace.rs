//! Where things are: the repository root, the target directory, the plugin crate and the
//! paths of the artefacts the tasks produce.

use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Cargo package name of the plugin crate.
pub const PLUGIN_PACKAGE: &str = "knnblend-plugin";
/// Bundle name the plugin crate's `bundler.toml` maps [`PLUGIN_PACKAGE`] to.
pub const BUNDLE_NAME: &str = "knnblend";
/// Cargo package name of the library (the realtime core).
pub const LIBRARY_PACKAGE: &str = "knnblend";
/// Cargo package name of the C ABI (`capi/`).
pub const CAPI_PACKAGE: &str = "knnblend-capi";
/// Cargo package name of the `knnblend` command line (`cli/`).
pub const CLI_PACKAGE: &str = "knnblend-cli";
/// Cargo feature of the plugin crate that turns on allocation assertions in `process()`.
pub const ASSERT_ALLOCS_FEATURE: &str = "assert_process_allocs";

/// The workspace as seen by the tasks.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Repository root (holds the workspace `Cargo.toml`).
    pub root: PathBuf,
    /// Cargo's target directory (absolute).
    pub target: PathBuf,
    /// The plugin crate, if it is a workspace member.
    pub plugin: Option<PluginCrate>,
}

/// What the tasks need to know about the plugin crate.
#[derive(Debug, Clone)]
pub struct PluginCrate {
    /// Directory holding the plugin's `Cargo.toml`.
    pub dir: PathBuf,
    /// Cargo features the plugin crate declares.
    pub features: BTreeSet<String>,
}

impl PluginCrate {
    /// True once the crate is a real nice-plug plugin with allocation assertions wired up
    /// (a stub crate has neither).
    pub fn has_assert_allocs_feature(&self) -> bool {
        self.features.contains(ASSERT_ALLOCS_FEATURE)
    }
}

impl Workspace {
    /// Locates the workspace from the xtask crate's own manifest directory and asks
    /// `cargo metadata` (without resolving dependencies, so it is quick and offline) for the
    /// target directory and the plugin crate.
    pub fn discover() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("the xtask crate is expected to live one level below the repository root")?
            .to_path_buf();
        let metadata = cargo_metadata::MetadataCommand::new()
            .manifest_path(root.join("Cargo.toml"))
            .no_deps()
            .exec()
            .context("could not read the workspace with `cargo metadata`")?;
        let plugin = metadata
            .workspace_packages()
            .into_iter()
            .find(|p| p.name.as_str() == PLUGIN_PACKAGE)
            .map(|p| PluginCrate {
                dir: p
                    .manifest_path
                    .parent()
                    .map(|d| d.as_std_path().to_path_buf())
                    .unwrap_or_else(|| root.join("plugin")),
                features: p.features.keys().cloned().collect(),
            });
        Ok(Self {
            target: metadata.target_directory.as_std_path().to_path_buf(),
            root,
            plugin,
        })
    }

    /// `target/bundled`, where nice-plug-xtask writes the plugin bundles.
    pub fn bundled_dir(&self) -> PathBuf {
        self.target.join("bundled")
    }

    /// `target/bundled/knnblend.clap` (a plain shared library on Linux).
    pub fn clap_bundle(&self) -> PathBuf {
        self.bundled_dir().join(format!("{BUNDLE_NAME}.clap"))
    }

    /// `target/bundled/knnblend.vst3` (a bundle directory).
    pub fn vst3_bundle(&self) -> PathBuf {
        self.bundled_dir().join(format!("{BUNDLE_NAME}.vst3"))
    }

    /// The shared library inside the VST3 bundle for the machine we run on.
    pub fn vst3_library(&self) -> PathBuf {
        let arch = match std::env::consts::ARCH {
            "x86" => "i386",
            other => other,
        };
        self.vst3_bundle()
            .join("Contents")
            .join(format!("{arch}-linux"))
            .join(format!("{BUNDLE_NAME}.so"))
    }

    /// Project-local Python virtual environment (`target/venv`).
    pub fn venv(&self) -> PathBuf {
        self.target.join("venv")
    }

    /// The virtual environment's interpreter.
    pub fn venv_python(&self) -> PathBuf {
        self.venv().join("bin").join("python")
    }

    /// The VST3 host test script the plugin crate provides.
    pub fn vst3_host_test(&self) -> PathBuf {
        self.plugin
            .as_ref()
            .map(|p| p.dir.clone())
            .unwrap_or_else(|| self.root.join("plugin"))
            .join("tests")
            .join("vst3_host.py")
    }

    /// The CLI binary of the dev profile (opt-level 2; the profile `cargo xtask test` builds,
    /// so faiss is compiled once for both).
    pub fn dev_cli(&self) -> PathBuf {
        self.target.join("debug").join("knnblend")
    }

    /// The plugin's release shared library, as cargo links it (before bundling).
    pub fn release_plugin_library(&self) -> PathBuf {
        self.target.join("release").join(format!(
            "libknnblend_plugin{}",
            std::env::consts::DLL_SUFFIX
        ))
    }

    /// Where the demo writes its results.
    pub fn demo_dir(&self) -> PathBuf {
        self.target.join("demo")
    }

    /// Path shown to the user: relative to the repository root when inside it.
    pub fn show(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }
}
