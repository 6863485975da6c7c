//! The control plane's state as the client sees it: which key each compartment's data goes under
//! ([`KeyResolver`]), and the reads and guarded updates of configurations the other rooms share.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use super::backends::Backends;
use super::{AuditEvent, AuditSink, ControlStore, ExternalKey, ExternalKeyId, now};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{CompartmentId, KeyConfigId};
use crate::kms::{KeyBinding, KeyResolver, KmsBackend};
use crate::store::DekStore;

/// What the control plane holds, shared with its client as the [`KeyResolver`].
pub(super) struct Plane {
    pub(super) store: Arc<dyn ControlStore>,
    pub(super) dek_store: Arc<dyn DekStore>,
    pub(super) audit: Arc<dyn AuditSink>,
    pub(super) provider_managed: KeyBinding,
    pub(super) backends: Arc<Backends>,
    /// This node's name, as job leases give it.
    pub(super) node: String,
    /// How long a job's lease lasts unless renewed.
    pub(super) job_lease: std::time::Duration,
}

impl fmt::Debug for Plane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Plane {
    pub(super) async fn record(&self, event: AuditEvent) -> Result<()> {
        self.audit.record(&event).await
    }

    pub(super) async fn key(&self, id: &ExternalKeyId) -> Result<ExternalKey> {
        self.store
            .external_key(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no external key {id}")))
    }

    /// Applies `change` to the stored configuration `id` and saves it, reading and applying
    /// again when another writer changed it in between (compare-and-swap on `updated_at`).
    pub(super) async fn update_key(
        &self,
        id: &ExternalKeyId,
        mut change: impl FnMut(&mut ExternalKey) -> Result<()>,
    ) -> Result<ExternalKey> {
        for _ in 0..16 {
            let mut key = self.key(id).await?;
            let read_at = key.updated_at;
            change(&mut key)?;
            // Strictly later, so an update within the same microsecond still changes the token.
            key.updated_at = now().max(read_at + time::Duration::microseconds(1));
            match self.store.update_external_key(&key, read_at).await {
                Ok(()) => return Ok(key),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::transient(format!(
            "external key {id} keeps changing under this update; try again"
        )))
    }

    /// The backend of a configuration: current and earlier keys.
    pub(super) async fn backend(&self, key: &ExternalKey) -> Result<Arc<dyn KmsBackend>> {
        self.backends.backend(key).await
    }
}

#[async_trait]
impl KeyResolver for Plane {
    async fn encryption_key(&self, compartment: &CompartmentId) -> Result<KeyBinding> {
        let c = self
            .store
            .compartment(compartment)
            .await?
            .ok_or_else(|| Error::not_found(format!("no compartment {compartment}")))?;
        let Some(id) = c.external_key_id else {
            return Ok(self.provider_managed.clone());
        };
        let key = self.key(&id).await?;
        if key.is_deleted() {
            return Err(Error::revoked(format!(
                "external key {id} is deleted: no new data may be written under it"
            )));
        }
        Ok(KeyBinding::new(key.key_config(), self.backend(&key).await?))
    }

    async fn decryption_key(
        &self,
        _compartment: &CompartmentId,
        key_config: &KeyConfigId,
    ) -> Result<Arc<dyn KmsBackend>> {
        if *key_config == self.provider_managed.key_config {
            return Ok(self.provider_managed.backend.clone());
        }
        let id = ExternalKeyId::new(key_config.as_str())
            .map_err(|_| Error::not_found(format!("unknown key configuration {key_config}")))?;
        // Deleted configurations still decrypt while their KMS key is reachable.
        self.backend(&self.key(&id).await?).await
    }
}
