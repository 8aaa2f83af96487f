//! The realtime stream between the audio thread and the conversion worker: exact latency,
//! independence from the host's buffer size, underruns crossfaded to the aligned dry signal
//! and counted, and an audio side that allocates nothing.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use assert_no_alloc::{assert_no_alloc, AllocDisabler};
use knnblend_rvc::stream::{stream, stream_manual, Converter, StreamConfig};

#[global_allocator]
static ALLOCATOR: AllocDisabler = AllocDisabler;

/// Output = −input, delayed by `delay` samples (so converted and dry can be told apart).
struct Negate {
    line: Vec<f32>,
    pos: usize,
}

impl Negate {
    fn new(delay: usize) -> Self {
        Negate {
            line: vec![0.0; delay],
            pos: 0,
        }
    }
}

impl Converter for Negate {
    fn convert(&mut self, input: &[f32], output: &mut [f32]) {
        for (x, y) in input.iter().zip(output.iter_mut()) {
            if self.line.is_empty() {
                *y = -x;
            } else {
                *y = -self.line[self.pos];
                self.line[self.pos] = *x;
                self.pos = (self.pos + 1) % self.line.len();
            }
        }
    }
    fn delay(&self) -> usize {
        self.line.len()
    }
}

fn signal(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.013).sin() * 0.5 + ((i * 7919) % 101) as f32 / 1000.0)
        .collect()
}

/// Runs `input` through a manually driven stream in host buffers of `host` samples, stepping
/// the worker after every callback; returns (converted, dry, latency).
fn run_manual(input: &[f32], host: usize, delay: usize) -> (Vec<f32>, Vec<f32>, usize) {
    let config = StreamConfig {
        block: 480,
        budget: 480,
        fade: 48,
    };
    let (mut audio, mut worker) = stream_manual(config, Negate::new(delay));
    let (mut converted, mut dry) = (vec![0f32; input.len()], vec![0f32; input.len()]);
    for ((x, c), d) in input
        .chunks(host)
        .zip(converted.chunks_mut(host))
        .zip(dry.chunks_mut(host))
    {
        audio.process(x, c, d);
        while worker.step() {}
    }
    let stats = audio.telemetry().snapshot();
    assert_eq!(stats.underruns, 0, "host buffer {host}: {stats:?}");
    assert_eq!(stats.dry_samples, 0, "host buffer {host}: {stats:?}");
    (converted, dry, audio.latency())
}

#[test]
fn latency_is_exact_and_independent_of_the_host_buffer() {
    let input = signal(20_000);
    let (reference, _, latency) = run_manual(&input, 64, 0);
    assert_eq!(latency, 480 + 480 + 48);
    for n in 0..input.len() {
        let expected = if n >= latency {
            -input[n - latency]
        } else {
            0.0
        };
        assert_eq!(reference[n], expected, "sample {n}");
    }
    for host in [1, 17, 128, 441, 479, 480, 512] {
        let (converted, dry, l) = run_manual(&input, host, 0);
        assert_eq!(l, latency);
        assert_eq!(converted, reference, "host buffer {host}");
        for n in latency..input.len() {
            assert_eq!(dry[n], input[n - latency], "dry at {n}, host buffer {host}");
        }
    }
}

#[test]
fn the_converters_own_delay_is_part_of_the_latency() {
    // An impulse comes out exactly `latency` samples later, on both paths.
    let mut input = vec![0f32; 8000];
    input[1234] = 1.0;
    let (converted, dry, latency) = run_manual(&input, 100, 37);
    assert_eq!(latency, 480 + 480 + 48 + 37);
    let peak = |v: &[f32]| {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(i, x)| (i, *x))
            .unwrap()
    };
    assert_eq!(peak(&converted), (1234 + latency, -1.0));
    assert_eq!(peak(&dry), (1234 + latency, 1.0));
}

#[test]
fn a_late_worker_crossfades_to_the_aligned_dry_signal_and_back() {
    let config = StreamConfig {
        block: 480,
        budget: 480,
        fade: 48,
    };
    let (mut audio, mut worker) = stream_manual(config, Negate::new(0));
    let input = signal(48_000);
    let (mut converted, mut dry) = (vec![0f32; input.len()], vec![0f32; input.len()]);
    let host = 96;
    // The worker stalls for 60 callbacks (about 12 blocks) in the middle.
    for (i, ((x, c), d)) in input
        .chunks(host)
        .zip(converted.chunks_mut(host))
        .zip(dry.chunks_mut(host))
        .enumerate()
    {
        audio.process(x, c, d);
        if !(200..260).contains(&i) {
            while worker.step() {}
        }
    }
    let stats = audio.telemetry().snapshot();
    assert_eq!(stats.underruns, 1, "{stats:?}");
    assert!(stats.dry_samples > 0, "{stats:?}");
    // Twelve blocks of stall do not fit the in ring: the stream restarted once.
    assert_eq!(stats.restarts, 1, "{stats:?}");
    let latency = audio.latency();
    // Before and well after the stall: exactly the converted signal. During it: the dry
    // signal, which is the converted one negated; in between, no step larger than the
    // signal's own plus what a 48-sample fade can add.
    let stall_start = 200 * host;
    let back = 300 * host;
    for n in latency..stall_start {
        assert_eq!(converted[n], -input[n - latency], "before the stall, {n}");
    }
    for n in back..input.len() {
        assert_eq!(converted[n], -input[n - latency], "after the stall, {n}");
    }
    let dry_stretch = (stall_start + latency + 100..stall_start + 40 * host)
        .filter(|&n| converted[n] == input[n - latency])
        .count();
    assert!(
        dry_stretch > 1000,
        "the dry signal played for {dry_stretch} samples"
    );
    let max_signal_step = input
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0f32, f32::max);
    let max_step = converted
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .fold(0f32, f32::max);
    // A fade of 48 samples between x and −x moves at most 2·|x|/48 ≈ 0.03 per sample more.
    assert!(
        max_step <= max_signal_step + 0.05,
        "a step of {max_step} (signal's own at most {max_signal_step})"
    );
}

#[test]
fn the_audio_side_allocates_nothing() {
    let config = StreamConfig {
        block: 480,
        budget: 480,
        fade: 48,
    };
    let (mut audio, mut worker) = stream_manual(config, Negate::new(5));
    let input = signal(96_000);
    let (mut c, mut d) = (vec![0f32; 256], vec![0f32; 256]);
    for (i, x) in input.chunks(256).enumerate() {
        let n = x.len();
        assert_no_alloc(|| audio.process(x, &mut c[..n], &mut d[..n]));
        // Starve the worker now and then, so the underrun paths run under the guard too.
        if i % 40 < 30 {
            while worker.step() {}
        }
    }
    assert!(audio.telemetry().snapshot().underruns > 0);
}

const CHILD_ENV: &str = "KNNBLEND_RVC_STREAM_ALLOC_CHILD";

#[test]
#[ignore = "run by allocation_guard_is_active in a child process"]
fn deliberate_allocation_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    eprintln!("allocating on purpose");
    let v = assert_no_alloc(|| std::hint::black_box(vec![1u8; 64]));
    eprintln!("NOT CAUGHT: allocated {} bytes inside the guard", v.len());
}

#[test]
fn allocation_guard_is_active() {
    // Negative control: the guard aborts on an allocation in this build (`assert_no_alloc`
    // checks nothing in release builds, where this test fails instead of the others passing
    // vacuously).
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "deliberate_allocation_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("allocating on purpose"), "{stderr}");
    assert!(!stderr.contains("NOT CAUGHT"), "{stderr}");
    assert!(!out.status.success(), "{stderr}");
}

/// Sleeps longer than a block's time in every conversion.
struct Slow(Arc<AtomicBool>);

impl Converter for Slow {
    fn convert(&mut self, input: &[f32], output: &mut [f32]) {
        self.0.store(true, SeqCst);
        std::thread::sleep(Duration::from_millis(25));
        output.copy_from_slice(input);
    }
}

#[test]
fn a_slow_converter_gives_counted_underruns_not_a_hang() {
    // Blocks of 10 ms at 48 kHz, converted in 25 ms each: always late.
    let ran = Arc::new(AtomicBool::new(false));
    let config = StreamConfig::new(480, 48_000.0);
    let (mut audio, worker) = stream(config, Slow(ran.clone())).unwrap();
    let input = signal(48_000);
    let (mut c, mut d) = (vec![0f32; 480], vec![0f32; 480]);
    for x in input.chunks(480) {
        audio.process(x, &mut c, &mut d);
        assert!(c.iter().all(|v| v.is_finite()));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ran.load(SeqCst), "the worker never ran");
    let stats = audio.telemetry().snapshot();
    assert!(stats.underruns >= 1, "{stats:?}");
    assert!(stats.dry_samples > 10_000, "{stats:?}");
    drop(worker); // stops and joins the thread
}
