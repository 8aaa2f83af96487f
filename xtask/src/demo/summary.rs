//! `target/demo/SUMMARY.md`: one page on what the demo built, what to listen to, how fast it
//! was and how to try the plugin.

use super::measure::Measurements;
use serde_json::Value;
use std::fmt::Write;

/// One WAV the demo wrote.
pub struct Wav {
    /// Path below the demo directory.
    pub file: &'static str,
    /// Length.
    pub seconds: f64,
    /// File size.
    pub bytes: u64,
    /// What it is or demonstrates.
    pub about: &'static str,
}

/// One render measured by `knnblend compare` against the phrase and the target voice.
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    /// The render, below the demo directory.
    pub render: &'static str,
    /// Median f0 of the phrase, the render and the target voice's recording, Hz.
    pub input_hz: Option<f64>,
    pub output_hz: Option<f64>,
    pub target_hz: Option<f64>,
    /// Envelope distance to the target voice's, dB: the phrase's and the render's.
    pub input_distance_db: f64,
    pub output_distance_db: f64,
    /// Its picture, below the demo directory.
    pub png: Option<&'static str>,
}

impl Compared {
    /// From `knnblend compare --target … --json`.
    pub fn from_json(render: &'static str, v: &Value) -> anyhow::Result<Compared> {
        let num = |ptr: &str| {
            v.pointer(ptr)
                .and_then(Value::as_f64)
                .ok_or_else(|| anyhow::anyhow!("compare of {render}: no {ptr} in {v}"))
        };
        let hz = |ptr: &str| v.pointer(ptr).and_then(Value::as_f64);
        Ok(Compared {
            render,
            input_hz: hz("/input/median_f0_hz"),
            output_hz: hz("/output/median_f0_hz"),
            target_hz: hz("/target/median_f0_hz"),
            input_distance_db: num("/envelope_distance_db/input")?,
            output_distance_db: num("/envelope_distance_db/output")?,
            png: None,
        })
    }

    /// The envelope distance's change, percent (negative: closer to the target).
    pub fn envelope_change_percent(&self) -> f64 {
        100.0 * (self.output_distance_db - self.input_distance_db) / self.input_distance_db
    }

    /// One line for the log.
    pub fn headline(&self) -> String {
        let hz = |f: Option<f64>| f.map_or("–".into(), |f| format!("{f:.0} Hz"));
        format!(
            "{}: median f0 {} -> {} (target {}), envelope distance to the target {:.1} -> {:.1} dB ({:+.0} %)",
            self.render,
            hz(self.input_hz),
            hz(self.output_hz),
            hz(self.target_hz),
            self.input_distance_db,
            self.output_distance_db,
            self.envelope_change_percent()
        )
    }
}

/// The plugin bundles.
pub struct Bundles {
    /// The CLAP bundle, as shown to the user.
    pub clap: String,
    /// Its size.
    pub clap_bytes: u64,
    /// The VST3 bundle directory, as shown to the user.
    pub vst3: String,
    /// Size of the shared library inside it.
    pub vst3_bytes: u64,
}

/// Everything the page is made from.
pub struct Input<'a> {
    /// The demo directory as shown to the user (relative to the repository).
    pub demo_dir: &'a str,
    /// The demo directory as an absolute path (the plugin wants absolute paths).
    pub demo_dir_absolute: &'a str,
    /// `(file, source WAV, inspect --json)` of each index.
    pub indexes: &'a [(&'a str, &'a str, Value)],
    /// The synthesised voices and phrase, then the renders.
    pub wavs: &'a [Wav],
    /// The figures, when they were measured.
    pub measurements: Option<&'a Measurements>,
    /// What Blend 1 and pitch matching changed (empty when not measured).
    pub comparisons: &'a [Compared],
    /// The target voice's recording the comparisons measure against.
    pub target_recording: &'a str,
    /// The input phrase.
    pub phrase: &'a str,
    /// The bundles, when they were built.
    pub bundles: Option<&'a Bundles>,
    /// Where the machine's description comes from (CPU model, cores).
    pub machine: &'a str,
}

/// `1.2 MiB`, `669 KiB`, `512 B`.
pub fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB {
        format!("{:.1} MiB", b / KIB / KIB)
    } else if b >= KIB {
        format!("{:.0} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

/// The page.
pub fn render(input: &Input) -> String {
    let dir = input.demo_dir;
    let mut page = String::new();
    let p = &mut page;
    let _ = writeln!(p, "# knnblend demo\n");
    let _ = writeln!(
        p,
        "Made by `cargo xtask demo` from the project's own formant synthesiser (nothing was \
         downloaded). Running it again reuses every file that is newer than what it is made \
         from; `rm -rf {dir}` starts over.\n"
    );

    let _ = writeln!(p, "## Voice indexes\n");
    let _ = writeln!(
        p,
        "| file | vectors × dim | metric | lists | features | pitch | built from | size |"
    );
    let _ = writeln!(p, "|---|---|---|---|---|---|---|---|");
    for (file, source, info) in input.indexes {
        let num = |k: &str| info.get(k).and_then(Value::as_u64).unwrap_or(0);
        let text = |k: &str| {
            info.get(k)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string()
        };
        let features = info
            .pointer("/metadata/features")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let seconds = info
            .pointer("/metadata/duration_seconds")
            .and_then(Value::as_f64)
            .map(|s| format!(" ({s:.1} s)"))
            .unwrap_or_default();
        // The voice's pitch statistics (`build --audio` records them; older indexes have none).
        let pitch = match (
            info.pointer("/pitch/median_hz").and_then(Value::as_f64),
            info.pointer("/pitch/spread_semitones")
                .and_then(Value::as_f64),
            info.pointer("/pitch/voiced_share").and_then(Value::as_f64),
        ) {
            (Some(hz), Some(spread), Some(voiced)) if hz > 0.0 => format!(
                "median f0 {hz:.0} Hz, ±{spread:.1} st, {:.0} % voiced",
                100.0 * voiced
            ),
            _ => "not recorded".into(),
        };
        let _ = writeln!(
            p,
            "| `{dir}/{file}` | {} × {} | {} | {} | {features} | {pitch} | `{source}`{seconds} | {} |",
            num("ntotal"),
            num("dim"),
            text("metric"),
            num("nlist"),
            human_bytes(num("file_bytes")),
        );
    }
    let _ = writeln!(
        p,
        "\nLook inside with `target/debug/knnblend inspect {dir}/high.kbi` (`--json` for all of \
         it); build your own with `knnblend build --audio RECORDINGS… -o VOICE.kbi`.\n"
    );

    let _ = writeln!(p, "## Listen\n");
    let _ = writeln!(
        p,
        "Mono, 48 kHz, 32-bit float. The renders run the phrase through the realtime path (the \
         plugin's engine, in 512-sample blocks) against `high.kbi`.\n"
    );
    let _ = writeln!(p, "| file | length | size | what it is |");
    let _ = writeln!(p, "|---|---|---|---|");
    for wav in input.wavs {
        let _ = writeln!(
            p,
            "| `{dir}/{}` | {:.1} s | {} | {} |",
            wav.file,
            wav.seconds,
            human_bytes(wav.bytes),
            wav.about
        );
    }

    let _ = writeln!(p, "\n## What changed\n");
    if input.comparisons.is_empty() {
        let _ = writeln!(p, "Not measured in this run (see the demo's log).");
    } else {
        let _ = writeln!(
            p,
            "Measured with `knnblend compare` against `{dir}/{}` (the high voice's recording): \
             median f0, and the distance between pitch-independent spectral envelopes \
             (cepstrally smoothed log spectrum, 200 Hz – 8 kHz, RMS dB).\n",
            input.target_recording
        );
        for c in input.comparisons {
            if let Some(png) = c.png {
                let _ = writeln!(
                    p,
                    "![Envelopes and f0 of the phrase, `{}` and the target voice]({png})\n",
                    c.render
                );
            }
        }
        let hz = |f: Option<f64>| f.map_or("–".into(), |f| format!("{f:.1} Hz"));
        let st = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{:+.2} st", 12.0 * (a / b).log2()),
            _ => "–".into(),
        };
        let _ = writeln!(
            p,
            "| audio | median f0 | from the target's | envelope distance to the target |"
        );
        let _ = writeln!(p, "|---|---|---|---|");
        let first = &input.comparisons[0];
        let _ = writeln!(
            p,
            "| input `{dir}/{}` | {} | {} | {:.2} dB |",
            input.phrase,
            hz(first.input_hz),
            st(first.input_hz, first.target_hz),
            first.input_distance_db
        );
        for c in input.comparisons {
            let _ = writeln!(
                p,
                "| `{dir}/{}` | {} | {} | {:.2} dB ({:+.0} %) |",
                c.render,
                hz(c.output_hz),
                st(c.output_hz, c.target_hz),
                c.output_distance_db,
                c.envelope_change_percent()
            );
        }
        let _ = writeln!(
            p,
            "\nBlend 1 moves the formants toward the high voice's and keeps the input's pitch. \
             Its envelope distance falls by less than the formants move: a low voice \
             has little energy above 5 kHz, which per-band gains (at most ±18 dB) cannot \
             create. With Match voice pitch the input's running median f0 also moves to the \
             voice's recorded median ({}): the harmonics, an octave up, fill that region (and \
             the gains may go to twice the limit to undo what the shift moved), while the \
             formants stay where retrieval put them.",
            hz(first.target_hz)
        );
    }

    let _ = writeln!(p, "\n## Speed\n");
    match input.measurements {
        Some(m) => {
            let share = m
                .share_of_hop_percent()
                .map(|s| {
                    format!(
                        "; the realtime path queries once per {:.0} ms hop, so this is {s:.3} % \
                         of the frame's time",
                        m.hop_ms.unwrap_or(0.0)
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                p,
                "- Per-frame query: **{:.2} µs** (k = {}, n_probe = {}, `{}`: {} vectors × {}), the \
                 marginal time of one more query over {} queries with `knnblend query`, reading \
                 and writing the rows included{share}.",
                m.per_query_us, m.k, m.nprobe, m.index, m.vectors, m.dim, m.queries
            );
            let _ = writeln!(
                p,
                "- Render: {:.1} s of audio in {:.2} s wall-clock for the whole `knnblend render` \
                 run (start, decoding, index load, analysis, search, resynthesis, WAV writing) = \
                 **{:.0}× real time**.",
                m.audio_seconds,
                m.render_seconds,
                m.real_time_factor()
            );
            let _ = writeln!(p, "- Machine: {}.", input.machine);
        }
        None => {
            let _ = writeln!(p, "Not measured in this run (see the demo's log).");
        }
    }

    let _ = writeln!(p, "\n## The plugin\n");
    match input.bundles {
        Some(b) => {
            let _ = writeln!(
                p,
                "Release bundles (no faiss inside): `{}` ({}) and `{}/` ({} library).\n",
                b.clap,
                human_bytes(b.clap_bytes),
                b.vst3,
                human_bytes(b.vst3_bytes)
            );
        }
        None => {
            let _ = writeln!(
                p,
                "The bundles were not built in this run; `cargo xtask bundle knnblend-plugin \
                 --release` builds them into `target/bundled/`.\n"
            );
        }
    }
    let abs = input.demo_dir_absolute;
    let _ = writeln!(
        p,
        "1. `cargo xtask install` bundles a release build and copies it to `~/.clap` and \
         `~/.vst3`; rescan plugins in your host and insert **kNN Blend** on a voice track."
    );
    let _ = writeln!(
        p,
        "2. Open the editor, load `{abs}/high.kbi` into Voice slot 1 with the file dialog (or type \
         the path) and `{abs}/low.kbi` into slot 2. Loading happens off the audio thread while \
         the previous voice keeps playing; a refused file leaves a message under its slot."
    );
    let _ = writeln!(
        p,
        "3. **Blend** is the renders' ratio (0–100 %); switching **Voice** between the slots \
         crossfades over **Crossfade** (50 ms), as in `swap-high-to-low.wav`. The plugin's \
         latency is the 40 ms analysis window, reported to the host."
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(685_273), "669 KiB");
        assert_eq!(human_bytes(10_885_896), "10.4 MiB");
    }

    fn input<'a>(
        indexes: &'a [(&'a str, &'a str, Value)],
        wavs: &'a [Wav],
        m: Option<&'a Measurements>,
        b: Option<&'a Bundles>,
        comparisons: &'a [Compared],
    ) -> Input<'a> {
        Input {
            demo_dir: "target/demo",
            demo_dir_absolute: "/repo/target/demo",
            indexes,
            wavs,
            measurements: m,
            comparisons,
            target_recording: "voices/high.wav",
            phrase: "voices/phrase.wav",
            bundles: b,
            machine: "test CPU, 2 cores",
        }
    }

    #[test]
    fn the_page_names_every_file_figure_and_next_step() {
        let indexes = [(
            "high.kbi",
            "voices/high.wav",
            json!({"ntotal": 1964, "dim": 80, "metric": "l2", "nlist": 50,
                   "file_bytes": 685273,
                   "pitch": {"median_hz": 221.4, "spread_semitones": 1.2, "voiced_share": 0.97},
                   "metadata": {"features": "knnblend-logmel-v1", "duration_seconds": 20.0}}),
        )];
        let wavs = [Wav {
            file: "blend-1.wav",
            seconds: 6.0,
            bytes: 1_152_044,
            about: "Blend 1",
        }];
        let m = Measurements {
            index: "high.kbi".into(),
            vectors: 1964,
            dim: 80,
            queries: 20_000,
            k: 8,
            nprobe: 1,
            per_query_us: 1.25,
            hop_ms: Some(10.0),
            audio_seconds: 6.0,
            render_seconds: 0.1,
        };
        let b = Bundles {
            clap: "target/bundled/knnblend.clap".into(),
            clap_bytes: 10_885_896,
            vst3: "target/bundled/knnblend.vst3".into(),
            vst3_bytes: 10_885_896,
        };
        let compared = |render, out_hz, out_db, png| {
            let mut c = Compared::from_json(
                render,
                &json!({
                    "input": {"median_f0_hz": 110.5}, "output": {"median_f0_hz": out_hz},
                    "target": {"median_f0_hz": 220.8},
                    "envelope_distance_db": {"input": 15.92, "output": out_db}}),
            )
            .unwrap();
            c.png = png;
            c
        };
        let comparisons = [
            compared("blend-1.wav", 110.4, 4.9, None),
            compared("blend-1-pitch.wav", 219.4, 4.62, Some("blend-1-pitch.png")),
        ];
        assert_eq!(
            comparisons[1].headline(),
            "blend-1-pitch.wav: median f0 110 Hz -> 219 Hz (target 221 Hz), envelope distance to \
             the target 15.9 -> 4.6 dB (-71 %)"
        );
        let page = render(&input(&indexes, &wavs, Some(&m), Some(&b), &comparisons));
        for needle in [
            "![Envelopes and f0 of the phrase, `blend-1-pitch.wav` and the target voice](blend-1-pitch.png)",
            "| input `target/demo/voices/phrase.wav` | 110.5 Hz | -11.98 st | 15.92 dB |",
            "| `target/demo/blend-1-pitch.wav` | 219.4 Hz | -0.11 st | 4.62 dB (-71 %) |",
            "`target/demo/high.kbi` | 1964 × 80 | l2 | 50 | knnblend-logmel-v1 | \
             median f0 221 Hz, ±1.2 st, 97 % voiced | `voices/high.wav` (20.0 s) | 669 KiB |",
            "`target/demo/blend-1.wav` | 6.0 s | 1.1 MiB | Blend 1 |",
            "**1.25 µs**",
            "0.013 % of the frame's time",
            "**60× real time**",
            "test CPU, 2 cores",
            "`target/bundled/knnblend.clap` (10.4 MiB)",
            "cargo xtask install",
            "/repo/target/demo/high.kbi",
        ] {
            assert!(page.contains(needle), "missing {needle:?} in\n{page}");
        }
    }

    #[test]
    fn missing_parts_are_explained_not_left_out() {
        let page = render(&input(&[], &[], None, None, &[]));
        assert!(page.contains("Not measured in this run"), "{page}");
        assert!(page.contains("## What changed\n\nNot measured"), "{page}");
        assert!(page.contains("were not built in this run"), "{page}");
    }
}
