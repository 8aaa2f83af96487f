//! A served `.kbi` overwritten in place without truncation (`dd conv=notrunc`, a tool that
//! rewrites through the same inode): the memory map shows the new bytes at once. Whatever they
//! are, no query may index out of bounds (a panic on the audio thread aborts the host): every
//! bound a query uses (section ranges, list offsets, the screening tables) was copied into owned
//! memory when the index was loaded, so only the vector values a query reads can change.
//!
//! Each case loads a mapped `.kbi`, overwrites one region of the file in place with garbage (the
//! same length, `OpenOptions::write` without truncation, at the offsets the format puts it),
//! checks the mapping shows it, then searches, searches in blocks and blends many queries, and
//! serves a live runtime's audio side from the same file: no panic, every position inside the
//! index, every id one of the file's ids unless the ids themselves were overwritten.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{Clustered, Rng};
use knnblend::format::kbi::{SectionKind, HEADER_LEN};
use knnblend::format::{write_kbi, IndexParts, ListParts, Metadata, Metric};
use knnblend::index::{BlendParams, IvfIndex, Searcher, BLOCK};
use knnblend::live::{live, LiveConfig};

fn parts(dim: usize, n: usize, nlist: usize, metric: Metric) -> IndexParts {
    let gen = Clustered::new(dim, 12, 7);
    let data = gen.rows(n, 8);
    let centroids = gen.rows(nlist, 9);
    let mut lists = vec![ListParts::default(); nlist];
    for (i, row) in data.chunks_exact(dim).enumerate() {
        let nearest = (0..nlist)
            .min_by(|&a, &b| {
                let d = |c: usize| -> f32 {
                    centroids[c * dim..(c + 1) * dim]
                        .iter()
                        .zip(row)
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum()
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        lists[nearest].ids.push(i as i64);
        lists[nearest].vectors.extend_from_slice(row);
    }
    IndexParts {
        dim,
        metric,
        nprobe: 1,
        centroids,
        lists,
        metadata: Metadata {
            features: format!("test-{dim}"),
            ..Metadata::default()
        },
    }
}

/// What to write over.
#[derive(Clone, Copy, Debug)]
enum Region {
    /// The header page: magic, counts, the section table.
    Header,
    /// The list offsets (the list sizes of the format).
    ListOffsets,
    /// Header and list offsets at once.
    HeaderAndOffsets,
    /// Ids.
    Ids,
    /// Every section's bytes, the metadata aside.
    Everything,
    /// Vectors, centroids and norms, with NaN, infinities and huge values.
    NonFiniteValues,
}

/// The bytes written over `len` bytes of `region`.
fn garbage(region: Region, len: usize, rng: &mut Rng) -> Vec<u8> {
    match region {
        Region::NonFiniteValues => (0..len / 4)
            .flat_map(|i| {
                let v = match i % 5 {
                    0 => f32::NAN,
                    1 => f32::INFINITY,
                    2 => f32::NEG_INFINITY,
                    3 => f32::MAX,
                    _ => -1e30,
                };
                v.to_le_bytes()
            })
            .collect(),
        Region::ListOffsets | Region::HeaderAndOffsets => (0..len / 8)
            .flat_map(|i| {
                let v = match i % 4 {
                    0 => u64::MAX,
                    1 => rng.next_u64(),
                    2 => u32::MAX as u64 + i as u64,
                    _ => (len / 8 - i) as u64 * 1000, // decreasing
                };
                v.to_le_bytes()
            })
            .collect(),
        _ => (0..len).map(|_| rng.next_u64() as u8).collect(),
    }
}

/// Overwrites `[at, at + bytes.len())` of `path` in place: no truncation, same length.
fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = f.metadata().unwrap().len();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_data().unwrap();
    assert_eq!(
        f.metadata().unwrap().len(),
        len,
        "the file must keep its length"
    );
}

/// Writes garbage over `region` of the `.kbi` at `path` (whose layout `index` parsed).
fn damage(path: &Path, index: &IvfIndex, region: Region, rng: &mut Rng) {
    let layout = index.layout().clone();
    let section = |k: SectionKind| layout.section(k);
    let mut spans: Vec<(u64, usize)> = Vec::new();
    match region {
        Region::Header => spans.push((0, HEADER_LEN)),
        Region::ListOffsets => {
            let s = section(SectionKind::ListOffsets);
            spans.push((s.offset, s.len as usize));
        }
        Region::HeaderAndOffsets => {
            spans.push((0, 4096));
            let s = section(SectionKind::ListOffsets);
            spans.push((s.offset, s.len as usize));
        }
        Region::Ids => {
            let s = section(SectionKind::Ids);
            spans.push((s.offset, s.len as usize));
        }
        Region::Everything => {
            spans.push((0, 4096));
            for k in SectionKind::ALL {
                if k != SectionKind::Metadata {
                    let s = section(k);
                    spans.push((s.offset, s.len as usize));
                }
            }
        }
        Region::NonFiniteValues => {
            for k in [
                SectionKind::Centroids,
                SectionKind::CentroidNorms,
                SectionKind::Vectors,
                SectionKind::VectorNorms,
            ] {
                let s = section(k);
                spans.push((s.offset, s.len as usize));
            }
        }
    }
    for (at, len) in spans {
        overwrite(path, at, &garbage(region, len, rng));
    }
}

/// Runs many searches, block searches and blends; checks every result is in range.
fn query_everything(index: &IvfIndex, ids_intact: bool, rng: &mut Rng) -> usize {
    let (d, ntotal) = (index.dim(), index.ntotal());
    let queries: Vec<f32> = Clustered::new(d, 12, 7).rows(4 * BLOCK, 99);
    let mut searcher = Searcher::new();
    let mut out = vec![0f32; d];
    let mut found = 0;
    let check = |nbs: &[knnblend::index::Neighbour]| {
        for nb in nbs {
            assert!(
                (nb.pos as usize) < ntotal,
                "position {} of {ntotal}",
                nb.pos
            );
            if ids_intact {
                assert!(
                    (0..ntotal as i64).contains(&nb.id),
                    "id {} is not one of the file's",
                    nb.id
                );
            }
        }
    };
    for screening in [true, false] {
        searcher.set_screening(screening);
        for (i, q) in queries.chunks_exact(d).enumerate() {
            let k = 1 + i % 32;
            let nprobe = 1 + rng.below(12);
            let nbs = searcher.search(index, q, k, nprobe);
            check(nbs);
            found += nbs.len();
            let params = BlendParams {
                expansion: None,
                k,
                nprobe,
                ratio: 0.75,
            };
            searcher.blend(index, q, &params, &mut out);
        }
        for block in queries.chunks_exact(d * BLOCK) {
            for nprobe in [1, 4, 9] {
                let results = searcher.search_block(index, block, 8, nprobe);
                for i in 0..results.len() {
                    check(results.get(i));
                    found += results.get(i).len();
                }
            }
        }
    }
    found
}

fn run(dim: usize, n: usize, nlist: usize, metric: Metric) {
    let dir = tempfile::tempdir().unwrap();
    let original = parts(dim, n, nlist, metric);
    let mut rng = Rng(42);
    for region in [
        Region::Header,
        Region::ListOffsets,
        Region::HeaderAndOffsets,
        Region::Ids,
        Region::Everything,
        Region::NonFiniteValues,
    ] {
        let path = dir.path().join(format!("{region:?}.kbi"));
        write_kbi(&path, &original).unwrap();
        let index = IvfIndex::open(&path).unwrap();
        assert!(index.is_mapped());
        let (control, mut audio) = live(LiveConfig {
            slots: 1,
            max_dim: dim,
            ..LiveConfig::default()
        });
        control
            .publish(0, control.prepare(&path, |_, _| {}).unwrap())
            .unwrap();
        let q = &original.lists[0].vectors[..dim];
        let mut out = vec![0f32; dim];
        audio.begin_block(0, 0.0);
        audio.blend(q, 8, 1.0, &mut out);
        audio.end_block();

        let before = query_everything(&index, true, &mut rng);
        assert!(before > 0);
        let image = std::fs::read(&path).unwrap();
        damage(&path, &index, region, &mut rng);
        assert_ne!(
            std::fs::read(&path).unwrap(),
            image,
            "{region:?}: nothing was overwritten"
        );
        // The mapping shows the new section bytes (so the searches below read them); the
        // header is not a section, its copy in the index was parsed at load.
        if !matches!(region, Region::Header) {
            assert!(
                index.verify(&mut |_, _| {}).is_err(),
                "{region:?}: the overwrite is not visible through the mapping"
            );
        }
        let ids_intact = !matches!(region, Region::Ids | Region::Everything);
        let after = query_everything(&index, ids_intact, &mut rng);
        println!("d = {dim} {metric:?}, {region:?} overwritten: {before} neighbours before, {after} after, no panic");

        // The audio side of a live runtime serving the same file.
        for _ in 0..4 {
            audio.begin_block(0, 0.0);
            for q in Clustered::new(dim, 12, 7).rows(64, 5).chunks_exact(dim) {
                audio.blend(q, 8, 1.0, &mut out);
                audio.blend(q, 32, 0.5, &mut out);
            }
            audio.end_block();
        }
        drop(audio);
        drop(control);
    }
}

/// Wide enough for both screening tables (8-bit centroids and residual codes), lists longer
/// than the screened minimum.
#[test]
fn overwriting_a_mapped_kbi_in_place_never_makes_a_query_index_out_of_bounds() {
    run(128, 3000, 12, Metric::L2);
}

/// The plain f32 paths: a narrow L2 index and an inner-product one.
#[test]
fn overwriting_a_narrow_or_inner_product_kbi_in_place_is_harmless_too() {
    run(16, 2000, 16, Metric::L2);
    run(32, 1500, 8, Metric::InnerProduct);
}
