//! Helpers shared by the `live_*` integration tests: small indexes whose vectors encode which
//! index they came from, per-thread page-fault counts, and mapping counts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use knnblend::format::{write_kbi, IndexParts, ListParts, Metadata, Metric};
use knnblend::index::IvfIndex;
use knnblend::live::{live, AudioEngine, Controller, LiveConfig, LoadTicket};

/// Dimension of the test indexes.
pub const DIM: usize = 32;

/// A small deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.f32() * 0.5 + 0.5) * n as f32) as usize % n
    }
}

/// `n` vectors in `nlist` lists (each vector filed under its nearest centroid), every vector's
/// component 0 equal to `identity`: a blend at ratio 1 outputs `identity` there, revealing which
/// index served it.
pub fn parts(identity: f32, n: usize, nlist: usize) -> IndexParts {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (identity.to_bits() as u64) << 7);
    let row = |rng: &mut Rng| -> Vec<f32> {
        let mut v: Vec<f32> = (0..DIM).map(|_| rng.f32()).collect();
        v[0] = identity;
        v
    };
    let centroids: Vec<f32> = (0..nlist).flat_map(|_| row(&mut rng)).collect();
    let mut lists = vec![ListParts::default(); nlist];
    for i in 0..n {
        let v = row(&mut rng);
        let nearest = (0..nlist)
            .min_by(|&a, &b| {
                let d = |c: usize| -> f32 {
                    centroids[c * DIM..(c + 1) * DIM]
                        .iter()
                        .zip(&v)
                        .map(|(x, y)| (x - y) * (x - y))
                        .sum()
                };
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        lists[nearest].ids.push(i as i64);
        lists[nearest].vectors.extend(v);
    }
    let mut metadata = Metadata {
        features: "live-test".into(),
        ..Metadata::default()
    };
    metadata
        .extra
        .insert("identity".into(), serde_json::json!(identity));
    IndexParts {
        dim: DIM,
        metric: Metric::L2,
        nprobe: 1,
        centroids,
        lists,
        metadata,
    }
}

/// Writes an identity index of `n` vectors to `dir/name` (atomically, by rename).
pub fn write(dir: &Path, name: &str, identity: f32, n: usize) -> PathBuf {
    let path = dir.join(name);
    write_kbi(&path, &parts(identity, n, 32)).unwrap();
    path
}

/// The four identity indexes the swap tests swap among: `dir/{prefix}{i}.kbi` for i = 1..=4,
/// identity `100·i`, `n` vectors each.
pub fn four_voices(dir: &Path, prefix: &str, n: usize) -> Vec<PathBuf> {
    (1..=4)
        .map(|i| write(dir, &format!("{prefix}{i}.kbi"), 100.0 * i as f32, n))
        .collect()
}

/// A live runtime of `slots` slots for indexes of [`DIM`], crossfading over `crossfade`
/// seconds with a feature frame every `frame` seconds.
pub fn runtime(slots: usize, crossfade: f32, frame: f32) -> (Controller, AudioEngine) {
    live(LiveConfig {
        slots,
        max_dim: DIM,
        crossfade_seconds: crossfade,
        frame_period_seconds: frame,
        header_validator: None,
        validator: None,
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
pub fn identity_of(index: &IvfIndex) -> f32 {
    index.vector(0)[0]
}

/// `count` queries spread over the index's lists (centroid plus noise), component 0 zero.
pub fn queries(count: usize, seed: u64) -> Vec<f32> {
    let p = parts(1.0, 0, 32);
    let mut rng = Rng(seed | 1);
    let mut out = Vec::with_capacity(count * DIM);
    for i in 0..count {
        let c = &p.centroids[(i % 32) * DIM..(i % 32 + 1) * DIM];
        out.extend(c.iter().map(|&x| x + 0.3 * rng.f32()));
        out[i * DIM] = 0.0;
    }
    out
}

/// Component 0 of a full-ratio blend of a fixed query: the serving index's identity
/// (0 when the query passes through).
pub fn served(audio: &mut AudioEngine) -> f32 {
    let q = queries(1, 7);
    let mut out = [0f32; DIM];
    audio.blend(&q, 8, 1.0, &mut out);
    out[0]
}

/// Whether `a` equals the identity `b` up to the blend's rounding.
pub fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-3 * b.abs().max(1.0)
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
