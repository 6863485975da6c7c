//! Deletion, revocation, and configuration changes that race.

use crate::fixture::*;
use std::sync::Arc;
use std::time::Duration;

use crate::common::BREAKER_WINDOW;
use cmek::control::{
    Actor, AuditEvent, ControlStore, FileControlStore, MemoryControlStore, Outcome, ProviderConfig,
    ValidationStatus,
};
use cmek::{CacheConfig, ErrorKind};

/// Runs `a` and `b` at the same time on a plane over `store`: a slow validation of the key
/// against a rotation, and two slow rotations against each other. No change may be lost.
async fn concurrent_key_changes_are_not_lost_on(store: Arc<dyn ControlStore>) {
    let f = fixture_with(store, CacheConfig::default());
    let (key, old_kms) = f.validated_key("old").await;
    let (b, b_kms) = f.keys.add(f.dir.path(), "b");
    let (c, c_kms) = f.keys.add(f.dir.path(), "c");

    // A validation that takes a while, and a rotation that lands meanwhile.
    old_kms.set_latency(Duration::from_millis(100));
    let (validated, rotated) =
        tokio::join!(f.plane.validate_external_key(&f.admin, &key.id), async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            f.plane
                .rotate_external_key(&f.admin, &key.id, b.clone())
                .await
        });
    old_kms.set_latency(Duration::ZERO);
    assert_eq!(validated.unwrap().status, ValidationStatus::Success);
    rotated.unwrap();
    let stored = f.plane.external_key(&key.id).await.unwrap();
    assert_eq!(
        stored.provider_config, b,
        "the validation did not undo the rotation"
    );
    assert_eq!(
        stored.previous_provider_configs,
        std::slice::from_ref(&key.provider_config)
    );
    assert!(
        stored.is_validated(),
        "the rotation's validation of b stands"
    );

    // Two rotations at once: both keys stay known to the configuration.
    b_kms.set_latency(Duration::from_millis(50));
    c_kms.set_latency(Duration::from_millis(50));
    let (d, _) = f.keys.add(f.dir.path(), "d");
    let (to_c, to_d) = tokio::join!(
        f.plane.rotate_external_key(&f.admin, &key.id, c.clone()),
        f.plane.rotate_external_key(&f.admin, &key.id, d.clone()),
    );
    to_c.unwrap();
    to_d.unwrap();
    let stored = f.plane.external_key(&key.id).await.unwrap();
    let mut known: Vec<String> = std::iter::once(&stored.provider_config)
        .chain(&stored.previous_provider_configs)
        .map(ProviderConfig::key_ref)
        .collect();
    known.sort();
    let mut expected: Vec<String> = [&key.provider_config, &b, &c, &d]
        .into_iter()
        .map(ProviderConfig::key_ref)
        .collect();
    expected.sort();
    assert_eq!(
        known, expected,
        "no key the configuration wrapped with is forgotten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_key_changes_are_not_lost() {
    concurrent_key_changes_are_not_lost_on(Arc::new(MemoryControlStore::new())).await;
    let state = tempfile::tempdir().unwrap();
    concurrent_key_changes_are_not_lost_on(Arc::new(FileControlStore::open(state.path()).unwrap()))
        .await;
}

#[tokio::test]
async fn rewrap_passes_over_a_record_no_key_can_unwrap_and_a_later_run_retries_it() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_messages = 1; // one DEK record per message
    cache.refresh_fraction = 1.0;
    let f = fixture_with(Arc::new(MemoryControlStore::new()), cache);
    let (key, old_kms) = f.validated_key("old").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let mut envelopes = Vec::new();
    for n in 0..4 {
        if n == 1 {
            // The first record under version 1 of the old key, the others under version 2.
            old_kms.inner().rotate().unwrap();
        }
        let text = format!("record {n}");
        let envelope = client
            .encrypt_compact(&c, text.as_bytes(), b"")
            .await
            .unwrap();
        envelopes.push((text, envelope));
    }
    assert_eq!(f.dek_store.list(&c).await.unwrap().len(), 4);
    let (new_config, _) = f.keys.add(f.dir.path(), "new");
    f.plane
        .rotate_external_key(&f.admin, &key.id, new_config)
        .await
        .unwrap();

    // Version 1 of the old key is disabled: its record cannot be read, the others can.
    old_kms
        .inner()
        .set_version_state(1, cmek::kms::local::VersionState::Disabled)
        .unwrap();
    let job = f.plane.rewrap(&f.admin, &key.id, 1, |_| {}).await.unwrap();
    assert!(job.finished_at.is_some());
    assert_eq!(
        (
            job.examined,
            job.rewrapped,
            job.already_current,
            job.unreadable
        ),
        (4, 3, 0, 1),
        "the unreadable record does not hold back the others"
    );
    let complete = f
        .audit
        .events()
        .into_iter()
        .rfind(|e| e.action == "rewrap.complete")
        .unwrap();
    assert_eq!(complete.outcome, Outcome::Failure);
    assert!(
        complete.detail.as_deref().unwrap().contains("unreadable 1"),
        "{complete:?}"
    );

    // The version is back: the next run (once its breaker asks again) moves the last record.
    old_kms
        .inner()
        .set_version_state(1, cmek::kms::local::VersionState::Enabled)
        .unwrap();
    tokio::time::sleep(BREAKER_WINDOW).await;
    let job = f.plane.rewrap(&f.admin, &key.id, 1, |_| {}).await.unwrap();
    assert_eq!(
        (
            job.examined,
            job.rewrapped,
            job.already_current,
            job.unreadable
        ),
        (4, 1, 3, 0)
    );
    for id in f.dek_store.list(&c).await.unwrap() {
        let record = f.dek_store.get(&c, &id).await.unwrap().unwrap();
        assert_eq!(record.wrapped().key_id, "local:new");
    }
    purge(client, std::slice::from_ref(&c));
    for (text, envelope) in &envelopes {
        assert_eq!(
            client.decrypt(&c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }
}

#[tokio::test]
async fn deleting_an_attached_key_needs_force_and_stops_new_encryptions_at_once() {
    let f = fixture();
    let (key, _) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let envelope = client.encrypt(&c, b"kept", b"").await.unwrap();

    let err = f
        .plane
        .delete_external_key(&f.admin, &key.id, false)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.kind().http_status()),
        (ErrorKind::AlreadyExists, 409)
    );
    assert!(err.message().contains("force"), "{err}");
    client.encrypt(&c, b"still fine", b"").await.unwrap();

    let deleted = f
        .plane
        .delete_external_key(&f.admin, &key.id, true)
        .await
        .unwrap();
    assert!(deleted.is_deleted());
    let err = client.encrypt(&c, b"refused", b"").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::KeyRevoked,
        "a cached data key must not outlive the deletion"
    );
    assert!(err.message().contains("deleted"), "{err}");
    assert_eq!(
        client.decrypt(&c, &envelope, b"").await.unwrap(),
        b"kept",
        "readable while the KMS key is"
    );
    let other = f.compartment(None).await;
    assert_eq!(
        f.plane
            .attach_external_key(&f.admin, &other, &key.id)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Validation
    );

    let (unattached, _) = f.validated_key("spare").await;
    f.plane
        .delete_external_key(&f.admin, &unattached.id, false)
        .await
        .unwrap();
    assert!(
        f.actions()
            .contains(&("external_key.delete".to_owned(), Outcome::Failure))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_made_while_its_key_is_deleted_is_not_used() {
    let f = fixture();
    let (key, kms) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    kms.set_latency(Duration::from_millis(300));
    let client = f.plane.client().clone();
    let first = tokio::spawn({
        let (client, c) = (client.clone(), c.clone());
        async move { client.encrypt(&c, b"racing the deletion", b"").await }
    });
    // The encryption is waiting on the KMS for its data key when the key is deleted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        kms.wrap_calls(),
        2,
        "validation's wrap and the encryption's"
    );
    f.plane
        .delete_external_key(&f.admin, &key.id, true)
        .await
        .unwrap();
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    let err = client.encrypt(&c, b"after", b"").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::KeyRevoked,
        "no data key of a deleted configuration is cached: {err}"
    );
}

#[tokio::test]
async fn a_disabled_kms_key_makes_data_unreadable_within_the_cache_bound() {
    let bound = Duration::from_millis(300);
    let mut cache = CacheConfig::default();
    cache.encrypt_max_age = bound;
    cache.decrypt_max_age = bound;
    let f = fixture_with(Arc::new(MemoryControlStore::new()), cache);
    let (key, kms) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let envelope = client.encrypt(&c, b"secret", b"").await.unwrap();
    assert_eq!(client.decrypt(&c, &envelope, b"").await.unwrap(), b"secret");

    kms.disable();
    tokio::time::sleep(bound + Duration::from_millis(150)).await;
    let err = client.decrypt(&c, &envelope, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    assert!(err.to_string().contains("disabled"), "{err}");
    assert_eq!(
        client.encrypt(&c, b"more", b"").await.unwrap_err().kind(),
        ErrorKind::KeyRevoked
    );

    // Key events are recorded by a task of their own: wait for it.
    let detected: Vec<AuditEvent> = f
        .audit
        .wait_for("key.revocation_detected", Duration::from_secs(5))
        .await;
    assert_eq!(
        detected.len(),
        1,
        "one event per revocation, not per failing call"
    );
    assert_eq!(
        detected[0].external_key_id.as_deref(),
        Some(key.id.as_str())
    );
    assert_eq!(detected[0].actor, Actor::system());

    kms.enable();
    tokio::time::sleep(BREAKER_WINDOW).await;
    assert_eq!(
        client.decrypt(&c, &envelope, b"").await.unwrap(),
        b"secret",
        "re-enabling the key restores access"
    );
}
