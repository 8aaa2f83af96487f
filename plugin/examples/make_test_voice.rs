//! Writes a small test voice index (`.kbi`) built with the library, for host tests that cannot
//! call the library themselves (the VST3 test in Python).
//!
//! `make_test_voice OUT.kbi [high|low]`

#[path = "../tests/common/voice.rs"]
mod voice;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(out) = args.next() else {
        eprintln!("usage: make_test_voice OUT.kbi [high|low]");
        std::process::exit(2);
    };
    let high = args.next().as_deref() != Some("low");
    let out = std::path::PathBuf::from(out);
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = out
        .file_name()
        .expect("a file name")
        .to_string_lossy()
        .into_owned();
    let path = voice::make_voice(dir, &name, high);
    println!("{}", path.display());
}
