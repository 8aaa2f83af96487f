//! What the voice engine asks for each frame: "blend this feature vector with its neighbours".
//! The live runtime's audio side answers it in the plugin and in `knnblend render`;
//! [`IndexRetriever`] answers it from one fixed index (tests, offline tools).

use std::sync::Arc;

use crate::index::{
    typical_spacing, AnyIndex, AnySearcher, BlendOutcome, BlendParams, QueryExpansion, MAX_K,
};
use crate::live::AudioEngine;

/// Per-frame retrieval, called from the audio thread: implementations must not allocate,
/// lock or block in any method.
pub trait Retriever: Send {
    /// Called once at the start of every audio block.
    fn begin_block(&mut self, active_slot: usize, crossfade_seconds: f32);
    /// RVC blend of `query` with its `k` nearest stored vectors at index rate `ratio`, into `out`
    /// (`out` = `query` when nothing can be retrieved).
    fn blend(&mut self, query: &[f32], k: usize, ratio: f32, out: &mut [f32]) -> BlendOutcome;
    /// Called once at the end of every audio block.
    fn end_block(&mut self);
    /// Query-side α expansion for the blends from now on (`None`: off). Called at every
    /// block; must only store the setting.
    fn set_query_expansion(&mut self, expansion: Option<QueryExpansion>);
    /// The serving voice's median f0, Hz, if its index records one (Match voice's target).
    fn voice_median_f0_hz(&self) -> Option<f32> {
        None
    }
    /// The serving voice's typical spacing ([`typical_spacing`]), if known: the blend's
    /// nearest distance over it is the match meter.
    fn typical_spacing(&self) -> Option<f32> {
        None
    }
}

/// A [`Retriever`] over one fixed index (or none: then every query is copied). Slots and
/// crossfades are ignored. n_probe is 1, as in RVC.
pub struct IndexRetriever {
    index: Option<Arc<AnyIndex>>,
    searcher: AnySearcher,
    expansion: Option<QueryExpansion>,
    median_f0: Option<f32>,
    spacing: Option<f32>,
}

impl IndexRetriever {
    /// Serves `index`, IVF-Flat or IVF-PQ (or copies queries when `None`).
    pub fn new(index: Option<Arc<AnyIndex>>) -> IndexRetriever {
        let dim = index.as_ref().map_or(1, |i| i.dim());
        let median_f0 = index
            .as_ref()
            .and_then(|i| i.metadata().voice_median_f0_hz())
            .map(|hz| hz as f32);
        let spacing = index.as_deref().and_then(typical_spacing);
        IndexRetriever {
            index,
            searcher: AnySearcher::new(dim, MAX_K, 1),
            expansion: None,
            median_f0,
            spacing,
        }
    }
}

impl Retriever for IndexRetriever {
    fn begin_block(&mut self, _active_slot: usize, _crossfade_seconds: f32) {}

    fn blend(&mut self, query: &[f32], k: usize, ratio: f32, out: &mut [f32]) -> BlendOutcome {
        match &self.index {
            Some(index) if index.dim() == query.len() => {
                let params = BlendParams {
                    expansion: self.expansion,
                    k,
                    nprobe: 1,
                    ratio,
                };
                self.searcher.blend(index, query, &params, out)
            }
            _ => {
                out.copy_from_slice(query);
                BlendOutcome::Empty
            }
        }
    }

    fn end_block(&mut self) {}

    fn set_query_expansion(&mut self, expansion: Option<QueryExpansion>) {
        self.expansion = expansion.map(QueryExpansion::sanitized);
    }

    fn voice_median_f0_hz(&self) -> Option<f32> {
        self.median_f0
    }

    fn typical_spacing(&self) -> Option<f32> {
        self.spacing
    }
}

/// The live runtime's audio side: slots, publications and crossfades.
impl Retriever for AudioEngine {
    #[inline]
    fn begin_block(&mut self, active_slot: usize, crossfade_seconds: f32) {
        AudioEngine::begin_block(self, active_slot, crossfade_seconds);
    }

    #[inline]
    fn blend(&mut self, query: &[f32], k: usize, ratio: f32, out: &mut [f32]) -> BlendOutcome {
        AudioEngine::blend(self, query, k, ratio, out)
    }

    #[inline]
    fn end_block(&mut self) {
        AudioEngine::end_block(self);
    }

    #[inline]
    fn set_query_expansion(&mut self, expansion: Option<QueryExpansion>) {
        AudioEngine::set_query_expansion(self, expansion);
    }

    #[inline]
    fn voice_median_f0_hz(&self) -> Option<f32> {
        AudioEngine::serving_median_f0_hz(self)
    }

    #[inline]
    fn typical_spacing(&self) -> Option<f32> {
        AudioEngine::serving_typical_spacing(self)
    }
}
