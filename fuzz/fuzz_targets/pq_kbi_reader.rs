//! IVF-PQ FastScan `.kbi` reader (format version 2): header parse, `decode_pq_kbi` verified and
//! not, the owned index made from what it accepts, and the memory-mapped `PqIndex::open` of the
//! same bytes with and without verification, then searches and blends.
//!
//! The first input byte selects repairs applied before reading, as in `kbi_reader`, so the
//! fuzzer gets past the checksums and explores the validation behind them: bit 0 recomputes the
//! header checksum, bit 1 sets `file_len` to the real length, bit 2 recomputes every section
//! checksum (when the header parses). With no bits set the bytes are read exactly as given.
//!
//! Whatever is accepted must hold together: decoded parts validate when verified, build an
//! index and encode back to the same parts; a mapped index opened with verification converts
//! to the same parts as the decoder's; every accepted index searches without panicking,
//! returns `k` slots of ids it holds (or −1) from lists it has, in order, and blends finite
//! queries to finite output when its values are verified.
#![no_main]

use knnblend::format::kbi;
use knnblend::format::kbi_pq::{PqSectionKind, PQ_HEADER_LEN, PQ_SECTION_COUNT};
use knnblend::format::{self, Metric, PqKbiLayout, PqParts};
use knnblend::index::{
    BlendOutcome, BlendParams, OpenOptions, PqIndex, PqSearcher, QueryExpansion, MAX_K,
};
use knnblend_fuzz::Bytes;
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::xxh3_64;

const HEADER_SUM_AT: usize = PQ_HEADER_LEN - 8;
const TABLE_AT: usize = 104;
const ENTRY_LEN: usize = 32;

fn fix_header(b: &mut [u8]) {
    if b.len() >= PQ_HEADER_LEN {
        let sum = xxh3_64(&b[..HEADER_SUM_AT]);
        b[HEADER_SUM_AT..PQ_HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    }
}

fn repair(mode: u8, b: &mut [u8]) {
    if mode & 2 != 0 && b.len() >= PQ_HEADER_LEN {
        let len = b.len() as u64;
        b[48..56].copy_from_slice(&len.to_le_bytes());
    }
    if mode & 1 != 0 {
        fix_header(b);
    }
    if mode & 4 != 0 {
        if let Ok(layout) = PqKbiLayout::parse(b) {
            for i in 0..PQ_SECTION_COUNT {
                let sum = xxh3_64(&b[layout.sections[i].range()]);
                let at = TABLE_AT + i * ENTRY_LEN + 24;
                b[at..at + 8].copy_from_slice(&sum.to_le_bytes());
            }
            fix_header(b);
        }
    }
}

/// A file of this process's own for the mapped opens (one fuzzing process, inputs in turn).
fn scratch_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("knnblend-fuzz-pq-kbi-{}.kbi", std::process::id()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, file)) = data.split_first() else {
        return;
    };
    let mut b = file.to_vec();
    repair(mode, &mut b);
    let choices = file.get(..64.min(file.len())).unwrap_or_default();

    if let Ok(layout) = PqKbiLayout::parse(&b) {
        // A parsed layout only names bytes inside the file, in order, without overlap, one
        // section of each kind.
        let mut end = PQ_HEADER_LEN;
        for (s, kind) in layout.sections.iter().zip(PqSectionKind::ALL) {
            let r = s.range();
            assert!(r.start >= end && r.end <= b.len(), "{kind:?} at {r:?}");
            end = r.end;
        }
    }

    let verified = format::decode_pq_kbi(&b, true);
    let unverified = format::decode_pq_kbi(&b, false);
    match (&verified, &unverified) {
        (Ok(v), Ok(u)) => assert!(same(v, u), "verification changed what was decoded"),
        (Ok(_), Err(e)) => panic!("accepted verified, refused unverified: {e}"),
        (Err(e), _) => assert!(!e.to_string().is_empty()),
    }
    if let Ok(parts) = &verified {
        parts
            .validate()
            .expect("verified parts of a PQ .kbi are valid");
    }
    let decoded = match unverified {
        Ok(parts) => parts,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            assert!(verified.is_err());
            if !b.starts_with(kbi::MAGIC) {
                // Not a .kbi: the opener would read it as a faiss file (`faiss_reader`).
                return;
            }
            // The mapped opener refuses what the decoder refuses.
            let path = scratch_path();
            std::fs::write(&path, &b).unwrap();
            for verify in [true, false] {
                let opts = OpenOptions {
                    verify,
                    ..OpenOptions::default()
                };
                assert!(PqIndex::open_with(&path, opts).is_err());
            }
            let _ = std::fs::remove_file(&path);
            return;
        }
    };

    // Owned: parts that validate build an index holding exactly them.
    let finite = decoded.validate().is_ok();
    match PqIndex::new(decoded.clone()) {
        Ok(index) => {
            assert!(finite, "PqIndex::new accepted parts that do not validate");
            assert!(
                same(&index.to_parts(), &decoded),
                "parts → index → parts changed the data"
            );
            let again = format::encode_pq_kbi(&decoded).expect("valid parts encode");
            let round = format::decode_pq_kbi(again.as_slice(), true).expect("and decode");
            assert!(round == decoded, "encode → decode changed the data");
            exercise(&index, choices, true);
        }
        Err(e) => {
            assert!(!finite, "valid parts refused: {e}");
        }
    }

    // Mapped, as the loader opens a .kbi: verified it must agree with the decoder; unverified
    // it may hold non-finite values, and must still search without panicking.
    assert!(
        b.starts_with(kbi::MAGIC),
        "the decoder accepted a file without the magic"
    );
    let path = scratch_path();
    std::fs::write(&path, &b).unwrap();
    let opened: Vec<_> = [true, false]
        .into_iter()
        .map(|verify| {
            let opts = OpenOptions {
                verify,
                ..OpenOptions::default()
            };
            (verify, PqIndex::open_with(&path, opts))
        })
        .collect();
    // The maps stay valid without the file; no file is left behind.
    let _ = std::fs::remove_file(&path);
    for (verify, opened) in opened {
        match opened {
            Ok(index) => {
                assert!(index.is_mapped());
                let parts = index.to_parts();
                assert!(same(&parts, &decoded), "the mapped index holds other parts");
                if verify {
                    assert!(
                        verified.is_ok(),
                        "the mapped opener verified what the decoder refused"
                    );
                }
                exercise(&index, choices, verify || finite);
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert!(
                    verify && verified.is_err(),
                    "the mapped opener refused what the decoder accepted (verify {verify}): {e}"
                );
            }
        }
    }
});

/// Searches and blends the way the audio path does and checks what the search promises.
/// `finite`: the index's values are known to be finite (verified), so blends of finite
/// queries must be finite too.
fn exercise(index: &PqIndex, choices: &[u8], finite: bool) {
    let (dim, nlist, ntotal) = (index.dim(), index.nlist(), index.ntotal());
    assert!(dim >= 1 && nlist >= 1);
    let total: usize = (0..nlist)
        .map(|l| index.list_start(l + 1) - index.list_start(l))
        .sum();
    assert_eq!(total, ntotal);
    assert_eq!(index.ids().len(), ntotal);
    check_parts(&index.to_parts());

    let mut pick = Bytes::new(choices);
    let max_k = 1 + pick.next() as usize % MAX_K;
    let max_nprobe = 1 + pick.next() as usize % 40;
    let mut searcher = PqSearcher::for_index(index, max_k, max_nprobe);
    let mut queries: Vec<Vec<f32>> = vec![
        (0..dim).map(|_| pick.next() as i8 as f32 / 16.0).collect(),
        vec![0.0; dim],
        (0..dim)
            .map(|i| if i % 2 == 0 { 1e30 } else { -3e29 })
            .collect(),
    ];
    if ntotal > 0 {
        let i = pick.next() as usize % ntotal;
        let list = (0..nlist).rfind(|&l| index.list_start(l) <= i).unwrap();
        let mut v = vec![0.0; dim];
        index.reconstruct(list, i - index.list_start(list), &mut v);
        queries.push(v);
    }
    let mut out = vec![0f32; dim];
    for query in &queries {
        let k = 1 + pick.next() as usize % max_k;
        let nprobe = 1 + pick.next() as usize % max_nprobe;
        if !searcher.fits(index, k, nprobe) {
            // Only a refinement factor larger than the searcher was sized for.
            assert!(index.base_k(k) > k);
            continue;
        }
        let found = searcher.search(index, query, k, nprobe).to_vec();
        assert_eq!(found.len(), k);
        for n in &found {
            if n.id < 0 {
                continue;
            }
            let l = n.list as usize;
            assert!(l < nlist, "list {l} of {nlist}");
            let start = index.list_start(l);
            let len = index.list_start(l + 1) - start;
            assert!(
                (n.offset as usize) < len,
                "offset {} in a list of {len}",
                n.offset
            );
            assert_eq!(index.ids()[start + n.offset as usize], n.id, "{n:?}");
            index.neighbour_vector(n, &mut out);
        }
        let valid: Vec<f32> = found
            .iter()
            .filter(|n| n.id >= 0)
            .map(|n| n.distance)
            .collect();
        if valid.iter().all(|d| d.is_finite()) {
            for pair in valid.windows(2) {
                let ordered = match index.metric() {
                    Metric::L2 => pair[0] <= pair[1],
                    Metric::InnerProduct => pair[0] >= pair[1],
                };
                assert!(ordered, "results out of order: {found:?}");
            }
        }

        let ratio = [0.0, 1.0, 0.5, f32::NAN, -3.0, 7.0][pick.next() as usize % 6];
        let expansion = (pick.next() % 4 == 0).then(|| QueryExpansion {
            k: pick.next() as usize % 20,
            alpha: pick.next() as f32 / 32.0,
        });
        let params = BlendParams {
            expansion,
            k,
            nprobe,
            ratio,
        };
        let outcome = searcher.blend(index, query, &params, &mut out);
        if finite {
            assert!(
                out.iter().all(|v| v.is_finite()),
                "blend of a finite query is not finite: {outcome:?}"
            );
        }
        if outcome == BlendOutcome::Copied {
            assert!(out
                .iter()
                .zip(query)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    let mut nan = vec![1.0f32; dim];
    nan[pick.next() as usize % dim] = f32::NAN;
    let outcome = searcher.blend(index, &nan, &BlendParams::default(), &mut out);
    assert_eq!(outcome, BlendOutcome::NonFiniteQuery);
    assert!(out
        .iter()
        .zip(&nan)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// What every accepted index's parts satisfy, whether or not their values are finite.
fn check_parts(parts: &PqParts) {
    assert_eq!(parts.centroids.len(), parts.nlist() * parts.dim);
    assert_eq!(parts.pq.m * parts.pq.dsub, parts.dim);
    for list in &parts.lists {
        assert_eq!(list.codes.len(), parts.list_code_bytes(list.ids.len()));
    }
    if let Some(r) = &parts.refine {
        assert_eq!(r.vectors.len(), parts.ntotal() * parts.dim);
    }
}

/// The same parts, floats compared by their bits (so NaN equals itself).
fn same(a: &PqParts, b: &PqParts) -> bool {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    (
        a.dim,
        a.metric,
        a.nprobe,
        a.by_residual,
        a.bbs,
        a.implem,
        a.qbs2,
    ) == (
        b.dim,
        b.metric,
        b.nprobe,
        b.by_residual,
        b.bbs,
        b.implem,
        b.qbs2,
    ) && (a.pq.m, a.pq.dsub) == (b.pq.m, b.pq.dsub)
        && bits(&a.centroids) == bits(&b.centroids)
        && bits(&a.pq.codebooks) == bits(&b.pq.codebooks)
        && a.lists == b.lists
        && a.metadata == b.metadata
        && match (&a.refine, &b.refine) {
            (None, None) => true,
            (Some(x), Some(y)) => {
                x.k_factor.to_bits() == y.k_factor.to_bits() && bits(&x.vectors) == bits(&y.vectors)
            }
            _ => false,
        }
}
