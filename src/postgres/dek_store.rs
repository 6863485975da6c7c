//! [`PostgresDekStore`]: DEK records as rows of `cmek_dek_records`.

use async_trait::async_trait;

use super::{Postgres, column};
use crate::error::{Error, Result};
use crate::format::DekRecord;
use crate::ids::{CompartmentId, DekId};
use crate::store::DekStore;

/// DEK records in PostgreSQL, one row per record (its canonical bytes), shared by every node
/// on the database. Made by [`Postgres::dek_store`].
#[derive(Clone, Debug)]
pub struct PostgresDekStore {
    db: Postgres,
}

impl PostgresDekStore {
    pub(super) fn new(db: Postgres) -> Self {
        Self { db }
    }
}

#[async_trait]
impl DekStore for PostgresDekStore {
    async fn put(&self, record: &DekRecord) -> Result<()> {
        let bytes = record.to_bytes();
        let dek_id = record.dek_id().to_bytes();
        self.db
            .timed("writing a DEK record", async {
                let client = self.db.client().await?;
                client
                    .execute(
                        "INSERT INTO cmek_dek_records (compartment_id, dek_id, key_config_id, record)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (compartment_id, dek_id) DO UPDATE
                         SET key_config_id = excluded.key_config_id, record = excluded.record,
                             written_at = now()",
                        &[
                            &record.compartment().as_str(),
                            &&dek_id[..],
                            &record.key_config().as_str(),
                            &bytes,
                        ],
                    )
                    .await?;
                Ok(())
            })
            .await
    }

    async fn get(&self, compartment: &CompartmentId, dek_id: &DekId) -> Result<Option<DekRecord>> {
        let id = dek_id.to_bytes();
        let bytes = self
            .db
            .timed("reading a DEK record", async {
                let client = self.db.client().await?;
                let row = client
                    .query_opt(
                        "SELECT record FROM cmek_dek_records
                         WHERE compartment_id = $1 AND dek_id = $2",
                        &[&compartment.as_str(), &&id[..]],
                    )
                    .await?;
                row.map(|row| column::<Vec<u8>>(&row, 0)).transpose()
            })
            .await?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let record = DekRecord::from_bytes(&bytes)
            .map_err(|e| e.with_context(format!("DEK record {compartment}/{dek_id}")))?;
        if record.compartment() != compartment || record.dek_id() != *dek_id {
            return Err(Error::invalid_input(format!(
                "DEK record {compartment}/{dek_id} holds another record"
            )));
        }
        Ok(Some(record))
    }

    async fn list(&self, compartment: &CompartmentId) -> Result<Vec<DekId>> {
        self.db
            .timed("listing DEK records", async {
                let client = self.db.client().await?;
                let rows = client
                    .query(
                        "SELECT dek_id FROM cmek_dek_records WHERE compartment_id = $1",
                        &[&compartment.as_str()],
                    )
                    .await?;
                rows.iter()
                    .map(|row| {
                        let bytes: &[u8] = column(row, 0)?;
                        let bytes = bytes.try_into().map_err(|_| {
                            Error::invalid_input("a DEK id in the database is not 16 bytes")
                        })?;
                        Ok(DekId::from_bytes(bytes))
                    })
                    .collect()
            })
            .await
    }
}
