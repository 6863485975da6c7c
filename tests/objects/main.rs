//! `EncryptedStore` over real stores: `object_store`'s own integration suite, cmek's object
//! suite (`testkit::objects`), and what only counting the inner store's work can show.

#[path = "../common/mod.rs"]
mod common;
mod counted;
mod migration;
mod suites;

use std::sync::Arc;

use cmek::objects::{Compartments, EncryptedStore};
use cmek::{Client, LocalKms};
use common::key_config;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use suites::{encrypted, encrypted_fixed, object_store_suite};

#[tokio::test]
async fn in_memory_passes_both_suites() {
    object_store_suite(&encrypted_fixed(InMemory::new()), true, true, true).await;
    cmek::testkit::objects::run_all(&encrypted(InMemory::new())).await;
}

#[tokio::test]
async fn local_files_pass_both_suites() {
    let dir = tempfile::tempdir().unwrap();
    let local = || LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    object_store_suite(&encrypted_fixed(local()), false, true, true).await;
    cmek::testkit::objects::run_all(&encrypted(local())).await;
}

#[tokio::test]
async fn a_client_without_dek_store_is_refused() {
    let client = Client::builder()
        .key(
            key_config(),
            Arc::new(LocalKms::generate("local:k").unwrap()),
        )
        .build()
        .unwrap();
    let err =
        EncryptedStore::new(InMemory::new(), client, Compartments::first_segment()).unwrap_err();
    assert_eq!(err.kind(), cmek::ErrorKind::Configuration);
}
