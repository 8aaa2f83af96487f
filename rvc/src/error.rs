//! Errors of the RVC path: each says what is wrong and what to do about it.

/// What can go wrong while loading or running the RVC path.
#[derive(Debug, thiserror::Error)]
pub enum RvcError {
    /// Anything not yet given its own variant.
    #[error("{0}")]
    Other(String),
}
