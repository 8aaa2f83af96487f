//! `cargo xtask demo`: the first thing a new user runs.
//!
//! Everything is generated on the spot by the project itself; nothing is downloaded:
//!
//! 1. setup (system packages, `target/venv`);
//! 2. the CLI in the dev profile (opt-level 2; shares the faiss build with `cargo xtask test`);
//! 3. two voices from the built-in formant synthesiser (`knnblend synth`) and an input phrase;
//! 4. a voice index for each (`knnblend build --audio`);
//! 5. the phrase through the realtime path (`knnblend render`) at Blend 0, 0.5 and 1 against
//!    the high voice, and once with a live swap from the high to the low voice half way;
//! 6. what Blend 1 and pitch matching changed (`knnblend compare`: median f0 and spectral
//!    envelope against the high voice's recording, and a PNG of both);
//! 7. per-frame query time (`knnblend query`) and the render's real-time factor;
//! 8. the plugin bundles in release mode (no faiss in them);
//! 9. `target/demo/SUMMARY.md`.
//!
//! Every generated file is remade only when it is missing or older than what it is made from
//! (the CLI binary, its own inputs, and the task runner itself, which holds the recipe), so a
//! second run reuses everything and takes seconds. `rm -rf target/demo` starts over.

mod measure;
mod summary;

use crate::fresh::{self, Freshness};
use crate::process::{self, cargo};
use crate::setup;
use crate::steps::{format_duration, Outcome, Steps};
use crate::workspace::{Workspace, CLI_PACKAGE, PLUGIN_PACKAGE};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

/// Seconds of each synthetic voice an index is built from.
const VOICE_SECONDS: f64 = 20.0;
/// Seconds of the input phrase.
const PHRASE_SECONDS: f64 = 6.0;
/// When the swap render changes voice: half way through the phrase.
const SWAP_AT_SECONDS: f64 = PHRASE_SECONDS / 2.0;

/// One file from the built-in synthesiser.
#[derive(Debug, Clone, Copy)]
struct Synth {
    /// Path below the demo directory.
    file: &'static str,
    /// `low` or `high`.
    voice: &'static str,
    seconds: f64,
    seed: u64,
    /// What the file is, for the summary.
    about: &'static str,
}

const SYNTHS: [Synth; 3] = [
    Synth {
        file: "voices/low.wav",
        voice: "low",
        seconds: VOICE_SECONDS,
        seed: 1,
        about: "the low voice (f0 110 Hz), seed 1: what `low.kbi` is built from",
    },
    Synth {
        file: "voices/high.wav",
        voice: "high",
        seconds: VOICE_SECONDS,
        seed: 2,
        about: "the high voice (f0 220 Hz, shorter vocal tract), seed 2: what `high.kbi` is \
                built from",
    },
    Synth {
        file: "voices/phrase.wav",
        voice: "low",
        seconds: PHRASE_SECONDS,
        seed: 3,
        about: "the input phrase: the low voice with another seed (other vowel sequences than \
                its index holds)",
    },
];

/// The input of every render.
const PHRASE: &str = "voices/phrase.wav";

/// One voice index built from one synthetic voice.
#[derive(Debug, Clone, Copy)]
struct Index {
    file: &'static str,
    source: &'static str,
}

const INDEXES: [Index; 2] = [
    Index {
        file: "low.kbi",
        source: "voices/low.wav",
    },
    Index {
        file: "high.kbi",
        source: "voices/high.wav",
    },
];

/// One render of the phrase through the realtime path.
#[derive(Debug, Clone, Copy)]
struct Render {
    file: &'static str,
    index: &'static str,
    ratio: f32,
    /// Index to swap to at [`SWAP_AT_SECONDS`].
    swap_to: Option<&'static str>,
    /// `render --pitch`: `off` or `match`.
    pitch: &'static str,
    about: &'static str,
}

const RENDERS: [Render; 5] = [
    Render {
        file: "blend-0.wav",
        index: "high.kbi",
        ratio: 0.0,
        swap_to: None,
        pitch: "off",
        about: "Blend 0: the realtime path with the index loaded but no transfer; sounds like \
                the input (the baseline to compare with)",
    },
    Render {
        file: "blend-0.5.wav",
        index: "high.kbi",
        ratio: 0.5,
        swap_to: None,
        pitch: "off",
        about: "Blend 0.5: each frame's spectral envelope half way to its nearest frames of the \
                high voice",
    },
    Render {
        file: "blend-1.wav",
        index: "high.kbi",
        ratio: 1.0,
        swap_to: None,
        pitch: "off",
        about: "Blend 1: envelopes taken entirely from the high voice's nearest frames (the \
                pitch stays the input's; the formants move)",
    },
    Render {
        file: "blend-1-pitch.wav",
        index: "high.kbi",
        ratio: 1.0,
        swap_to: None,
        pitch: "match",
        about: "Blend 1 with Match voice pitch: as Blend 1, and the input's running median f0 \
                moved to the high voice's recorded median (about an octave up from the low \
                phrase), formants kept where retrieval put them",
    },
    Render {
        file: "swap-high-to-low.wav",
        index: "high.kbi",
        ratio: 1.0,
        swap_to: Some("low.kbi"),
        pitch: "off",
        about: "Blend 1 on the high voice, then a live swap to the low voice at 3 s (50 ms \
                crossfade): what changing the Voice slot in the plugin does",
    },
];

/// One render measured against the phrase and the target voice's recording
/// (`knnblend compare`).
#[derive(Debug, Clone, Copy)]
struct Comparison {
    render: &'static str,
    /// Where `compare --json` is kept.
    json: &'static str,
    /// The picture, if this one is drawn.
    png: Option<&'static str>,
}

/// What the summary's "What changed" section shows.
const COMPARISONS: [Comparison; 2] = [
    Comparison {
        render: "blend-1.wav",
        json: "compare-blend-1.json",
        png: None,
    },
    Comparison {
        render: "blend-1-pitch.wav",
        json: "compare-blend-1-pitch.json",
        png: Some("blend-1-pitch.png"),
    },
];
/// The target voice's recording the comparisons measure against.
const TARGET_RECORDING: &str = "voices/high.wav";

/// Paths the demo works with.
struct Demo<'a> {
    ws: &'a Workspace,
    /// `target/demo`.
    dir: PathBuf,
    /// The dev-profile CLI.
    cli: PathBuf,
    /// The task runner itself: the recipe (lengths, seeds, ratios) lives in it, so a changed
    /// recipe remakes what it describes.
    recipe: Option<PathBuf>,
}

impl Demo<'_> {
    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// The CLI, run in the demo directory so the paths it records are short.
    fn cli(&self) -> Command {
        let mut cmd = Command::new(&self.cli);
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Inputs every product depends on, plus `extra` (paths below the demo directory).
    fn inputs(&self, extra: &[&str]) -> Vec<PathBuf> {
        let mut inputs = vec![self.cli.clone()];
        inputs.extend(self.recipe.iter().cloned());
        inputs.extend(extra.iter().map(|f| self.path(f)));
        inputs
    }

    /// Makes `outputs` with `make` unless they are up to date; true when it made them.
    fn make(
        &self,
        inputs: &[PathBuf],
        outputs: &[PathBuf],
        make: impl FnOnce() -> Result<()>,
    ) -> Result<bool> {
        let names = outputs
            .iter()
            .map(|o| self.ws.show(o))
            .collect::<Vec<_>>()
            .join(", ");
        let show = |p: &Path| self.ws.show(p);
        match fresh::check(inputs, outputs)?.reason(show) {
            None => {
                println!("  reused {names} (up to date)");
                Ok(false)
            }
            Some(why) => {
                println!("  making {names} ({why})");
                for dir in outputs.iter().filter_map(|o| o.parent()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("could not create {}", dir.display()))?;
                }
                let started = Instant::now();
                make()?;
                if let Freshness::Missing(missing) = fresh::check(&[], outputs)? {
                    bail!(
                        "the command succeeded but did not write {}",
                        self.ws.show(&missing)
                    );
                }
                println!("  made {names} in {}", format_duration(started.elapsed()));
                Ok(true)
            }
        }
    }
}

/// The outcome of a step that made `made` of `total` products.
fn products_outcome(made: usize, total: usize) -> Outcome {
    if made == 0 {
        Outcome::Reused(format!("{total} up to date"))
    } else {
        Outcome::Passed
    }
}

/// Runs the demo.
pub fn run(ws: &Workspace) -> Result<()> {
    let mut steps = Steps::new("cargo xtask demo", 9);
    let demo = Demo {
        ws,
        dir: ws.demo_dir(),
        cli: ws.dev_cli(),
        recipe: std::env::current_exe().ok(),
    };

    let ready = steps.run("setup", || {
        setup::run(ws, setup::Options::default()).map(|()| Outcome::Passed)
    });
    if matches!(ready, Outcome::Failed(_)) {
        return steps.finish();
    }

    let cli = steps.run("build the CLI (dev profile)", || build_cli(&demo));
    let cli_ok = matches!(cli, Outcome::Passed | Outcome::Reused(_));

    // Each generating step needs the ones before it (the measurements are optional).
    let mut blocked: Option<String> = (!cli_ok).then(|| "the CLI did not build".to_string());
    let mut generating =
        |steps: &mut Steps, name: &str, needed: bool, body: &dyn Fn() -> Result<Outcome>| {
            if let Some(why) = &blocked {
                steps.skip(name, why);
                return false;
            }
            let outcome = steps.run(name, body);
            if matches!(outcome, Outcome::Failed(_)) {
                if needed {
                    blocked = Some(format!("`{name}` failed"));
                }
                return false;
            }
            true
        };

    generating(
        &mut steps,
        "synthesise two voices and a phrase",
        true,
        &|| synthesise(&demo),
    );
    generating(&mut steps, "build the voice indexes", true, &|| {
        build_indexes(&demo)
    });
    generating(
        &mut steps,
        "render the phrase (Blend 0, 0.5, 1, live swap)",
        true,
        &|| render(&demo),
    );
    let compared = generating(
        &mut steps,
        "measure what Blend 1 and pitch matching changed",
        false,
        &|| compare(&demo),
    );
    let measured = generating(
        &mut steps,
        "measure query time and real-time factor",
        false,
        &|| measure_step(&demo),
    );

    let bundled = steps.run("bundle the plugin (release)", || bundle_plugin(ws));
    let bundled = matches!(bundled, Outcome::Passed | Outcome::Reused(_));

    generating(&mut steps, "write the summary", true, &|| {
        write_summary(&demo, measured, compared, bundled)
    });

    let summary = demo.path("SUMMARY.md");
    let finished = steps.finish();
    if summary.is_file() {
        println!();
        println!("summary: {}", summary.display());
        println!("listen:  {}/*.wav", demo.dir.display());
    }
    finished
}

/// Modification time, `None` when the file does not exist.
fn modified(path: &Path) -> Option<SystemTime> {
    path.metadata().and_then(|m| m.modified()).ok()
}

/// Builds the CLI; cargo decides whether anything needs compiling.
fn build_cli(demo: &Demo) -> Result<Outcome> {
    let before = modified(&demo.cli);
    process::run(cargo(&demo.ws.root).args(["build", "-p", CLI_PACKAGE, "--bin", "knnblend"]))?;
    let after = modified(&demo.cli);
    if after.is_none() {
        bail!("cargo built but {} does not exist", demo.ws.show(&demo.cli));
    }
    Ok(if before == after {
        Outcome::Reused(format!("{} up to date", demo.ws.show(&demo.cli)))
    } else {
        Outcome::Passed
    })
}

fn synthesise(demo: &Demo) -> Result<Outcome> {
    let mut made = 0;
    for s in SYNTHS {
        let made_now = demo.make(&demo.inputs(&[]), &[demo.path(s.file)], || {
            process::run(demo.cli().args([
                "synth",
                "--voice",
                s.voice,
                "--seconds",
                &s.seconds.to_string(),
                "--seed",
                &s.seed.to_string(),
                s.file,
            ]))
        })?;
        made += usize::from(made_now);
    }
    Ok(products_outcome(made, SYNTHS.len()))
}

fn build_indexes(demo: &Demo) -> Result<Outcome> {
    let mut made = 0;
    for index in INDEXES {
        let made_now = demo.make(
            &demo.inputs(&[index.source]),
            &[demo.path(index.file)],
            || {
                process::run(demo.cli().args([
                    "build",
                    "--audio",
                    index.source,
                    "--output",
                    index.file,
                ]))
            },
        )?;
        made += usize::from(made_now);
    }
    Ok(products_outcome(made, INDEXES.len()))
}

fn render(demo: &Demo) -> Result<Outcome> {
    let mut made = 0;
    for r in RENDERS {
        let mut sources = vec![PHRASE, r.index];
        sources.extend(r.swap_to);
        let made_now = demo.make(&demo.inputs(&sources), &[demo.path(r.file)], || {
            let mut cmd = demo.cli();
            cmd.args([
                "render",
                "--index",
                r.index,
                "--ratio",
                &r.ratio.to_string(),
                "--pitch",
                r.pitch,
            ]);
            if let Some(to) = r.swap_to {
                cmd.args(["--swap-to", to, "--swap-at", &SWAP_AT_SECONDS.to_string()]);
            }
            process::run(cmd.args([PHRASE, r.file]))
        })?;
        made += usize::from(made_now);
    }
    Ok(products_outcome(made, RENDERS.len()))
}

/// `knnblend compare` of each of [`COMPARISONS`]: its JSON, and its PNG if it has one.
fn compare(demo: &Demo) -> Result<Outcome> {
    let mut made = 0;
    for c in COMPARISONS {
        let mut outputs = vec![demo.path(c.json)];
        outputs.extend(c.png.map(|p| demo.path(p)));
        let made_now = demo.make(
            &demo.inputs(&[PHRASE, c.render, TARGET_RECORDING]),
            &outputs,
            || {
                let mut cmd = demo.cli();
                cmd.args([
                    "compare",
                    "--input",
                    PHRASE,
                    "--output",
                    c.render,
                    "--target",
                    TARGET_RECORDING,
                    "--json",
                ]);
                if let Some(png) = c.png {
                    cmd.args(["--png", png]);
                }
                let line = process::describe(&cmd);
                let text = process::output(&mut cmd).with_context(|| format!("`{line}` failed"))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("`{line}` did not print JSON"))?;
                println!(
                    "  {}",
                    summary::Compared::from_json(c.render, &v)?.headline()
                );
                fresh::write_atomically(&demo.path(c.json), text.as_bytes())
            },
        )?;
        made += usize::from(made_now);
    }
    Ok(products_outcome(made, COMPARISONS.len()))
}

/// The index, input and output of the measurements.
const MEASURE_INDEX: &str = "high.kbi";
const MEASUREMENTS: &str = "measurements.json";

fn measure_step(demo: &Demo) -> Result<Outcome> {
    let made = demo.make(
        &demo.inputs(&[MEASURE_INDEX, PHRASE]),
        &[demo.path(MEASUREMENTS)],
        || {
            let info = inspect(demo, MEASURE_INDEX)?;
            let m = measure::run(&measure::Setup {
                cli: &demo.cli,
                dir: &demo.dir,
                index: MEASURE_INDEX,
                info: &info,
                phrase: PHRASE,
                phrase_seconds: PHRASE_SECONDS,
            })?;
            println!("  {}", m.headline());
            fresh::write_atomically(
                &demo.path(MEASUREMENTS),
                serde_json::to_string_pretty(&m.to_json())?.as_bytes(),
            )
        },
    )?;
    Ok(products_outcome(usize::from(made), 1))
}

/// Bundles the plugin in release mode. Always asks cargo (it knows best whether anything
/// changed) and always refreshes `target/bundled`, which `cargo xtask test` fills with a debug
/// build.
fn bundle_plugin(ws: &Workspace) -> Result<Outcome> {
    let library = ws.release_plugin_library();
    let before = modified(&library);
    crate::bundle::bundle(
        ws,
        &[PLUGIN_PACKAGE.to_string()],
        &["--release".to_string()],
    )?;
    for bundle in [ws.clap_bundle(), ws.vst3_library()] {
        if !bundle.is_file() {
            bail!("expected {} after bundling", ws.show(&bundle));
        }
        let report = crate::linkcheck::assert_no_faiss(&bundle)?;
        println!(
            "  no faiss in {} ({} symbols checked)",
            ws.show(&bundle),
            report.symbols
        );
    }
    Ok(if before.is_some() && before == modified(&library) {
        Outcome::Reused("release build up to date; bundles copied to target/bundled".into())
    } else {
        Outcome::Passed
    })
}

/// `knnblend inspect FILE --json`, parsed.
fn inspect(demo: &Demo, file: &str) -> Result<serde_json::Value> {
    let mut cmd = demo.cli();
    cmd.args(["inspect", file, "--json"]);
    let line = process::describe(&cmd);
    let text = process::output(&mut cmd).with_context(|| format!("`{line}` failed"))?;
    serde_json::from_str(&text).with_context(|| format!("`{line}` did not print JSON"))
}

fn write_summary(demo: &Demo, measured: bool, compared: bool, bundled: bool) -> Result<Outcome> {
    let mut sources: Vec<&str> = INDEXES.iter().map(|i| i.file).collect();
    sources.extend(RENDERS.iter().map(|r| r.file));
    sources.extend(SYNTHS.iter().map(|s| s.file));
    if measured {
        sources.push(MEASUREMENTS);
    }
    if compared {
        sources.extend(COMPARISONS.iter().map(|c| c.json));
    }
    let mut inputs = demo.inputs(&sources);
    if bundled {
        // Not the bundles themselves: they are copied afresh on every run.
        inputs.push(demo.ws.release_plugin_library());
    }
    let output = demo.path("SUMMARY.md");
    let made = demo.make(&inputs, std::slice::from_ref(&output), || {
        let indexes = INDEXES
            .iter()
            .map(|i| Ok((i.file, i.source, inspect(demo, i.file)?)))
            .collect::<Result<Vec<_>>>()?;
        let size = |p: &Path| p.metadata().map(|m| m.len()).unwrap_or(0);
        let mut wavs: Vec<summary::Wav> = SYNTHS
            .iter()
            .map(|s| summary::Wav {
                file: s.file,
                seconds: s.seconds,
                bytes: size(&demo.path(s.file)),
                about: s.about,
            })
            .collect();
        wavs.extend(RENDERS.iter().map(|r| summary::Wav {
            file: r.file,
            seconds: PHRASE_SECONDS,
            bytes: size(&demo.path(r.file)),
            about: r.about,
        }));
        let measurements = if measured {
            let text = std::fs::read_to_string(demo.path(MEASUREMENTS))?;
            Some(measure::Measurements::from_json(&serde_json::from_str(
                &text,
            )?)?)
        } else {
            None
        };
        let comparisons = if compared {
            COMPARISONS
                .iter()
                .map(|c| {
                    let text = std::fs::read_to_string(demo.path(c.json))?;
                    let mut m =
                        summary::Compared::from_json(c.render, &serde_json::from_str(&text)?)?;
                    m.png = c.png;
                    Ok(m)
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let bundles = bundled.then(|| summary::Bundles {
            clap: demo.ws.show(&demo.ws.clap_bundle()),
            clap_bytes: size(&demo.ws.clap_bundle()),
            vst3: demo.ws.show(&demo.ws.vst3_bundle()),
            vst3_bytes: size(&demo.ws.vst3_library()),
        });
        let text = summary::render(&summary::Input {
            demo_dir: &demo.ws.show(&demo.dir),
            demo_dir_absolute: &demo.dir.display().to_string(),
            indexes: &indexes,
            wavs: &wavs,
            measurements: measurements.as_ref(),
            comparisons: &comparisons,
            target_recording: TARGET_RECORDING,
            phrase: PHRASE,
            bundles: bundles.as_ref(),
            machine: &machine(),
        });
        fresh::write_atomically(&output, text.as_bytes())
    })?;
    Ok(products_outcome(usize::from(made), 1))
}

/// CPU model and core count, for the figures.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} cores, {}", std::env::consts::OS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_render_reads_files_the_demo_makes() {
        let made: Vec<&str> = SYNTHS
            .iter()
            .map(|s| s.file)
            .chain(INDEXES.iter().map(|i| i.file))
            .collect();
        for r in RENDERS {
            assert!(made.contains(&r.index), "{}", r.file);
            assert!(r
                .swap_to
                .is_none_or(|to| made.contains(&to) && to != r.index));
            assert!((0.0..=1.0).contains(&r.ratio));
        }
        assert!(made.contains(&PHRASE) && made.contains(&MEASURE_INDEX));
        for i in INDEXES {
            assert!(made.contains(&i.source));
        }
    }

    #[test]
    fn renders_cover_blend_0_half_1_and_a_swap() {
        let ratios: Vec<f32> = RENDERS
            .iter()
            .filter(|r| r.swap_to.is_none() && r.pitch == "off")
            .map(|r| r.ratio)
            .collect();
        assert_eq!(ratios, [0.0, 0.5, 1.0]);
        let matched: Vec<f32> = RENDERS
            .iter()
            .filter(|r| r.pitch == "match")
            .map(|r| r.ratio)
            .collect();
        assert_eq!(matched, [1.0], "one render with pitch matching, at Blend 1");
        assert!(RENDERS.iter().all(|r| ["off", "match"].contains(&r.pitch)));
        assert_eq!(RENDERS.iter().filter(|r| r.swap_to.is_some()).count(), 1);
        const { assert!(SWAP_AT_SECONDS > 0.0 && SWAP_AT_SECONDS < PHRASE_SECONDS) };
        let swap = RENDERS.iter().find(|r| r.swap_to.is_some()).unwrap();
        assert!(
            swap.about.contains(&format!("at {SWAP_AT_SECONDS} s")),
            "{}",
            swap.about
        );
    }

    #[test]
    fn voices_differ_in_seed_and_output() {
        for (i, a) in SYNTHS.iter().enumerate() {
            for b in &SYNTHS[i + 1..] {
                assert_ne!(a.file, b.file);
                assert!(a.voice != b.voice || a.seed != b.seed);
            }
        }
    }

    #[test]
    fn a_step_is_reused_only_when_nothing_was_made() {
        assert_eq!(
            products_outcome(0, 3),
            Outcome::Reused("3 up to date".into())
        );
        assert_eq!(products_outcome(1, 3), Outcome::Passed);
    }
}
