//! The control plane's test fixture: fault-injecting local keys behind a factory, a plane over
//! a store, and helpers.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{fast_retry, short_breaker};
use async_trait::async_trait;
use cmek::control::{
    Actor, BackendFactory, ControlPlane, ControlStore, CreateExternalKey, DefaultBackendFactory,
    ExternalKey, ExternalKeyId, FileControlStore, JsonLinesAuditSink, MemoryAuditSink,
    MemoryControlStore, Outcome, ProviderConfig, ValidationStatus,
};
use cmek::testkit::FaultyKms;
use cmek::{
    CacheConfig, CompartmentId, DekStore, FileDekStore, KmsBackend, LocalKms, MemoryDekStore,
};

pub use crate::common::*;

/// Hands out registered fault-injecting local keys by key file; anything else goes to the
/// default factory.
#[derive(Debug, Default)]
pub(crate) struct Keys(
    Mutex<HashMap<String, Arc<dyn KmsBackend>>>,
    /// Backends handed out so far.
    std::sync::atomic::AtomicUsize,
);

impl Keys {
    pub(crate) fn add(&self, dir: &Path, name: &str) -> (ProviderConfig, Arc<FaultyKms>) {
        let path = dir.join(format!("{name}.key"));
        let kms = Arc::new(FaultyKms::new(
            LocalKms::create(&path, format!("local:{name}")).unwrap(),
        ));
        let config = ProviderConfig::Local {
            key_file: path.display().to_string(),
        };
        self.register(&config, kms.clone());
        (config, kms)
    }

    pub(crate) fn register(&self, config: &ProviderConfig, backend: Arc<dyn KmsBackend>) {
        self.0.lock().unwrap().insert(config.key_ref(), backend);
    }

    pub(crate) fn builds(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl BackendFactory for Keys {
    async fn backend(&self, config: &ProviderConfig) -> cmek::Result<Arc<dyn KmsBackend>> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Building a cloud client takes a while (credentials, sometimes a network call).
        tokio::time::sleep(Duration::from_millis(2)).await;
        let registered = self.0.lock().unwrap().get(&config.key_ref()).cloned();
        match registered {
            Some(backend) => Ok(backend),
            None => DefaultBackendFactory::new().backend(config).await,
        }
    }
}

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) keys: Arc<Keys>,
    pub(crate) audit: Arc<MemoryAuditSink>,
    pub(crate) provider_managed: Arc<FaultyKms>,
    pub(crate) dek_store: Arc<dyn DekStore>,
    pub(crate) plane: ControlPlane,
    pub(crate) admin: Actor,
}

pub(crate) fn fixture_with(store: Arc<dyn ControlStore>, cache: CacheConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keys::default());
    let audit = Arc::new(MemoryAuditSink::new());
    let provider_managed = Arc::new(FaultyKms::new(
        LocalKms::generate("local:provider").unwrap(),
    ));
    let dek_store: Arc<dyn DekStore> = Arc::new(MemoryDekStore::new());
    let plane = ControlPlane::builder()
        .store(store)
        .dek_store(dek_store.clone())
        .audit(audit.clone())
        .factory(keys.clone())
        .provider_managed(provider_managed.clone())
        .cache(cache)
        .retry(fast_retry())
        .breaker(short_breaker())
        .build()
        .unwrap();
    Fixture {
        dir,
        keys,
        audit,
        provider_managed,
        dek_store,
        plane,
        admin: Actor::new("admin@example.com"),
    }
}

pub(crate) fn fixture() -> Fixture {
    fixture_with(Arc::new(MemoryControlStore::new()), CacheConfig::default())
}

impl Fixture {
    /// A registered local key and its configuration, created (not validated).
    pub(crate) async fn key(&self, name: &str) -> (ExternalKey, Arc<FaultyKms>) {
        let (config, kms) = self.keys.add(self.dir.path(), name);
        let key = self
            .plane
            .create_external_key(&self.admin, CreateExternalKey::new(name, config))
            .await
            .unwrap();
        (key, kms)
    }

    /// A registered local key, created and validated.
    pub(crate) async fn validated_key(&self, name: &str) -> (ExternalKey, Arc<FaultyKms>) {
        let (key, kms) = self.key(name).await;
        let result = self
            .plane
            .validate_external_key(&self.admin, &key.id)
            .await
            .unwrap();
        assert_eq!(result.status, ValidationStatus::Success, "{result:?}");
        (key, kms)
    }

    pub(crate) async fn compartment(&self, key: Option<&ExternalKeyId>) -> CompartmentId {
        self.plane
            .create_compartment(&self.admin, key)
            .await
            .unwrap()
            .compartment_id
    }

    pub(crate) fn actions(&self) -> Vec<(String, Outcome)> {
        self.audit
            .events()
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect()
    }
}

/// Drops every cached data key of these compartments, so the next calls go to the KMS.
pub(crate) fn purge(client: &cmek::Client, compartments: &[CompartmentId]) {
    for c in compartments {
        client.purge(c);
    }
}

pub(crate) fn inspect(envelope: &[u8]) -> cmek::format::EnvelopeInfo {
    cmek::format::inspect(envelope).unwrap()
}

pub(crate) fn durable_plane(state: &Path, provider_managed: Arc<LocalKms>) -> ControlPlane {
    ControlPlane::builder()
        .store(Arc::new(
            FileControlStore::open(state.join("control")).unwrap(),
        ))
        .dek_store(Arc::new(
            FileDekStore::open(state.join("dek_records")).unwrap(),
        ))
        .audit(Arc::new(
            JsonLinesAuditSink::open(state.join("audit.jsonl")).unwrap(),
        ))
        .provider_managed(provider_managed)
        .retry(fast_retry())
        .build()
        .unwrap()
}
