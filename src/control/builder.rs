//! Building a [`ControlPlane`]: its stores, audit trail, backends and client.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

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

/// How long a job's lease lasts unless renewed, by default.
const DEFAULT_JOB_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

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
    node: Option<String>,
    job_lease: Option<std::time::Duration>,
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

    /// Keeps configurations, compartments, DEK records and the audit trail in the PostgreSQL
    /// database `db` ([`Postgres::connect`](crate::postgres::Postgres::connect) takes its
    /// `postgres://` URL), shared by every node on it.
    #[cfg(feature = "postgres")]
    pub fn postgres(self, db: &crate::postgres::Postgres) -> Self {
        self.store(Arc::new(db.control_store()))
            .dek_store(Arc::new(db.dek_store()))
            .audit(Arc::new(db.audit_sink()))
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

    /// This node's name in job leases (default: host name, process id and a random suffix,
    /// unique to this control plane).
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    /// How long a job's lease (a rewrap's) lasts unless renewed; renewed before every
    /// checkpoint, and what a crashed node holds a job for at most. Default 60 s; kept
    /// between 100 ms and 7 days.
    pub fn job_lease(mut self, ttl: std::time::Duration) -> Self {
        self.job_lease = Some(ttl.clamp(super::jobs::MIN_LEASE, super::jobs::MAX_LEASE));
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
            node: self.node.unwrap_or_else(super::jobs::default_node_name),
            job_lease: self.job_lease.unwrap_or(DEFAULT_JOB_LEASE),
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
        let key_events = KeyEventAudit::new(audit);
        client.subscribe_key_events(Arc::new(move |event| key_events.send(event)));
        Ok(ControlPlane { inner, client })
    }
}

/// Writes the key events an admin should see into the audit trail: revocations detected,
/// access restored, degraded mode starting and ending. Key events arrive synchronously (a
/// listener must not block): a sink that can record without waiting does so at once; for
/// the others they go in order through a channel to one task on the runtime that saw the
/// first of them.
struct KeyEventAudit {
    audit: Arc<dyn AuditSink>,
    queue: Mutex<Option<mpsc::UnboundedSender<AuditEvent>>>,
}

impl KeyEventAudit {
    fn new(audit: Arc<dyn AuditSink>) -> Self {
        Self {
            audit,
            queue: Mutex::new(None),
        }
    }

    fn send(&self, event: &KeyEvent) {
        let Some(record) = audit_event_of(event) else {
            return;
        };
        if let Some(recorded) = self.audit.record_now(&record) {
            if let Err(e) = recorded {
                tracing::warn!(error = %e, action = record.action, "could not record a key event in the audit trail");
            }
            return;
        }
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // The task is gone when its runtime was shut down: start another on this one.
        let record = match queue.as_ref() {
            Some(tx) => match tx.send(record) {
                Ok(()) => return,
                Err(mpsc::error::SendError(record)) => record,
            },
            None => record,
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                action = record.action,
                "a key event outside a Tokio runtime is not recorded in the audit trail"
            );
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<AuditEvent>();
        let _ = tx.send(record);
        let audit = self.audit.clone();
        runtime.spawn(async move {
            while let Some(record) = rx.recv().await {
                if let Err(e) = audit.record(&record).await {
                    tracing::warn!(error = %e, action = record.action, "could not record a key event in the audit trail");
                }
            }
        });
        *queue = Some(tx);
    }
}

/// The audit event of a key event an admin should see, if it is one.
fn audit_event_of(event: &KeyEvent) -> Option<AuditEvent> {
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
        _ => return None,
    };
    let mut record = AuditEvent::new(&Actor::system(), action, Outcome::Success);
    if let Ok(id) = ExternalKeyId::new(event.key_config.as_str()) {
        record = record.key(&id);
    }
    let detail = match &event.cause {
        Some(cause) => format!("{}: {cause}", event.key_id),
        None => event.key_id.clone(),
    };
    Some(record.detail(detail))
}
