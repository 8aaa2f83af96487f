//! A minimal offline host for the plugin: nice-plug's activate/process contexts mocked, blocks of
//! any size rendered through the real `Plugin::process()`, parameters set the way the wrappers
//! set them, and allocation checks around every process call (when the crate is built with
//! `assert_process_allocs`).

#![allow(dead_code)]

use std::cell::Cell;
use std::sync::Arc;

use knnblend_plugin::params::KnnBlendParams;
use knnblend_plugin::KnnBlend;
use nice_plug::context::process::Transport;
use nice_plug::midi::PluginNoteEvent;
use nice_plug::prelude::*;

/// Activation context: records the latency the plugin reports.
pub struct MockActivate {
    pub latency: Cell<Option<u32>>,
}

impl ActivateContext<KnnBlend> for MockActivate {
    fn plugin_api(&self) -> PluginApi {
        PluginApi::Clap
    }
    fn execute(&self, _task: ()) {}
    fn set_latency_samples(&self, samples: u32) {
        self.latency.set(Some(samples));
    }
    fn set_current_voice_capacity(&self, _capacity: u32) {}
}

/// Process context: no events, a stopped transport.
pub struct MockProcess {
    transport: Transport,
    pub latency: Cell<Option<u32>>,
}

impl ProcessContext<KnnBlend> for MockProcess {
    fn plugin_api(&self) -> PluginApi {
        PluginApi::Clap
    }
    fn execute_background(&self, _task: ()) {}
    fn execute_gui(&self, _task: ()) {}
    fn transport(&self) -> &Transport {
        &self.transport
    }
    fn next_event(&mut self) -> Option<PluginNoteEvent<KnnBlend>> {
        None
    }
    fn try_send_event(
        &mut self,
        event: PluginNoteEvent<KnnBlend>,
    ) -> Result<
        (),
        (
            PluginNoteEvent<KnnBlend>,
            nice_plug::context::process::SendEventError,
        ),
    > {
        Err((
            event,
            nice_plug::context::process::SendEventError::NoOutputBuffer,
        ))
    }
    fn set_latency_samples(&self, samples: u32) {
        self.latency.set(Some(samples));
    }
    fn request_restart(&self) {}
    fn set_current_voice_capacity(&self, _capacity: u32) {}
}

/// Runs `f` with allocations forbidden on this thread (aborts the test binary on any allocation
/// or free) when the crate is built with `assert_process_allocs`; otherwise just runs it.
pub fn no_alloc<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(feature = "assert_process_allocs")]
    {
        nice_assert_no_alloc::assert_no_alloc(f)
    }
    #[cfg(not(feature = "assert_process_allocs"))]
    {
        f()
    }
}

/// Parameter handles resolved once, so automation inside the no-allocation region is free.
pub struct ParamHandles {
    ptrs: Vec<(String, ParamPtr)>,
}

impl ParamHandles {
    pub fn new(params: &KnnBlendParams) -> Self {
        Self {
            ptrs: params
                .param_map()
                .into_iter()
                .map(|(id, ptr, _group)| (id, ptr))
                .collect(),
        }
    }

    pub fn ptr(&self, id: &str) -> ParamPtr {
        self.ptrs
            .iter()
            .find(|(i, _)| i == id)
            .unwrap_or_else(|| panic!("no parameter {id}"))
            .1
    }

    /// Sets a parameter from its plain value, as a wrapper does on a host change. `reset`
    /// jumps the smoother instead of gliding.
    pub fn set_plain(&self, id: &str, plain: f32, sample_rate: f32, reset: bool) {
        let ptr = self.ptr(id);
        // SAFETY: the pointers come from the live params object, which outlives `self`.
        unsafe {
            let normalized = ptr.preview_normalized(plain);
            ptr._internal_set_normalized_value(normalized);
            ptr._internal_update_smoother(sample_rate, reset);
        }
    }

    /// Sets a parameter from a normalised value.
    pub fn set_normalized(&self, id: &str, normalized: f32, sample_rate: f32) {
        let ptr = self.ptr(id);
        // SAFETY: as above.
        unsafe {
            ptr._internal_set_normalized_value(normalized);
            ptr._internal_update_smoother(sample_rate, false);
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.ptrs.iter().map(|(id, _)| id.clone()).collect()
    }
}

/// One plugin instance driven offline.
pub struct OfflineHost {
    pub plugin: KnnBlend,
    pub params: Arc<KnnBlendParams>,
    pub handles: ParamHandles,
    pub sample_rate: f32,
    pub channels: usize,
    pub latency: u32,
    /// Page faults (minor + major) counted on this thread inside `process()` calls.
    pub faults: u64,
}

/// Minor + major page faults of the calling thread so far.
pub fn thread_faults() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        (usage.ru_minflt + usage.ru_majflt) as u64
    }
}

impl OfflineHost {
    /// Creates and activates an instance (stereo when `channels` is 2, mono when 1).
    pub fn new(sample_rate: f32, channels: usize) -> Self {
        let plugin = KnnBlend::default();
        let params = plugin.params_handle();
        // The wrappers query these once after creation.
        let _ = plugin.params();
        let handles = ParamHandles::new(&params);
        let mut host = Self {
            plugin,
            params,
            handles,
            sample_rate,
            channels,
            latency: 0,
            faults: 0,
        };
        host.activate(sample_rate, channels);
        host
    }

    /// (Re)activates at `sample_rate`, as a host does after a configuration change.
    pub fn activate(&mut self, sample_rate: f32, channels: usize) {
        let layout = KnnBlend::AUDIO_IO_LAYOUTS
            .iter()
            .find(|l| l.main_output_channels.map(|c| c.get() as usize) == Some(channels))
            .expect("layout for this channel count");
        let config = BufferConfig {
            sample_rate,
            min_buffer_size: None,
            max_buffer_size: 8192,
            process_mode: ProcessMode::Realtime,
        };
        let mut ctx = MockActivate {
            latency: Cell::new(None),
        };
        assert!(self.plugin.activate(layout, &config, &mut ctx));
        self.plugin.reset();
        self.sample_rate = sample_rate;
        self.channels = channels;
        self.latency = ctx.latency.get().expect("activate reports the latency");
        // Smoothers start at the current values, as after a wrapper's activation.
        for id in self.handles.ids() {
            // SAFETY: pointer from the live params object.
            unsafe {
                self.handles
                    .ptr(&id)
                    ._internal_update_smoother(sample_rate, true)
            };
        }
    }

    /// Processes `audio` (one Vec per channel) in place in blocks whose sizes cycle through
    /// `blocks`; before each block `automate(block_index, start_sample, handles, sample_rate)` runs
    /// inside the no-allocation region, like a wrapper applying parameter changes.
    pub fn render(
        &mut self,
        audio: &mut [Vec<f32>],
        blocks: &[usize],
        mut automate: impl FnMut(usize, usize, &ParamHandles, f32),
    ) {
        let total = audio[0].len();
        let mut pos = 0;
        let mut block_index = 0;
        let mut ctx = MockProcess {
            transport: Transport::new(self.sample_rate),
            latency: Cell::new(None),
        };
        while pos < total {
            let n = blocks[block_index % blocks.len()].min(total - pos);
            let mut buffer = Buffer::default();
            let mut slices: Vec<&mut [f32]> = audio
                .iter_mut()
                .map(|channel| &mut channel[pos..pos + n])
                .collect();
            // SAFETY: the slices live until the buffer is dropped below; all have length n.
            unsafe {
                buffer.set_slices(n, |out| {
                    out.clear();
                    out.append(&mut slices);
                })
            };
            let mut aux = AuxiliaryBuffers {
                inputs: &mut [],
                outputs: &mut [],
            };
            let plugin = &mut self.plugin;
            let handles = &self.handles;
            let sample_rate = self.sample_rate;
            let before = thread_faults();
            let status = no_alloc(|| {
                automate(block_index, pos, handles, sample_rate);
                plugin.process(&mut buffer, &mut aux, &mut ctx)
            });
            self.faults += thread_faults() - before;
            assert!(
                !matches!(status, ProcessStatus::Error(_)),
                "process failed: {status:?}"
            );
            drop(buffer);
            pos += n;
            block_index += 1;
        }
    }
}

/// A deterministic voice-like test signal: a few harmonics with vibrato and a little noise.
pub fn test_signal(sample_rate: f32, seconds: f32, channels: usize) -> Vec<Vec<f32>> {
    let n = (sample_rate * seconds) as usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut phase = 0.0f64;
    let mono: Vec<f32> = (0..n)
        .map(|i| {
            let t = i as f64 / sample_rate as f64;
            let f0 = 160.0 + 12.0 * (2.0 * std::f64::consts::PI * 5.0 * t).sin();
            phase += 2.0 * std::f64::consts::PI * f0 / sample_rate as f64;
            let voiced: f64 = (1..=8).map(|h| (phase * h as f64).sin() / h as f64).sum();
            (0.25 * voiced) as f32 + 0.01 * noise()
        })
        .collect();
    (0..channels)
        .map(|c| mono.iter().map(|x| x * (1.0 - 0.1 * c as f32)).collect())
        .collect()
}

/// Peak absolute value.
pub fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// Peak of `output[latency..]` minus `input[..]`, in dBFS, over `range` of the input.
pub fn residual_dbfs(
    input: &[f32],
    output: &[f32],
    latency: usize,
    range: std::ops::Range<usize>,
) -> f64 {
    let mut worst = 0.0f64;
    for i in range {
        if i + latency >= output.len() {
            break;
        }
        worst = worst.max((output[i + latency] as f64 - input[i] as f64).abs());
    }
    20.0 * worst.max(1e-20).log10()
}

pub mod rvc;
mod voice;
#[allow(unused_imports)]
pub use voice::{make_mismatched, make_pq_voice, make_voice, PqRecipe};
