//! Rotation and rewrap.

use crate::fixture::*;
use std::sync::{Arc, Mutex};

use crate::common::BREAKER_WINDOW;
use cmek::control::{MemoryControlStore, Outcome, RewrapJob};
use cmek::testkit::Fault;
use cmek::{CacheConfig, ErrorKind};

#[tokio::test]
async fn rotating_the_key_material_keeps_old_data_readable() {
    let f = fixture();
    let (key, kms) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let old = client.encrypt(&c, b"v1", b"").await.unwrap();
    let old_compact = client
        .encrypt_compact(&c, b"v1 compact", b"")
        .await
        .unwrap();
    assert_eq!(kms.inner().rotate().unwrap(), 2);
    client.purge(&c);
    let new = client.encrypt(&c, b"v2", b"").await.unwrap();
    assert_eq!(inspect(&old).key_version.as_deref(), Some("1"));
    assert_eq!(inspect(&new).key_version.as_deref(), Some("2"));
    assert_eq!(
        inspect(&new).key_config_id.as_deref(),
        Some(key.id.as_str())
    );
    client.purge(&c);
    assert_eq!(client.decrypt(&c, &old, b"").await.unwrap(), b"v1");
    assert_eq!(
        client.decrypt(&c, &old_compact, b"").await.unwrap(),
        b"v1 compact"
    );
    assert_eq!(client.decrypt(&c, &new, b"").await.unwrap(), b"v2");
    // Same configuration throughout.
    assert_eq!(
        f.plane.external_key(&key.id).await.unwrap().provider_config,
        key.provider_config
    );
}

#[tokio::test]
async fn rotate_then_rewrap_keeps_everything_readable_and_resumes_after_a_failure() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_messages = 5;
    // No background refreshes: the DEK records counted below are exactly the ones written.
    cache.refresh_fraction = 1.0;
    let f = fixture_with(Arc::new(MemoryControlStore::new()), cache);
    let (key, old_kms) = f.validated_key("old").await;
    let client = f.plane.client();
    let mut compact = Vec::new();
    let mut contained = Vec::new();
    let mut compartments = Vec::new();
    for _ in 0..3 {
        compartments.push(f.compartment(Some(&key.id)).await);
    }
    for (i, c) in compartments.iter().enumerate() {
        for n in 0..20 {
            let text = format!("compartment {i} record {n}");
            compact.push((
                c.clone(),
                text.clone(),
                client
                    .encrypt_compact(c, text.as_bytes(), b"")
                    .await
                    .unwrap(),
            ));
        }
        contained.push((
            c.clone(),
            client.encrypt(c, b"self-contained", b"").await.unwrap(),
        ));
    }
    let mut records = 0;
    for c in &compartments {
        records += f.dek_store.list(c).await.unwrap().len();
    }
    assert!(records >= 12, "{records} DEK records");

    // Rotate to a new key: validated first; new data goes under it at once.
    let (new_config, new_kms) = f.keys.add(f.dir.path(), "new");
    let (bad_config, bad_kms) = f.keys.add(f.dir.path(), "bad");
    bad_kms.disable();
    let err = f
        .plane
        .rotate_external_key(&f.admin, &key.id, bad_config)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.message().contains("key_disabled"), "{err}");
    let rotated = f
        .plane
        .rotate_external_key(&f.admin, &key.id, new_config.clone())
        .await
        .unwrap();
    assert_eq!(rotated.id, key.id);
    assert_eq!(rotated.provider_config, new_config);
    assert_eq!(
        rotated.previous_provider_configs,
        vec![key.provider_config.clone()]
    );
    assert!(rotated.is_validated());
    let new_wraps = new_kms.wrap_calls();
    let fresh = client
        .encrypt(&compartments[0], b"after rotation", b"")
        .await
        .unwrap();
    assert_eq!(
        new_kms.wrap_calls(),
        new_wraps + 1,
        "new data goes under the new key at once"
    );
    assert_eq!(inspect(&fresh).key_id.as_deref(), Some("local:new"));
    let records_after_rotation = {
        let mut n = 0;
        for c in &compartments {
            n += f.dek_store.list(c).await.unwrap().len();
        }
        n
    };

    let mut under_old_key = 0;
    for c in &compartments {
        for id in f.dek_store.list(c).await.unwrap() {
            under_old_key += usize::from(
                f.dek_store
                    .get(c, &id)
                    .await
                    .unwrap()
                    .unwrap()
                    .wrapped()
                    .key_id
                    == "local:old",
            );
        }
    }
    assert!(under_old_key >= 8, "{under_old_key}");

    // The first run fails part-way: the new key refuses its 7th wrap (in the second batch).
    new_kms.push_faults(
        std::iter::repeat_n(Fault::Pass, 6).chain([Fault::Fail(ErrorKind::PermissionDenied)]),
    );
    let progress = Mutex::new(Vec::<RewrapJob>::new());
    let err = f
        .plane
        .rewrap(&f.admin, &key.id, 4, |job| {
            progress.lock().unwrap().push(job.clone())
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let first = progress.lock().unwrap().clone();
    assert!(!first.is_empty(), "progress is reported per batch");
    assert!(first.windows(2).all(|w| w[0].examined < w[1].examined));

    // Everything stays readable mid-rewrap, from a cold cache.
    purge(client, &compartments);
    for (c, text, envelope) in &compact {
        assert_eq!(
            client.decrypt(c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }

    // The rerun resumes after the last checkpoint and finishes (once the new key's breaker has
    // found it usable again); throttling and transient failures are retried.
    tokio::time::sleep(BREAKER_WINDOW).await;
    new_kms.clear_faults();
    purge(client, &compartments[..1]);
    client
        .encrypt(&compartments[0], b"probe", b"")
        .await
        .unwrap();
    let records_after_rotation = records_after_rotation + 1; // the probe's data key
    new_kms.push_faults([
        Fault::Fail(ErrorKind::Throttled),
        Fault::Fail(ErrorKind::Transient),
    ]);
    let progress = Mutex::new(Vec::<RewrapJob>::new());
    let done = f
        .plane
        .rewrap(&f.admin, &key.id, 4, |job| {
            progress.lock().unwrap().push(job.clone())
        })
        .await
        .unwrap();
    assert!(done.finished_at.is_some());
    assert_eq!(
        done.rewrapped as usize, under_old_key,
        "every record under the old key is rewrapped exactly once"
    );
    assert!(done.examined as usize >= records_after_rotation);
    assert!(
        progress.lock().unwrap()[0].examined > first.last().unwrap().examined,
        "resumed, not restarted"
    );

    // All DEK records are under the new key now: the old key can go.
    for c in &compartments {
        for id in f.dek_store.list(c).await.unwrap() {
            let record = f.dek_store.get(c, &id).await.unwrap().unwrap();
            assert_eq!(record.wrapped().key_id, "local:new");
        }
    }
    old_kms.disable();
    purge(client, &compartments);
    for (c, text, envelope) in &compact {
        assert_eq!(
            client.decrypt(c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }
    assert_eq!(
        client.decrypt(&compartments[0], &fresh, b"").await.unwrap(),
        b"after rotation"
    );
    // Self-contained envelopes carry their own wrapped DEK: readable only while the old key is.
    let (c, envelope) = &contained[0];
    assert_eq!(
        client.decrypt(c, envelope, b"").await.unwrap_err().kind(),
        ErrorKind::KeyRevoked
    );
    old_kms.enable();
    tokio::time::sleep(BREAKER_WINDOW).await;
    assert_eq!(
        client.decrypt(c, envelope, b"").await.unwrap(),
        b"self-contained"
    );

    // Idempotent: a rerun finds everything current.
    let again = f.plane.rewrap(&f.admin, &key.id, 4, |_| {}).await.unwrap();
    assert_eq!(
        (again.rewrapped, again.already_current as usize),
        (0, records_after_rotation)
    );

    let actions: Vec<String> = f.actions().into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "external_key.rotate")
            .count(),
        2
    );
    assert_eq!(actions.iter().filter(|a| *a == "rewrap.start").count(), 3);
    let completes: Vec<Outcome> = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == "rewrap.complete")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        completes,
        [Outcome::Failure, Outcome::Success, Outcome::Success]
    );
}
