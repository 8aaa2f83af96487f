//! Fixed-capacity "k smallest" selection: no allocation, sorted best first.

/// Keeps the `k` smallest keys seen (with their payloads), sorted ascending.
/// Capacity `CAP` is fixed at compile time; `k` may be anything in `1..=CAP`.
#[derive(Clone, Copy, Debug)]
pub struct TopK<const CAP: usize> {
    keys: [f32; CAP],
    vals: [u32; CAP],
    len: usize,
    k: usize,
}

impl<const CAP: usize> TopK<CAP> {
    /// An empty selection keeping at most `k` (clamped to `1..=CAP`).
    pub const fn new(k: usize) -> Self {
        let k = if k == 0 {
            1
        } else if k > CAP {
            CAP
        } else {
            k
        };
        TopK {
            keys: [0.0; CAP],
            vals: [0; CAP],
            len: 0,
            k,
        }
    }

    /// Empties the selection and sets a new `k` (clamped to `1..=CAP`).
    pub fn reset(&mut self, k: usize) {
        self.len = 0;
        self.k = k.clamp(1, CAP);
    }

    /// The key a candidate must beat to enter (infinity while not full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.len < self.k {
            f32::INFINITY
        } else {
            self.keys[self.len - 1]
        }
    }

    /// Offers a candidate. NaN keys never enter.
    #[inline]
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(key < t)` is what keeps NaN out
    pub fn push(&mut self, key: f32, val: u32) {
        if !(key < self.threshold()) {
            return;
        }
        let mut i = if self.len < self.k {
            self.len
        } else {
            self.len - 1
        };
        while i > 0 && self.keys[i - 1] > key {
            self.keys[i] = self.keys[i - 1];
            self.vals[i] = self.vals[i - 1];
            i -= 1;
        }
        self.keys[i] = key;
        self.vals[i] = val;
        if self.len < self.k {
            self.len += 1;
        }
    }

    /// Offers a candidate whose payload names a stored row, keeping each id once: `id_of`
    /// maps a payload to its id, and a candidate whose id is already held replaces that entry
    /// only if its key is smaller. For spilled indexes, whose vectors may sit in several
    /// probed lists. The id check runs only for candidates that pass the threshold.
    #[inline]
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // as in `push`
    pub fn push_distinct(&mut self, key: f32, val: u32, id_of: impl Fn(u32) -> i64) {
        if !(key < self.threshold()) {
            return;
        }
        let id = id_of(val);
        if let Some(j) = self.vals[..self.len].iter().position(|&v| id_of(v) == id) {
            if !(key < self.keys[j]) {
                return;
            }
            self.keys.copy_within(j + 1..self.len, j);
            self.vals.copy_within(j + 1..self.len, j);
            self.len -= 1;
        }
        self.push(key, val);
    }

    /// The number of entries kept (`k`).
    #[inline]
    pub fn k(&self) -> usize {
        self.k
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing has entered.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys, ascending.
    pub fn keys(&self) -> &[f32] {
        &self.keys[..self.len]
    }

    /// Payloads, in key order.
    pub fn vals(&self) -> &[u32] {
        &self.vals[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn push_distinct_keeps_the_k_smallest_distinct_ids(
            rows in proptest::collection::vec((0i64..40, -1e3f32..1e3), 0..200),
            k in 1usize..=16,
        ) {
            // Payload i is row i; its id may repeat, each copy with its own key.
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            let mut t = TopK::<16>::new(k);
            for (i, &(_, key)) in rows.iter().enumerate() {
                t.push_distinct(key, i as u32, |v| ids[v as usize]);
            }
            // Oracle: each id's smallest key, then the k smallest of those.
            let mut best: std::collections::BTreeMap<i64, f32> = Default::default();
            for &(id, key) in &rows {
                let e = best.entry(id).or_insert(key);
                if key < *e { *e = key; }
            }
            let mut want: Vec<f32> = best.values().copied().collect();
            want.sort_by(f32::total_cmp);
            want.truncate(k);
            prop_assert_eq!(t.keys(), &want[..]);
            let mut seen = std::collections::HashSet::new();
            for &v in t.vals() {
                prop_assert!(seen.insert(ids[v as usize]), "an id is held twice");
            }
        }

        #[test]
        fn keeps_the_k_smallest_in_order(keys in proptest::collection::vec(-1e6f32..1e6, 0..200), k in 1usize..=16) {
            let mut t = TopK::<16>::new(k);
            for (i, &key) in keys.iter().enumerate() {
                t.push(key, i as u32);
            }
            let mut sorted = keys.clone();
            sorted.sort_by(f32::total_cmp);
            sorted.truncate(k);
            prop_assert_eq!(t.keys(), &sorted[..]);
            for (&key, &v) in t.keys().iter().zip(t.vals()) {
                prop_assert_eq!(keys[v as usize], key);
            }
        }
    }

    #[test]
    fn nan_never_enters() {
        let mut t = TopK::<4>::new(4);
        t.push(f32::NAN, 0);
        t.push(1.0, 1);
        assert_eq!(t.keys(), &[1.0]);
    }
}
