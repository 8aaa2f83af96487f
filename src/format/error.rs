//! Typed errors for everything read from or written to disk.

use std::path::PathBuf;

/// Which part of a file a problem was found in (used in messages).
pub type Section = &'static str;

/// An index file could not be read, validated or written.
///
/// Every variant carries enough context for a message a user can act on; none of them is
/// produced by a panic path: readers check every size and offset before they use it.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The operating system refused a read or write.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Neither a knnblend `.kbi` nor a faiss index.
    #[error("not an index file: it starts with {found:?}, neither a knnblend .kbi (\"KNNBLEND\") nor a faiss index")]
    UnknownFormat {
        /// The first bytes, shown printable.
        found: String,
    },
    /// The file ends before a field or section it declares.
    #[error(
        "file is truncated: {what} needs bytes up to offset {needed}, but the file has {actual}"
    )]
    Truncated {
        /// What was being read.
        what: String,
        /// The offset the read needed.
        needed: u64,
        /// The length of the data.
        actual: u64,
    },
    /// A `.kbi` written by a newer version of knnblend.
    #[error("unsupported .kbi format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// A header field is outside its valid range.
    #[error("invalid header field `{field}` = {value}: {reason}")]
    InvalidField {
        /// Field name.
        field: &'static str,
        /// Value found.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A section lies outside the file, is misaligned, overlaps another or has the wrong size.
    #[error("section `{section}` is malformed: {reason}")]
    BadSection {
        /// The section.
        section: Section,
        /// What is wrong.
        reason: String,
    },
    /// A stored checksum does not match the bytes: the file is corrupt.
    #[error("checksum mismatch in {section}: stored {stored:016x}, computed {computed:016x} (the file is corrupt)")]
    Checksum {
        /// Section (or `header`).
        section: Section,
        /// Stored value.
        stored: u64,
        /// Computed value.
        computed: u64,
    },
    /// Inverted-list offsets that are not monotonic or do not add up to the vector count.
    #[error("inverted lists are inconsistent: {0}")]
    BadLists(String),
    /// A stored vector component is NaN or infinite.
    #[error("{section} contains a non-finite value at element {index}")]
    NonFinite {
        /// Section.
        section: Section,
        /// Element index within the section.
        index: u64,
    },
    /// The metadata block is not valid JSON of the expected shape.
    #[error("metadata is not valid: {0}")]
    BadMetadata(String),
    /// A faiss index type other than IVF-Flat.
    #[error("unsupported faiss index type `{fourcc}` ({name}): knnblend reads IVF-Flat indexes (`IwFl`), such as RVC's added_IVF*_Flat_*.index")]
    UnsupportedFaissType {
        /// The four-character code.
        fourcc: String,
        /// A human name for it.
        name: &'static str,
    },
    /// A faiss IVF index that holds no vectors, such as RVC's `trained_*.index`.
    #[error("this faiss index holds no vectors (ntotal = 0): it is a trained-only index such as RVC's trained_*.index; load the added_*.index next to it instead")]
    TrainedOnly,
    /// Structural problem in a faiss file.
    #[error("malformed faiss index: {0}")]
    BadFaiss(String),
    /// Data given to the writer is inconsistent.
    #[error("cannot write index: {0}")]
    InvalidParts(String),
}

impl FormatError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FormatError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn field(
        field: &'static str,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        FormatError::InvalidField {
            field,
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn section(section: Section, reason: impl Into<String>) -> Self {
        FormatError::BadSection {
            section,
            reason: reason.into(),
        }
    }
}
