//! The realtime stream: the audio thread exchanges samples with a conversion worker through two
//! lock-free SPSC rings and never waits for it.
//!
//! ```text
//! audio thread ── input ──▶ [in ring] ──▶ worker: Converter::convert(block) ──▶ [out ring] ──┐
//!      ▲                                                                                     │
//!      └──── converted (or the latency-compensated dry signal, crossfaded, on underrun) ◀────┘
//! ```
//!
//! # Timing
//!
//! The worker converts fixed blocks of `B` samples (at the host rate). Output sample `n` is
//! converted sample `n − L` with a fixed latency
//!
//! `L = B (the block being filled) + W (the worker's budget) + F (the underrun fade's lookahead)
//!      + D (the converter's own delay)`.
//!
//! The block holding input sample `m` is complete, and handed to the worker, at the end of the
//! host callback that holds its last sample; the converted block is needed `W + F` samples of
//! host time later. The host's buffer size only shifts when within a callback a block is handed
//! over, never which samples come out: the output does not depend on the host's buffer size,
//! as long as `W` exceeds the host buffer plus the worker's time per block.
//!
//! # Underruns
//!
//! When the out ring holds fewer than `F` converted samples ahead of the one playing, the
//! worker is late: the audio side fades from the converted signal to the dry signal delayed by
//! `L` (so the two line up) over the converted samples it still has, counts an underrun, and
//! from then on drops each converted sample that arrives too late for its place, so once the
//! worker is on time again the converted signal is exactly where it belongs. When `F` samples
//! of lookahead are back, it fades in again. A worker that falls more than a block behind skips
//! converting whole blocks (counted) to catch up.
//!
//! # What the audio side does
//!
//! [`StreamAudio::process`] copies samples into and out of the rings (`rtrb` chunk copies),
//! reads relaxed atomics, writes its preallocated delay line and stores relaxed counters. It
//! allocates nothing, takes no lock, makes no system call and never waits. Create and drop it
//! off the audio thread.

use std::sync::atomic::{
    AtomicBool, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the worker runs: turns one block of host-rate samples into one block of output.
pub trait Converter: Send + 'static {
    /// Converts `input` (`block` samples, oldest first) into `output` (the same length). A
    /// converter that has no conversion for some samples (a model failed on this block) writes
    /// NaN there: the audio side plays the dry signal in their place, crossfaded.
    fn convert(&mut self, input: &[f32], output: &mut [f32]);

    /// The converter's own delay in samples (resampler and crossfade look-back): its output
    /// sample `i` of block `k` stands for input sample `k·B + i − delay`.
    fn delay(&self) -> usize {
        0
    }

    /// Forgets all state carried from block to block (context, crossfade tails): the stream
    /// restarts after the worker fell so far behind that input had to be dropped.
    fn reset(&mut self) {}
}

/// Sizes of a stream, in host-rate samples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Conversion block `B`.
    pub block: usize,
    /// Worker budget `W`: how late a block may be converted after it is complete. Must exceed
    /// the host's buffer size plus the worker's time per block.
    pub budget: usize,
    /// Underrun fade `F`: the converted/dry crossfade length and the lookahead that triggers it.
    pub fade: usize,
}

impl StreamConfig {
    /// A stream whose worker may take one whole block to convert a block, with a 5 ms fade.
    pub fn new(block: usize, sample_rate: f32) -> Self {
        StreamConfig {
            block,
            budget: block,
            fade: ((sample_rate * 0.005) as usize).max(1),
        }
    }
}

/// Counters shared by the audio side, the worker and the control side (relaxed atomics).
#[derive(Debug, Default)]
pub struct StreamTelemetry {
    /// Times the audio side had to fade to the dry signal because the worker was late.
    pub underruns: AtomicU64,
    /// Output samples that were dry because no converted sample was on time.
    pub dry_samples: AtomicU64,
    /// Blocks the worker converted.
    pub blocks: AtomicU64,
    /// Blocks the worker skipped to catch up.
    pub skipped_blocks: AtomicU64,
    /// The worker's time for the last block, ns.
    pub last_block_ns: AtomicU64,
    /// The worker's longest time for a block, ns.
    pub max_block_ns: AtomicU64,
    /// Total worker time, ns.
    pub total_block_ns: AtomicU64,
    /// Input samples the audio side could not hand over (the in ring was full).
    pub input_overflows: AtomicU64,
    /// Times the stream restarted because input had to be dropped (see [`Converter::reset`]).
    pub restarts: AtomicU64,
}

/// A plain copy of [`StreamTelemetry`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// See [`StreamTelemetry::underruns`].
    pub underruns: u64,
    /// See [`StreamTelemetry::dry_samples`].
    pub dry_samples: u64,
    /// See [`StreamTelemetry::blocks`].
    pub blocks: u64,
    /// See [`StreamTelemetry::skipped_blocks`].
    pub skipped_blocks: u64,
    /// See [`StreamTelemetry::last_block_ns`].
    pub last_block_ns: u64,
    /// See [`StreamTelemetry::max_block_ns`].
    pub max_block_ns: u64,
    /// See [`StreamTelemetry::total_block_ns`].
    pub total_block_ns: u64,
    /// See [`StreamTelemetry::input_overflows`].
    pub input_overflows: u64,
    /// See [`StreamTelemetry::restarts`].
    pub restarts: u64,
}

impl StreamTelemetry {
    /// A copy of every counter.
    pub fn snapshot(&self) -> StreamStats {
        StreamStats {
            underruns: self.underruns.load(Relaxed),
            dry_samples: self.dry_samples.load(Relaxed),
            blocks: self.blocks.load(Relaxed),
            skipped_blocks: self.skipped_blocks.load(Relaxed),
            last_block_ns: self.last_block_ns.load(Relaxed),
            max_block_ns: self.max_block_ns.load(Relaxed),
            total_block_ns: self.total_block_ns.load(Relaxed),
            input_overflows: self.input_overflows.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
        }
    }
}

/// Whether the audio side plays converted samples, dry ones, or is fading between them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Converted,
    Dry,
}

/// The audio side of a stream. Owned by the audio thread; created and dropped elsewhere.
pub struct StreamAudio {
    input: rtrb::Producer<f32>,
    output: rtrb::Consumer<f32>,
    /// Dry delay line of `latency` samples (a circular buffer).
    delay_line: Box<[f32]>,
    delay_pos: usize,
    latency: usize,
    fade: usize,
    /// The worker's block.
    block: usize,
    /// Converted-signal gain, 0 (dry) to 1, moved by `1/fade` per sample.
    gain: f32,
    mode: Mode,
    /// Converted samples still to come in the out ring whose time has already passed.
    late: u64,
    /// Output samples before the first converted one is due (the stream's start).
    lead_in: usize,
    /// The converter's own delay (part of `latency`).
    converter_delay: usize,
    /// The stream's restart generation, and whether the worker has yet to confirm it.
    epoch: u64,
    restarting: bool,
    /// Offline rendering: wait for the worker instead of playing dry (see [`Self::set_offline`]).
    offline: bool,
    sync: Arc<Sync>,
    telemetry: Arc<StreamTelemetry>,
}

/// The longest an offline render waits for one callback's converted samples.
const OFFLINE_WAIT: Duration = Duration::from_secs(10);

/// Restart handshake between the audio side and the worker.
#[derive(Debug, Default)]
struct Sync {
    /// Written by the audio side: the generation it wants.
    requested: AtomicU64,
    /// Written by the worker once it has dropped everything older.
    confirmed: AtomicU64,
    /// Set by the worker while it takes or converts a block (offline waiting reads it).
    busy: AtomicBool,
}

impl StreamAudio {
    /// The fixed latency of the stream, in host-rate samples.
    pub fn latency(&self) -> usize {
        self.latency
    }

    /// Shared counters.
    pub fn telemetry(&self) -> &Arc<StreamTelemetry> {
        &self.telemetry
    }

    /// Offline rendering (a host bouncing faster or slower than real time, e.g. nice-plug's
    /// `ProcessMode::Offline`): [`process`](Self::process) then waits (sleeping in 100 µs steps,
    /// at most 10 s per call) until the worker has converted what this callback plays, so a
    /// bounce sounds like real-time playback with a fast enough machine, whatever the machine.
    /// Never set it on a real-time audio thread: waiting is a system call.
    pub fn set_offline(&mut self, offline: bool) {
        self.offline = offline;
    }

    /// Whether the last sample out was fully converted: past the stream's lead-in, not fading
    /// and not restarting. A host crossfading from another stream to this one waits for it.
    pub fn is_converting(&self) -> bool {
        self.lead_in == 0 && !self.restarting && self.mode == Mode::Converted && self.gain >= 1.0
    }

    /// Hands `input` to the worker and writes, for the same samples, the converted signal (or
    /// the dry signal, crossfaded, where the worker is late) into `converted` and the input
    /// delayed by the latency into `dry`. All three have the same length.
    pub fn process(&mut self, input: &[f32], converted: &mut [f32], dry: &mut [f32]) {
        let n = input.len().min(converted.len()).min(dry.len());
        let (input, converted, dry) = (&input[..n], &mut converted[..n], &mut dry[..n]);

        // 1. The dry signal, delayed by the latency.
        for (x, d) in input.iter().zip(dry.iter_mut()) {
            *d = self.delay_line[self.delay_pos];
            self.delay_line[self.delay_pos] = *x;
            self.delay_pos += 1;
            if self.delay_pos == self.delay_line.len() {
                self.delay_pos = 0;
            }
        }

        // 2. Converted samples, in order, dropping those whose time has passed.
        if self.restarting && self.sync.confirmed.load(Acquire) == self.epoch {
            // The worker dropped all older input and pushes nothing older: start afresh.
            let stale = self.output.slots();
            if let Ok(chunk) = self.output.read_chunk(stale) {
                chunk.commit_all();
            }
            self.late = 0;
            self.lead_in = self.latency - self.converter_delay;
            self.restarting = false;
        }
        self.drop_late();
        if self.offline && !self.restarting {
            // Everything this callback plays comes from input blocks already handed over (the
            // latency is at least a block plus the budget), so waiting cannot deadlock.
            let want = (converted.len().saturating_sub(self.lead_in) + self.fade + 1)
                .min(self.output.buffer().capacity());
            let capacity = self.input.buffer().capacity();
            let began = Instant::now();
            while self.output.slots() < want && began.elapsed() < OFFLINE_WAIT {
                // Only while the worker has something to convert: a complete block waiting,
                // or one in its hands.
                let waiting = capacity - self.input.slots();
                if waiting < self.block && !self.sync.busy.load(Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        // A view of what this callback may play plus the fade's lookahead. A NaN in it is a
        // sample the worker has no conversion for (a block that failed): it counts as missing.
        let available = self.output.slots();
        let view_len = available.min(converted.len() + self.fade + 1);
        let (mut consumed, mut late, mut dry_samples, mut underruns) = (0usize, 0u64, 0u64, 0u64);
        if let Ok(chunk) = self.output.read_chunk(view_len) {
            let (a, b) = chunk.as_slices();
            let at = |i: usize| if i < a.len() { a[i] } else { b[i - a.len()] };
            let scan = |from: usize| {
                (from..view_len)
                    .find(|&j| at(j).is_nan())
                    .unwrap_or(view_len)
            };
            let mut next_bad = scan(0);
            let step = 1.0 / self.fade as f32;
            for (out, d) in converted.iter_mut().zip(dry.iter()) {
                if self.lead_in > 0 {
                    // Before the first converted sample is due (at the start, where the delayed
                    // input is silence, and after a restart, where the stream plays dry) there
                    // is nothing to take from the ring.
                    self.lead_in -= 1;
                    self.gain = match self.mode {
                        Mode::Converted => self.gain,
                        Mode::Dry => (self.gain - step).max(0.0),
                    };
                    *out = (1.0 - self.gain) * d;
                    continue;
                }
                let i = consumed;
                if i > next_bad {
                    next_bad = scan(i);
                }
                // Good converted samples from here on (all that are there, past the view).
                let ahead = if next_bad == view_len {
                    available.saturating_sub(i)
                } else {
                    next_bad.saturating_sub(i)
                };
                match self.mode {
                    Mode::Converted if ahead <= self.fade => {
                        self.mode = Mode::Dry;
                        underruns += 1;
                    }
                    Mode::Dry if ahead > 2 * self.fade => self.mode = Mode::Converted,
                    _ => {}
                }
                self.gain = match self.mode {
                    Mode::Converted => (self.gain + step).min(1.0),
                    Mode::Dry => (self.gain - step).max(0.0),
                };
                let wet = if i < view_len {
                    consumed += 1;
                    let w = at(i);
                    if w.is_nan() {
                        dry_samples += 1;
                        0.0
                    } else {
                        w
                    }
                } else {
                    late += 1;
                    dry_samples += 1;
                    0.0
                };
                *out = self.gain * wet + (1.0 - self.gain) * d;
            }
            chunk.commit(consumed);
        }
        self.late += late;
        if underruns > 0 {
            self.telemetry.underruns.fetch_add(underruns, Relaxed);
        }
        if dry_samples > 0 {
            self.telemetry.dry_samples.fetch_add(dry_samples, Relaxed);
        }

        // 3. This callback's input to the worker. When it does not fit, the worker is far
        // behind (stuck): ask it to drop everything and restart; until it confirms, play dry.
        if self.restarting {
            return;
        }
        let (_, rest) = self.input.push_partial_slice(input);
        if !rest.is_empty() {
            self.telemetry
                .input_overflows
                .fetch_add(rest.len() as u64, Relaxed);
            self.telemetry.restarts.fetch_add(1, Relaxed);
            self.request_restart();
        }
    }

    /// Starts the stream afresh after a gap in its input (the host stopped calling it, e.g.
    /// while another path served): the worker drops what it has and forgets its context, the
    /// converted samples still in flight and the dry delay line (both from before the gap) are
    /// dropped, and the output is silence, then the dry signal, then converted again once the
    /// worker confirms and a new lead-in has passed. Realtime-safe: bounded work (clears the
    /// delay line), no allocation, no system call.
    pub fn restart(&mut self) {
        self.delay_line.fill(0.0);
        self.gain = 0.0;
        self.request_restart();
    }

    fn request_restart(&mut self) {
        self.epoch += 1;
        self.restarting = true;
        self.mode = Mode::Dry;
        self.sync.requested.store(self.epoch, Release);
    }

    /// Pops converted samples that arrived after their time.
    fn drop_late(&mut self) {
        while self.late > 0 {
            let n = (self.output.slots() as u64).min(self.late) as usize;
            if n == 0 {
                return;
            }
            if let Ok(chunk) = self.output.read_chunk(n) {
                chunk.commit_all();
            }
            self.late -= n as u64;
        }
    }
}

/// The control side's handle on the worker thread: stops and joins it when dropped.
pub struct StreamWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    telemetry: Arc<StreamTelemetry>,
}

impl StreamWorker {
    /// Shared counters.
    pub fn telemetry(&self) -> &Arc<StreamTelemetry> {
        &self.telemetry
    }
}

impl Drop for StreamWorker {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a worker thread running `converter` and returns both sides of the stream.
pub fn stream<C: Converter>(
    config: StreamConfig,
    converter: C,
) -> std::io::Result<(StreamAudio, StreamWorker)> {
    let (audio, worker) = stream_manual(config, converter);
    let (stop, telemetry) = (worker.stop.clone(), worker.telemetry.clone());
    let thread = std::thread::Builder::new()
        .name("knnblend-rvc-worker".into())
        .spawn(move || worker.run())?;
    Ok((
        audio,
        StreamWorker {
            stop,
            thread: Some(thread),
            telemetry,
        },
    ))
}

/// Both sides of a stream without a thread: the caller drives the worker with
/// [`ManualWorker::step`] (deterministic tests, offline rendering).
pub fn stream_manual<C: Converter>(
    config: StreamConfig,
    converter: C,
) -> (StreamAudio, ManualWorker<C>) {
    let block = config.block.max(1);
    let fade = config.fade.max(1);
    let converter_delay = converter.delay();
    let latency = block + config.budget + fade + converter_delay;
    // Room for everything that can be in flight: the latency's worth plus a few blocks.
    let capacity = latency + 4 * block;
    let (mut in_tx, mut in_rx) = rtrb::RingBuffer::new(capacity);
    let (mut out_tx, mut out_rx) = rtrb::RingBuffer::new(capacity);
    // Write every cell once so the audio side never meets a fresh page.
    let zeros = vec![0f32; capacity];
    for (tx, rx) in [(&mut in_tx, &mut in_rx), (&mut out_tx, &mut out_rx)] {
        let _ = tx.push_entire_slice(&zeros);
        if let Ok(chunk) = rx.read_chunk(capacity) {
            chunk.commit_all();
        }
    }
    let telemetry = Arc::new(StreamTelemetry::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sync = Arc::new(Sync::default());
    let worker = ManualWorker {
        epoch: 0,
        sync: sync.clone(),
        input: in_rx,
        output: out_tx,
        converter,
        block,
        block_in: vec![0f32; block],
        block_out: vec![0f32; block],
        telemetry: telemetry.clone(),
        stop,
        poll: Duration::from_micros(500),
    };
    let audio = StreamAudio {
        input: in_tx,
        output: out_rx,
        delay_line: vec![0f32; latency.max(1)].into_boxed_slice(),
        delay_pos: 0,
        latency,
        fade,
        block,
        gain: 1.0,
        mode: Mode::Converted,
        late: 0,
        lead_in: latency - converter_delay,
        converter_delay,
        epoch: 0,
        restarting: false,
        offline: false,
        sync,
        telemetry,
    };
    (audio, worker)
}

/// The worker side of a stream: converts complete blocks from the in ring into the out ring.
pub struct ManualWorker<C> {
    input: rtrb::Consumer<f32>,
    output: rtrb::Producer<f32>,
    converter: C,
    block: usize,
    block_in: Vec<f32>,
    block_out: Vec<f32>,
    telemetry: Arc<StreamTelemetry>,
    stop: Arc<AtomicBool>,
    poll: Duration,
    epoch: u64,
    sync: Arc<Sync>,
}

impl<C: Converter> ManualWorker<C> {
    /// The converter, e.g. to read its state in tests.
    pub fn converter(&self) -> &C {
        &self.converter
    }

    /// Converts one block if a whole one is waiting; returns whether it did anything. A worker
    /// more than two blocks behind skips the oldest block instead (its output would be dropped
    /// as late anyway), so the next conversion is on time.
    pub fn step(&mut self) -> bool {
        // Busy from before a block leaves the in ring until its conversion is in the out ring,
        // so an offline audio side that sees neither a waiting block nor `busy` knows nothing
        // more is coming.
        self.sync.busy.store(true, Release);
        let did = self.step_inner();
        self.sync.busy.store(false, Release);
        did
    }

    fn step_inner(&mut self) -> bool {
        let requested = self.sync.requested.load(Acquire);
        if requested != self.epoch {
            // The audio side had to drop input: drop everything it sent before, forget the
            // converter's state, confirm. Everything pushed so far is older than the
            // confirmation; nothing is pushed until new input comes.
            let stale = self.input.slots();
            if let Ok(chunk) = self.input.read_chunk(stale) {
                chunk.commit_all();
            }
            self.converter.reset();
            self.epoch = requested;
            self.sync.confirmed.store(requested, Release);
            return true;
        }
        if self.input.slots() < self.block {
            return false;
        }
        if self.input.slots() >= 3 * self.block {
            if let Ok(chunk) = self.input.read_chunk(self.block) {
                chunk.commit_all();
            }
            // No conversion for it: NaN, which the audio side plays as the crossfaded dry
            // signal and counts (with a budget over a block it would otherwise arrive on time
            // and play as silence).
            self.block_out.fill(f32::NAN);
            self.push_block();
            self.telemetry.skipped_blocks.fetch_add(1, Relaxed);
            return true;
        }
        if self.input.pop_entire_slice(&mut self.block_in).is_err() {
            return false;
        }
        let started = Instant::now();
        self.converter.convert(&self.block_in, &mut self.block_out);
        let ns = started.elapsed().as_nanos() as u64;
        self.telemetry.last_block_ns.store(ns, Relaxed);
        self.telemetry.max_block_ns.fetch_max(ns, Relaxed);
        self.telemetry.total_block_ns.fetch_add(ns, Relaxed);
        self.telemetry.blocks.fetch_add(1, Relaxed);
        self.push_block();
        true
    }

    fn run(mut self) {
        while !self.stop.load(Relaxed) {
            if !self.step() {
                if self.input.is_abandoned() {
                    return;
                }
                std::thread::sleep(self.poll);
            }
        }
    }

    /// Pushes the converted block, waiting for room (the audio side drains the ring at the
    /// audio rate, so room comes within a block's time).
    fn push_block(&mut self) {
        let mut rest = &self.block_out[..];
        while !rest.is_empty() && !self.stop.load(Relaxed) {
            let (_, left) = self.output.push_partial_slice(rest);
            rest = left;
            if !rest.is_empty() {
                if self.output.is_abandoned() {
                    return;
                }
                std::thread::sleep(self.poll);
            }
        }
    }
}
