//! What the voice path is doing, for an editor to draw: the audio thread publishes a
//! [`VoiceSnapshot`] every frame into a [`SnapshotBoard`], and any other thread reads the latest
//! one. A sequence lock over atomics: the writer never waits, allocates or locks (it stores a
//! few dozen atomics per 10 ms frame); a reader retries while a write is in progress and so
//! always gets one whole frame, never a mix of two.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Envelope bands a snapshot holds (the features' 40, with room to spare).
pub const SNAPSHOT_BANDS: usize = 64;

/// The scalar readings of one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Readout {
    /// The input's f0 in this frame, Hz (0: unvoiced or Pitch off).
    pub input_f0_hz: f32,
    /// The input's running median f0, Hz (0: not known).
    pub input_median_hz: f32,
    /// The f0 Match aims the running median at, Hz (0: not matching).
    pub target_f0_hz: f32,
    /// The shift applied, semitones.
    pub shift_semitones: f32,
    /// The frame's level (RMS of the windowed mid signal), dBFS.
    pub level_db: f32,
    /// The match meter: the distance from the input frame to its nearest stored frame, in
    /// the voice's typical spacings (1: as close as the voice's own frames are to each other).
    /// `None` when nothing was searched (Blend 0, no voice) or the voice's spacing is unknown.
    pub match_spacings: Option<f32>,
}

impl Readout {
    const FIELDS: usize = 6;

    fn to_array(self) -> [f32; Self::FIELDS] {
        [
            self.input_f0_hz,
            self.input_median_hz,
            self.target_f0_hz,
            self.shift_semitones,
            self.level_db,
            self.match_spacings.unwrap_or(f32::NAN),
        ]
    }

    fn from_array(a: [f32; Self::FIELDS]) -> Readout {
        Readout {
            input_f0_hz: a[0],
            input_median_hz: a[1],
            target_f0_hz: a[2],
            shift_semitones: a[3],
            level_db: a[4],
            match_spacings: (!a[5].is_nan()).then_some(a[5]),
        }
    }
}

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
    /// f0, shift, level and the match meter.
    pub readout: Readout,
}

impl Default for VoiceSnapshot {
    fn default() -> Self {
        VoiceSnapshot {
            frame: 0,
            bands: 0,
            input: [0.0; SNAPSHOT_BANDS],
            blended: [0.0; SNAPSHOT_BANDS],
            readout: Readout::default(),
        }
    }
}

impl VoiceSnapshot {
    /// The bands in use of the input envelope.
    pub fn input_bands(&self) -> &[f32] {
        &self.input[..self.bands.min(SNAPSHOT_BANDS)]
    }

    /// The bands in use of the blended envelope.
    pub fn blended_bands(&self) -> &[f32] {
        &self.blended[..self.bands.min(SNAPSHOT_BANDS)]
    }
}

/// The latest [`VoiceSnapshot`], shared between the audio thread (one writer) and readers.
pub struct SnapshotBoard {
    seq: AtomicU64,
    frame: AtomicU64,
    bands: AtomicU32,
    input: [AtomicU32; SNAPSHOT_BANDS],
    blended: [AtomicU32; SNAPSHOT_BANDS],
    readout: [AtomicU32; Readout::FIELDS],
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
            readout: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    /// Publishes one frame (the single writer: the audio thread). Wait-free.
    pub fn publish(&self, frame: u64, input: &[f32], blended: &[f32], readout: Readout) {
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
        for (a, v) in self.readout.iter().zip(readout.to_array()) {
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
            let mut r = [0f32; Readout::FIELDS];
            for (o, a) in r.iter_mut().zip(&self.readout) {
                *o = f32::from_bits(a.load(Ordering::Relaxed));
            }
            out.readout = Readout::from_array(r);
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
                    let f = frame as f32;
                    let readout = Readout {
                        input_f0_hz: f,
                        input_median_hz: f,
                        target_f0_hz: f,
                        shift_semitones: f,
                        level_db: f,
                        match_spacings: Some(f),
                    };
                    board.publish(frame, &v, &v, readout);
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
            let r = s.readout;
            assert_eq!(
                [
                    r.input_f0_hz,
                    r.input_median_hz,
                    r.target_f0_hz,
                    r.shift_semitones,
                    r.level_db
                ],
                [f; 5]
            );
            assert_eq!(r.match_spacings, Some(f));
            assert!(s.frame >= last, "frames went backwards");
            last = s.frame;
            seen += 1;
        }
        stop.store(true, Ordering::Relaxed);
        let written = writer.join().unwrap();
        assert!(seen > 100 && written >= last);
    }
}
