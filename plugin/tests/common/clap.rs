//! A small CLAP host on `clack-host`, shared by the tests that load the bundled plugin
//! (`clap_host.rs`, `clap_rvc.rs`; included with `#[path]`, so the offline tests do not build
//! it): one plugin instance with its parameter ids, the latency, params and state extensions,
//! the host callbacks the plugin makes (restart, latency changed, rescans, main-thread
//! callbacks) counted, and audio processed on an audio thread, either as fast as possible or in
//! real time with the main thread watching the output as it arrives.

#![allow(dead_code)]

use std::cell::Cell;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clack_extensions::latency::{HostLatency, HostLatencyImpl, PluginLatency};
use clack_extensions::params::{
    HostParams, HostParamsImplMainThread, HostParamsImplShared, ParamClearFlags, ParamInfoBuffer,
    ParamRescanFlags, PluginParams,
};
use clack_extensions::state::{HostState, HostStateImpl, PluginState};
use clack_host::events::event_types::ParamValueEvent;
use clack_host::prelude::*;

pub const PLUGIN_ID: &CStr = c"org.knnblend.knn-blend";
pub const MAX_BLOCK: u32 = 4096;

#[derive(Default)]
pub struct Shared {
    pub callback_requested: AtomicBool,
    pub restart_requested: AtomicBool,
    pub flush_requested: AtomicBool,
    pub params: OnceLock<Option<PluginParams>>,
    pub state: OnceLock<Option<PluginState>>,
    pub latency: OnceLock<Option<PluginLatency>>,
}

impl<'a> SharedHandler<'a> for Shared {
    fn initializing(&self, instance: InitializingPluginHandle<'a>) {
        let _ = self.params.set(instance.get_extension());
        let _ = self.state.set(instance.get_extension());
        let _ = self.latency.set(instance.get_extension());
    }
    fn request_restart(&self) {
        self.restart_requested.store(true, Ordering::SeqCst);
    }
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback_requested.store(true, Ordering::SeqCst);
    }
}

impl HostParamsImplShared for Shared {
    fn request_flush(&self) {
        self.flush_requested.store(true, Ordering::SeqCst);
    }
}

pub struct MainThread {
    pub latency_changes: Cell<u32>,
    pub rescans: Cell<u32>,
    pub dirty: Cell<u32>,
}

impl<'a> MainThreadHandler<'a> for MainThread {
    fn initialized(&self, _instance: InitializedPluginHandle<'a>) {}
}

impl HostLatencyImpl for MainThread {
    fn changed(&self) {
        self.latency_changes.set(self.latency_changes.get() + 1);
    }
}

impl HostParamsImplMainThread for MainThread {
    fn rescan(&self, _flags: ParamRescanFlags) {
        self.rescans.set(self.rescans.get() + 1);
    }
    fn clear(&self, _param_id: ClapId, _flags: ParamClearFlags) {}
}

impl HostStateImpl for MainThread {
    fn mark_dirty(&self) {
        self.dirty.set(self.dirty.get() + 1);
    }
}

pub struct TestHost;

impl HostHandlers for TestHost {
    type Shared<'a> = Shared;
    type MainThread<'a> = MainThread;
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        builder
            .register::<HostLatency>()
            .register::<HostParams>()
            .register::<HostState>();
    }
}

/// Whether `CI` says this runs in continuous integration (`CI=true` or `CI=1`).
pub fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// `KNNBLEND_CLAP_BUNDLE`, else `target/bundled/knnblend.clap` if it exists.
pub fn bundle_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KNNBLEND_CLAP_BUNDLE") {
        return Some(PathBuf::from(path));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bundled/knnblend.clap");
    path.exists().then_some(path)
}

/// The bundle, or `None` after reporting the skip (`tests/skip`: a `KNNBLEND-SKIPPED:` line
/// that `cargo xtask test` lists); under `CI=true` a missing bundle fails the test instead
/// (nothing skips silently in CI).
pub fn bundle_or_skip() -> Option<PathBuf> {
    if let Some(path) = bundle_path() {
        return Some(path);
    }
    skip::skip(
        "target/bundled/knnblend.clap does not exist",
        "run `cargo xtask setup` (target/venv, ONNX Runtime) and `cargo xtask bundle \
         knnblend-plugin --features assert_process_allocs` (or `cargo xtask test`, which does \
         both)",
    );
    None
}

#[path = "../../../tests/skip/mod.rs"]
mod skip;

/// nice-plug's CLAP state: 8-byte little-endian length, then JSON.
pub fn decode_state(bytes: &[u8]) -> serde_json::Value {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + len]).expect("state is JSON")
}

pub fn encode_state(state: &serde_json::Value) -> Vec<u8> {
    let json = serde_json::to_vec(state).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

/// One plugin instance with its parameter ids and (while active) its audio processor.
pub struct Instance {
    pub instance: PluginInstance<TestHost>,
    pub processor: Option<StoppedPluginAudioProcessor<TestHost>>,
    pub params: Vec<(String, ClapId)>,
    pub sample_rate: f64,
    pub steady_time: u64,
}

impl Instance {
    pub fn new(entry: &PluginEntry) -> Instance {
        let host_info = HostInfo::new(
            "knnblend test host",
            "knnblend",
            "https://crates.io",
            "0.1.0",
        )
        .unwrap();
        let mut instance = PluginInstance::<TestHost>::new(
            |_| Shared::default(),
            |_| MainThread {
                latency_changes: Cell::new(0),
                rescans: Cell::new(0),
                dirty: Cell::new(0),
            },
            entry,
            PLUGIN_ID,
            &host_info,
        )
        .expect("instantiate the plugin");
        let ext = instance
            .access_shared_handler(|s| *s.params.get().unwrap())
            .expect("the plugin has the params extension");
        let handle = instance.plugin_handle();
        let count = ext.count(&handle);
        let mut params = Vec::new();
        for i in 0..count {
            let mut buffer = ParamInfoBuffer::new();
            let info = ext.get_info(&handle, i, &mut buffer).expect("param info");
            params.push((String::from_utf8_lossy(info.name).into_owned(), info.id));
        }
        let mut out = Instance {
            instance,
            processor: None,
            params,
            sample_rate: 0.0,
            steady_time: 0,
        };
        out.pump();
        out
    }

    pub fn id(&self, name: &str) -> ClapId {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no parameter {name}: {:?}", self.params))
            .1
    }

    pub fn params_ext(&self) -> PluginParams {
        self.instance
            .access_shared_handler(|s| *s.params.get().unwrap())
            .unwrap()
    }

    pub fn value(&mut self, name: &str) -> f64 {
        let id = self.id(name);
        let ext = self.params_ext();
        ext.get_value(&self.instance.plugin_handle(), id)
            .expect("param value")
    }

    pub fn text(&mut self, name: &str, value: f64) -> String {
        let id = self.id(name);
        let ext = self.params_ext();
        let mut buffer = [0u8; 256];
        let text = ext
            .value_to_text(&self.instance.plugin_handle(), id, value, &mut buffer)
            .expect("value to text");
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        String::from_utf8_lossy(&text[..end]).into_owned()
    }

    /// The CLAP value of `text` for a parameter, parsed by the plugin (CLAP values are the
    /// plugin's own representation, e.g. normalised or a step index).
    pub fn parse(&mut self, name: &str, text: &str) -> f64 {
        let id = self.id(name);
        let ext = self.params_ext();
        let text = std::ffi::CString::new(text).unwrap();
        ext.text_to_value(&self.instance.plugin_handle(), id, &text)
            .unwrap_or_else(|| panic!("{name}: cannot parse {text:?}"))
    }

    /// The current value of a parameter as the plugin displays it.
    pub fn shown(&mut self, name: &str) -> String {
        let value = self.value(name);
        self.text(name, value)
    }

    pub fn latency(&mut self) -> u32 {
        let ext = self
            .instance
            .access_shared_handler(|s| *s.latency.get().unwrap())
            .expect("the plugin has the latency extension");
        ext.get(&self.instance.plugin_handle())
    }

    /// How often the plugin called the host's `latency.changed()` so far.
    pub fn latency_changes(&self) -> u32 {
        self.instance.access_handler(|h| h.latency_changes.get())
    }

    /// Whether the plugin called `host.request_restart()` since the last call (clears it).
    pub fn take_restart_request(&self) -> bool {
        self.instance
            .access_shared_handler(|s| s.restart_requested.swap(false, Ordering::SeqCst))
    }

    /// Runs main-thread callbacks the plugin asked for (parameter rescans, latency changes).
    pub fn pump(&mut self) {
        let requested = self
            .instance
            .access_shared_handler(|s| s.callback_requested.swap(false, Ordering::SeqCst));
        if requested {
            self.instance.call_on_main_thread_callback();
        }
    }

    pub fn activate(&mut self, sample_rate: f64) {
        assert!(self.processor.is_none());
        let processor = self
            .instance
            .activate(
                |_, _| (),
                PluginAudioConfiguration {
                    sample_rate,
                    min_frames_count: 1,
                    max_frames_count: MAX_BLOCK,
                },
            )
            .expect("activate");
        self.processor = Some(processor);
        self.sample_rate = sample_rate;
        self.pump();
    }

    pub fn deactivate(&mut self) {
        let processor = self.processor.take().expect("active");
        self.instance.deactivate(processor);
        self.pump();
    }

    pub fn save(&mut self) -> Vec<u8> {
        let ext = self
            .instance
            .access_shared_handler(|s| *s.state.get().unwrap())
            .expect("the plugin has the state extension");
        let mut bytes = Vec::new();
        ext.save(&self.instance.plugin_handle(), &mut bytes)
            .expect("save state");
        bytes
    }

    pub fn load(&mut self, bytes: &[u8]) -> bool {
        let ext = self
            .instance
            .access_shared_handler(|s| *s.state.get().unwrap())
            .expect("the plugin has the state extension");
        let ok = ext
            .load(
                &self.instance.plugin_handle(),
                &mut std::io::Cursor::new(bytes),
            )
            .is_ok();
        self.pump();
        ok
    }

    /// Processes `input` (one Vec per channel) on an audio thread in blocks cycling through
    /// `blocks`, applying `changes` (sample position, parameter name, plain value) as events
    /// inside the block they fall in. Returns the output.
    pub fn process(
        &mut self,
        input: &[Vec<f32>],
        blocks: &[usize],
        changes: &[(usize, &str, f64)],
    ) -> Vec<Vec<f32>> {
        self.stream(input, blocks, changes, None, |_, _| true)
    }

    /// Like [`Instance::process`], but paced to real time (the audio thread sleeps until each
    /// block is due, as an audio device would make it wait), while this thread acts as the
    /// host's main thread: it runs the plugin's main-thread callbacks as they are requested and
    /// calls `watch(self, output so far)` whenever output arrives (and at least every 10 ms).
    /// `watch` returning `false` stops the stream early. Returns the output produced.
    pub fn process_realtime(
        &mut self,
        input: &[Vec<f32>],
        blocks: &[usize],
        changes: &[(usize, &str, f64)],
        watch: impl FnMut(&mut Instance, &[Vec<f32>]) -> bool,
    ) -> Vec<Vec<f32>> {
        let rate = self.sample_rate;
        self.stream(input, blocks, changes, Some(rate), watch)
    }

    fn stream(
        &mut self,
        input: &[Vec<f32>],
        blocks: &[usize],
        changes: &[(usize, &str, f64)],
        pace: Option<f64>,
        mut watch: impl FnMut(&mut Instance, &[Vec<f32>]) -> bool,
    ) -> Vec<Vec<f32>> {
        let events: Vec<(usize, ClapId, f64)> = changes
            .iter()
            .map(|&(at, name, value)| (at, self.id(name), value))
            .collect();
        let processor = self.processor.take().expect("active");
        let channels = input.len();
        let total = input[0].len();
        let steady_start = self.steady_time;
        let stop = AtomicBool::new(false);
        let (to_main, from_audio) = mpsc::channel::<Vec<Vec<f32>>>();
        let (processor, output) = std::thread::scope(|scope| {
            let stop = &stop;
            let events = &events;
            let audio = scope.spawn(move || {
                let mut processor = processor.start_processing().expect("start processing");
                let mut in_ports = AudioPorts::with_capacity(channels, 1);
                let mut out_ports = AudioPorts::with_capacity(channels, 1);
                let began = Instant::now();
                let mut pos = 0;
                let mut block = 0;
                while pos < total && !stop.load(Ordering::SeqCst) {
                    let n = blocks[block % blocks.len()].min(total - pos);
                    let mut in_bufs: Vec<Vec<f32>> =
                        input.iter().map(|c| c[pos..pos + n].to_vec()).collect();
                    let mut out_bufs = vec![vec![0.0f32; n]; channels];
                    let block_events: Vec<ParamValueEvent> = events
                        .iter()
                        .filter(|(at, _, _)| *at >= pos && *at < pos + n)
                        .map(|&(at, id, value)| {
                            ParamValueEvent::new((at - pos) as u32, id, Pckn::match_all(), value)
                        })
                        .collect();
                    let input_events = InputEvents::from_buffer(&block_events);
                    let mut out_events_buffer = EventBuffer::new();
                    let mut output_events = OutputEvents::from_buffer(&mut out_events_buffer);
                    let inputs = in_ports.with_input_buffers([AudioPortBuffer {
                        latency: 0,
                        channels: AudioPortBufferType::f32_input_only(
                            in_bufs.iter_mut().map(InputChannel::variable),
                        ),
                    }]);
                    let mut outputs = out_ports.with_output_buffers([AudioPortBuffer {
                        latency: 0,
                        channels: AudioPortBufferType::f32_output_only(
                            out_bufs.iter_mut().map(|b| b.as_mut_slice()),
                        ),
                    }]);
                    processor
                        .process(
                            &inputs,
                            &mut outputs,
                            &input_events,
                            &mut output_events,
                            Some(steady_start + pos as u64),
                            None,
                        )
                        .expect("process");
                    // The main thread may have stopped listening; the audio goes on regardless.
                    let _ = to_main.send(out_bufs);
                    pos += n;
                    block += 1;
                    if let Some(rate) = pace {
                        let due = Duration::from_secs_f64(pos as f64 / rate);
                        if let Some(wait) = due.checked_sub(began.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                (processor.stop_processing(), pos)
            });
            let mut output = vec![Vec::with_capacity(total); channels];
            let mut watching = true;
            loop {
                let mut disconnected = false;
                let mut arrived = false;
                match from_audio.recv_timeout(Duration::from_millis(10)) {
                    Ok(block) => {
                        append(&mut output, block);
                        arrived = true;
                        while let Ok(block) = from_audio.try_recv() {
                            append(&mut output, block);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => disconnected = true,
                }
                if pace.is_some() || disconnected {
                    // The host's main thread: the plugin's requested callbacks run here.
                    self.pump();
                }
                if watching && (arrived || pace.is_some()) && !watch(self, &output) {
                    watching = false;
                    stop.store(true, Ordering::SeqCst);
                }
                if disconnected {
                    break;
                }
            }
            let (processor, _processed) = audio.join().expect("audio thread");
            (processor, output)
        });
        self.steady_time += output[0].len() as u64;
        self.processor = Some(processor);
        self.pump();
        output
    }
}

fn append(output: &mut [Vec<f32>], block: Vec<Vec<f32>>) {
    for (o, b) in output.iter_mut().zip(block) {
        o.extend_from_slice(&b);
    }
}
