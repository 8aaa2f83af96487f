//! Screening 8-bit rows against one query with a rigorous error bound per row (the bound is
//! derived in `coarse.rs`): [`Screen`] keeps the n-th smallest upper bound seen and the rows
//! whose lower bound is not above it, so no row it drops can be among the n nearest.
//! [`CentroidScreen`] runs it over a centroid table to narrow list selection down to a few
//! lists to re-check exactly; the IVF-Flat and the IVF-PQ searchers both select their lists
//! with it.

use super::coarse::{CodedRows, RowBounds, MIN_BYTE_QUERY_DIM};
use super::kernels::{narrow, Kernels, I8_MAX_DIM};
use super::search::MAX_NPROBE;
use super::topk::TopK;

/// Rows per screening kernel call (one query).
pub(super) const SCREEN_CHUNK: usize = 64;
/// Lists a single-query screen may keep for re-checking before it gives up and scans exactly.
/// At 128 the plugin's 80-dimensional voices scanned every centroid in f32 for 9 % of queries
/// (15 123 lists: 4.8 MB); at 512 none did, and re-checking even 512 lists reads less.
const CAND_CAP: usize = 512;

/// Screening state of one query against 8-bit rows (centroids, or a list's vectors): the n-th
/// smallest upper bound seen, and the rows whose lower bound is not above it (in row order).
#[derive(Clone, Copy, Debug)]
pub(super) struct Screen<const NP: usize, const CAP: usize> {
    pub(super) upper: TopK<NP>,
    lower: [f32; CAP],
    list: [u32; CAP],
    n: usize,
    /// ‖q‖, ‖q − t q̂‖, t, ε‖q‖² of the query.
    qn: f32,
    eq: f32,
    t: f32,
    qterm: f32,
    /// Added to every key (‖q‖² for list codes, whose keys are whole distances; 0 for centroids).
    offset: f32,
    /// An upper bound known before screening (the k-th exact distance from earlier lists).
    pub(super) ceiling: f32,
    pub(super) failed: bool,
}

impl<const NP: usize, const CAP: usize> Screen<NP, CAP> {
    pub(super) const fn new() -> Self {
        Screen {
            upper: TopK::new(1),
            lower: [0.0; CAP],
            list: [0; CAP],
            n: 0,
            qn: 0.0,
            eq: 0.0,
            t: 0.0,
            qterm: 0.0,
            offset: 0.0,
            ceiling: f32::INFINITY,
            failed: false,
        }
    }

    /// Starts a query with squared norm `qn2` (f32 kernel value), quantised with scale `t`
    /// and quantisation error `eq` (see `Kernels::quantise`), keeping the `nprobe` best rows.
    /// With `whole`, keys include ‖q‖² (list codes).
    pub(super) fn begin(
        &mut self,
        nprobe: usize,
        qn2: f32,
        t: f32,
        eq: f32,
        bounds: &RowBounds,
        whole: bool,
    ) {
        self.upper.reset(nprobe);
        self.n = 0;
        // The key takes the kernel's ‖q‖² as computed; the bound takes it widened by the
        // table's slack (the kernel's value may be low by its rounding, and by the underflow of
        // squares of tiny elements, which the absolute slack covers).
        self.offset = if whole { qn2 } else { 0.0 };
        let qn2 = qn2 * (1.0 + bounds.eps);
        self.qn = (qn2 + bounds.floor).sqrt();
        self.eq = eq;
        self.t = t;
        self.qterm = bounds.eps * qn2 + bounds.floor;
        self.ceiling = f32::INFINITY;
        self.failed = !(self.qterm.is_finite() && eq.is_finite() && t.is_finite());
    }

    /// The bound a row's lower bound must not exceed to stay a candidate.
    #[inline]
    fn bound(&self) -> f32 {
        self.upper.threshold().min(self.ceiling)
    }

    /// Offers rows `base..base + dots.len()` (at most [`SCREEN_CHUNK`]) with their integer
    /// screening dot products.
    #[inline]
    pub(super) fn offer(&mut self, bounds: &RowBounds, base: usize, dots: &[i32]) {
        let n = dots.len();
        let end = base + n;
        let (bias, scale) = (&bounds.bias[base..end], &bounds.scale[base..end]);
        let (radius, qradius) = (&bounds.radius[base..end], &bounds.qradius[base..end]);
        let slack = &bounds.bias_slack[base..end];
        let (qn, eq, t, qterm, offset) = (self.qn, self.eq, self.t, self.qterm, self.offset);
        // Bounds for the whole chunk in one vectorisable pass (rows past `n` stay infinite, so
        // the fixed-length passes below never pick them).
        let mut lo = [f32::INFINITY; SCREEN_CHUNK];
        let mut hi = [f32::INFINITY; SCREEN_CHUNK];
        let mut finite = true;
        for j in 0..n {
            // `t · dot` first: `scale · t` can underflow for tiny rows and queries (1e-18 both
            // ways gives 1e-42), and a subnormal product loses the relative precision the bound
            // relies on before the integer multiplies its error; `t · dot` is normal or 0.
            let key = (bias[j] + offset) - scale[j] * (t * dots[j] as f32);
            let err = qn * radius[j] + eq * qradius[j] + slack[j] + qterm;
            lo[j] = key - err;
            hi[j] = key + err;
            finite &= (key.abs() < f32::INFINITY) & (err < f32::INFINITY);
        }
        if !finite {
            self.failed = true;
            return;
        }
        if self.upper.k() == 1 {
            // The smallest upper bound in eight lanes, then (rarely: only when it improves on
            // the best so far) the first row that has it.
            let m = min_lanes(&hi);
            if m < self.upper.threshold() {
                let at = hi.iter().position(|&h| h == m).unwrap_or(0);
                self.upper.push(m, (base + at) as u32);
            }
        } else {
            for (j, &h) in hi[..n].iter().enumerate() {
                if h < self.upper.threshold() {
                    self.upper.push(h, (base + j) as u32);
                }
            }
        }
        let u = self.bound();
        // Most chunks hold no candidate once the bound has tightened: test all at once first.
        if min_lanes(&lo) > u {
            return;
        }
        // Only rows below `n` (the bound may still be infinite, like the rows past `n`).
        let rows = u64::MAX.checked_shr((SCREEN_CHUNK - n) as u32).unwrap_or(0);
        let mut candidates = at_most(&lo, u) & rows;
        while candidates != 0 {
            let j = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            if self.n == CAP {
                self.compact();
                if self.n > CAP - CAP / 4 {
                    self.failed = true;
                    return;
                }
            }
            self.lower[self.n] = lo[j];
            self.list[self.n] = (base + j) as u32;
            self.n += 1;
        }
    }

    /// Screens rows `range` a chunk at a time, stopping early if the screen fails;
    /// `dot(rows, out)` computes the integer screening dot products of a chunk of rows.
    pub(super) fn screen_rows(
        &mut self,
        bounds: &RowBounds,
        range: std::ops::Range<usize>,
        dots: &mut [i32; SCREEN_CHUNK],
        dot: impl Fn(std::ops::Range<usize>, &mut [i32]),
    ) {
        let mut base = range.start;
        while base < range.end && !self.failed {
            let r = SCREEN_CHUNK.min(range.end - base);
            dot(base..base + r, &mut dots[..r]);
            self.offer(bounds, base, &dots[..r]);
            base += r;
        }
    }

    /// The candidates the final bound keeps, in row order.
    pub(super) fn survivors(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        let u = self.bound();
        (0..self.n)
            .filter(move |&i| self.lower[i] <= u)
            .map(|i| self.list[i] as usize)
    }

    /// Drops the candidates the current bound already rules out (keeps centroid order).
    fn compact(&mut self) {
        let u = self.bound();
        let mut w = 0;
        for i in 0..self.n {
            if self.lower[i] <= u {
                self.lower[w] = self.lower[i];
                self.list[w] = self.list[i];
                w += 1;
            }
        }
        self.n = w;
    }
}

/// The smallest of `v` (no NaN), as eight independent lane minima the compiler vectorises.
#[inline(always)]
fn min_lanes(v: &[f32; SCREEN_CHUNK]) -> f32 {
    let mut m = [f32::INFINITY; 8];
    for c in v.chunks_exact(8) {
        for (m, &x) in m.iter_mut().zip(c) {
            *m = if x < *m { x } else { *m };
        }
    }
    m.iter()
        .fold(f32::INFINITY, |a, &x| if x < a { x } else { a })
}

/// Bit `j` set where `v[j] <= bound`: one compare per lane and a mask per eight lanes.
#[inline]
fn at_most(v: &[f32; SCREEN_CHUNK], bound: f32) -> u64 {
    let mut mask = 0u64;
    for (g, c) in v.chunks_exact(8).enumerate() {
        let mut bits = 0u64;
        for (j, &x) in c.iter().enumerate() {
            bits |= u64::from(x <= bound) << j;
        }
        mask |= bits << (8 * g);
    }
    mask
}

/// The scratch of one query's centroid screen: the screen and the query quantised to 16 and
/// 8 bits. The quantised-query buffers and the dot-product chunk are lent to other screens of
/// the same query (the IVF-Flat searcher's list screens) between centroid screens.
#[derive(Clone, Copy, Debug)]
pub(super) struct CentroidScreen {
    pub(super) screen: Screen<MAX_NPROBE, CAND_CAP>,
    pub(super) query_i16: [i16; I8_MAX_DIM],
    query_u8: [u8; I8_MAX_DIM],
    pub(super) idots: [i32; SCREEN_CHUNK],
}

/// How a centroid screen went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Screened {
    /// The survivors hold every list that can be among the `nprobe` nearest.
    Narrowed {
        /// The 8-bit query's bound was too loose and the 16-bit query screened again.
        rescreened: bool,
    },
    /// Too many lists lie within the bound (or the query cannot be quantised): select exactly.
    Failed,
}

impl CentroidScreen {
    pub(super) const fn new() -> CentroidScreen {
        CentroidScreen {
            screen: Screen::new(),
            query_i16: [0; I8_MAX_DIM],
            query_u8: [0; I8_MAX_DIM],
            idots: [0; SCREEN_CHUNK],
        }
    }

    /// Screens every row of `table` against `query` (of `table`'s dimension, finite) for the
    /// `nprobe` (at most [`MAX_NPROBE`]) nearest. From 128 dimensions on the table is screened
    /// with an 8-bit query (the high bytes of the 16-bit one): half the multiply work, for a
    /// slightly looser bound (about two more lists to re-check at RVC's shapes); after a
    /// failed 8-bit screen (many centroids within its looser bound: tight clusters, features
    /// with a large common offset) the 16-bit query screens again. Below 128 dimensions rows
    /// are short and the looser bound failed about half the screens of the plugin's
    /// 80-dimensional voices, so the 16-bit query screens alone. Then
    /// [`survivors`](Self::survivors) are the rows to re-check exactly.
    pub(super) fn run(
        &mut self,
        kernels: &Kernels,
        table: &CodedRows,
        query: &[f32],
        nprobe: usize,
    ) -> Screened {
        let d = query.len();
        debug_assert!(d <= I8_MAX_DIM && nprobe <= MAX_NPROBE);
        let qn2 = (kernels.dot)(query, query);
        let (t16, e16) = (kernels.quantise)(query, &mut self.query_i16[..d]);
        let (rows, sums) = (table.rows(), table.sums());
        let byte_query = d >= MIN_BYTE_QUERY_DIM;
        let s = &mut self.screen;
        if byte_query {
            let (t, eq) = narrow(&self.query_i16[..d], t16, e16, &mut self.query_u8[..d]);
            s.begin(nprobe, qn2, t, eq, &table.bounds, false);
            let (kernel, q8) = (kernels.dot_u8_rows, &self.query_u8[..d]);
            s.screen_rows(
                &table.bounds,
                0..table.row_count(),
                &mut self.idots,
                |r, out| kernel(q8, &rows[r.start * d..r.end * d], &sums[r], out),
            );
        }
        let rescreened = byte_query && s.failed && t16.is_finite();
        if !byte_query || rescreened {
            s.begin(nprobe, qn2, t16, e16, &table.bounds, false);
            let (kernel, q16) = (kernels.dot_i8_rows, &self.query_i16[..d]);
            s.screen_rows(
                &table.bounds,
                0..table.row_count(),
                &mut self.idots,
                |r, out| kernel(q16, &rows[r.start * d..r.end * d], out),
            );
        }
        if s.failed {
            Screened::Failed
        } else {
            Screened::Narrowed { rescreened }
        }
    }

    /// The rows the last [`run`](Self::run) could not rule out, in row order.
    pub(super) fn survivors(&self) -> impl Iterator<Item = usize> + Clone + '_ {
        self.screen.survivors()
    }

    /// The rows of the `nprobe` smallest upper bounds of the last run (the likely picks).
    pub(super) fn likely(&self) -> &[u32] {
        self.screen.upper.vals()
    }
}
