//! `knnblend build`: RVC's recipe on feature folders (compared with faiss on the same rows and
//! seed), and voice indexes from recordings.

mod voice_common;

use std::path::{Path, PathBuf};

use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf, IvfIndex, Searcher};
use knnblend::voice::build::{normalise_rows, VectorLayout};
use knnblend::voice::shuffle::shuffle_rows;
use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend::voice::{
    build_from_audio, build_from_npy, write_wav_f32, AlphaExpand, Audio, BuildError, BuildOptions,
    FeatureSpec,
};
use ndarray::Array2;
use ndarray_npy::WriteNpyExt;

/// Clustered Gaussian rows, deterministic.
fn clustered(n: usize, dim: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut gauss = move || {
        let mut u = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        let (a, b) = (u(), u());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    };
    let centres: Vec<f32> = (0..clusters * dim).map(|_| 3.0 * gauss()).collect();
    let mut rows = Vec::with_capacity(n * dim);
    for i in 0..n {
        let c = (i * 7919) % clusters;
        for d in 0..dim {
            rows.push(centres[c * dim + d] + gauss());
        }
    }
    rows
}

fn write_npy(path: &Path, rows: &[f32], dim: usize) {
    let a = Array2::from_shape_vec((rows.len() / dim, dim), rows.to_vec()).unwrap();
    a.write_npy(std::fs::File::create(path).unwrap()).unwrap();
}

/// An RVC experiment folder with the rows split over three files (written out of order).
fn experiment(dir: &Path, rows: &[f32], dim: usize) -> PathBuf {
    let exp = dir.join("exp");
    let feat = exp.join(if dim == 768 {
        "3_feature768"
    } else {
        "3_feature256"
    });
    std::fs::create_dir_all(&feat).unwrap();
    let n = rows.len() / dim;
    let cuts = [0, n / 3, 2 * n / 3, n];
    for (part, name) in [(1, "1_b.npy"), (0, "0_a.npy"), (2, "2_c.npy")] {
        write_npy(
            &feat.join(name),
            &rows[cuts[part] * dim..cuts[part + 1] * dim],
            dim,
        );
    }
    exp
}

/// Fraction of faiss's top-k ids that our search of the written file also returns.
fn agreement(path: &Path, oracle: &mut FaissIvf, queries: &[f32], dim: usize, k: usize) -> f64 {
    let index = IvfIndex::open(path).unwrap();
    oracle.set_nprobe(1);
    let (_, theirs) = oracle.search(queries, k).unwrap();
    let mut searcher = Searcher::new();
    let (mut same, mut total) = (0usize, 0usize);
    for (q, want) in queries.chunks_exact(dim).zip(theirs.chunks_exact(k)) {
        let ours: Vec<i64> = searcher
            .search(&index, q, k, 1)
            .iter()
            .map(|n| n.id)
            .collect();
        for id in want.iter().filter(|&&id| id >= 0) {
            total += 1;
            same += ours.contains(id) as usize;
        }
    }
    same as f64 / total as f64
}

fn rvc_parity(dim: usize, n: usize, metric: Metric) {
    let dir = tempfile::tempdir().unwrap();
    let rows = clustered(n, dim, 30, dim as u64);
    let exp = experiment(dir.path(), &rows, dim);
    let out = dir.path().join("voice.kbi");
    let opts = BuildOptions {
        metric,
        seed: 1234,
        ..BuildOptions::default()
    };
    let summary = build_from_npy(&[exp], &out, &opts, &mut |_, _, _| {}).unwrap();
    assert_eq!(
        (summary.dim, summary.vectors, summary.input_frames),
        (dim, n, n)
    );
    assert_eq!(summary.nlist, rvc_nlist(n));

    // The same recipe by hand, with faiss: sorted files, numpy's seeded shuffle, IVF-Flat.
    let mut same_rows = shuffle_rows(&rows, dim, 1234);
    if metric == Metric::InnerProduct {
        normalise_rows(&mut same_rows, dim, VectorLayout::Plain);
    }
    let mut oracle = FaissIvf::build(dim, rvc_nlist(n), metric, &same_rows, &same_rows).unwrap();
    let queries = clustered(300, dim, 30, dim as u64 + 99);
    let a = agreement(&out, &mut oracle, &queries, dim, 8);
    println!(
        "dim {dim}, {n} rows, {metric:?}: {:.2} % of faiss's ids",
        100.0 * a
    );
    assert!(a >= 0.995, "only {:.2} % of faiss's ids", 100.0 * a);

    let index = IvfIndex::open(&out).unwrap();
    let meta = index.metadata();
    assert_eq!(
        meta.features,
        if dim == 768 {
            "rvc-v2-768"
        } else {
            "rvc-v1-256"
        }
    );
    assert_eq!(meta.sources, ["0_a.npy", "1_b.npy", "2_c.npy"]);
    assert_eq!(meta.frames, n as u64);
    assert_eq!((index.nprobe(), index.metric()), (1, metric));
}

#[test]
fn rvc_v2_recipe_matches_faiss() {
    rvc_parity(768, 2400, Metric::L2);
}

#[test]
fn rvc_v1_recipe_matches_faiss_with_cosine_too() {
    rvc_parity(256, 3000, Metric::L2);
    rvc_parity(256, 3000, Metric::InnerProduct);
}

#[test]
fn compression_expansion_and_nlist_options() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 256;
    let rows = clustered(2000, dim, 20, 5);
    let exp = experiment(dir.path(), &rows, dim);
    let out = dir.path().join("c.kbi");
    let opts = BuildOptions {
        compress: Some(100),
        nlist: Some(4),
        metric: Metric::InnerProduct,
        alpha_expand: Some(AlphaExpand { k: 5, alpha: 3.0 }),
        ..BuildOptions::default()
    };
    let s = build_from_npy(std::slice::from_ref(&exp), &out, &opts, &mut |_, _, _| {}).unwrap();
    assert_eq!((s.vectors, s.nlist, s.input_frames), (100, 4, 2000));
    let index = IvfIndex::open(&out).unwrap();
    for v in index.vectors().chunks_exact(dim) {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "cosine rows are unit length after expansion: {norm}"
        );
    }
    let recipe = &index.metadata().extra["recipe"];
    assert_eq!(recipe["compressed_to"], 100);
    for bad in [
        BuildOptions {
            nlist: Some(0),
            ..BuildOptions::default()
        },
        BuildOptions {
            alpha_expand: Some(AlphaExpand { k: 0, alpha: 1.0 }),
            ..BuildOptions::default()
        },
    ] {
        let e =
            build_from_npy(std::slice::from_ref(&exp), &out, &bad, &mut |_, _, _| {}).unwrap_err();
        assert!(matches!(e, BuildError::Options(_)), "{e}");
    }
}

#[test]
fn voice_indexes_from_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let voices = dir.path().join("voices");
    std::fs::create_dir_all(voices.join("more")).unwrap();
    let a = synth_voice(&VoiceParams::high().with_seed(1), 22_050.0, 2.0);
    write_wav_f32(&voices.join("a.wav"), &Audio::from_channels(&[a], 22_050)).unwrap();
    let b = synth_voice(&VoiceParams::high().with_seed(2), 48_000.0, 1.5);
    let stereo = Audio::from_channels(&[b.clone(), b], 48_000);
    write_wav_f32(&voices.join("more").join("b.wav"), &stereo).unwrap();
    write_wav_f32(
        &voices.join("silence.wav"),
        &Audio::from_channels(&[vec![0.0; 16_000]], 16_000),
    )
    .unwrap();

    let out = dir.path().join("voice.kbi");
    let spec = FeatureSpec::default();
    let mut stages = Vec::new();
    let s = build_from_audio(
        std::slice::from_ref(&voices),
        &out,
        &spec,
        &BuildOptions::default(),
        &mut |st, _, _| stages.push(st),
    )
    .unwrap();
    assert_eq!(s.sources, 3);
    assert!(s.input_frames > 250 && s.dropped_frames > 90, "{s:?}");
    assert_eq!(s.vectors, s.input_frames);
    assert!((s.duration_seconds - 4.5).abs() < 0.01);
    assert!(stages.contains(&knnblend::voice::BuildStage::Training));

    let index = knnblend::index::AnyIndex::open(&out).unwrap();
    spec.check(&index).unwrap();
    let meta = index.metadata();
    assert_eq!(meta.sources, ["a.wav", "b.wav", "silence.wav"]);
    assert_eq!(
        meta.extra["speaker_mean"].as_array().unwrap().len(),
        spec.bands
    );
    assert_eq!(index.nlist(), rvc_nlist(s.vectors));

    // Cosine with α-expansion: the searched half is unit length, the envelope half intact.
    let out2 = dir.path().join("cos.kbi");
    let opts = BuildOptions {
        metric: Metric::InnerProduct,
        alpha_expand: Some(AlphaExpand { k: 4, alpha: 2.0 }),
        ..BuildOptions::default()
    };
    build_from_audio(
        std::slice::from_ref(&voices),
        &out2,
        &spec,
        &opts,
        &mut |_, _, _| {},
    )
    .unwrap();
    let index = IvfIndex::open(&out2).unwrap();
    for v in index.vectors().chunks_exact(spec.dim()) {
        let norm: f32 = v[..spec.bands].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
        let mean_abs: f32 = v[spec.bands..].iter().sum::<f32>() / spec.bands as f32 * 1024.0;
        assert!(
            mean_abs.abs() < 1e-3,
            "the envelope half is still mean-normalised: {mean_abs}"
        );
    }

    // Too low a sample rate, and nothing to read.
    let low = dir.path().join("low.wav");
    write_wav_f32(&low, &Audio::from_channels(&[vec![0.1; 8000]], 8000)).unwrap();
    let e = build_from_audio(
        &[low],
        &out,
        &spec,
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("8000 Hz"), "{e}");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = build_from_audio(
        &[empty],
        &out,
        &spec,
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(matches!(e, BuildError::NoData(_)), "{e}");
}

/// Builds a voice index of `wavs` and returns its recorded pitch statistics.
fn pitch_of(dir: &Path, name: &str, wavs: &[PathBuf]) -> knnblend::voice::PitchStats {
    let out = dir.join(name);
    let s = build_from_audio(
        wavs,
        &out,
        &FeatureSpec::default(),
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    let stored =
        knnblend::voice::PitchStats::from_metadata(IvfIndex::open(&out).unwrap().metadata())
            .expect("an audio build records pitch statistics");
    assert_eq!(Some(stored), s.pitch);
    stored
}

#[test]
fn audio_builds_record_the_voices_pitch() {
    let dir = tempfile::tempdir().unwrap();
    // The built-in synthesiser: f0 110 and 220 Hz with intonation and vibrato around them.
    let wav = |name: &str, p: VoiceParams, sr: u32| {
        let path = dir.path().join(name);
        let x = synth_voice(&p, sr as f32, 4.0);
        write_wav_f32(&path, &Audio::from_channels(&[x], sr)).unwrap();
        path
    };
    let low = wav("low.wav", VoiceParams::low().with_seed(3), 32_000);
    let high = wav("high.wav", VoiceParams::high().with_seed(4), 44_100);
    let st = |a: f64, b: f64| 12.0 * (a / b).log2();
    let l = pitch_of(dir.path(), "low.kbi", &[low]);
    let h = pitch_of(dir.path(), "high.kbi", &[high]);
    println!("synth low: {}; high: {}", l.describe(), h.describe());
    assert!(st(l.median_hz, 110.0).abs() < 1.0, "{l:?}");
    assert!(st(h.median_hz, 220.0).abs() < 1.0, "{h:?}");
    assert!(l.voiced_share > 0.6 && h.voiced_share > 0.6);
    assert!(
        l.spread_semitones > 0.05 && l.spread_semitones < 4.0,
        "{l:?}"
    );

    // espeak-ng voices (installed by `cargo xtask setup`; a missing espeak-ng fails here):
    // a male and a female variant reading the same sentences, an octave-ish apart.
    let say = |voice: &str, i: usize, text: &str| voice_common::espeak(dir.path(), voice, i, text);
    let text = [
        "The quick brown fox jumps over the lazy dog.",
        "Every morning the baker opens his shop early.",
    ];
    let male: Vec<PathBuf> = text
        .iter()
        .enumerate()
        .map(|(i, t)| say("en-us+m3", i, t))
        .collect();
    let female: Vec<PathBuf> = text
        .iter()
        .enumerate()
        .map(|(i, t)| say("en-us+f3", i, t))
        .collect();
    let m = pitch_of(dir.path(), "male.kbi", &male);
    let f = pitch_of(dir.path(), "female.kbi", &female);
    println!("espeak-ng male: {}; female: {}", m.describe(), f.describe());
    assert!((70.0..180.0).contains(&m.median_hz), "{m:?}");
    assert!((150.0..350.0).contains(&f.median_hz), "{f:?}");
    assert!(
        st(f.median_hz, m.median_hz) > 4.0,
        "female {f:?} vs male {m:?}"
    );

    // Feature-file builds carry none, and say nothing about pitch.
    let rows = clustered(600, 16, 4, 1);
    let exp = experiment(dir.path(), &rows, 16);
    let s = build_from_npy(
        &[exp],
        &dir.path().join("npy.kbi"),
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(s.pitch.is_none());
}
