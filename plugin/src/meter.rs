//! CPU share of `process()`: time spent in the callback over the duration of the audio it
//! produced. Measured only while the editor is open, with relaxed atomics (no locks), timed with
//! the library's tick counter (`knnblend::live::clock`: a register read, never a system call,
//! whatever clock source the kernel has); ticks become nanoseconds on the editor's side.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use knnblend::live::clock::{ticks, Calibration};

/// Counters written by the audio thread and read by the editor.
#[derive(Debug)]
pub struct ProcessMeter {
    enabled: AtomicBool,
    sample_rate_bits: AtomicU32,
    busy_ticks: AtomicU64,
    samples: AtomicU64,
    calibration: Calibration,
    /// The kernel id of the thread that ran the last `process()` (0: unknown).
    audio_thread: AtomicU64,
}

impl Default for ProcessMeter {
    fn default() -> Self {
        ProcessMeter {
            enabled: AtomicBool::new(false),
            sample_rate_bits: AtomicU32::new(0),
            busy_ticks: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            calibration: Calibration::start(),
            audio_thread: AtomicU64::new(0),
        }
    }
}

/// A started measurement: the tick count at the start of a block.
#[derive(Debug, Clone, Copy)]
pub struct Started(u64);

/// A reading of the counters; the difference of two readings gives the CPU share in between.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeterReading {
    /// Nanoseconds spent inside `process()`.
    pub busy_ns: u64,
    /// Samples processed (per channel).
    pub samples: u64,
    /// Sample rate at the time of reading.
    pub sample_rate: f32,
}

impl MeterReading {
    /// Fraction of real time spent processing between `earlier` and `self` (1.0 = 100 %), or
    /// `None` when no audio was processed in between.
    pub fn cpu_share_since(&self, earlier: &MeterReading) -> Option<f64> {
        let samples = self.samples.checked_sub(earlier.samples)?;
        let busy = self.busy_ns.checked_sub(earlier.busy_ns)?;
        if samples == 0 || self.sample_rate.is_nan() || self.sample_rate <= 0.0 {
            return None;
        }
        let audio_ns = samples as f64 / self.sample_rate as f64 * 1e9;
        Some(busy as f64 / audio_ns)
    }
}

impl ProcessMeter {
    /// Turns measuring on (editor open) or off.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Records the sample rate (at activation).
    pub fn set_sample_rate(&self, sample_rate: f32) {
        self.sample_rate_bits
            .store(sample_rate.to_bits(), Ordering::Relaxed);
    }

    /// Starts timing a block if measuring is on (audio thread: a register read).
    /// Also records which thread is the audio thread (a register read, see
    /// `knnblend::platform::current_thread_id`), so the editor can read its page faults.
    #[inline]
    pub fn start(&self) -> Option<Started> {
        if let Some(id) = knnblend::platform::current_thread_id() {
            self.audio_thread.store(id, Ordering::Relaxed);
        }
        self.enabled
            .load(Ordering::Relaxed)
            .then(|| Started(ticks()))
    }

    /// Ends timing a block of `samples` samples (audio thread: a register read, two relaxed
    /// adds).
    #[inline]
    pub fn stop(&self, started: Option<Started>, samples: usize) {
        if let Some(Started(at)) = started {
            let spent = ticks().wrapping_sub(at);
            self.busy_ticks.fetch_add(spent, Ordering::Relaxed);
            self.samples.fetch_add(samples as u64, Ordering::Relaxed);
        }
    }

    /// Page faults so far of the thread that ran the last `process()` (editor side: reads
    /// `/proc`), or `None` where the OS does not tell.
    pub fn audio_thread_page_faults(&self) -> Option<u64> {
        match self.audio_thread.load(Ordering::Relaxed) {
            0 => None,
            id => knnblend::platform::thread_page_faults_of(id),
        }
    }

    /// Current counters (editor side: converts ticks to nanoseconds).
    pub fn read(&self) -> MeterReading {
        let ns_per_tick = self.calibration.ns_per_tick();
        MeterReading {
            busy_ns: Calibration::to_ns(self.busy_ticks.load(Ordering::Relaxed), ns_per_tick),
            samples: self.samples.load(Ordering::Relaxed),
            sample_rate: f32::from_bits(self.sample_rate_bits.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_busy_over_audio_time() {
        let a = MeterReading {
            busy_ns: 0,
            samples: 0,
            sample_rate: 48_000.0,
        };
        let b = MeterReading {
            busy_ns: 100_000_000,
            samples: 48_000,
            sample_rate: 48_000.0,
        };
        assert!((b.cpu_share_since(&a).unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(a.cpu_share_since(&a), None);
    }

    #[test]
    fn disabled_meter_records_nothing() {
        let meter = ProcessMeter::default();
        meter.set_sample_rate(44_100.0);
        let t = meter.start();
        meter.stop(t, 64);
        assert_eq!(meter.read().samples, 0);
        meter.set_enabled(true);
        let t = meter.start();
        std::thread::sleep(std::time::Duration::from_millis(10));
        meter.stop(t, 64);
        let reading = meter.read();
        assert_eq!(reading.samples, 64);
        // The "audio thread" (this one) is recorded and its faults are readable.
        if cfg!(target_os = "linux") {
            assert!(meter.audio_thread_page_faults().is_some());
        }
        // 10 ms of sleeping inside the measured span, in calibrated nanoseconds.
        assert!(
            (9_000_000..2_000_000_000).contains(&reading.busy_ns),
            "{} ns",
            reading.busy_ns
        );
    }
}
