//! [`LiveConfig`]: how many slots, how wide the vectors may be, crossfade and frame timing,
//! and the checks every index must pass before it is published: an optional header validator,
//! run on what a file declares before anything large is read, and an optional validator, run
//! on the loaded index.

use std::sync::Arc;

use crate::format::IndexHeader;
use crate::index::AnyIndex;

/// Number of voice slots an instance can hold at most.
pub const MAX_SLOTS: usize = 8;

/// Checks an index before it is published; `Err` carries a message for the user (for example
/// "this index holds rvc-v2-768 features, the engine expects knnblend-logmel-v1"). It runs on
/// the loaded index, after the file was verified, prefaulted and its screening tables built:
/// for checks that need the vectors. A check of the dimension, metric or feature kind belongs
/// in a [`HeaderValidator`], which refuses a file before that work.
pub type Validator = Arc<dyn Fn(&AnyIndex) -> Result<(), String> + Send + Sync>;

/// Checks what an index declares ([`IndexHeader`]: kind, dimension, metric, list and vector
/// counts, file size, metadata such as the feature kind) before it is loaded; `Err` carries a
/// message for the user. For a file it runs right after the header is read
/// ([`read_header`](crate::format::read_header): the first page and a `.kbi`'s metadata), before
/// anything large is read, verified or allocated, so refusing a large index of the wrong
/// features costs microseconds; an index built in memory is checked by its
/// [`header`](AnyIndex::header) the same way.
pub type HeaderValidator = Arc<dyn Fn(&IndexHeader) -> Result<(), String> + Send + Sync>;

/// Settings of a live runtime, fixed when it is created with [`live`](super::live).
#[derive(Clone)]
pub struct LiveConfig {
    /// Number of slots, `1..=MAX_SLOTS` (clamped).
    pub slots: usize,
    /// Largest vector dimension an index may have (scratch space is sized for it; wider indexes
    /// are refused with [`LoadError::TooWide`](super::LoadError::TooWide)).
    pub max_dim: usize,
    /// Crossfade time used when [`AudioEngine::begin_block`](super::AudioEngine::begin_block) is
    /// given a negative or non-finite time (default 0.05 s).
    pub crossfade_seconds: f32,
    /// Time one [`AudioEngine::blend`](super::AudioEngine::blend) call advances a crossfade: the
    /// feature frame period (hop / sample rate). Default 0.01 s. Zero or less makes every switch
    /// instant.
    pub frame_period_seconds: f32,
    /// Run on what every index declares before it is loaded (off the audio thread): see
    /// [`HeaderValidator`]. Runs before [`validator`](Self::validator); a refusal is
    /// [`LoadError::Rejected`](super::LoadError::Rejected).
    pub header_validator: Option<HeaderValidator>,
    /// Run on every index before it is published (off the audio thread), once it is loaded.
    pub validator: Option<Validator>,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            slots: MAX_SLOTS,
            max_dim: 768,
            crossfade_seconds: 0.05,
            frame_period_seconds: 0.01,
            header_validator: None,
            validator: None,
        }
    }
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("slots", &self.slots)
            .field("max_dim", &self.max_dim)
            .field("crossfade_seconds", &self.crossfade_seconds)
            .field("frame_period_seconds", &self.frame_period_seconds)
            .field(
                "header_validator",
                &self.header_validator.as_ref().map(|_| "…"),
            )
            .field("validator", &self.validator.as_ref().map(|_| "…"))
            .finish()
    }
}

impl LiveConfig {
    /// The configuration with every field brought into its valid range.
    pub(crate) fn sanitized(mut self) -> LiveConfig {
        self.slots = self.slots.clamp(1, MAX_SLOTS);
        self.max_dim = self.max_dim.clamp(1, crate::format::MAX_DIM);
        if !(self.crossfade_seconds.is_finite() && self.crossfade_seconds >= 0.0) {
            self.crossfade_seconds = 0.05;
        }
        if !self.frame_period_seconds.is_finite() {
            self.frame_period_seconds = 0.0;
        }
        self
    }
}
