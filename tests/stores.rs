//! Every store passes its conformance suite (`cmek::testkit::store_conformance`), and the suite
//! catches a store that breaks the write-once rule.

use std::sync::Arc;

use async_trait::async_trait;
use cmek::control::{
    Compartment, ControlStore, ExternalKey, ExternalKeyId, FileControlStore, MemoryControlStore,
    RewrapJob,
};
use cmek::testkit::store_conformance;
use cmek::{CompartmentId, ErrorKind, FileDekStore, MemoryDekStore, Result};
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_dek_store() {
    let store = Arc::new(MemoryDekStore::new());
    store_conformance::dek_store(move || store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_dek_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    store_conformance::dek_store(move || Arc::new(FileDekStore::open(&root).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_control_store() {
    let store = Arc::new(MemoryControlStore::new());
    store_conformance::control_store(move || store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_control_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    store_conformance::control_store(move || Arc::new(FileControlStore::open(&root).unwrap()))
        .await;
}

/// A store whose attachment is not write-once: it answers a conflict by claiming success.
#[derive(Debug, Default)]
struct OverwritingAttach(MemoryControlStore);

#[async_trait]
impl ControlStore for OverwritingAttach {
    async fn insert_external_key(&self, key: &ExternalKey) -> Result<()> {
        self.0.insert_external_key(key).await
    }
    async fn update_external_key(&self, key: &ExternalKey, at: OffsetDateTime) -> Result<()> {
        self.0.update_external_key(key, at).await
    }
    async fn delete_external_key(
        &self,
        id: &ExternalKeyId,
        at: OffsetDateTime,
        force: bool,
    ) -> Result<ExternalKey> {
        self.0.delete_external_key(id, at, force).await
    }
    async fn external_key(&self, id: &ExternalKeyId) -> Result<Option<ExternalKey>> {
        self.0.external_key(id).await
    }
    async fn external_keys(&self) -> Result<Vec<ExternalKey>> {
        self.0.external_keys().await
    }
    async fn insert_compartment(&self, compartment: &Compartment) -> Result<()> {
        self.0.insert_compartment(compartment).await
    }
    async fn compartment(&self, id: &CompartmentId) -> Result<Option<Compartment>> {
        self.0.compartment(id).await
    }
    async fn compartments(&self) -> Result<Vec<Compartment>> {
        self.0.compartments().await
    }
    async fn attached_compartments(&self, key: &ExternalKeyId) -> Result<Vec<CompartmentId>> {
        self.0.attached_compartments(key).await
    }
    async fn attach(
        &self,
        id: &CompartmentId,
        key: &ExternalKeyId,
        at: OffsetDateTime,
    ) -> Result<Compartment> {
        match self.0.attach(id, key, at).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let mut c = self.0.compartment(id).await?.unwrap();
                c.external_key_id = Some(key.clone());
                Ok(c)
            }
            other => other,
        }
    }
    async fn put_rewrap_job(&self, job: &RewrapJob) -> Result<()> {
        self.0.put_rewrap_job(job).await
    }
    async fn rewrap_job(&self, key: &ExternalKeyId) -> Result<Option<RewrapJob>> {
        self.0.rewrap_job(key).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "a second key was attached")]
async fn the_suite_catches_an_attachment_that_is_not_write_once() {
    let store = Arc::new(OverwritingAttach::default());
    store_conformance::control_store(move || store.clone()).await;
}
