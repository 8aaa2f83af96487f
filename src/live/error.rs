//! [`LoadError`]: why an index could not be put into a slot, worded for the user.

use std::path::PathBuf;

use crate::format::FormatError;

/// An index could not be loaded or published. The slot's current index keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A slot number outside `0..slots`.
    #[error("there is no voice slot {slot}: slots are numbered 0 to {}", .slots.saturating_sub(1))]
    NoSuchSlot {
        /// The slot asked for.
        slot: usize,
        /// How many slots this instance has.
        slots: usize,
    },
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The path names a directory or something else that is not a regular file.
    #[error("{} is not a file: choose an index file (.kbi or a faiss .index)", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is not a valid index (wrong kind, truncated, corrupt, unsupported).
    #[error("{} is not a usable index: {source}", .path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// The file changed size or modification time while it was being loaded: another program
    /// is still writing it.
    #[error("{} changed while it was being loaded (another program is still writing it); load it again once it is complete", .path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// Another program has the file open for writing (or started writing it during the load).
    #[error("{} is being written by another program; load it again once it is complete", .path.display())]
    Busy {
        /// The file.
        path: PathBuf,
    },
    /// The vectors are wider than this instance's scratch space.
    #[error("{} holds vectors of dimension {dim}, more than the {max_dim} this instance was set up for", .path.display())]
    TooWide {
        /// The file (or the in-memory index's name).
        path: PathBuf,
        /// Its dimension.
        dim: usize,
        /// The configured maximum.
        max_dim: usize,
    },
    /// The configured header validator or validator (for example the voice engine's feature
    /// check) refused it.
    #[error("{} does not suit this voice engine: {reason}", .path.display())]
    Rejected {
        /// The file (or the in-memory index's name).
        path: PathBuf,
        /// The validator's explanation.
        reason: String,
    },
    /// The background loader is no longer running (the controller is shutting down).
    #[error("cannot load {}: the index loader has stopped", .path.display())]
    LoaderStopped {
        /// The file.
        path: PathBuf,
    },
}

impl LoadError {
    /// Wraps a format error, lifting I/O failures into [`LoadError::Io`].
    pub(crate) fn from_format(path: &std::path::Path, e: FormatError) -> LoadError {
        match e {
            FormatError::Io { path, source } => LoadError::Io { path, source },
            source => LoadError::Format {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_and_the_problem() {
        let e = LoadError::TooWide {
            path: "voices/alice.kbi".into(),
            dim: 1024,
            max_dim: 768,
        };
        assert_eq!(
            e.to_string(),
            "voices/alice.kbi holds vectors of dimension 1024, more than the 768 this instance was set up for"
        );
        let e = LoadError::NoSuchSlot { slot: 9, slots: 8 };
        assert_eq!(
            e.to_string(),
            "there is no voice slot 9: slots are numbered 0 to 7"
        );
        let io = FormatError::Io {
            path: "x.kbi".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let e = LoadError::from_format(std::path::Path::new("x.kbi"), io);
        assert!(matches!(e, LoadError::Io { .. }));
        assert!(e.to_string().starts_with("cannot read x.kbi: "), "{e}");
    }
}
