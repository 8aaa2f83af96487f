//! Cheap checks run on what a file declares, before it is loaded: a 600 MB index of the wrong
//! features is refused in microseconds, without reading, verifying, prefaulting or converting it
//! and without a large allocation.
//!
//! The large files are sparse (a real header, the rest holes): a refusal that read past the
//! header would fault their pages in or fail on their zero checksums, and would take far longer
//! than the budget.

mod handmade;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use knnblend::format::kbi::{self, KbiLayout, HEADER_LEN, PAGE};
use knnblend::format::{
    read_header, FileKind, IndexHeader, IndexParts, ListParts, Metadata, Metric,
};
use knnblend::index::IvfIndex;
use knnblend::live::{
    live, Controller, HeaderValidator, LiveConfig, LoadError, LoadOutcome, PreparedIndex, Validator,
};
use knnblend::voice::FeatureSpec;
use xxhash_rust::xxh3::xxh3_64;

#[global_allocator]
static ALLOCATOR: handmade::Measuring = handmade::Measuring;

/// The refusal budget.
const BUDGET: Duration = Duration::from_millis(50);
/// The largest single allocation a refusal may make.
const SMALL: usize = 1 << 20;

/// Writes a sparse `.kbi` of this shape: a valid header page and metadata section (with its
/// checksum), every other section a hole. Returns the file's length.
fn sparse_kbi(path: &Path, dim: usize, nlist: usize, ntotal: usize, metadata: &Metadata) -> u64 {
    let meta = serde_json::to_vec(metadata).unwrap();
    let (d, nl, n) = (dim as u64, nlist as u64, ntotal as u64);
    let sizes = [
        nl * d * 4,
        nl * 4,
        (nl + 1) * 8,
        n * d * 4,
        n * 4,
        n * 8,
        meta.len() as u64,
    ];
    let mut offsets = [0u64; 7];
    let mut at = PAGE;
    for (o, s) in offsets.iter_mut().zip(sizes) {
        *o = at;
        at = (at + s).div_ceil(PAGE) * PAGE;
    }
    let file_len = offsets[6] + sizes[6];
    let mut h = vec![0u8; PAGE as usize];
    h[..8].copy_from_slice(kbi::MAGIC);
    h[8..12].copy_from_slice(&kbi::VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..20].copy_from_slice(&(dim as u32).to_le_bytes());
    // metric 0 (L2), element 0 (f32)
    h[28..32].copy_from_slice(&1u32.to_le_bytes());
    h[32..40].copy_from_slice(&nl.to_le_bytes());
    h[40..48].copy_from_slice(&n.to_le_bytes());
    h[48..56].copy_from_slice(&file_len.to_le_bytes());
    h[56..60].copy_from_slice(&7u32.to_le_bytes());
    for i in 0..7 {
        let e = 64 + i * 32;
        h[e..e + 4].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        h[e + 8..e + 16].copy_from_slice(&offsets[i].to_le_bytes());
        h[e + 16..e + 24].copy_from_slice(&sizes[i].to_le_bytes());
        let sum = if i == 6 { xxh3_64(&meta) } else { 0 };
        h[e + 24..e + 32].copy_from_slice(&sum.to_le_bytes());
    }
    let sum = xxh3_64(&h[..HEADER_LEN - 8]);
    h[HEADER_LEN - 8..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    KbiLayout::parse_header(&h, file_len).expect("the crafted header is valid");
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&h).unwrap();
    f.seek(SeekFrom::Start(offsets[6])).unwrap();
    f.write_all(&meta).unwrap();
    f.set_len(file_len).unwrap();
    file_len
}

/// Writes a sparse faiss `IwFl` file of this shape (RVC's: L2, `IxF2` quantizer, no direct
/// map): the header up to the centroid count, then holes to the length the lists would take.
fn sparse_faiss(path: &Path, dim: usize, nlist: usize, ntotal: usize) -> u64 {
    let mut b = Vec::new();
    let header = |b: &mut Vec<u8>, ntotal: u64| {
        b.extend((dim as i32).to_le_bytes());
        b.extend((ntotal as i64).to_le_bytes());
        b.extend((1i64 << 20).to_le_bytes());
        b.extend((1i64 << 20).to_le_bytes());
        b.push(1);
        b.extend(1i32.to_le_bytes());
    };
    b.extend(b"IwFl");
    header(&mut b, ntotal as u64);
    b.extend((nlist as u64).to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(b"IxF2");
    header(&mut b, nlist as u64);
    b.extend(((nlist * dim) as u64).to_le_bytes());
    let len = b.len() as u64
        + (nlist * dim * 4) as u64
        + 9
        + 4
        + 16
        + 4
        + 8
        + nlist as u64 * 8
        + ntotal as u64 * (dim as u64 * 4 + 8);
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&b).unwrap();
    f.set_len(len).unwrap();
    len
}

/// RVC's `dim_validator` as a header validator, counting its calls.
fn dim_check(dim: usize, calls: Arc<AtomicUsize>) -> HeaderValidator {
    Arc::new(move |h: &IndexHeader| {
        calls.fetch_add(1, Ordering::Relaxed);
        if h.dim == dim {
            Ok(())
        } else {
            Err(format!(
                "the index holds {}-dimensional features, but the model gives {dim}",
                h.dim
            ))
        }
    })
}

/// A full validator that counts its calls and accepts everything.
fn counting(calls: Arc<AtomicUsize>) -> Validator {
    Arc::new(move |_: &knnblend::index::AnyIndex| {
        calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    })
}

/// Prepares `path` on this thread: its error, how long it took and its largest allocation.
fn refuse(control: &Controller, path: &Path) -> (LoadError, Duration, usize) {
    let t = Instant::now();
    let (r, largest) = handmade::largest_allocation(|| control.prepare(path, |_, _| {}));
    let took = t.elapsed();
    (r.expect_err("the index must be refused"), took, largest)
}

fn assert_cheap(what: &str, len: u64, took: Duration, largest: usize) {
    println!(
        "{what}: a {:.0} MB file refused in {:.3} ms, largest allocation {largest} bytes",
        len as f64 / 1e6,
        took.as_secs_f64() * 1e3
    );
    assert!(took < BUDGET, "{what}: refusing took {took:?}");
    assert!(
        largest < SMALL,
        "{what}: refusing allocated {largest} bytes at once"
    );
}

#[test]
fn a_600_mb_index_of_the_wrong_dimension_is_refused_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = Metadata {
        features: "rvc-v1-256".into(),
        ..Metadata::default()
    };
    let kbi = dir.path().join("v1.kbi");
    let kbi_len = sparse_kbi(&kbi, 256, 4096, 580_000, &v1);
    let faiss = dir.path().join("added_IVF4096_Flat_v1.index");
    let faiss_len = sparse_faiss(&faiss, 256, 4096, 580_000);
    assert!(kbi_len > 590_000_000 && faiss_len > 590_000_000);

    let header = read_header(&kbi).unwrap();
    assert_eq!(
        (
            header.kind,
            header.dim,
            header.metric,
            header.nlist,
            header.ntotal
        ),
        (FileKind::Kbi, 256, Metric::L2, 4096, 580_000)
    );
    assert_eq!(
        (header.metadata.features.as_str(), header.file_bytes),
        ("rvc-v1-256", kbi_len)
    );
    let header = read_header(&faiss).unwrap();
    assert_eq!(
        (header.kind, header.dim, header.nlist, header.ntotal),
        (FileKind::Faiss, 256, 4096, 580_000)
    );
    assert_eq!(header.metadata.features, "rvc-v1-256");
    assert_eq!(header.metadata.sources, ["added_IVF4096_Flat_v1.index"]);

    let (header_calls, full_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (control, _audio) = live(LiveConfig {
        slots: 1,
        max_dim: 768,
        header_validator: Some(dim_check(768, header_calls.clone())),
        validator: Some(counting(full_calls.clone())),
        ..LiveConfig::default()
    });
    for (what, path, len) in [(".kbi", &kbi, kbi_len), ("faiss", &faiss, faiss_len)] {
        let (e, took, largest) = refuse(&control, path);
        assert!(matches!(e, LoadError::Rejected { .. }), "{what}: {e}");
        assert!(e.to_string().contains("256-dimensional"), "{e}");
        assert_cheap(what, len, took, largest);
        // Through the loader thread too.
        let t = Instant::now();
        let LoadOutcome::Failed(e) = control.load(0, path).wait() else {
            panic!("{what}: loaded")
        };
        assert!(matches!(*e, LoadError::Rejected { .. }), "{e}");
        assert!(
            t.elapsed() < BUDGET,
            "{what}: the loader took {:?}",
            t.elapsed()
        );
    }
    assert_eq!(header_calls.load(Ordering::Relaxed), 4);
    assert_eq!(
        full_calls.load(Ordering::Relaxed),
        0,
        "the full validator never ran"
    );

    // The width limit is a header check as well.
    let (narrow, _audio) = live(LiveConfig {
        slots: 1,
        max_dim: 128,
        ..LiveConfig::default()
    });
    for (what, path, len) in [(".kbi", &kbi, kbi_len), ("faiss", &faiss, faiss_len)] {
        let (e, took, largest) = refuse(&narrow, path);
        assert!(
            matches!(e, LoadError::TooWide { dim: 256, .. }),
            "{what}: {e}"
        );
        assert_cheap(&format!("{what} too wide"), len, took, largest);
    }
}

/// The voice engine's feature check (`FeatureSpec::live_config`, as the plugin builds its
/// runtime) refuses RVC indexes from their headers.
#[test]
fn the_voice_engine_refuses_a_600_mb_rvc_index_from_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = Metadata {
        features: "rvc-v2-768".into(),
        ..Metadata::default()
    };
    let kbi = dir.path().join("v2.kbi");
    let kbi_len = sparse_kbi(&kbi, 768, 2048, 195_000, &v2);
    let faiss = dir.path().join("added_IVF2048_Flat_v2.index");
    let faiss_len = sparse_faiss(&faiss, 768, 2048, 195_000);
    let spec = FeatureSpec::default();
    let config = spec.live_config(2);
    assert!(config.header_validator.is_some());
    let (control, _audio) = live(config);
    for (what, path, len) in [(".kbi", &kbi, kbi_len), ("faiss", &faiss, faiss_len)] {
        let (e, took, largest) = refuse(&control, path);
        assert!(matches!(e, LoadError::Rejected { .. }), "{what}: {e}");
        assert!(
            e.to_string().contains("'rvc-v2-768' features"),
            "{what}: {e}"
        );
        assert_cheap(&format!("voice engine, {what}"), len, took, largest);
    }
}

fn small_parts(dim: usize, identity: f32) -> IndexParts {
    let rows = 40;
    IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids: vec![0.5; 2 * dim],
        lists: vec![
            ListParts {
                ids: (0..rows).collect(),
                vectors: (0..rows as usize * dim)
                    .map(|i| identity + (i % 7) as f32 * 0.01)
                    .collect(),
            },
            ListParts::default(),
        ],
        metadata: Metadata {
            features: format!("test-{dim}"),
            ..Metadata::default()
        },
    }
}

/// Header validators accept and refuse small files and in-memory indexes alike, run before
/// the full validator, and the full validator still runs on what they accept.
#[test]
fn header_validators_run_first_on_files_and_in_memory_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.kbi");
    kbi::write_kbi(&good, &small_parts(16, 1.0)).unwrap();
    let wrong = dir.path().join("wrong.kbi");
    kbi::write_kbi(&wrong, &small_parts(24, 1.0)).unwrap();
    let refused_by_full = dir.path().join("refused.kbi");
    kbi::write_kbi(&refused_by_full, &small_parts(16, 666.0)).unwrap();

    let (header_calls, full_calls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let full = full_calls.clone();
    let (control, _audio) = live(LiveConfig {
        slots: 1,
        max_dim: 64,
        header_validator: Some(dim_check(16, header_calls.clone())),
        validator: Some(Arc::new(move |ix: &knnblend::index::AnyIndex| {
            full.fetch_add(1, Ordering::Relaxed);
            if ix.as_flat().unwrap().vector(0)[0] == 666.0 {
                Err("the vectors say no".into())
            } else {
                Ok(())
            }
        })),
        ..LiveConfig::default()
    });
    let ok: PreparedIndex = control.prepare(&good, |_, _| {}).unwrap();
    assert_eq!(ok.info().dim, 16);
    assert_eq!(
        (
            header_calls.load(Ordering::Relaxed),
            full_calls.load(Ordering::Relaxed)
        ),
        (1, 1)
    );
    let e = control.prepare(&wrong, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("24-dimensional"), "{e}");
    assert_eq!(
        (
            header_calls.load(Ordering::Relaxed),
            full_calls.load(Ordering::Relaxed)
        ),
        (2, 1),
        "a header refusal skips the full validator"
    );
    let e = control.prepare(&refused_by_full, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("the vectors say no"), "{e}");
    assert_eq!(full_calls.load(Ordering::Relaxed), 2);

    // In memory: the index's own header.
    let index = IvfIndex::from_parts(&small_parts(24, 1.0)).unwrap();
    assert_eq!(index.header().dim, 24);
    assert_eq!(index.header().file_bytes, 0);
    let e = control.prepare_index(index, "in memory").unwrap_err();
    assert!(matches!(e, LoadError::Rejected { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "in memory does not suit this voice engine: the index holds 24-dimensional features, but the model gives 16"
    );
    let index = IvfIndex::from_parts(&small_parts(16, 1.0)).unwrap();
    assert!(control.prepare_index(index, "fine").is_ok());

    // An opened index declares what its file's header says.
    let opened = IvfIndex::open(&good).unwrap();
    assert_eq!(opened.header(), read_header(&good).unwrap());
}

/// A faiss file's header is what its import declares, and the loader checks the loaded index
/// against it.
#[test]
fn a_faiss_header_matches_its_import() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("added_IVF2_Flat.index");
    let mut parts = small_parts(16, 1.0);
    parts.metadata = Metadata::default();
    std::fs::write(
        &path,
        handmade::faiss(&parts, &handmade::FaissStyle::default()).bytes,
    )
    .unwrap();
    let header = read_header(&path).unwrap();
    let opened = IvfIndex::open(&path).unwrap();
    assert_eq!(opened.header(), header);
    assert_eq!(header.metadata.sources, ["added_IVF2_Flat.index"]);
    let (control, _audio) = live(LiveConfig {
        slots: 1,
        max_dim: 16,
        ..LiveConfig::default()
    });
    assert!(matches!(
        control.load(0, &path).wait(),
        LoadOutcome::Published(_)
    ));
}
