//! Finding and loading ONNX Runtime. ONNX Runtime's environment is process-global, so every
//! failure case runs in a child process (this test binary re-run with `child` and a scenario
//! in `RVC_RUNTIME_CHILD`); the parent checks that the child exited normally (no crash, no
//! panic) and printed the error it expected.

mod common;

use knnblend_rvc::runtime::RuntimeSearch;
use knnblend_rvc::{ContentVec, OnnxRuntime, RvcError};
use std::path::{Path, PathBuf};
use std::process::Command;

const SCENARIO: &str = "RVC_RUNTIME_CHILD";
const ARGUMENT: &str = "RVC_RUNTIME_CHILD_ARG";

#[test]
fn the_workspace_runtime_loads_once_and_reports_itself() {
    let runtime = common::runtime();
    assert!(
        runtime.version().starts_with("1."),
        "version {}",
        runtime.version()
    );
    let name = runtime.path().file_name().unwrap().to_string_lossy();
    assert!(name.starts_with("libonnxruntime.so"), "{name}");
    assert!(runtime.path().is_file());
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert!(
            runtime.path().to_string_lossy().contains("target/venv"),
            "{}",
            runtime.path().display()
        );
        assert_eq!(runtime.version(), "1.32.0", "the version setup pins");
    }
    // Idempotent and thread-safe: every caller gets the same runtime, whatever it asks for.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let rt = if i % 2 == 0 {
                    OnnxRuntime::load(None).unwrap()
                } else {
                    OnnxRuntime::load_beside(Path::new("/nonexistent")).unwrap()
                };
                rt as *const OnnxRuntime as usize
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), runtime as *const OnnxRuntime as usize);
    }
    assert!(std::ptr::eq(OnnxRuntime::get().unwrap(), runtime));
}

/// Runs `scenario` in a child process and returns its output; fails unless it exited 0.
fn run_child(scenario: &str, argument: Option<&Path>, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO, scenario)
        .env_remove("ORT_DYLIB_PATH");
    if let Some(arg) = argument {
        cmd.env(ARGUMENT, arg);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "child `{scenario}` failed ({}):\n{text}",
        output.status
    );
    assert!(
        text.contains(&format!("CHILD {scenario} OK")),
        "child `{scenario}` did not finish:\n{text}"
    );
    text
}

/// The child side: does nothing unless run by [`run_child`].
#[test]
fn child() {
    let Ok(scenario) = std::env::var(SCENARIO) else {
        return;
    };
    let argument = std::env::var_os(ARGUMENT).map(PathBuf::from);
    let report = |what: &str, result: Result<&'static OnnxRuntime, RvcError>| -> RvcError {
        match result {
            Ok(rt) => panic!("{what}: loaded {} unexpectedly", rt.path().display()),
            Err(e) => {
                println!("{what}: {e}");
                e
            }
        }
    };
    match scenario.as_str() {
        "bogus_env" => {
            let err = report("load", OnnxRuntime::load(None));
            assert!(matches!(err, RvcError::RuntimeNotFound { .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so.1.32.0: not found"),
                "{text}"
            );
            assert!(text.contains("pip install onnxruntime"), "{text}");
            assert!(text.contains("beside the plugin"), "{text}");
            // Opening a model reports the same, instead of ort panicking.
            let err = ContentVec::open("/nonexistent/vec.onnx").unwrap_err();
            assert!(matches!(err, RvcError::RuntimeNotFound { .. }), "{err:?}");
            assert!(OnnxRuntime::get().is_none());
        }
        "nowhere" => {
            let dir = argument.unwrap();
            let search = RuntimeSearch {
                explicit: None,
                use_env: true,
                beside: vec![dir.clone()],
                project_venv: false,
            };
            let err = report("load", OnnxRuntime::load_with(&search));
            let text = err.to_string();
            assert!(
                text.contains(&format!("{}/libonnxruntime*: nothing there", dir.display())),
                "{text}"
            );
            assert!(text.contains("cargo xtask setup"), "{text}");
            let err = report(
                "explicit",
                OnnxRuntime::load(Some(&dir.join("libonnxruntime.so"))),
            );
            assert!(
                err.to_string().contains("the given path") && err.to_string().contains("not found"),
                "{err}"
            );
        }
        "not_a_library" => {
            let err = report("load", OnnxRuntime::load_beside(&argument.unwrap()));
            assert!(matches!(err, RvcError::RuntimeLoad { .. }), "{err:?}");
            // The search can be retried once the problem is fixed.
            let rt = OnnxRuntime::load(None).expect("the workspace runtime after a failure");
            println!("then loaded {} {}", rt.path().display(), rt.version());
        }
        "old_version" | "no_api" | "not_ort" => {
            let err = report("load", OnnxRuntime::load(argument.as_deref()));
            let text = err.to_string();
            match scenario.as_str() {
                "old_version" => {
                    assert!(
                        matches!(&err, RvcError::RuntimeIncompatible { version, .. } if version == "1.10.0"),
                        "{err:?}"
                    );
                    assert!(text.contains("needs ONNX Runtime 1.17 or newer"), "{text}");
                }
                "no_api" => {
                    assert!(
                        text.contains("does not provide ONNX Runtime API version 17"),
                        "{text}"
                    );
                }
                _ => assert!(text.contains("does not export `OrtGetApiBase`"), "{text}"),
            }
            // ort's global state is untouched: the real library still loads afterwards.
            let rt = OnnxRuntime::load(None).expect("the workspace runtime after a failure");
            assert_eq!(rt.version(), "1.32.0");
            let mut cv = ContentVec::open(common::model("vec-768-layer-12.onnx")).unwrap();
            let mut out = Vec::new();
            assert_eq!(cv.run(&[0.25; 16_000], &mut out).unwrap(), 49);
        }
        "explicit_dir" => {
            let dir = argument.unwrap();
            let rt = OnnxRuntime::load(Some(&dir)).unwrap();
            assert_eq!(rt.path().parent().unwrap(), dir.canonicalize().unwrap());
            println!("loaded {} {}", rt.path().display(), rt.version());
        }
        other => panic!("unknown scenario {other}"),
    }
    println!("CHILD {scenario} OK");
}

#[test]
fn a_bogus_ort_dylib_path_is_a_clear_error() {
    common::runtime();
    run_child(
        "bogus_env",
        None,
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.32.0")],
    );
}

#[test]
fn a_missing_runtime_lists_every_place_searched() {
    let dir = tempfile::tempdir().unwrap();
    run_child("nowhere", Some(dir.path()), &[]);
}

#[test]
fn a_file_that_is_not_a_library_is_a_clear_error() {
    common::runtime();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("libonnxruntime.so"), b"not an ELF file\n").unwrap();
    let text = run_child("not_a_library", Some(dir.path()), &[]);
    assert!(text.contains("could not load ONNX Runtime from"), "{text}");
}

/// Builds a shared library exporting `OrtGetApiBase` with the given version (or, with `None`,
/// a library without it).
fn fake_runtime(dir: &Path, name: &str, version: Option<&str>) -> PathBuf {
    let source = dir.join(format!("{name}.c"));
    let code = match version {
        Some(version) => format!(
            "#include <stddef.h>\n\
             typedef struct {{ const void *(*get_api)(unsigned); const char *(*version)(void); }} Base;\n\
             static const void *get_api(unsigned v) {{ (void)v; return NULL; }}\n\
             static const char *version(void) {{ return \"{version}\"; }}\n\
             static const Base base = {{ get_api, version }};\n\
             const Base *OrtGetApiBase(void) {{ return &base; }}\n"
        ),
        None => "int not_onnxruntime(void) { return 1; }\n".to_string(),
    };
    std::fs::write(&source, code).unwrap();
    let library = dir.join(format!("{name}.so"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("a C compiler (`cc`) builds the fake runtimes: run `cargo xtask setup`");
    assert!(status.success());
    library
}

#[test]
fn an_old_runtime_is_refused_without_a_crash() {
    common::runtime();
    common::models();
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_runtime(dir.path(), "libonnxruntime_old", Some("1.10.0"));
    run_child("old_version", Some(&lib), &[]);
}

#[test]
fn a_runtime_without_the_needed_api_is_refused_without_a_crash() {
    common::runtime();
    common::models();
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_runtime(dir.path(), "libonnxruntime_noapi", Some("1.32.0"));
    run_child("no_api", Some(&lib), &[]);
}

#[test]
fn a_library_that_is_not_onnx_runtime_is_refused() {
    common::runtime();
    common::models();
    let dir = tempfile::tempdir().unwrap();
    let lib = fake_runtime(dir.path(), "libsomething", None);
    run_child("not_ort", Some(&lib), &[]);
}

#[test]
fn an_explicit_folder_is_searched_for_the_library() {
    let runtime = common::runtime();
    let dir = runtime.path().parent().unwrap();
    run_child("explicit_dir", Some(dir), &[]);
}
