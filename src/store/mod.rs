//! Where DEK records live: the [`DekStore`] trait, in memory and in files.
//!
//! Compact envelopes carry only a DEK id; the [`DekRecord`] that unwraps it is written once, when the
//! DEK is created and **before** the first envelope under it is returned, so data never refers to a
//! record that was not persisted.

mod file;
mod memory;

use std::fmt;
use std::io::Write;
use std::path::Path;

use async_trait::async_trait;

pub use file::FileDekStore;
pub use memory::MemoryDekStore;

use crate::error::{Error, Result};
use crate::format::DekRecord;
use crate::ids::{CompartmentId, DekId};

/// Persists DEK records, keyed by compartment and DEK id.
#[async_trait]
pub trait DekStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `record`, replacing any record with the same compartment and DEK id (a rewrap
    /// replaces the wrapping of the same DEK). Must be durable when it returns.
    ///
    /// # Errors
    /// The store's I/O failure.
    async fn put(&self, record: &DekRecord) -> Result<()>;

    /// Loads a record.
    ///
    /// # Errors
    /// The store's I/O failure, or [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// for a corrupt record.
    async fn get(&self, compartment: &CompartmentId, dek_id: &DekId) -> Result<Option<DekRecord>>;

    /// The ids of all records of `compartment`, in no particular order.
    ///
    /// # Errors
    /// The store's I/O failure.
    async fn list(&self, compartment: &CompartmentId) -> Result<Vec<DekId>>;
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. Readers see the old or the new contents, never a mix.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, mode)?;
    tmp.1.write_all(bytes)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        Error::from(e).with_context(format!("renaming into {}", path.display()))
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn tempfile_in(dir: &Path, mode: u32) -> Result<(std::path::PathBuf, std::fs::File)> {
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
        let path = dir.join(format!(".tmp-{}", crate::ids::hex_encode(&suffix)));
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
