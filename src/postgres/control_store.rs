//! [`PostgresControlStore`]: configurations, compartments and rewrap jobs as rows, with the
//! control plane's rules enforced by the database (row locks, conditional updates).

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_postgres::types::Json;

use super::changes::{Change, record};
use super::{OpError, Postgres, column};
use crate::control::jobs::check_job_name;
use crate::control::store::{attachable, mark_deleted, reattachable, swappable};
use crate::control::{Compartment, ControlStore, ExternalKey, ExternalKeyId, JobLease, RewrapJob};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::CompartmentId;

/// The control plane's state in PostgreSQL, shared by every node on the database. Made by
/// [`Postgres::control_store`].
#[derive(Clone, Debug)]
pub struct PostgresControlStore {
    db: Postgres,
}

impl PostgresControlStore {
    pub(super) fn new(db: Postgres) -> Self {
        Self { db }
    }
}

/// Unix nanoseconds, as the tables keep times.
pub(super) fn nanos(at: OffsetDateTime) -> std::result::Result<i64, OpError> {
    i64::try_from(at.unix_timestamp_nanos())
        .map_err(|_| Error::invalid_input(format!("time {at} is out of range")).into())
}

pub(super) fn time_of(nanos: i64) -> std::result::Result<OffsetDateTime, OpError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .map_err(|e| Error::invalid_input(format!("a stored time is out of range: {e}")).into())
}

fn id_of<T>(parsed: Result<T>) -> std::result::Result<T, OpError> {
    parsed.map_err(|e| {
        Error::invalid_input(format!("a stored id is invalid: {}", e.message())).into()
    })
}

/// A compartment from its row `(id, external_key_id, created_at_ns, updated_at_ns)`.
fn compartment_of(row: &tokio_postgres::Row) -> std::result::Result<Compartment, OpError> {
    let key: Option<&str> = column(row, 1)?;
    Ok(Compartment {
        kind: "compartment".to_owned(),
        compartment_id: id_of(CompartmentId::new(column::<&str>(row, 0)?))?,
        external_key_id: key.map(|k| id_of(ExternalKeyId::new(k))).transpose()?,
        created_at: time_of(column(row, 2)?)?,
        updated_at: time_of(column(row, 3)?)?,
    })
}

const COMPARTMENT_COLUMNS: &str = "id, external_key_id, created_at_ns, updated_at_ns";

/// Loads the configuration `key` and locks it against changes (`FOR SHARE`) until the
/// transaction ends: an attachment holds it while a deletion waits for it, and the reverse.
async fn locked_key(
    tx: &tokio_postgres::Transaction<'_>,
    key: &ExternalKeyId,
) -> std::result::Result<Option<ExternalKey>, OpError> {
    let row = tx
        .query_opt(
            "SELECT body FROM cmek_external_keys WHERE id = $1 FOR SHARE",
            &[&key.as_str()],
        )
        .await?;
    row.map(|row| Ok(column::<Json<ExternalKey>>(&row, 0)?.0))
        .transpose()
}

#[async_trait]
impl ControlStore for PostgresControlStore {
    async fn insert_external_key(&self, key: &ExternalKey) -> Result<()> {
        self.db
            .timed("adding an external key", async {
                let client = self.db.client().await?;
                let inserted = client
                    .execute(
                        "INSERT INTO cmek_external_keys
                             (id, body, created_at_ns, updated_at_ns, deleted)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                        &[
                            &key.id.as_str(),
                            &Json(key),
                            &nanos(key.created_at)?,
                            &nanos(key.updated_at)?,
                            &key.is_deleted(),
                        ],
                    )
                    .await?;
                if inserted == 0 {
                    return Err(Error::new(
                        ErrorKind::AlreadyExists,
                        format!("external key {} exists", key.id),
                    )
                    .into());
                }
                Ok(())
            })
            .await
    }

    async fn update_external_key(
        &self,
        key: &ExternalKey,
        expected_updated_at: OffsetDateTime,
    ) -> Result<()> {
        self.db
            .timed("updating an external key", async {
                let mut client = self.db.client().await?;
                let tx = super::transaction(&mut client).await?;
                let row = tx
                    .query_opt(
                        "SELECT body FROM cmek_external_keys WHERE id = $1 FOR UPDATE",
                        &[&key.id.as_str()],
                    )
                    .await?;
                let stored = match row {
                    Some(row) => Some(column::<Json<ExternalKey>>(&row, 0)?.0),
                    None => None,
                };
                // Compare-and-swap: the row is locked, so no writer changes it meanwhile.
                swappable(stored.as_ref(), key, expected_updated_at)?;
                tx.execute(
                    "UPDATE cmek_external_keys
                     SET body = $2, updated_at_ns = $3, deleted = $4 WHERE id = $1",
                    &[
                        &key.id.as_str(),
                        &Json(key),
                        &nanos(key.updated_at)?,
                        &key.is_deleted(),
                    ],
                )
                .await?;
                let rotated = stored.is_some_and(|stored| {
                    stored.provider_config != key.provider_config
                        || stored.is_deleted() != key.is_deleted()
                });
                if rotated {
                    // New data on every node goes under a new DEK (a validation alone
                    // changes nothing cached).
                    record(&tx, &Change::Retired(key.key_config())).await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn delete_external_key(
        &self,
        id: &ExternalKeyId,
        at: OffsetDateTime,
        force: bool,
    ) -> Result<ExternalKey> {
        self.db
            .timed("deleting an external key", async {
                let mut client = self.db.client().await?;
                let tx = super::transaction(&mut client).await?;
                let row = tx
                    .query_opt(
                        "SELECT body FROM cmek_external_keys WHERE id = $1 FOR UPDATE",
                        &[&id.as_str()],
                    )
                    .await?;
                let Some(row) = row else {
                    return Err(Error::not_found(format!("no external key {id}")).into());
                };
                let mut key = column::<Json<ExternalKey>>(&row, 0)?.0;
                let count = tx
                    .query_one(
                        "SELECT count(*) FROM cmek_compartments WHERE external_key_id = $1",
                        &[&id.as_str()],
                    )
                    .await?;
                let attached: i64 = column(&count, 0)?;
                let attached = usize::try_from(attached).unwrap_or(usize::MAX);
                if mark_deleted(&mut key, attached, at, force)? {
                    tx.execute(
                        "UPDATE cmek_external_keys
                         SET body = $2, updated_at_ns = $3, deleted = true WHERE id = $1",
                        &[&id.as_str(), &Json(&key), &nanos(key.updated_at)?],
                    )
                    .await?;
                    record(&tx, &Change::Retired(key.key_config())).await?;
                }
                tx.commit().await?;
                Ok(key)
            })
            .await
    }

    async fn external_key(&self, id: &ExternalKeyId) -> Result<Option<ExternalKey>> {
        self.db
            .timed("reading an external key", async {
                let client = self.db.client().await?;
                let row = client
                    .query_opt(
                        "SELECT body FROM cmek_external_keys WHERE id = $1",
                        &[&id.as_str()],
                    )
                    .await?;
                row.map(|row| Ok(column::<Json<ExternalKey>>(&row, 0)?.0))
                    .transpose()
            })
            .await
    }

    async fn external_keys(&self) -> Result<Vec<ExternalKey>> {
        let mut keys: Vec<ExternalKey> = self
            .db
            .timed("listing external keys", async {
                let client = self.db.client().await?;
                let rows = client
                    .query("SELECT body FROM cmek_external_keys", &[])
                    .await?;
                rows.iter()
                    .map(|row| Ok(column::<Json<ExternalKey>>(row, 0)?.0))
                    .collect()
            })
            .await?;
        keys.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    async fn insert_compartment(&self, compartment: &Compartment) -> Result<()> {
        self.db
            .timed("adding a compartment", async {
                let mut client = self.db.client().await?;
                let tx = super::transaction(&mut client).await?;
                let id = &compartment.compartment_id;
                let exists = tx
                    .query_opt("SELECT 1 FROM cmek_compartments WHERE id = $1", &[&id.as_str()])
                    .await?
                    .is_some();
                if exists {
                    return Err(already_exists(id).into());
                }
                if let Some(key) = &compartment.external_key_id {
                    attachable(locked_key(&tx, key).await?.as_ref(), key)?;
                }
                let inserted = tx
                    .execute(
                        "INSERT INTO cmek_compartments (id, external_key_id, created_at_ns, updated_at_ns)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                        &[
                            &id.as_str(),
                            &compartment.external_key_id.as_ref().map(|k| k.as_str()),
                            &nanos(compartment.created_at)?,
                            &nanos(compartment.updated_at)?,
                        ],
                    )
                    .await?;
                if inserted == 0 {
                    return Err(already_exists(id).into());
                }
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    async fn compartment(&self, id: &CompartmentId) -> Result<Option<Compartment>> {
        self.db
            .timed("reading a compartment", async {
                let client = self.db.client().await?;
                let row = client
                    .query_opt(
                        &format!(
                            "SELECT {COMPARTMENT_COLUMNS} FROM cmek_compartments WHERE id = $1"
                        ),
                        &[&id.as_str()],
                    )
                    .await?;
                row.as_ref().map(compartment_of).transpose()
            })
            .await
    }

    async fn compartments(&self) -> Result<Vec<Compartment>> {
        let mut all: Vec<Compartment> = self
            .db
            .timed("listing compartments", async {
                let client = self.db.client().await?;
                let rows = client
                    .query(
                        &format!("SELECT {COMPARTMENT_COLUMNS} FROM cmek_compartments"),
                        &[],
                    )
                    .await?;
                rows.iter().map(compartment_of).collect()
            })
            .await?;
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.compartment_id.cmp(&b.compartment_id))
        });
        Ok(all)
    }

    async fn attached_compartments(&self, key: &ExternalKeyId) -> Result<Vec<CompartmentId>> {
        let mut ids: Vec<CompartmentId> = self
            .db
            .timed("listing a key's compartments", async {
                let client = self.db.client().await?;
                let rows = client
                    .query(
                        "SELECT id FROM cmek_compartments WHERE external_key_id = $1",
                        &[&key.as_str()],
                    )
                    .await?;
                rows.iter()
                    .map(|row| id_of(CompartmentId::new(column::<&str>(row, 0)?)))
                    .collect()
            })
            .await?;
        ids.sort();
        Ok(ids)
    }

    async fn attach(
        &self,
        id: &CompartmentId,
        key: &ExternalKeyId,
        at: OffsetDateTime,
    ) -> Result<Compartment> {
        self.db
            .timed("attaching an external key", async {
                let mut client = self.db.client().await?;
                let tx = super::transaction(&mut client).await?;
                let select =
                    format!("SELECT {COMPARTMENT_COLUMNS} FROM cmek_compartments WHERE id = $1");
                if tx.query_opt(&select, &[&id.as_str()]).await?.is_none() {
                    return Err(Error::not_found(format!("no compartment {id}")).into());
                }
                attachable(locked_key(&tx, key).await?.as_ref(), key)?;
                // Write-once: only a compartment without a key takes one.
                let attached = tx
                    .query_opt(
                        &format!(
                            "UPDATE cmek_compartments SET external_key_id = $2, updated_at_ns = $3
                             WHERE id = $1 AND external_key_id IS NULL
                             RETURNING {COMPARTMENT_COLUMNS}"
                        ),
                        &[&id.as_str(), &key.as_str(), &nanos(at)?],
                    )
                    .await?;
                let row = match attached {
                    Some(row) => {
                        // New data of the compartment goes under the key on every node.
                        record(&tx, &Change::Purged(id.clone())).await?;
                        row
                    }
                    None => tx
                        .query_opt(&select, &[&id.as_str()])
                        .await?
                        .ok_or_else(|| Error::not_found(format!("no compartment {id}")))?,
                };
                let compartment = compartment_of(&row)?;
                if let Some(existing) = &compartment.external_key_id {
                    reattachable(id, existing, key)?;
                }
                tx.commit().await?;
                Ok(compartment)
            })
            .await
    }

    async fn put_rewrap_job(&self, job: &RewrapJob) -> Result<()> {
        self.db
            .timed("saving a rewrap job", async {
                let client = self.db.client().await?;
                client
                    .execute(
                        "INSERT INTO cmek_rewrap_jobs (external_key_id, body) VALUES ($1, $2)
                         ON CONFLICT (external_key_id) DO UPDATE SET body = excluded.body",
                        &[&job.external_key_id.as_str(), &Json(job)],
                    )
                    .await?;
                Ok(())
            })
            .await
    }

    async fn rewrap_job(&self, key: &ExternalKeyId) -> Result<Option<RewrapJob>> {
        self.db
            .timed("reading a rewrap job", async {
                let client = self.db.client().await?;
                let row = client
                    .query_opt(
                        "SELECT body FROM cmek_rewrap_jobs WHERE external_key_id = $1",
                        &[&key.as_str()],
                    )
                    .await?;
                row.map(|row| Ok(column::<Json<RewrapJob>>(&row, 0)?.0))
                    .transpose()
            })
            .await
    }

    async fn acquire_lease(&self, job: &str, holder: &str, ttl: Duration) -> Result<JobLease> {
        check_job_name(job)?;
        self.db.acquire_lease(job, holder, ttl).await
    }

    async fn release_lease(&self, job: &str, holder: &str) -> Result<()> {
        self.db.release_lease(job, holder).await
    }

    async fn lease(&self, job: &str) -> Result<Option<JobLease>> {
        self.db.lease(job).await
    }
}

fn already_exists(id: &CompartmentId) -> Error {
    Error::new(ErrorKind::AlreadyExists, format!("compartment {id} exists"))
}
