//! RVC voices for a plugin: eight slots of voices (synthesizer + index + RMVPE, one ContentVec
//! shared), opened off the audio thread by a loader the library owns, served one at a time,
//! swapped with a crossfade.
//!
//! [`host`] returns both sides:
//!
//! - [`VoiceControl`] (any non-audio thread): set or clear a slot's files, read each slot's
//!   status (loading stage, what serves, why a file was refused), read telemetry. Setting a
//!   slot only queues a request; the loader thread does the work.
//! - [`VoiceAudio`] (the audio thread): [`VoiceAudio::process`] takes the block's knobs and the
//!   host's channels. It publishes the knobs (relaxed atomics), takes a newly opened voice from
//!   a lock-free queue, runs the serving voice's stream ([`StreamAudio`]) on the mono mix of the
//!   input, crossfades to a new voice once it delivers converted audio, and hands the voice it
//!   replaced back to the loader to be dropped there.
//!
//! # What happens when
//!
//! - The audio side says which slot is active and the Block / Extra / Block crossfade times;
//!   the loader polls them. When the active slot's voice is not the one serving (another slot,
//!   other models, other times), the loader opens it ([`open_voice`]) while the current voice
//!   keeps playing, starts its worker and queues it; the audio side crossfades. A file that
//!   fails leaves a message in the slot's status and the current voice serving.
//! - A new index for the serving voice's slot (same models) goes through the voice's `live`
//!   runtime: retrieval crossfades to it, the stream never stops.
//! - A slot that is set but not active is checked at once (models opened, widths compared) and
//!   shows [`VoiceState::Standby`]; it opens fully when it becomes active.
//! - Before any voice serves (loading, no ONNX Runtime, no models), audio passes through,
//!   delayed by the latency the current times give, so the reported latency does not jump when
//!   the voice arrives.
//!
//! # Latency
//!
//! Fixed by the times and the host rate, not by the model: `block + worker budget (one block) +
//! underrun fade (5 ms) + the largest converter delay of RVC's three model rates` (32, 40 and
//! 48 kHz); each voice's stream is padded to it. [`VoiceAudio::latency`] is what to report.
//!
//! # Realtime
//!
//! [`VoiceAudio::process`] copies samples, reads and stores relaxed atomics, pushes and pops
//! `rtrb` queues and runs [`StreamAudio::process`]. It allocates nothing, frees nothing, takes
//! no lock and makes no system call. Create and drop [`VoiceAudio`] off the audio thread.
//!
//! The stream is mono: the input channels are averaged and the voice goes to every channel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use knnblend::index::QueryExpansion;
use knnblend::live::Controller;

use crate::models::{ContentVec, Rmvpe, Synthesizer};
use crate::pipeline::{converter_timing, Controls, Framing, StageTimes};
use crate::runtime::{OnnxRuntime, RuntimeSearch};
use crate::stream::{
    stream, StreamAudio, StreamConfig, StreamStats, StreamTelemetry, StreamWorker,
};
use crate::voice::{check_widths, open_voice, Stage, VoiceFiles, VoiceInfo};

/// Slots a host holds.
pub const SLOTS: usize = knnblend::live::MAX_SLOTS;
/// Samples processed per inner step of [`VoiceAudio::process`] (longer host buffers are split).
const CHUNK: usize = 256;
/// Longest block the host accepts, seconds (longer requests are clamped).
pub const MAX_BLOCK_SECONDS: f32 = 1.0;
/// Longest block crossfade (SOLA), seconds.
pub const MAX_SOLA_SECONDS: f32 = 0.15;
/// Longest extra context, seconds.
pub const MAX_EXTRA_SECONDS: f32 = 5.0;
/// RVC's three synthesizer rates; the fixed latency covers all of them.
const MODEL_RATES: [u32; 3] = [32_000, 40_000, 48_000];
/// How long the times must stay unchanged before the loader reopens the voice for them.
const SETTLE: Duration = Duration::from_millis(250);
/// How often the loader looks at the audio side's requests.
const TICK: Duration = Duration::from_millis(10);
/// Longest wait, in seconds of audio, for a new voice's first converted sample before the
/// audio side crossfades to it anyway (it then plays its stream's dry signal).
const ARRIVAL_TIMEOUT_SECONDS: f32 = 4.0;
/// No slot.
const NONE: usize = usize::MAX;

/// Settings of a host, fixed for its life (a new sample rate makes a new host).
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// The host's sample rate, Hz (a multiple of 100: 44100, 48000, 96000…).
    pub host_rate: u32,
    /// Where to look for ONNX Runtime.
    pub runtime: RuntimeSearch,
    /// Seed of the synthesizers' noise.
    pub seed: u64,
    /// The knobs the host starts with (the times fix the first reported latency).
    pub initial: BlockParams,
}

/// The knobs of one block, as the plugin's parameters give them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockParams {
    /// Active slot, 0-based.
    pub active_slot: usize,
    /// Pitch shift, semitones (RVC's `f0_up_key`).
    pub pitch: f32,
    /// Blend (RVC's `index_rate`), 0–1.
    pub index_rate: f32,
    /// Protect (RVC's `protect`), 0–0.5.
    pub protect: f32,
    /// Neighbours per frame.
    pub k: usize,
    /// Query-side α expansion of the retrieval (`None`: off).
    pub expansion: Option<QueryExpansion>,
    /// Crossfade when the voice or its index changes, seconds.
    pub crossfade_seconds: f32,
    /// Conversion block, seconds.
    pub block_seconds: f32,
    /// Extra context, seconds.
    pub extra_seconds: f32,
    /// Block crossfade (SOLA), seconds.
    pub sola_seconds: f32,
    /// Dry/wet, 0–1.
    pub dry_wet: f32,
    /// Output gain, linear.
    pub output_gain: f32,
    /// Offline rendering: the audio side waits for the worker (see
    /// [`StreamAudio::set_offline`]); never on a real-time thread.
    pub offline: bool,
}

impl Default for BlockParams {
    fn default() -> Self {
        BlockParams {
            active_slot: 0,
            pitch: 0.0,
            index_rate: 0.75,
            protect: 0.33,
            k: 8,
            expansion: None,
            crossfade_seconds: 0.05,
            block_seconds: 0.25,
            extra_seconds: 2.5,
            sola_seconds: 0.05,
            dry_wet: 1.0,
            output_gain: 1.0,
            offline: false,
        }
    }
}

/// Where a slot stands.
#[derive(Clone, Debug, PartialEq)]
pub enum VoiceState {
    /// No voice set.
    Empty,
    /// Being opened; the stage says how far.
    Loading(String),
    /// Checked; opens when the slot becomes active.
    Standby,
    /// Serving (or queued to serve).
    Ready,
    /// The last request failed; the message says why. Whatever served before keeps serving.
    Failed(String),
}

/// A slot's status.
#[derive(Clone, Debug, PartialEq)]
pub struct VoiceStatus {
    /// Where the latest request stands.
    pub state: VoiceState,
    /// The voice opened for this slot (serving, or checked in standby).
    pub info: Option<VoiceInfo>,
}

impl Default for VoiceStatus {
    fn default() -> Self {
        VoiceStatus {
            state: VoiceState::Empty,
            info: None,
        }
    }
}

/// Telemetry of the whole host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostTelemetry {
    /// Slot whose voice the audio side plays, if any.
    pub serving_slot: Option<usize>,
    /// Latency reported, host samples.
    pub latency: usize,
    /// The conversion block, host samples (0 before the times are known).
    pub block: usize,
    /// Counters of every voice served so far, summed.
    pub stream: StreamStats,
    /// Per-stage worker time of the serving voice's last block, ns: resample, ContentVec,
    /// retrieval, f0, synthesizer, SOLA.
    pub stages_ns: [u64; 6],
    /// Blocks a model failed on (played dry), all voices.
    pub model_errors: u64,
    /// ONNX Runtime: `Ok(version and path)` once loaded, `Err(why)` if it could not be, `None`
    /// before the first voice asked for it.
    pub runtime: Option<Result<String, String>>,
}

/// What the audio side publishes and the loader reads.
#[derive(Debug)]
struct Shared {
    controls: Arc<Controls>,
    active_slot: AtomicUsize,
    block_ms: AtomicU32,
    extra_ms: AtomicU32,
    sola_ms: AtomicU32,
    /// Latency of the current times (written by the loader).
    expected_latency: AtomicUsize,
    /// Written by the audio side.
    serving_slot: AtomicUsize,
    serving_id: AtomicU64,
    status: Mutex<[VoiceStatus; SLOTS]>,
    runtime: Mutex<Option<Result<String, String>>>,
    /// Counters of retired voices, plus the serving voice's handles.
    totals: Mutex<Totals>,
}

#[derive(Debug, Default)]
struct Totals {
    retired: StreamStats,
    retired_model_errors: u64,
    live: Vec<(u64, Arc<StreamTelemetry>, Arc<StageTimes>, usize)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ms(seconds: f32, lo: f32, hi: f32) -> u32 {
    let s = if seconds.is_finite() { seconds } else { lo };
    (s.clamp(lo, hi) * 1000.0).round() as u32
}

/// A voice on its way to, or on, the audio side.
struct Running {
    stream: StreamAudio,
    slot: usize,
    id: u64,
}

enum Incoming {
    Voice(Box<Running>),
    /// Fade the serving voice out to the pass-through.
    Stop,
}

enum Command {
    Set(usize, Option<VoiceFiles>),
    Shutdown,
}

/// Control side of a host (any non-audio thread).
pub struct VoiceControl {
    shared: Arc<Shared>,
    commands: Sender<Command>,
    loader: Option<JoinHandle<()>>,
}

/// Audio side of a host (the audio thread; create and drop it elsewhere).
pub struct VoiceAudio {
    shared: Arc<Shared>,
    host_rate: f32,
    incoming: rtrb::Consumer<Incoming>,
    retired: rtrb::Producer<Box<Running>>,
    current: Option<Box<Running>>,
    next: Option<Box<Running>>,
    /// Progress of the crossfade to `next` (or, when stopping, out of `current`), 0–1.
    fade: f32,
    fading: bool,
    stopping: bool,
    waited: usize,
    /// Pass-through delay line (mono), for when no voice serves.
    line: Box<[f32]>,
    line_pos: usize,
    mono: Box<[f32]>,
    wet_a: Box<[f32]>,
    dry_a: Box<[f32]>,
    wet_b: Box<[f32]>,
    dry_b: Box<[f32]>,
    pass: Box<[f32]>,
}

/// Creates a host: the loader thread starts at once.
pub fn host(config: HostConfig) -> std::io::Result<(VoiceControl, VoiceAudio)> {
    let initial = config.initial;
    let times = (
        ms(initial.block_seconds, 0.01, MAX_BLOCK_SECONDS),
        ms(initial.extra_seconds, 0.0, MAX_EXTRA_SECONDS),
        ms(initial.sola_seconds, 0.01, MAX_SOLA_SECONDS),
    );
    let latency = fixed_latency(&framing(config.host_rate, times)).unwrap_or(0);
    let shared = Arc::new(Shared {
        controls: Arc::new(Controls::default()),
        active_slot: AtomicUsize::new(initial.active_slot),
        block_ms: AtomicU32::new(times.0),
        extra_ms: AtomicU32::new(times.1),
        sola_ms: AtomicU32::new(times.2),
        expected_latency: AtomicUsize::new(latency),
        serving_slot: AtomicUsize::new(NONE),
        serving_id: AtomicU64::new(0),
        status: Mutex::new(Default::default()),
        runtime: Mutex::new(None),
        totals: Mutex::new(Totals::default()),
    });
    let (to_audio, incoming) = rtrb::RingBuffer::new(8);
    let (retired, from_audio) = rtrb::RingBuffer::new(16);
    let (commands, command_rx) = channel();
    let rate = config.host_rate;
    // The pass-through line covers the longest latency the clamped times can give.
    let line_len = (rate as f32 * (2.0 * MAX_BLOCK_SECONDS + 0.6)) as usize + 1;
    let mut loader = Loader {
        config,
        shared: shared.clone(),
        commands: command_rx,
        to_audio,
        from_audio,
        files: Default::default(),
        voices: Vec::new(),
        next_id: 1,
        failed: None,
        contentvec_dims: HashMap::new(),
        times: Some(times),
        seen: times,
        seen_since: Instant::now(),
    };
    let thread = std::thread::Builder::new()
        .name("knnblend-rvc-loader".into())
        .spawn(move || loader.run())?;
    let zeros = || touched(CHUNK);
    let audio = VoiceAudio {
        shared: shared.clone(),
        host_rate: rate as f32,
        incoming,
        retired,
        current: None,
        next: None,
        fade: 0.0,
        fading: false,
        stopping: false,
        waited: 0,
        line: touched(line_len),
        line_pos: 0,
        mono: zeros(),
        wet_a: zeros(),
        dry_a: zeros(),
        wet_b: zeros(),
        dry_b: zeros(),
        pass: zeros(),
    };
    Ok((
        VoiceControl {
            shared,
            commands,
            loader: Some(thread),
        },
        audio,
    ))
}

/// A zeroed buffer whose every page has been written, so the audio thread never meets a fresh
/// page (zeroed allocations may come straight from the kernel, unmapped until first touched).
fn touched(len: usize) -> Box<[f32]> {
    let mut buffer = vec![0f32; len].into_boxed_slice();
    for x in buffer.iter_mut() {
        *x = std::hint::black_box(0.0);
    }
    buffer
}

impl VoiceControl {
    /// Sets `slot`'s files (`None` empties it). Returns at once; the loader checks and opens.
    pub fn set(&self, slot: usize, files: Option<VoiceFiles>) {
        if slot < SLOTS {
            if files.is_some() {
                lock(&self.shared.status)[slot].state = VoiceState::Loading("queued".into());
            }
            let _ = self.commands.send(Command::Set(slot, files));
        }
    }

    /// Current status of `slot`.
    pub fn status(&self, slot: usize) -> VoiceStatus {
        lock(&self.shared.status)
            .get(slot)
            .cloned()
            .unwrap_or_default()
    }

    /// Current telemetry.
    pub fn telemetry(&self) -> HostTelemetry {
        let serving = self.shared.serving_slot.load(Relaxed);
        let serving_id = self.shared.serving_id.load(Relaxed);
        let totals = lock(&self.shared.totals);
        let mut stream = totals.retired;
        let mut model_errors = totals.retired_model_errors;
        let mut stages_ns = [0; 6];
        let mut block = 0;
        for (id, telemetry, times, host_block) in &totals.live {
            let s = telemetry.snapshot();
            add_stats(&mut stream, &s);
            model_errors += times.model_errors.load(Relaxed);
            if *id == serving_id {
                stream.last_block_ns = s.last_block_ns;
                block = *host_block;
                stages_ns = [
                    times.resample_ns.load(Relaxed),
                    times.contentvec_ns.load(Relaxed),
                    times.retrieval_ns.load(Relaxed),
                    times.f0_ns.load(Relaxed),
                    times.synth_ns.load(Relaxed),
                    times.sola_ns.load(Relaxed),
                ];
            }
        }
        HostTelemetry {
            serving_slot: (serving != NONE).then_some(serving),
            latency: self.shared.expected_latency.load(Relaxed),
            block,
            stream,
            stages_ns,
            model_errors,
            runtime: lock(&self.shared.runtime).clone(),
        }
    }
}

fn add_stats(total: &mut StreamStats, s: &StreamStats) {
    total.underruns += s.underruns;
    total.dry_samples += s.dry_samples;
    total.blocks += s.blocks;
    total.skipped_blocks += s.skipped_blocks;
    total.max_block_ns = total.max_block_ns.max(s.max_block_ns);
    total.total_block_ns += s.total_block_ns;
    total.input_overflows += s.input_overflows;
    total.restarts += s.restarts;
    total.last_block_ns = s.last_block_ns;
}

impl Drop for VoiceControl {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.loader.take() {
            let _ = thread.join();
        }
    }
}

impl VoiceAudio {
    /// The latency to report, host samples: the serving voice's, or before one serves, what
    /// the current times give (the pass-through is delayed by it).
    pub fn latency(&self) -> usize {
        match &self.current {
            Some(voice) => voice.stream.latency(),
            None => self.shared.expected_latency.load(Relaxed),
        }
    }

    /// Whether a voice serves (otherwise audio passes through, delayed by the latency).
    pub fn is_serving(&self) -> bool {
        self.current.is_some()
    }

    /// Call before processing again after a gap (the host served another path meanwhile):
    /// the serving stream (and one arriving) restart, so nothing from before the gap plays.
    /// Realtime-safe (see [`StreamAudio::restart`]).
    pub fn restart(&mut self) {
        self.line.fill(0.0);
        for voice in [&mut self.current, &mut self.next].into_iter().flatten() {
            voice.stream.restart();
        }
    }

    /// Processes `channels` in place with `params`. Realtime-safe (see the module docs).
    pub fn process(&mut self, channels: &mut [&mut [f32]], params: &BlockParams) {
        self.publish(params);
        self.take_incoming();
        for voice in [&mut self.current, &mut self.next].into_iter().flatten() {
            voice.stream.set_offline(params.offline);
        }
        let n = channels.iter().map(|c| c.len()).min().unwrap_or(0);
        if n == 0 {
            return;
        }
        let fade_samples = (params.crossfade_seconds.max(0.0) * self.host_rate).max(1.0);
        let step = 1.0 / fade_samples;
        let dry_wet = if params.dry_wet.is_finite() {
            params.dry_wet.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let gain = if params.output_gain.is_finite() {
            params.output_gain.max(0.0)
        } else {
            1.0
        };
        let inv = 1.0 / channels.len() as f32;
        let mut start = 0;
        while start < n {
            let len = (n - start).min(CHUNK);
            for i in 0..len {
                let sum: f32 = channels.iter().map(|c| c[start + i]).sum();
                let x = sum * inv;
                self.mono[i] = if x.is_finite() { x } else { 0.0 };
            }
            self.run_chunk(len, step);
            for channel in channels.iter_mut() {
                for i in 0..len {
                    let y = dry_wet * self.wet_a[i] + (1.0 - dry_wet) * self.pass[i];
                    channel[start + i] = gain * y;
                }
            }
            start += len;
        }
        let serving = self.current.as_ref().map_or((NONE, 0), |v| (v.slot, v.id));
        self.shared.serving_slot.store(serving.0, Relaxed);
        self.shared.serving_id.store(serving.1, Relaxed);
    }

    /// One chunk: leaves the voice in `wet_a` and the delayed input in `pass`.
    fn run_chunk(&mut self, len: usize, step: f32) {
        let latency = self.latency().min(self.line.len() - 1);
        let line_len = self.line.len();
        for i in 0..len {
            self.line[self.line_pos] = self.mono[i];
            let read = (self.line_pos + line_len - latency) % line_len;
            self.pass[i] = self.line[read];
            self.line_pos = (self.line_pos + 1) % line_len;
        }
        let (mono, pass) = (&self.mono[..len], &self.pass[..len]);
        match &mut self.current {
            Some(voice) => {
                voice
                    .stream
                    .process(mono, &mut self.wet_a[..len], &mut self.dry_a[..len])
            }
            None => self.wet_a[..len].copy_from_slice(pass),
        }
        if self.stopping {
            // The voice fades out and the pass-through in.
            for (w, p) in self.wet_a[..len].iter_mut().zip(pass) {
                self.fade = (self.fade + step).min(1.0);
                *w = (1.0 - self.fade) * *w + self.fade * p;
            }
            if self.fade >= 1.0 {
                if let Some(voice) = self.current.take() {
                    self.retire(voice);
                }
                self.stopping = false;
                self.fade = 0.0;
            }
            return;
        }
        let Some(next) = &mut self.next else {
            return;
        };
        next.stream
            .process(mono, &mut self.wet_b[..len], &mut self.dry_b[..len]);
        if !self.fading {
            self.waited += len;
            if next.stream.is_converting()
                || self.waited as f32 > ARRIVAL_TIMEOUT_SECONDS * self.host_rate
            {
                self.fading = true;
                self.fade = 0.0;
            } else {
                return;
            }
        }
        for (a, b) in self.wet_a[..len].iter_mut().zip(&self.wet_b[..len]) {
            self.fade = (self.fade + step).min(1.0);
            *a = (1.0 - self.fade) * *a + self.fade * b;
        }
        if self.fade >= 1.0 {
            let arrived = self.next.take();
            if let Some(old) = std::mem::replace(&mut self.current, arrived) {
                self.retire(old);
            }
            self.fading = false;
            self.fade = 0.0;
        }
    }

    fn publish(&self, p: &BlockParams) {
        let s = &self.shared;
        s.controls.set_pitch(p.pitch);
        s.controls.set_index_rate(p.index_rate);
        s.controls.set_protect(p.protect);
        s.controls.set_k(p.k);
        s.controls.set_query_expansion(p.expansion);
        s.controls.set_index_crossfade_seconds(p.crossfade_seconds);
        s.active_slot.store(p.active_slot, Relaxed);
        s.block_ms
            .store(ms(p.block_seconds, 0.01, MAX_BLOCK_SECONDS), Relaxed);
        s.extra_ms
            .store(ms(p.extra_seconds, 0.0, MAX_EXTRA_SECONDS), Relaxed);
        s.sola_ms
            .store(ms(p.sola_seconds, 0.01, MAX_SOLA_SECONDS), Relaxed);
    }

    fn take_incoming(&mut self) {
        // Only when there is room to hand back whatever it replaces.
        while self.retired.slots() >= 2 {
            let Ok(message) = self.incoming.pop() else {
                return;
            };
            match message {
                Incoming::Voice(voice) => {
                    if let Some(old) = self.next.replace(voice) {
                        self.retire(old);
                    }
                    self.stopping = false;
                    self.fading = false;
                    self.fade = 0.0;
                    self.waited = 0;
                }
                Incoming::Stop => {
                    if let Some(old) = self.next.take() {
                        self.retire(old);
                    }
                    self.fading = false;
                    self.stopping = self.current.is_some();
                    self.fade = 0.0;
                }
            }
        }
    }

    fn retire(&mut self, voice: Box<Running>) {
        // `take_incoming` keeps room for two; a full queue (a stuck loader) keeps the voice
        // alive here rather than dropping it on the audio thread.
        if let Err(rtrb::PushError::Full(voice)) = self.retired.push(voice) {
            std::mem::forget(voice);
        }
    }
}

/// A voice the loader started, until the audio side hands it back.
struct Voice {
    id: u64,
    slot: usize,
    files: VoiceFiles,
    times: (u32, u32, u32),
    index: Controller,
    /// The index last requested through `index` (may still be loading).
    index_requested: PathBuf,
    index_ticket: Option<knnblend::live::LoadTicket>,
    info: VoiceInfo,
    _worker: StreamWorker,
}

struct Loader {
    config: HostConfig,
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    to_audio: rtrb::Producer<Incoming>,
    from_audio: rtrb::Consumer<Box<Running>>,
    files: [Option<VoiceFiles>; SLOTS],
    /// Started voices, oldest first; the last is the one the audio side serves or will.
    voices: Vec<Voice>,
    next_id: u64,
    /// The last open that failed: not retried until the files or the times change.
    failed: Option<(usize, VoiceFiles, (u32, u32, u32))>,
    contentvec_dims: HashMap<PathBuf, usize>,
    /// The times in force and the latency they give.
    times: Option<(u32, u32, u32)>,
    seen: (u32, u32, u32),
    seen_since: Instant,
}

impl Loader {
    fn run(&mut self) {
        loop {
            match self.commands.recv_timeout(TICK) {
                Ok(Command::Set(slot, files)) => self.set(slot, files),
                Ok(Command::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            self.collect();
            self.tick();
        }
        // Workers stop and join as the voices drop, here.
        self.voices.clear();
        while self.from_audio.pop().is_ok() {}
    }

    fn status(&self, slot: usize, state: VoiceState, info: Option<Option<VoiceInfo>>) {
        let mut status = lock(&self.shared.status);
        status[slot].state = state;
        if let Some(info) = info {
            status[slot].info = info;
        }
    }

    fn runtime(&self) -> Result<(), String> {
        let result = OnnxRuntime::load_with(&self.config.runtime)
            .map(|rt| format!("ONNX Runtime {} ({})", rt.version(), rt.path().display()))
            .map_err(|e| e.to_string());
        let out = result.as_ref().map(|_| ()).map_err(Clone::clone);
        *lock(&self.shared.runtime) = Some(result);
        out
    }

    /// A slot's files changed: check them now unless the slot is active (then `tick` opens).
    fn set(&mut self, slot: usize, files: Option<VoiceFiles>) {
        self.files[slot] = files.clone();
        self.failed = None;
        let Some(files) = files else {
            self.status(slot, VoiceState::Empty, Some(None));
            if self.voices.last().is_some_and(|v| v.slot == slot) {
                let _ = self.to_audio.push(Incoming::Stop);
            }
            return;
        };
        if self.shared.active_slot.load(Relaxed) == slot {
            return;
        }
        self.status(
            slot,
            VoiceState::Loading("checking the models".into()),
            None,
        );
        match self.check(&files) {
            Ok(info) => self.status(slot, VoiceState::Standby, Some(Some(info))),
            Err(why) => self.status(slot, VoiceState::Failed(why), None),
        }
    }

    /// Opens the models of `files` to check them (not the index, which may be large: it is
    /// read when the slot becomes active).
    fn check(&mut self, files: &VoiceFiles) -> Result<VoiceInfo, String> {
        self.runtime()?;
        let text = |e: crate::RvcError| e.to_string();
        // ContentVec is shared by every slot: opened once per file to learn its width.
        let dim = match self.contentvec_dims.get(&files.contentvec) {
            Some(&dim) => dim,
            None => {
                let dim = ContentVec::open(&files.contentvec).map_err(text)?.dim();
                self.contentvec_dims.insert(files.contentvec.clone(), dim);
                dim
            }
        };
        let synth = Synthesizer::open(&files.model).map_err(text)?;
        check_widths(dim, &files.contentvec, &synth).map_err(text)?;
        if let Some(rmvpe) = &files.rmvpe {
            Rmvpe::open(rmvpe).map_err(text)?;
        }
        if !files.index.is_file() {
            return Err(format!("index {}: no such file", files.index.display()));
        }
        let info = synth.info();
        Ok(VoiceInfo {
            model: files.model.clone(),
            version: info.version(),
            model_rate: info.sample_rate,
            f0: info.f0,
            dim: info.dim,
            f0_method: if files.rmvpe.is_some() {
                crate::f0::F0Method::Rmvpe
            } else {
                crate::f0::F0Method::Builtin
            },
            index_name: files
                .index
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            index_path: files.index.clone(),
            index_type: String::new(),
            vectors: 0,
            lists: 0,
        })
    }

    /// Drops the voices the audio side handed back.
    fn collect(&mut self) {
        while let Ok(running) = self.from_audio.pop() {
            let id = running.id;
            drop(running);
            if let Some(at) = self.voices.iter().position(|v| v.id == id) {
                let voice = self.voices.remove(at);
                let mut totals = lock(&self.shared.totals);
                if let Some(live_at) = totals.live.iter().position(|l| l.0 == id) {
                    let (_, telemetry, times, _) = totals.live.remove(live_at);
                    let stats = telemetry.snapshot();
                    add_stats(&mut totals.retired, &stats);
                    totals.retired_model_errors += times.model_errors.load(Relaxed);
                }
                drop(totals);
                // The slot's voice is gone unless a newer one for it was started.
                if !self.voices.iter().any(|v| v.slot == voice.slot) {
                    if let Some(files) = &self.files[voice.slot] {
                        if *files == voice.files {
                            self.status(voice.slot, VoiceState::Standby, None);
                        }
                    }
                }
                // `voice` drops here: its worker stops and joins, its index is released.
            }
        }
    }

    /// The times, once they have settled; updates the expected latency.
    fn settled_times(&mut self) -> Option<(u32, u32, u32)> {
        let s = &self.shared;
        let now = (
            s.block_ms.load(Relaxed),
            s.extra_ms.load(Relaxed),
            s.sola_ms.load(Relaxed),
        );
        if now != self.seen {
            self.seen = now;
            self.seen_since = Instant::now();
        }
        if self.times != Some(now) && (self.times.is_none() || self.seen_since.elapsed() >= SETTLE)
        {
            self.times = Some(now);
            if self.voices.is_empty() {
                let latency = fixed_latency(&framing(self.config.host_rate, now)).unwrap_or(0);
                self.shared.expected_latency.store(latency, Relaxed);
            }
        }
        self.times
    }

    fn tick(&mut self) {
        let Some(times) = self.settled_times() else {
            return;
        };
        self.poll_index_load();
        let slot = self.shared.active_slot.load(Relaxed);
        let Some(files) = self.files.get(slot).cloned().flatten() else {
            return;
        };
        if let Some(newest) = self.voices.last_mut() {
            let same_models = newest.files.model == files.model
                && newest.files.contentvec == files.contentvec
                && newest.files.rmvpe == files.rmvpe;
            if newest.slot == slot && newest.times == times && same_models {
                if newest.index_requested != files.index && newest.index_ticket.is_none() {
                    // Same voice, new index: through its live runtime, crossfaded.
                    newest.index_requested = files.index.clone();
                    newest.index_ticket = Some(newest.index.load(0, &files.index));
                    lock(&self.shared.status)[slot].state =
                        VoiceState::Loading("reading the index".into());
                }
                return;
            }
        }
        if self.failed.as_ref() == Some(&(slot, files.clone(), times)) {
            return;
        }
        match self.start(slot, &files, times) {
            Ok(()) => self.failed = None,
            Err(why) => {
                self.status(slot, VoiceState::Failed(why), None);
                self.failed = Some((slot, files, times));
            }
        }
    }

    fn poll_index_load(&mut self) {
        let Some(newest) = self.voices.last_mut() else {
            return;
        };
        let Some(ticket) = &newest.index_ticket else {
            return;
        };
        let slot = newest.slot;
        let Some(outcome) = ticket.outcome() else {
            let (done, total) = ticket.progress();
            let stage = Stage::Index { done, total }.to_string();
            lock(&self.shared.status)[slot].state = VoiceState::Loading(stage);
            return;
        };
        newest.index_ticket = None;
        let mut status = lock(&self.shared.status);
        match outcome {
            knnblend::live::LoadOutcome::Published(info) => {
                newest.files.index = newest.index_requested.clone();
                newest.info.index_name = info.name.clone();
                newest.info.index_path = info.path.clone();
                newest.info.vectors = info.ntotal as u64;
                newest.info.lists = info.nlist;
                status[slot] = VoiceStatus {
                    state: VoiceState::Ready,
                    info: Some(newest.info.clone()),
                };
            }
            knnblend::live::LoadOutcome::Failed(e) => {
                // The voice keeps its index; the same request is not retried.
                status[slot].state = VoiceState::Failed(e.to_string());
            }
            knnblend::live::LoadOutcome::Superseded => {}
        }
    }

    /// Opens `files` for `slot` and queues it for the audio side.
    fn start(
        &mut self,
        slot: usize,
        files: &VoiceFiles,
        times: (u32, u32, u32),
    ) -> Result<(), String> {
        self.runtime()?;
        let framing = framing(self.config.host_rate, times);
        let shared = self.shared.clone();
        let mut progress = |stage: Stage| {
            lock(&shared.status)[slot].state = VoiceState::Loading(stage.to_string());
        };
        progress(Stage::ContentVec);
        let opened = open_voice(
            files,
            framing,
            self.shared.controls.clone(),
            self.config.seed.wrapping_add(self.next_id),
            &mut progress,
        )
        .map_err(|e| e.to_string())?;
        let converter = opened.converter;
        let delay = converter_delay_of(&converter);
        let block = converter.host_block();
        let fade = StreamConfig::new(block, framing.host_rate as f32).fade;
        let fixed = fixed_latency(&framing).map_err(|e| e.to_string())?;
        let latency = fixed.max(2 * block + fade + delay);
        let config = StreamConfig {
            block,
            budget: latency - block - fade - delay,
            fade,
        };
        let times_handle = converter.times().clone();
        let (audio, worker) =
            stream(config, converter).map_err(|e| format!("could not start the worker: {e}"))?;
        let id = self.next_id;
        self.next_id += 1;
        let running = Box::new(Running {
            stream: audio,
            slot,
            id,
        });
        if self.to_audio.push(Incoming::Voice(running)).is_err() {
            return Err("the audio side is not taking new voices (is the host processing?)".into());
        }
        self.shared.expected_latency.store(latency, Relaxed);
        lock(&self.shared.totals)
            .live
            .push((id, worker.telemetry().clone(), times_handle, block));
        self.status(slot, VoiceState::Ready, Some(Some(opened.info.clone())));
        self.voices.push(Voice {
            id,
            slot,
            files: files.clone(),
            times,
            index: opened.index,
            index_requested: files.index.clone(),
            index_ticket: None,
            info: opened.info,
            _worker: worker,
        });
        Ok(())
    }
}

/// The framing of the times `(block, extra, sola)` in ms.
fn framing(host_rate: u32, (block, extra, sola): (u32, u32, u32)) -> Framing {
    Framing {
        host_rate,
        block_seconds: block as f64 / 1000.0,
        crossfade_seconds: sola as f64 / 1000.0,
        extra_seconds: extra as f64 / 1000.0,
    }
}

fn converter_delay_of(converter: &crate::pipeline::RvcConverter) -> usize {
    use crate::stream::Converter;
    converter.delay()
}

/// The latency a host reports for `framing`: block + budget (one block) + fade + the largest
/// converter delay over RVC's model rates.
pub fn fixed_latency(framing: &Framing) -> Result<usize, crate::RvcError> {
    let mut worst = 0;
    let mut block = 0;
    for rate in MODEL_RATES {
        let (delay, host_block) = converter_timing(framing, rate)?;
        worst = worst.max(delay);
        block = host_block;
    }
    let fade = StreamConfig::new(block, framing.host_rate as f32).fade;
    Ok(2 * block + fade + worst)
}
