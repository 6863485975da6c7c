//! The bulk job through the library: what it does with each kind of object, and what it
//! refuses to touch.

use bytes::Bytes;
use cmek::objects::Migration;
use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use object_store::path::Path;

use super::suites::encrypted;

#[tokio::test]
async fn migration_encrypts_plaintext_and_leaves_what_it_cannot_judge() {
    let store = encrypted(InMemory::new());
    let inner = store.inner();
    let plain = Path::from("tenant/plain.csv");
    inner.put(&plain, "id,total\n1,42\n".into()).await.unwrap();
    // Starts with cmek's magic byte but is no envelope this build reads: reported, untouched.
    let odd = Path::from("tenant/odd.bin");
    let odd_bytes = Bytes::from_static(b"\xce\x07garbage that looks like a future envelope");
    inner.put(&odd, odd_bytes.clone().into()).await.unwrap();
    // The staging object of an interrupted create-only copy.
    let staging = Path::from("tenant/x.bin.cmek-copy-0011223344556677");
    inner.put(&staging, "whatever".into()).await.unwrap();
    let current = Path::from("tenant/current.bin");
    store
        .put(&current, "already encrypted".into())
        .await
        .unwrap();

    let report = Migration::new().run(&store, None, |_| {}).await.unwrap();
    let counts = report.counts;
    assert_eq!(
        (
            counts.scanned,
            counts.encrypted,
            counts.unchanged,
            counts.failed
        ),
        (4, 1, 1, 2)
    );
    let failed: Vec<&str> = report.failures.iter().map(|(p, _)| p.as_ref()).collect();
    assert!(
        failed.contains(&odd.as_ref()) && failed.contains(&staging.as_ref()),
        "{failed:?}"
    );
    assert_eq!(
        inner.get(&odd).await.unwrap().bytes().await.unwrap(),
        odd_bytes
    );
    assert_eq!(
        store.get(&plain).await.unwrap().bytes().await.unwrap(),
        "id,total\n1,42\n"
    );

    // Again: nothing left to encrypt, nothing encrypted twice.
    let again = Migration::new()
        .run(&store, None, |_| {})
        .await
        .unwrap()
        .counts;
    assert_eq!((again.encrypted, again.unchanged, again.failed), (0, 2, 2));
    assert_eq!(
        store.get(&plain).await.unwrap().bytes().await.unwrap(),
        "id,total\n1,42\n"
    );
}

#[tokio::test]
async fn a_checkpoint_of_another_job_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("job.checkpoint");
    let store = encrypted(InMemory::new());
    for i in 0..5 {
        store
            .inner()
            .put(&Path::from(format!("tenant/{i}")), "x".into())
            .await
            .unwrap();
    }
    // A checkpoint left by a job over another store.
    std::fs::write(&file, r#"{"job":"s3://other ","after":"tenant/9","counts":{"scanned":1,"encrypted":1,"reencrypted":0,"unchanged":0,"failed":0,"bytes":1},"failures":[]}"#).unwrap();
    let job = Migration::new()
        .with_checkpoint(&file)
        .with_job_name("memory://this");
    let err = job.run(&store, None, |_| {}).await.unwrap_err();
    assert_eq!(err.kind(), cmek::ErrorKind::InvalidInput, "{err}");
    std::fs::remove_file(&file).unwrap();
    let report = job
        .with_batch_size(2)
        .run(&store, None, |_| {})
        .await
        .unwrap();
    assert_eq!(report.counts.encrypted, 5);
    assert!(!file.exists(), "removed at the end");
}

#[tokio::test]
async fn rename_onto_itself_keeps_the_object() {
    let store = encrypted(InMemory::new());
    let path = Path::from("tenant/self");
    store.put(&path, "kept".into()).await.unwrap();
    store.rename(&path, &path).await.unwrap();
    assert_eq!(
        store.get(&path).await.unwrap().bytes().await.unwrap(),
        "kept"
    );
    let err = store.rename_if_not_exists(&path, &path).await.unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
}
