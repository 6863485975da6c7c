//! A [`ControlStore`] in memory: tests, single-process services, or a cache in front of a database.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::jobs::{JobLease, check_job_name};
use super::model::{Compartment, ExternalKey, ExternalKeyId};
use super::rewrap::RewrapJob;
use super::store::{ControlStore, attachable, mark_deleted, reattachable, swappable};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::CompartmentId;

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
    leases: HashMap<String, JobLease>,
}

impl MemoryState {
    fn attached_to<'a>(
        &'a self,
        key: &'a ExternalKeyId,
    ) -> impl Iterator<Item = &'a CompartmentId> {
        self.compartments
            .values()
            .filter(move |c| c.external_key_id.as_ref() == Some(key))
            .map(|c| &c.compartment_id)
    }
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
        swappable(s.keys.get(&key.id), key, expected_updated_at)?;
        s.keys.insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn delete_external_key(
        &self,
        id: &ExternalKeyId,
        at: OffsetDateTime,
        force: bool,
    ) -> Result<ExternalKey> {
        let mut s = self.lock();
        let s = &mut *s;
        let attached = s.attached_to(id).count();
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
            Some(existing) => reattachable(id, existing, key)?,
            None => {
                c.external_key_id = Some(key.clone());
                c.updated_at = at;
            }
        }
        Ok(c.clone())
    }

    async fn attached_compartments(&self, key: &ExternalKeyId) -> Result<Vec<CompartmentId>> {
        let mut ids: Vec<_> = self.lock().attached_to(key).cloned().collect();
        ids.sort();
        Ok(ids)
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

    async fn acquire_lease(&self, job: &str, holder: &str, ttl: Duration) -> Result<JobLease> {
        check_job_name(job)?;
        let now = super::now();
        let mut s = self.lock();
        if let Some(lease) = s.leases.get(job)
            && !lease.takeable_by(holder, now)
        {
            return Err(lease.held());
        }
        let lease = JobLease::new(job, holder, now, ttl);
        s.leases.insert(job.to_owned(), lease.clone());
        Ok(lease)
    }

    async fn release_lease(&self, job: &str, holder: &str) -> Result<()> {
        let mut s = self.lock();
        if s.leases.get(job).is_some_and(|l| l.holder == holder) {
            s.leases.remove(job);
        }
        Ok(())
    }

    async fn lease(&self, job: &str) -> Result<Option<JobLease>> {
        Ok(self.lock().leases.get(job).cloned())
    }
}
