//! Atomic file replacement: write a temporary file in the destination's directory, sync it,
//! rename it over the destination, sync the directory. Readers (and live memory maps of the
//! old file) never see a partial or truncated file; the old inode stays intact until its last
//! user lets go.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::platform;

/// Writes `path` atomically: `fill` writes the content into a temporary file next to it, which
/// then replaces `path` in one rename. The new file gets the permissions of the file it
/// replaces, or [`platform::new_file_permissions`] (`rw-r--r--` on Unix) when new.
pub fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".knnblend-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    let permissions = match std::fs::metadata(path) {
        Ok(m) => m.permissions(),
        Err(_) => platform::new_file_permissions(),
    };
    tmp.as_file().set_permissions(permissions)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Makes the rename durable (a no-op where the OS has no directory sync); failing here
    // leaves a consistent file either way.
    let _ = platform::sync_directory(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn replaces_whole_files_and_keeps_a_replaced_files_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomically(&p, |f| f.write_all(b"one")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The portable fallback cannot make a mode; it copies a temporary file's.
            let new = if platform::NAME == "portable" {
                platform::new_file_permissions().mode() & 0o777
            } else {
                0o644
            };
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                new
            );
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        write_atomically(&p, |f| f.write_all(b"two!")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        // A failed fill leaves the old file and no temporary behind.
        let r = write_atomically(&p, |_| Err(io::Error::other("disk full")));
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
