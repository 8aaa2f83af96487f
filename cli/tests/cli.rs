//! The `knnblend` command line, run as a user would.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use knnblend::format::{self, IndexParts, ListParts, Metadata, Metric};
use ndarray::Array2;
use ndarray_npy::{read_npy, write_npy};

fn knnblend(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_knnblend"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn small_kbi(path: &Path, dim: usize) -> Vec<f32> {
    let data = common::Clustered::new(dim, 6, 3).rows(300, 4);
    let centroids = common::Clustered::new(dim, 6, 3).rows(6, 5);
    let mut lists = vec![ListParts::default(); 6];
    for (i, row) in data.chunks_exact(dim).enumerate() {
        // assign to nearest centroid, like IVF
        let l = (0..6)
            .min_by(|&a, &b| {
                let da: f32 = row
                    .iter()
                    .zip(&centroids[a * dim..])
                    .map(|(x, c)| (x - c).powi(2))
                    .sum();
                let db: f32 = row
                    .iter()
                    .zip(&centroids[b * dim..])
                    .map(|(x, c)| (x - c).powi(2))
                    .sum();
                da.total_cmp(&db)
            })
            .unwrap();
        lists[l].ids.push(i as i64);
        lists[l].vectors.extend_from_slice(row);
    }
    let parts = IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids,
        lists,
        metadata: Metadata {
            features: "test-16".into(),
            sources: vec!["a.wav".into()],
            frames: 300,
            duration_seconds: 3.0,
            ..Default::default()
        },
    };
    format::write_kbi(path, &parts).unwrap();
    data
}

#[test]
fn inspect_json_has_the_documented_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.kbi");
    small_kbi(&p, 16);
    let v: serde_json::Value =
        serde_json::from_str(&ok(&knnblend(&["inspect", p.to_str().unwrap(), "--json"]))).unwrap();
    for key in [
        "format",
        "dim",
        "metric",
        "ntotal",
        "nlist",
        "nprobe",
        "list_min",
        "list_mean",
        "list_max",
        "metadata",
        "file_bytes",
        "screening_bytes",
        "checksums_ok",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    // The 8-bit centroid table at least (16 dimensions are too few for list codes).
    assert!(v["screening_bytes"].as_u64().unwrap() >= v["nlist"].as_u64().unwrap() * 36);
    assert_eq!(v["format"], "knnblend");
    assert_eq!(v["dim"], 16);
    assert_eq!(v["metric"], "l2");
    assert_eq!(v["ntotal"], 300);
    assert_eq!(v["checksums_ok"], true);
    assert_eq!(v["metadata"]["features"], "test-16");
    let text = ok(&knnblend(&["inspect", p.to_str().unwrap()]));
    assert!(text.contains("checksums   ok"), "{text}");
}

#[test]
fn verify_fails_on_a_corrupt_file_and_inspect_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.kbi");
    small_kbi(&p, 16);
    ok(&knnblend(&["verify", p.to_str().unwrap()]));
    let mut b = std::fs::read(&p).unwrap();
    let layout = format::KbiLayout::parse(&b).unwrap();
    let at = layout.section(format::kbi::SectionKind::Vectors).offset as usize + 5;
    b[at] ^= 0x10; // a flipped bit inside a stored vector
    std::fs::write(&p, &b).unwrap();
    let out = knnblend(&["verify", p.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&knnblend(&["inspect", p.to_str().unwrap(), "--json"]))).unwrap();
    assert_eq!(v["checksums_ok"], false);
}

#[test]
fn query_writes_ids_distances_and_blends_matching_the_library() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.kbi");
    let data = small_kbi(&p, 16);
    let q = Array2::from_shape_vec((20, 16), data[..320].to_vec()).unwrap();
    let qp = dir.path().join("q.npy");
    write_npy(&qp, &q).unwrap();
    let (ids, dists, blended) = (
        dir.path().join("i.npy"),
        dir.path().join("d.npy"),
        dir.path().join("b.npy"),
    );
    ok(&knnblend(&[
        "query",
        p.to_str().unwrap(),
        "--queries",
        qp.to_str().unwrap(),
        "--k",
        "4",
        "--ids",
        ids.to_str().unwrap(),
        "--distances",
        dists.to_str().unwrap(),
        "--ratio",
        "0.5",
        "--blended",
        blended.to_str().unwrap(),
    ]));
    let ids: Array2<i64> = read_npy(&ids).unwrap();
    let dists: Array2<f32> = read_npy(&dists).unwrap();
    let blended: Array2<f32> = read_npy(&blended).unwrap();
    assert_eq!(ids.dim(), (20, 4));
    assert_eq!(blended.dim(), (20, 16));
    for i in 0..20 {
        // Each query is a stored row: it is its own nearest neighbour at distance 0.
        assert_eq!(ids[[i, 0]], i as i64);
        assert_eq!(dists[[i, 0]], 0.0);
        for j in 0..16 {
            assert!((blended[[i, j]] - q[[i, j]]).abs() < 1e-4);
        }
    }
}

#[test]
fn query_expansion_searches_with_the_expanded_query() {
    use knnblend::index::{BlendParams, IvfIndex, QueryExpansion, Searcher};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.kbi");
    let data = small_kbi(&p, 16);
    // Queries between stored rows, so the expanded query finds other neighbours.
    let q: Vec<f32> = data[..320]
        .iter()
        .zip(&data[320..640])
        .map(|(a, b)| 0.5 * (a + b))
        .collect();
    let qa = Array2::from_shape_vec((20, 16), q.clone()).unwrap();
    let qp = dir.path().join("q.npy");
    write_npy(&qp, &qa).unwrap();
    let (ids, dists, blended) = (
        dir.path().join("i.npy"),
        dir.path().join("d.npy"),
        dir.path().join("b.npy"),
    );
    let args = |extra: &[&str]| {
        let mut a = vec![
            "query",
            p.to_str().unwrap(),
            "--queries",
            qp.to_str().unwrap(),
            "--k",
            "4",
            "--ids",
            ids.to_str().unwrap(),
            "--distances",
            dists.to_str().unwrap(),
            "--blended",
            blended.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        knnblend(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    ok(&run(&["--expand", "6", "--expand-alpha", "2"]));
    let got_ids: Array2<i64> = read_npy(&ids).unwrap();
    let got_blend: Array2<f32> = read_npy(&blended).unwrap();
    let index = IvfIndex::open(&p).unwrap();
    let exp = QueryExpansion { k: 6, alpha: 2.0 };
    let mut s = Searcher::new();
    let mut e = vec![0f32; 16];
    for (i, row) in q.chunks_exact(16).enumerate() {
        s.expand_query(&index, row, 1, &exp, &mut e);
        let want: Vec<i64> = s.search(&index, &e, 4, 1).iter().map(|n| n.id).collect();
        assert_eq!(got_ids.row(i).to_vec(), want, "query {i}");
        let mut b = vec![0f32; 16];
        let params = BlendParams {
            expansion: Some(exp),
            ..BlendParams::new(4, 1, 0.75)
        };
        s.blend(&index, row, &params, &mut b);
        assert_eq!(got_blend.row(i).to_vec(), b, "query {i}");
    }
    ok(&run(&[]));
    let plain: Array2<i64> = read_npy(&ids).unwrap();
    assert_ne!(plain, got_ids, "--expand changed no neighbour");
    // Bad settings are refused with the flag named.
    let out = run(&["--expand", "6", "--expand-alpha=-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--expand-alpha"));
    let out = run(&["--expand-alpha", "2"]);
    assert!(!out.status.success(), "--expand-alpha without --expand");
    let out = run(&["--expand", "0"]);
    assert!(!out.status.success());
}

#[test]
fn bad_arguments_and_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.kbi");
    small_kbi(&p, 16);
    let q = dir.path().join("q.npy");
    write_npy(&q, &Array2::<f32>::zeros((2, 5))).unwrap();
    let out = knnblend(&[
        "query",
        p.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--ids",
        "/tmp/x.npy",
        "--distances",
        "/tmp/y.npy",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 columns but the index has dim 16"));
    let out = knnblend(&[
        "query",
        p.to_str().unwrap(),
        "--queries",
        q.to_str().unwrap(),
        "--k",
        "99",
        "--ids",
        "a",
        "--distances",
        "b",
    ]);
    assert!(!out.status.success());
    let out = knnblend(&["inspect", dir.path().to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("directory"));
}

#[test]
fn import_of_an_rvc_style_faiss_file_serves_faiss_neighbours() {
    use knnblend::index::{rvc_nlist, FaissIvf};
    let dir = tempfile::tempdir().unwrap();
    let gen = common::Clustered::new(32, 12, 9);
    let data = gen.rows(4_000, 10);
    let mut faiss = FaissIvf::build(32, rvc_nlist(4_000), Metric::L2, &data, &data).unwrap();
    let src = dir.path().join("added_IVF102_Flat_nprobe_1_voice_v2.index");
    faiss.write(&src).unwrap();
    let kbi = dir.path().join("voice.kbi");
    ok(&knnblend(&[
        "import",
        src.to_str().unwrap(),
        "-o",
        kbi.to_str().unwrap(),
    ]));
    let v: serde_json::Value = serde_json::from_str(&ok(&knnblend(&[
        "inspect",
        src.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["format"], "faiss-ivfflat");
    assert_eq!(v["nlist"], 102);
    assert_eq!(v["nprobe"], 1);
    let queries = gen.rows(200, 11);
    let qp = dir.path().join("q.npy");
    write_npy(
        &qp,
        &Array2::from_shape_vec((200, 32), queries.clone()).unwrap(),
    )
    .unwrap();
    let (fi_want_d, fi_want) = faiss.search(&queries, 8).unwrap();
    for index in [&src, &kbi] {
        let (ids, d) = (dir.path().join("i.npy"), dir.path().join("d.npy"));
        ok(&knnblend(&[
            "query",
            index.to_str().unwrap(),
            "--queries",
            qp.to_str().unwrap(),
            "--ids",
            ids.to_str().unwrap(),
            "--distances",
            d.to_str().unwrap(),
        ]));
        let ids: Array2<i64> = read_npy(&ids).unwrap();
        let d: Array2<f32> = read_npy(&d).unwrap();
        let same = (0..200)
            .filter(|&i| ids.row(i).to_vec() == fi_want[i * 8..(i + 1) * 8])
            .count();
        assert!(same >= 199, "{same}/200 match faiss");
        for (a, b) in d.iter().zip(&fi_want_d) {
            if a.is_finite() && (a - b).abs() > 1e-4 * b.abs().max(1.0) {
                assert!(same < 200, "distance {a} vs {b}");
            }
        }
    }
}

/// The voice workflow a newcomer follows: synthesise two voices, build indexes from them,
/// render a phrase through the realtime path, with and without a live swap.
#[test]
fn synth_build_render_workflow() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    ok(&knnblend(&[
        "synth",
        "--voice",
        "low",
        "--seconds",
        "6",
        &p("low.wav"),
    ]));
    ok(&knnblend(&[
        "synth",
        "--voice",
        "high",
        "--seconds",
        "6",
        "--seed",
        "2",
        &p("high.wav"),
    ]));
    ok(&knnblend(&[
        "synth",
        "--voice",
        "low",
        "--seconds",
        "2",
        "--seed",
        "7",
        &p("phrase.wav"),
    ]));
    let built = ok(&knnblend(&[
        "build",
        "--audio",
        &p("high.wav"),
        "-o",
        &p("high.kbi"),
    ]));
    assert!(built.contains("knnblend-logmel-v1"), "{built}");
    ok(&knnblend(&[
        "build",
        "--audio",
        &p("low.wav"),
        "-o",
        &p("low.kbi"),
    ]));
    let v: serde_json::Value =
        serde_json::from_str(&ok(&knnblend(&["inspect", &p("high.kbi"), "--json"]))).unwrap();
    assert_eq!(v["metadata"]["features"], "knnblend-logmel-v1");
    assert_eq!(v["metadata"]["sources"][0], "high.wav");
    // The voice's pitch statistics: the built-in high voice sings about 220 Hz.
    assert!(built.contains("pitch: median f0"), "{built}");
    let hz = v["pitch"]["median_hz"].as_f64().unwrap();
    assert!((12.0 * (hz / 220.0).log2()).abs() < 1.0, "{v}");
    let text = ok(&knnblend(&["inspect", &p("high.kbi")]));
    assert!(text.contains("  pitch       median f0 "), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("high.kbi"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o044,
            0o044,
            "indexes are readable by others, like any file a tool writes"
        );
    }
    let out = ok(&knnblend(&[
        "render",
        "--index",
        &p("high.kbi"),
        "--ratio",
        "1",
        &p("phrase.wav"),
        &p("out.wav"),
    ]));
    assert!(out.contains("frames blended"), "{out}");
    // --pitch match moves the low phrase up toward the high voice's recorded median.
    let out = ok(&knnblend(&[
        "render",
        "--index",
        &p("high.kbi"),
        "--pitch",
        "match",
        &p("phrase.wav"),
        &p("matched.wav"),
    ]));
    let shifted: f32 = out
        .split("pitch: shifted ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!((10.0..14.0).contains(&shifted), "{out}");
    // compare measures what that did (Blend 0.75 by default: part of the way in envelope,
    // the whole way in pitch), and draws it.
    let v: serde_json::Value = serde_json::from_str(&ok(&knnblend(&[
        "compare",
        "--input",
        &p("phrase.wav"),
        "--output",
        &p("matched.wav"),
        "--target",
        &p("high.wav"),
        "--png",
        &p("matched.png"),
        "--json",
    ])))
    .unwrap();
    let st = v["output_minus_target_semitones"].as_f64().unwrap();
    assert!(st.abs() < 1.0, "{v}");
    let input_f0 = v["input"]["median_f0_hz"].as_f64().unwrap();
    assert!((12.0 * (input_f0 / 110.0).log2()).abs() < 1.0, "{v}");
    let change = v["envelope_change"].as_f64().unwrap();
    assert!(change < -0.3, "{v}");
    let png = std::fs::read(p("matched.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{}",
        png.len()
    );
    // Negative control: the phrase against itself changed nothing.
    let same: serde_json::Value = serde_json::from_str(&ok(&knnblend(&[
        "compare",
        "--input",
        &p("phrase.wav"),
        "--output",
        &p("phrase.wav"),
        "--target",
        &p("high.wav"),
        "--json",
    ])))
    .unwrap();
    assert_eq!(same["envelope_change"].as_f64(), Some(0.0), "{same}");
    let text = ok(&knnblend(&[
        "compare",
        "--input",
        &p("phrase.wav"),
        "--output",
        &p("matched.wav"),
    ]));
    assert!(text.starts_with("median f0: input 1"), "{text}");
    // Silence has nothing to measure: a clear error.
    let silent = p("silent.wav");
    let mut w = hound::WavWriter::create(
        &silent,
        hound::WavSpec {
            channels: 1,
            sample_rate: 48_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        },
    )
    .unwrap();
    for _ in 0..48_000 {
        w.write_sample(0i16).unwrap();
    }
    w.finalize().unwrap();
    let o = knnblend(&["compare", "--input", &silent, "--output", &p("matched.wav")]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no loud stretch of audio"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for (pitch, says) in [
        ("30", "--pitch takes off, match"),
        ("up", "--pitch takes off, match"),
    ] {
        let o = knnblend(&[
            "render",
            "--index",
            &p("high.kbi"),
            "--pitch",
            pitch,
            &p("phrase.wav"),
            &p("x.wav"),
        ]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{pitch}");
    }
    ok(&knnblend(&[
        "render",
        "--index",
        &p("high.kbi"),
        "--swap-to",
        &p("low.kbi"),
        "--swap-at",
        "1.0",
        &p("phrase.wav"),
        &p("swap.wav"),
    ]));
    let (a, b) = (
        hound::WavReader::open(p("phrase.wav")).unwrap(),
        hound::WavReader::open(p("out.wav")).unwrap(),
    );
    assert_eq!(
        (a.len(), a.spec().sample_rate),
        (b.len(), b.spec().sample_rate)
    );
    // Refusals name the problem.
    let bad = knnblend(&[
        "render",
        "--index",
        &p("low.wav"),
        &p("phrase.wav"),
        &p("x.wav"),
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an index file"));
    let bad = knnblend(&["build", "--audio", &p("nothing-here"), "-o", &p("x.kbi")]);
    assert!(!bad.status.success());
    let bad = knnblend(&[
        "render",
        "--index",
        &p("high.kbi"),
        "--swap-to",
        &p("low.kbi"),
        &p("phrase.wav"),
        &p("x.wav"),
    ]);
    assert!(!bad.status.success(), "--swap-to needs --swap-at");
}

#[test]
fn bench_rvc_prints_every_stage_the_rtf_and_the_underruns() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    let t = std::time::Instant::now();
    let out = knnblend(&[
        "bench",
        "--rvc",
        "--rvc-seconds",
        "2",
        "--rvc-vectors",
        "5000",
        "--cache-dir",
        cache,
    ]);
    let text = ok(&out);
    for stage in [
        "resample",
        "contentvec",
        "retrieval",
        "f0",
        "synthesizer",
        "sola",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(stage)),
            "no {stage} row:\n{text}"
        );
    }
    for block in ["block 0.1 s", "block 0.25 s", "block 0.5 s", "block 1 s"] {
        assert!(text.contains(block), "no {block} column:\n{text}");
    }
    let rtf = text
        .lines()
        .find(|l| l.trim_start().starts_with("RTF "))
        .unwrap_or_else(|| panic!("no RTF row:\n{text}"));
    let figures: Vec<f64> = rtf
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(figures.len(), 4, "{rtf}");
    assert!(figures.iter().all(|&f| f > 0.0 && f.is_finite()), "{rtf}");
    let underruns = text
        .split("underruns ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no underrun count:\n{text}"));
    underruns.parse::<u64>().unwrap();
    assert!(text.contains("p99.9"), "{text}");
    assert!(
        text.contains("stand-in models only"),
        "the figures must say they are of stand-ins:\n{text}"
    );
    assert!(text.contains("PASS") || text.contains("MISS"), "{text}");
    assert!(t.elapsed().as_secs() < 60, "took {:?}", t.elapsed());
}
