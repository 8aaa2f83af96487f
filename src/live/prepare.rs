//! Loading an index for live use (control side only): read what the file declares and run the
//! cheap checks on it, then open, validate everything, prefault, try to lock in RAM, run the
//! configured validator.
//!
//! The header comes first ([`format::read_header`]: the first page, and a `.kbi`'s metadata
//! section): the width limit and the configured
//! [`header_validator`](super::LiveConfig::header_validator) refuse a file of the wrong
//! dimension, metric or features before anything large is read, verified or allocated. What the
//! loaded index declares must then be what the header said, or the file changed meanwhile
//! ([`LoadError::Changed`]).
//!
//! A `.kbi` is memory-mapped with `MAP_POPULATE`, every section checksum is verified (which
//! reads every byte through the mapping), the kernel is told every page will be needed, every
//! page is touched once more, and `mlock` is attempted. A faiss file is read and converted into
//! owned, page-aligned memory, then touched and locked the same way. The file's identity, size
//! and modification time are compared before and after, so a file another program is still
//! writing is refused with [`LoadError::Changed`] instead of being published half-written.
//!
//! On Linux the loader also holds a read *lease* (`fcntl(F_SETLEASE, F_RDLCK)`, through
//! [`platform::take_read_lease`]) on the file while it maps and reads it. Taking it fails while
//! any program has the file open for writing ([`LoadError::Busy`]), and while it is held,
//! another program's `open` for writing or `truncate` of the file waits until it is released,
//! so the file cannot be truncated under the loader's reads (which would raise `SIGBUS`). If a
//! writer started waiting during the load, the load is abandoned ([`LoadError::Busy`]) and the
//! writer proceeds. The lease is released when the load ends (see the module documentation of
//! [`live`](super) for the hazard that remains while an index is served). Where leases are not
//! available (a file owned by another user without `CAP_LEASE`, file systems without lease
//! support, and every OS but Linux: [`platform::READ_LEASES`]) loading proceeds without one.
//!
//! On the other OSes the mapping has no `MAP_POPULATE` (the checksum pass and the page walk
//! read every page in anyway), and `mlock` is the OS's own page lock or nothing. Every OS call
//! here (mapping, advice, locking, leases, file identity) goes through [`platform`], which says
//! what each OS does.

use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::config::{HeaderValidator, LiveConfig, Validator};
use super::entry::{display_name, Entry, PreparedIndex};
use super::LoadError;
use crate::format::{self, IndexHeader};
use crate::index::{AnyIndex, OpenOptions, MAX_K, PQ_MAX_BASE_K};
use crate::platform::{self, LeaseError, ReadLease};

/// The checks every index passes before it may be published.
#[derive(Clone)]
pub(crate) struct Checks {
    pub(crate) max_dim: usize,
    pub(crate) header_validator: Option<HeaderValidator>,
    pub(crate) validator: Option<Validator>,
    pub(crate) alive: Arc<AtomicUsize>,
}

impl Checks {
    /// The checks `config` asks for (`config` already sanitized), counting live indexes in
    /// `alive`.
    pub(crate) fn new(config: &LiveConfig, alive: Arc<AtomicUsize>) -> Checks {
        Checks {
            max_dim: config.max_dim,
            header_validator: config.header_validator.clone(),
            validator: config.validator.clone(),
            alive,
        }
    }
}

/// What identifies one version of a file.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    /// Device and inode, where the platform has them ([`platform::file_identity`]).
    id: Option<(u64, u64)>,
    len: u64,
    modified: Option<std::time::SystemTime>,
}

fn stamp(path: &Path) -> Result<(Stamp, bool), LoadError> {
    let m = std::fs::metadata(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((
        Stamp {
            id: platform::file_identity(&m),
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
    let lease = take_lease(path, before.id)?;
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
    // The cheap checks, on what the file declares: nothing large read or allocated yet.
    let header = format::read_header(path).map_err(|e| LoadError::from_format(path, e))?;
    check_header(&header, path, checks)?;
    let index = AnyIndex::open_with(
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
    // A different size or time: someone wrote it in place. A different file: it was replaced by
    // a rename meanwhile, so what was mapped may not be the file the lease protected. A
    // different declaration: the header that was checked is not the index that was loaded.
    if before != after || index.header() != header {
        return Err(LoadError::Changed {
            path: path.to_path_buf(),
        });
    }
    let prepared = publishable(index, display_name(path), path, path.to_path_buf(), checks)?;
    if let Some(lease) = lease {
        if !lease.intact() {
            // A writer is waiting for the lease: unmap first, then let it proceed (the lease
            // is released on return).
            drop(prepared);
            return Err(LoadError::Busy {
                path: path.to_path_buf(),
            });
        }
    }
    progress(total, total);
    Ok(prepared)
}

/// Checks an index already in memory (its header, then the validator), prefaults and locks
/// it, and wraps it for publishing.
pub(crate) fn finish(
    index: AnyIndex,
    name: String,
    path: &Path,
    checks: &Checks,
) -> Result<PreparedIndex, LoadError> {
    let label = if path.as_os_str().is_empty() {
        Path::new(&name).to_path_buf()
    } else {
        path.to_path_buf()
    };
    check_header(&index.header(), &label, checks)?;
    publishable(index, name, path, label, checks)
}

/// The width limit and the header validator, on what an index declares; `label` names it in
/// errors.
fn check_header(header: &IndexHeader, label: &Path, checks: &Checks) -> Result<(), LoadError> {
    if header.dim > checks.max_dim {
        return Err(LoadError::TooWide {
            path: label.to_path_buf(),
            dim: header.dim,
            max_dim: checks.max_dim,
        });
    }
    if let Some(validate) = &checks.header_validator {
        validate(header).map_err(|reason| LoadError::Rejected {
            path: label.to_path_buf(),
            reason,
        })?;
    }
    Ok(())
}

/// Runs the validator on an index whose header passed, prefaults and locks it, and wraps it.
fn publishable(
    mut index: AnyIndex,
    name: String,
    path: &Path,
    label: std::path::PathBuf,
    checks: &Checks,
) -> Result<PreparedIndex, LoadError> {
    if let AnyIndex::Pq(pq) = &index {
        // The audio side's searcher re-ranks at most PQ_MAX_BASE_K candidates per frame.
        if pq.base_k(MAX_K) > PQ_MAX_BASE_K {
            return Err(LoadError::Rejected {
                path: label,
                reason: format!(
                    "its k_factor {} asks for {} candidates per frame for k = {MAX_K}; knnblend re-ranks at most {PQ_MAX_BASE_K} (k_factor up to {})",
                    pq.k_factor().unwrap_or(1.0),
                    pq.base_k(MAX_K),
                    PQ_MAX_BASE_K / MAX_K
                ),
            });
        }
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

/// Takes a read lease on `path` if it is still the file `id` ([`platform::take_read_lease`]),
/// so other programs cannot truncate it while it is being loaded. `Ok(None)` where leases are
/// not available; [`LoadError::Busy`] when the file is open for writing.
fn take_lease(path: &Path, id: Option<(u64, u64)>) -> Result<Option<ReadLease>, LoadError> {
    if !platform::READ_LEASES {
        return Ok(None);
    }
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let m = file.metadata().map_err(io)?;
    if platform::file_identity(&m) != id {
        return Err(LoadError::Changed {
            path: path.to_path_buf(),
        });
    }
    match platform::take_read_lease(file) {
        Ok(lease) => Ok(Some(lease)),
        Err(LeaseError::Busy) => Err(LoadError::Busy {
            path: path.to_path_buf(),
        }),
        // Not permitted or not supported here: no protection.
        Err(LeaseError::Unsupported) => Ok(None),
    }
}
