//! The voice path's **Pitch** control: what shift, in semitones, each frame gets.
//!
//! - [`PitchMode::Off`]: none (the shifter is bypassed, so Blend 0 stays a null);
//! - [`PitchMode::Semitones`]: a fixed offset, −24…+24;
//! - [`PitchMode::Match`]: the input's f0 is tracked every hop (the crate's [`Yin`] on the
//!   mid signal), the running median of its last [`MEDIAN_FRAMES`] voiced frames is moved to
//!   the voice's median ([`PitchStats`](super::PitchStats) of the index), limited to ±`range`
//!   semitones; until enough voicing has been heard the shift holds where it was.
//!
//! The shift glides to its goal with a 60 ms time constant, so changing the control, or a
//! voice swap that changes the target, never jumps. All memory is allocated by
//! [`PitchControl::new`]; [`PitchControl::hop`] allocates nothing.

use super::pitch::{PitchSpec, Yin};

/// Voiced frames in the running median of the input's f0 (3 s at the 10 ms hop).
pub const MEDIAN_FRAMES: usize = 300;
/// Voiced frames needed before Match voice shifts at all.
pub const MIN_MEDIAN_FRAMES: usize = 5;
/// Largest shift Match voice applies in `knnblend render` and the plugin, semitones.
pub const MATCH_RANGE_SEMITONES: f32 = 18.0;
/// Largest shift of any mode, semitones.
pub const MAX_SEMITONES: f32 = 24.0;
/// Time constant of the glide to a new shift, seconds.
pub const GLIDE_SECONDS: f32 = 0.06;

/// What the Pitch control asks for.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub enum PitchMode {
    /// No shift.
    #[default]
    Off,
    /// Move the input's running median f0 to `target_hz`, by at most `range` semitones.
    Match {
        /// The voice's median f0, Hz ([`PitchStats::median_hz`](super::PitchStats)).
        target_hz: f32,
        /// Largest shift, semitones.
        range: f32,
    },
    /// [`Match`](Self::Match) with the serving voice's own median (from its index's pitch
    /// statistics; follows voice swaps). Holds when the voice has none.
    MatchVoice {
        /// Largest shift, semitones.
        range: f32,
    },
    /// A fixed shift, semitones (clamped to ±[`MAX_SEMITONES`]).
    Semitones(f32),
}

/// What the control is doing (for meters and the editor).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PitchState {
    /// The input's f0 in the last hop, Hz (0: unvoiced).
    pub input_hz: f32,
    /// The running median of the input's voiced f0, Hz (0: not enough voicing yet).
    pub input_median_hz: f32,
    /// The shift applied to the last frame, semitones.
    pub semitones: f32,
    /// The shift the control is gliding to, semitones.
    pub goal: f32,
}

/// f0 tracking, the running median and the glide.
pub struct PitchControl {
    yin: Yin,
    /// The last `frame_len` input samples (mid), oldest first.
    history: Vec<f32>,
    /// The last voiced log2 f0 values (a ring) and a scratch copy for the median.
    ring: Vec<f32>,
    ring_len: usize,
    ring_at: usize,
    scratch: Vec<f32>,
    glide: f32,
    state: PitchState,
}

impl PitchControl {
    /// A control for a stream at `sample_rate` whose frames are `hop` samples apart.
    ///
    /// # Panics
    /// If the sample rate is below what the tracker needs (1 kHz).
    pub fn new(sample_rate: f32, hop: usize) -> PitchControl {
        let yin = Yin::new(&PitchSpec::default(), sample_rate)
            .unwrap_or_else(|e| panic!("pitch tracker: {e}"));
        let frames = (GLIDE_SECONDS * sample_rate / hop as f32).max(1e-3);
        let mut yin = yin;
        // One estimate on a tone touches every page of the tracker's buffers here, so the
        // audio thread's first tracked hop does not fault them in.
        let tone: Vec<f32> = (0..yin.frame_len())
            .map(|i| (i as f32 * 200.0 * std::f32::consts::TAU / sample_rate).sin())
            .collect();
        let _ = yin.estimate(&tone);
        PitchControl {
            history: vec![0.0; yin.frame_len()],
            yin,
            ring: vec![0.0; MEDIAN_FRAMES],
            ring_len: 0,
            ring_at: 0,
            scratch: vec![0.0; MEDIAN_FRAMES],
            glide: 1.0 - (-1.0 / frames).exp(),
            state: PitchState::default(),
        }
    }

    /// Forgets everything heard.
    pub fn reset(&mut self) {
        self.history.fill(0.0);
        self.ring_len = 0;
        self.ring_at = 0;
        self.state = PitchState::default();
    }

    /// The control's state after the last hop.
    pub fn state(&self) -> PitchState {
        self.state
    }

    /// Takes the hop's new mid samples, tracks f0, and returns the shift for this frame in
    /// semitones.
    pub fn hop(&mut self, new: &[f32], mode: PitchMode) -> f32 {
        let n = new.len().min(self.history.len());
        self.history.copy_within(n.., 0);
        let len = self.history.len();
        self.history[len - n..].copy_from_slice(&new[new.len() - n..]);
        let goal = match mode {
            PitchMode::Off => 0.0,
            PitchMode::Semitones(s) => {
                self.track();
                if s.is_finite() {
                    s.clamp(-MAX_SEMITONES, MAX_SEMITONES)
                } else {
                    0.0
                }
            }
            // The engine resolves the serving voice's median; unresolved, hold.
            PitchMode::MatchVoice { .. } => {
                self.track();
                self.state.goal
            }
            PitchMode::Match { target_hz, range } => {
                self.track();
                let range = if range.is_finite() {
                    range.clamp(0.0, MAX_SEMITONES)
                } else {
                    0.0
                };
                if self.ring_len >= MIN_MEDIAN_FRAMES && target_hz.is_finite() && target_hz > 0.0 {
                    let median = self.median();
                    self.state.input_median_hz = median.exp2();
                    (12.0 * (target_hz.log2() - median)).clamp(-range, range)
                } else {
                    self.state.goal // hold
                }
            }
        };
        if mode == PitchMode::Off {
            self.state.input_hz = 0.0;
        }
        self.state.goal = goal;
        let s = &mut self.state.semitones;
        *s += (goal - *s) * self.glide;
        if (*s - goal).abs() < 1e-4 {
            *s = goal;
        }
        *s
    }

    fn track(&mut self) {
        let p = self.yin.estimate(&self.history);
        self.state.input_hz = p.f0_hz;
        if p.is_voiced() {
            self.ring[self.ring_at] = p.f0_hz.log2();
            self.ring_at = (self.ring_at + 1) % MEDIAN_FRAMES;
            self.ring_len = (self.ring_len + 1).min(MEDIAN_FRAMES);
        }
    }

    fn median(&mut self) -> f32 {
        let v = &mut self.scratch[..self.ring_len];
        v.copy_from_slice(&self.ring[..self.ring_len]);
        let mid = v.len() / 2;
        *v.select_nth_unstable_by(mid, f32::total_cmp).1
    }
}
