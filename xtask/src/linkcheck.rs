//! Proof that a plugin binary does not contain or load faiss.
//!
//! The plugin depends on the library with default features off, so faiss must not reach it.
//! A faiss build (static, as the `faiss` crate does it) leaves traces that survive in a
//! debug binary: its C API (`faiss_*`), its C++ namespace (`N5faiss` in mangled names), the
//! `faiss` Rust crate (legacy mangling `_ZN5faiss`), and the shared libraries it pulls in
//! (BLAS, LAPACK, OpenMP). The library's own faiss *file reader* is plain Rust in
//! `knnblend::format` and matches none of these (its symbols look like
//! `_ZN8knnblend6format...faiss...`).

use anyhow::{bail, Context, Result};
use std::path::Path;

/// What the check saw in one binary.
#[derive(Debug, Default)]
pub struct LinkReport {
    /// DT_NEEDED entries (shared libraries the binary loads).
    pub needed: Vec<String>,
    /// Number of symbols inspected (static and dynamic tables).
    pub symbols: usize,
    /// Whether the static symbol table was present (absent in stripped binaries).
    pub has_symtab: bool,
    /// Symbols and libraries that betray faiss.
    pub offending: Vec<String>,
}

/// Shared libraries that only a faiss build would bring into the plugin.
const FAISS_LIBRARIES: &[&str] = &["libfaiss", "libblas", "liblapack", "libopenblas", "libgomp"];

/// True for a symbol name that belongs to faiss (C API, C++ namespace or the Rust crate).
pub fn is_faiss_symbol(name: &str) -> bool {
    name.starts_with("faiss_") || name.contains("N5faiss") || name.contains("NK5faiss")
}

/// True for a DT_NEEDED entry that faiss would bring in.
pub fn is_faiss_library(name: &str) -> bool {
    FAISS_LIBRARIES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Inspects an ELF shared library.
pub fn inspect(path: &Path) -> Result<LinkReport> {
    let bytes =
        std::fs::read(path).with_context(|| format!("could not read {}", path.display()))?;
    let elf = goblin::elf::Elf::parse(&bytes)
        .with_context(|| format!("{} is not an ELF shared library", path.display()))?;
    let mut report = LinkReport {
        needed: elf.libraries.iter().map(|s| s.to_string()).collect(),
        has_symtab: !elf.syms.is_empty(),
        ..LinkReport::default()
    };
    for lib in &report.needed {
        if is_faiss_library(lib) {
            report.offending.push(format!("needs {lib}"));
        }
    }
    let names = elf
        .syms
        .iter()
        .filter_map(|s| elf.strtab.get_at(s.st_name))
        .chain(
            elf.dynsyms
                .iter()
                .filter_map(|s| elf.dynstrtab.get_at(s.st_name)),
        );
    for name in names {
        report.symbols += 1;
        if is_faiss_symbol(name) && report.offending.len() < 20 {
            report.offending.push(format!("symbol {name}"));
        }
    }
    Ok(report)
}

/// Fails loudly when the binary at `path` contains or loads faiss.
pub fn assert_no_faiss(path: &Path) -> Result<LinkReport> {
    let report = inspect(path)?;
    if !report.offending.is_empty() {
        bail!(
            "{} links faiss — the plugin must depend on the library with default features off \
             (`knnblend = {{ path = \"..\", default-features = false }}`) and nothing may turn \
             the `faiss` feature back on. Evidence:\n  {}",
            path.display(),
            report.offending.join("\n  ")
        );
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faiss_symbols_are_recognised() {
        for name in [
            "faiss_Index_search",
            "faiss_IndexIVFFlat_new",
            "_ZN5faiss12IndexIVFFlat6searchElPKflPfPlPKNS_16SearchParametersE",
            "_ZNK5faiss8IndexIVF11range_searchElPKffPNS_17RangeSearchResultE",
            "_ZNSt6vectorIN5faiss11IndexBinaryESaIS1_EE",
            "_ZN5faiss5index8IndexImpl6search17h0123456789abcdefE",
        ] {
            assert!(is_faiss_symbol(name), "{name}");
        }
    }

    #[test]
    fn the_librarys_own_faiss_reader_is_not_faiss() {
        for name in [
            "_ZN8knnblend6format16read_faiss_index17h0123456789abcdefE",
            "_ZN8knnblend6format5faiss6reader4read17h0123456789abcdefE",
            "_ZN4core3ptr47drop_in_place$LT$knnblend..format..FileKind$GT$17h01E",
            "clap_entry",
            "GetPluginFactory",
        ] {
            assert!(!is_faiss_symbol(name), "{name}");
        }
    }

    #[test]
    fn faiss_runtime_libraries_are_recognised() {
        assert!(is_faiss_library("libgomp.so.1"));
        assert!(is_faiss_library("libblas.so.3"));
        assert!(is_faiss_library("liblapack.so.3"));
        assert!(!is_faiss_library("libc.so.6"));
        assert!(!is_faiss_library("libgcc_s.so.1"));
        assert!(!is_faiss_library("libm.so.6"));
    }

    #[test]
    fn a_rust_binary_without_faiss_passes() {
        // The test binary itself is an ELF file that certainly does not link faiss.
        let exe = std::env::current_exe().unwrap();
        let report = assert_no_faiss(&exe).unwrap();
        assert!(report.symbols > 0);
    }

    #[test]
    fn a_library_with_faiss_symbols_fails() {
        // A tiny shared library exporting a faiss C API name and linking libgomp stands in
        // for a plugin that accidentally links faiss.
        let dir = std::env::temp_dir().join(format!("xtask-linkcheck-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("fake.c");
        let library = dir.join("libfake.so");
        std::fs::write(&source, "int faiss_Index_search(void) { return 0; }\n").unwrap();
        let built = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&library)
            .arg(&source)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            eprintln!("no C compiler; cannot build the faiss stand-in");
            return;
        }
        let err = assert_no_faiss(&library).unwrap_err().to_string();
        assert!(err.contains("symbol faiss_Index_search"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_elf_input_is_an_error() {
        let err = inspect(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("Cargo.toml")
                .as_path(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("not an ELF"), "{err}");
    }
}
