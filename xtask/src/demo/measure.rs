//! The demo's figures: per-frame query time and the render's real-time factor, both measured
//! by running the CLI (the task runner does not link the library).
//!
//! Per-frame query time is the marginal cost of one more query: `knnblend query` is timed on
//! [`QUERIES`] rows and on one row (best of [`REPEATS`] each), and the difference divided by
//! the extra rows. Process start, index loading and the fixed part of the `.npy` input and output
//! cancel out; what remains is search plus reading and writing one row, so the figure is a
//! slight overestimate of the search alone.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Rows of the large query run.
pub const QUERIES: usize = 20_000;
/// Neighbours per query (the CLI's and the plugin's default).
const K: usize = 8;
/// Lists probed per query (what the render and the plugin use for these indexes).
const NPROBE: usize = 1;
/// Timed runs of each kind; the fastest counts.
const REPEATS: usize = 3;

/// What the measurements need.
pub struct Setup<'a> {
    /// The CLI binary.
    pub cli: &'a Path,
    /// The demo directory (working directory of the runs).
    pub dir: &'a Path,
    /// The index to search, below `dir`.
    pub index: &'a str,
    /// `knnblend inspect INDEX --json`.
    pub info: &'a Value,
    /// The phrase to render, below `dir`.
    pub phrase: &'a str,
    /// Its length.
    pub phrase_seconds: f64,
}

/// The figures, as stored in `measurements.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurements {
    /// The index searched.
    pub index: String,
    /// Its number of vectors and their dimension.
    pub vectors: u64,
    /// Vector dimension.
    pub dim: usize,
    /// Rows in the large query run.
    pub queries: usize,
    /// Neighbours per query.
    pub k: usize,
    /// Lists probed per query.
    pub nprobe: usize,
    /// Marginal time of one query, microseconds.
    pub per_query_us: f64,
    /// The features' hop: one query per hop in the realtime path.
    pub hop_ms: Option<f64>,
    /// Seconds of audio rendered.
    pub audio_seconds: f64,
    /// Wall-clock seconds of the whole `knnblend render` run (start to exit).
    pub render_seconds: f64,
}

impl Measurements {
    /// Real-time factor of the render: audio seconds per wall-clock second.
    pub fn real_time_factor(&self) -> f64 {
        self.audio_seconds / self.render_seconds
    }

    /// Share of the hop (the realtime budget per frame) one query takes, percent.
    pub fn share_of_hop_percent(&self) -> Option<f64> {
        self.hop_ms
            .filter(|h| *h > 0.0)
            .map(|h| self.per_query_us / (h * 1000.0) * 100.0)
    }

    /// One line for the log.
    pub fn headline(&self) -> String {
        let share = self
            .share_of_hop_percent()
            .map(|p| format!(" ({p:.3} % of a {:.0} ms hop)", self.hop_ms.unwrap_or(0.0)))
            .unwrap_or_default();
        format!(
            "query: {:.2} µs per frame{share}; render: {:.1} s of audio in {:.2} s = {:.0}× real time",
            self.per_query_us,
            self.audio_seconds,
            self.render_seconds,
            self.real_time_factor()
        )
    }

    /// The stored form.
    pub fn to_json(&self) -> Value {
        json!({
            "index": self.index,
            "vectors": self.vectors,
            "dim": self.dim,
            "queries": self.queries,
            "k": self.k,
            "nprobe": self.nprobe,
            "per_query_us": self.per_query_us,
            "hop_ms": self.hop_ms,
            "audio_seconds": self.audio_seconds,
            "render_seconds": self.render_seconds,
        })
    }

    /// Reads the stored form.
    pub fn from_json(v: &Value) -> Result<Self> {
        let num = |key: &str| {
            v.get(key)
                .and_then(Value::as_f64)
                .with_context(|| format!("measurements.json lacks the number `{key}`"))
        };
        Ok(Self {
            index: v
                .get("index")
                .and_then(Value::as_str)
                .context("measurements.json lacks `index`")?
                .to_string(),
            vectors: num("vectors")? as u64,
            dim: num("dim")? as usize,
            queries: num("queries")? as usize,
            k: num("k")? as usize,
            nprobe: num("nprobe")? as usize,
            per_query_us: num("per_query_us")?,
            hop_ms: v.get("hop_ms").and_then(Value::as_f64),
            audio_seconds: num("audio_seconds")?,
            render_seconds: num("render_seconds")?,
        })
    }
}

/// Runs the measurements. Scratch files go to `DIR/tmp`, which is removed afterwards.
pub fn run(setup: &Setup) -> Result<Measurements> {
    let info = setup.info;
    let dim = info
        .get("dim")
        .and_then(Value::as_u64)
        .context("`inspect --json` printed no `dim`")? as usize;
    let vectors = info.get("ntotal").and_then(Value::as_u64).unwrap_or(0);
    let metadata = info.get("metadata");
    let speaker_mean: Vec<f32> = metadata
        .and_then(|m| m.get("speaker_mean"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default();
    let hop_ms = metadata
        .and_then(|m| m.pointer("/feature_params/hop_ms"))
        .and_then(Value::as_f64);

    let tmp = setup.dir.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("could not create {}", tmp.display()))?;
    let many = tmp.join("queries-many.npy");
    let one = tmp.join("queries-one.npy");
    let rows = query_rows(QUERIES, dim, &speaker_mean, 7);
    std::fs::write(&many, npy_f32(&rows, QUERIES, dim))?;
    std::fs::write(&one, npy_f32(&rows[..dim], 1, dim))?;

    let bar = ProgressBar::new((3 * REPEATS) as u64);
    bar.set_style(
        ProgressStyle::with_template("  {bar:30} {pos}/{len} timed runs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let query = |queries: &Path| {
        let mut cmd = Command::new(setup.cli);
        cmd.current_dir(setup.dir).arg("query").arg(setup.index);
        cmd.arg("--queries").arg(queries);
        cmd.args(["--k", &K.to_string(), "--nprobe", &NPROBE.to_string()]);
        cmd.arg("--ids").arg(tmp.join("ids.npy"));
        cmd.arg("--distances").arg(tmp.join("distances.npy"));
        cmd
    };
    bar.set_message("(query, 1 row)");
    let t_one = fastest(REPEATS, &bar, || query(&one))?;
    bar.set_message(format!("(query, {QUERIES} rows)"));
    let t_many = fastest(REPEATS, &bar, || query(&many))?;
    bar.set_message("(render)");
    let render_seconds = fastest(REPEATS, &bar, || {
        let mut cmd = Command::new(setup.cli);
        cmd.current_dir(setup.dir).args([
            "render",
            "--index",
            setup.index,
            "--ratio",
            "0.5",
            setup.phrase,
        ]);
        cmd.arg(tmp.join("render.wav"));
        cmd
    })?
    .as_secs_f64();
    bar.finish_and_clear();
    let _ = std::fs::remove_dir_all(&tmp);

    Ok(Measurements {
        index: setup.index.to_string(),
        vectors,
        dim,
        queries: QUERIES,
        k: K,
        nprobe: NPROBE,
        per_query_us: marginal_micros(t_one, t_many, QUERIES),
        hop_ms,
        audio_seconds: setup.phrase_seconds,
        render_seconds,
    })
}

/// Microseconds per extra row between a 1-row run and an `n`-row run (never negative).
fn marginal_micros(one: Duration, many: Duration, n: usize) -> f64 {
    let extra = many.as_secs_f64() - one.as_secs_f64();
    (extra / (n.saturating_sub(1).max(1)) as f64 * 1e6).max(0.0)
}

/// Runs the command `times` times (output discarded) and returns the fastest wall time.
fn fastest(times: usize, bar: &ProgressBar, command: impl Fn() -> Command) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..times {
        let mut cmd = command();
        let line = crate::process::describe(&cmd);
        let started = Instant::now();
        let status = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("could not start `{line}`"))?;
        let took = started.elapsed();
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
        best = best.min(took);
        bar.inc(1);
    }
    Ok(best)
}

/// `n` query rows shaped like the voice features, deterministic in `seed`.
///
/// The features are `[envelope − speaker mean | 2⁻¹⁰ · envelope]`; the rows are envelopes of
/// the speaker mean plus Gaussian noise (σ = 3 dB) in that layout. Without a matching speaker
/// mean the rows are plain Gaussian.
fn query_rows(n: usize, dim: usize, speaker_mean: &[f32], seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let layered = !speaker_mean.is_empty() && speaker_mean.len() * 2 == dim;
    let mut rows = Vec::with_capacity(n * dim);
    for _ in 0..n {
        if layered {
            let noise: Vec<f32> = (0..speaker_mean.len())
                .map(|_| 3.0 * rng.gaussian())
                .collect();
            rows.extend(&noise);
            rows.extend(
                speaker_mean
                    .iter()
                    .zip(&noise)
                    .map(|(m, e)| (m + e) / 1024.0),
            );
        } else {
            rows.extend((0..dim).map(|_| rng.gaussian()));
        }
    }
    rows
}

/// A float32 C-order `.npy` (format 1.0) of `rows` × `cols`.
fn npy_f32(data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    assert_eq!(data.len(), rows * cols, "npy shape does not match the data");
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + header length (2) + header, padded to 64 bytes, ending in \n.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for value in data {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

/// SplitMix64 with Box–Muller Gaussians: enough for timing inputs.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn gaussian(&mut self) -> f32 {
        let (u, v) = (self.unit(), self.unit());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_shape() {
        let bytes = npy_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (2, 3)"));
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + header_len..];
        assert_eq!(data.len(), 24);
        assert_eq!(f32::from_le_bytes(data[20..24].try_into().unwrap()), 6.0);
    }

    #[test]
    fn query_rows_follow_the_feature_layout() {
        let mean = [10.0f32, -20.0];
        let rows = query_rows(500, 4, &mean, 1);
        assert_eq!(rows.len(), 2000);
        for row in rows.chunks_exact(4) {
            // Second half = (mean + first half) / 1024.
            for b in 0..2 {
                let expect = (mean[b] + row[b]) / 1024.0;
                assert!((row[2 + b] - expect).abs() < 1e-6, "{row:?}");
            }
        }
        let spread = rows.chunks_exact(4).map(|r| r[0] * r[0]).sum::<f32>() / 500.0;
        assert!(
            (4.0..14.0).contains(&spread),
            "variance {spread}, expected about 9"
        );
        assert_eq!(query_rows(3, 4, &mean, 1), query_rows(3, 4, &mean, 1));
        assert_eq!(query_rows(2, 5, &mean, 1).len(), 10);
    }

    #[test]
    fn marginal_time_subtracts_the_fixed_cost() {
        let us = marginal_micros(
            Duration::from_millis(100),
            Duration::from_millis(300),
            20_001,
        );
        assert!((us - 10.0).abs() < 1e-9, "{us}");
        assert_eq!(
            marginal_micros(Duration::from_millis(5), Duration::from_millis(4), 10),
            0.0
        );
    }

    #[test]
    fn measurements_round_trip_through_json() {
        let m = Measurements {
            index: "high.kbi".into(),
            vectors: 1964,
            dim: 80,
            queries: 20_000,
            k: 8,
            nprobe: 1,
            per_query_us: 2.5,
            hop_ms: Some(10.0),
            audio_seconds: 6.0,
            render_seconds: 0.12,
        };
        assert_eq!(Measurements::from_json(&m.to_json()).unwrap(), m);
        assert!((m.real_time_factor() - 50.0).abs() < 1e-9);
        assert!((m.share_of_hop_percent().unwrap() - 0.025).abs() < 1e-12);
        assert!(m.headline().contains("50× real time"), "{}", m.headline());
        assert!(Measurements::from_json(&json!({"index": "x"})).is_err());
    }
}
