//! The [`Guard`] layer: the per-key breaker in front of a backend (see [`crate::kms::health`]).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::DataKey;
use crate::kms::health::{Admission, HealthRegistry, Slot};
use crate::kms::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};

/// Answers calls of a revoked, denied or unreachable key from its breaker instead of the KMS,
/// records every answer in the key's health, and reports a deleted key as revoked to writers
/// and readers alike.
///
/// A wrap is filed under the backend's [`KmsBackend::wrapping_key_id`]; an unwrap under the key
/// and key version that wrapped the DEK. `describe` and `check_key` pass through unguarded.
pub struct Guard<T> {
    inner: T,
    health: Arc<HealthRegistry>,
}

impl<T> Guard<T> {
    pub(crate) fn new(inner: T, health: Arc<HealthRegistry>) -> Self {
        Self { inner, health }
    }
}

impl<T: fmt::Debug> fmt::Debug for Guard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T: fmt::Display> fmt::Display for Guard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guard({})", self.inner)
    }
}

/// Records a call that never finished as a transient failure of its key.
struct Pending<'a> {
    health: &'a HealthRegistry,
    slot: Arc<Slot>,
    admission: Admission,
    is_wrap: bool,
    done: bool,
}

impl Pending<'_> {
    fn finish<T>(mut self, outcome: Result<T>) -> Result<T> {
        self.done = true;
        self.health
            .record(&self.slot, self.admission, self.is_wrap, outcome)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.health.abandoned(&self.slot, self.admission);
        }
    }
}

impl<T: KmsBackend> Guard<T> {
    fn enter(
        &self,
        context: &WrapContext<'_>,
        key_id: &str,
        key_version: &str,
        is_wrap: bool,
    ) -> Result<Pending<'_>> {
        let slot = self.health.slot(
            context.key_config(),
            key_id,
            key_version,
            self.inner.provider(),
        );
        let admission = self.health.admit(&slot)?;
        Ok(Pending {
            health: &self.health,
            slot,
            admission,
            is_wrap,
            done: false,
        })
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: KmsBackend> KmsBackend for Guard<T> {
    fn provider(&self) -> Provider {
        self.inner.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        self.inner.wrapping_key_id()
    }

    async fn describe(&self) -> Result<KeyDescription> {
        self.inner.describe().await
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        let key_id = self.inner.wrapping_key_id().unwrap_or_default().to_owned();
        let pending = self.enter(context, &key_id, "", true)?;
        let outcome = self.inner.wrap(dek, context).await;
        pending.finish(outcome)
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        let pending = self.enter(context, &wrapped.key_id, &wrapped.key_version, false)?;
        let outcome = self.inner.unwrap(wrapped, context).await;
        pending.finish(outcome)
    }

    async fn check_key(&self) -> Result<()> {
        self.inner.check_key().await
    }
}
