//! RVC's coarse pitch and `f0_up_key` against numpy running RVC's own lines (`get_f0_post` /
//! `get_f0`), and the built-in tracker through RVC's framing.

#[path = "../../tests/skip/mod.rs"]
mod skip;

use std::path::PathBuf;
use std::process::Command;

use knnblend_rvc::f0::{self, BuiltinF0, F0Method, PitchCache, HOP, SAMPLE_RATE};

/// `target/venv/bin/python` (made by `cargo xtask setup`), else `python3`, if it has numpy.
fn python_with_numpy() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python");
    for candidate in [venv, PathBuf::from("python3")] {
        let ok = Command::new(&candidate)
            .args(["-c", "import numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(candidate);
        }
    }
    None
}

/// Runs `script` with `input` (little-endian f32) in the file `IN` and returns the file `OUT`.
fn numpy(script: &str, input: &[f32]) -> Option<Vec<u8>> {
    let Some(python) = python_with_numpy() else {
        skip::skip(
            "no Python with numpy (target/venv/bin/python or python3)",
            "run `cargo xtask setup`, which makes target/venv",
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in.f32"), dir.path().join("out.bin"));
    let bytes: Vec<u8> = input.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(&inp, bytes).unwrap();
    let status = Command::new(python)
        .args(["-c", script])
        .env("IN", &inp)
        .env("OUT", &out)
        .status()
        .unwrap();
    assert!(status.success(), "numpy script failed");
    Some(std::fs::read(out).unwrap())
}

/// RVC's lines (`get_f0_post`), on the array `f0`, writing the int32 coarse pitch and the
/// float64 mapped value before rounding.
const COARSE: &str = r#"
import os, numpy as np
f0_min, f0_max = 50, 1100
f0_mel_min = 1127 * np.log(1 + f0_min / 700)
f0_mel_max = 1127 * np.log(1 + f0_max / 700)
def post(f0):
    f0_mel = 1127 * np.log(1 + f0 / 700)
    f0_mel[f0_mel > 0] = (f0_mel[f0_mel > 0] - f0_mel_min) * 254 / (f0_mel_max - f0_mel_min) + 1
    f0_mel[f0_mel <= 1] = 1
    f0_mel[f0_mel > 255] = 255
    return np.rint(f0_mel).astype(np.int32), f0_mel.astype(np.float64)
x = np.fromfile(os.environ["IN"], dtype="<f4")
c32, m32 = post(x.copy())
c64, m64 = post(x.astype(np.float64))
with open(os.environ["OUT"], "wb") as f:
    f.write(c32.astype("<i4").tobytes()); f.write(c64.astype("<i4").tobytes())
    f.write(m64.astype("<f8").tobytes())
"#;

#[test]
fn coarse_pitch_matches_numpy() {
    // 0–1300 Hz every 0.005 Hz, the edges, and odd values.
    let mut f0s: Vec<f32> = (0..260_000).map(|i| i as f32 * 0.005).collect();
    f0s.extend([
        0.0, 49.999, 50.0, 50.001, 1099.99, 1100.0, 1100.01, 5000.0, 1e6, 7.0, 0.5,
    ]);
    let Some(bytes) = numpy(COARSE, &f0s) else {
        return;
    };
    let n = f0s.len();
    let int = |k: usize| i32::from_le_bytes(bytes[4 * k..4 * k + 4].try_into().unwrap()) as i64;
    let mapped =
        |k: usize| f64::from_le_bytes(bytes[8 * n + 8 * k..8 * n + 8 * k + 8].try_into().unwrap());
    let mut differ_f32 = 0;
    for (k, &f) in f0s.iter().enumerate() {
        let ours = f0::coarse(f);
        // numpy in float64 (the same arithmetic as ours): identical.
        assert_eq!(ours, int(n + k), "{f} Hz vs numpy float64");
        // numpy in float32 (RVC's array dtype): identical except where the value sits on a
        // rounding half within float32 precision.
        if ours != int(k) {
            differ_f32 += 1;
            let m = mapped(k);
            assert!(
                (m - m.floor() - 0.5).abs() < 1e-4 && (ours - int(k)).abs() == 1,
                "{f} Hz: ours {ours}, numpy float32 {} (mapped {m})",
                int(k)
            );
        }
    }
    assert!(
        differ_f32 < n / 1000,
        "{differ_f32} of {n} differ from float32 numpy"
    );
    eprintln!("coarse: {n} values, identical to numpy float64; {differ_f32} off by one at a half vs float32");
}

const SHIFT: &str = r#"
import os, numpy as np
x = np.fromfile(os.environ["IN"], dtype="<f4")
out = []
for key in range(-24, 25):
    f0 = x.copy()
    f0 *= pow(2, key / 12)
    out.append(f0)
np.concatenate(out).astype("<f4").tofile(os.environ["OUT"])
"#;

#[test]
fn f0_up_key_matches_numpy_bit_for_bit() {
    let f0s: Vec<f32> = (0..2000)
        .map(|i| i as f32 * 0.6173 + (i % 7) as f32 * 0.01)
        .collect();
    let Some(bytes) = numpy(SHIFT, &f0s) else {
        return;
    };
    for (ki, key) in (-24..=24).enumerate() {
        let mut ours = f0s.clone();
        f0::shift(&mut ours, key as f32);
        for (i, &v) in ours.iter().enumerate() {
            let k = ki * f0s.len() + i;
            let want = f32::from_le_bytes(bytes[4 * k..4 * k + 4].try_into().unwrap());
            assert_eq!(v.to_bits(), want.to_bits(), "key {key}, {} Hz", f0s[i]);
        }
    }
}

#[test]
fn builtin_tracker_through_the_cache_follows_a_melody() {
    // Blocks of 0.25 s at 16 kHz over a 1.8 s window: notes change every 0.5 s; after each
    // block the cache's frames (centred on 160·n) match the note sounding there.
    let sr = SAMPLE_RATE as f64;
    let (block, window) = (4000usize, 28_800usize);
    let notes = [110.0f64, 165.0, 220.0, 196.0, 147.0, 262.0, 330.0, 98.0];
    let total = block * 16 + window;
    let note_at = |i: usize| notes[(i / 8000) % notes.len()];
    let mut phase = 0.0f64;
    let signal: Vec<f32> = (0..total)
        .map(|i| {
            phase += 2.0 * std::f64::consts::PI * note_at(i) / sr;
            (0.3 * phase.sin() + 0.15 * (2.0 * phase).sin() + 0.05 * (3.0 * phase).sin()) as f32
        })
        .collect();
    let f0_window = f0::extractor_len(block, F0Method::Builtin);
    let mut tracker = BuiltinF0::new(f0_window);
    let mut cache = PitchCache::new(window / HOP);
    let mut est = vec![0f32; f0::extractor_frames(f0_window)];
    let key = 5.0;
    for b in 0..16 {
        let end = window + b * block;
        let frames = tracker.process(&signal[end - f0_window..end], &mut est);
        cache.update(block / HOP, &est[..frames], key);
        if b < 8 {
            continue; // the cache is filled from the right; check once it is full
        }
        let start = end - window;
        let factor = f0::key_factor(key) as f64;
        for (n, (&hz, &c)) in cache.hz().iter().zip(cache.coarse()).enumerate() {
            let centre = start + n * HOP;
            // Frames within 30 ms of a note change see two notes; skip them.
            let near_change = (centre % 8000) < 480 || (centre % 8000) > 8000 - 480;
            if near_change {
                continue;
            }
            let want = note_at(centre) * factor;
            assert!(
                (hz as f64 - want).abs() / want < 0.01,
                "block {b}, frame {n}: {hz} Hz, want {want}"
            );
            assert_eq!(c, f0::coarse(hz));
        }
    }
}
