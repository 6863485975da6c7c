//! Rewrap: after a configuration is rotated to a new KMS key, re-wrap its stored DEK records
//! under the new key without touching data. Batched (each batch's DEKs in parallel, through
//! the client's layers: deadline, retries of throttling and transient errors, the key breaker),
//! checkpointed after every batch, idempotent (records already under the new key are skipped)
//! and resumable (a rerun continues after the last checkpoint).
//!
//! Compact envelopes stay readable throughout: they authenticate the DEK record's identity
//! (DEK id, compartment, commitment), not its wrapping. Self-contained envelopes carry their own
//! wrapped DEK and stay readable while the earlier key is reachable.
//!
//! A record no key can unwrap any more (its key disabled, revoked or destroyed, or the record
//! damaged) is counted as unreadable and passed over, so it does not hold back the others; a
//! later run tries it again. Any other failure stops the run, to be resumed.

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::jobs::JobLease;
use super::model::ExternalKeyId;
use super::{Actor, AuditEvent, ControlPlane, Outcome, now};
use crate::error::{ErrorKind, Result};
use crate::format::DekRecord;
use crate::ids::{CompartmentId, DekId, KeyConfigId};
use crate::kms::{KmsBackend, RotatingBackend, WrapContext};
use crate::store::DekStore;

/// The progress of rewrapping one configuration's DEK records (persisted after every batch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RewrapJob {
    /// The configuration.
    pub external_key_id: ExternalKeyId,
    /// The key reference records are moved to.
    pub target_key_ref: String,
    /// The last record done: (compartment, DEK id in hex).
    pub cursor: Option<(String, String)>,
    /// Records looked at.
    pub examined: u64,
    /// Records re-wrapped.
    pub rewrapped: u64,
    /// Records already under the target key.
    pub already_current: u64,
    /// Records that no key could unwrap (disabled, revoked or destroyed, or damaged): passed
    /// over, and tried again by the next run.
    #[serde(default)]
    pub unreadable: u64,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it finished, or `null` while under way or interrupted.
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The node that ran it last (see [`ControlPlane::job_lease`] for who runs it now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl RewrapJob {
    pub(crate) fn new(key: ExternalKeyId, target_key_ref: String) -> Self {
        Self {
            external_key_id: key,
            target_key_ref,
            cursor: None,
            examined: 0,
            rewrapped: 0,
            already_current: 0,
            unreadable: 0,
            started_at: super::now(),
            finished_at: None,
            node: None,
        }
    }

    fn is_after_cursor(&self, compartment: &CompartmentId, id: &DekId) -> bool {
        match &self.cursor {
            None => true,
            Some((c, d)) => (compartment.as_str(), id.to_hex().as_str()) > (c.as_str(), d.as_str()),
        }
    }
}

/// What a rewrap works with: where the records are, the configuration's keys (current and
/// earlier), the same backend behind the client's layers (deadline, retries, breaker), and the
/// key configuration id.
pub(crate) struct Rewrapper<'a> {
    pub(crate) store: &'a dyn DekStore,
    pub(crate) keys: &'a RotatingBackend,
    pub(crate) backend: &'a dyn KmsBackend,
    pub(crate) key_config: &'a KeyConfigId,
}

/// What became of one record.
enum Rewrapped {
    Yes,
    AlreadyCurrent,
    Unreadable,
}

impl Rewrapper<'_> {
    /// Re-wraps one record unless the current key is the one that wrapped it. (A key id alone
    /// is not proof when an earlier key shares it: such records are re-wrapped.)
    async fn rewrap_one(&self, record: DekRecord) -> Result<Rewrapped> {
        if self.keys.is_current(record.wrapped()) {
            return Ok(Rewrapped::AlreadyCurrent);
        }
        let backend = self.backend;
        let context = WrapContext::new(record.compartment(), self.key_config);
        let dek = match backend.unwrap(record.wrapped(), &context).await {
            Ok(dek) => dek,
            Err(e) if is_unreadable(&e) => {
                tracing::warn!(compartment = %record.compartment(), dek_id = %record.dek_id(), error = %e, "rewrap passes over a DEK record no key can unwrap");
                return Ok(Rewrapped::Unreadable);
            }
            Err(e) => return Err(e),
        };
        let wrapped = backend.wrap(&dek, &context).await?;
        drop(dek);
        self.store
            .put(&record.with_wrapping(self.key_config.clone(), wrapped))
            .await?;
        Ok(Rewrapped::Yes)
    }

    /// Walks the records of `compartments` (sorted) from the job's cursor, `batch` at a time,
    /// calling `checkpoint` after each batch.
    pub(crate) async fn run(
        &self,
        job: &mut RewrapJob,
        compartments: &[CompartmentId],
        batch: usize,
        mut checkpoint: impl AsyncFnMut(&RewrapJob) -> Result<()>,
    ) -> Result<()> {
        let (store, key_config) = (self.store, self.key_config);
        for compartment in compartments {
            let mut ids = store.list(compartment).await?;
            ids.sort();
            ids.retain(|id| job.is_after_cursor(compartment, id));
            for chunk in ids.chunks(batch.max(1)) {
                let mut records = Vec::with_capacity(chunk.len());
                for id in chunk {
                    if let Some(record) = store.get(compartment, id).await?
                        && record.key_config() == key_config
                    {
                        records.push(record);
                    }
                }
                let outcomes =
                    join_all(records.into_iter().map(|record| self.rewrap_one(record))).await;
                // Count every record that made it, then report the first failure without moving
                // the cursor: a rerun redoes this batch, finding the finished ones already current.
                let mut first_error = None;
                for outcome in outcomes {
                    match outcome {
                        Ok(rewrapped) => {
                            job.examined += 1;
                            *match rewrapped {
                                Rewrapped::Yes => &mut job.rewrapped,
                                Rewrapped::AlreadyCurrent => &mut job.already_current,
                                Rewrapped::Unreadable => &mut job.unreadable,
                            } += 1;
                        }
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = first_error {
                    return Err(e);
                }
                if let Some(last) = chunk.last() {
                    job.cursor = Some((compartment.to_string(), last.to_hex()));
                }
                checkpoint(job).await?;
            }
        }
        Ok(())
    }
}

/// Whether an unwrap failure means the record cannot be read by any run (as opposed to one the
/// next run may get past: throttling, an outage, a missing permission).
fn is_unreadable(e: &crate::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::KeyRevoked | ErrorKind::NotFound | ErrorKind::Integrity
    )
}

impl ControlPlane {
    /// Re-wraps the stored DEK records of every compartment attached to `id` under its current
    /// KMS key, `batch` records at a time, calling `progress` after each batch. Resumes an
    /// interrupted run; records already under the current key are skipped; records no key can
    /// unwrap any more are counted in [`RewrapJob::unreadable`] and passed over (the audit event
    /// then reports a failure).
    ///
    /// # Errors
    /// The first KMS or store error (progress up to the last full batch is kept).
    pub async fn rewrap(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
        batch: usize,
        mut progress: impl FnMut(&RewrapJob),
    ) -> Result<RewrapJob> {
        let key = self.inner.key(id).await?;
        let keys = self
            .within_deadline(self.inner.backends.built(&key))
            .await?
            .backend;
        // One run at a time, across nodes and on this one: the others are told who runs it.
        let lease = rewrap_job_name(id);
        let holder = format!("{}/run-{:08x}", self.inner.node, rand::random::<u32>());
        if let Err(e) = self
            .inner
            .store
            .acquire_lease(&lease, &holder, self.inner.job_lease)
            .await
        {
            self.inner
                .record(
                    AuditEvent::new(actor, "rewrap.start", Outcome::Failure)
                        .key(id)
                        .detail(e.message().to_owned()),
                )
                .await?;
            return Err(e);
        }
        let outcome = self
            .rewrap_holding_lease(actor, id, &key, keys, batch, &holder, &mut progress)
            .await;
        if let Err(e) = self.inner.store.release_lease(&lease, &holder).await {
            tracing::warn!(error = %e, job = lease, "could not give up a job lease; it lapses by itself");
        }
        outcome
    }

    /// Who runs the job named `job` (such as a rewrap: `rewrap.<external key id>`), if anyone
    /// took it and did not give it up; a lapsed lease is returned too.
    ///
    /// # Errors
    /// The store's failure.
    pub async fn job_lease(&self, job: &str) -> Result<Option<JobLease>> {
        self.inner.store.lease(job).await
    }

    /// The rest of [`ControlPlane::rewrap`], once `holder` holds the job's lease. The lease
    /// is renewed before every checkpoint; a run that lost it (stalled for longer than its
    /// time to live, and another took over) stops without writing its progress over theirs.
    #[allow(clippy::too_many_arguments)]
    async fn rewrap_holding_lease(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
        key: &super::ExternalKey,
        keys: std::sync::Arc<RotatingBackend>,
        batch: usize,
        holder: &str,
        progress: &mut impl FnMut(&RewrapJob),
    ) -> Result<RewrapJob> {
        let target = keys.wrapping_key_id().unwrap_or_default().to_owned();
        let lease = rewrap_job_name(id);
        let (node, ttl) = (self.inner.node.as_str(), self.inner.job_lease);
        let lost = std::cell::Cell::new(false);
        let renew = async || match self.inner.store.acquire_lease(&lease, holder, ttl).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                lost.set(true);
                Err(e)
            }
            other => other.map(drop),
        };
        let mut job = match self.inner.store.rewrap_job(id).await? {
            Some(job) if job.target_key_ref == target && job.finished_at.is_none() => job,
            _ => RewrapJob::new(id.clone(), target.clone()),
        };
        job.node = Some(node.to_owned());
        self.inner
            .record(
                AuditEvent::new(actor, "rewrap.start", Outcome::Success)
                    .key(id)
                    .detail(format!("to {target}, from {:?}", job.cursor)),
            )
            .await?;
        let compartments = self.inner.store.attached_compartments(id).await?;
        let store = self.inner.store.clone();
        let backend = self.client.layers().in_use(keys.clone());
        let rewrapper = Rewrapper {
            store: self.inner.dek_store.as_ref(),
            keys: &keys,
            backend: &backend,
            key_config: &key.key_config(),
        };
        let outcome = rewrapper
            .run(&mut job, &compartments, batch, async |job: &RewrapJob| {
                renew().await?;
                store.put_rewrap_job(job).await?;
                progress(job);
                Ok(())
            })
            .await;
        // The final write needs the lease too.
        let outcome = match outcome {
            Ok(()) => renew().await,
            Err(e) => Err(e),
        };
        let summary = |job: &RewrapJob| {
            format!(
                "examined {}, rewrapped {}, already current {}, unreadable {}",
                job.examined, job.rewrapped, job.already_current, job.unreadable
            )
        };
        match outcome {
            Ok(()) => {
                job.finished_at = Some(now());
                self.inner.store.put_rewrap_job(&job).await?;
                // Records no key could unwrap were passed over: not everything moved.
                let outcome = if job.unreadable == 0 {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                self.inner
                    .record(
                        AuditEvent::new(actor, "rewrap.complete", outcome)
                            .key(id)
                            .detail(summary(&job)),
                    )
                    .await?;
                Ok(job)
            }
            Err(e) => {
                if !lost.get() {
                    self.inner.store.put_rewrap_job(&job).await?;
                }
                self.inner
                    .record(
                        AuditEvent::new(actor, "rewrap.complete", Outcome::Failure)
                            .key(id)
                            .detail(format!("{}; interrupted: {e}", summary(&job))),
                    )
                    .await?;
                Err(e)
            }
        }
    }
}

/// The name of the lease of `id`'s rewrap.
fn rewrap_job_name(id: &ExternalKeyId) -> String {
    format!("rewrap.{id}")
}
