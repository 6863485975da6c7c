//! Job leases as rows of `cmek_leases`, taken by one conditional upsert (so of nodes racing
//! for a job exactly one gets it) and timed by the database's clock, not the nodes'.

use std::time::Duration;

use super::control_store::time_of;
use super::{OpError, Postgres, column, transaction};
use crate::control::JobLease;
use crate::error::Result;

/// The database's time in Unix nanoseconds, in SQL.
const NOW_NS: &str = "(extract(epoch from clock_timestamp()) * 1000000000)::bigint";

fn lease_of(job: &str, row: &tokio_postgres::Row) -> std::result::Result<JobLease, OpError> {
    let holder: String = column(row, 0)?;
    let expires_at = time_of(column(row, 1)?)?;
    Ok(JobLease {
        job: job.to_owned(),
        holder,
        expires_at,
    })
}

impl Postgres {
    pub(super) async fn acquire_lease(
        &self,
        job: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<JobLease> {
        let ttl = ttl.min(crate::control::jobs::MAX_LEASE);
        let ttl_ns = i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX / 4);
        self.timed("taking a job lease", async {
            // At READ COMMITTED whatever the database's default: a racer waits for the row
            // the winner wrote and then sees it, rather than failing to serialize.
            let mut client = self.client().await?;
            let tx = transaction(&mut client).await?;
            let taken = tx
                .query_opt(
                    &format!(
                        "INSERT INTO cmek_leases AS l (job, holder, expires_at_ns)
                         VALUES ($1, $2, {NOW_NS} + $3)
                         ON CONFLICT (job) DO UPDATE
                         SET holder = excluded.holder, expires_at_ns = excluded.expires_at_ns
                         WHERE l.holder = excluded.holder OR l.expires_at_ns <= {NOW_NS}
                         RETURNING holder, expires_at_ns"
                    ),
                    &[&job, &holder, &ttl_ns],
                )
                .await?;
            if let Some(row) = taken {
                let lease = lease_of(job, &row)?;
                tx.commit().await?;
                return Ok(lease);
            }
            // Held by another node: say who (if it was given up meanwhile, the caller retries).
            let row = tx
                .query_opt(
                    "SELECT holder, expires_at_ns FROM cmek_leases WHERE job = $1",
                    &[&job],
                )
                .await?;
            let held = match row {
                Some(row) => lease_of(job, &row)?,
                None => JobLease {
                    job: job.to_owned(),
                    holder: "another node (it has just given it up)".to_owned(),
                    expires_at: crate::control::now(),
                },
            };
            Err(held.held().into())
        })
        .await
    }

    pub(super) async fn release_lease(&self, job: &str, holder: &str) -> Result<()> {
        self.timed("giving up a job lease", async {
            let mut client = self.client().await?;
            let tx = transaction(&mut client).await?;
            tx.execute(
                "DELETE FROM cmek_leases WHERE job = $1 AND holder = $2",
                &[&job, &holder],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    pub(super) async fn lease(&self, job: &str) -> Result<Option<JobLease>> {
        self.timed("reading a job lease", async {
            let row = self
                .client()
                .await?
                .query_opt(
                    "SELECT holder, expires_at_ns FROM cmek_leases WHERE job = $1",
                    &[&job],
                )
                .await?;
            row.map(|row| lease_of(job, &row)).transpose()
        })
        .await
    }
}
