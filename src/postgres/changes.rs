//! Changes that affect cached DEKs, written with the state they follow from and pushed to
//! every node ([`ChangeFeed`](super::ChangeFeed) says how, and the bound).

use std::time::Duration;

use super::{OpError, Postgres, column};
use crate::client::Client;
use crate::error::Result;
use crate::ids::{CompartmentId, KeyConfigId};

/// The channel of the notifications.
pub(super) const CHANNEL: &str = "cmek_changes";

/// What a change asks every node's cache to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// New data under this key configuration must go under a new DEK: the key was rotated
    /// or deleted ([`Client::retire`]).
    Retired(KeyConfigId),
    /// Every cached DEK of this compartment goes: a key was attached to it
    /// ([`Client::purge`]).
    Purged(CompartmentId),
    /// A node saw this key revoked at its KMS: every cached DEK under it goes, so the next
    /// use on any node asks the KMS ([`Client::evict`]).
    Revoked(KeyConfigId),
}

impl Change {
    fn columns(&self) -> (&'static str, Option<&str>, Option<&str>) {
        match self {
            Self::Retired(k) => ("retired", Some(k.as_str()), None),
            Self::Purged(c) => ("purged", None, Some(c.as_str())),
            Self::Revoked(k) => ("revoked", Some(k.as_str()), None),
        }
    }

    pub(super) fn from_columns(
        kind: &str,
        key_config: Option<&str>,
        compartment: Option<&str>,
    ) -> Option<Self> {
        match (kind, key_config, compartment) {
            ("retired", Some(k), _) => KeyConfigId::new(k).ok().map(Self::Retired),
            ("purged", _, Some(c)) => CompartmentId::new(c).ok().map(Self::Purged),
            ("revoked", Some(k), _) => KeyConfigId::new(k).ok().map(Self::Revoked),
            _ => None,
        }
    }

    /// Applies the change to `client`'s caches.
    pub fn apply(&self, client: &Client) {
        match self {
            Self::Retired(k) => client.retire(k),
            Self::Purged(c) => client.purge(c),
            Self::Revoked(k) => client.evict(k),
        }
    }
}

/// Records `change` in the transaction `tx` (which must also make the change to the state);
/// returns its generation.
pub(super) async fn record(
    tx: &tokio_postgres::Transaction<'_>,
    change: &Change,
) -> std::result::Result<i64, OpError> {
    let row = tx
        .query_one(
            "UPDATE cmek_generation SET value = value + 1 RETURNING value",
            &[],
        )
        .await?;
    let generation: i64 = column(&row, 0)?;
    let (kind, key_config, compartment) = change.columns();
    tx.execute(
        "INSERT INTO cmek_changes (generation, kind, key_config_id, compartment_id)
         VALUES ($1, $2, $3, $4)",
        &[&generation, &kind, &key_config, &compartment],
    )
    .await?;
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &generation.to_string()],
    )
    .await?;
    Ok(generation)
}

impl Postgres {
    /// Records `change` on its own (a revocation a node saw): every node's feed applies it.
    ///
    /// # Errors
    /// The database's failure.
    pub async fn publish(&self, change: &Change) -> Result<i64> {
        self.timed("publishing a change", async {
            let mut client = self.client().await?;
            let tx = super::transaction(&mut client).await?;
            let generation = record(&tx, change).await?;
            tx.commit().await?;
            Ok(generation)
        })
        .await
    }

    /// The generation of the last change recorded.
    ///
    /// # Errors
    /// The database's failure.
    pub async fn generation(&self) -> Result<i64> {
        self.timed("reading the generation", async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT value FROM cmek_generation", &[])
                .await?;
            column(&row, 0)
        })
        .await
    }

    /// Removes the changes recorded more than `older_than` ago; returns how many. A node
    /// that had not read them yet (cut off for longer) notices the gap and drops every cached
    /// DEK instead. Every [`ChangeFeed`](super::ChangeFeed) prunes what is older than
    /// [`FeedOptions::keep_changes`](super::FeedOptions::keep_changes) once an hour.
    ///
    /// # Errors
    /// The database's failure.
    pub async fn prune_changes(&self, older_than: Duration) -> Result<u64> {
        self.timed("pruning changes", async {
            let client = self.client().await?;
            Ok(client
                .execute(
                    // Only ever a prefix (times need not follow the numbers), so that a
                    // feed sees a gap wherever something it had not read is gone.
                    "DELETE FROM cmek_changes WHERE generation <= (
                         SELECT max(generation) FROM cmek_changes
                         WHERE made_at < now() - make_interval(secs => $1))",
                    &[&older_than.as_secs_f64()],
                )
                .await?)
        })
        .await
    }
}
