//! [`PostgresAuditSink`]: the audit trail as rows of `cmek_audit`, read back page by page as
//! an activity feed.

use async_trait::async_trait;
use tokio_postgres::types::Json;

use super::{Postgres, column, transaction};
use crate::control::{AuditEvent, AuditPage, AuditSink};
use crate::error::Result;

/// The advisory lock an event's insertion holds until it commits, so that events commit in
/// the order of their sequence numbers and a reader paging by number never passes over one
/// that commits late ("cmka" in ASCII).
const AUDIT_LOCK: i64 = 0x636d_6b61;

/// The audit trail of every node in one table, in the order events were recorded. Made by
/// [`Postgres::audit_sink`].
#[derive(Clone, Debug)]
pub struct PostgresAuditSink {
    db: Postgres,
}

impl PostgresAuditSink {
    pub(super) fn new(db: Postgres) -> Self {
        Self { db }
    }
}

#[async_trait]
impl AuditSink for PostgresAuditSink {
    async fn record(&self, event: &AuditEvent) -> Result<()> {
        self.db
            .timed("recording an audit event", async {
                let mut client = self.db.client().await?;
                let tx = transaction(&mut client).await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK])
                    .await?;
                tx.execute(
                    "INSERT INTO cmek_audit (event) VALUES ($1)",
                    &[&Json(event)],
                )
                .await?;
                tx.commit().await?;
                Ok(())
            })
            .await
    }

    /// The cursor is the sequence number of the last event read.
    async fn page(&self, after: u64, limit: usize) -> Result<AuditPage> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        // One more than asked, to know whether more follow.
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        self.db
            .timed("reading the audit trail", async {
                let rows = self
                    .db
                    .client()
                    .await?
                    .query(
                        "SELECT seq, event FROM cmek_audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&after, &fetch],
                    )
                    .await?;
                let has_more = rows.len() > limit;
                let mut page = AuditPage::slice(&[], 0, 0);
                page.next = u64::try_from(after).unwrap_or_default();
                for row in rows.iter().take(limit) {
                    page.next = u64::try_from(column::<i64>(row, 0)?).unwrap_or_default();
                    page.data.push(column::<Json<AuditEvent>>(row, 1)?.0);
                }
                page.has_more = has_more;
                Ok(page)
            })
            .await
    }
}
