//! `capi/include/knnblend.h` is what cbindgen generates from this crate's source now: the test
//! regenerates it into memory and fails when the committed file differs. `KNNBLEND_BLESS=1`
//! rewrites the committed file instead.

use std::path::Path;

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    // Parsed from the source files (no `cargo metadata`, which would need cargo's locks).
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen could not generate the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("the header is UTF-8");
    let path = dir.join("include/knnblend.h");
    if std::env::var_os("KNNBLEND_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &fresh).expect("cannot write the header");
        println!("rewrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(fresh.lines().count()));
        panic!(
            "{} is stale: it differs from what cbindgen generates from capi/src, from line {} \
             on:\n  committed: {:?}\n  generated: {:?}\nRegenerate it with \
             `KNNBLEND_BLESS=1 cargo test -p knnblend-capi --test header` and commit it.",
            path.display(),
            line + 1,
            committed.lines().nth(line).unwrap_or("<end of file>"),
            fresh.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
    // Every exported function is declared (cbindgen skips what it cannot express).
    for f in [
        "kb_live_new",
        "kb_audio_blend_block",
        "kb_search_block",
        "kb_ticket_poll",
    ] {
        assert!(
            fresh.contains(&format!("{f}(")),
            "{f} is missing from the header"
        );
    }
}
