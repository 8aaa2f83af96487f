//! A cheap, syscall-free tick counter for the audio side, converted to nanoseconds on the
//! control side.
//!
//! On x86-64 the tick is the time-stamp counter (`rdtsc`), on AArch64 the virtual counter
//! (`cntvct_el0`): both are a register read, never a system call, whatever clock source the
//! kernel uses (`clock_gettime` is only syscall-free while the vDSO can serve it). Elsewhere
//! `std::time::Instant` is used. The tick rate is calibrated against `Instant` on the control
//! side ([`Calibration`]), so the audio side only stores raw tick counts.
//!
//! Public so programs built on the library (the plugin's CPU meter) time their own audio-thread
//! work the same way: [`ticks`] on the audio thread, [`Calibration`] on the control side.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Reads the tick counter. Allocation-, lock- and syscall-free on x86-64 and AArch64.
#[inline]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions on x86-64.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let v: u64;
        // SAFETY: reading the virtual counter is allowed at EL0 on every AArch64 OS we target.
        unsafe { core::arch::asm!("mrs {}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
        v
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        match EPOCH.get() {
            Some(e) => e.elapsed().as_nanos() as u64,
            None => 0,
        }
    }
}

/// Converts tick counts to nanoseconds by comparing the counter with `Instant` since creation.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    start_ticks: u64,
    start: Instant,
}

/// The shortest span used to estimate the tick rate.
const MIN_SPAN: Duration = Duration::from_millis(5);

impl Calibration {
    /// Starts calibrating now (control side).
    pub fn start() -> Calibration {
        EPOCH.get_or_init(Instant::now);
        let start = Instant::now();
        Calibration {
            start_ticks: ticks(),
            start,
        }
    }

    /// Nanoseconds per tick, estimated over the time since [`start`](Self::start) (waits until
    /// at least 5 ms have passed the first time it is asked, so the estimate is meaningful).
    pub fn ns_per_tick(&self) -> f64 {
        let mut elapsed = self.start.elapsed();
        if elapsed < MIN_SPAN {
            std::thread::sleep(MIN_SPAN - elapsed);
            elapsed = self.start.elapsed();
        }
        let t = ticks().wrapping_sub(self.start_ticks);
        if t == 0 {
            return 1.0;
        }
        elapsed.as_nanos() as f64 / t as f64
    }

    /// Converts a tick count to nanoseconds with the given rate.
    pub fn to_ns(ticks: u64, ns_per_tick: f64) -> u64 {
        (ticks as f64 * ns_per_tick).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_and_calibrate_to_wall_time() {
        let cal = Calibration::start();
        let a = ticks();
        std::thread::sleep(Duration::from_millis(20));
        let b = ticks();
        assert!(b > a, "the tick counter must advance");
        let ns = Calibration::to_ns(b - a, cal.ns_per_tick());
        // Sleeping 20 ms takes at least 20 ms; allow generous scheduling slack above.
        assert!(ns >= 19_000_000, "20 ms measured as {ns} ns");
        assert!(ns < 2_000_000_000, "20 ms measured as {ns} ns");
    }
}
