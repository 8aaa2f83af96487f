//! Files changing underneath a serving index: replaced by an atomic rename, deleted, or still
//! being written by another program while it is loaded.

#[path = "live_support/mod.rs"]
mod support;

use std::io::Write;

use knnblend::live::{live, AudioEngine, Controller, LiveConfig, LoadError, LoadOutcome};
use support::*;

fn runtime() -> (Controller, AudioEngine) {
    live(LiveConfig {
        slots: 2,
        max_dim: SMALL_DIM,
        ..LiveConfig::default()
    })
}

fn serve(audio: &mut AudioEngine, control: &Controller) -> f32 {
    control.collect();
    audio.begin_block(0, 0.0);
    let mut last = 0.0;
    for _ in 0..200 {
        last = served(audio);
    }
    audio.end_block();
    last
}

#[test]
fn a_file_replaced_by_rename_keeps_serving_its_old_contents_until_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "voice.kbi", &small(2000), 100.0);
    let (control, mut audio) = runtime();
    assert!(matches!(
        control.load(0, &path).wait(),
        LoadOutcome::Published(_)
    ));
    assert!(close(serve(&mut audio, &control), 100.0));

    // write_kbi replaces by rename: the mapping keeps the old inode.
    write(dir.path(), "voice.kbi", &small(3000), 200.0);
    assert!(
        close(serve(&mut audio, &control), 100.0),
        "the old contents keep serving"
    );
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        maps.contains("voice.kbi (deleted)"),
        "the mapping holds the replaced file"
    );

    let LoadOutcome::Published(info) = control.load(0, &path).wait() else {
        panic!()
    };
    assert_eq!(
        info.ntotal, 3000,
        "loading the path again reads the new file"
    );
    assert!(close(serve(&mut audio, &control), 200.0));
    control.collect();
    assert_eq!(
        mappings_under(dir.path()),
        1,
        "the replaced file's mapping is gone"
    );
}

#[test]
fn a_deleted_file_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gone.kbi", &small(2000), 300.0);
    let (control, mut audio) = runtime();
    assert!(matches!(
        control.load(0, &path).wait(),
        LoadOutcome::Published(_)
    ));
    std::fs::remove_file(&path).unwrap();
    for _ in 0..20 {
        assert!(close(serve(&mut audio, &control), 300.0));
    }
    // Loading the missing path again fails cleanly and leaves the mapped index serving.
    let LoadOutcome::Failed(e) = control.load(0, &path).wait() else {
        panic!()
    };
    assert!(matches!(*e, LoadError::Io { .. }), "{e}");
    assert!(close(serve(&mut audio, &control), 300.0));
}

/// Another program writes an index file in place, in chunks (as `cp` does), while it is being
/// loaded again and again: every load either fails with a typed error or yields the complete
/// index, never a crash or a partial index.
#[test]
fn a_file_being_written_loads_completely_or_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let source = write(dir.path(), "source.kbi", &small(20_000), 400.0);
    let bytes = std::fs::read(&source).unwrap();
    let target = dir.path().join("copying.kbi");
    let (control, _audio) = runtime();

    let writer = {
        let (bytes, target) = (bytes.clone(), target.clone());
        std::thread::spawn(move || {
            for _ in 0..10 {
                let mut f = std::fs::File::create(&target).unwrap(); // truncates in place
                for chunk in bytes.chunks(64 * 1024) {
                    f.write_all(chunk).unwrap();
                    f.flush().unwrap();
                    std::thread::sleep(std::time::Duration::from_micros(300));
                }
                drop(f);
                std::thread::sleep(std::time::Duration::from_millis(5)); // complete for a moment
            }
        })
    };
    let (mut complete, mut refused) = (0, std::collections::BTreeMap::<String, usize>::new());
    while !writer.is_finished() {
        match control.prepare(&target, |_, _| {}) {
            Ok(p) => {
                assert_eq!(p.info().ntotal, 20_000);
                assert_eq!(identity_of(p.index()), 400.0);
                complete += 1;
            }
            Err(e) => {
                assert!(
                    matches!(
                        e,
                        LoadError::Busy { .. }
                            | LoadError::Format { .. }
                            | LoadError::Changed { .. }
                            | LoadError::Io { .. }
                    ),
                    "{e}"
                );
                let kind = format!("{e:?}");
                *refused
                    .entry(kind.split([' ', '{']).next().unwrap().to_string())
                    .or_default() += 1;
            }
        }
    }
    writer.join().unwrap();
    println!("while being written: {complete} complete loads, clean refusals: {refused:?}");
    assert!(!refused.is_empty(), "no load overlapped the writer");
}
