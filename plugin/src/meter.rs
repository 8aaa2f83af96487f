//! CPU share of `process()`: time spent in the callback over the duration of the audio it
//! produced. Measured only while the editor is open, with relaxed atomics (no locks).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Counters written by the audio thread and read by the editor.
#[derive(Debug, Default)]
pub struct ProcessMeter {
    enabled: AtomicBool,
    sample_rate_bits: AtomicU32,
    busy_ns: AtomicU64,
    samples: AtomicU64,
}

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

    /// Starts timing a block if measuring is on.
    #[inline]
    pub fn start(&self) -> Option<Instant> {
        self.enabled.load(Ordering::Relaxed).then(Instant::now)
    }

    /// Ends timing a block of `samples` samples.
    #[inline]
    pub fn stop(&self, started: Option<Instant>, samples: usize) {
        if let Some(started) = started {
            let ns = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            self.busy_ns.fetch_add(ns, Ordering::Relaxed);
            self.samples.fetch_add(samples as u64, Ordering::Relaxed);
        }
    }

    /// Current counters.
    pub fn read(&self) -> MeterReading {
        MeterReading {
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
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
        meter.stop(t, 64);
        assert_eq!(meter.read().samples, 64);
    }
}
