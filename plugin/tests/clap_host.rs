//! The bundled CLAP plugin in a real (small) host built on `clack-host`: load the bundle, list
//! and set parameters, process audio at varying block sizes on an audio thread, restore a state
//! that names a voice and wait for it to serve, save and restore state into a fresh instance
//! (byte-identical, same output), deactivate and reactivate at another sample rate, and survive
//! hostile state.
//!
//! Needs `target/bundled/knnblend.clap` (`cargo xtask test` builds it first; or set
//! `KNNBLEND_CLAP_BUNDLE`). Without it the test prints why and passes.

mod common;

use std::cell::Cell;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
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

const PLUGIN_ID: &CStr = c"org.knnblend.knn-blend";
const MAX_BLOCK: u32 = 4096;

#[derive(Default)]
struct Shared {
    callback_requested: AtomicBool,
    restart_requested: AtomicBool,
    flush_requested: AtomicBool,
    params: OnceLock<Option<PluginParams>>,
    state: OnceLock<Option<PluginState>>,
    latency: OnceLock<Option<PluginLatency>>,
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

struct MainThread {
    latency_changes: Cell<u32>,
    rescans: Cell<u32>,
    dirty: Cell<u32>,
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

struct TestHost;

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

fn bundle_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KNNBLEND_CLAP_BUNDLE") {
        return Some(PathBuf::from(path));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bundled/knnblend.clap");
    path.exists().then_some(path)
}

/// One plugin instance with its parameter ids and (while active) its audio processor.
struct Instance {
    instance: PluginInstance<TestHost>,
    processor: Option<StoppedPluginAudioProcessor<TestHost>>,
    params: Vec<(String, ClapId)>,
    sample_rate: f64,
    steady_time: u64,
}

impl Instance {
    fn new(entry: &PluginEntry) -> Instance {
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

    fn id(&self, name: &str) -> ClapId {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no parameter {name}: {:?}", self.params))
            .1
    }

    fn params_ext(&self) -> PluginParams {
        self.instance
            .access_shared_handler(|s| *s.params.get().unwrap())
            .unwrap()
    }

    fn value(&mut self, name: &str) -> f64 {
        let id = self.id(name);
        let ext = self.params_ext();
        ext.get_value(&self.instance.plugin_handle(), id)
            .expect("param value")
    }

    fn text(&mut self, name: &str, value: f64) -> String {
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
    fn parse(&mut self, name: &str, text: &str) -> f64 {
        let id = self.id(name);
        let ext = self.params_ext();
        let text = std::ffi::CString::new(text).unwrap();
        ext.text_to_value(&self.instance.plugin_handle(), id, &text)
            .unwrap_or_else(|| panic!("{name}: cannot parse {text:?}"))
    }

    /// The current value of a parameter as the plugin displays it.
    fn shown(&mut self, name: &str) -> String {
        let value = self.value(name);
        self.text(name, value)
    }

    fn latency(&mut self) -> u32 {
        let ext = self
            .instance
            .access_shared_handler(|s| *s.latency.get().unwrap())
            .expect("the plugin has the latency extension");
        ext.get(&self.instance.plugin_handle())
    }

    /// Runs main-thread callbacks the plugin asked for (parameter rescans, latency changes).
    fn pump(&mut self) {
        let requested = self
            .instance
            .access_shared_handler(|s| s.callback_requested.swap(false, Ordering::SeqCst));
        if requested {
            self.instance.call_on_main_thread_callback();
        }
    }

    fn activate(&mut self, sample_rate: f64) {
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

    fn deactivate(&mut self) {
        let processor = self.processor.take().expect("active");
        self.instance.deactivate(processor);
        self.pump();
    }

    fn save(&mut self) -> Vec<u8> {
        let ext = self
            .instance
            .access_shared_handler(|s| *s.state.get().unwrap())
            .expect("the plugin has the state extension");
        let mut bytes = Vec::new();
        ext.save(&self.instance.plugin_handle(), &mut bytes)
            .expect("save state");
        bytes
    }

    fn load(&mut self, bytes: &[u8]) -> bool {
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
    fn process(
        &mut self,
        input: &[Vec<f32>],
        blocks: &[usize],
        changes: &[(usize, &str, f64)],
    ) -> Vec<Vec<f32>> {
        let events: Vec<(usize, ClapId, f64)> = changes
            .iter()
            .map(|&(at, name, value)| (at, self.id(name), value))
            .collect();
        let processor = self.processor.take().expect("active");
        let channels = input.len();
        let total = input[0].len();
        let steady_start = self.steady_time;
        let (processor, output) = std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let mut processor = processor.start_processing().expect("start processing");
                    let mut output = vec![vec![0.0f32; total]; channels];
                    let mut in_ports = AudioPorts::with_capacity(channels, 1);
                    let mut out_ports = AudioPorts::with_capacity(channels, 1);
                    let mut pos = 0;
                    let mut block = 0;
                    while pos < total {
                        let n = blocks[block % blocks.len()].min(total - pos);
                        let mut in_bufs: Vec<Vec<f32>> =
                            input.iter().map(|c| c[pos..pos + n].to_vec()).collect();
                        let mut out_bufs = vec![vec![0.0f32; n]; channels];
                        let block_events: Vec<ParamValueEvent> = events
                            .iter()
                            .filter(|(at, _, _)| *at >= pos && *at < pos + n)
                            .map(|&(at, id, value)| {
                                ParamValueEvent::new(
                                    (at - pos) as u32,
                                    id,
                                    Pckn::match_all(),
                                    value,
                                )
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
                        for (o, b) in output.iter_mut().zip(&out_bufs) {
                            o[pos..pos + n].copy_from_slice(b);
                        }
                        pos += n;
                        block += 1;
                    }
                    (processor.stop_processing(), output)
                })
                .join()
                .expect("audio thread")
        });
        self.steady_time += total as u64;
        self.processor = Some(processor);
        self.pump();
        output
    }
}

/// nice-plug's CLAP state: 8-byte little-endian length, then JSON.
fn decode_state(bytes: &[u8]) -> serde_json::Value {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + len]).expect("state is JSON")
}

fn encode_state(state: &serde_json::Value) -> Vec<u8> {
    let json = serde_json::to_vec(state).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out
}

fn residual_db(input: &[f32], output: &[f32], latency: usize, from: usize) -> f64 {
    common::residual_dbfs(input, output, latency, from..input.len())
}

/// Processes chunks until the active voice visibly converts (output differs from the delayed
/// input at Blend 100 %), or gives up after a generous bound.
fn wait_until_converting(plugin: &mut Instance, probe: &[Vec<f32>], latency: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = plugin.process(probe, &[512], &[]);
        let db = residual_db(&probe[0], &out[0], latency, latency + 4800);
        if db > -60.0 {
            return db;
        }
        assert!(
            Instant::now() < deadline,
            "the restored voice never started serving (residual {db:.1} dBFS)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn clap_bundle_in_a_real_host() {
    let Some(bundle) = bundle_path() else {
        println!(
            "skipped: target/bundled/knnblend.clap does not exist (run `cargo xtask test`, or \
             `cargo xtask bundle knnblend-plugin` first)"
        );
        return;
    };
    // SAFETY: loading a plugin library runs its initialisers; this is the bundle under test.
    let entry = unsafe { PluginEntry::load(&bundle) }.expect("load the CLAP bundle");
    let factory = entry.get_plugin_factory().expect("plugin factory");
    let descriptor = factory
        .plugin_descriptors()
        .find(|d| d.id() == Some(PLUGIN_ID))
        .expect("kNN Blend is in the bundle");
    assert_eq!(descriptor.name().unwrap().to_bytes(), b"kNN Blend");

    let dir = tempfile::tempdir().unwrap();
    let voice = common::make_voice(dir.path(), "voice.kbi", true);

    // Parameters: all six, readable values.
    let mut a = Instance::new(&entry);
    let names: Vec<&str> = a.params.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "Blend",
        "Neighbours",
        "Voice",
        "Crossfade",
        "Dry/Wet",
        "Output Gain",
    ] {
        assert!(names.contains(&expected), "missing {expected} in {names:?}");
    }
    assert_eq!(a.shown("Blend"), "75%");
    assert_eq!(a.shown("Output Gain"), "0.0 dB");
    assert_eq!(a.shown("Voice"), "Slot 1");
    assert_eq!(a.shown("Crossfade"), "50 ms");
    let v = a.parse("Voice", "Slot 3");
    assert_eq!(a.text("Voice", v), "Slot 3");
    let v = a.parse("Output Gain", "-6.0");
    assert_eq!(a.text("Output Gain", v), "-6.0 dB");

    // A state naming the voice in slot 1, as a project would restore it.
    let mut state = decode_state(&a.save());
    state["fields"]["slots"] =
        serde_json::Value::String(serde_json::json!({"version": 1, "slots": [voice]}).to_string());
    assert!(a.load(&encode_state(&state)));

    // Activate, process at varying block sizes with parameter changes.
    a.activate(48_000.0);
    let latency_48 = a.latency() as usize;
    assert!(latency_48 > 0, "the voice path has latency");
    let input = common::test_signal(48_000.0, 2.0, 2);
    let changes: Vec<(usize, &str, f64)> = vec![
        (1000, "Blend", a.parse("Blend", "25%")),
        (20_000, "Neighbours", a.parse("Neighbours", "3")),
        (30_000, "Output Gain", a.parse("Output Gain", "-6.0")),
        (40_000, "Dry/Wet", a.parse("Dry/Wet", "50%")),
        (50_000, "Crossfade", a.parse("Crossfade", "120")),
        (60_000, "Voice", a.parse("Voice", "Slot 2")),
        (70_000, "Voice", a.parse("Voice", "Slot 1")),
    ];
    let out = a.process(&input, &[1, 17, 256, 4096, 333, 64], &changes);
    assert!(out.iter().flatten().all(|x| x.is_finite()));
    assert_eq!(a.shown("Blend"), "25%");
    assert_eq!(a.shown("Neighbours"), "3");
    assert_eq!(a.shown("Output Gain"), "-6.0 dB");
    assert_eq!(a.shown("Dry/Wet"), "50%");
    assert_eq!(a.shown("Crossfade"), "120 ms");
    assert_eq!(a.shown("Voice"), "Slot 1");

    // Full blend, full wet, unity gain; wait for the restored voice to serve.
    let probe = common::test_signal(48_000.0, 0.5, 2);
    let full = vec![
        (0, "Blend", a.parse("Blend", "100%")),
        (0, "Dry/Wet", a.parse("Dry/Wet", "100%")),
        (0, "Output Gain", a.parse("Output Gain", "0")),
        (0, "Neighbours", a.parse("Neighbours", "8")),
    ];
    a.process(&probe, &[512], &full);
    let db = wait_until_converting(&mut a, &probe, latency_48);
    println!("voice serving: residual against the input {db:.1} dBFS");

    // Save, restore into a fresh instance: byte-identical state, same voice, same output.
    let saved = a.save();
    let mut b = Instance::new(&entry);
    assert!(b.load(&saved));
    assert_eq!(b.save(), saved, "restored state differs from the saved one");
    b.activate(48_000.0);
    wait_until_converting(&mut b, &probe, latency_48);
    // Reactivating resets both to the same starting point.
    a.deactivate();
    a.activate(48_000.0);
    b.deactivate();
    b.activate(48_000.0);
    let out_a = a.process(&input, &[480, 7, 1024], &[]);
    let out_b = b.process(&input, &[64, 333], &[]);
    for (ca, cb) in out_a.iter().zip(&out_b) {
        let worst = ca
            .iter()
            .zip(cb)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "restored instance sounds different ({worst})"
        );
    }

    // Deactivate and reactivate at another rate: latency follows, audio flows, voice stays.
    b.deactivate();
    b.activate(96_000.0);
    let latency_96 = b.latency() as usize;
    assert!(latency_96 > latency_48, "{latency_96} vs {latency_48}");
    let input_96 = common::test_signal(96_000.0, 0.5, 2);
    wait_until_converting(&mut b, &input_96, latency_96);

    // Hostile state: garbage, truncated, garbled fields. The plugin refuses or repairs and
    // keeps processing.
    let mut garbled = decode_state(&saved);
    garbled["fields"]["slots"] = serde_json::Value::String("{\"slots\": [".into());
    garbled["params"]["blend"] = serde_json::json!({"f32": 1e30});
    let cases: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        Vec::new(),
        saved[..saved.len() / 2].to_vec(),
        [&(u64::MAX).to_le_bytes()[..], b"{}"].concat(),
        encode_state(&serde_json::json!({"params": {}, "fields": {}, "extra": 1})),
        encode_state(&garbled),
    ];
    for case in &cases {
        let _ = b.load(case);
        let out = b.process(&input_96, &[256, 1], &[]);
        assert!(out.iter().flatten().all(|x| x.is_finite()));
        let blend = b.shown("Blend");
        let percent: f64 = blend.trim_end_matches('%').parse().unwrap();
        assert!((0.0..=100.0).contains(&percent), "blend {blend}");
    }

    b.deactivate();
    a.deactivate();
    let rescans = AtomicU32::new(0);
    rescans.fetch_add(
        a.instance.access_handler(|h| h.rescans.get()),
        Ordering::Relaxed,
    );
    println!(
        "clap host: {} parameter rescans seen, latency {} @ 48 kHz, {} @ 96 kHz",
        rescans.load(Ordering::Relaxed),
        latency_48,
        latency_96
    );
}
