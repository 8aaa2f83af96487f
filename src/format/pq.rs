//! [`PqParts`]: the owned description of an IVF index whose vectors are stored as 4-bit product
//! quantizer codes packed for FastScan (faiss `IndexIVFPQFastScan`, factory `IVF…,PQ…x4fs`),
//! optionally with the exact vectors beside them for re-ranking (faiss `IndexRefineFlat`,
//! factory suffix `,RFlat`). The faiss reader ([`read_faiss_fastscan`](super::read_faiss_fastscan))
//! produces it.
//!
//! The codes keep faiss's block layout, which is what a FastScan kernel reads: a list of `n`
//! vectors holds `ceil(n / bbs)` blocks of [`PqParts::block_bytes`] bytes. Within a block, the
//! sub-quantizers come in pairs (`m2 / 2` of them, where `m2` is `m` rounded up to even); a pair
//! takes `bbs` bytes, made of `bbs / 32` groups of 32 bytes, one per 32 vectors. In a group,
//! byte `k < 16` holds the pair's even sub-quantizer and byte `16 + k` its odd one; the low
//! nibble belongs to vector `v` of the group's first 16 and the high nibble to vector `v + 16`,
//! where `k = 2v` for `v < 8` and `k = 2(v − 8) + 1` otherwise (faiss `pq4_pack_codes`). The
//! slots past the end of a list are zero, and so is the odd sub-quantizer's nibble when `m` is
//! odd.

use super::parts::{Metadata, Metric, MAX_DIM, MAX_NLIST, MAX_NTOTAL};
use super::FormatError;

/// Bits per product quantizer code: FastScan reads 4-bit codes only.
pub const PQ_NBITS: usize = 4;
/// Centroids per sub-quantizer (`2^PQ_NBITS`).
pub const PQ_KSUB: usize = 1 << PQ_NBITS;

/// A product quantizer of 4-bit codes: each vector is cut into `m` sub-vectors of `dsub`
/// values, and each sub-vector is stored as the number of the nearest of its sub-quantizer's
/// 16 centroids.
#[derive(Clone, Debug, PartialEq)]
pub struct ProductQuantizer {
    /// Number of sub-quantizers (faiss `M`).
    pub m: usize,
    /// Values per sub-vector (`dim / m`).
    pub dsub: usize,
    /// The centroids, `m × 16 × dsub`: sub-quantizer `j`'s centroid `c` starts at
    /// `(j × 16 + c) × dsub` (faiss's `ProductQuantizer::centroids`, unchanged).
    pub codebooks: Vec<f32>,
}

impl ProductQuantizer {
    /// Bits per code (always [`PQ_NBITS`]).
    pub fn nbits(&self) -> usize {
        PQ_NBITS
    }

    /// Sub-quantizer count rounded up to even (faiss `M2`): the packed layout stores
    /// sub-quantizers in pairs.
    pub fn m2(&self) -> usize {
        self.m.next_multiple_of(2)
    }

    /// Bytes of one vector's unpacked code (`m2 / 2`, faiss `code_size`).
    pub fn code_size(&self) -> usize {
        self.m2() / 2
    }

    /// The 16 centroids of sub-quantizer `j`, `16 × dsub` values.
    pub fn codebook(&self, j: usize) -> &[f32] {
        let n = PQ_KSUB * self.dsub;
        &self.codebooks[j * n..(j + 1) * n]
    }
}

/// One inverted list: ids and packed codes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PqList {
    /// Caller-visible ids, one per vector, in storage order.
    pub ids: Vec<i64>,
    /// The packed codes, `ceil(ids.len() / bbs) × block_bytes` bytes in faiss's block layout
    /// (see the module docs).
    pub codes: Vec<u8>,
}

/// The exact vectors of a refined index, used to re-rank the candidates the codes find.
#[derive(Clone, Debug, PartialEq)]
pub struct RefineFlat {
    /// `ntotal × dim` values; row `i` is the vector of id `i` (the ids of a refined index are
    /// `0..ntotal`).
    pub vectors: Vec<f32>,
    /// How many candidates per wanted neighbour the codes propose for re-ranking (faiss
    /// `k_factor`: `k × k_factor` candidates for `k` neighbours); at least 1.
    pub k_factor: f32,
}

/// The product-quantizer part of an IVF-PQ FastScan index's faiss factory string,
/// `PQ{m}x4fs[r][_{bbs}][,RFlat]` (faiss's default block size, 32, left out), as in
/// `IVF1024,PQ128x4fs,RFlat`.
pub fn pq_recipe(m: usize, by_residual: bool, bbs: usize, refined: bool) -> String {
    let mut s = format!("PQ{m}x4fs{}", if by_residual { "r" } else { "" });
    if bbs != 32 {
        s.push_str(&format!("_{bbs}"));
    }
    if refined {
        s.push_str(",RFlat");
    }
    s
}

/// A complete IVF-PQ FastScan index (4-bit codes), optionally refined, as owned data.
#[derive(Clone, Debug, PartialEq)]
pub struct PqParts {
    /// Vector dimension.
    pub dim: usize,
    /// Distance metric (of the coarse quantizer, the codes and the refinement alike).
    pub metric: Metric,
    /// The n_probe the index was saved with (informational; search takes its own).
    pub nprobe: u32,
    /// Coarse centroids, `nlist × dim`, row-major.
    pub centroids: Vec<f32>,
    /// The product quantizer.
    pub pq: ProductQuantizer,
    /// Whether the codes encode each vector's residual from its list's centroid (factory
    /// `x4fsr`) rather than the vector itself (`x4fs`).
    pub by_residual: bool,
    /// Vectors per block of packed codes (faiss `bbs`, a multiple of 32; 32 unless the factory
    /// string says otherwise, as in `PQ64x4fs_64`).
    pub bbs: usize,
    /// faiss's choice of FastScan implementation (`implem`; 0 lets faiss choose). Kept for
    /// information: it changes how faiss searches, not what it finds.
    pub implem: i32,
    /// faiss's query batching (`qbs2`; 0 lets faiss choose). Kept for information.
    pub qbs2: u64,
    /// One list per centroid.
    pub lists: Vec<PqList>,
    /// The exact vectors, for an index wrapped in faiss `IndexRefineFlat` (`,RFlat`).
    pub refine: Option<RefineFlat>,
    /// What the vectors are.
    pub metadata: Metadata,
}

impl PqParts {
    /// The product-quantizer part of the faiss factory string ([`pq_recipe`]).
    pub fn recipe(&self) -> String {
        pq_recipe(self.pq.m, self.by_residual, self.bbs, self.refine.is_some())
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.lists.len()
    }

    /// Number of stored vectors.
    pub fn ntotal(&self) -> usize {
        self.lists.iter().map(|l| l.ids.len()).sum()
    }

    /// Bytes of one block of packed codes: `bbs` vectors of `m2` 4-bit codes.
    pub fn block_bytes(&self) -> usize {
        self.bbs * self.pq.code_size()
    }

    /// Bytes of packed codes a list of `n` vectors holds: whole blocks.
    pub fn list_code_bytes(&self, n: usize) -> usize {
        n.div_ceil(self.bbs.max(1)) * self.block_bytes()
    }

    /// Checks that every size agrees, every value is finite and the refinement (if any) covers
    /// exactly the ids `0..ntotal`, once each.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |m: String| Err(FormatError::InvalidParts(m));
        let (dim, pq) = (self.dim, &self.pq);
        if dim == 0 || dim > MAX_DIM {
            return bad(format!("dim {dim} is outside 1..={MAX_DIM}"));
        }
        let nlist = self.lists.len();
        if nlist == 0 || nlist as u64 > MAX_NLIST {
            return bad(format!("nlist {nlist} is outside 1..={MAX_NLIST}"));
        }
        if self.centroids.len() != nlist * dim {
            return bad(format!(
                "{} centroid values for {nlist} lists of dim {dim} (expected {})",
                self.centroids.len(),
                nlist * dim
            ));
        }
        if let Some(i) = self.centroids.iter().position(|v| !v.is_finite()) {
            return bad(format!("centroid value {i} is not finite"));
        }
        if pq.m == 0 || pq.m * pq.dsub != dim {
            return bad(format!(
                "{} sub-quantizers of {} values do not make dim {dim}",
                pq.m, pq.dsub
            ));
        }
        if pq.codebooks.len() != pq.m * PQ_KSUB * pq.dsub {
            return bad(format!(
                "{} codebook values for {} sub-quantizers of 16 centroids of {} values",
                pq.codebooks.len(),
                pq.m,
                pq.dsub
            ));
        }
        if let Some(i) = pq.codebooks.iter().position(|v| !v.is_finite()) {
            return bad(format!("codebook value {i} is not finite"));
        }
        if self.bbs == 0 || !self.bbs.is_multiple_of(32) {
            return bad(format!("bbs {} is not a positive multiple of 32", self.bbs));
        }
        let ntotal = self.ntotal() as u64;
        if ntotal > MAX_NTOTAL {
            return bad(format!("{ntotal} vectors exceed the limit of {MAX_NTOTAL}"));
        }
        for (l, list) in self.lists.iter().enumerate() {
            let want = self.list_code_bytes(list.ids.len());
            if list.codes.len() != want {
                return bad(format!(
                    "list {l} has {} ids but {} bytes of codes (expected {want})",
                    list.ids.len(),
                    list.codes.len()
                ));
            }
        }
        if let Some(refine) = &self.refine {
            if refine.vectors.len() as u64 != ntotal * dim as u64 {
                return bad(format!(
                    "{} refinement values for {ntotal} vectors of dim {dim}",
                    refine.vectors.len()
                ));
            }
            if let Some(i) = refine.vectors.iter().position(|v| !v.is_finite()) {
                return bad(format!("refinement value {i} is not finite"));
            }
            if !(refine.k_factor.is_finite() && refine.k_factor >= 1.0) {
                return bad(format!(
                    "k_factor {} is not a finite number of at least 1",
                    refine.k_factor
                ));
            }
            if let Err(m) = ids_cover(self.lists.iter().map(|l| l.ids.as_slice()), ntotal) {
                return bad(m);
            }
        }
        Ok(())
    }
}

/// Checks that `lists` hold every id of `0..ntotal` once (the ids of a refined index number
/// the rows of its exact vectors). The caller has checked that the lists hold `ntotal` ids.
pub(crate) fn ids_cover<'a>(
    lists: impl Iterator<Item = &'a [i64]>,
    ntotal: u64,
) -> Result<(), String> {
    let mut seen = vec![0u64; ntotal.div_ceil(64) as usize];
    for (l, ids) in lists.enumerate() {
        for &id in ids {
            if id < 0 || id as u64 >= ntotal {
                return Err(format!(
                    "list {l} holds id {id}, but the refinement numbers its {ntotal} vectors 0..{ntotal}"
                ));
            }
            let (word, bit) = ((id / 64) as usize, id % 64);
            if seen[word] >> bit & 1 == 1 {
                return Err(format!("id {id} is stored twice (again in list {l})"));
            }
            seen[word] |= 1 << bit;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> PqParts {
        let (dim, m, bbs) = (4, 2, 32);
        PqParts {
            dim,
            metric: Metric::L2,
            nprobe: 1,
            centroids: vec![0.0; 2 * dim],
            pq: ProductQuantizer {
                m,
                dsub: dim / m,
                codebooks: (0..m * PQ_KSUB * dim / m).map(|i| i as f32).collect(),
            },
            by_residual: false,
            bbs,
            implem: 0,
            qbs2: 0,
            lists: vec![
                PqList {
                    ids: vec![0, 2],
                    codes: vec![0; 32],
                },
                PqList {
                    ids: vec![1],
                    codes: vec![0; 32],
                },
            ],
            refine: Some(RefineFlat {
                vectors: vec![0.5; 3 * dim],
                k_factor: 1.0,
            }),
            metadata: Metadata::default(),
        }
    }

    #[test]
    fn recipes_read_as_faiss_factory_strings() {
        assert_eq!(pq_recipe(128, false, 32, true), "PQ128x4fs,RFlat");
        assert_eq!(pq_recipe(64, true, 64, false), "PQ64x4fsr_64");
        let mut p = small();
        assert_eq!(p.recipe(), "PQ2x4fs,RFlat");
        p.refine = None;
        p.by_residual = true;
        assert_eq!(p.recipe(), "PQ2x4fsr");
    }

    #[test]
    fn sizes_of_the_block_layout() {
        let p = small();
        assert_eq!((p.pq.m2(), p.pq.code_size(), p.block_bytes()), (2, 1, 32));
        assert_eq!(p.list_code_bytes(0), 0);
        assert_eq!(p.list_code_bytes(32), 32);
        assert_eq!(p.list_code_bytes(33), 64);
        let odd = ProductQuantizer {
            m: 3,
            dsub: 1,
            codebooks: vec![],
        };
        assert_eq!((odd.m2(), odd.code_size()), (4, 2));
        assert_eq!(p.pq.codebook(1)[0], 32.0);
    }

    #[test]
    fn validate_accepts_consistent_parts_and_names_what_is_not() {
        small().validate().unwrap();
        type Edit = fn(&mut PqParts);
        let cases: Vec<(Edit, &str)> = vec![
            (|p| p.lists[0].codes.push(0), "bytes of codes"),
            (|p| p.bbs = 48, "multiple of 32"),
            (|p| p.pq.m = 3, "sub-quantizers"),
            (|p| p.pq.codebooks.pop().map(drop).unwrap_or(()), "codebook"),
            (|p| p.centroids[1] = f32::NAN, "not finite"),
            (|p| p.lists[1].ids[0] = 2, "twice"),
            (|p| p.lists[1].ids[0] = 3, "numbers its"),
            (|p| p.lists[1].ids[0] = -1, "numbers its"),
            (|p| p.refine.as_mut().unwrap().k_factor = 0.5, "k_factor"),
            (
                |p| p.refine.as_mut().unwrap().vectors.push(0.0),
                "refinement values",
            ),
        ];
        for (edit, want) in cases {
            let mut p = small();
            edit(&mut p);
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        // Without a refinement, ids are the caller's.
        let mut p = small();
        p.refine = None;
        p.lists[1].ids[0] = -7;
        p.validate().unwrap();
    }
}
