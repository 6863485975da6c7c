//! Compartments and the write-once attachment through the plane (the store-level races
//! are in the store suite, `tests/stores.rs`).

use crate::fixture::*;
use std::sync::Arc;

use crate::common::fast_retry;
use cmek::control::{Actor, ControlPlane, ExternalKeyId, MemoryControlStore, PROVIDER_MANAGED};
use cmek::{CacheConfig, CompartmentId, ErrorKind};

#[tokio::test]
async fn data_written_before_attaching_stays_readable_and_new_data_uses_the_key() {
    let f = fixture();
    let c = f.compartment(None).await;
    let client = f.plane.client();
    let before = client.encrypt(&c, b"before", b"").await.unwrap();
    let before_compact = client
        .encrypt_compact(&c, b"before, compact", b"")
        .await
        .unwrap();
    assert_eq!(
        inspect(&before).key_config_id.as_deref(),
        Some(PROVIDER_MANAGED)
    );
    assert_eq!(
        f.provider_managed.wrap_calls(),
        1,
        "one provider-managed data key for both"
    );

    let (key, kms) = f.validated_key("customer").await;
    let wraps = kms.wrap_calls();
    let attached = f
        .plane
        .attach_external_key(&f.admin, &c, &key.id)
        .await
        .unwrap();
    assert_eq!(attached.external_key_id.as_ref(), Some(&key.id));
    let after = client.encrypt(&c, b"after", b"").await.unwrap();
    let info = inspect(&after);
    assert_eq!(info.key_config_id.as_deref(), Some(key.id.as_str()));
    assert_eq!(info.compartment_id.as_deref(), Some(c.as_str()));
    assert_eq!(kms.wrap_calls(), wraps + 1);

    assert_eq!(client.decrypt(&c, &before, b"").await.unwrap(), b"before");
    assert_eq!(
        client.decrypt(&c, &before_compact, b"").await.unwrap(),
        b"before, compact"
    );
    assert_eq!(client.decrypt(&c, &after, b"").await.unwrap(), b"after");

    // The data key is bound to the compartment: another compartment cannot open it.
    let other = f.compartment(Some(&key.id)).await;
    assert_eq!(
        client
            .decrypt(&other, &after, b"")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Integrity
    );
}

#[tokio::test]
async fn attaching_is_write_once_and_idempotent() {
    let f = fixture();
    let (a, _) = f.validated_key("a").await;
    let (b, _) = f.validated_key("b").await;
    let c = f.compartment(None).await;
    f.plane
        .attach_external_key(&f.admin, &c, &a.id)
        .await
        .unwrap();
    let again = f
        .plane
        .attach_external_key(&f.admin, &c, &a.id)
        .await
        .unwrap();
    assert_eq!(again.external_key_id.as_ref(), Some(&a.id));
    let err = f
        .plane
        .attach_external_key(&f.admin, &c, &b.id)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.kind().http_status()),
        (ErrorKind::AlreadyExists, 409)
    );
    assert!(err.message().contains("write-once"), "{err}");
    assert_eq!(
        f.plane
            .compartment(&c)
            .await
            .unwrap()
            .external_key_id
            .as_ref(),
        Some(&a.id)
    );

    let missing = CompartmentId::new("0b7e1d2c-0000-4000-8000-000000000000").unwrap();
    assert_eq!(
        f.plane
            .attach_external_key(&f.admin, &missing, &a.id)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let unknown = ExternalKeyId::new("ekey_unknown").unwrap();
    assert_eq!(
        f.plane
            .attach_external_key(&f.admin, &c, &unknown)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let (unvalidated, _) = f.key("unvalidated").await;
    let err = f
        .plane
        .create_compartment(&f.admin, Some(&unvalidated.id))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.message().contains("validate it first"), "{err}");
}

async fn race_attach(plane: Arc<ControlPlane>, c: &CompartmentId, keys: [&ExternalKeyId; 2]) {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (plane, c, key) = (plane.clone(), c.clone(), keys[i % 2].clone());
            tokio::spawn(async move {
                let outcome = plane
                    .attach_external_key(&Actor::new(format!("admin-{i}")), &c, &key)
                    .await;
                (key, outcome)
            })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    let mut conflicts = 0;
    for task in tasks {
        let (key, outcome) = task.await.unwrap();
        match outcome {
            Ok(c) => {
                assert_eq!(c.external_key_id.as_ref(), Some(&key));
                winners.insert(key);
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
                conflicts += 1;
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one key wins");
    assert_eq!(conflicts, 32, "every attempt with the other key conflicts");
    let stored = plane.compartment(c).await.unwrap().external_key_id.unwrap();
    assert!(winners.contains(&stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attaches_through_the_plane_have_exactly_one_winner() {
    let f = fixture();
    let (a, _) = f.validated_key("a").await;
    let (b, _) = f.validated_key("b").await;
    let c = f.compartment(None).await;
    let Fixture { plane, .. } = f;
    race_attach(Arc::new(plane), &c, [&a.id, &b.id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_configuration_is_built_once_for_many_compartments() {
    let store = Arc::new(MemoryControlStore::new());
    let f = fixture_with(store.clone(), CacheConfig::default());
    let (key, _) = f.validated_key("shared").await;
    let mut compartments = Vec::new();
    for _ in 0..64 {
        compartments.push(f.compartment(Some(&key.id)).await);
    }
    // Another instance of the service on the same state: nothing built yet.
    let plane = ControlPlane::builder()
        .store(store)
        .dek_store(f.dek_store.clone())
        .audit(f.audit.clone())
        .factory(f.keys.clone())
        .provider_managed(f.provider_managed.clone())
        .retry(fast_retry())
        .build()
        .unwrap();
    let builds = f.keys.builds();
    let tasks: Vec<_> = compartments
        .into_iter()
        .map(|c| {
            let client = plane.client().clone();
            tokio::spawn(async move { client.encrypt(&c, b"first write", b"").await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        f.keys.builds() - builds,
        1,
        "64 compartments under one cold configuration share one backend build"
    );
}
