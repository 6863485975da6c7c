//! The backends of this crate pass the KMS backend conformance suite.

mod common;

use std::sync::Arc;

use cmek::LocalKms;
use cmek::kms::local::VersionState;
use cmek::testkit::{FaultyKms, conformance};
use common::IgnoresContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_in_memory_passes() {
    let kms = Arc::new(LocalKms::generate("local:conformance").unwrap());
    conformance::run_all(kms.clone(), Some(&*kms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_key_file_passes_after_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Arc::new(LocalKms::create(dir.path().join("kek.json"), "local:file").unwrap());
    kms.rotate().unwrap();
    kms.set_version_state(1, VersionState::Disabled).unwrap();
    conformance::run_all(kms.clone(), Some(&*kms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_kms_passes_when_no_faults_are_queued() {
    let kms = Arc::new(FaultyKms::in_memory().unwrap());
    conformance::run_all(kms.clone(), Some(&*kms)).await;
    assert!(kms.wrap_calls() > 0 && kms.unwrap_calls() > 0);
}

#[tokio::test]
#[should_panic(expected = "unwrap under another compartment succeeded")]
async fn the_suite_catches_a_backend_that_ignores_the_context() {
    // A backend that forgets the context must fail the suite: the suite is not vacuous.
    let backend = IgnoresContext(LocalKms::generate("local:bad").unwrap());
    conformance::wrong_context_fails(&backend).await;
}
