//! Where the control plane keeps its state: the [`ControlStore`] trait, and the rules every
//! implementation applies the same way (write-once attachment, compare-and-swap, deletion).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::jobs::JobLease;
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

    /// The ids of the compartments attached to `key`, sorted: what a rewrap of the key visits.
    /// (A database answers it from an index rather than by reading every compartment.)
    ///
    /// # Errors
    /// The store's failure.
    async fn attached_compartments(&self, key: &ExternalKeyId) -> Result<Vec<CompartmentId>>;

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

    /// Takes (or renews) the lease of `job` for `holder` for `ttl` if no other holder has it
    /// or theirs has lapsed: atomically, so of nodes racing for a job exactly one gets it.
    /// Times are the store's: the database's clock for PostgreSQL, this machine's for the
    /// memory and file stores (whose nodes share a machine).
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] (409, conflict) naming the holder and when the lease
    /// lapses; [`ErrorKind::InvalidInput`] for a bad job name.
    async fn acquire_lease(&self, job: &str, holder: &str, ttl: Duration) -> Result<JobLease>;

    /// Gives up the lease of `job` if `holder` holds it (otherwise nothing changes).
    ///
    /// # Errors
    /// The store's failure.
    async fn release_lease(&self, job: &str, holder: &str) -> Result<()>;

    /// The lease of `job`, lapsed or not, if one was taken and not given up.
    ///
    /// # Errors
    /// The store's failure.
    async fn lease(&self, job: &str) -> Result<Option<JobLease>>;
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

/// The compare-and-swap rule of [`ControlStore::update_external_key`]: `stored` may be replaced
/// by `key` only if it is still as read at `expected_updated_at`.
pub(crate) fn swappable(
    stored: Option<&ExternalKey>,
    key: &ExternalKey,
    expected_updated_at: OffsetDateTime,
) -> Result<()> {
    match stored {
        Some(stored) if stored.updated_at == expected_updated_at => Ok(()),
        Some(_) => Err(changed_meanwhile(&key.id)),
        None => Err(Error::not_found(format!("no external key {}", key.id))),
    }
}

/// The write-once rule of [`ControlStore::attach`] for a compartment that has a key already:
/// the same key again changes nothing, another key is a conflict.
pub(crate) fn reattachable(
    id: &CompartmentId,
    existing: &ExternalKeyId,
    key: &ExternalKeyId,
) -> Result<()> {
    if existing == key {
        Ok(())
    } else {
        Err(conflict(id, existing))
    }
}

/// The error of an update that lost a race with another writer.
fn changed_meanwhile(id: &ExternalKeyId) -> Error {
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

fn conflict(id: &CompartmentId, attached: &ExternalKeyId) -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        format!(
            "compartment {id} already has external key {attached}; the attachment is write-once"
        ),
    )
}
