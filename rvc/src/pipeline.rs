//! The RVC conversion of one block, as the stream's worker runs it ([`RvcConverter`], a
//! [`Converter`]).
//!
//! Per block of `B` host-rate samples, following RVC's realtime framing ([`BlockFraming`] at the
//! model's rate):
//!
//! 1. resample host → 16 kHz and append to the 16 kHz conversion window (extra context +
//!    crossfade + SOLA search + block);
//! 2. ContentVec over the window (50 frames/s);
//! 3. retrieval: the frames from `blend_from` on are blended with their `k` nearest stored
//!    frames by knnblend's block search through the `live` runtime's audio side (so an index
//!    swap crossfades), RVC's `1/d²` weights, Blend = `index_rate`;
//! 4. ×2 to 100 frames/s, protect (unvoiced frames keep the un-blended features);
//! 5. f0 (RMVPE when given, else the built-in YIN tracker) over the window's tail, shifted by
//!    Pitch, into RVC's pitch cache (`pitchf`, coarse `pitch`);
//! 6. the synthesizer on all `N` frames; the last `sola_buffer + sola_search + block` samples
//!    at the model's rate are kept;
//! 7. SOLA against the previous block's tail;
//! 8. resample model rate → host rate.
//!
//! Everything is sized when the converter is made; a block allocates nothing of ours (ONNX
//! Runtime allocates inside its sessions). None of it runs on the audio thread.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use knnblend::index::QueryExpansion;
use knnblend::live::AudioEngine;
use knnblend::voice::pitch::PitchSpec;

use crate::f0::{extractor_frames, BuiltinF0, F0Method, PitchCache};
use crate::frames::{protect_applies, upsample2_protect, BlockFraming};
use crate::models::{ContentVec, Rmvpe, Synthesizer};
use crate::resample::BlockResampler;
use crate::sola::Sola;
use crate::stream::Converter;
use crate::RvcError;

/// The models of one RVC voice: ContentVec (shared by every voice in practice), the
/// synthesizer, and optionally RMVPE.
pub struct VoiceModels {
    /// The feature extractor (`vec-768-layer-12.onnx` or `vec-256-layer-9.onnx`).
    pub contentvec: ContentVec,
    /// The RVC synthesizer.
    pub synth: Synthesizer,
    /// RMVPE for f0; without it the built-in tracker runs.
    pub rmvpe: Option<Rmvpe>,
}

/// Block timing, fixed for a converter's life (a change makes a new converter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Framing {
    /// The host's sample rate (a multiple of 100 Hz).
    pub host_rate: u32,
    /// Conversion block, seconds (rounded to 10 ms).
    pub block_seconds: f64,
    /// SOLA crossfade between blocks, seconds (rounded to 10 ms).
    pub crossfade_seconds: f64,
    /// Extra left context ContentVec and the synthesizer see, seconds (rounded to 10 ms).
    pub extra_seconds: f64,
}

impl Default for Framing {
    /// RVC's realtime defaults: 0.25 s blocks, 0.05 s crossfade, 2.5 s extra context.
    fn default() -> Self {
        Framing {
            host_rate: 48_000,
            block_seconds: 0.25,
            crossfade_seconds: 0.05,
            extra_seconds: 2.5,
        }
    }
}

/// The knobs the worker reads at every block (relaxed atomics; any thread may set them).
#[derive(Debug)]
pub struct Controls {
    pitch: AtomicU32,
    index_rate: AtomicU32,
    protect: AtomicU32,
    k: AtomicU32,
    speaker: AtomicU32,
    active_slot: AtomicU32,
    crossfade_bits: AtomicU32,
    /// Query expansion's neighbours (0: off) and α bits.
    expand_k: AtomicU32,
    expand_alpha: AtomicU32,
}

impl Default for Controls {
    fn default() -> Self {
        let c = Controls {
            pitch: AtomicU32::new(0),
            index_rate: AtomicU32::new(0),
            protect: AtomicU32::new(0),
            k: AtomicU32::new(8),
            speaker: AtomicU32::new(0),
            active_slot: AtomicU32::new(0),
            crossfade_bits: AtomicU32::new(0),
            expand_k: AtomicU32::new(0),
            expand_alpha: AtomicU32::new(0),
        };
        c.set_index_rate(0.75);
        c.set_protect(0.33);
        c.set_index_crossfade_seconds(0.05);
        c
    }
}

fn f(a: &AtomicU32) -> f32 {
    f32::from_bits(a.load(Relaxed))
}

impl Controls {
    /// Pitch shift in semitones (RVC's `f0_up_key`), clamped to ±24.
    pub fn set_pitch(&self, semitones: f32) {
        let v = if semitones.is_finite() {
            semitones.clamp(-24.0, 24.0)
        } else {
            0.0
        };
        self.pitch.store(v.to_bits(), Relaxed);
    }
    /// Blend (RVC's `index_rate`), clamped to 0–1.
    pub fn set_index_rate(&self, rate: f32) {
        let v = if rate.is_finite() {
            rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.index_rate.store(v.to_bits(), Relaxed);
    }
    /// Protect (RVC's `protect`), clamped to 0–0.5 (0.5 turns it off).
    pub fn set_protect(&self, protect: f32) {
        let v = if protect.is_finite() {
            protect.clamp(0.0, 0.5)
        } else {
            0.5
        };
        self.protect.store(v.to_bits(), Relaxed);
    }
    /// Neighbours per frame (1–`MAX_K`).
    pub fn set_k(&self, k: usize) {
        self.k
            .store(k.clamp(1, knnblend::index::MAX_K) as u32, Relaxed);
    }
    /// Query-side α expansion of the retrieval (`None`: off, RVC's own behaviour).
    pub fn set_query_expansion(&self, expansion: Option<QueryExpansion>) {
        match expansion.map(QueryExpansion::sanitized) {
            Some(e) => {
                self.expand_alpha.store(e.alpha.to_bits(), Relaxed);
                self.expand_k.store(e.k as u32, Relaxed);
            }
            None => self.expand_k.store(0, Relaxed),
        }
    }
    /// The current query expansion.
    pub fn query_expansion(&self) -> Option<QueryExpansion> {
        match self.expand_k.load(Relaxed) {
            0 => None,
            k => Some(QueryExpansion {
                k: k as usize,
                alpha: f(&self.expand_alpha),
            }),
        }
    }
    /// Speaker id (`ds`) of multi-speaker models.
    pub fn set_speaker(&self, id: u32) {
        self.speaker.store(id, Relaxed);
    }
    /// The `live` slot whose index serves retrieval.
    pub fn set_active_slot(&self, slot: usize) {
        self.active_slot.store(slot as u32, Relaxed);
    }
    /// Crossfade time when the serving index changes, seconds.
    pub fn set_index_crossfade_seconds(&self, seconds: f32) {
        let v = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        self.crossfade_bits.store(v.to_bits(), Relaxed);
    }
    /// The current pitch shift, semitones.
    pub fn pitch(&self) -> f32 {
        f(&self.pitch)
    }
    /// The current Blend.
    pub fn index_rate(&self) -> f32 {
        f(&self.index_rate)
    }
    /// The current Protect.
    pub fn protect(&self) -> f32 {
        f(&self.protect)
    }
}

/// Worker time per stage of the last block, ns (relaxed atomics).
#[derive(Debug, Default)]
pub struct StageTimes {
    /// Resampling, both directions.
    pub resample_ns: AtomicU64,
    /// ContentVec.
    pub contentvec_ns: AtomicU64,
    /// Retrieval (knnblend's block search and blend).
    pub retrieval_ns: AtomicU64,
    /// f0 extraction.
    pub f0_ns: AtomicU64,
    /// The synthesizer.
    pub synth_ns: AtomicU64,
    /// SOLA.
    pub sola_ns: AtomicU64,
    /// Blocks that failed in a model (their output is silence; the count says how many).
    pub model_errors: AtomicU64,
}

/// The RVC conversion of one voice as a [`Converter`] (see the [module docs](self)).
pub struct RvcConverter {
    models: VoiceModels,
    retrieval: AudioEngine,
    controls: Arc<Controls>,
    times: Arc<StageTimes>,
    framing: BlockFraming,
    method: F0Method,
    dim: usize,
    has_f0: bool,
    // rates and sizes
    host_block: usize,
    model_block: usize,
    window16: Vec<f32>,
    block16: Vec<f32>,
    to_16k: BlockResampler,
    to_host: BlockResampler,
    // features
    feats: Vec<f32>,
    blended: Vec<f32>,
    phone: Vec<f32>,
    // pitch
    builtin: Option<BuiltinF0>,
    f0_window: usize,
    f0_frames: Vec<f32>,
    cache: PitchCache,
    // synthesis
    rnd: Vec<f32>,
    rng: u64,
    synth_out: Vec<f32>,
    sola: Sola,
    model_out: Vec<f32>,
    delay: usize,
}

impl RvcConverter {
    /// A converter for `models` at `framing`, retrieving through `retrieval` (the audio side of
    /// a `live` runtime whose indexes hold this ContentVec's features).
    pub fn new(
        models: VoiceModels,
        retrieval: AudioEngine,
        framing: Framing,
        controls: Arc<Controls>,
        seed: u64,
    ) -> Result<Self, RvcError> {
        let info = models.synth.info();
        let dim = models.contentvec.dim();
        crate::voice::check_widths(dim, models.contentvec.path(), &models.synth)?;
        if framing.host_rate == 0 || !framing.host_rate.is_multiple_of(100) {
            return Err(RvcError::Other(format!(
                "the RVC path needs a host sample rate that is a multiple of 100 Hz, got {}",
                framing.host_rate
            )));
        }
        let bf = BlockFraming::rvc(
            info.sample_rate,
            framing.block_seconds,
            framing.crossfade_seconds,
            framing.extra_seconds,
        )
        .map_err(RvcError::Other)?;
        let blocks_10ms = bf.block / bf.zc;
        let host_block = blocks_10ms * framing.host_rate as usize / 100;
        let method = if models.rmvpe.is_some() {
            F0Method::Rmvpe
        } else {
            F0Method::Builtin
        };
        let f0_window = bf.f0_window(method);
        let builtin = match method {
            F0Method::Builtin => Some(
                BuiltinF0::with_spec(&PitchSpec::default(), f0_window, true)
                    .map_err(RvcError::Other)?,
            ),
            F0Method::Rmvpe => None,
        };
        let n = bf.frames();
        let to_16k = BlockResampler::new(framing.host_rate, 16_000, host_block)?;
        let to_host = BlockResampler::new(info.sample_rate, framing.host_rate, bf.block)?;
        let lag = lag(framing.host_rate, &bf, &to_16k, &to_host);
        // The live runtime advances an index crossfade by one frame period per blended frame;
        // a block blends `contentvec_frames − blend_from` frames (they overlap the previous
        // block's), so a frame period of block / that count makes the crossfade take the time
        // it is set to.
        let mut retrieval = retrieval;
        let blended = bf
            .contentvec_frames()
            .saturating_sub(bf.blend_from())
            .max(1);
        retrieval.set_frame_period_seconds(
            (bf.block as f64 / bf.sample_rate as f64 / blended as f64) as f32,
        );
        Ok(RvcConverter {
            retrieval,
            controls,
            times: Arc::new(StageTimes::default()),
            framing: bf,
            method,
            dim,
            has_f0: info.f0,
            host_block,
            model_block: bf.block,
            window16: vec![0.0; bf.window_16k()],
            block16: vec![0.0; bf.block_16k()],
            to_16k,
            to_host,
            feats: Vec::with_capacity(bf.contentvec_frames() * dim),
            blended: vec![0.0; bf.contentvec_frames() * dim],
            phone: vec![0.0; n * dim],
            builtin,
            f0_window,
            f0_frames: vec![0.0; extractor_frames(f0_window)],
            cache: PitchCache::new(n),
            rnd: vec![0.0; Synthesizer::NOISE_CHANNELS * n],
            rng: seed | 1,
            synth_out: Vec::with_capacity(n * info.hop),
            sola: Sola::new(bf.sola_buffer, bf.sola_search, bf.block),
            model_out: vec![0.0; bf.block],
            delay: lag,
            models,
        })
    }

    /// Host-rate samples per block (the stream's block).
    pub fn host_block(&self) -> usize {
        self.host_block
    }

    /// RVC's framing at the model's rate.
    pub fn framing(&self) -> &BlockFraming {
        &self.framing
    }

    /// Per-stage worker times of the last block.
    pub fn times(&self) -> &Arc<StageTimes> {
        &self.times
    }

    /// The features the synthesizer got for the last block (`N × dim`, frame-major).
    pub fn last_phone(&self) -> &[f32] {
        &self.phone
    }

    /// The `pitchf` the synthesizer got for the last block (`N` frames, Hz).
    pub fn last_pitchf(&self) -> &[f32] {
        self.cache.hz()
    }

    /// The 16 kHz conversion window of the last block.
    pub fn last_window_16k(&self) -> &[f32] {
        &self.window16
    }

    /// Which f0 extractor runs.
    pub fn f0_method(&self) -> F0Method {
        self.method
    }

    /// Standard normal noise (xorshift64* and Box–Muller), for `rnd`.
    fn fill_noise(&mut self) {
        let mut s = self.rng;
        let mut next = || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        for pair in self.rnd.chunks_mut(2) {
            let (u, v) = (next(), next());
            let r = (-2.0 * u.ln()).sqrt();
            let t = std::f64::consts::TAU * v;
            pair[0] = (r * t.cos()) as f32;
            if pair.len() > 1 {
                pair[1] = (r * t.sin()) as f32;
            }
        }
        self.rng = s;
    }

    fn run(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), RvcError> {
        let bf = self.framing;
        let t = Instant::now();
        // 1. host → 16 kHz, into the window.
        self.to_16k.process(input, &mut self.block16);
        let b16 = self.block16.len();
        self.window16.copy_within(b16.., 0);
        let keep = self.window16.len() - b16;
        self.window16[keep..].copy_from_slice(&self.block16);
        let mut resample_ns = t.elapsed().as_nanos() as u64;

        // 2. ContentVec.
        let t = Instant::now();
        let frames = self
            .models
            .contentvec
            .run(&self.window16, &mut self.feats)?;
        self.times
            .contentvec_ns
            .store(t.elapsed().as_nanos() as u64, Relaxed);

        // 3. Retrieval on the frames from `blend_from` on (RVC realtime leaves the extra
        //    context's frames as they are).
        let t = Instant::now();
        let dim = self.dim;
        let used = frames * dim;
        self.blended[..used].copy_from_slice(&self.feats[..used]);
        let from = bf.blend_from().min(frames) * dim;
        let c = self.controls.clone();
        let rate = c.index_rate();
        self.retrieval.begin_block(
            c.active_slot.load(Relaxed) as usize,
            f32::from_bits(c.crossfade_bits.load(Relaxed)),
        );
        self.retrieval.set_query_expansion(c.query_expansion());
        if rate > 0.0 {
            self.retrieval.blend_block(
                &self.feats[from..used],
                dim,
                c.k.load(Relaxed) as usize,
                rate,
                &mut self.blended[from..used],
            );
        }
        self.retrieval.end_block();
        self.times
            .retrieval_ns
            .store(t.elapsed().as_nanos() as u64, Relaxed);

        // 5 (before 4, which needs pitchf). f0 over the window's tail, into the pitch cache.
        let t = Instant::now();
        let tail = &self.window16[self.window16.len() - self.f0_window..];
        let extracted = match (&mut self.models.rmvpe, &mut self.builtin) {
            (Some(rmvpe), _) => {
                rmvpe.run(tail, Rmvpe::THRESHOLD, &mut self.synth_out)?;
                let n = self.synth_out.len().min(self.f0_frames.len());
                self.f0_frames[..n].copy_from_slice(&self.synth_out[..n]);
                n
            }
            (None, Some(builtin)) => builtin.process(tail, &mut self.f0_frames),
            (None, None) => 0,
        };
        self.cache
            .update(bf.block_frames(), &self.f0_frames[..extracted], c.pitch());
        self.times
            .f0_ns
            .store(t.elapsed().as_nanos() as u64, Relaxed);

        // 4. ×2 and protect.
        let protect = c.protect();
        let protect = if protect_applies(protect, self.has_f0) {
            protect
        } else {
            1.0
        };
        upsample2_protect(
            &self.blended[..used],
            &self.feats[..used],
            dim,
            self.cache.hz(),
            protect,
            &mut self.phone,
        );

        // 6. The synthesizer.
        let t = Instant::now();
        self.fill_noise();
        let sid = c.speaker.load(Relaxed) as i64;
        let produced = self.models.synth.run(
            &self.phone,
            self.cache.coarse(),
            self.cache.hz(),
            sid,
            &self.rnd,
            &mut self.synth_out,
        )?;
        self.times
            .synth_ns
            .store(t.elapsed().as_nanos() as u64, Relaxed);

        // 7. SOLA on the returned part.
        let t = Instant::now();
        let zc = bf.zc;
        let want = bf.sola_input();
        let end = if bf.returns_the_end() {
            produced
        } else {
            ((bf.skip_head() + bf.return_frames()) * zc).min(produced)
        };
        if end < want {
            return Err(RvcError::Other(format!(
                "the synthesizer returned {produced} samples, fewer than the {want} a block needs"
            )));
        }
        self.sola
            .process(&self.synth_out[end - want..end], &mut self.model_out);
        self.times
            .sola_ns
            .store(t.elapsed().as_nanos() as u64, Relaxed);

        // 8. Model rate → host rate.
        let t = Instant::now();
        self.to_host.process(&self.model_out, output);
        resample_ns += t.elapsed().as_nanos() as u64;
        self.times.resample_ns.store(resample_ns, Relaxed);
        Ok(())
    }
}

impl Converter for RvcConverter {
    fn convert(&mut self, input: &[f32], output: &mut [f32]) {
        if self.run(input, output).is_err() {
            // A model failed on this block: no conversion (the audio side crossfades to the
            // dry signal for it), counted.
            output.fill(f32::NAN);
            self.times.model_errors.fetch_add(1, Relaxed);
        }
    }

    fn delay(&self) -> usize {
        self.delay
    }

    fn reset(&mut self) {
        self.window16.fill(0.0);
        self.cache.reset();
        self.sola.reset();
        self.to_16k.reset();
        self.to_host.reset();
    }
}

/// The converted block lags its input by the resamplers' delays and by SOLA's look-back
/// (crossfade + search, RVC's realtime latency), in host samples.
fn lag(
    host_rate: u32,
    bf: &BlockFraming,
    to_16k: &BlockResampler,
    to_host: &BlockResampler,
) -> usize {
    let host = host_rate as f64;
    let lag = to_16k.delay() as f64 * host / 16_000.0
        + (bf.crossfade + bf.sola_search) as f64 * host / bf.sample_rate as f64
        + to_host.delay() as f64;
    lag.round() as usize
}

/// What [`RvcConverter::delay`] and [`RvcConverter::host_block`] will be for a synthesizer at
/// `model_rate` with `framing`, without opening any model: `(delay, host_block)` in host
/// samples. Lets a host fix its latency before it knows which model it will run.
pub fn converter_timing(framing: &Framing, model_rate: u32) -> Result<(usize, usize), RvcError> {
    if framing.host_rate == 0 || !framing.host_rate.is_multiple_of(100) {
        return Err(RvcError::Other(format!(
            "the RVC path needs a host sample rate that is a multiple of 100 Hz, got {}",
            framing.host_rate
        )));
    }
    let bf = BlockFraming::rvc(
        model_rate,
        framing.block_seconds,
        framing.crossfade_seconds,
        framing.extra_seconds,
    )
    .map_err(RvcError::Other)?;
    let host_block = bf.block / bf.zc * framing.host_rate as usize / 100;
    let to_16k = BlockResampler::new(framing.host_rate, 16_000, host_block)?;
    let to_host = BlockResampler::new(model_rate, framing.host_rate, bf.block)?;
    Ok((lag(framing.host_rate, &bf, &to_16k, &to_host), host_block))
}

impl RvcConverter {
    /// The block the model produces per conversion, at its rate.
    pub fn model_block(&self) -> usize {
        self.model_block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_expansion_control_round_trips_and_turns_off() {
        let c = Controls::default();
        assert_eq!(c.query_expansion(), None, "off by default, as RVC");
        c.set_query_expansion(Some(QueryExpansion { k: 6, alpha: 2.5 }));
        assert_eq!(
            c.query_expansion(),
            Some(QueryExpansion { k: 6, alpha: 2.5 })
        );
        // Out-of-range settings are brought into range, not stored as given.
        c.set_query_expansion(Some(QueryExpansion {
            k: 0,
            alpha: f32::NAN,
        }));
        assert_eq!(
            c.query_expansion(),
            Some(QueryExpansion { k: 1, alpha: 0.0 })
        );
        c.set_query_expansion(None);
        assert_eq!(c.query_expansion(), None);
    }
}
