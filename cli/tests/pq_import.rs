//! `knnblend import` and `inspect` on IVF-PQ FastScan indexes: faiss `IwPf` and `IxRF` files
//! built by faiss's factory become `.kbi` files holding the same parts, and `inspect` reports
//! what they are (text and JSON) for the faiss file and the `.kbi` alike.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use faiss::{index_factory, Index, MetricType};
use knnblend::format;

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

/// Writes a faiss index built by `factory` from clustered data (some lists left empty).
fn faiss_file(path: &Path, dim: usize, factory: &str, metric: MetricType) {
    let gen = common::Clustered::new(dim, 8, 11);
    let data = gen.rows(1200, 12);
    let mut train = data.clone();
    let mut far = gen.rows(300, 13);
    far.iter_mut().for_each(|x| *x += 6.0);
    train.extend_from_slice(&far);
    let mut index = index_factory(dim as u32, factory, metric).unwrap();
    index.train(&train).unwrap();
    index.add(&data).unwrap();
    faiss::write_index(&index, path.to_str().unwrap()).unwrap();
}

fn inspect_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&knnblend(&[
        "inspect",
        path.to_str().unwrap(),
        "--json",
    ])))
    .unwrap()
}

#[test]
fn import_converts_a_refined_fastscan_index_and_inspect_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("added_IVF32_PQ16x4fsr_RFlat.index");
    let output = dir.path().join("v.kbi");
    faiss_file(&input, 32, "IVF32,PQ16x4fsr,RFlat", MetricType::L2);
    let said = ok(&knnblend(&[
        "import",
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ]));
    assert!(
        said.contains("IVF-PQ FastScan IVF32,PQ16x4fsr,RFlat"),
        "{said}"
    );

    // The .kbi holds exactly what the faiss file does.
    let from_faiss = format::read_faiss_fastscan_file(&input).unwrap();
    let from_kbi = format::read_pq_kbi(&output).unwrap();
    assert_eq!(from_kbi, from_faiss);

    let empty = from_faiss.lists.iter().filter(|l| l.ids.is_empty()).count();
    let sizes: Vec<usize> = from_faiss.lists.iter().map(|l| l.ids.len()).collect();
    let codes: usize = from_faiss.lists.iter().map(|l| l.codes.len()).sum();
    for (path, fmt, checksums) in [
        (&input, "faiss-ivfpq-fastscan", serde_json::Value::Null),
        (&output, "knnblend", serde_json::Value::Bool(true)),
    ] {
        let v = inspect_json(path);
        assert_eq!(v["format"], fmt);
        assert_eq!(v["type"], "ivf-pq-fastscan-rflat");
        assert_eq!(v["factory"], "IVF32,PQ16x4fsr,RFlat");
        assert_eq!(v["dim"], 32);
        assert_eq!(v["metric"], "l2");
        assert_eq!(v["nlist"], 32);
        assert_eq!(v["ntotal"], 1200);
        assert_eq!(v["m"], 16);
        assert_eq!(v["nbits"], 4);
        assert_eq!(v["by_residual"], true);
        assert_eq!(v["bbs"], 32);
        assert_eq!(v["k_factor"], 1.0);
        assert_eq!(v["list_min"], *sizes.iter().min().unwrap());
        assert_eq!(v["list_max"], *sizes.iter().max().unwrap());
        assert_eq!(v["list_mean"], 1200.0 / 32.0);
        assert_eq!(v["empty_lists"], empty);
        let mem = &v["memory"];
        assert_eq!(mem["codes_bytes"], codes);
        assert_eq!(mem["ids_bytes"], 1200 * 8);
        assert_eq!(mem["refine_bytes"], 1200 * 32 * 4);
        assert_eq!(mem["centroids_bytes"], 32 * 32 * 4);
        assert_eq!(mem["codebooks_bytes"], 16 * 16 * 2 * 4);
        let total = codes + 1200 * 8 + 1200 * 32 * 4 + 32 * 32 * 4 + 16 * 16 * 2 * 4;
        assert_eq!(mem["total_bytes"], total);
        assert_eq!(mem["bytes_per_vector"], total as f64 / 1200.0);
        assert_eq!(v["checksums_ok"], checksums);
        assert_eq!(
            v["file_bytes"],
            std::fs::metadata(path).unwrap().len(),
            "{}",
            path.display()
        );
    }

    let text = ok(&knnblend(&["inspect", output.to_str().unwrap()]));
    for want in [
        "format      knnblend",
        "type        IVF-PQ FastScan with RFlat refinement (IVF32,PQ16x4fsr,RFlat)",
        "vectors     1200 × 32 (l2)",
        "lists       32 (sizes min 0,",
        "codes       M 16 × 4 bits, by_residual true, blocks of 32 vectors",
        "refine      flat vectors, k_factor 1",
        "memory      ",
        "per vector: codes ",
        "checksums   ok",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // A corrupt section is reported by inspect, and refused by a fresh import.
    let mut b = std::fs::read(&output).unwrap();
    let layout = format::PqKbiLayout::parse(&b).unwrap();
    let at = layout.section(format::kbi_pq::PqSectionKind::Codes).offset as usize;
    b[at] ^= 0x10;
    let bad = dir.path().join("bad.kbi");
    std::fs::write(&bad, &b).unwrap();
    let v = inspect_json(&bad);
    assert_eq!(v["checksums_ok"], false);
    assert!(v["checksum_error"]
        .as_str()
        .unwrap()
        .contains("packed codes"));
    let out = knnblend(&["import", bad.to_str().unwrap(), "-o", "/dev/null/x.kbi"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch in packed codes"));

    // The IVF-Flat commands refuse the PQ .kbi by name.
    let out = knnblend(&["verify", output.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("an IVF-PQ FastScan index"), "{err}");
}

#[test]
fn import_converts_a_bare_inner_product_fastscan_index_and_a_kbi_again() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ip.index");
    let first = dir.path().join("a.kbi");
    let second = dir.path().join("b.kbi");
    faiss_file(&input, 24, "IVF16,PQ12x4fs", MetricType::InnerProduct);
    ok(&knnblend(&[
        "import",
        input.to_str().unwrap(),
        "-o",
        first.to_str().unwrap(),
    ]));
    let out = knnblend(&[
        "import",
        first.to_str().unwrap(),
        "-o",
        second.to_str().unwrap(),
    ]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already a .kbi"));
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );
    assert_eq!(
        format::read_pq_kbi(&second).unwrap(),
        format::read_faiss_fastscan_file(&input).unwrap()
    );
    let v = inspect_json(&second);
    assert_eq!(v["type"], "ivf-pq-fastscan");
    assert_eq!(v["metric"], "ip");
    assert_eq!(v["m"], 12);
    assert_eq!(v["by_residual"], false);
    assert_eq!(v["k_factor"], serde_json::Value::Null);
    assert_eq!(v["memory"]["refine_bytes"], 0);
    let text = ok(&knnblend(&["inspect", input.to_str().unwrap()]));
    assert!(text.contains("format      faiss-ivfpq-fastscan"), "{text}");
    assert!(
        text.contains("type        IVF-PQ FastScan (IVF16,PQ12x4fs)"),
        "{text}"
    );
    assert!(text.contains("refine      none"), "{text}");
    assert!(text.contains("checksums   none"), "{text}");
}
