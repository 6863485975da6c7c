//! The backends of this crate pass the KMS backend conformance suite.

use std::sync::Arc;

use cmek::LocalKms;
use cmek::kms::local::VersionState;
use cmek::testkit::{FaultyKms, conformance};

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
    #[derive(Debug)]
    struct IgnoresContext(LocalKms);
    impl std::fmt::Display for IgnoresContext {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("IgnoresContext")
        }
    }
    #[async_trait::async_trait]
    impl cmek::KmsBackend for IgnoresContext {
        fn provider(&self) -> cmek::Provider {
            self.0.provider()
        }
        async fn describe(&self) -> cmek::Result<cmek::KeyDescription> {
            self.0.describe().await
        }
        async fn wrap(
            &self,
            dek: &cmek::DataKey,
            _: &cmek::WrapContext<'_>,
        ) -> cmek::Result<cmek::WrappedKey> {
            let (c, k) = (
                cmek::CompartmentId::new("fixed").unwrap(),
                cmek::KeyConfigId::new("fixed").unwrap(),
            );
            self.0.wrap(dek, &cmek::WrapContext::new(&c, &k)).await
        }
        async fn unwrap(
            &self,
            w: &cmek::WrappedKey,
            _: &cmek::WrapContext<'_>,
        ) -> cmek::Result<cmek::DataKey> {
            let (c, k) = (
                cmek::CompartmentId::new("fixed").unwrap(),
                cmek::KeyConfigId::new("fixed").unwrap(),
            );
            self.0.unwrap(w, &cmek::WrapContext::new(&c, &k)).await
        }
    }
    let backend = IgnoresContext(LocalKms::generate("local:bad").unwrap());
    conformance::wrong_context_fails(&backend).await;
}
