//! Helpers shared by the `live_*` integration tests: indexes at the shapes users run (the
//! plugin's 80-d voices, RVC's 256-d and 768-d indexes with RVC's list counts) whose vectors
//! encode which index they came from, feature-like query frames, the audio-side work of one
//! block (single and block search), a check that a shape engages the search paths it is meant
//! to prove, per-thread page-fault counts, and mapping counts; and IVF-PQ FastScan indexes of
//! the same voices (trained by faiss, refined with `RFlat` or not) at small shapes, with a
//! check that a file is the PQ index it is meant to be.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use faiss::index::refine_flat::RefineFlatIndex;
use faiss::{index_factory, Index, MetricType};
use knnblend::format::{
    self, kbi, IndexParts, IndexStructure, ListParts, Metadata, Metric, PqParts,
};
use knnblend::index::{
    rvc_nlist, AnyIndex, BlendOutcome, BlendParams, IvfIndex, PqIndex, PqSearcher, SearchStats,
    Searcher, BLOCK,
};
use knnblend::live::{live, AudioEngine, Controller, LiveConfig, LoadTicket};

/// Largest dimension of the test indexes (RVC v2's features).
pub const MAX_DIM: usize = 768;
/// Dimension of the small indexes of the file tests (`live_files.rs`), which are not about
/// search paths.
pub const SMALL_DIM: usize = 32;
/// Neighbours per blend (RVC's k).
pub const K: usize = 8;

/// The shape of a test index: dimension, stored vectors, inverted lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub dim: usize,
    pub n: usize,
    pub nlist: usize,
}

impl Shape {
    /// `n` vectors of `dim` in RVC's list count, `min(16·√n, n / 39)` (what `knnblend build`
    /// and RVC's training use).
    pub fn rvc(dim: usize, n: usize) -> Shape {
        Shape {
            dim,
            n,
            nlist: rvc_nlist(n),
        }
    }

    /// For messages: `d=768 N=20000 nlist=512`.
    pub fn label(&self) -> String {
        format!("d={} N={} nlist={}", self.dim, self.n, self.nlist)
    }

    /// Whether the 8-bit paths engage at this dimension (from 128 on: the 8-bit centroid
    /// query with its 16-bit rescreen, list codes, the shared block screen with its tile
    /// kernels); below, centroids are screened with the 16-bit query, lists are scanned in f32
    /// and a block is searched query by query.
    pub fn coded(&self) -> bool {
        self.dim >= 128
    }
}

/// The plugin's own voices: 80-dimensional features, about eight minutes of voiced frames.
pub fn plugin_80() -> Shape {
    Shape::rvc(80, 50_000)
}

/// An RVC v1 index (256-dimensional HuBERT features).
pub fn rvc_256() -> Shape {
    Shape::rvc(256, 30_000)
}

/// An RVC v2 index (768-dimensional ContentVec features), with more lists (615) than a
/// centroid screen may keep, so the 16-bit rescreen can run.
pub fn rvc_768() -> Shape {
    Shape::rvc(768, 24_000)
}

/// Every shape a realtime proof runs at.
pub fn shapes() -> [Shape; 3] {
    [plugin_80(), rvc_256(), rvc_768()]
}

/// The shape of the file tests: `n` vectors of [`SMALL_DIM`] in 32 lists.
pub fn small(n: usize) -> Shape {
    Shape {
        dim: SMALL_DIM,
        n,
        nlist: 32,
    }
}

/// A small deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.f32() * 0.5 + 0.5) * n as f32) as usize % n
    }

    /// About standard normal: the sum of four 16-bit uniforms (Irwin–Hall), centred and
    /// scaled to unit variance. One generator step per value, so indexes of millions of values
    /// build quickly.
    pub fn normal(&mut self) -> f32 {
        let x = self.next_u64();
        let sum: u32 = (0..4).map(|i| ((x >> (16 * i)) & 0xffff) as u32).sum();
        (sum as f32 / 65_536.0 - 2.0) * 3f32.sqrt()
    }
}

/// Component 0 of a glitch frame (features are of order 1).
const GLITCH: f32 = 400.0;

/// Phoneme-like centres every voice's features cluster around.
const PHONEMES: usize = 48;

/// The feature space of a dimension, shared by every voice and by the query frames: phoneme
/// centres (standard normal) and a per-component spread of frames around their centre.
struct Space {
    dim: usize,
    centres: Vec<f32>,
    spread: Vec<f32>,
}

impl Space {
    fn new(dim: usize) -> Space {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (dim as u64) << 20);
        Space {
            dim,
            centres: (0..PHONEMES * dim).map(|_| rng.normal()).collect(),
            spread: (0..dim).map(|_| 0.2 + 0.2 * (rng.f32() + 1.0)).collect(),
        }
    }

    fn centre(&self, p: usize) -> &[f32] {
        &self.centres[p * self.dim..(p + 1) * self.dim]
    }
}

/// An index of `shape` whose every vector has component 0 equal to `identity`: a blend at
/// ratio 1 outputs `identity` there, revealing which index served it. Like a trained RVC
/// index: the list centroids scatter around the phoneme centres of the feature space (each
/// voice its own), every stored vector lies near its list's centroid, list lengths vary.
/// Identities are of the order of the features (`1.0` to `4.0` in the proofs), so they do not
/// change how the screens behave.
pub fn parts(shape: &Shape, identity: f32) -> IndexParts {
    let Shape { dim, n, nlist } = *shape;
    let space = Space::new(dim);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (identity.to_bits() as u64) << 7 ^ dim as u64);
    let mut centroids = Vec::with_capacity(nlist * dim);
    for _ in 0..nlist {
        let p = space.centre(rng.below(PHONEMES));
        let start = centroids.len();
        centroids.extend(p.iter().map(|&x| x + 0.6 * rng.normal()));
        centroids[start] = identity;
    }
    let mut lists = vec![ListParts::default(); nlist];
    for i in 0..n {
        let l = rng.below(nlist);
        let c = &centroids[l * dim..(l + 1) * dim];
        let list = &mut lists[l];
        list.ids.push(i as i64);
        let start = list.vectors.len();
        list.vectors.extend(
            c.iter()
                .zip(&space.spread)
                .map(|(&c, &s)| c + s * rng.normal()),
        );
        list.vectors[start] = identity;
    }
    let mut metadata = Metadata {
        features: "live-test".into(),
        ..Metadata::default()
    };
    metadata
        .extra
        .insert("identity".into(), serde_json::json!(identity));
    IndexParts {
        dim,
        metric: Metric::L2,
        nprobe: 1,
        centroids,
        lists,
        metadata,
    }
}

/// Writes an identity index of `shape` to `dir/name`, atomically by rename (a file that was
/// there keeps its inode for whoever maps it), without `write_kbi`'s fsync: the indexes of
/// the proofs are tens of megabytes and need not survive a crash.
pub fn write(dir: &Path, name: &str, shape: &Shape, identity: f32) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(
        &tmp,
        kbi::encode(&parts(shape, identity)).unwrap().as_slice(),
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// The identity of voice `i` of [`four_voices`].
pub fn identity(i: usize) -> f32 {
    i as f32
}

/// The four identity indexes the swap tests swap among: `dir/{prefix}{i}.kbi` for i = 1..=4,
/// identity [`identity`]`(i)`, all of `shape`.
pub fn four_voices(dir: &Path, prefix: &str, shape: &Shape) -> Vec<PathBuf> {
    (1..=4)
        .map(|i| write(dir, &format!("{prefix}{i}.kbi"), shape, identity(i)))
        .collect()
}

/// `dir/name`: the identity index of `shape` balanced (lists at most 3 × the mean) and
/// spilled (`build --max-list-factor 3 --spill 1`), so the audio side serves lists that hold
/// second copies.
pub fn spilled_voice(dir: &Path, name: &str, shape: &Shape, identity: f32) -> PathBuf {
    use knnblend::index::{balance, spill, SpillOptions};
    let (b, _) = balance(&parts(shape, identity), 3.0, 1).unwrap();
    let cap = (3.0 * 2.0 * b.ntotal() as f64 / b.nlist() as f64).ceil() as usize;
    let opts = SpillOptions {
        max_list: Some(cap),
        ..SpillOptions::default()
    };
    let (s, r) = spill(&b, opts).unwrap();
    assert!(r.spill.duplicates as usize > shape.n / 2, "{r:?}");
    let path = dir.join(name);
    knnblend::format::write_kbi(&path, &s).unwrap();
    let index = knnblend::index::IvfIndex::open(&path).unwrap();
    assert!(index.is_spilled() && index.metadata().balance().is_some());
    path
}

/// [`four_voices`], each a [`spilled_voice`].
pub fn four_spilled_voices(dir: &Path, prefix: &str, shape: &Shape) -> Vec<PathBuf> {
    (1..=4)
        .map(|i| spilled_voice(dir, &format!("{prefix}{i}.kbi"), shape, identity(i)))
        .collect()
}

/// A live runtime of `slots` slots for indexes of up to `dim` dimensions, crossfading over
/// `crossfade` seconds with a feature frame every `frame` seconds.
pub fn runtime(dim: usize, slots: usize, crossfade: f32, frame: f32) -> (Controller, AudioEngine) {
    live(LiveConfig {
        slots,
        max_dim: dim,
        crossfade_seconds: crossfade,
        frame_period_seconds: frame,
        ..LiveConfig::default()
    })
}

/// One control-side swap of a storm.
#[derive(Clone, Copy, Debug)]
pub enum Swap {
    /// A background load (its ticket goes to `tickets`).
    Load,
    /// Prepare on this thread, then publish.
    Publish,
    /// Empty the slot.
    Unload,
}

/// Performs `op` on `slot` with `file` (not used by [`Swap::Unload`]).
pub fn swap(
    control: &Controller,
    op: Swap,
    slot: usize,
    file: &Path,
    tickets: &mut Vec<LoadTicket>,
) {
    match op {
        Swap::Load => tickets.push(control.load(slot, file)),
        Swap::Publish => {
            let p = control.prepare(file, |_, _| {}).unwrap();
            control.publish(slot, p).unwrap();
        }
        Swap::Unload => control.unload(slot).unwrap(),
    }
}

/// The identity an index was made with.
pub fn identity_of(index: &AnyIndex) -> f32 {
    match index {
        AnyIndex::Flat(ix) => ix.vector(0)[0],
        AnyIndex::Pq(ix) => match ix.refine_vectors() {
            Some(v) => v[0],
            None => {
                let l = (0..ix.nlist()).find(|&l| ix.list_start(l) < ix.list_start(l + 1));
                let mut v = vec![0f32; ix.dim()];
                ix.reconstruct(l.expect("a stored vector"), 0, &mut v);
                v[0]
            }
        },
    }
}

/// `count` query frames of `dim` values: a source speaker's frames around the feature space's
/// phoneme centres (each voice's lists scatter around the same centres), component 0 zero;
/// every 16th frame is a glitch, far out along component 0, the one direction in which a
/// voice's stored features do not vary (every vector has the voice's identity there). The
/// 8-bit centroid screen cannot narrow such a frame down (its quantisation error grows with
/// the frame's largest component, the keys' spread does not), so from 128 dimensions the
/// 16-bit rescreen runs for it, when the index has more lists than a screen may keep
/// (384). A blend at ratio 1 still outputs the identity.
pub fn queries(dim: usize, count: usize, seed: u64) -> Vec<f32> {
    let space = Space::new(dim);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9) | 1);
    let mut out = Vec::with_capacity(count * dim);
    for i in 0..count {
        let p = space.centre(rng.below(PHONEMES));
        let start = out.len();
        out.extend(
            p.iter()
                .zip(&space.spread)
                .map(|(&c, &s)| c + 0.6 * rng.normal() + s * rng.normal()),
        );
        out[start] = 0.0;
        if i % 16 == 15 {
            out[start] = GLITCH;
        }
    }
    out
}

/// Component 0 of a full-ratio blend of a zero frame: the serving index's identity (0 when
/// nothing serves and the frame passes through).
pub fn served(audio: &mut AudioEngine) -> f32 {
    let dim = audio.serving().map_or(1, AnyIndex::dim).min(MAX_DIM);
    let q = [0f32; MAX_DIM];
    let mut out = [0f32; MAX_DIM];
    audio.blend(&q[..dim], K, 1.0, &mut out[..dim]);
    out[0]
}

/// Whether `a` equals the identity `b` up to the blend's rounding.
pub fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3 * b.abs().max(1.0)
}

/// The audio side's work in one block: RVC's frames of a block (whole rows of `dim`),
/// blended either as one `blend_block` call (runs of [`BLOCK`] frames searched with one pass
/// over the centroid table) or frame by frame with `blend`. Built before the audio thread's
/// guarded region; blending allocates nothing.
pub struct Work {
    pub dim: usize,
    pub frames: Vec<f32>,
    pub out: Vec<f32>,
    /// Frames blended with neighbours so far, by `blend_block` and by `blend`.
    pub by_block: u64,
    pub by_frame: u64,
    /// Blends after which the engine had a match meter reading of the block.
    pub metered: u64,
}

impl Work {
    /// `frames` query frames of `dim` (see [`queries`]).
    pub fn new(dim: usize, frames: usize, seed: u64) -> Work {
        let frames = queries(dim, frames, seed);
        Work {
            dim,
            out: vec![0f32; frames.len()],
            frames,
            by_block: 0,
            by_frame: 0,
            metered: 0,
        }
    }

    /// Frames per block.
    pub fn len(&self) -> usize {
        self.frames.len() / self.dim
    }

    /// Blends every frame at `ratio`: with one `blend_block` call when `block`, else one
    /// `blend` per frame; then reads the block's match meter.
    pub fn blend(&mut self, audio: &mut AudioEngine, block: bool, ratio: f32) {
        if block {
            self.by_block +=
                audio.blend_block(&self.frames, self.dim, K, ratio, &mut self.out) as u64;
        } else {
            for (q, o) in self
                .frames
                .chunks_exact(self.dim)
                .zip(self.out.chunks_exact_mut(self.dim))
            {
                let outcome = audio.blend(q, K, ratio, o);
                self.by_frame += matches!(outcome, BlendOutcome::Blended { .. }) as u64;
            }
        }
        self.metered += audio.block_match().is_some() as u64;
    }

    /// Component 0 of output frame `i`.
    pub fn value(&self, i: usize) -> f32 {
        self.out[i * self.dim]
    }
}

/// How searching went on `index` for `queries` (whole rows), single searches and block
/// searches (runs of [`BLOCK`]) with fresh searchers, at RVC's k and n_probe 1.
pub fn search_paths(index: &IvfIndex, queries: &[f32]) -> (SearchStats, SearchStats) {
    let d = index.dim();
    let mut single = Searcher::new();
    for q in queries.chunks_exact(d) {
        single.search(index, q, K, 1);
    }
    let mut block = Searcher::new();
    for qs in queries.chunks(d * BLOCK) {
        block.search_block(index, qs, K, 1);
    }
    (single.stats(), block.stats())
}

/// Checks that a proof at `shape` exercises the search paths users run at that shape, on the
/// voice in `file` and the frames `queries`: from 128 dimensions on, the 8-bit centroid screen
/// with the 16-bit rescreen and list codes, in single and block search; below, the 16-bit
/// screen and f32 list scans. A proof at a shape whose data fell back to exact scans
/// everywhere would prove less than it says. Prints the counts.
pub fn assert_paths_engage(shape: &Shape, file: &Path, queries: &[f32]) {
    let index = IvfIndex::open(file).unwrap();
    assert_eq!(
        (index.dim(), index.ntotal(), index.nlist()),
        (shape.dim, shape.n, shape.nlist)
    );
    let (single, block) = search_paths(&index, queries);
    let n = (queries.len() / shape.dim) as u64;
    println!(
        "{}: {} screening bytes; single search of {n} frames: {single:?}; block search: \
         {block:?}",
        shape.label(),
        index.screening_bytes()
    );
    let what = shape.label();
    assert!(
        index.centroid_screen_bytes().is_some(),
        "{what}: no centroid table"
    );
    assert_eq!(single.queries, n, "{what}");
    // The screen narrows the lists down for nearly every frame (the outliers may scan).
    assert!(single.exact_scans * 8 <= n, "{what}: {single:?}");
    assert!(block.exact_scans * 8 <= n, "{what}: {block:?}");
    if shape.coded() {
        assert!(
            index.screening_bytes() > index.centroid_screen_bytes().unwrap(),
            "{what}: no list codes"
        );
        assert!(
            single.rescreened > 0,
            "{what}: no 16-bit rescreen: {single:?}"
        );
        assert!(
            single.codes_screened > single.vectors_scanned,
            "{what}: lists mostly scanned in f32: {single:?}"
        );
        // Block search screens through the shared 8-bit pass (no counter of its own); a
        // glitch frame fails it and is searched on its own, rescreened.
        assert!(block.codes_screened > 0, "{what}: {block:?}");
        assert!(block.rescreened > 0, "{what}: {block:?}");
    } else {
        assert_eq!(single.codes_screened, 0, "{what}: {single:?}");
        assert_eq!(single.rescreened, 0, "{what}: {single:?}");
        assert!(single.vectors_scanned > 0, "{what}: {single:?}");
    }
}

/// Minor + major page faults of the calling thread so far (`getrusage(RUSAGE_THREAD)`).
pub fn thread_faults() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        (u.ru_minflt + u.ru_majflt) as u64
    }
}

/// Number of distinct memory maps of files under `dir` in this process (a map split into
/// several areas is counted once: only its area at file offset 0 is).
pub fn mappings_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 6 && f[5].starts_with(&*dir) && u64::from_str_radix(f[2], 16) == Ok(0)
        })
        .count()
}

/// The shape of an IVF-PQ FastScan test index: the IVF shape and the product quantizer's
/// sub-quantizer count `m` (`PQ{m}x4fs`; it divides the dimension). A few thousand vectors in
/// RVC's list count, so faiss trains each in seconds on two cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PqShape {
    pub shape: Shape,
    pub m: usize,
}

impl PqShape {
    /// faiss's factory string, `IVF102,PQ40x4fs` (`,RFlat` appended when `refine`).
    pub fn factory(&self, refine: bool) -> String {
        let rflat = if refine { ",RFlat" } else { "" };
        format!("IVF{},PQ{}x4fs{rflat}", self.shape.nlist, self.m)
    }

    /// For messages: `d=80 N=4000 nlist=102 PQ40x4fs`.
    pub fn label(&self) -> String {
        format!("{} PQ{}x4fs", self.shape.label(), self.m)
    }
}

/// The plugin's 80-d voices as IVF-PQ: `PQ40x4fs` (2 dimensions per sub-quantizer).
pub fn pq_80() -> PqShape {
    PqShape {
        shape: Shape::rvc(80, 4000),
        m: 40,
    }
}

/// RVC v1's 256-d features as IVF-PQ: `PQ128x4fs`, as in `pq_serving.rs`.
pub fn pq_256() -> PqShape {
    PqShape {
        shape: Shape::rvc(256, 4000),
        m: 128,
    }
}

/// RVC v2's 768-d features as IVF-PQ: `PQ192x4fs`, as in `pq_serving.rs`.
pub fn pq_768() -> PqShape {
    PqShape {
        shape: Shape::rvc(768, 3000),
        m: 192,
    }
}

/// Every IVF-PQ shape a realtime proof runs at.
pub fn pq_shapes() -> [PqShape; 3] {
    [pq_80(), pq_256(), pq_768()]
}

extern "C" {
    /// OpenMP's thread count for the calling thread's parallel regions (libgomp, which the
    /// static faiss links).
    fn omp_set_num_threads(n: std::os::raw::c_int);
}

/// The identity voice of [`parts`] at `pq.shape` as an IVF-PQ FastScan index: its vectors (by
/// id) trained and added by faiss's `index_factory` (`IVF…,PQ…x4fs`, wrapped in faiss's
/// `IndexRefineFlat` when `refine`), written by faiss into `scratch` and read back, with the
/// voice's metadata. Every vector has the identity as component 0, so the refine vectors and
/// the first sub-quantizer's centroids (the means of such vectors) carry it too. faiss trains
/// on one thread: on a loaded two-core machine its spinning OpenMP threads made a training
/// twenty times slower.
pub fn pq_parts(pq: &PqShape, identity: f32, refine: bool, scratch: &Path) -> PqParts {
    // SAFETY: sets an OpenMP setting of the calling thread; no memory is involved.
    unsafe { omp_set_num_threads(1) };
    let flat = parts(&pq.shape, identity);
    let dim = flat.dim;
    let mut rows = vec![0f32; pq.shape.n * dim];
    for list in &flat.lists {
        for (id, v) in list.ids.iter().zip(list.vectors.chunks_exact(dim)) {
            rows[*id as usize * dim..][..dim].copy_from_slice(v);
        }
    }
    let factory = format!("IVF{},PQ{}x4fs", pq.shape.nlist, pq.m);
    let mut base = index_factory(dim as u32, &factory, MetricType::L2).unwrap();
    base.train(&rows).unwrap();
    let path = scratch.join(format!(".pq-{}-{identity}-{}.index", dim, refine as u8));
    if refine {
        let mut w = RefineFlatIndex::new(base).unwrap();
        w.add(&rows).unwrap();
        faiss::write_index(&w, path.to_str().unwrap()).unwrap();
    } else {
        base.add(&rows).unwrap();
        faiss::write_index(&base, path.to_str().unwrap()).unwrap();
    }
    let mut out = format::read_faiss_fastscan_file(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    out.metadata = flat.metadata;
    out.nprobe = 1;
    out
}

/// Writes the IVF-PQ identity index of `pq` ([`pq_parts`]) to `dir/name` as a PQ `.kbi`
/// (atomically, by rename).
pub fn write_pq(dir: &Path, name: &str, pq: &PqShape, identity: f32, refine: bool) -> PathBuf {
    let path = dir.join(name);
    format::write_pq_kbi(&path, &pq_parts(pq, identity, refine, dir)).unwrap();
    path
}

/// The four voices the IVF-PQ swap tests swap among, identities 1 to 4: `{prefix}1.kbi` PQ
/// refined (`RFlat`), `{prefix}2.kbi` PQ unrefined, `{prefix}3.kbi` IVF-Flat of the same shape
/// (so swaps crossfade between the two index types), `{prefix}4.kbi` PQ refined.
pub fn pq_voices(dir: &Path, prefix: &str, pq: &PqShape) -> Vec<PathBuf> {
    vec![
        write_pq(dir, &format!("{prefix}1.kbi"), pq, identity(1), true),
        write_pq(dir, &format!("{prefix}2.kbi"), pq, identity(2), false),
        write(dir, &format!("{prefix}3.kbi"), &pq.shape, identity(3)),
        write_pq(dir, &format!("{prefix}4.kbi"), pq, identity(4), true),
    ]
}

/// Checks that `file` is the IVF-PQ FastScan index of `pq` it is meant to be (refined or not,
/// of the shape and factory), and that the frames `queries` find neighbours in it: a fresh
/// `PqSearcher` blends nearly every frame with [`K`] neighbours, at RVC's k and n_probe 1, and
/// the blend at ratio 1 outputs the voice's identity (through the refine vectors or the codes'
/// reconstruction). A proof whose PQ file were not served as PQ, or found nothing, would prove
/// less than it says. Prints what it found.
pub fn assert_pq_index(pq: &PqShape, file: &Path, refined: bool, identity: f32, queries: &[f32]) {
    let what = format!("{} refined {refined}", pq.label());
    let any = AnyIndex::open(file).unwrap();
    assert_eq!(
        any.structure(),
        IndexStructure::IvfPqFastScan { refined },
        "{what}"
    );
    assert!(
        any.describe().contains(&pq.factory(refined)),
        "{what}: {}",
        any.describe()
    );
    let index = PqIndex::open(file).unwrap();
    let s = &pq.shape;
    assert_eq!(
        (index.dim(), index.ntotal(), index.nlist(), index.m()),
        (s.dim, s.n, s.nlist, pq.m),
        "{what}"
    );
    let mut searcher = PqSearcher::for_index(&index, K, 1);
    let mut out = vec![0f32; s.dim];
    let (mut blended, mut worst) = (0usize, 0f32);
    let n = queries.len() / s.dim;
    for q in queries.chunks_exact(s.dim) {
        let outcome = searcher.blend(&index, q, &BlendParams::new(K, 1, 1.0), &mut out);
        if matches!(outcome, BlendOutcome::Blended { neighbours: K, .. }) {
            blended += 1;
            worst = worst.max((out[0] - identity).abs());
        }
    }
    println!(
        "{what}: {blended} of {n} frames blended with {K} neighbours by {:?}; identity off by at \
         most {worst:e}",
        searcher.fastscan_kernels()
    );
    assert!(
        blended * 8 >= n * 7,
        "{what}: {blended} of {n} frames blended"
    );
    assert!(
        close(identity + worst, identity),
        "{what}: the blend does not output the identity {identity} (off by {worst})"
    );
}
