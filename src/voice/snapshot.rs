//! What the voice path is doing, for an editor to draw: the audio thread publishes a
//! [`VoiceSnapshot`] every frame into a [`SnapshotBoard`], and any other thread reads the latest
//! one. A sequence lock over atomics: the writer never waits, allocates or locks (it stores a
//! few dozen atomics per 10 ms frame); a reader retries while a write is in progress and so
//! always gets one whole frame, never a mix of two.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Envelope bands a snapshot holds (the features' 40, with room to spare).
pub const SNAPSHOT_BANDS: usize = 64;

/// One frame of the voice path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VoiceSnapshot {
    /// Frames analysed so far (0: nothing published yet).
    pub frame: u64,
    /// Bands in use.
    pub bands: usize,
    /// The input frame's envelope (log band energies, the features' absolute half).
    pub input: [f32; SNAPSHOT_BANDS],
    /// The envelope the blend chose (what the output is moved to).
    pub blended: [f32; SNAPSHOT_BANDS],
    /// The input's f0 in this frame, Hz (0: unvoiced or Pitch off).
    pub input_f0_hz: f32,
    /// The input's running median f0, Hz (0: not known).
    pub input_median_hz: f32,
    /// The shift applied, semitones.
    pub shift_semitones: f32,
}

impl Default for VoiceSnapshot {
    fn default() -> Self {
        VoiceSnapshot {
            frame: 0,
            bands: 0,
            input: [0.0; SNAPSHOT_BANDS],
            blended: [0.0; SNAPSHOT_BANDS],
            input_f0_hz: 0.0,
            input_median_hz: 0.0,
            shift_semitones: 0.0,
        }
    }
}

/// The latest [`VoiceSnapshot`], shared between the audio thread (one writer) and readers.
pub struct SnapshotBoard {
    seq: AtomicU64,
    frame: AtomicU64,
    bands: AtomicU32,
    input: [AtomicU32; SNAPSHOT_BANDS],
    blended: [AtomicU32; SNAPSHOT_BANDS],
    f0: [AtomicU32; 3],
}

impl Default for SnapshotBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotBoard {
    /// An empty board (frame 0).
    pub fn new() -> SnapshotBoard {
        SnapshotBoard {
            seq: AtomicU64::new(0),
            frame: AtomicU64::new(0),
            bands: AtomicU32::new(0),
            input: std::array::from_fn(|_| AtomicU32::new(0)),
            blended: std::array::from_fn(|_| AtomicU32::new(0)),
            f0: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Publishes one frame (the single writer: the audio thread). Wait-free.
    pub fn publish(
        &self,
        frame: u64,
        input: &[f32],
        blended: &[f32],
        (input_f0_hz, input_median_hz, shift_semitones): (f32, f32, f32),
    ) {
        let n = input.len().min(blended.len()).min(SNAPSHOT_BANDS);
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed); // odd: writing
        fence(Ordering::Release);
        self.frame.store(frame, Ordering::Relaxed);
        self.bands.store(n as u32, Ordering::Relaxed);
        for (a, &v) in self.input.iter().zip(&input[..n]) {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
        for (a, &v) in self.blended.iter().zip(&blended[..n]) {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
        for (a, v) in self
            .f0
            .iter()
            .zip([input_f0_hz, input_median_hz, shift_semitones])
        {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release); // even: done
    }

    /// The latest whole frame (retries while the writer is mid-frame).
    pub fn read(&self) -> VoiceSnapshot {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut out = VoiceSnapshot {
                frame: self.frame.load(Ordering::Relaxed),
                bands: (self.bands.load(Ordering::Relaxed) as usize).min(SNAPSHOT_BANDS),
                ..VoiceSnapshot::default()
            };
            for (o, a) in out.input.iter_mut().zip(&self.input) {
                *o = f32::from_bits(a.load(Ordering::Relaxed));
            }
            for (o, a) in out.blended.iter_mut().zip(&self.blended) {
                *o = f32::from_bits(a.load(Ordering::Relaxed));
            }
            let f = |i: usize| f32::from_bits(self.f0[i].load(Ordering::Relaxed));
            out.input_f0_hz = f(0);
            out.input_median_hz = f(1);
            out.shift_semitones = f(2);
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    /// A reader racing the writer only ever sees whole frames: every value of a frame is that
    /// frame's number.
    #[test]
    fn readers_see_whole_frames_only() {
        let board = Arc::new(SnapshotBoard::new());
        assert_eq!(board.read().frame, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (board, stop) = (board.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut frame = 0u64;
                let mut v = [0f32; 40];
                while !stop.load(Ordering::Relaxed) {
                    frame += 1;
                    v.fill(frame as f32);
                    board.publish(frame, &v, &v, (frame as f32, frame as f32, frame as f32));
                }
                frame
            })
        };
        let mut seen = 0;
        let mut last = 0;
        let start = std::time::Instant::now();
        while seen < 20_000 && start.elapsed() < std::time::Duration::from_secs(5) {
            let s = board.read();
            if s.frame == 0 {
                continue;
            }
            let f = s.frame as f32;
            assert_eq!(s.bands, 40);
            assert!(
                s.input[..40]
                    .iter()
                    .chain(&s.blended[..40])
                    .all(|&x| x == f),
                "torn frame {s:?}"
            );
            assert_eq!(
                (s.input_f0_hz, s.input_median_hz, s.shift_semitones),
                (f, f, f)
            );
            assert!(s.frame >= last, "frames went backwards");
            last = s.frame;
            seen += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(seen > 100 && written >= last);
    }
}
