//! Loading an index for live use (control side only): open, validate everything, prefault,
//! try to lock in RAM, run the configured checks.
//!
//! A `.kbi` is memory-mapped with `MAP_POPULATE`, every section checksum is verified (which
//! reads every byte through the mapping), the kernel is told every page will be needed, every
//! page is touched once more, and `mlock` is attempted. A faiss file is read and converted into
//! owned, page-aligned memory, then touched and locked the same way. The file's identity, size
//! and modification time are compared before and after, so a file another program is still
//! writing is refused with [`LoadError::Changed`] instead of being published half-written.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::config::Validator;
use super::entry::{display_name, Entry, PreparedIndex};
use super::LoadError;
use crate::index::{IvfIndex, OpenOptions};

/// The checks every index passes before it may be published.
#[derive(Clone)]
pub(crate) struct Checks {
    pub(crate) max_dim: usize,
    pub(crate) validator: Option<Validator>,
    pub(crate) alive: Arc<AtomicUsize>,
}

/// What identifies one version of a file.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Result<(Stamp, bool), LoadError> {
    let m = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    let (dev, ino) = {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    };
    #[cfg(not(unix))]
    let (dev, ino) = (0, 0);
    Ok((
        Stamp {
            dev,
            ino,
            len: m.len(),
            modified: m.modified().ok(),
        },
        m.is_file(),
    ))
}

/// Loads and checks `path`. `progress(done, total)` counts bytes validated and prefaulted.
pub(crate) fn prepare_file(
    path: &Path,
    checks: &Checks,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PreparedIndex, LoadError> {
    let (before, is_file) = stamp(path)?;
    if !is_file {
        return Err(LoadError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let total = before.len.max(1);
    progress(0, total);
    // Validation progress is scaled onto the file size and stops one byte short of the end:
    // the last step (prefault and lock) reports completion.
    let mut scaled = |done: u64, of: u64| {
        let d = if of == 0 {
            0
        } else {
            (done as u128 * total as u128 / of as u128) as u64
        };
        progress(d.min(total - 1), total);
    };
    let index = IvfIndex::open_with(
        path,
        OpenOptions {
            verify: true,
            prefault: true,
            mlock: false,
            progress: Some(&mut scaled),
        },
    )
    .map_err(|e| LoadError::from_format(path, e))?;
    let (after, _) = stamp(path)?;
    // Same file (not replaced by a rename meanwhile) but a different size or time: someone is
    // writing it in place. A rename in between is fine: we hold a complete older version.
    if before.dev == after.dev && before.ino == after.ino && before != after {
        return Err(LoadError::Changed {
            path: path.to_path_buf(),
        });
    }
    let prepared = finish(index, display_name(path), path, checks)?;
    progress(total, total);
    Ok(prepared)
}

/// Checks an index already in memory, prefaults and locks it, and wraps it for publishing.
pub(crate) fn finish(
    mut index: IvfIndex,
    name: String,
    path: &Path,
    checks: &Checks,
) -> Result<PreparedIndex, LoadError> {
    let label = if path.as_os_str().is_empty() {
        Path::new(&name).to_path_buf()
    } else {
        path.to_path_buf()
    };
    if index.dim() > checks.max_dim {
        return Err(LoadError::TooWide {
            path: label,
            dim: index.dim(),
            max_dim: checks.max_dim,
        });
    }
    if let Some(validate) = &checks.validator {
        validate(&index).map_err(|reason| LoadError::Rejected {
            path: label,
            reason,
        })?;
    }
    index.prefault();
    index.lock();
    Ok(PreparedIndex {
        entry: Arc::new(Entry::new(
            index,
            name,
            path.to_path_buf(),
            checks.alive.clone(),
        )),
    })
}
