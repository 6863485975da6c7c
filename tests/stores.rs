//! Every store passes its conformance suite (`cmek::testkit::store_conformance`), and the suite
//! catches a store that breaks the write-once rule or gives a job's lease to every node.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cmek::control::{
    Compartment, ControlStore, ExternalKey, ExternalKeyId, FileControlStore, JobLease,
    JsonLinesAuditSink, MemoryAuditSink, MemoryControlStore, RewrapJob,
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

/// A store that breaks one rule of the suite.
#[derive(Debug, Default)]
struct Broken {
    inner: MemoryControlStore,
    rule: Rule,
}

#[derive(Debug, Default)]
enum Rule {
    /// Attachment is not write-once: a conflict is answered by claiming success.
    #[default]
    Attach,
    /// Every node asking for a job's lease gets it.
    Lease,
}

#[async_trait]
impl ControlStore for Broken {
    async fn insert_external_key(&self, key: &ExternalKey) -> Result<()> {
        self.inner.insert_external_key(key).await
    }
    async fn update_external_key(&self, key: &ExternalKey, at: OffsetDateTime) -> Result<()> {
        self.inner.update_external_key(key, at).await
    }
    async fn delete_external_key(
        &self,
        id: &ExternalKeyId,
        at: OffsetDateTime,
        force: bool,
    ) -> Result<ExternalKey> {
        self.inner.delete_external_key(id, at, force).await
    }
    async fn external_key(&self, id: &ExternalKeyId) -> Result<Option<ExternalKey>> {
        self.inner.external_key(id).await
    }
    async fn external_keys(&self) -> Result<Vec<ExternalKey>> {
        self.inner.external_keys().await
    }
    async fn insert_compartment(&self, compartment: &Compartment) -> Result<()> {
        self.inner.insert_compartment(compartment).await
    }
    async fn compartment(&self, id: &CompartmentId) -> Result<Option<Compartment>> {
        self.inner.compartment(id).await
    }
    async fn compartments(&self) -> Result<Vec<Compartment>> {
        self.inner.compartments().await
    }
    async fn attached_compartments(&self, key: &ExternalKeyId) -> Result<Vec<CompartmentId>> {
        self.inner.attached_compartments(key).await
    }
    async fn attach(
        &self,
        id: &CompartmentId,
        key: &ExternalKeyId,
        at: OffsetDateTime,
    ) -> Result<Compartment> {
        match self.inner.attach(id, key, at).await {
            Err(e) if e.kind() == ErrorKind::AlreadyExists && matches!(self.rule, Rule::Attach) => {
                let mut c = self.inner.compartment(id).await?.unwrap();
                c.external_key_id = Some(key.clone());
                Ok(c)
            }
            other => other,
        }
    }
    async fn put_rewrap_job(&self, job: &RewrapJob) -> Result<()> {
        self.inner.put_rewrap_job(job).await
    }
    async fn rewrap_job(&self, key: &ExternalKeyId) -> Result<Option<RewrapJob>> {
        self.inner.rewrap_job(key).await
    }
    async fn acquire_lease(&self, job: &str, holder: &str, ttl: Duration) -> Result<JobLease> {
        if matches!(self.rule, Rule::Lease) {
            self.inner
                .release_lease(
                    job,
                    &self
                        .inner
                        .lease(job)
                        .await?
                        .map(|l| l.holder)
                        .unwrap_or_default(),
                )
                .await?;
        }
        self.inner.acquire_lease(job, holder, ttl).await
    }
    async fn release_lease(&self, job: &str, holder: &str) -> Result<()> {
        self.inner.release_lease(job, holder).await
    }
    async fn lease(&self, job: &str) -> Result<Option<JobLease>> {
        self.inner.lease(job).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "a second key was attached")]
async fn the_suite_catches_an_attachment_that_is_not_write_once() {
    let store = Arc::new(Broken::default());
    store_conformance::control_store(move || store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "nodes got the lease")]
async fn the_suite_catches_a_lease_given_to_every_node() {
    let store = Arc::new(Broken {
        rule: Rule::Lease,
        ..Broken::default()
    });
    store_conformance::control_store(move || store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_file_audit_sinks_pass_the_suite() {
    store_conformance::audit_sink(Arc::new(MemoryAuditSink::new())).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let sink = JsonLinesAuditSink::open(&path).unwrap();
    store_conformance::audit_sink(Arc::new(sink)).await;
    // A line a crash cut short: the trail stays readable, and new events follow it.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut file, br#"{"time":"2026-12-02T00:00:00Z","act"#).unwrap();
    drop(file);
    let sink = Arc::new(JsonLinesAuditSink::open(&path).unwrap());
    store_conformance::audit_sink(sink).await;
}
