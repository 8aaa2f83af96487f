//! Files written by hand in foreign layouts (so tests run without faiss), with the position of
//! every field recorded for corruption tests; and a guard that measures allocations.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use knnblend::format::{IndexParts, Metric};

/// One scalar field of a hand-written file.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// What the field is (as in faiss's `write_index`).
    pub name: &'static str,
    /// Byte offset.
    pub at: usize,
    /// Width in bytes (1, 4 or 8).
    pub width: usize,
}

/// A hand-written file and where its fields are.
pub struct Written {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
}

/// The free choices of a faiss IVF-Flat file.
#[derive(Clone, Copy, Debug)]
pub struct FaissStyle {
    /// Stored n_probe (faiss writes a `size_t`).
    pub nprobe: u64,
    /// `sprs` (only non-empty lists' sizes, as pairs) instead of `full` list sizes.
    pub sparse: bool,
    /// Direct map type: 0 none, 1 array (one entry per vector), 2 hashtable.
    pub direct_map: u8,
    /// The two `dummy` fields of faiss's index header.
    pub dummy: i64,
    /// `is_trained`.
    pub is_trained: u8,
}

impl Default for FaissStyle {
    fn default() -> Self {
        FaissStyle {
            nprobe: 1,
            sparse: false,
            direct_map: 0,
            dummy: 1 << 20,
            is_trained: 1,
        }
    }
}

struct W {
    b: Vec<u8>,
    fields: Vec<Field>,
}

impl W {
    fn put(&mut self, name: &'static str, bytes: &[u8]) {
        self.fields.push(Field {
            name,
            at: self.b.len(),
            width: bytes.len(),
        });
        self.b.extend_from_slice(bytes);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.b.extend_from_slice(bytes);
    }
}

/// An IVF-Flat index in faiss's `write_index` layout (`IwFl`, flat quantizer, in-file lists).
pub fn faiss(p: &IndexParts, style: &FaissStyle) -> Written {
    let (d, nlist, ntotal) = (p.dim, p.nlist(), p.ntotal());
    let metric: i32 = match p.metric {
        Metric::L2 => 1,
        Metric::InnerProduct => 0,
    };
    let mut w = W {
        b: Vec::new(),
        fields: Vec::new(),
    };
    let header = |w: &mut W, ntotal: i64, quantizer: bool| {
        let n = |a: &'static str, b: &'static str| if quantizer { b } else { a };
        w.put(n("d", "quantizer d"), &(d as i32).to_le_bytes());
        w.put(n("ntotal", "quantizer ntotal"), &ntotal.to_le_bytes());
        w.put(n("dummy", "quantizer dummy"), &style.dummy.to_le_bytes());
        w.put(n("dummy", "quantizer dummy"), &(1i64 << 20).to_le_bytes());
        w.put(n("is_trained", "quantizer is_trained"), &[style.is_trained]);
        w.put(n("metric", "quantizer metric"), &metric.to_le_bytes());
    };
    w.put("index type", b"IwFl");
    header(&mut w, ntotal as i64, false);
    w.put("nlist", &(nlist as u64).to_le_bytes());
    w.put("nprobe", &style.nprobe.to_le_bytes());
    w.put(
        "quantizer type",
        if p.metric == Metric::L2 {
            b"IxF2"
        } else {
            b"IxFI"
        },
    );
    header(&mut w, nlist as i64, true);
    w.put("centroid count", &(p.centroids.len() as u64).to_le_bytes());
    for (i, v) in p.centroids.iter().enumerate() {
        if i == 0 {
            w.put("first centroid value", &v.to_le_bytes());
        } else {
            w.raw(&v.to_le_bytes());
        }
    }
    w.put("direct map type", &[style.direct_map]);
    let map_len = if style.direct_map == 0 {
        0
    } else {
        ntotal as u64
    };
    w.put("direct map length", &map_len.to_le_bytes());
    (0..map_len).for_each(|i| w.raw(&(i as i64).to_le_bytes()));
    if style.direct_map == 2 {
        w.put("direct map hashtable length", &2u64.to_le_bytes());
        (0..4i64).for_each(|i| w.raw(&i.to_le_bytes()));
    }
    w.put("inverted lists type", b"ilar");
    w.put("inverted lists nlist", &(nlist as u64).to_le_bytes());
    w.put("code size", &((d * 4) as u64).to_le_bytes());
    if style.sparse {
        w.put("list size encoding", b"sprs");
        let pairs: Vec<u64> = p
            .lists
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.ids.is_empty())
            .flat_map(|(i, l)| [i as u64, l.ids.len() as u64])
            .collect();
        w.put("sparse pair count", &(pairs.len() as u64).to_le_bytes());
        for (i, v) in pairs.iter().enumerate() {
            w.put(
                if i % 2 == 0 {
                    "sparse list number"
                } else {
                    "sparse list size"
                },
                &v.to_le_bytes(),
            );
        }
    } else {
        w.put("list size encoding", b"full");
        w.put("list size count", &(nlist as u64).to_le_bytes());
        p.lists
            .iter()
            .for_each(|l| w.put("list size", &(l.ids.len() as u64).to_le_bytes()));
    }
    for l in &p.lists {
        for (i, v) in l.vectors.iter().enumerate() {
            if i == 0 {
                w.put("first vector value of a list", &v.to_le_bytes());
            } else {
                w.raw(&v.to_le_bytes());
            }
        }
        for (i, id) in l.ids.iter().enumerate() {
            if i == 0 {
                w.put("first id of a list", &id.to_le_bytes());
            } else {
                w.raw(&id.to_le_bytes());
            }
        }
    }
    Written {
        bytes: w.b,
        fields: w.fields,
    }
}

/// The system allocator, recording the largest single request of each thread.
pub struct Measuring;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
/// Only meaningful in a test binary that installs [`Measuring`] as its global allocator.
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|c| c.set(0));
    let r = f();
    (r, LARGEST.with(|c| c.get()))
}
