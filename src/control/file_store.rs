//! A durable [`ControlStore`] of small JSON files under one directory.
//!
//! Why files and not SQLite: the state is small (configurations and compartments), each object
//! is written whole and atomically (temporary file, fsync, rename, directory fsync), and the two
//! operations that must be atomic across processes map onto the filesystem's own primitives:
//! attaching a key is an exclusive create of `attachments/<compartment>` (a complete temporary
//! file hard-linked into place, which fails if it exists), and updating a configuration is a
//! compare-and-swap under an exclusive `flock` of its `.lock` file. No C library, no schema
//! migrations, and the files can be read with `cat`.
//!
//! Layout: `external_keys/<id>.json` (and `<id>.lock`), `compartments/<id>.json`,
//! `attachments/<id>` (the attached `ekey_` id, the source of truth for the write-once field),
//! `rewrap_jobs/<id>.json`, `leases/<job>.json` (and `<job>.lock`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

use super::jobs::{JobLease, check_job_name};
use super::model::{Compartment, ExternalKey, ExternalKeyId};
use super::rewrap::RewrapJob;
use super::store::{ControlStore, attachable, mark_deleted, reattachable, swappable};
use crate::error::{Error, ErrorKind, Result};
use crate::files::{
    STALE_TEMPORARY_AGE, blocking, create_once, lock_exclusive, remove_stale_temporaries,
    write_atomically,
};
use crate::ids::CompartmentId;

/// The control plane's state in a directory.
#[derive(Clone, Debug)]
pub struct FileControlStore {
    root: Arc<Path>,
}

const DIRS: [&str; 5] = [
    "external_keys",
    "compartments",
    "attachments",
    "rewrap_jobs",
    "leases",
];

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::invalid_input(format!("{} is corrupt: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::from(e).with_context(format!("reading {}", path.display()))),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::configuration(format!("cannot encode: {e}")))?;
    write_atomically(path, &bytes, 0o644)
}

fn read_all<T: DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(value) = read_json(&path)?
        {
            out.push(value);
        }
    }
    Ok(out)
}

impl FileControlStore {
    /// Uses (and creates if needed) the directory `root`.
    ///
    /// # Errors
    /// I/O errors creating the directories.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        for dir in DIRS {
            std::fs::create_dir_all(root.join(dir)).map_err(|e| {
                Error::from(e).with_context(format!("creating {}", root.join(dir).display()))
            })?;
            remove_stale_temporaries(&root.join(dir), STALE_TEMPORARY_AGE);
        }
        Ok(Self {
            root: Arc::from(root),
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn key_path(&self, id: &ExternalKeyId) -> PathBuf {
        self.root.join("external_keys").join(format!("{id}.json"))
    }

    fn compartment_path(&self, id: &CompartmentId) -> PathBuf {
        self.root.join("compartments").join(format!("{id}.json"))
    }

    fn attachment_path(&self, id: &CompartmentId) -> PathBuf {
        self.root.join("attachments").join(id.as_str())
    }

    fn job_path(&self, id: &ExternalKeyId) -> PathBuf {
        self.root.join("rewrap_jobs").join(format!("{id}.json"))
    }

    fn lease_path(&self, job: &str) -> Result<PathBuf> {
        check_job_name(job)?;
        Ok(self.root.join("leases").join(format!("{job}.json")))
    }
}

/// The attached key of a compartment, from its attachment file.
fn attachment(path: &Path) -> Result<Option<ExternalKeyId>> {
    match std::fs::read_to_string(path) {
        Ok(text) => ExternalKeyId::new(text.trim()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The compartments whose attachment file (in `attachments`) names `key`.
fn attached_to(attachments: &Path, key: &ExternalKeyId) -> Result<Vec<CompartmentId>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(attachments)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else {
            continue;
        };
        if attachment(&entry.path())?.as_ref() == Some(key) {
            ids.push(CompartmentId::new(name)?);
        }
    }
    Ok(ids)
}

/// A compartment with its write-once field read from the attachment file.
fn load_compartment(path: &Path, attachments: &Path) -> Result<Option<Compartment>> {
    let Some(mut c): Option<Compartment> = read_json(path)? else {
        return Ok(None);
    };
    if let Some(key) = attachment(&attachments.join(c.compartment_id.as_str()))? {
        c.external_key_id = Some(key);
    }
    Ok(Some(c))
}

/// Takes the exclusive lock (across processes) of the configuration stored at `key_path`; it is
/// held until the returned file is dropped. Updates of the configuration and new attachments of
/// it happen under this lock.
fn lock_key(key_path: &Path) -> Result<std::fs::File> {
    lock_exclusive(&key_path.with_extension("lock"))
}

#[async_trait]
impl ControlStore for FileControlStore {
    async fn insert_external_key(&self, key: &ExternalKey) -> Result<()> {
        let (path, key) = (self.key_path(&key.id), key.clone());
        blocking(move || {
            let bytes =
                serde_json::to_vec_pretty(&key).map_err(|e| Error::configuration(e.to_string()))?;
            if create_once(&path, &bytes)? {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("external key {} exists", key.id),
                ))
            }
        })
        .await
    }

    async fn update_external_key(
        &self,
        key: &ExternalKey,
        expected_updated_at: OffsetDateTime,
    ) -> Result<()> {
        let (path, key) = (self.key_path(&key.id), key.clone());
        blocking(move || {
            // Compare and replace under the key's lock, which other processes respect too.
            let _locked = lock_key(&path)?;
            let stored: Option<ExternalKey> = read_json(&path)?;
            swappable(stored.as_ref(), &key, expected_updated_at)?;
            write_json(&path, &key)
        })
        .await
    }

    async fn delete_external_key(
        &self,
        id: &ExternalKeyId,
        at: OffsetDateTime,
        force: bool,
    ) -> Result<ExternalKey> {
        let (path, attachments, id) =
            (self.key_path(id), self.root.join("attachments"), id.clone());
        blocking(move || {
            // Under the key's lock, which attachments of it take too.
            let _locked = lock_key(&path)?;
            let Some(mut key): Option<ExternalKey> = read_json(&path)? else {
                return Err(Error::not_found(format!("no external key {id}")));
            };
            let attached = attached_to(&attachments, &id)?.len();
            if mark_deleted(&mut key, attached, at, force)? {
                write_json(&path, &key)?;
            }
            Ok(key)
        })
        .await
    }

    async fn external_key(&self, id: &ExternalKeyId) -> Result<Option<ExternalKey>> {
        let path = self.key_path(id);
        blocking(move || read_json(&path)).await
    }

    async fn external_keys(&self) -> Result<Vec<ExternalKey>> {
        let dir = self.root.join("external_keys");
        blocking(move || {
            let mut keys: Vec<ExternalKey> = read_all(&dir)?;
            keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
            Ok(keys)
        })
        .await
    }

    async fn insert_compartment(&self, compartment: &Compartment) -> Result<()> {
        let (path, c) = (
            self.compartment_path(&compartment.compartment_id),
            compartment.clone(),
        );
        let attachment = self.attachment_path(&compartment.compartment_id);
        let key = c
            .external_key_id
            .clone()
            .map(|key| (self.key_path(&key), key));
        blocking(move || {
            // With a key: under its lock, checked as for an attachment.
            let _locked = match &key {
                Some((key_path, key)) => {
                    let locked = lock_key(key_path)?;
                    attachable(read_json::<ExternalKey>(key_path)?.as_ref(), key)?;
                    Some(locked)
                }
                None => None,
            };
            let mut stored = c.clone();
            stored.external_key_id = None;
            let bytes = serde_json::to_vec_pretty(&stored)
                .map_err(|e| Error::configuration(e.to_string()))?;
            if !create_once(&path, &bytes)? {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("compartment {} exists", c.compartment_id),
                ));
            }
            if let Some(key) = &c.external_key_id {
                create_once(&attachment, key.as_str().as_bytes())?;
            }
            Ok(())
        })
        .await
    }

    async fn compartment(&self, id: &CompartmentId) -> Result<Option<Compartment>> {
        let (path, attachments) = (self.compartment_path(id), self.root.join("attachments"));
        blocking(move || load_compartment(&path, &attachments)).await
    }

    async fn compartments(&self) -> Result<Vec<Compartment>> {
        let (dir, attachments) = (
            self.root.join("compartments"),
            self.root.join("attachments"),
        );
        blocking(move || {
            let mut all = Vec::new();
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.extension().is_some_and(|e| e == "json")
                    && let Some(c) = load_compartment(&path, &attachments)?
                {
                    all.push(c);
                }
            }
            all.sort_by(|a, b| {
                a.created_at
                    .cmp(&b.created_at)
                    .then(a.compartment_id.cmp(&b.compartment_id))
            });
            Ok(all)
        })
        .await
    }

    async fn attach(
        &self,
        id: &CompartmentId,
        key: &ExternalKeyId,
        at: OffsetDateTime,
    ) -> Result<Compartment> {
        let (path, attachment_path, attachments, key_path) = (
            self.compartment_path(id),
            self.attachment_path(id),
            self.root.join("attachments"),
            self.key_path(key),
        );
        let (id, key) = (id.clone(), key.clone());
        blocking(move || {
            let Some(mut c): Option<Compartment> = read_json(&path)? else {
                return Err(Error::not_found(format!("no compartment {id}")));
            };
            // Under the key's lock, so a deletion cannot slip in between the check and the
            // attachment.
            let _locked = lock_key(&key_path)?;
            let stored: Option<ExternalKey> = read_json(&key_path)?;
            attachable(stored.as_ref(), &key)?;
            if !create_once(&attachment_path, key.as_str().as_bytes())? {
                let existing = attachment(&attachment_path)?
                    .ok_or_else(|| Error::transient("attachment vanished"))?;
                reattachable(&id, &existing, &key)?;
                return load_compartment(&path, &attachments)?
                    .ok_or_else(|| Error::not_found(format!("no compartment {id}")));
            }
            c.updated_at = at;
            c.external_key_id = None;
            write_json(&path, &c)?;
            c.external_key_id = Some(key);
            Ok(c)
        })
        .await
    }

    async fn attached_compartments(&self, key: &ExternalKeyId) -> Result<Vec<CompartmentId>> {
        let (attachments, key) = (self.root.join("attachments"), key.clone());
        blocking(move || {
            let mut ids = attached_to(&attachments, &key)?;
            ids.sort();
            Ok(ids)
        })
        .await
    }

    async fn put_rewrap_job(&self, job: &RewrapJob) -> Result<()> {
        let (path, job) = (self.job_path(&job.external_key_id), job.clone());
        blocking(move || write_json(&path, &job)).await
    }

    async fn rewrap_job(&self, key: &ExternalKeyId) -> Result<Option<RewrapJob>> {
        let path = self.job_path(key);
        blocking(move || read_json(&path)).await
    }

    async fn acquire_lease(&self, job: &str, holder: &str, ttl: Duration) -> Result<JobLease> {
        let (path, job, holder) = (self.lease_path(job)?, job.to_owned(), holder.to_owned());
        blocking(move || {
            // Read and replace under the lease's lock, which other processes respect too.
            let _locked = lock_exclusive(&path.with_extension("lock"))?;
            let now = super::now();
            let stored: Option<JobLease> = read_json(&path)?;
            if let Some(lease) = stored
                && !lease.takeable_by(&holder, now)
            {
                return Err(lease.held());
            }
            let lease = JobLease::new(&job, &holder, now, ttl);
            write_json(&path, &lease)?;
            Ok(lease)
        })
        .await
    }

    async fn release_lease(&self, job: &str, holder: &str) -> Result<()> {
        let (path, holder) = (self.lease_path(job)?, holder.to_owned());
        blocking(move || {
            let _locked = lock_exclusive(&path.with_extension("lock"))?;
            let stored: Option<JobLease> = read_json(&path)?;
            if stored.is_some_and(|lease| lease.holder == holder) {
                std::fs::remove_file(&path).map_err(|e| {
                    Error::from(e).with_context(format!("removing {}", path.display()))
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn lease(&self, job: &str) -> Result<Option<JobLease>> {
        let path = self.lease_path(job)?;
        blocking(move || read_json(&path)).await
    }
}
