//! Building a [`ControlPlane`]: its stores, audit trail, backends and client.

use std::fmt;
use std::sync::Arc;

use super::backends::Backends;
use super::resolver::Plane;
use super::{
    Actor, AuditEvent, AuditSink, BackendFactory, ControlPlane, ControlStore,
    DefaultBackendFactory, ExternalKeyId, Outcome, PROVIDER_MANAGED, TracingAuditSink,
};
use crate::cache::CacheConfig;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::ids::KeyConfigId;
use crate::kms::health::{KeyEvent, KeyEventKind, KeyState};
use crate::kms::{BreakerConfig, KeyBinding, KmsBackend, RetryPolicy};
use crate::store::{DekStore, MemoryDekStore};

/// Builds a [`ControlPlane`].
#[derive(Default)]
#[must_use]
pub struct ControlPlaneBuilder {
    store: Option<Arc<dyn ControlStore>>,
    dek_store: Option<Arc<dyn DekStore>>,
    audit: Option<Arc<dyn AuditSink>>,
    factory: Option<Arc<dyn BackendFactory>>,
    provider_managed: Option<Arc<dyn KmsBackend>>,
    cache: CacheConfig,
    retry: RetryPolicy,
    deadline: Option<std::time::Duration>,
    breaker: BreakerConfig,
}

impl fmt::Debug for ControlPlaneBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneBuilder")
            .finish_non_exhaustive()
    }
}

impl ControlPlaneBuilder {
    /// Where configurations and compartments live (required).
    pub fn store(mut self, store: Arc<dyn ControlStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where DEK records live (default: in memory).
    pub fn dek_store(mut self, store: Arc<dyn DekStore>) -> Self {
        self.dek_store = Some(store);
        self
    }

    /// Where audit events go (default: `tracing`).
    pub fn audit(mut self, audit: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// How provider configurations become backends (default: [`DefaultBackendFactory`]).
    pub fn factory(mut self, factory: Arc<dyn BackendFactory>) -> Self {
        self.factory = Some(factory);
        self
    }

    /// The provider-managed key: compartments without an external key use it (required).
    pub fn provider_managed(mut self, backend: Arc<dyn KmsBackend>) -> Self {
        self.provider_managed = Some(backend);
        self
    }

    /// The data-key cache limits of the client.
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }

    /// Retries of KMS calls (client, validation and rewrap).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The deadline of each operation that asks the KMS (client, validation, each record of a
    /// rewrap); default 10 s.
    pub fn deadline(mut self, deadline: std::time::Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// How the per-key breaker treats revoked, denied and unreachable keys.
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Builds the control plane and its client.
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) without a store or provider-managed key.
    pub fn build(self) -> Result<ControlPlane> {
        let store = self
            .store
            .ok_or_else(|| Error::configuration("ControlPlane needs a store"))?;
        let provider_managed = self
            .provider_managed
            .ok_or_else(|| Error::configuration("ControlPlane needs a provider-managed key"))?;
        let dek_store = self
            .dek_store
            .unwrap_or_else(|| Arc::new(MemoryDekStore::new()));
        let audit = self.audit.unwrap_or_else(|| Arc::new(TracingAuditSink));
        let factory = self
            .factory
            .unwrap_or_else(|| Arc::new(DefaultBackendFactory::new()));
        let inner = Arc::new(Plane {
            store,
            dek_store: dek_store.clone(),
            backends: Arc::new(Backends::new(factory)),
            audit: audit.clone(),
            provider_managed: KeyBinding::new(
                KeyConfigId::new(PROVIDER_MANAGED)?,
                provider_managed,
            ),
        });
        let mut client = Client::builder()
            .key_resolver(inner.clone())
            .dek_store(dek_store)
            .cache(self.cache)
            .retry(self.retry)
            .breaker(self.breaker);
        if let Some(deadline) = self.deadline {
            client = client.deadline(deadline);
        }
        let client = client.build()?;
        client.subscribe_key_events(Arc::new(move |event| {
            audit_key_event(audit.as_ref(), event)
        }));
        Ok(ControlPlane { inner, client })
    }
}

/// Writes the key events an admin should see into the audit trail: revocations detected,
/// access restored, degraded mode starting and ending.
fn audit_key_event(audit: &dyn AuditSink, event: &KeyEvent) {
    let action = match &event.kind {
        KeyEventKind::StateChanged {
            revocation: true, ..
        } => "key.revocation_detected",
        KeyEventKind::StateChanged {
            from: KeyState::Revoked | KeyState::Denied,
            to: KeyState::Healthy,
            ..
        } => "key.restored",
        KeyEventKind::DegradedStarted => "key.degraded_started",
        KeyEventKind::DegradedEnded => "key.degraded_ended",
        _ => return,
    };
    let mut record = AuditEvent::new(&Actor::system(), action, Outcome::Success);
    if let Ok(id) = ExternalKeyId::new(event.key_config.as_str()) {
        record = record.key(&id);
    }
    let detail = match &event.cause {
        Some(cause) => format!("{}: {cause}", event.key_id),
        None => event.key_id.clone(),
    };
    if let Err(e) = audit.record(&record.detail(detail)) {
        tracing::warn!(error = %e, action, "could not record a key event in the audit trail");
    }
}
