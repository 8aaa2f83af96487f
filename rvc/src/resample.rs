//! Fixed-ratio resampling of one mono block at a time (rubato's synchronous FFT resampler), in
//! 10 ms sub-chunks so its delay stays a few milliseconds.

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use crate::RvcError;

/// Resamples blocks of `block_in` samples at `rate_in` into blocks of `block_out` at
/// `rate_out`. Allocation-free after [`BlockResampler::new`].
pub struct BlockResampler {
    inner: Option<Fft<f32>>,
    block_in: usize,
    block_out: usize,
    delay: usize,
}

impl BlockResampler {
    /// A resampler for blocks of `block_in` samples; `block_in · rate_out / rate_in` must be a
    /// whole number, and so must `block_in` in 10 ms units of `rate_in`.
    pub fn new(rate_in: u32, rate_out: u32, block_in: usize) -> Result<Self, RvcError> {
        let (rin, rout) = (rate_in as usize, rate_out as usize);
        if rin == 0 || rout == 0 || block_in == 0 || !(block_in * rout).is_multiple_of(rin) {
            return Err(RvcError::Other(format!(
                "cannot resample blocks of {block_in} samples from {rate_in} Hz to {rate_out} Hz \
                 in whole samples"
            )));
        }
        let block_out = block_in * rout / rin;
        if rin == rout {
            return Ok(BlockResampler {
                inner: None,
                block_in,
                block_out,
                delay: 0,
            });
        }
        let gcd = gcd(rin, rout);
        let unit = rin / gcd;
        // Sub-chunks of about 10 ms (at least the ratio's smallest whole unit).
        let sub = unit * (rin / 100).div_ceil(unit).max(1);
        let sub_chunks = (block_in / sub).max(1);
        let inner = Fft::<f32>::new_custom(
            rin,
            rout,
            block_in,
            sub_chunks,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| RvcError::Other(format!("resampler {rate_in} → {rate_out} Hz: {e}")))?;
        if inner.input_frames_next() != block_in || inner.output_frames_next() != block_out {
            return Err(RvcError::Other(format!(
                "resampler {rate_in} → {rate_out} Hz takes {} and gives {} samples, not \
                 {block_in} and {block_out}",
                inner.input_frames_next(),
                inner.output_frames_next()
            )));
        }
        let delay = inner.output_delay();
        Ok(BlockResampler {
            inner: Some(inner),
            block_in,
            block_out,
            delay,
        })
    }

    /// Input samples per block.
    pub fn block_in(&self) -> usize {
        self.block_in
    }

    /// Output samples per block.
    pub fn block_out(&self) -> usize {
        self.block_out
    }

    /// The resampler's delay in output samples.
    pub fn delay(&self) -> usize {
        self.delay
    }

    /// Resamples one block: `input` holds `block_in` samples, `output` receives `block_out`.
    pub fn process(&mut self, input: &[f32], output: &mut [f32]) {
        let (bi, bo) = (self.block_in, self.block_out);
        let Some(inner) = self.inner.as_mut() else {
            output[..bo].copy_from_slice(&input[..bi]);
            return;
        };
        let done = InterleavedSlice::new(&input[..bi], 1, bi).and_then(|src| {
            InterleavedSlice::new_mut(&mut output[..bo], 1, bo)
                .map(|mut dst| inner.process_into_buffer(&src, &mut dst, None).is_ok())
        });
        if !matches!(done, Ok(true)) {
            output[..bo].fill(0.0);
        }
    }

    /// Forgets the history (the stream restarted).
    pub fn reset(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            inner.reset();
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
