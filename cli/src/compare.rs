//! `knnblend compare`: what a conversion did, measured (the library's `voice::analysis`) and
//! optionally drawn as a PNG: the input's, the output's and the target voice's median f0 and
//! pitch-independent spectral envelope, and how far each envelope is from the target's.

use std::path::{Path, PathBuf};

use knnblend::voice::analysis::{envelope, f0_track, Envelope};
use knnblend::voice::{read_audio, PitchStats};
use plotters::prelude::*;
use serde_json::json;

/// Arguments of `knnblend compare`.
#[derive(clap::Args)]
pub struct Args {
    /// The audio before conversion.
    #[arg(long)]
    input: PathBuf,
    /// The audio after conversion (e.g. `knnblend render`'s output).
    #[arg(long)]
    output: PathBuf,
    /// A recording of the target voice (what the index was built from).
    #[arg(long)]
    target: Option<PathBuf>,
    /// Draw the envelopes and f0 tracks into this PNG.
    #[arg(long, value_name = "PATH")]
    png: Option<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

/// One recording's measurements.
struct Measured {
    name: String,
    f0: Vec<f32>,
    pitch: PitchStats,
    envelope: Envelope,
}

fn measure(path: &Path) -> crate::Result<Measured> {
    let audio = read_audio(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mono = audio.mono();
    let sr = audio.sample_rate;
    let (f0, pitch) = f0_track(&mono, sr).map_err(|e| format!("{}: {e}", path.display()))?;
    let envelope = envelope(&mono, sr as f32).ok_or_else(|| {
        format!(
            "{}: no loud stretch of audio to measure an envelope on",
            path.display()
        )
    })?;
    Ok(Measured {
        name: path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        f0,
        pitch,
        envelope,
    })
}

fn median(m: &Measured) -> Option<f64> {
    m.pitch.has_median().then_some(m.pitch.median_hz)
}

pub fn run(a: Args) -> crate::Result {
    let input = measure(&a.input)?;
    let output = measure(&a.output)?;
    let target = a.target.as_deref().map(measure).transpose()?;
    let semitones = |x: f64, y: f64| 12.0 * (x / y).log2();
    let distances = target.as_ref().map(|t| {
        (
            input.envelope.distance_db(&t.envelope),
            output.envelope.distance_db(&t.envelope),
        )
    });
    if a.json {
        let one = |m: &Measured| {
            json!({
                "file": m.name,
                "median_f0_hz": median(m),
                "voiced_share": m.pitch.voiced_share,
            })
        };
        let mut v = json!({ "input": one(&input), "output": one(&output) });
        if let Some(t) = &target {
            v["target"] = one(t);
        }
        if let Some((before, after)) = distances {
            v["envelope_distance_db"] = json!({ "input": before, "output": after });
            v["envelope_change"] = json!((after - before) / before);
        }
        if let (Some(o), Some(t)) = (median(&output), target.as_ref().and_then(median)) {
            v["output_minus_target_semitones"] = json!(semitones(o, t));
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let hz = |m: &Measured| median(m).map_or("–".to_string(), |f| format!("{f:.1} Hz"));
        print!("median f0: input {} · output {}", hz(&input), hz(&output));
        if let Some(t) = &target {
            print!(" · target {}", hz(t));
            if let (Some(o), Some(tt)) = (median(&output), median(t)) {
                print!(" (output − target {:+.2} st)", semitones(o, tt));
            }
        }
        println!();
        if let Some((before, after)) = distances {
            println!(
                "envelope distance to the target (200 Hz – 8 kHz, cepstrally smoothed): input \
                 {before:.2} dB · output {after:.2} dB ({:+.0} %)",
                100.0 * (after - before) / before
            );
        }
    }
    if let Some(png) = &a.png {
        draw(png, &input, &output, target.as_ref())?;
        if !a.json {
            println!("picture: {}", png.display());
        }
    }
    Ok(())
}

const INPUT: RGBColor = RGBColor(120, 120, 120);
const OUTPUT: RGBColor = RGBColor(230, 120, 20);
const TARGET: RGBColor = RGBColor(40, 110, 200);

/// Two panels: the envelopes (dB over a log frequency axis) and the f0 tracks over time.
fn draw(
    path: &Path,
    input: &Measured,
    output: &Measured,
    target: Option<&Measured>,
) -> crate::Result {
    // The plotting crate draws text with a font it is given (no system fonts needed).
    let _ = plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        epaint_default_fonts::UBUNTU_LIGHT,
    );
    let root = BitMapBackend::new(path, (1100, 420)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (left, right) = root.split_horizontally(560);
    let mut series: Vec<(&Measured, RGBColor, &str)> =
        vec![(input, INPUT, "input"), (output, OUTPUT, "output")];
    if let Some(t) = target {
        series.push((t, TARGET, "target voice"));
    }

    let (lo, hi) = series
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (m, _, _)| {
            m.envelope
                .db
                .iter()
                .fold((lo, hi), |(lo, hi), &v| (lo.min(v), hi.max(v)))
        });
    let mut chart = ChartBuilder::on(&left)
        .caption("Spectral envelope (pitch removed)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(46)
        .build_cartesian_2d((200f64..8000f64).log_scale(), (lo - 3.0)..(hi + 3.0))
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("Hz")
        .y_desc("dB")
        .light_line_style(RGBColor(235, 235, 235))
        .x_label_formatter(&|v| {
            // Only round frequencies: the log axis offers many.
            let round = [200.0, 500.0, 1000.0, 2000.0, 4000.0, 8000.0];
            if round.iter().any(|r| (v / r - 1.0).abs() < 0.02) {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;
    for (m, colour, label) in &series {
        let points = m
            .envelope
            .hz
            .iter()
            .copied()
            .zip(m.envelope.db.iter().copied());
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;

    // f0 over time: each track at its own 10 ms hop; the target as its median line.
    let seconds = |m: &Measured| m.f0.len() as f64 * 0.01;
    let t_max = seconds(input).max(seconds(output)).max(0.1);
    let f_max = [input, output]
        .iter()
        .flat_map(|m| m.f0.iter().copied())
        .chain(target.and_then(median).map(|f| f as f32))
        .fold(100f32, f32::max) as f64
        * 1.15;
    let mut chart = ChartBuilder::on(&right)
        .caption("f0", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(46)
        .build_cartesian_2d(0f64..t_max, 0f64..f_max)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("s")
        .y_desc("Hz")
        .light_line_style(RGBColor(235, 235, 235))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| fail(&e))?;
    for (m, colour, label) in [(input, INPUT, "input"), (output, OUTPUT, "output")] {
        let points: Vec<(f64, f64)> =
            m.f0.iter()
                .enumerate()
                .filter(|(_, &f)| f > 0.0)
                .map(|(i, &f)| (i as f64 * 0.01, f as f64))
                .collect();
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled())))
            .map_err(|e| fail(&e))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 9, y), 3, colour.filled()));
    }
    if let Some(f) = target.and_then(median) {
        chart
            .draw_series(LineSeries::new(
                [(0.0, f), (t_max, f)],
                TARGET.stroke_width(2),
            ))
            .map_err(|e| fail(&e))?
            .label("target voice's median")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 18, y)], TARGET.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}
