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
mod builder;
mod compartments;
mod factory;
mod file_store;
pub(crate) mod jobs;
mod keys;
mod memory_store;
mod model;
mod resolver;
mod rewrap;
pub(crate) mod store;
mod validation;

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

pub use audit::{
    Actor, AuditEvent, AuditPage, AuditSink, JsonLinesAuditSink, MemoryAuditSink, Outcome,
    TracingAuditSink,
};
pub use factory::{BackendFactory, DefaultBackendFactory};
pub use file_store::FileControlStore;
pub use jobs::JobLease;
pub use memory_store::MemoryControlStore;
pub use model::{
    Compartment, CreateExternalKey, ExternalKey, ExternalKeyId, ExternalKeyType, ProviderConfig,
    ValidationFailure, ValidationRecord, ValidationResult, ValidationStatus,
};
pub use rewrap::RewrapJob;
pub use store::ControlStore;
pub use validation::{VALIDATION_COMPARTMENT, VALIDATION_OTHER_COMPARTMENT};

pub use builder::ControlPlaneBuilder;
use resolver::Plane;

use crate::client::Client;
use crate::error::Result;

/// The key configuration id of the provider-managed key.
pub const PROVIDER_MANAGED: &str = "provider-managed";

/// The control plane. Cheap to share by reference; its [`Client`] is cheap to clone.
pub struct ControlPlane {
    inner: Arc<Plane>,
    client: Client,
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

    /// The activity feed: up to `limit` audit events after the cursor `after` (0 for the
    /// first page, then [`AuditPage::next`]), oldest first, from every node sharing the audit
    /// trail.
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) when the audit sink
    /// cannot be read back (`tracing`); the sink's failure.
    pub async fn activity(&self, after: u64, limit: usize) -> Result<AuditPage> {
        self.inner.audit.page(after, limit).await
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
                self.inner.record(event).await?;
                Ok(value)
            }
            Err(e) => {
                let mut event = event;
                event.outcome = Outcome::Failure;
                event.detail = Some(e.to_string());
                self.inner.record(event).await?;
                Err(e)
            }
        }
    }
}
