//! Offline rendering through the realtime RVC path: a file in, a latency-compensated file out
//! of the same length, the same samples whatever the host buffer, clear errors for bad files.

mod common;

use std::path::Path;

use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf};
use knnblend::voice::{read_audio, write_wav_f32, Audio};
use knnblend_rvc::render::{render_file, RvcRenderOptions};

use common::{model, runtime, Rng};

fn write_input(path: &Path, rate: u32, seconds: f32) {
    let n = (rate as f32 * seconds) as usize;
    let samples: Vec<f32> = (0..n)
        .flat_map(|i| {
            let t = i as f32 / rate as f32;
            let v = 0.3 * (2.0 * ((t * 150.0).fract() - 0.5)) * (0.6 + 0.4 * (t * 2.0).sin());
            [v, v]
        })
        .collect();
    write_wav_f32(
        path,
        &Audio {
            sample_rate: rate,
            channels: 2,
            samples,
        },
    )
    .unwrap();
}

fn write_index(path: &Path, dim: usize) {
    let mut rng = Rng::new(11);
    let n = 1500;
    let rows: Vec<f32> = (0..n * dim).map(|_| rng.next_f32() * 0.2).collect();
    FaissIvf::build(dim, rvc_nlist(n), Metric::L2, &rows, &rows)
        .unwrap()
        .write(path)
        .unwrap();
}

fn options(dir: &Path, host_block: usize) -> RvcRenderOptions {
    let mut o = RvcRenderOptions::new(
        dir.join("in.wav"),
        dir.join(format!("out-{host_block}.wav")),
        model("synth_v2_40k.onnx"),
        model("vec-768-layer-12.onnx"),
        dir.join("added_IVF38_Flat_nprobe_1_v2.index"),
    );
    o.block_seconds = 0.1;
    o.extra_seconds = 0.5;
    o.host_block = host_block;
    o
}

#[test]
fn a_file_renders_to_the_same_length_whatever_the_host_buffer() {
    runtime();
    let dir = tempfile::tempdir().unwrap();
    write_input(&dir.path().join("in.wav"), 44_100, 1.5);
    write_index(&dir.path().join("added_IVF38_Flat_nprobe_1_v2.index"), 768);
    let a = render_file(&options(dir.path(), 512)).unwrap();
    let b = render_file(&options(dir.path(), 100)).unwrap();
    assert_eq!(a.latency_samples, b.latency_samples);
    assert_eq!(
        (a.model_rate, a.dim, a.f0, a.f0_method),
        (40_000, 768, true, "builtin")
    );
    assert_eq!(a.model_errors, 0);
    let input = read_audio(&dir.path().join("in.wav")).unwrap();
    let out_a = read_audio(&dir.path().join("out-512.wav")).unwrap();
    let out_b = read_audio(&dir.path().join("out-100.wav")).unwrap();
    assert_eq!(out_a.sample_rate, 44_100);
    assert_eq!(out_a.channels, 2);
    assert_eq!(out_a.frames(), input.frames());
    assert_eq!(out_a.samples, out_b.samples);
    assert!(out_a.samples.iter().all(|v| v.is_finite()));
    let energy: f32 = out_a.samples.iter().map(|v| v * v).sum();
    assert!(energy > 1.0, "the render is silent ({energy})");
}

#[test]
fn bad_files_give_clear_errors() {
    runtime();
    let dir = tempfile::tempdir().unwrap();
    write_input(&dir.path().join("in.wav"), 44_100, 0.5);
    let index = dir.path().join("added_IVF38_Flat_nprobe_1_v2.index");
    write_index(&index, 768);

    // A corrupt model.
    let mut o = options(dir.path(), 512);
    o.model = model("synth_truncated.onnx");
    let e = render_file(&o).unwrap_err().to_string();
    assert!(e.contains("synth_truncated.onnx"), "{e}");

    // An index of the wrong features.
    let small = dir.path().join("added_small_v1.index");
    write_index(&small, 256);
    let mut o = options(dir.path(), 512);
    o.index = small;
    let e = render_file(&o).unwrap_err().to_string();
    assert!(e.contains("256") && e.contains("768"), "{e}");

    // A missing input.
    let mut o = options(dir.path(), 512);
    o.input = dir.path().join("nope.wav");
    let e = render_file(&o).unwrap_err().to_string();
    assert!(e.contains("nope.wav"), "{e}");
    assert!(!dir.path().join("out-512.wav").exists());
}
