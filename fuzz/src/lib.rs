//! Checks shared by the fuzz targets: whatever a reader accepts must be a usable index.

use knnblend::format::Metric;
use knnblend::index::{BlendOutcome, BlendParams, IvfIndex, Searcher, MAX_K};

/// Takes the next byte of `bytes` (cycling), or 0 when there are none.
pub struct Bytes<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Bytes<'a> {
    /// Reads `bytes` cyclically.
    pub fn new(bytes: &'a [u8]) -> Self {
        Bytes { bytes, at: 0 }
    }

    /// The next byte.
    pub fn next(&mut self) -> u8 {
        if self.bytes.is_empty() {
            return 0;
        }
        let b = self.bytes[self.at % self.bytes.len()];
        self.at += 1;
        b
    }
}

/// Uses an index the way the audio path does and checks every promise the search makes:
/// bounded result counts, sorted results, ids taken from the index, finite blends of finite
/// queries, ratio 0 copying the query, non-finite queries passed through. Also checks that the
/// index converts to parts and back unchanged. `choices` steers k, n_probe, ratio and queries.
pub fn exercise(index: &IvfIndex, choices: &[u8]) {
    let (dim, nlist, ntotal) = (index.dim(), index.nlist(), index.ntotal());
    assert!(dim >= 1 && nlist >= 1);
    let total: usize = (0..nlist).map(|l| index.list_len(l)).sum();
    assert_eq!(total, ntotal);

    let parts = index.to_parts();
    parts
        .validate()
        .expect("an index that opened converts to valid parts");
    let again = IvfIndex::from_parts(&parts).expect("parts of an opened index build an index");
    assert_eq!(
        again.to_parts(),
        parts,
        "parts → index → parts changed the data"
    );

    let mut pick = Bytes::new(choices);
    let mut searcher = Searcher::new();
    let mut queries: Vec<Vec<f32>> = vec![
        (0..dim).map(|_| pick.next() as i8 as f32 / 16.0).collect(),
        (0..dim)
            .map(|i| if i % 2 == 0 { f32::MAX } else { -1e30 })
            .collect(),
        vec![0.0; dim],
    ];
    if ntotal > 0 {
        queries.push(index.vector(pick.next() as usize % ntotal).to_vec());
    }
    let mut out = vec![0f32; dim];
    for query in &queries {
        let k = pick.next() as usize % 40;
        let nprobe = pick.next() as usize % 70;
        let found = searcher.search(index, query, k, nprobe);
        assert!(found.len() <= k.clamp(1, MAX_K).min(ntotal));
        for pair in found.windows(2) {
            let ordered = match index.metric() {
                Metric::L2 => pair[0].distance <= pair[1].distance,
                Metric::InnerProduct => pair[0].distance >= pair[1].distance,
            };
            assert!(ordered, "results out of order: {found:?}");
        }
        for (i, n) in found.iter().enumerate() {
            assert!((n.pos as usize) < ntotal);
            assert_eq!(index.ids()[n.pos as usize], n.id);
            assert!(
                found[..i].iter().all(|m| m.pos != n.pos),
                "position returned twice"
            );
        }

        let ratio = [0.0, 1.0, 0.5, f32::NAN, -3.0, 7.0][pick.next() as usize % 6];
        let params = BlendParams {
            expansion: None,
            k,
            nprobe,
            ratio,
        };
        let outcome = searcher.blend(index, query, &params, &mut out);
        assert!(
            out.iter().all(|v| v.is_finite()),
            "blend of a finite query is not finite: {outcome:?}"
        );
        if outcome == BlendOutcome::Copied {
            assert!(out
                .iter()
                .zip(query)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    let mut nan = vec![1.0f32; dim];
    nan[pick.next() as usize % dim] = f32::NAN;
    assert!(searcher.search(index, &nan, 8, 1).is_empty());
    let outcome = searcher.blend(index, &nan, &BlendParams::default(), &mut out);
    assert_eq!(outcome, BlendOutcome::NonFiniteQuery);
    assert!(out
        .iter()
        .zip(&nan)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}
