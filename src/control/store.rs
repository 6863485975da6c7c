//! Where the control plane keeps its state: the [`ControlStore`] trait and an in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::model::{Compartment, ExternalKey, ExternalKeyId};
use super::rewrap::RewrapJob;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::CompartmentId;

/// Persists external key configurations, compartments and rewrap jobs.
///
/// `attach` must be atomic: however many writers race, a compartment's key is set at most once.
#[async_trait]
pub trait ControlStore: Send + Sync + fmt::Debug + 'static {
    /// Adds a configuration.
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] if its id is taken.
    async fn insert_external_key(&self, key: &ExternalKey) -> Result<()>;

    /// Replaces a configuration if its stored `updated_at` is still `expected_updated_at`
    /// (compare-and-swap: atomic however many writers race, so no change is lost).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] if it does not exist; [`ErrorKind::AlreadyExists`] (409,
    /// conflict) if it was changed since it was read.
    async fn update_external_key(
        &self,
        key: &ExternalKey,
        expected_updated_at: OffsetDateTime,
    ) -> Result<()>;

    /// Marks a configuration deleted at `at` (kept if it is deleted already) and returns it,
    /// unless compartments are attached to it and not `force`: atomically with respect to
    /// [`ControlStore::attach`], so an attachment and a deletion never cross and a refused
    /// deletion is never seen by anyone.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`]; [`ErrorKind::AlreadyExists`] (409, conflict) when attached and
    /// not forced.
    async fn delete_external_key(
        &self,
        id: &ExternalKeyId,
        at: OffsetDateTime,
        force: bool,
    ) -> Result<ExternalKey>;

    /// Loads a configuration.
    ///
    /// # Errors
    /// The store's failure.
    async fn external_key(&self, id: &ExternalKeyId) -> Result<Option<ExternalKey>>;

    /// Every configuration, deleted ones included.
    ///
    /// # Errors
    /// The store's failure.
    async fn external_keys(&self) -> Result<Vec<ExternalKey>>;

    /// Adds a compartment. With an external key, the key is checked as in
    /// [`ControlStore::attach`].
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] if its id is taken; as for `attach` for its key.
    async fn insert_compartment(&self, compartment: &Compartment) -> Result<()>;

    /// Loads a compartment.
    ///
    /// # Errors
    /// The store's failure.
    async fn compartment(&self, id: &CompartmentId) -> Result<Option<Compartment>>;

    /// Every compartment.
    ///
    /// # Errors
    /// The store's failure.
    async fn compartments(&self) -> Result<Vec<Compartment>>;

    /// Sets a compartment's external key, once: setting the same key again returns the
    /// compartment unchanged; another key fails with [`ErrorKind::AlreadyExists`]. The key must
    /// exist and not be deleted, checked atomically with respect to
    /// [`ControlStore::update_external_key`] (so an attachment and a deletion cannot cross).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown compartment or key; [`ErrorKind::Validation`] for
    /// a deleted key; the conflict above.
    async fn attach(
        &self,
        id: &CompartmentId,
        key: &ExternalKeyId,
        at: OffsetDateTime,
    ) -> Result<Compartment>;

    /// Saves a rewrap job's progress.
    ///
    /// # Errors
    /// The store's failure.
    async fn put_rewrap_job(&self, job: &RewrapJob) -> Result<()>;

    /// Loads the rewrap job of a configuration.
    ///
    /// # Errors
    /// The store's failure.
    async fn rewrap_job(&self, key: &ExternalKeyId) -> Result<Option<RewrapJob>>;
}

/// Whether `key` (stored as `stored`) may be attached: it exists and is not deleted.
pub(crate) fn attachable(stored: Option<&ExternalKey>, key: &ExternalKeyId) -> Result<()> {
    match stored {
        None => Err(Error::not_found(format!("no external key {key}"))),
        Some(k) if k.is_deleted() => Err(Error::new(
            ErrorKind::Validation,
            format!("external_key_id: {key} is deleted"),
        )),
        Some(_) => Ok(()),
    }
}

/// The error of an update that lost a race with another writer.
pub(crate) fn changed_meanwhile(id: &ExternalKeyId) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        format!("external key {id} was changed by another writer; read it again and retry"),
    )
}

/// Applies a deletion to `key` (stored, with `attached` compartments), per
/// [`ControlStore::delete_external_key`]; false when nothing changes (deleted already).
pub(crate) fn mark_deleted(
    key: &mut ExternalKey,
    attached: usize,
    at: OffsetDateTime,
    force: bool,
) -> Result<bool> {
    if attached > 0 && !force {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!(
                "external key {} is attached to {attached} compartment(s); delete with force to stop their new writes",
                key.id
            ),
        ));
    }
    if key.deleted_at.is_some() {
        return Ok(false);
    }
    key.deleted_at = Some(at);
    key.updated_at = at.max(key.updated_at + time::Duration::microseconds(1));
    Ok(true)
}

pub(crate) fn conflict(id: &CompartmentId, attached: &ExternalKeyId) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        format!(
            "compartment {id} already has external key {attached}; the attachment is write-once"
        ),
    )
}

/// Keeps everything in memory (tests, or a cache in front of a database).
#[derive(Debug, Default)]
pub struct MemoryControlStore {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    keys: HashMap<ExternalKeyId, ExternalKey>,
    compartments: HashMap<CompartmentId, Compartment>,
    jobs: HashMap<ExternalKeyId, RewrapJob>,
}

impl MemoryControlStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl ControlStore for MemoryControlStore {
    async fn insert_external_key(&self, key: &ExternalKey) -> Result<()> {
        let mut s = self.lock();
        if s.keys.contains_key(&key.id) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("external key {} exists", key.id),
            ));
        }
        s.keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn update_external_key(
        &self,
        key: &ExternalKey,
        expected_updated_at: OffsetDateTime,
    ) -> Result<()> {
        let mut s = self.lock();
        match s.keys.get_mut(&key.id) {
            Some(slot) if slot.updated_at == expected_updated_at => {
                *slot = key.clone();
                Ok(())
            }
            Some(_) => Err(changed_meanwhile(&key.id)),
            None => Err(Error::not_found(format!("no external key {}", key.id))),
        }
    }

    async fn delete_external_key(
        &self,
        id: &ExternalKeyId,
        at: OffsetDateTime,
        force: bool,
    ) -> Result<ExternalKey> {
        let mut s = self.lock();
        let s = &mut *s;
        let attached = s
            .compartments
            .values()
            .filter(|c| c.external_key_id.as_ref() == Some(id))
            .count();
        let key = s
            .keys
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("no external key {id}")))?;
        mark_deleted(key, attached, at, force)?;
        Ok(key.clone())
    }

    async fn external_key(&self, id: &ExternalKeyId) -> Result<Option<ExternalKey>> {
        Ok(self.lock().keys.get(id).cloned())
    }

    async fn external_keys(&self) -> Result<Vec<ExternalKey>> {
        let mut keys: Vec<_> = self.lock().keys.values().cloned().collect();
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    async fn insert_compartment(&self, compartment: &Compartment) -> Result<()> {
        let mut s = self.lock();
        if s.compartments.contains_key(&compartment.compartment_id) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("compartment {} exists", compartment.compartment_id),
            ));
        }
        if let Some(key) = &compartment.external_key_id {
            attachable(s.keys.get(key), key)?;
        }
        s.compartments
            .insert(compartment.compartment_id.clone(), compartment.clone());
        Ok(())
    }

    async fn compartment(&self, id: &CompartmentId) -> Result<Option<Compartment>> {
        Ok(self.lock().compartments.get(id).cloned())
    }

    async fn compartments(&self) -> Result<Vec<Compartment>> {
        let mut all: Vec<_> = self.lock().compartments.values().cloned().collect();
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.compartment_id.cmp(&b.compartment_id))
        });
        Ok(all)
    }

    async fn attach(
        &self,
        id: &CompartmentId,
        key: &ExternalKeyId,
        at: OffsetDateTime,
    ) -> Result<Compartment> {
        let mut s = self.lock();
        let s = &mut *s;
        let c = s
            .compartments
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("no compartment {id}")))?;
        attachable(s.keys.get(key), key)?;
        match &c.external_key_id {
            Some(existing) if existing == key => Ok(c.clone()),
            Some(existing) => Err(conflict(id, existing)),
            None => {
                c.external_key_id = Some(key.clone());
                c.updated_at = at;
                Ok(c.clone())
            }
        }
    }

    async fn put_rewrap_job(&self, job: &RewrapJob) -> Result<()> {
        self.lock()
            .jobs
            .insert(job.external_key_id.clone(), job.clone());
        Ok(())
    }

    async fn rewrap_job(&self, key: &ExternalKeyId) -> Result<Option<RewrapJob>> {
        Ok(self.lock().jobs.get(key).cloned())
    }
}
