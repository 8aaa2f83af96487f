//! Loading an index for live use (control side only): open, validate everything, prefault,
//! try to lock in RAM, run the configured checks.
//!
//! A `.kbi` is memory-mapped with `MAP_POPULATE`, every section checksum is verified (which
//! reads every byte through the mapping), the kernel is told every page will be needed, every
//! page is touched once more, and `mlock` is attempted. A faiss file is read and converted into
//! owned, page-aligned memory, then touched and locked the same way. The file's identity, size
//! and modification time are compared before and after, so a file another program is still
//! writing is refused with [`LoadError::Changed`] instead of being published half-written.
//!
//! On Linux the loader also holds a read *lease* (`fcntl(F_SETLEASE, F_RDLCK)`) on the file while
//! it maps and reads it. Taking it fails while any program has the file open for writing
//! ([`LoadError::Busy`]), and while it is held, another program's `open` for writing or
//! `truncate` of the file waits until it is released, so the file cannot be truncated under the
//! loader's reads (which would raise `SIGBUS`). If a writer started waiting during the load, the
//! load is abandoned ([`LoadError::Busy`]) and the writer proceeds. The lease is released when
//! the load ends (see the module documentation of [`live`](super) for the hazard that remains
//! while an index is served). Where leases are not available (a file owned by another user
//! without `CAP_LEASE`, file systems without lease support) loading proceeds without one.

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
    let lease = lease::take(path, before.dev, before.ino)?;
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
    // A different size or time: someone wrote it in place. A different file: it was replaced by
    // a rename meanwhile, so what was mapped may not be the file the lease protected.
    if before != after {
        return Err(LoadError::Changed {
            path: path.to_path_buf(),
        });
    }
    let prepared = finish(index, display_name(path), path, checks)?;
    if let Some(lease) = lease {
        if !lease.intact() {
            // A writer is waiting for the lease: unmap first, then let it proceed.
            drop(prepared);
            drop(lease);
            return Err(LoadError::Busy {
                path: path.to_path_buf(),
            });
        }
    }
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

/// Read leases that keep other programs from truncating a file while it is being loaded.
mod lease {
    use std::path::Path;

    use super::LoadError;

    /// A read lease on an open file; dropping it closes the file and releases the lease.
    pub(crate) struct Lease {
        #[allow(dead_code)] // only read on platforms with leases
        file: std::fs::File,
    }

    // Leases, and F_SETSIG's asm-generic value, on Linux of these architectures.
    cfg_if::cfg_if! {
        if #[cfg(all(
            target_os = "linux",
            any(
                target_arch = "x86_64",
                target_arch = "x86",
                target_arch = "aarch64",
                target_arch = "arm",
                target_arch = "riscv64"
            )
        ))] {
            mod imp {
                use std::os::fd::AsRawFd;
                use std::os::unix::fs::MetadataExt;
                use std::path::Path;

                use super::super::LoadError;
                use super::Lease;

                /// `F_SETSIG` (asm-generic value; not exported by the libc crate for glibc
                /// targets).
                const F_SETSIG: libc::c_int = 10;

                /// Takes a read lease on `path` if it is still the file `(dev, ino)`.
                /// `Ok(None)` when leases are not available; [`LoadError::Busy`] when the file
                /// is open for writing.
                pub(crate) fn take(
                    path: &Path,
                    dev: u64,
                    ino: u64,
                ) -> Result<Option<Lease>, LoadError> {
                    let file = std::fs::File::open(path).map_err(|source| LoadError::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    let m = file.metadata().map_err(|source| LoadError::Io {
                        path: path.to_path_buf(),
                        source,
                    })?;
                    if (m.dev(), m.ino()) != (dev, ino) {
                        return Err(LoadError::Changed {
                            path: path.to_path_buf(),
                        });
                    }
                    let fd = file.as_raw_fd();
                    // A lease break notifies its owner with a signal (SIGIO, fatal by default).
                    // Make it SIGURG, which is ignored by default, then remove the owner so none
                    // is sent at all; the loader asks with F_GETLEASE instead.
                    // SAFETY: fcntl on a file descriptor we own; no pointers are passed.
                    unsafe {
                        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
                            return Ok(None);
                        }
                        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
                            let e = std::io::Error::last_os_error();
                            return match e.raw_os_error() {
                                Some(libc::EAGAIN) | Some(libc::EBUSY) => Err(LoadError::Busy {
                                    path: path.to_path_buf(),
                                }),
                                _ => Ok(None), // not permitted or not supported here: no protection
                            };
                        }
                        libc::fcntl(fd, libc::F_SETOWN, 0);
                    }
                    Ok(Some(Lease { file }))
                }

                impl Lease {
                    /// Whether the lease is still held with no writer waiting for it.
                    pub(crate) fn intact(&self) -> bool {
                        let fd = self.file.as_raw_fd();
                        // SAFETY: fcntl on a file descriptor we own.
                        unsafe { libc::fcntl(fd, libc::F_GETLEASE) == libc::F_RDLCK }
                    }
                }

                impl Drop for Lease {
                    fn drop(&mut self) {
                        let fd = self.file.as_raw_fd();
                        // SAFETY: fcntl on a file descriptor we own (closing would release it
                        // too).
                        unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
                    }
                }
            }
        } else {
            mod imp {
                use std::path::Path;

                use super::super::LoadError;
                use super::Lease;

                pub(crate) fn take(
                    _path: &Path,
                    _dev: u64,
                    _ino: u64,
                ) -> Result<Option<Lease>, LoadError> {
                    Ok(None)
                }

                impl Lease {
                    pub(crate) fn intact(&self) -> bool {
                        true
                    }
                }
            }
        }
    }

    /// See [`imp::take`].
    pub(crate) fn take(path: &Path, dev: u64, ino: u64) -> Result<Option<Lease>, LoadError> {
        imp::take(path, dev, ino)
    }
}
