//! `knnblend render --rvc-model … --contentvec … --index added.index in.wav out.wav`, run as a
//! user would, on stand-in ONNX models generated with the project's Python environment.

use std::path::{Path, PathBuf};
use std::process::Command;

use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf};
use knnblend::voice::{read_audio, write_wav_f32, Audio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The stand-in models (rvc/tests/fixtures/make_models.py in target/venv's Python).
fn stand_ins(dir: &Path) {
    let python = workspace().join("target/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let out = Command::new(&python)
        .arg(workspace().join("rvc/tests/fixtures/make_models.py"))
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_models.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn render_through_an_rvc_voice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    stand_ins(d);
    let rate = 48_000u32;
    let samples: Vec<f32> = (0..rate as usize)
        .map(|i| 0.3 * (i as f32 * 200.0 * std::f32::consts::TAU / rate as f32).sin())
        .collect();
    write_wav_f32(
        &d.join("in.wav"),
        &Audio {
            sample_rate: rate,
            channels: 1,
            samples,
        },
    )
    .unwrap();
    let mut s = 1u64;
    let rows: Vec<f32> = (0..1200 * 768)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 0.2
        })
        .collect();
    let index = d.join("added_IVF30_Flat_nprobe_1_test_v2.index");
    FaissIvf::build(768, rvc_nlist(1200), Metric::L2, &rows, &rows)
        .unwrap()
        .write(&index)
        .unwrap();

    let run = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_knnblend"));
        cmd.arg("render")
            .arg("--rvc-model")
            .arg(d.join("synth_v2_48k.onnx"))
            .arg("--contentvec")
            .arg(d.join("vec-768-layer-12.onnx"))
            .arg("--index")
            .arg(&index)
            .args([
                "--block-ms",
                "100",
                "--extra-ms",
                "500",
                "--pitch",
                "-3",
                "--ratio",
                "0.5",
            ])
            .args(extra)
            .arg(d.join("in.wav"))
            .arg(d.join("out.wav"));
        cmd.output().unwrap()
    };
    let out = run(&["--rmvpe", d.join("rmvpe.onnx").to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("through the RVC path") && stdout.contains("rmvpe"),
        "{stdout}"
    );
    let rendered = read_audio(&d.join("out.wav")).unwrap();
    assert_eq!(
        (rendered.sample_rate, rendered.frames()),
        (rate, rate as usize)
    );

    // A model of the wrong version for the features: refused by name, no output written.
    std::fs::remove_file(d.join("out.wav")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_knnblend"));
    let out = cmd
        .arg("render")
        .arg("--rvc-model")
        .arg(d.join("synth_v1_40k.onnx"))
        .arg("--contentvec")
        .arg(d.join("vec-768-layer-12.onnx"))
        .arg("--index")
        .arg(&index)
        .arg(d.join("in.wav"))
        .arg(d.join("out.wav"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("vec-256-layer-9.onnx"), "{stderr}");
    assert!(!d.join("out.wav").exists());
}
