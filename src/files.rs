//! Files written so that a crash or a concurrent writer never leaves a torn one: atomic
//! replacement, create-once, an exclusive lock across processes, and the sweep of temporaries a
//! killed writer left behind. Used by the file stores and the local key file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// Prefix of every temporary file this crate writes (in the directory of its target).
const TEMPORARY_PREFIX: &str = ".tmp-";

/// A temporary file older than this belongs to a writer that died (a write takes milliseconds).
pub(crate) const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(15 * 60);

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. Readers see the old or the new contents, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = parent(path);
    let (temporary, mut file) = temporary_in(dir, mode)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    let renamed = written.and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&temporary);
        return Err(Error::from(e).with_context(format!("writing {}", path.display())));
    }
    sync_dir(dir);
    Ok(())
}

/// Creates `path` with `contents` only if it does not exist, atomically across processes:
/// readers see no file or the whole file. The contents go to a temporary file first, which is
/// then hard-linked to `path` (`link` fails if `path` exists). Says whether it created it.
pub(crate) fn create_once(path: &Path, contents: &[u8]) -> Result<bool> {
    let dir = parent(path);
    let (temporary, mut file) = temporary_in(dir, 0o644)?;
    let outcome = file
        .write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match outcome {
        Ok(()) => {
            sync_dir(dir);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::from(e).with_context(format!("creating {}", path.display()))),
    }
}

/// Takes the exclusive lock (`flock`, across processes) of `path`, creating it if needed; it is
/// held until the returned file is dropped.
pub(crate) fn lock_exclusive(path: &Path) -> Result<std::fs::File> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::from(e).with_context(format!("opening {}", path.display())))?;
    lock.lock()?;
    Ok(lock)
}

/// Removes the temporary files in `dir` older than `age`: what writers killed mid-write left.
/// Best effort (cleaning up never fails the caller's work): what cannot be read or removed is
/// left and logged. Returns how many it removed.
pub(crate) fn remove_stale_temporaries(dir: &Path, age: Duration) -> usize {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot look for stale temporary files");
            }
            return 0;
        }
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let modified = entry.metadata().and_then(|m| m.modified());
        let stale = modified.is_ok_and(|m| now.duration_since(m).is_ok_and(|d| d >= age));
        if !(is_temporary(&entry.file_name()) && stale) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::debug!(file = %entry.path().display(), error = %e, "cannot remove a stale temporary file")
            }
        }
    }
    removed
}

/// Whether `name` is one of this crate's temporary files: `.tmp-<hex>`, or `.<name>.<hex>.tmp`
/// as releases before 0.2 named those of create-once writes.
fn is_temporary(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| {
        n.starts_with(TEMPORARY_PREFIX)
            || (n.starts_with('.') && n.ends_with(".tmp") && n.len() > 5)
    })
}

/// Runs blocking file work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::transient(format!("file task failed: {e}")))?
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A new file `.tmp-<random>` in `dir`, created exclusively with `mode` (Unix).
fn temporary_in(dir: &Path, mode: u32) -> Result<(PathBuf, std::fs::File)> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    for _ in 0..16 {
        let mut suffix = [0u8; 8];
        getrandom::fill(&mut suffix)
            .map_err(|e| Error::transient(format!("OS random generator failed: {e}")))?;
        let path = dir.join(format!(
            "{TEMPORARY_PREFIX}{}",
            crate::ids::hex_encode(&suffix)
        ));
        match opts.open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(
                    Error::from(e).with_context(format!("creating a file in {}", dir.display()))
                );
            }
        }
    }
    Err(Error::transient("could not create a temporary file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_once_refuses_an_existing_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        assert!(create_once(&path, b"first").unwrap());
        assert!(!create_once(&path, b"second").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn only_old_temporaries_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(".tmp-old");
        let old_style = dir.path().join(".ab12.json.0011223344556677.tmp");
        let fresh = dir.path().join(".tmp-fresh");
        let data = dir.path().join("data");
        for p in [&old, &old_style, &fresh, &data] {
            std::fs::write(p, b"x").unwrap();
        }
        let past = SystemTime::now() - STALE_TEMPORARY_AGE - Duration::from_secs(1);
        for p in [&old, &old_style, &data] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(past)
                .unwrap();
        }
        assert_eq!(remove_stale_temporaries(dir.path(), STALE_TEMPORARY_AGE), 2);
        assert!(!old.exists() && !old_style.exists());
        assert!(fresh.exists() && data.exists());
    }
}
