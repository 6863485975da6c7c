//! An in-memory [`DekStore`] (tests, caches in front of a database, ephemeral data).

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;

use super::DekStore;
use crate::error::{Error, Result};
use crate::format::DekRecord;
use crate::ids::{CompartmentId, DekId};

/// Keeps encoded DEK records in a map; everything is lost when it is dropped.
#[derive(Debug, Default)]
pub struct MemoryDekStore {
    records: RwLock<HashMap<(CompartmentId, DekId), Vec<u8>>>,
}

impl MemoryDekStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.records.read().map(|r| r.len()).unwrap_or_default()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn poisoned() -> Error {
    Error::configuration("memory DEK store lock poisoned")
}

#[async_trait]
impl DekStore for MemoryDekStore {
    async fn put(&self, record: &DekRecord) -> Result<()> {
        let key = (record.compartment().clone(), record.dek_id());
        self.records
            .write()
            .map_err(|_| poisoned())?
            .insert(key, record.to_bytes());
        Ok(())
    }

    async fn get(&self, compartment: &CompartmentId, dek_id: &DekId) -> Result<Option<DekRecord>> {
        let records = self.records.read().map_err(|_| poisoned())?;
        records
            .get(&(compartment.clone(), *dek_id))
            .map(|bytes| DekRecord::from_bytes(bytes))
            .transpose()
    }

    async fn list(&self, compartment: &CompartmentId) -> Result<Vec<DekId>> {
        let records = self.records.read().map_err(|_| poisoned())?;
        Ok(records
            .keys()
            .filter(|(c, _)| c == compartment)
            .map(|(_, id)| *id)
            .collect())
    }
}
