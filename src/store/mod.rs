//! Where DEK records live: the [`DekStore`] trait, in memory and in files.
//!
//! Compact envelopes carry only a DEK id; the [`DekRecord`] that unwraps it is written once, when the
//! DEK is created and **before** the first envelope under it is returned, so data never refers to a
//! record that was not persisted.

mod file;
mod memory;

use std::fmt;

use async_trait::async_trait;

pub use file::FileDekStore;
pub use memory::MemoryDekStore;

use crate::error::Result;
use crate::format::DekRecord;
use crate::ids::{CompartmentId, DekId};

/// Persists DEK records, keyed by compartment and DEK id.
#[async_trait]
pub trait DekStore: Send + Sync + fmt::Debug + 'static {
    /// Stores `record`, replacing any record with the same compartment and DEK id (a rewrap
    /// replaces the wrapping of the same DEK). Must be durable when it returns.
    ///
    /// # Errors
    /// The store's I/O failure.
    async fn put(&self, record: &DekRecord) -> Result<()>;

    /// Loads a record.
    ///
    /// # Errors
    /// The store's I/O failure, or [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput)
    /// for a corrupt record.
    async fn get(&self, compartment: &CompartmentId, dek_id: &DekId) -> Result<Option<DekRecord>>;

    /// The ids of all records of `compartment`, in no particular order.
    ///
    /// # Errors
    /// The store's I/O failure.
    async fn list(&self, compartment: &CompartmentId) -> Result<Vec<DekId>>;
}
