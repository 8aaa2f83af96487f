//! `cargo xtask setup`: installs what a fresh Debian/Ubuntu machine with only the Rust
//! toolchain lacks, and the project-local Python environment for the VST3 host test.
//!
//! What the build needs from the system:
//! - the library's default `faiss` feature compiles faiss from source with cmake (>= 3.24),
//!   make and g++, and links BLAS, LAPACK, OpenMP (libgomp, shipped with g++) and libstdc++;
//! - the plugin's editor (nice-plug-egui on baseview) loads X11, xcb, xkbcommon and OpenGL at
//!   run time with `dlopen`, so no X11/GL development packages are needed to compile or
//!   link it; the x11-dl build script only asks pkg-config where those libraries live;
//! - the editor test (`plugin/tests/clap_gui.rs`) needs those run-time libraries and an X
//!   server: `Xvfb` (package xvfb) when there is no `DISPLAY`;
//! - the VST3 host test runs Python with `pedalboard` and `numpy` in `target/venv`;
//! - the RVC tests run Python with `onnx` there and load ONNX Runtime from the `onnxruntime`
//!   wheel installed there (`target/venv/lib/python3*/site-packages/onnxruntime/capi/`).
//! - the PyPI faiss parity test (`tests/pypi_faiss_parity.rs`) writes and searches indexes with
//!   the `faiss-cpu` wheel there (module `faiss`), the faiss RVC users run.
//!
//! Every check is quick, so a second run finishes in well under a second or two.

use crate::process::{self, on_path};
use crate::workspace::Workspace;
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Command;

/// faiss's `CMakeLists.txt` requires this cmake version.
const MIN_CMAKE: (u32, u32) = (3, 24);

/// Python packages installed into `target/venv`, as pip requirements: the VST3 host test
/// imports pedalboard and numpy; the RVC tests (`rvc/tests`) build their stand-in models with
/// onnx and load ONNX Runtime from the onnxruntime wheel's `libonnxruntime.so` (pinned: ort
/// 2.0.0-rc.15 is known to work with 1.32); the PyPI faiss parity test
/// (`tests/pypi_faiss_parity.rs`) trains, writes and searches with faiss-cpu (pinned: the
/// version whose search the test holds knnblend to); the Python package's wheel is built
/// with maturin and its tests (`python/tests`) run with pytest.
const PYTHON_PACKAGES: &[&str] = &[
    "pedalboard",
    "numpy",
    "onnx",
    "onnxruntime==1.32.0",
    "faiss-cpu==1.15.1",
    "pytest",
    "maturin==1.16.0",
];

/// Distributions whose import name is not their pip name (`faiss-cpu` installs `faiss`).
const MODULE_NAMES: &[(&str, &str)] = &[("faiss-cpu", "faiss")];

/// A pip requirement of [`PYTHON_PACKAGES`], taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PipRequirement<'a> {
    /// The distribution pip installs (and `importlib.metadata` knows it by).
    distribution: &'a str,
    /// The module it installs, which the check looks for.
    module: &'a str,
    /// The version it pins (`name==version`).
    version: Option<&'a str>,
}

/// The distribution, module and pinned version of a requirement (`name` or `name==version`).
fn requirement(spec: &str) -> PipRequirement<'_> {
    let (distribution, version) = match spec.split_once("==") {
        Some((name, version)) => (name, Some(version)),
        None => (spec, None),
    };
    let module = MODULE_NAMES
        .iter()
        .find(|(d, _)| *d == distribution)
        .map_or(distribution, |(_, m)| m);
    PipRequirement {
        distribution,
        module,
        version,
    }
}

/// How to tell whether a system requirement is met.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// The Debian package is installed.
    Package,
    /// One of these programs is on `PATH` (or the package is installed).
    Program(&'static [&'static str]),
}

/// A system requirement and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
struct Requirement {
    package: &'static str,
    why: &'static str,
    probe: Probe,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        package: "cmake",
        why: "configures the faiss build (>= 3.24; faiss is the library's test oracle)",
        probe: Probe::Program(&["cmake"]),
    },
    Requirement {
        package: "make",
        why: "runs the faiss build that cmake generates",
        probe: Probe::Program(&["make"]),
    },
    Requirement {
        package: "g++",
        why: "compiles faiss (C++17) and provides libstdc++ and OpenMP (libgomp)",
        probe: Probe::Program(&["g++"]),
    },
    Requirement {
        package: "libopenblas-dev",
        why: "BLAS for faiss (linked as -lblas)",
        probe: Probe::Package,
    },
    Requirement {
        package: "liblapack-dev",
        why: "LAPACK for faiss (linked as -llapack)",
        probe: Probe::Package,
    },
    Requirement {
        package: "pkg-config",
        why: "lets build scripts find system libraries",
        probe: Probe::Program(&["pkg-config", "pkgconf"]),
    },
    Requirement {
        package: "xvfb",
        why: "a virtual X server: the plugin's editor test (plugin/tests/clap_gui.rs) opens the \
              editor in a real X11 window and skips itself without one",
        probe: Probe::Program(&["Xvfb"]),
    },
    Requirement {
        package: "libx11-6",
        why: "Xlib, which the plugin's editor loads at run time (dlopen)",
        probe: Probe::Package,
    },
    Requirement {
        package: "libx11-xcb1",
        why: "Xlib/xcb bridge the editor loads at run time",
        probe: Probe::Package,
    },
    Requirement {
        package: "libxcb1",
        why: "xcb, the editor's X11 connection (loaded at run time)",
        probe: Probe::Package,
    },
    Requirement {
        package: "libxcursor1",
        why: "mouse cursors in the editor (loaded at run time)",
        probe: Probe::Package,
    },
    Requirement {
        package: "libxkbcommon-x11-0",
        why: "keyboard handling in the editor (loaded at run time)",
        probe: Probe::Package,
    },
    Requirement {
        package: "xdotool",
        why: "synthetic mouse input: the editor test (plugin/tests/clap_gui.rs) drags a slider \
              and checks the parameter changed",
        probe: Probe::Program(&["xdotool"]),
    },
    Requirement {
        package: "espeak-ng",
        why: "speech of several voices for the speech proxy of `knnblend bench --recall` and its \
              test (cli/src/bench/recall.rs)",
        probe: Probe::Program(&["espeak-ng"]),
    },
    Requirement {
        package: "libgl1",
        why: "OpenGL, which draws the editor (loaded at run time)",
        probe: Probe::Package,
    },
];

/// Options of `cargo xtask setup`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Only report what is missing; install nothing; fail if anything is missing.
    pub check_only: bool,
}

/// Runs the whole setup.
pub fn run(ws: &Workspace, options: Options) -> Result<()> {
    let apt = Apt::detect();
    let missing: Vec<&Requirement> = REQUIREMENTS.iter().filter(|r| !apt.meets(r)).collect();
    let mut installed = Vec::new();

    if missing.is_empty() {
        let names: Vec<&str> = REQUIREMENTS.iter().map(|r| r.package).collect();
        println!("setup: system packages present ({})", names.join(", "));
    } else {
        println!("setup: missing system packages:");
        for r in &missing {
            println!("  {:<16} {}", r.package, r.why);
        }
        if options.check_only {
            bail!("missing system packages (run `cargo xtask setup` to install them)");
        }
        let packages: Vec<&str> = missing.iter().map(|r| r.package).collect();
        apt.install(&packages)?;
        installed.extend(packages);
    }

    let cmake_override = ensure_cmake_version(ws, &apt, options, &mut installed)?;
    ensure_python_env(ws, &apt, options, &mut installed)?;

    if let Some(cmake) = cmake_override {
        // The cmake crate (used by faiss-sys) honours $CMAKE; child cargo processes of this
        // task inherit it. The task runner is single-threaded here.
        std::env::set_var("CMAKE", &cmake);
        println!(
            "setup: using {} (set CMAKE={} when running cargo directly)",
            ws.show(&cmake),
            cmake.display()
        );
    }
    if installed.is_empty() {
        println!("setup: nothing to install");
    } else {
        println!("setup: installed {}", installed.join(", "));
    }
    Ok(())
}

/// Makes sure a cmake new enough for faiss is available. Returns the path to use through
/// `$CMAKE` when the one on `PATH` is too old (Ubuntu 22.04 ships 3.22): then cmake is
/// installed from PyPI into the project virtualenv.
fn ensure_cmake_version(
    ws: &Workspace,
    apt: &Apt,
    options: Options,
    installed: &mut Vec<&'static str>,
) -> Result<Option<PathBuf>> {
    if let Some(path) = std::env::var_os("CMAKE").map(PathBuf::from) {
        if cmake_version(&path).is_some_and(|v| v >= MIN_CMAKE) {
            return Ok(None);
        }
    }
    let system = cmake_version(Path::new("cmake"));
    if system.is_some_and(|v| v >= MIN_CMAKE) {
        return Ok(None);
    }
    let venv_cmake = ws.venv().join("bin").join("cmake");
    if cmake_version(&venv_cmake).is_some_and(|v| v >= MIN_CMAKE) {
        return Ok(Some(venv_cmake));
    }
    let found = system
        .map(|(a, b)| format!("{a}.{b}"))
        .unwrap_or_else(|| "none".into());
    println!(
        "setup: faiss needs cmake >= {}.{}, found {found}; installing cmake from PyPI into {}",
        MIN_CMAKE.0,
        MIN_CMAKE.1,
        ws.show(&ws.venv())
    );
    if options.check_only {
        bail!("cmake is too old for faiss (run `cargo xtask setup`)");
    }
    create_venv(ws, apt, installed)?;
    process::run_with_spinner(
        "installing cmake into the virtualenv",
        Command::new(ws.venv_python()).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "cmake>=3.24,<4",
        ]),
    )?;
    installed.push("cmake (PyPI, target/venv)");
    match cmake_version(&venv_cmake) {
        Some(v) if v >= MIN_CMAKE => Ok(Some(venv_cmake)),
        _ => bail!(
            "installed cmake into the virtualenv but `{}` does not run",
            venv_cmake.display()
        ),
    }
}

/// `cmake --version` → (major, minor).
fn cmake_version(program: &Path) -> Option<(u32, u32)> {
    let text = process::output(Command::new(program).arg("--version"))?;
    parse_cmake_version(&text)
}

fn parse_cmake_version(text: &str) -> Option<(u32, u32)> {
    let version = text
        .lines()
        .next()?
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()?;
    Some((major, minor))
}

/// Creates `target/venv` with [`PYTHON_PACKAGES`] unless they are already importable.
fn ensure_python_env(
    ws: &Workspace,
    apt: &Apt,
    options: Options,
    installed: &mut Vec<&'static str>,
) -> Result<()> {
    let python = ws.venv_python();
    if python_has_modules(&python, PYTHON_PACKAGES) {
        println!(
            "setup: Python environment {} has {}",
            ws.show(&ws.venv()),
            PYTHON_PACKAGES.join(", ")
        );
        return Ok(());
    }
    println!(
        "setup: {} needs {} (the VST3 host test loads the plugin in pedalboard; the RVC tests \
         build ONNX models and load ONNX Runtime; the PyPI faiss parity test writes indexes \
         with faiss-cpu)",
        ws.show(&ws.venv()),
        PYTHON_PACKAGES.join(", ")
    );
    if options.check_only {
        bail!("the Python environment is incomplete (run `cargo xtask setup`)");
    }
    create_venv(ws, apt, installed)?;
    process::run_with_spinner(
        &format!("pip install {}", PYTHON_PACKAGES.join(" ")),
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PYTHON_PACKAGES),
    )?;
    if !python_has_modules(&python, PYTHON_PACKAGES) {
        bail!(
            "installed {} but `{}` still cannot find them",
            PYTHON_PACKAGES.join(", "),
            python.display()
        );
    }
    installed.push(
        "pedalboard, numpy, onnx, onnxruntime, faiss-cpu, pytest, maturin (PyPI, target/venv)",
    );
    Ok(())
}

/// True when `python` runs, can find every requirement's module (without importing them, to
/// stay quick) and has the pinned versions (looked up by distribution name).
fn python_has_modules(python: &Path, requirements: &[&str]) -> bool {
    let modules = requirements
        .iter()
        .map(|r| format!("'{}'", requirement(r).module))
        .collect::<Vec<_>>()
        .join(",");
    let pins = requirements
        .iter()
        .filter_map(|r| match requirement(r) {
            PipRequirement {
                distribution,
                version: Some(version),
                ..
            } => Some(format!("('{distribution}','{version}')")),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(",");
    let script = format!(
        "import importlib.util, importlib.metadata as md, sys\n\
         def pinned(n, v):\n\
         \x20   try:\n\
         \x20       return md.version(n) == v\n\
         \x20   except md.PackageNotFoundError:\n\
         \x20       return False\n\
         ok = all(importlib.util.find_spec(m) for m in [{modules}])\n\
         ok = ok and all(pinned(n, v) for n, v in [{pins}])\n\
         sys.exit(0 if ok else 1)\n"
    );
    python.is_file() && process::succeeds(Command::new(python).args(["-c", &script]))
}

/// Creates the virtualenv if it does not work yet. When `python3 -m venv` fails (Debian's
/// system Python keeps `ensurepip` in the separate python3-venv package) that package is
/// installed and the creation retried.
fn create_venv(ws: &Workspace, apt: &Apt, installed: &mut Vec<&'static str>) -> Result<()> {
    let venv = ws.venv();
    let python = ws.venv_python();
    if python.is_file() && process::succeeds(Command::new(&python).args(["-m", "pip", "--version"]))
    {
        return Ok(());
    }
    if venv.exists() {
        println!("setup: {} is broken; recreating it", ws.show(&venv));
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("could not remove {}", venv.display()))?;
    }
    if !on_path("python3") {
        println!("setup: python3 is missing; installing python3 and python3-venv (for the VST3 host test)");
        apt.install(&["python3", "python3-venv"])?;
        installed.extend(["python3", "python3-venv"]);
    }
    let create = || process::run(Command::new("python3").arg("-m").arg("venv").arg(&venv));
    if create().is_err() {
        // A failed attempt may leave a venv without pip behind.
        let _ = std::fs::remove_dir_all(&venv);
        println!("setup: `python3 -m venv` failed; installing python3-venv (provides ensurepip)");
        apt.install(&["python3-venv"])?;
        installed.push("python3-venv");
        create()
            .context("could not create the Python virtualenv even with python3-venv installed")?;
    }
    Ok(())
}

/// The system package manager, when it is apt.
struct Apt {
    available: bool,
}

impl Apt {
    fn detect() -> Self {
        Self {
            available: on_path("apt-get") && on_path("dpkg-query"),
        }
    }

    fn meets(&self, r: &Requirement) -> bool {
        match r.probe {
            Probe::Program(programs) => {
                programs.iter().any(|p| on_path(p)) || self.package_installed(r.package)
            }
            Probe::Package => {
                if self.available {
                    self.package_installed(r.package)
                } else {
                    // Without dpkg there is no reliable check; assume it is there and let
                    // the build say otherwise.
                    true
                }
            }
        }
    }

    fn package_installed(&self, package: &str) -> bool {
        self.available
            && process::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_some_and(|status| status.trim() == "install ok installed")
    }

    /// `apt-get update` then `apt-get install -y` as root, or through sudo.
    fn install(&self, packages: &[&str]) -> Result<()> {
        if !self.available {
            bail!(
                "automatic installation needs apt-get (Debian/Ubuntu); please install: {}",
                packages.join(" ")
            );
        }
        println!("setup: installing {} with apt-get", packages.join(" "));
        process::run(&mut privileged(&["apt-get", "update", "-q"])?)?;
        let mut args = vec!["apt-get", "install", "-y", "-q", "--no-install-recommends"];
        args.extend_from_slice(packages);
        process::run(&mut privileged(&args)?)
    }
}

/// A command run as root: directly when we are root, otherwise through sudo (non-interactive
/// when there is no terminal to ask for a password on).
fn privileged(args: &[&str]) -> Result<Command> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if root {
        let mut cmd = Command::new(args[0]);
        cmd.args(&args[1..]);
        cmd
    } else if on_path("sudo") {
        let mut cmd = Command::new("sudo");
        if !std::io::stdin().is_terminal() {
            cmd.arg("-n");
        }
        // sudo resets the environment; pass the frontend setting through env(1).
        cmd.args(["env", "DEBIAN_FRONTEND=noninteractive"])
            .args(args);
        cmd
    } else {
        bail!(
            "installing system packages needs root; run as root: {}",
            args.join(" ")
        );
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmake_versions_parse() {
        assert_eq!(
            parse_cmake_version("cmake version 3.25.1\n\nCMake suite maintained"),
            Some((3, 25))
        );
        assert_eq!(
            parse_cmake_version("cmake version 3.22.1-rc2"),
            Some((3, 22))
        );
        assert_eq!(parse_cmake_version("cmake3 version 4.0rc1"), Some((4, 0)));
        assert_eq!(parse_cmake_version("garbage"), None);
        assert!(Some((3, 22)) < Some(MIN_CMAKE));
        assert!((4, 0) >= MIN_CMAKE);
    }

    #[test]
    fn python_requirements_name_their_modules() {
        let plain = |name| PipRequirement {
            distribution: name,
            module: name,
            version: None,
        };
        assert_eq!(requirement("numpy"), plain("numpy"));
        assert_eq!(
            requirement("onnxruntime==1.32.0"),
            PipRequirement {
                version: Some("1.32.0"),
                ..plain("onnxruntime")
            }
        );
        // faiss-cpu installs the module `faiss`; its pin is looked up as `faiss-cpu`.
        assert_eq!(
            requirement("faiss-cpu==1.15.1"),
            PipRequirement {
                distribution: "faiss-cpu",
                module: "faiss",
                version: Some("1.15.1"),
            }
        );
        assert!(PYTHON_PACKAGES.contains(&"onnx"));
        for (module, pinned) in [
            ("onnxruntime", true),
            ("faiss", true),
            ("pedalboard", false),
        ] {
            let r = PYTHON_PACKAGES
                .iter()
                .map(|r| requirement(r))
                .find(|r| r.module == module)
                .unwrap_or_else(|| panic!("no requirement installs `{module}`"));
            assert_eq!(r.version.is_some(), pinned, "{r:?}");
        }
        // Every renamed distribution is one that is installed.
        for (distribution, _) in MODULE_NAMES {
            assert!(PYTHON_PACKAGES
                .iter()
                .any(|r| requirement(r).distribution == *distribution));
        }
    }

    #[test]
    fn every_requirement_says_why() {
        for r in REQUIREMENTS {
            assert!(!r.why.is_empty(), "{}", r.package);
        }
    }

    #[test]
    fn editor_test_needs_are_listed() {
        for package in [
            "xvfb",
            "libx11-6",
            "libx11-xcb1",
            "libxcb1",
            "libxcursor1",
            "libxkbcommon-x11-0",
            "libgl1",
        ] {
            assert!(
                REQUIREMENTS.iter().any(|r| r.package == package),
                "{package} is not in the setup list"
            );
        }
    }
}
