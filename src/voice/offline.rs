//! Running the realtime path over whole buffers, block by block, exactly as a host would
//! (used by `knnblend render` and the tests).

use super::engine::{BlockParams, VoiceEngine};
use super::retriever::Retriever;

/// Block parameters over time: `initial` from sample 0, each change from its sample position
/// on (positions in input samples, ascending). Blocks are cut at every change, so a change
/// lands on its exact sample whatever the block size.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Parameters from the start.
    pub initial: BlockParams,
    /// `(position, parameters)` changes.
    pub changes: Vec<(u64, BlockParams)>,
}

impl Schedule {
    /// The same parameters throughout.
    pub fn constant(params: BlockParams) -> Schedule {
        Schedule {
            initial: params,
            changes: Vec::new(),
        }
    }
}

/// Processes `input` (one `Vec` per channel, equally long) through `engine` in blocks whose
/// sizes `block_size` yields (each at least 1), then `latency_samples` more of silence, and
/// returns the output aligned with the input (the latency removed), as long as the input.
/// `before_change(i)` runs just before the block where change `i` takes effect.
pub fn render_buffers<R: Retriever>(
    engine: &mut VoiceEngine<R>,
    input: &[Vec<f32>],
    schedule: &Schedule,
    block_size: &mut dyn FnMut() -> usize,
    before_change: &mut dyn FnMut(usize),
) -> Vec<Vec<f32>> {
    let len = input.iter().map(|c| c.len()).min().unwrap_or(0);
    let latency = engine.latency_samples() as usize;
    let total = len + latency;
    let mut buffers: Vec<Vec<f32>> = input
        .iter()
        .map(|c| {
            let mut b = c[..len].to_vec();
            b.resize(total, 0.0);
            b
        })
        .collect();
    let mut params = schedule.initial;
    let mut next_change = 0;
    let mut pos = 0usize;
    while pos < total {
        while next_change < schedule.changes.len()
            && schedule.changes[next_change].0 as usize <= pos
        {
            before_change(next_change);
            params = schedule.changes[next_change].1;
            next_change += 1;
        }
        let mut n = block_size().max(1).min(total - pos);
        if let Some(&(at, _)) = schedule.changes.get(next_change) {
            n = n.min(at as usize - pos);
        }
        let mut slices: Vec<&mut [f32]> =
            buffers.iter_mut().map(|b| &mut b[pos..pos + n]).collect();
        engine.process(&mut slices, &params);
        pos += n;
    }
    for b in &mut buffers {
        b.drain(..latency.min(b.len()));
        b.truncate(len);
    }
    buffers
}
