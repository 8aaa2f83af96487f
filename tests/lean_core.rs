//! The library's default build is the realtime core and nothing more: `cargo tree` of
//! `knnblend` with default features (normal and build edges, every target) may name only the
//! crates below. faiss (a C++ build), the CLI's argument and terminal crates, audio-file
//! decoding and `.npy` arrays must come in through opt-in features or other packages.

use std::collections::BTreeSet;
use std::process::Command;

/// Every crate the default build may depend on, directly or not, on any target.
const ALLOWED: &[&str] = &[
    "knnblend",
    // errors, hashing, metadata
    "thiserror",
    "thiserror-impl",
    "xxhash-rust",
    "serde",
    "serde_core",
    "serde_derive",
    "serde_json",
    "itoa",
    "memchr",
    "zmij",
    // proc-macro support of the derives above
    "proc-macro2",
    "quote",
    "syn",
    "unicode-ident",
    // memory maps, atomic file replacement, the OS seam
    "memmap2",
    "tempfile",
    "fastrand",
    "getrandom",
    "once_cell",
    "rustix",
    "linux-raw-sys",
    "errno",
    "bitflags",
    "libc",
    "cfg-if",
    "windows-sys",
    "windows-link",
    "windows-targets",
    "r-efi",
    "redox_syscall",
    "wasip2",
    "wit-bindgen",
    // the voice path's FFT
    "realfft",
    "rustfft",
    "num-complex",
    "num-integer",
    "num-traits",
    "autocfg",
    "primal-check",
    "strength_reduce",
    "transpose",
    // the live runtime: loader channel, control-side locks, the audio side's SPSC rings
    "crossbeam-channel",
    "crossbeam-utils",
    "parking_lot",
    "parking_lot_core",
    "lock_api",
    "scopeguard",
    "smallvec",
    "rtrb",
];

/// Crates that must never appear, named so a failure says what went wrong.
const FORBIDDEN: &[&str] = &[
    "faiss",
    "faiss-sys",
    "cmake",
    "cc",
    "clap",
    "indicatif",
    "console",
    "symphonia",
    "hound",
    "ndarray",
    "ndarray-npy",
];

fn default_tree() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--package",
            "knnblend",
            "--edges",
            "normal,build",
            "--target",
            "all",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn default_build_is_the_realtime_core() {
    let tree = default_tree();
    assert!(
        tree.contains("knnblend") && tree.contains("rtrb"),
        "cargo tree printed an unexpected listing: {tree:?}"
    );
    let forbidden: Vec<&String> = tree
        .iter()
        .filter(|c| FORBIDDEN.contains(&c.as_str()))
        .collect();
    assert!(
        forbidden.is_empty(),
        "the default build pulls in {forbidden:?}; put it behind an opt-in feature"
    );
    let unexpected: Vec<&String> = tree
        .iter()
        .filter(|c| !ALLOWED.contains(&c.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "the default build pulls in crates outside the allow-list: {unexpected:?}. If one is \
         truly needed by the realtime core, add it to ALLOWED in tests/lean_core.rs and say why"
    );
}

#[test]
fn the_allow_list_check_can_fail() {
    // Negative control: the same listing with the `build` feature must show faiss and the
    // decoders, so the check above is looking at the right tree.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "--package",
            "knnblend",
            "--features",
            "build",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["faiss", "symphonia", "hound", "ndarray-npy"] {
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "`--features build` should pull in {name}:\n{text}"
        );
    }
}
