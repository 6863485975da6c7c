//! The CMEK control plane: what a storage service needs to offer customer-managed keys.
//!
//! * **External key configurations** ([`ExternalKey`], JSON as in the reference API):
//!   created from a [`CreateExternalKey`] with field-level validation, validated with a real
//!   round trip ([`ControlPlane::validate_external_key`]), rotated to a new KMS key
//!   (OpenAI-style, [`ControlPlane::rotate_external_key`]), deleted (deactivated).
//! * **Compartments** ([`Compartment`]): a UUID v4 each; a write-once `external_key_id`. Data
//!   written before a key is attached stays under the provider-managed key and stays readable.
//! * **Rewrap** of stored DEK records after a rotation ([`ControlPlane::rewrap`]).
//! * **Audit events** for every change ([`audit`]).
//! * The [`Client`] it hands out resolves every compartment's key through it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> cmek::Result<()> {
//! use std::sync::Arc;
//! use cmek::control::{Actor, ControlPlane, CreateExternalKey, ProviderConfig, MemoryControlStore, MemoryAuditSink};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let kek = dir.path().join("customer-kek.json");
//! cmek::LocalKms::create(&kek, "local:customer")?;
//! let plane = ControlPlane::builder()
//!     .store(Arc::new(MemoryControlStore::new()))
//!     .audit(Arc::new(MemoryAuditSink::new()))
//!     .provider_managed(Arc::new(cmek::LocalKms::generate("local:provider")?))
//!     .build()?;
//! let admin = Actor::new("admin@example.com");
//! let key = plane
//!     .create_external_key(&admin, CreateExternalKey::new("customer key", ProviderConfig::Local {
//!         key_file: kek.display().to_string(),
//!     }))
//!     .await?;
//! assert_eq!(plane.validate_external_key(&admin, &key.id).await?.error, None);
//! let workspace = plane.create_compartment(&admin, None).await?;
//! plane.attach_external_key(&admin, &workspace.compartment_id, &key.id).await?;
//! let envelope = plane.client().encrypt(&workspace.compartment_id, b"data", b"").await?;
//! # let _ = envelope; Ok(()) }
//! ```

pub mod audit;
mod backends;
mod factory;
mod file_store;
mod model;
mod rewrap;
mod store;
mod validation;

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use audit::{
    Actor, AuditEvent, AuditSink, JsonLinesAuditSink, MemoryAuditSink, Outcome, TracingAuditSink,
};
pub use factory::{BackendFactory, DefaultBackendFactory};
pub use file_store::FileControlStore;
pub use model::{
    Compartment, CreateExternalKey, ExternalKey, ExternalKeyId, ExternalKeyType, ProviderConfig,
    ValidationFailure, ValidationRecord, ValidationResult, ValidationStatus,
};
pub use rewrap::RewrapJob;
pub use store::{ControlStore, MemoryControlStore};
pub use validation::{VALIDATION_COMPARTMENT, VALIDATION_OTHER_COMPARTMENT};

use self::backends::Backends;
use crate::cache::CacheConfig;
use crate::client::Client;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{CompartmentId, KeyConfigId};
use crate::kms::health::{KeyEvent, KeyEventKind, KeyState};
use crate::kms::{BreakerConfig, KeyBinding, KeyResolver, KmsBackend, RetryPolicy};
use crate::store::{DekStore, MemoryDekStore};

/// The key configuration id of the provider-managed key.
pub const PROVIDER_MANAGED: &str = "provider-managed";

/// The control plane. Cheap to share by reference; its [`Client`] is cheap to clone.
pub struct ControlPlane {
    inner: Arc<Plane>,
    client: Client,
}

struct Plane {
    store: Arc<dyn ControlStore>,
    dek_store: Arc<dyn DekStore>,
    audit: Arc<dyn AuditSink>,
    provider_managed: KeyBinding,
    backends: Arc<Backends>,
}

impl fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("store", &self.inner.store)
            .field("audit", &self.inner.audit)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Plane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlane")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

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
    /// [`ErrorKind::Configuration`] without a store or provider-managed key.
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

impl Plane {
    fn record(&self, event: AuditEvent) -> Result<()> {
        self.audit.record(&event)
    }

    async fn key(&self, id: &ExternalKeyId) -> Result<ExternalKey> {
        self.store
            .external_key(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no external key {id}")))
    }

    /// Applies `change` to the stored configuration `id` and saves it, reading and applying
    /// again when another writer changed it in between (compare-and-swap on `updated_at`).
    async fn update_key(
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
    async fn backend(&self, key: &ExternalKey) -> Result<Arc<dyn KmsBackend>> {
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

/// The current time to microsecond precision, as the reference API prints it.
pub(crate) fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1_000 * 1_000)
        .unwrap_or(t)
}

impl ControlPlane {
    /// Starts building a control plane.
    pub fn builder() -> ControlPlaneBuilder {
        ControlPlaneBuilder::default()
    }

    /// The client that encrypts and decrypts compartments' data under their keys.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `op` (building a backend, which may ask the cloud for credentials) within the
    /// client's deadline.
    async fn within_deadline<T>(
        &self,
        op: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + self.client.layers().deadline;
        crate::kms::layers::deadline::within(deadline, op).await
    }

    /// Runs `op`, recording its outcome as an audit event.
    async fn audited<T>(
        &self,
        event: AuditEvent,
        op: impl std::future::Future<Output = Result<T>>,
        detail: impl FnOnce(&T) -> Option<String>,
    ) -> Result<T> {
        match op.await {
            Ok(value) => {
                let mut event = event;
                event.detail = detail(&value);
                self.inner.record(event)?;
                Ok(value)
            }
            Err(e) => {
                let mut event = event;
                event.outcome = Outcome::Failure;
                event.detail = Some(e.to_string());
                self.inner.record(event)?;
                Err(e)
            }
        }
    }

    /// Creates an external key configuration (`POST /external_keys`).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] naming the bad field; the store's errors.
    pub async fn create_external_key(
        &self,
        actor: &Actor,
        request: CreateExternalKey,
    ) -> Result<ExternalKey> {
        let event = AuditEvent::new(actor, "external_key.create", Outcome::Success);
        let mut request = request;
        let op = async {
            request.validate()?;
            let at = now();
            let key = ExternalKey {
                id: ExternalKeyId::generate()?,
                kind: ExternalKeyType::ExternalKey,
                display_name: request.display_name.clone(),
                geo: request.geo.clone().unwrap_or_else(|| "us".to_owned()),
                provider_config: request.provider_config.clone(),
                created_at: at,
                updated_at: at,
                previous_provider_configs: Vec::new(),
                last_validation: None,
                deleted_at: None,
            };
            self.inner.store.insert_external_key(&key).await?;
            Ok(key)
        };
        let key = self
            .audited(event, op, |k| {
                Some(format!(
                    "created {} ({})",
                    k.id,
                    k.provider_config.provider()
                ))
            })
            .await?;
        Ok(key)
    }

    /// A configuration.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub async fn external_key(&self, id: &ExternalKeyId) -> Result<ExternalKey> {
        self.inner.key(id).await
    }

    /// Every configuration (deleted ones too).
    ///
    /// # Errors
    /// The store's errors.
    pub async fn external_keys(&self) -> Result<Vec<ExternalKey>> {
        self.inner.store.external_keys().await
    }

    /// Validates a configuration (`POST /external_keys/{id}/validate`): the backend's key checks,
    /// an encrypt/decrypt round trip under the compartment [`VALIDATION_COMPARTMENT`], and a
    /// check that the key binds data keys to compartments. The outcome is recorded on the
    /// configuration; attaching requires a success.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] for an unknown configuration, [`ErrorKind::Validation`] for a
    /// deleted one. Validation failures are not errors: they come back classified in the result.
    pub async fn validate_external_key(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
    ) -> Result<ValidationResult> {
        let key = self.inner.key(id).await?;
        if key.is_deleted() {
            let detail =
                format!("external key {id} is deleted: it cannot be validated or attached");
            let event = AuditEvent::new(actor, "external_key.validate", Outcome::Failure).key(id);
            self.inner.record(event.detail(detail.clone()))?;
            return Err(Error::new(ErrorKind::Validation, detail));
        }
        let result = match self.within_deadline(self.inner.backend(&key)).await {
            Ok(backend) => {
                let layers = self.client.layers();
                validation::validate(&layers.one_off(backend), &key.key_config(), layers.deadline)
                    .await
            }
            Err(e) => validation::classify(&e),
        };
        let record = ValidationRecord {
            status: result.status,
            at: now(),
            key_ref: key.provider_config.key_ref(),
        };
        self.inner
            .update_key(id, |stored| {
                // A rotation may have landed meanwhile: the result is about the earlier key then.
                if stored.provider_config.key_ref() == record.key_ref {
                    stored.last_validation = Some(record.clone());
                }
                Ok(())
            })
            .await?;
        let outcome = if result.status == ValidationStatus::Success {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        let mut event = AuditEvent::new(actor, "external_key.validate", outcome).key(id);
        if let Some(e) = &result.error {
            event = event.detail(format!("{}: {}", e.kind, e.message));
        }
        self.inner.record(event)?;
        Ok(result)
    }

    /// Moves a configuration to a new KMS key of the same provider (`POST
    /// /external_keys/{id}/rotate`, OpenAI style). The new key is validated first; new data
    /// goes under it at once; data under the earlier keys stays readable (and
    /// [`ControlPlane::rewrap`] moves DEK records over).
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] for a bad or failing new configuration or another provider.
    pub async fn rotate_external_key(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
        provider_config: ProviderConfig,
    ) -> Result<ExternalKey> {
        let event = AuditEvent::new(actor, "external_key.rotate", Outcome::Success).key(id);
        let rotatable = |key: &ExternalKey, config: &ProviderConfig| {
            if key.is_deleted() {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("external key {id} is deleted"),
                ));
            }
            if config.provider() != key.provider_config.provider() {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!(
                        "provider_config.type: a {} key rotates to another {} key",
                        key.provider_config.provider(),
                        key.provider_config.provider()
                    ),
                ));
            }
            Ok(())
        };
        let op = async {
            let mut config = provider_config;
            config.validate()?;
            let key = self.inner.key(id).await?;
            rotatable(&key, &config)?;
            let backend = self
                .within_deadline(self.inner.backends.factory().backend(&config))
                .await?;
            self.distinct_key(&key, &config, backend.as_ref()).await?;
            let layers = self.client.layers();
            let result =
                validation::validate(&layers.one_off(backend), &key.key_config(), layers.deadline)
                    .await;
            if let Some(e) = result.error {
                return Err(Error::new(
                    ErrorKind::Validation,
                    format!("the new key failed validation: {}: {}", e.kind, e.message),
                ));
            }
            let validated = ValidationRecord {
                status: ValidationStatus::Success,
                at: now(),
                key_ref: config.key_ref(),
            };
            let key = self
                .inner
                .update_key(id, |stored| {
                    rotatable(stored, &config)?;
                    let old = std::mem::replace(&mut stored.provider_config, config.clone());
                    stored.previous_provider_configs.push(old);
                    stored.last_validation = Some(validated.clone());
                    Ok(())
                })
                .await?;
            self.client.retire(&key.key_config());
            Ok(key)
        };
        self.audited(event, op, |k| {
            Some(format!("now {}", k.provider_config.key_ref()))
        })
        .await
    }

    /// Refuses a rotation to a key that cannot be told apart from one the configuration has or
    /// had: the same key reference, or the same key id (envelopes and DEK records name their key
    /// by id, so two keys with one id would mix up whose data is whose).
    async fn distinct_key(
        &self,
        key: &ExternalKey,
        config: &ProviderConfig,
        candidate: &dyn KmsBackend,
    ) -> Result<()> {
        let key_ref = config.key_ref();
        if std::iter::once(&key.provider_config)
            .chain(&key.previous_provider_configs)
            .any(|c| c.key_ref() == key_ref)
        {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "provider_config: {key_ref} already is a key of external key {}",
                    key.id
                ),
            ));
        }
        let candidate_id = match candidate.wrapping_key_id() {
            Some(id) => id.to_owned(),
            None => candidate.describe().await?.key_id,
        };
        if let Ok(built) = self.inner.backends.built(key).await
            && built.backend.key_ids().any(|id| id == candidate_id)
        {
            return Err(Error::new(
                ErrorKind::Validation,
                format!(
                    "provider_config: the new key has the key id {candidate_id:?}, like a key external key {} has or had; distinct keys need distinct ids (`cmek keygen` gives every key file its own)",
                    key.id
                ),
            ));
        }
        Ok(())
    }

    /// Deletes (deactivates) a configuration: no new data goes under it from now on; existing
    /// data stays readable while the KMS key is reachable. A configuration attached to
    /// compartments is refused unless `force`.
    ///
    /// # Errors
    /// [`ErrorKind::AlreadyExists`] (409, conflict) when attached and not forced.
    pub async fn delete_external_key(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
        force: bool,
    ) -> Result<ExternalKey> {
        let event = AuditEvent::new(actor, "external_key.delete", Outcome::Success).key(id);
        let op = async {
            // Atomic in the store: an attachment either lands first (and the deletion is
            // refused) or sees the deletion; a refused deletion is never visible to anyone.
            let key = self
                .inner
                .store
                .delete_external_key(id, now(), force)
                .await?;
            self.client.retire(&key.key_config());
            Ok(key)
        };
        self.audited(event, op, |_| None).await
    }

    /// Creates a compartment, optionally with an external key (which must be validated).
    ///
    /// # Errors
    /// As for [`ControlPlane::attach_external_key`].
    pub async fn create_compartment(
        &self,
        actor: &Actor,
        external_key_id: Option<&ExternalKeyId>,
    ) -> Result<Compartment> {
        let event = AuditEvent::new(actor, "compartment.create", Outcome::Success);
        let op = async {
            let mut c = Compartment::new(now())?;
            if let Some(id) = external_key_id {
                self.attachable(id).await?;
                c.external_key_id = Some(id.clone());
            }
            self.inner.store.insert_compartment(&c).await?;
            Ok(c)
        };
        let event = match external_key_id {
            Some(id) => event.key(id),
            None => event,
        };
        self.audited(event, op, |c| Some(format!("created {}", c.compartment_id)))
            .await
    }

    /// A compartment.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub async fn compartment(&self, id: &CompartmentId) -> Result<Compartment> {
        self.inner
            .store
            .compartment(id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no compartment {id}")))
    }

    /// Every compartment.
    ///
    /// # Errors
    /// The store's errors.
    pub async fn compartments(&self) -> Result<Vec<Compartment>> {
        self.inner.store.compartments().await
    }

    async fn attachable(&self, id: &ExternalKeyId) -> Result<ExternalKey> {
        let key = self.inner.key(id).await?;
        if key.is_deleted() {
            return Err(Error::new(
                ErrorKind::Validation,
                format!("external_key_id: {id} is deleted"),
            ));
        }
        if !key.is_validated() {
            return Err(Error::new(
                ErrorKind::Validation,
                format!("external_key_id: {id} has not passed validation; validate it first"),
            ));
        }
        Ok(key)
    }

    /// Attaches a validated external key to a compartment, once. Setting the same key again is
    /// a no-op; another key fails with [`ErrorKind::AlreadyExists`]. New data of the compartment
    /// goes under the key from now on; earlier data stays under the provider-managed key.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`], [`ErrorKind::Validation`] (not validated or deleted),
    /// [`ErrorKind::AlreadyExists`] (another key is attached).
    pub async fn attach_external_key(
        &self,
        actor: &Actor,
        compartment: &CompartmentId,
        id: &ExternalKeyId,
    ) -> Result<Compartment> {
        let event = AuditEvent::new(actor, "compartment.attach", Outcome::Success)
            .key(id)
            .compartment(compartment);
        let op = async {
            self.attachable(id).await?;
            let c = self.inner.store.attach(compartment, id, now()).await?;
            self.client.purge(compartment);
            Ok(c)
        };
        self.audited(event, op, |_| None).await
    }

    async fn attached_compartments(&self, id: &ExternalKeyId) -> Result<Vec<CompartmentId>> {
        let mut ids: Vec<CompartmentId> = self
            .inner
            .store
            .compartments()
            .await?
            .into_iter()
            .filter(|c| c.external_key_id.as_ref() == Some(id))
            .map(|c| c.compartment_id)
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Re-wraps the stored DEK records of every compartment attached to `id` under its current
    /// KMS key, `batch` records at a time, calling `progress` after each batch. Resumes an
    /// interrupted run; records already under the current key are skipped; records no key can
    /// unwrap any more are counted in [`RewrapJob::unreadable`] and passed over (the audit event
    /// then reports a failure).
    ///
    /// # Errors
    /// The first KMS or store error (progress up to the last full batch is kept).
    pub async fn rewrap(
        &self,
        actor: &Actor,
        id: &ExternalKeyId,
        batch: usize,
        mut progress: impl FnMut(&RewrapJob),
    ) -> Result<RewrapJob> {
        let key = self.inner.key(id).await?;
        let keys = self
            .within_deadline(self.inner.backends.built(&key))
            .await?
            .backend;
        let target = keys.wrapping_key_id().unwrap_or_default().to_owned();
        let mut job = match self.inner.store.rewrap_job(id).await? {
            Some(job) if job.target_key_ref == target && job.finished_at.is_none() => job,
            _ => RewrapJob::new(id.clone(), target.clone()),
        };
        self.inner.record(
            AuditEvent::new(actor, "rewrap.start", Outcome::Success)
                .key(id)
                .detail(format!("to {target}, from {:?}", job.cursor)),
        )?;
        let compartments = self.attached_compartments(id).await?;
        let store = self.inner.store.clone();
        let backend = self.client.layers().in_use(keys.clone());
        let rewrapper = rewrap::Rewrapper {
            store: self.inner.dek_store.as_ref(),
            keys: &keys,
            backend: &backend,
            key_config: &key.key_config(),
        };
        let outcome = rewrapper
            .run(&mut job, &compartments, batch, async |job: &RewrapJob| {
                store.put_rewrap_job(job).await?;
                progress(job);
                Ok(())
            })
            .await;
        let summary = |job: &RewrapJob| {
            format!(
                "examined {}, rewrapped {}, already current {}, unreadable {}",
                job.examined, job.rewrapped, job.already_current, job.unreadable
            )
        };
        match outcome {
            Ok(()) => {
                job.finished_at = Some(now());
                self.inner.store.put_rewrap_job(&job).await?;
                // Records no key could unwrap were passed over: not everything moved.
                let outcome = if job.unreadable == 0 {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                self.inner.record(
                    AuditEvent::new(actor, "rewrap.complete", outcome)
                        .key(id)
                        .detail(summary(&job)),
                )?;
                Ok(job)
            }
            Err(e) => {
                self.inner.store.put_rewrap_job(&job).await?;
                self.inner.record(
                    AuditEvent::new(actor, "rewrap.complete", Outcome::Failure)
                        .key(id)
                        .detail(format!("{}; interrupted: {e}", summary(&job))),
                )?;
                Err(e)
            }
        }
    }
}
