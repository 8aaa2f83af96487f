//! The editor's voice view: what the built-in voice path is doing right now, drawn from the
//! snapshots the audio thread publishes every 10 ms frame (read lock-free from the
//! [`ViewBoard`](crate::engine::ViewBoard); the audio thread never waits for the editor).
//!
//! - the input frame's envelope and the envelope the blend chose, over the 40 bands;
//! - the match meter: the distance from the input frame to its nearest stored frame in the
//!   voice's own typical spacings (about 1: the voice has frames like this one; 4 and more:
//!   it has nothing like what is being sung), smoothed over the last loud frames;
//! - the input's f0, its running median and the target's when Pitch is on;
//! - the active voice's name and pitch statistics (or why Match voice pitch cannot work).

use crate::engine::{ViewSnapshot, VoiceInfo};

/// Envelope values are natural logs of band power (mean over bands removed); × this is dB.
const LOG_TO_DB: f32 = 10.0 / std::f32::consts::LN_10;
/// The envelope plot's range, dB about the bands' mean.
const PLOT_DB: f32 = 30.0;
/// Frames quieter than this (dBFS) leave the match meter where it is.
const METER_GATE_DB: f32 = -50.0;
/// The meter's smoothing: weight of each repaint's loud frame (a time constant of about 0.7 s
/// at the view's 30 repaints a second while audio runs).
const METER_SMOOTHING: f32 = 0.05;
/// The meter's scale, spacings (log scale).
const METER_MIN: f32 = 0.5;
const METER_MAX: f32 = 16.0;
/// Up to this many spacings the voice covers the input well; up to `LOOSE` loosely.
const COVERED: f32 = 2.0;
const LOOSE: f32 = 4.0;

const INPUT_COLOUR: egui::Color32 = egui::Color32::from_rgb(170, 170, 170);
/// The blended envelope's colour (used nowhere else, so the editor test finds it on screen).
pub const BLEND_COLOUR: egui::Color32 = egui::Color32::from_rgb(245, 140, 40);
const GOOD: egui::Color32 = egui::Color32::from_rgb(90, 190, 110);
const FAIR: egui::Color32 = egui::Color32::from_rgb(225, 180, 60);
const POOR: egui::Color32 = egui::Color32::from_rgb(230, 90, 80);

/// What the view keeps between repaints.
#[derive(Default)]
pub struct ViewState {
    /// The last frame drawn (to tell a running voice path from a stopped one).
    last_frame: u64,
    /// Repaints since the frame counter last moved.
    idle: u32,
    /// The smoothed match meter, in log spacings.
    meter_log: Option<f32>,
}

/// What the view is told besides the snapshot.
pub struct ViewContext<'a> {
    /// The active slot's voice, if it holds a knnblend index that is serving.
    pub voice: Option<&'a VoiceInfo>,
    /// The active slot is an RVC voice (its path does not publish this view).
    pub rvc_active: bool,
    /// Match voice pitch is on.
    pub pitch_match: bool,
    /// The manual Pitch offset, semitones.
    pub pitch_semitones: f32,
    /// Band range of the features, Hz (for the axis).
    pub band_range_hz: (f32, f32),
}

impl ViewState {
    /// Takes a new snapshot in; returns whether the voice path is running (frames advancing).
    pub fn update(&mut self, s: &ViewSnapshot) -> bool {
        if s.frame != self.last_frame {
            self.last_frame = s.frame;
            self.idle = 0;
            if s.readout.level_db > METER_GATE_DB {
                match (s.readout.match_spacings, self.meter_log) {
                    (Some(m), Some(old)) => {
                        let m = m.max(1e-3).ln();
                        self.meter_log = Some(old + METER_SMOOTHING * (m - old));
                    }
                    (Some(m), None) => self.meter_log = Some(m.max(1e-3).ln()),
                    (None, _) => self.meter_log = None,
                }
            }
        } else {
            self.idle = self.idle.saturating_add(1);
        }
        s.frame > 0 && self.idle < 5
    }

    /// The smoothed match meter, spacings.
    pub fn meter(&self) -> Option<f32> {
        self.meter_log.map(f32::exp)
    }
}

/// One line for the meter reading.
pub fn describe_match(spacings: Option<f32>) -> String {
    match spacings {
        None => "Match: – (nothing retrieved: Blend 0, or no voice)".to_string(),
        Some(m) if m <= COVERED => format!("Match {m:.1}× spacing: the voice covers this"),
        Some(m) if m <= LOOSE => format!("Match {m:.1}× spacing: loosely covered"),
        Some(m) => format!("Match {m:.1}× spacing: the voice has nothing like this"),
    }
}

/// One line for the pitch readings.
pub fn describe_pitch(s: &ViewSnapshot, ctx: &ViewContext<'_>) -> String {
    let r = &s.readout;
    let hz = |v: f32| {
        if v > 0.0 {
            format!("{v:.0} Hz")
        } else {
            "–".to_string()
        }
    };
    if ctx.pitch_match {
        if ctx.voice.is_some_and(|v| v.median_f0_hz.is_none()) {
            return "Pitch: Match voice pitch is unavailable: this voice records no pitch \
                    statistics (rebuild it with knnblend build --audio)"
                .to_string();
        }
        format!(
            "Pitch: input {} (median {}), target {} · shift {:+.1} st",
            hz(r.input_f0_hz),
            hz(r.input_median_hz),
            hz(r.target_f0_hz),
            r.shift_semitones
        )
    } else if ctx.pitch_semitones != 0.0 {
        format!(
            "Pitch: input {} · shift {:+.1} st",
            hz(r.input_f0_hz),
            r.shift_semitones
        )
    } else {
        "Pitch: off".to_string()
    }
}

/// One line naming the voice and its pitch statistics.
pub fn describe_voice(voice: Option<&VoiceInfo>) -> String {
    match voice {
        None => "Voice: none serving in the active slot".to_string(),
        Some(v) => match &v.pitch {
            Some(p) => format!("Voice: {} · {p}", v.name),
            None => format!(
                "Voice: {} · no pitch statistics (Match voice pitch unavailable)",
                v.name
            ),
        },
    }
}

/// Draws the view.
pub fn voice_view(ui: &mut egui::Ui, state: &mut ViewState, s: &ViewSnapshot, ctx: &ViewContext) {
    let running = state.update(s);
    ui.label(egui::RichText::new(describe_voice(ctx.voice)).strong());
    if ctx.rvc_active {
        ui.label(
            egui::RichText::new(
                "The active slot is an RVC voice: this view shows the built-in voice path only.",
            )
            .weak(),
        );
        return;
    }
    envelope_plot(ui, s, ctx.band_range_hz);
    match_meter(ui, state.meter());
    ui.label(describe_pitch(s, ctx));
    if !running {
        ui.label(
            egui::RichText::new("No audio is being processed (showing the last frame).").weak(),
        );
    } else {
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(33));
    }
}

/// Mel position in `0..=1` of `hz` on the bands' scale.
fn mel_x(hz: f32, (lo, hi): (f32, f32)) -> f32 {
    let mel = |f: f32| 2595.0 * (1.0 + f / 700.0).log10();
    ((mel(hz) - mel(lo)) / (mel(hi) - mel(lo))).clamp(0.0, 1.0)
}

fn envelope_plot(ui: &mut egui::Ui, s: &ViewSnapshot, range: (f32, f32)) {
    let width = ui.available_width().clamp(200.0, 560.0);
    let (rect, _) = ui.allocate_exact_size(egui::vec2(width, 110.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 2.0, egui::Color32::from_gray(24));
    let plot = rect.shrink2(egui::vec2(6.0, 14.0));
    let y = |v: f32| {
        let db = (v * LOG_TO_DB).clamp(-PLOT_DB, PLOT_DB);
        plot.center().y - db / PLOT_DB * plot.height() / 2.0
    };
    let grid = egui::Stroke::new(1.0, egui::Color32::from_gray(45));
    painter.hline(plot.x_range(), y(0.0), grid);
    let text = egui::Color32::from_gray(140);
    let font = egui::FontId::proportional(10.0);
    for hz in [100.0, 300.0, 1000.0, 3000.0] {
        if hz < range.0 || hz > range.1 {
            continue;
        }
        let x = plot.left() + mel_x(hz, range) * plot.width();
        painter.vline(x, plot.y_range(), grid);
        let label = if hz >= 1000.0 {
            format!("{} kHz", hz / 1000.0)
        } else {
            format!("{hz} Hz")
        };
        painter.text(
            egui::pos2(x + 2.0, rect.bottom() - 2.0),
            egui::Align2::LEFT_BOTTOM,
            label,
            font.clone(),
            text,
        );
    }
    painter.text(
        rect.left_top() + egui::vec2(4.0, 2.0),
        egui::Align2::LEFT_TOP,
        "input",
        font.clone(),
        INPUT_COLOUR,
    );
    painter.text(
        rect.left_top() + egui::vec2(40.0, 2.0),
        egui::Align2::LEFT_TOP,
        "blended",
        font.clone(),
        BLEND_COLOUR,
    );
    painter.text(
        rect.right_top() + egui::vec2(-4.0, 2.0),
        egui::Align2::RIGHT_TOP,
        format!("±{PLOT_DB:.0} dB"),
        font,
        text,
    );
    // When the voice path stops (transport stopped, bypassed), the last frame stays.
    let n = s.bands;
    if n < 2 {
        return;
    }
    let line = |values: &[f32]| -> Vec<egui::Pos2> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                egui::pos2(
                    plot.left() + i as f32 / (n - 1) as f32 * plot.width(),
                    y(if v.is_finite() { v } else { 0.0 }),
                )
            })
            .collect()
    };
    painter.add(egui::Shape::line(
        line(s.input_bands()),
        egui::Stroke::new(1.5, INPUT_COLOUR),
    ));
    painter.add(egui::Shape::line(
        line(s.blended_bands()),
        egui::Stroke::new(2.0, BLEND_COLOUR),
    ));
}

fn match_meter(ui: &mut egui::Ui, spacings: Option<f32>) {
    ui.horizontal(|ui| {
        let (rect, _) = ui.allocate_exact_size(egui::vec2(180.0, 12.0), egui::Sense::hover());
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 2.0, egui::Color32::from_gray(40));
        let x = |m: f32| {
            let t = (m.max(METER_MIN).ln() - METER_MIN.ln()) / (METER_MAX.ln() - METER_MIN.ln());
            rect.left() + t.clamp(0.0, 1.0) * rect.width()
        };
        if let Some(m) = spacings {
            let colour = if m <= COVERED {
                GOOD
            } else if m <= LOOSE {
                FAIR
            } else {
                POOR
            };
            let bar = egui::Rect::from_min_max(rect.min, egui::pos2(x(m), rect.max.y));
            painter.rect_filled(bar, 2.0, colour);
        }
        for mark in [COVERED, LOOSE] {
            painter.vline(
                x(mark),
                rect.y_range(),
                egui::Stroke::new(1.0, egui::Color32::from_gray(160)),
            );
        }
        ui.label(describe_match(spacings));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(frame: u64, level_db: f32, m: Option<f32>) -> ViewSnapshot {
        let mut s = ViewSnapshot {
            frame,
            bands: 40,
            ..ViewSnapshot::default()
        };
        s.readout.level_db = level_db;
        s.readout.match_spacings = m;
        s
    }

    #[test]
    fn meter_smooths_loud_frames_and_ignores_quiet_ones() {
        let mut v = ViewState::default();
        assert!(!v.update(&snap(0, -20.0, None)), "nothing published yet");
        assert!(v.update(&snap(1, -20.0, Some(1.0))));
        assert!((v.meter().unwrap() - 1.0).abs() < 1e-6);
        // A quiet frame leaves the reading.
        v.update(&snap(2, -80.0, Some(50.0)));
        assert!((v.meter().unwrap() - 1.0).abs() < 1e-6);
        // Loud frames at 8 spacings pull it up gradually (log domain).
        for f in 3..10 {
            v.update(&snap(f, -20.0, Some(8.0)));
        }
        let m = v.meter().unwrap();
        assert!(m > 1.5 && m < 8.0, "{m}");
        // Nothing retrieved (Blend 0): no reading.
        v.update(&snap(11, -20.0, None));
        assert_eq!(v.meter(), None);
        // A stalled frame counter reads as stopped after a few repaints.
        let s = snap(11, -20.0, None);
        assert!((0..10).any(|_| !v.update(&s)));
    }

    #[test]
    fn lines_say_what_is_happening() {
        assert!(describe_match(Some(1.2)).contains("covers"));
        assert!(describe_match(Some(3.0)).contains("loosely"));
        assert!(describe_match(Some(9.0)).contains("nothing like"));
        assert!(describe_match(None).contains("Blend 0"));
        let mut s = snap(5, -20.0, Some(1.0));
        s.readout.input_f0_hz = 110.0;
        s.readout.input_median_hz = 112.0;
        s.readout.target_f0_hz = 220.0;
        s.readout.shift_semitones = 11.7;
        let ctx = |pitch_match, pitch_semitones| ViewContext {
            voice: None,
            rvc_active: false,
            pitch_match,
            pitch_semitones,
            band_range_hz: (50.0, 7600.0),
        };
        let line = describe_pitch(&s, &ctx(true, 0.0));
        assert!(line.contains("110 Hz") && line.contains("220 Hz") && line.contains("+11.7"));
        assert_eq!(describe_pitch(&s, &ctx(false, 0.0)), "Pitch: off");
        assert!(describe_pitch(&s, &ctx(false, 3.0)).contains("+11.7 st"));
        assert!(mel_x(50.0, (50.0, 7600.0)) == 0.0 && mel_x(7600.0, (50.0, 7600.0)) == 1.0);
    }
}
