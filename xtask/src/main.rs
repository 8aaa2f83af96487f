//! `cargo xtask`: project tasks for knnblend.
//!
//! - `setup`   install what a fresh Debian/Ubuntu machine lacks (apt) and `target/venv`
//! - `test`    every test: library, CLI, faiss parity, plugin bundle + host tests
//! - `demo`    build the CLI and the plugin, render the demo voices
//! - `bundle`  build and bundle plugins (nice-plug-xtask)
//! - `install` copy the bundles to `~/.clap` and `~/.vst3`
//! - `fuzz`    run the cargo-fuzz targets for a bounded time
//!
//! Any other command is handed to nice-plug-xtask.

mod bundle;
mod demo;
mod fresh;
mod fuzz;
mod install;
mod linkcheck;
mod process;
mod python;
mod setup;
mod steps;
mod test;
mod workspace;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::process::ExitCode;
use workspace::Workspace;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project tasks for knnblend",
    after_help = "Start with `cargo xtask demo`; run every test with `cargo xtask test`."
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: system packages and target/venv
    ///
    /// System packages come from apt-get (as root, or via sudo): cmake, make, g++, OpenBLAS,
    /// LAPACK, pkg-config for the build; xvfb and the X11/GL libraries the plugin's editor
    /// loads at run time for the editor test. The Python environment target/venv gets
    /// pedalboard, numpy, onnx, onnxruntime, faiss-cpu, pytest and maturin.
    /// Quick when everything is present.
    Setup {
        /// Only report what is missing; install nothing; fail if something is missing.
        #[arg(long)]
        check: bool,
    },
    /// Run every test (what CI runs)
    ///
    /// Setup, then the workspace tests (library, CLI, faiss parity), the plugin bundle with
    /// allocation assertions (checked to be free of faiss), the plugin tests with the CLAP
    /// host harness, and the VST3 host test in pedalboard.
    Test {
        /// Skip the setup step.
        #[arg(long)]
        no_setup: bool,
    },
    /// Build everything and render the demo voices into target/demo/
    ///
    /// Setup; the CLI (dev profile); two synthetic voices and a phrase; their voice indexes;
    /// the phrase through the realtime path at Blend 0, 0.5 and 1 and with a live voice swap;
    /// per-frame query time; the plugin bundles (release); target/demo/SUMMARY.md.
    /// A second run reuses every file that is newer than what it is made from
    /// (`rm -rf target/demo` starts over).
    Demo,
    /// Build and bundle a plugin into target/bundled/ (nice-plug-xtask)
    ///
    /// The knnblend-plugin bundles also get ONNX Runtime (libonnxruntime.so.*) from
    /// target/venv, which `cargo xtask setup` fills.
    ///
    /// Example: `cargo xtask bundle knnblend-plugin --release`.
    #[command(disable_help_flag = true)]
    Bundle {
        /// `<package> [cargo build options]` or `-p <package> ... [options]`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bundle the plugin in release mode and copy it to ~/.clap and ~/.vst3
    Install {
        /// Copy what is in target/bundled/ as it is, without a release build first.
        #[arg(long)]
        no_build: bool,
    },
    /// Build the Python package's abi3 wheel (python/) with maturin into target/wheels,
    /// install it into target/venv and run its tests there with pytest against PyPI
    /// faiss-cpu (a step of `cargo xtask test`)
    ///
    /// Afterwards `target/venv/bin/python -c 'import knnblend'` imports the installed wheel.
    Python,
    /// Run each cargo-fuzz target in fuzz/ for a bounded time (nightly + cargo-fuzz)
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (default: every `[[bin]]` in fuzz/Cargo.toml).
        targets: Vec<String>,
    },
    /// Any other nice-plug-xtask command (e.g. `known-packages`).
    #[command(external_subcommand)]
    Other(Vec<String>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    let ws = Workspace::discover()?;
    match task {
        Task::Setup { check } => setup::run(&ws, setup::Options { check_only: check }),
        Task::Test { no_setup } => test::run(&ws, test::Options { no_setup }),
        Task::Demo => demo::run(&ws),
        Task::Bundle { args } => {
            if args.iter().any(|a| a == "--help" || a == "-h") {
                println!(
                    "usage: cargo xtask bundle <package> [cargo build options]\n       \
                     cargo xtask bundle -p <package1> -p <package2> ... [cargo build options]\n\n\
                     Bundles go to target/bundled/ (e.g. knnblend.clap, knnblend.vst3); \
                     knnblend-plugin's get ONNX Runtime from target/venv beside the plugin."
                );
                return Ok(());
            }
            bundle::run(&ws, &args)
        }
        Task::Install { no_build } => install::run(&ws, install::Options { no_build }),
        Task::Python => python::test(&ws),
        Task::Fuzz { seconds, targets } => fuzz::run(&ws, &fuzz::Options { seconds, targets }),
        Task::Other(args) => {
            std::env::set_current_dir(&ws.root)?;
            nice_plug_xtask::main_with_args("cargo xtask", args)
        }
    }
}
