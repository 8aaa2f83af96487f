//! Flush-to-zero and denormals-are-zero for the duration of `process()`.
//!
//! nice-plug only sets FTZ, and only behind a feature; denormal inputs can still slow the voice
//! path down unless DAZ is set too. The guard sets both and restores the previous control word
//! when dropped, so the host's floating-point environment is left as it was.

use std::marker::PhantomData;

#[cfg(target_arch = "x86_64")]
const MXCSR_FTZ: u32 = 1 << 15;
#[cfg(target_arch = "x86_64")]
const MXCSR_DAZ: u32 = 1 << 6;
#[cfg(target_arch = "aarch64")]
const FPCR_FZ: u64 = 1 << 24;

/// Sets FTZ and DAZ on the current thread while alive.
pub struct FlushDenormals {
    #[allow(dead_code)]
    previous: u64,
    /// The control word is per thread: the guard must be dropped where it was made.
    _not_send: PhantomData<*const ()>,
}

impl FlushDenormals {
    /// Enables flush-to-zero and denormals-are-zero.
    #[inline]
    pub fn new() -> Self {
        let previous = read();
        let wanted = previous | mask();
        if wanted != previous {
            write(wanted);
        }
        Self {
            previous,
            _not_send: PhantomData,
        }
    }
}

impl Default for FlushDenormals {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for FlushDenormals {
    #[inline]
    fn drop(&mut self) {
        if read() != self.previous {
            write(self.previous);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn mask() -> u64 {
    (MXCSR_FTZ | MXCSR_DAZ) as u64
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn read() -> u64 {
    let mut mxcsr: u32 = 0;
    // SAFETY: stmxcsr stores the 32-bit MXCSR register into the pointed-to local.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut mxcsr, options(nostack, preserves_flags))
    };
    mxcsr as u64
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn write(value: u64) {
    let mxcsr = value as u32;
    // SAFETY: ldmxcsr loads a value read from MXCSR with only the FTZ/DAZ bits changed.
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, preserves_flags)) };
}

#[cfg(target_arch = "aarch64")]
#[inline]
fn mask() -> u64 {
    FPCR_FZ
}

#[cfg(target_arch = "aarch64")]
#[inline]
fn read() -> u64 {
    let fpcr: u64;
    // SAFETY: reading FPCR has no side effects.
    unsafe { std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack)) };
    fpcr
}

#[cfg(target_arch = "aarch64")]
#[inline]
fn write(value: u64) {
    // SAFETY: writes back FPCR with only the FZ bit changed.
    unsafe { std::arch::asm!("msr fpcr, {}", in(reg) value, options(nomem, nostack)) };
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline]
fn mask() -> u64 {
    0
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline]
fn read() -> u64 {
    0
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
#[inline]
fn write(_value: u64) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn flushes_inside_and_restores_after() {
        let before = read();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        {
            let _guard = FlushDenormals::new();
            assert_eq!(read() & mask(), mask());
            // MIN_POSITIVE / 4 is subnormal: flushed to zero with FTZ.
            assert_eq!(std::hint::black_box(tiny) / 4.0, 0.0);
        }
        assert_eq!(read(), before);
        if before & mask() == 0 {
            assert!(std::hint::black_box(tiny) / 4.0 > 0.0);
        }
    }
}
