//! The latency the stream reports is exact on the WET path: an impulse into the RVC converter
//! comes out of the converted signal `StreamAudio::latency()` samples later, at 44.1, 48 and
//! 96 kHz, for several host buffer sizes and three RVC block framings (crossfade up to 40 ms,
//! where the synthesizer's returned frames end at the window's end; RVC's default 50 ms, where
//! they end 10 ms early; and a window of an even number of 10 ms frames, where the SOLA tail
//! ends in ContentVec's repeated last frame).
//!
//! The energy stand-ins only resolve 20 ms frames, so this test runs the waveform-carrying
//! stand-ins of `fixtures/make_models.py`: `vec-768-wave.onnx` puts the 16 kHz samples of each
//! 320-sample hop into the features' channels, and `synth_v2_40k_wave.onnx` plays the samples
//! its frame carries back at 40 kHz. With Blend 0 and Protect 0.5 the features reach the
//! synthesizer unchanged (the retrieval still runs on a 768-d index), so the whole path —
//! host → 16 kHz resampler, ContentVec framing, ×2, the synthesizer's frame timing, SOLA,
//! 40 kHz → host resampler, the rings — moves the impulse by exactly the latency it reports,
//! or the test says by how much it does not.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use knnblend::format::Metric;
use knnblend::index::{rvc_nlist, FaissIvf};
use knnblend::live::{live, AudioEngine, Controller, LiveConfig, LoadOutcome, Validator};
use knnblend_rvc::models::{ContentVec, Synthesizer};
use knnblend_rvc::pipeline::{Controls, Framing, RvcConverter, VoiceModels};
use knnblend_rvc::stream::{stream_manual, Converter, StreamConfig};

use common::{model, runtime, Rng};

const DIM: usize = 768;

/// The tolerance, in host samples, between where the impulse peaks in the converted signal
/// and `input index + latency`.
///
/// Each impulse sits on the 16 kHz grid (see [`on_16k_grid`]), so the 16 kHz resampler gives
/// a band-limited pulse whose largest sample is the impulse's own time. The synthesizer
/// stand-in then resamples 16 kHz → 40 kHz by nearest neighbour: each 16 kHz sample is held for
/// 2 or 3 model samples (2.5 on average), centred on its own time, so the held pulse's centre
/// can be off by up to half a model sample (0.55 host samples at 44.1 kHz, 0.6 at 48 kHz, 1.2
/// at 96 kHz), and the staircase's images (8–18 kHz, passed by the 40 kHz → host filter) make
/// the band-limited peak between host samples lean by a fraction of a sample. The peak is then
/// read on the host grid (±0.5) and the reported latency is the converter's delay rounded to a
/// whole sample (±0.5). Together: within ±2 host samples at every rate (measured: 0 at 44.1 and
/// 48 kHz, 0 or −1 at 96 kHz). An impulse off the 16 kHz grid peaks near the grid sample
/// the 16 kHz resampler made largest instead (measured up to ±2 at 48 kHz and +3 at 96 kHz),
/// which is the stand-in's resolution, not the pipeline's. A latency mistake of the pipeline —
/// a 16 kHz sample (3–6 host samples), a 10 ms frame, SOLA's search — is larger.
const TOLERANCE: i64 = 2;

/// Low noise under the impulses: SOLA's normalised correlation has a clear maximum at the
/// aligned offset (with near-silent input, `Σx² ≲ 10⁻⁸`, its regulariser would let a far
/// louder stretch containing the impulse win at another offset).
const NOISE: f32 = 1e-3;

/// Impulses per run, this far apart (more than the longest latency here, 0.58 s, so each
/// impulse's search stretch, from it to the next, holds its own output and no other).
const SPACING_SECONDS: f64 = 0.9;
/// Settling (in low noise) before the first impulse: the stream's lead-in, SOLA's first
/// fade-in from silence and the resamplers' transients pass.
const SETTLE_SECONDS: f64 = 1.2;
const IMPULSES: usize = 3;

fn dim_validator(dim: usize) -> Validator {
    Arc::new(move |index: &knnblend::index::AnyIndex| {
        if index.dim() == dim {
            Ok(())
        } else {
            Err(format!(
                "this index holds {}-dimensional features; the ContentVec model gives {dim}",
                index.dim()
            ))
        }
    })
}

/// A 768-d RVC `added_*.index` (faiss IVF-Flat, RVC's list count) of random rows.
fn write_index(dir: &Path) -> PathBuf {
    let n = 400;
    let mut rng = Rng::new(17);
    let rows = rng.vec(n * DIM, 0.3);
    let ivf = FaissIvf::build(DIM, rvc_nlist(n), Metric::L2, &rows, &rows).unwrap();
    let path = dir.join(format!(
        "added_IVF{}_Flat_nprobe_1_wave_v2.index",
        rvc_nlist(n)
    ));
    ivf.write(&path).unwrap();
    path
}

/// The live runtime as `render.rs` builds it: a dim validator, the index loaded into slot 0.
fn retrieval(index: &Path) -> (Controller, AudioEngine) {
    let (control, audio) = live(LiveConfig {
        max_dim: DIM,
        validator: Some(dim_validator(DIM)),
        ..LiveConfig::default()
    });
    match control.load(0, index).wait() {
        LoadOutcome::Published(_) => {}
        other => panic!("the index did not load: {other:?}"),
    }
    (control, audio)
}

/// The smallest step of host samples that lands on the 16 kHz grid: `host / gcd(host, 16000)`
/// (441 at 44.1 kHz, 3 at 48 kHz, 6 at 96 kHz).
fn on_16k_grid(host: u32) -> usize {
    fn gcd(a: u32, b: u32) -> u32 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    (host / gcd(host, 16_000)) as usize
}

/// One run through the stream: the converted and dry outputs, the impulses' input indexes,
/// the reported latency and the converter's own delay.
struct Run {
    converted: Vec<f32>,
    dry: Vec<f32>,
    impulses: Vec<usize>,
    latency: usize,
    converter_delay: usize,
    spacing: usize,
    host: u32,
}

fn run(index: &Path, framing: Framing, host_buffer: usize) -> Run {
    runtime();
    let host = framing.host_rate;
    let (_control, audio) = retrieval(index);
    let controls = Arc::new(Controls::default());
    // Features pass unchanged: no blend (the retrieval still runs), protect off.
    controls.set_index_rate(0.0);
    controls.set_protect(0.5);
    controls.set_index_crossfade_seconds(0.0);
    let models = VoiceModels {
        contentvec: ContentVec::open(model("vec-768-wave.onnx")).unwrap(),
        synth: Synthesizer::open(model("synth_v2_40k_wave.onnx")).unwrap(),
        rmvpe: None,
    };
    let conv = RvcConverter::new(models, audio, framing, controls, 1).unwrap();
    let converter_delay = conv.delay();
    let config = StreamConfig::new(conv.host_block(), host as f32);
    let (mut stream, mut worker) = stream_manual(config, conv);
    let latency = stream.latency();
    assert_eq!(
        latency,
        config.block + config.budget + config.fade + converter_delay,
        "the stream's latency is not B + W + F + D"
    );

    let grid = on_16k_grid(host);
    let spacing = (SPACING_SECONDS * host as f64) as usize / grid * grid;
    let first = (SETTLE_SECONDS * host as f64) as usize / grid * grid;
    // Each impulse a different distance into its block (a prime number of grid steps on).
    let impulses: Vec<usize> = (0..IMPULSES)
        .map(|k| first + k * spacing + k * 37 * grid)
        .collect();
    let total = impulses[IMPULSES - 1] + spacing;
    let mut input = Rng::new(host as u64).vec(total, NOISE);
    for &i in &impulses {
        input[i] = 1.0;
    }

    let (mut converted, mut dry) = (vec![0f32; total], vec![0f32; total]);
    for ((x, c), d) in input
        .chunks(host_buffer)
        .zip(converted.chunks_mut(host_buffer))
        .zip(dry.chunks_mut(host_buffer))
    {
        stream.process(x, c, d);
        while worker.step() {}
    }
    let stats = stream.telemetry().snapshot();
    assert_eq!(stats.underruns, 0, "{stats:?}");
    assert_eq!(stats.dry_samples, 0, "{stats:?}");
    let errors = worker
        .converter()
        .times()
        .model_errors
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(errors, 0, "a model failed on {errors} blocks");
    assert!(converted.iter().all(|v| v.is_finite()));
    Run {
        converted,
        dry,
        impulses,
        latency,
        converter_delay,
        spacing,
        host,
    }
}

/// Where the largest |sample| of `signal[from..to]` is.
fn peak(signal: &[f32], from: usize, to: usize) -> (usize, f32) {
    let to = to.min(signal.len());
    (from..to)
        .map(|i| (i, signal[i]))
        .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
        .unwrap()
}

/// Measured offsets (peak index − impulse index) of every impulse on one signal, each found
/// in the stretch from its own impulse to the next.
fn offsets(signal: &[f32], r: &Run) -> Vec<(i64, f32)> {
    r.impulses
        .iter()
        .map(|&i| {
            let (at, v) = peak(signal, i, i + r.spacing);
            (at as i64 - i as i64, v)
        })
        .collect()
}

/// `Ok` when every impulse of the converted signal peaks at `impulse + expected` within
/// [`TOLERANCE`], as a clear pulse (not lost in the noise, no second pulse nearly as large);
/// `Err` says where it peaked instead.
fn check_wet(r: &Run, expected: usize, what: &str) -> Result<(), String> {
    for (k, (&i, (offset, v))) in r.impulses.iter().zip(offsets(&r.converted, r)).enumerate() {
        let error = offset - expected as i64;
        if error.abs() > TOLERANCE {
            return Err(format!(
                "{what}: impulse {k} at input {i} peaks in the converted signal at +{offset} \
                 samples (value {v}); expected +{expected} (error {error:+}, tolerance \
                 ±{TOLERANCE})"
            ));
        }
        // A unit impulse band-limited to 8 kHz peaks near 16 000 / host (0.36 at 44.1 kHz,
        // 0.17 at 96 kHz); far less would be a pulse lost or smeared.
        let floor = 0.5 * 16_000.0 / r.host as f32;
        if v.abs() < floor {
            return Err(format!(
                "{what}: impulse {k} came out at only {v} (at least {floor} expected)"
            ));
        }
        // Nothing else within the search stretch is nearly as large (one pulse, not two).
        let at = (i as i64 + offset) as usize;
        let second = (i..(i + r.spacing).min(r.converted.len()))
            .filter(|&j| j.abs_diff(at) > 24)
            .map(|j| r.converted[j].abs())
            .fold(0f32, f32::max);
        if second > 0.5 * v.abs() {
            return Err(format!(
                "{what}: impulse {k}: a second pulse of {second} besides the peak {v} at +{offset}"
            ));
        }
    }
    Ok(())
}

fn framings(host: u32) -> [Framing; 3] {
    [
        // Crossfade ≤ 40 ms: the returned frames end at the window's end.
        Framing {
            host_rate: host,
            block_seconds: 0.1,
            crossfade_seconds: 0.04,
            extra_seconds: 0.5,
        },
        // RVC's defaults (0.25 s, 0.05 s, 2.5 s): SOLA's crossfade is capped at 40 ms and the
        // returned frames end 10 ms before the window's end.
        Framing {
            host_rate: host,
            ..Framing::default()
        },
        // An even number of 10 ms frames in the window (80): ContentVec's repeated last frame
        // stands in for the last two synthesizer frames, so the SOLA tail's last 10 ms is a
        // repeat of older samples (as in RVC); the alignment must not move.
        Framing {
            host_rate: host,
            block_seconds: 0.25,
            crossfade_seconds: 0.04,
            extra_seconds: 0.5,
        },
    ]
}

#[test]
fn an_impulse_comes_out_of_the_wet_path_exactly_the_reported_latency_later() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_index(dir.path());
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for host in [44_100u32, 48_000, 96_000] {
        for (f, framing) in framings(host).into_iter().enumerate() {
            // The first framing at several host buffers (1.5 ms to 93 ms, one not dividing
            // the block), the others at one.
            let buffers: &[usize] = if f == 0 { &[64, 441, 4096] } else { &[512] };
            let mut reference: Option<Vec<f32>> = None;
            for &buffer in buffers {
                let r = run(&index, framing, buffer);
                let what = format!(
                    "{host} Hz, block {} s / crossfade {} s / extra {} s, host buffer {buffer}",
                    framing.block_seconds, framing.crossfade_seconds, framing.extra_seconds
                );
                // The dry path: exactly the latency, to the sample.
                for (k, (offset, v)) in offsets(&r.dry, &r).into_iter().enumerate() {
                    assert_eq!(
                        (offset, v),
                        (r.latency as i64, 1.0),
                        "{what}: dry impulse {k}"
                    );
                }
                let measured = offsets(&r.converted, &r);
                report.push(format!(
                    "{what}: latency {} (converter delay {}), wet peaks at {:?} (values {:?})",
                    r.latency,
                    r.converter_delay,
                    measured.iter().map(|m| m.0).collect::<Vec<_>>(),
                    measured.iter().map(|m| m.1).collect::<Vec<_>>(),
                ));
                if let Err(e) = check_wet(&r, r.latency, &what) {
                    failures.push(e);
                }
                // Negative controls: the same check rejects an expectation off by 20 samples
                // either way, or one that forgets the converter's own delay.
                for wrong in [
                    r.latency + 20,
                    r.latency - 20,
                    r.latency - r.converter_delay,
                ] {
                    assert!(
                        check_wet(&r, wrong, &what).is_err(),
                        "{what}: the check accepted a latency of {wrong} as well as {}",
                        r.latency
                    );
                }
                // The host's buffer size changes nothing.
                match &reference {
                    None => reference = Some(r.converted),
                    Some(first) => {
                        let differ = first.iter().zip(&r.converted).position(|(a, b)| a != b);
                        assert_eq!(
                            differ, None,
                            "{what}: differs from the first buffer's output"
                        )
                    }
                }
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "THE REPORTED LATENCY IS NOT WHERE THE WET SIGNAL COMES OUT:\n{}\n(all runs:\n{})",
        failures.join("\n"),
        report.join("\n")
    );
}

/// The stand-ins themselves: the wave ContentVec carries each hop's samples, and the wave
/// synthesizer fed its features ×2 plays them back at 40 kHz by nearest neighbour, so a
/// failure above is the pipeline's, not the fixtures'.
#[test]
fn the_wave_stand_ins_carry_and_play_back_the_samples() {
    runtime();
    let mut cv = ContentVec::open(model("vec-768-wave.onnx")).unwrap();
    let mut synth = Synthesizer::open(model("synth_v2_40k_wave.onnx")).unwrap();
    let info = synth.info();
    assert_eq!(
        (info.dim, info.f0, info.sample_rate, info.hop),
        (DIM, true, 40_000, 400)
    );
    assert_eq!(cv.dim(), DIM);
    let len = 10_400; // 320·32 + 160: N = 65 frames, F = 32
    let wav = Rng::new(3).vec(len, 0.5);
    let mut feats = Vec::new();
    let frames = cv.run(&wav, &mut feats).unwrap();
    assert_eq!(frames, ContentVec::frames_for(len));
    for n in 0..frames {
        let f = &feats[n * DIM..(n + 1) * DIM];
        assert_eq!(&f[..320], &wav[320 * n..320 * n + 320], "frame {n}");
        assert!(f[320..].iter().all(|&v| v == 0.0), "frame {n}");
    }
    let n = len / 160;
    let mut phone = vec![0f32; n * DIM];
    knnblend_rvc::frames::upsample2(&feats, DIM, &mut phone);
    let rnd = Rng::new(4).vec(192 * n, 1.0);
    let mut audio = Vec::new();
    let samples = synth
        .run(&phone, &vec![50; n], &vec![120.0; n], 0, &rnd, &mut audio)
        .unwrap();
    assert_eq!(samples, n * 400);
    // Frames 0 .. 2F carry their own samples (the last one repeats frame F − 1, as RVC does).
    for (s, &played) in audio[..2 * frames * 400].iter().enumerate() {
        let (m, j) = (s / 400, s % 400);
        let q = 160 * m + ((j as f64 * 0.4 + 0.5).floor() as usize).min(159);
        assert_eq!(played, wav[q], "output sample {s}");
    }
    // The last frame (2F) repeats frame F − 1's first half, 320 samples back.
    for (j, &played) in audio[2 * frames * 400..].iter().enumerate() {
        let q = 160 * (2 * frames - 2) + ((j as f64 * 0.4 + 0.5).floor() as usize).min(159);
        assert_eq!(played, wav[q], "the repeated last frame, sample {j}");
    }
}
