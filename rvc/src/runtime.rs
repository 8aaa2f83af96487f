//! Finding and loading ONNX Runtime (`libonnxruntime`) at run time.
//!
//! `ort` is built with `load-dynamic`: nothing is linked or downloaded at build time, and the
//! library is opened here, once per process. ONNX Runtime's environment is process-global, so
//! the first successful [`OnnxRuntime::load_with`] (or any of its shorthands) decides which
//! library the process uses; later calls return the same [`OnnxRuntime`] whatever they ask for.
//! Loading is thread-safe and idempotent, and a failed search can be retried (say, after the
//! user installed the library).
//!
//! Search order ([`RuntimeSearch`]):
//! 1. an explicit path (a library file, or a folder holding one);
//! 2. `ORT_DYLIB_PATH` (same);
//! 3. `libonnxruntime.so*` in each folder given as "beside" — the plugin passes the folder of
//!    its own binary ([`OnnxRuntime::load_beside`]);
//! 4. this checkout's `target/venv/lib/python3*/site-packages/onnxruntime/capi/`, where
//!    `cargo xtask setup` installs the PyPI `onnxruntime` wheel.
//!
//! An explicit path and `ORT_DYLIB_PATH` must work when given: they are not skipped in favour of
//! a later place. Among the discovered places the first that holds a library is used.
//!
//! Before `ort` sees a library, it is opened here on its own and asked for its version and for
//! the API version `ort` needs, so a wrong or foreign library is reported as
//! [`RvcError::RuntimeIncompatible`] instead of panicking inside `ort` (whose global state would
//! then refuse any other library for the rest of the process). `ort`'s own initialisation still
//! runs under `catch_unwind`; should it panic anyway, the process is marked unusable and every
//! later load says so ([`RvcError::RuntimeUnusable`]).

use crate::error::RvcError;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The loaded ONNX Runtime: where it came from and its version, plus `ort`'s environment.
pub struct OnnxRuntime {
    path: PathBuf,
    version: String,
    environment: ort::environment::Environment,
}

impl std::fmt::Debug for OnnxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntime")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Where to look for the library; see the module docs for the order.
#[derive(Debug, Clone)]
pub struct RuntimeSearch {
    /// A library file, or a folder holding one. Must work when given.
    pub explicit: Option<PathBuf>,
    /// Honour `ORT_DYLIB_PATH` (on by default).
    pub use_env: bool,
    /// Folders that may hold the library (the plugin's own folder).
    pub beside: Vec<PathBuf>,
    /// Look in this checkout's `target/venv` (on by default).
    pub project_venv: bool,
}

impl Default for RuntimeSearch {
    fn default() -> Self {
        Self {
            explicit: None,
            use_env: true,
            beside: Vec::new(),
            project_venv: true,
        }
    }
}

/// The file name ONNX Runtime's shared library starts with on this platform.
#[cfg(target_os = "windows")]
const LIBRARY_PREFIX: &str = "onnxruntime";
#[cfg(target_os = "macos")]
const LIBRARY_PREFIX: &str = "libonnxruntime";
#[cfg(not(any(target_os = "windows", target_os = "macos")))]
const LIBRARY_PREFIX: &str = "libonnxruntime";

/// Whether `name` is ONNX Runtime's main library (not e.g. `libonnxruntime_providers_shared`).
fn is_library_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(LIBRARY_PREFIX) else {
        return false;
    };
    if cfg!(target_os = "windows") {
        rest == ".dll"
    } else if cfg!(target_os = "macos") {
        // libonnxruntime.dylib, libonnxruntime.1.32.0.dylib
        rest.ends_with(".dylib") && (rest == ".dylib" || rest.starts_with('.'))
    } else {
        // libonnxruntime.so, libonnxruntime.so.1, libonnxruntime.so.1.32.0
        rest == ".so" || rest.starts_with(".so.")
    }
}

/// The library in `dir`: the unversioned name when present, else the highest version.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            if !is_library_name(&name) || !entry.path().is_file() {
                return None;
            }
            let version: Vec<u32> = name
                .split('.')
                .filter_map(|part| part.parse().ok())
                .collect();
            Some((version, entry.path()))
        })
        .collect();
    // Unversioned (empty) sorts first; otherwise the highest version wins.
    found.sort();
    if found.first().is_some_and(|(v, _)| v.is_empty()) {
        return found.into_iter().next().map(|(_, p)| p);
    }
    found.pop().map(|(_, p)| p)
}

/// `<workspace>/target/venv/lib/python3*/site-packages/onnxruntime/capi`, every match.
fn project_venv_dirs() -> (String, Vec<PathBuf>) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")));
    let lib = workspace.join("target").join("venv").join("lib");
    let pattern = lib
        .join("python3*")
        .join("site-packages")
        .join("onnxruntime")
        .join("capi");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                .map(|e| {
                    e.path()
                        .join("site-packages")
                        .join("onnxruntime")
                        .join("capi")
                })
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    (pattern.display().to_string(), dirs)
}

/// One step of the search.
enum Step {
    /// A place that must work when given (explicit path, `ORT_DYLIB_PATH`).
    Required { what: String, path: PathBuf },
    /// A folder that may hold the library.
    Optional { what: String, dirs: Vec<PathBuf> },
}

impl RuntimeSearch {
    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        if let Some(path) = &self.explicit {
            steps.push(Step::Required {
                what: format!("the given path {}", path.display()),
                path: path.clone(),
            });
        }
        if self.use_env {
            if let Some(value) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
                let path = PathBuf::from(value);
                steps.push(Step::Required {
                    what: format!("ORT_DYLIB_PATH={}", path.display()),
                    path,
                });
            }
        }
        for dir in &self.beside {
            steps.push(Step::Optional {
                what: format!("{}/{LIBRARY_PREFIX}*", dir.display()),
                dirs: vec![dir.clone()],
            });
        }
        if self.project_venv {
            let (pattern, dirs) = project_venv_dirs();
            steps.push(Step::Optional {
                what: pattern,
                dirs,
            });
        }
        steps
    }
}

/// The result of the first successful load.
static RUNTIME: OnceLock<OnnxRuntime> = OnceLock::new();
/// Serialises loads; holds the reason when `ort` panicked and the process cannot load again.
static LOADING: Mutex<Option<String>> = Mutex::new(None);

impl OnnxRuntime {
    /// Loads ONNX Runtime: `explicit` (a file or a folder) when given, else `ORT_DYLIB_PATH`,
    /// else this checkout's `target/venv`.
    pub fn load(explicit: Option<&Path>) -> Result<&'static OnnxRuntime, RvcError> {
        Self::load_with(&RuntimeSearch {
            explicit: explicit.map(Path::to_path_buf),
            ..RuntimeSearch::default()
        })
    }

    /// Loads ONNX Runtime from `ORT_DYLIB_PATH`, else from `libonnxruntime.so*` in `dir` (the
    /// plugin passes the folder of its own binary), else from this checkout's `target/venv`.
    pub fn load_beside(dir: &Path) -> Result<&'static OnnxRuntime, RvcError> {
        Self::load_with(&RuntimeSearch {
            beside: vec![dir.to_path_buf()],
            ..RuntimeSearch::default()
        })
    }

    /// The runtime if one is loaded.
    pub fn get() -> Option<&'static OnnxRuntime> {
        RUNTIME.get()
    }

    /// The loaded runtime, or the default search ([`OnnxRuntime::load`] with no path) when none
    /// is loaded yet. Every model opens through this.
    pub fn get_or_load() -> Result<&'static OnnxRuntime, RvcError> {
        match RUNTIME.get() {
            Some(runtime) => Ok(runtime),
            None => Self::load(None),
        }
    }

    /// Searches as `search` says and loads the first library found. Once a runtime is loaded
    /// this returns it whatever `search` says (the process can hold only one).
    pub fn load_with(search: &RuntimeSearch) -> Result<&'static OnnxRuntime, RvcError> {
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime);
        }
        let mut poisoned = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(runtime) = RUNTIME.get() {
            return Ok(runtime);
        }
        if let Some(reason) = poisoned.as_ref() {
            return Err(RvcError::RuntimeUnusable {
                reason: reason.clone(),
            });
        }
        let mut searched = Vec::new();
        for step in search.steps() {
            match step {
                Step::Required { what, path } => {
                    let file = if path.is_dir() {
                        library_in(&path)
                    } else {
                        Some(path.clone()).filter(|p| p.exists())
                    };
                    match file {
                        Some(file) => return Self::init(&file, &mut poisoned),
                        None => {
                            searched.push(format!("{what}: not found"));
                            return Err(RvcError::RuntimeNotFound { searched });
                        }
                    }
                }
                Step::Optional { what, dirs } => {
                    if let Some(file) = dirs.iter().find_map(|d| library_in(d)) {
                        return Self::init(&file, &mut poisoned);
                    }
                    searched.push(format!("{what}: nothing there"));
                }
            }
        }
        Err(RvcError::RuntimeNotFound { searched })
    }

    /// Checks `path` on its own, then hands it to `ort` and builds the environment.
    fn init(path: &Path, poisoned: &mut Option<String>) -> Result<&'static OnnxRuntime, RvcError> {
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let version = probe_library(&path)?;
        // ort opens the library into its process-global slot. When that fails nothing is kept,
        // and another library may be tried.
        let builder = match catch_unwind(AssertUnwindSafe(|| ort::init_from(&path))) {
            Ok(Ok(builder)) => builder,
            Ok(Err(e)) => {
                return Err(RvcError::RuntimeIncompatible {
                    path,
                    version,
                    reason: e.to_string(),
                })
            }
            Err(panic) => {
                return Err(Self::poison(poisoned, &path, &version, &*panic));
            }
        };
        // From here on ort holds this library for the rest of the process: a failure means no
        // other library can be loaded.
        let built = catch_unwind(AssertUnwindSafe(|| {
            builder
                .with_name("knnblend-rvc")
                .with_telemetry(false)
                .build()
        }));
        let environment = match built {
            Ok(Ok(environment)) => environment,
            Ok(Err(e)) => {
                let reason = format!(
                    "ort loaded {} (version {version}) but could not create its environment \
                     ({e}); ONNX Runtime cannot be loaded again in this process: restart the host",
                    path.display()
                );
                *poisoned = Some(reason.clone());
                return Err(RvcError::RuntimeUnusable { reason });
            }
            Err(panic) => return Err(Self::poison(poisoned, &path, &version, &*panic)),
        };
        let runtime = OnnxRuntime {
            path,
            version,
            environment,
        };
        Ok(RUNTIME.get_or_init(|| runtime))
    }

    /// Records that ort panicked while loading `path`: the process cannot load again.
    fn poison(
        poisoned: &mut Option<String>,
        path: &Path,
        version: &str,
        panic: &(dyn std::any::Any + Send),
    ) -> RvcError {
        let reason = format!(
            "loading {} (version {version}) panicked inside ort ({}); ONNX Runtime cannot be \
             loaded again in this process: fix the library and restart the host",
            path.display(),
            panic_message(panic)
        );
        *poisoned = Some(reason.clone());
        RvcError::RuntimeUnusable { reason }
    }

    /// The library file that was loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version the library reports (e.g. `1.32.0`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `ort`'s environment, for creating sessions.
    pub(crate) fn environment(&self) -> &ort::environment::Environment {
        &self.environment
    }
}

/// Opens `path` with the dynamic loader and asks it what `ort` will ask, without touching
/// `ort`'s global state: its version string, and the API version `ort` needs. Returns the
/// version.
fn probe_library(path: &Path) -> Result<String, RvcError> {
    type GetApiBase = unsafe extern "system" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: loading a shared library runs its initialisers; the file is the one the user
    // (or the search) chose to run as ONNX Runtime, which ort would load the same way.
    let library = unsafe { libloading::Library::new(path) }.map_err(|e| RvcError::RuntimeLoad {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let incompatible = |version: &str, reason: String| RvcError::RuntimeIncompatible {
        path: path.to_path_buf(),
        version: version.to_string(),
        reason,
    };
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release.
    let get_base = unsafe { library.get::<GetApiBase>(b"OrtGetApiBase") }.map_err(|_| {
        incompatible(
            "unknown",
            "it does not export `OrtGetApiBase`, so it is not ONNX Runtime".into(),
        )
    })?;
    // SAFETY: a null result is checked; the struct is static inside the library.
    let base = unsafe { get_base() };
    if base.is_null() {
        return Err(incompatible(
            "unknown",
            "`OrtGetApiBase` returned null".into(),
        ));
    }
    // SAFETY: `base` is a valid OrtApiBase; the version string is static and NUL-terminated.
    let raw = unsafe { ((*base).GetVersionString)() };
    if raw.is_null() {
        return Err(incompatible("unknown", "it reports no version".into()));
    }
    // SAFETY: checked non-null above.
    let version = match unsafe { CStr::from_ptr(raw) }.to_str() {
        Ok(v) => v.to_string(),
        Err(_) => return Err(incompatible("unknown", "its version is not UTF-8".into())),
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    match (major, minor) {
        (Some(1), Some(minor)) if minor >= ort::MINOR_VERSION => {}
        _ => {
            return Err(incompatible(
                &version,
                format!(
                    "ort {} needs ONNX Runtime 1.{} or newer",
                    ORT_CRATE_VERSION,
                    ort::MINOR_VERSION
                ),
            ))
        }
    }
    // SAFETY: `base` is valid; GetApi returns null for API versions it does not provide.
    let api = unsafe { ((*base).GetApi)(ort::MINOR_VERSION) };
    if api.is_null() {
        return Err(incompatible(
            &version,
            format!(
                "it does not provide ONNX Runtime API version {}",
                ort::MINOR_VERSION
            ),
        ));
    }
    drop(library);
    Ok(version)
}

/// The `ort` crate this is built against (for messages).
const ORT_CRATE_VERSION: &str = "2.0.0-rc.15";

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_names() {
        assert!(is_library_name("libonnxruntime.so"));
        assert!(is_library_name("libonnxruntime.so.1.32.0"));
        assert!(!is_library_name("libonnxruntime_providers_shared.so"));
        assert!(!is_library_name("libonnxruntime.sox"));
        assert!(!is_library_name("onnxruntime.so"));
    }

    #[test]
    fn a_folder_prefers_the_plain_name_then_the_highest_version() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime_providers_shared.so",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            library_in(dir.path()).unwrap().file_name().unwrap(),
            "libonnxruntime.so.1.32.0"
        );
        std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(
            library_in(dir.path()).unwrap().file_name().unwrap(),
            "libonnxruntime.so"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(library_in(empty.path()).is_none());
    }
}
