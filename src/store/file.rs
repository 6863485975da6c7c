//! A [`DekStore`] of one small file per record: `<root>/<compartment>/<dek id>.dek`.
//!
//! Each record is written atomically (temporary file, fsync, rename, directory fsync), so a crash
//! leaves either no record or a whole one. Compartment ids cannot contain `/` or start with `.`,
//! so they are safe directory names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::DekStore;
use crate::error::{Error, Result};
use crate::files::{STALE_TEMPORARY_AGE, blocking, remove_stale_temporaries, write_atomically};
use crate::format::DekRecord;
use crate::ids::{CompartmentId, DekId};

const EXTENSION: &str = "dek";

/// DEK records as files under a root directory.
#[derive(Debug, Clone)]
pub struct FileDekStore {
    root: Arc<Path>,
}

impl FileDekStore {
    /// Uses (and creates if needed) the directory `root`.
    ///
    /// # Errors
    /// I/O errors creating the directory.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        std::fs::create_dir_all(root)
            .map_err(|e| Error::from(e).with_context(format!("creating {}", root.display())))?;
        Ok(Self {
            root: Arc::from(root),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, compartment: &CompartmentId) -> PathBuf {
        self.root.join(compartment.as_str())
    }

    fn path(&self, compartment: &CompartmentId, dek_id: &DekId) -> PathBuf {
        self.dir(compartment)
            .join(format!("{}.{EXTENSION}", dek_id.to_hex()))
    }
}

#[async_trait]
impl DekStore for FileDekStore {
    async fn put(&self, record: &DekRecord) -> Result<()> {
        let dir = self.dir(record.compartment());
        let path = self.path(record.compartment(), &record.dek_id());
        let bytes = record.to_bytes();
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            write_atomically(&path, &bytes, 0o644)
        })
        .await
    }

    async fn get(&self, compartment: &CompartmentId, dek_id: &DekId) -> Result<Option<DekRecord>> {
        let path = self.path(compartment, dek_id);
        let (compartment, dek_id) = (compartment.clone(), *dek_id);
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => {
                let record = DekRecord::from_bytes(&bytes)
                    .map_err(|e| e.with_context(format!("DEK record {}", path.display())))?;
                if record.compartment() != &compartment || record.dek_id() != dek_id {
                    return Err(Error::invalid_input(format!(
                        "DEK record {} does not match its file name",
                        path.display()
                    )));
                }
                Ok(Some(record))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::from(e).with_context(format!("reading {}", path.display()))),
        })
        .await
    }

    async fn list(&self, compartment: &CompartmentId) -> Result<Vec<DekId>> {
        let dir = self.dir(compartment);
        blocking(move || {
            // Listing is how a rewrap starts on a compartment: a good moment to remove what an
            // earlier writer, killed mid-write, left behind.
            remove_stale_temporaries(&dir, STALE_TEMPORARY_AGE);
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut ids = Vec::new();
            for entry in entries {
                let name = entry?.file_name();
                let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".dek")) else {
                    continue;
                };
                if let Ok(id) = DekId::from_hex(stem) {
                    ids.push(id);
                }
            }
            Ok(ids)
        })
        .await
    }
}
