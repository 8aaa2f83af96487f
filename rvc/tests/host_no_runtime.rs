//! The voice host without a usable ONNX Runtime (its own test binary: nothing here may load
//! one, and the runtime is process-wide once loaded): a slot's voice is refused with a message
//! saying what was searched and how to get the library, telemetry carries the same reason, and
//! audio passes through, delayed by the reported latency, never converted.

mod common;

use std::time::{Duration, Instant};

use knnblend_rvc::host::{host, BlockParams, HostConfig, VoiceState};
use knnblend_rvc::runtime::RuntimeSearch;
use knnblend_rvc::voice::VoiceFiles;

use common::model;

#[test]
fn missing_and_broken_runtimes_are_messages_and_audio_passes_through() {
    let dir = tempfile::tempdir().unwrap();
    // A "library" that is not one, beside the plugin: incompatible, not a crash.
    let broken = dir.path().join("libonnxruntime.so");
    std::fs::write(&broken, b"\x7fELF but not really a shared library").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let cases = [
        (
            "missing",
            RuntimeSearch {
                explicit: None,
                use_env: false,
                beside: vec![empty.path().to_path_buf()],
                project_venv: false,
            },
        ),
        (
            "broken",
            RuntimeSearch {
                explicit: None,
                use_env: false,
                beside: vec![dir.path().to_path_buf()],
                project_venv: false,
            },
        ),
    ];
    for (case, search) in cases {
        let p = BlockParams {
            block_seconds: 0.1,
            extra_seconds: 0.3,
            sola_seconds: 0.04,
            ..BlockParams::default()
        };
        let (control, mut audio) = host(HostConfig {
            host_rate: 44_100,
            runtime: search,
            seed: 1,
            initial: p,
        })
        .unwrap();
        control.set(
            0,
            Some(VoiceFiles {
                model: model("synth_v2_40k.onnx"),
                index: dir.path().join("added.index"),
                contentvec: model("vec-768-layer-12.onnx"),
                rmvpe: None,
            }),
        );
        let latency = audio.latency();
        assert!(
            latency > 0,
            "{case}: the latency follows the times even without a voice"
        );
        let began = Instant::now();
        let (mut input, mut output) = (Vec::new(), Vec::new());
        let mut at = 0usize;
        loop {
            let mut buffer: Vec<f32> = (0..441).map(|i| ((at + i) as f32 * 0.01).sin()).collect();
            input.extend_from_slice(&buffer);
            audio.process(&mut [&mut buffer[..]], &p);
            output.extend_from_slice(&buffer);
            at += 441;
            if let VoiceState::Failed(why) = control.status(0).state {
                assert!(why.contains("ONNX Runtime"), "{case}: {why}");
                assert!(
                    why.contains("cargo xtask setup")
                        || why.contains(&*dir.path().to_string_lossy()),
                    "{case}: {why}"
                );
                break;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "{case}: the slot never failed: {:?}",
                control.status(0)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!audio.is_serving(), "{case}");
        let runtime = control.telemetry().runtime;
        assert!(matches!(runtime, Some(Err(_))), "{case}: {runtime:?}");
        for i in latency..output.len() {
            assert_eq!(output[i], input[i - latency], "{case}: pass-through at {i}");
        }
    }
}
