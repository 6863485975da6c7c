//! The data-key cache: single-flight, limits, refresh-ahead, revocation, retries.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cmek::testkit::Fault;
use cmek::{CacheConfig, ErrorKind, RevokeMode, inspect};
use common::*;

fn dek_id(env: &[u8]) -> String {
    inspect(env).unwrap().dek_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_stampede_of_1000_tasks_makes_one_wrap_call() {
    let (client, kms) = faulty_client(CacheConfig::default());
    kms.set_latency(Duration::from_millis(50));
    let c = compartment("stampede");
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (client, c) = (client.clone(), c.clone());
            tokio::spawn(async move {
                client
                    .encrypt(&c, format!("record {i}").as_bytes(), b"")
                    .await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(dek_id(&t.await.unwrap().unwrap()));
    }
    assert_eq!(kms.wrap_calls(), 1, "exactly one wrap for 1000 cold tasks");
    assert_eq!(ids.len(), 1, "all 1000 records under one DEK");
    let s = client.stats();
    assert_eq!(s.kms_wrap_calls, 1);
    assert_eq!(s.deks_created, 1);
    assert_eq!(s.encrypt_hits + s.encrypt_misses, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_decrypt_stampede_makes_one_unwrap_call() {
    let (writer, kms) = faulty_client(CacheConfig::default());
    let c = compartment("stampede-read");
    let env = Arc::new(writer.encrypt(&c, b"shared", b"").await.unwrap());
    let reader = cmek::Client::builder()
        .key(key_config(), kms.clone())
        .build()
        .unwrap();
    kms.set_latency(Duration::from_millis(50));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (reader, c, env) = (reader.clone(), c.clone(), env.clone());
            tokio::spawn(async move { reader.decrypt(&c, &env, b"").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), b"shared");
    }
    assert_eq!(kms.unwrap_calls(), 1);
}

#[tokio::test]
async fn message_limit_rotates_the_dek() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_messages = 10;
    cache.refresh_fraction = 1.0;
    let (client, kms) = faulty_client(cache);
    let c = compartment("limits");
    let mut per_dek = std::collections::HashMap::<String, usize>::new();
    for _ in 0..35 {
        let env = client.encrypt(&c, b"m", b"").await.unwrap();
        *per_dek.entry(dek_id(&env)).or_default() += 1;
    }
    assert_eq!(per_dek.len(), 4);
    assert!(per_dek.values().all(|&n| n <= 10), "{per_dek:?}");
    assert_eq!(kms.wrap_calls(), 4);
}

#[tokio::test]
async fn byte_limit_rotates_the_dek() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_bytes = 1000;
    cache.refresh_fraction = 1.0;
    let (client, kms) = faulty_client(cache);
    let c = compartment("bytes");
    let first = dek_id(&client.encrypt(&c, &[0u8; 600], b"").await.unwrap());
    let second = dek_id(&client.encrypt(&c, &[0u8; 600], b"").await.unwrap());
    let third = dek_id(&client.encrypt(&c, &[0u8; 10], b"").await.unwrap());
    assert_eq!(first, second, "the limit is checked before each message");
    assert_ne!(second, third);
    assert_eq!(kms.wrap_calls(), 2);
}

#[tokio::test]
async fn age_limit_rotates_the_dek_and_expires_decryption_keys() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_age = Duration::from_millis(150);
    cache.decrypt_max_age = Duration::from_millis(150);
    cache.refresh_fraction = 1.0;
    let (client, kms) = faulty_client(cache);
    let c = compartment("age");
    let env = client.encrypt(&c, b"a", b"").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = client.encrypt(&c, b"b", b"").await.unwrap();
    assert_ne!(dek_id(&env), dek_id(&later));
    assert_eq!(kms.wrap_calls(), 2);
    assert_eq!(kms.unwrap_calls(), 0);
    client.decrypt(&c, &env, b"").await.unwrap();
    assert_eq!(
        kms.unwrap_calls(),
        1,
        "the expired decryption key was unwrapped again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_ahead_replaces_the_dek_without_callers_waiting() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_messages = 100;
    let (client, kms) = faulty_client(cache);
    kms.set_latency(Duration::from_millis(20));
    let c = compartment("refresh");
    let mut ids = Vec::new();
    for i in 0..300 {
        let env = client.encrypt(&c, b"steady", b"").await.unwrap();
        ids.push(dek_id(&env));
        if i % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await; // let background refreshes land
        }
    }
    ids.dedup();
    let s = client.stats();
    assert!(ids.len() >= 3, "DEKs rotated: {}", ids.len());
    assert_eq!(
        s.encrypt_misses, 1,
        "only the very first call waited for the KMS: {s:?}"
    );
    assert!(s.refreshes >= 2, "{s:?}");
    assert_eq!(s.deks_created, kms.wrap_calls());
}

#[tokio::test]
async fn transient_errors_are_retried_permanent_ones_are_not() {
    let (client, kms) = faulty_client(CacheConfig::default());
    kms.fail_next(2, ErrorKind::Transient);
    client.encrypt(&compartment("r1"), b"x", b"").await.unwrap();
    assert_eq!(kms.wrap_calls(), 3);
    let s = client.stats();
    assert_eq!((s.kms_wrap_calls, s.kms_errors), (3, 2));

    kms.push_faults([Fault::Fail(ErrorKind::PermissionDenied)]);
    let err = client
        .encrypt(&compartment("r2"), b"x", b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert_eq!(kms.wrap_calls(), 4);
    // A refused key fails fast for the breaker's window, then is asked again.
    let err = client
        .encrypt(&compartment("r2"), b"x", b"")
        .await
        .unwrap_err();
    assert!(
        err.is_fail_fast() && err.kind() == ErrorKind::PermissionDenied,
        "{err}"
    );
    assert_eq!(kms.wrap_calls(), 4, "answered by the breaker");
    tokio::time::sleep(BREAKER_WINDOW).await;
    client.encrypt(&compartment("r2"), b"x", b"").await.unwrap();
    assert_eq!(kms.wrap_calls(), 5, "the probe found the key usable again");

    kms.fail_next(10, ErrorKind::Throttled);
    let err = client
        .encrypt(&compartment("r3"), b"x", b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert_eq!(kms.wrap_calls(), 9, "bounded: 4 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_failure() {
    let (client, kms) = faulty_client(CacheConfig::default());
    kms.set_latency(Duration::from_millis(50));
    kms.disable();
    let c = compartment("failing");
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, c) = (client.clone(), c.clone());
            tokio::spawn(async move { client.encrypt(&c, b"x", b"").await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap_err().kind(), ErrorKind::KeyRevoked);
    }
    assert_eq!(
        kms.wrap_calls(),
        1,
        "one KMS call for 200 concurrent failing callers"
    );
}

#[tokio::test]
async fn revoke_immediately_stops_everything_and_reinstate_undoes_it() {
    let (client, _kms) = faulty_client(CacheConfig::default());
    let c = compartment("rev");
    let env = client.encrypt(&c, b"before", b"").await.unwrap();
    client.revoke(&key_config(), RevokeMode::Immediately);
    let err = client.encrypt(&c, b"x", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked);
    let err = client.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked);
    client.reinstate(&key_config());
    assert_eq!(client.decrypt(&c, &env, b"").await.unwrap(), b"before");
    client.encrypt(&c, b"after", b"").await.unwrap();
}

#[tokio::test]
async fn a_wrap_that_finds_no_key_retires_the_cached_data_keys_of_that_key() {
    let (client, kms) = faulty_client(CacheConfig::default());
    let (a, b) = (compartment("kept-a"), compartment("kept-b"));
    let before = client.encrypt(&a, b"before", b"").await.unwrap();
    assert_eq!(kms.wrap_calls(), 1);
    // The KMS no longer knows the key (deleted): b's new data key cannot be wrapped ...
    kms.push_faults([Fault::Fail(ErrorKind::NotFound)]);
    let err = client.encrypt(&b, b"x", b"").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::KeyRevoked,
        "a deleted key is revoked: {err}"
    );
    // ... and a's cached data key, wrapped by that key, takes no more data: the next write
    // needs a new data key (once the breaker asks the KMS again, here it is back).
    let err = client.encrypt(&a, b"after", b"").await.unwrap_err();
    assert!(err.is_fail_fast(), "{err}");
    tokio::time::sleep(BREAKER_WINDOW).await;
    let after = client.encrypt(&a, b"after", b"").await.unwrap();
    assert_eq!(kms.wrap_calls(), 3, "a new data key was made for a");
    assert_ne!(dek_id(&before), dek_id(&after));
    assert_eq!(client.stats().revocations_detected, 1);
}

#[tokio::test]
async fn revoke_when_cached_keys_expire_keeps_reads_until_expiry() {
    let mut cache = CacheConfig::default();
    cache.decrypt_max_age = Duration::from_millis(150);
    let (client, _) = faulty_client(cache);
    let c = compartment("rev2");
    let env = client.encrypt(&c, b"before", b"").await.unwrap();
    client.revoke(&key_config(), RevokeMode::WhenCachedKeysExpire);
    assert_eq!(
        client.encrypt(&c, b"x", b"").await.unwrap_err().kind(),
        ErrorKind::KeyRevoked
    );
    assert_eq!(client.decrypt(&c, &env, b"").await.unwrap(), b"before");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client.decrypt(&c, &env, b"").await.unwrap_err().kind(),
        ErrorKind::KeyRevoked
    );
}

#[tokio::test]
async fn a_disabled_kms_key_makes_data_unreadable_within_the_cache_bound() {
    let mut cache = CacheConfig::default();
    cache.decrypt_max_age = Duration::from_millis(200);
    let (client, kms) = faulty_client(cache);
    let c = compartment("shred");
    let env = client.encrypt(&c, b"secret", b"").await.unwrap();
    kms.disable();
    // Still cached: readable (documented staleness), and writes continue on the cached DEK.
    assert_eq!(client.decrypt(&c, &env, b"").await.unwrap(), b"secret");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let err = client.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked);
    assert!(err.to_string().contains("disabled"), "{err}");
    // The KMS said revoked: cached encryption DEKs under that key are dropped at once.
    let err = client.encrypt(&c, b"new", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked);
    assert_eq!(client.stats().revocations_detected, 1);
    kms.enable();
    tokio::time::sleep(BREAKER_WINDOW).await;
    assert_eq!(client.decrypt(&c, &env, b"").await.unwrap(), b"secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decrypt_refresh_notices_a_disabled_key_before_expiry() {
    let mut cache = CacheConfig::default();
    cache.decrypt_max_age = Duration::from_millis(400);
    cache.refresh_fraction = 0.25;
    let (client, kms) = faulty_client(cache);
    let c = compartment("refresh-revoke");
    let env = client.encrypt(&c, b"secret", b"").await.unwrap();
    kms.disable();
    tokio::time::sleep(Duration::from_millis(150)).await; // past the refresh point, before expiry
    client.decrypt(&c, &env, b"").await.unwrap(); // served from cache, starts the refresh
    tokio::time::sleep(Duration::from_millis(100)).await; // the refresh fails with KeyRevoked
    let err = client.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::KeyRevoked,
        "dropped before its 400 ms expiry"
    );
}

#[tokio::test]
async fn purge_forgets_a_compartment() {
    let (client, kms) = faulty_client(CacheConfig::default());
    let (a, b) = (compartment("pa"), compartment("pb"));
    let env_a = client.encrypt(&a, b"a", b"").await.unwrap();
    client.encrypt(&b, b"b", b"").await.unwrap();
    client.purge(&a);
    let again = client.encrypt(&a, b"a2", b"").await.unwrap();
    assert_ne!(dek_id(&env_a), dek_id(&again));
    client.encrypt(&b, b"b2", b"").await.unwrap();
    assert_eq!(kms.wrap_calls(), 3);
    client.decrypt(&a, &env_a, b"").await.unwrap();
    assert_eq!(kms.unwrap_calls(), 1);
}

#[tokio::test]
async fn purge_all_forgets_every_compartment() {
    let (client, kms) = faulty_client(CacheConfig::default());
    let (a, b) = (compartment("qa"), compartment("qb"));
    let env_a = client.encrypt(&a, b"a", b"").await.unwrap();
    let env_b = client.encrypt(&b, b"b", b"").await.unwrap();
    client.decrypt(&a, &env_a, b"").await.unwrap();
    assert_eq!((kms.wrap_calls(), kms.unwrap_calls()), (2, 0));
    client.purge_all();
    assert_ne!(
        dek_id(&env_a),
        dek_id(&client.encrypt(&a, b"a2", b"").await.unwrap())
    );
    assert_ne!(
        dek_id(&env_b),
        dek_id(&client.encrypt(&b, b"b2", b"").await.unwrap())
    );
    assert_eq!(kms.wrap_calls(), 4);
    client.decrypt(&a, &env_a, b"").await.unwrap();
    client.decrypt(&b, &env_b, b"").await.unwrap();
    assert_eq!(kms.unwrap_calls(), 2, "decryption DEKs were forgotten too");
}

/// An eviction while an unwrap is in flight: the unwrapped DEK serves the caller that asked,
/// but is not cached, so the eviction is not undone (the next decryption asks the KMS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_during_a_fill_is_not_undone_by_it() {
    let (client, kms) = faulty_client(CacheConfig::default());
    let c = compartment("fill-race");
    let env = client.encrypt(&c, b"secret", b"").await.unwrap();
    client.purge(&c);
    kms.set_latency(Duration::from_millis(200));
    let filling = {
        let (client, c, env) = (client.clone(), c.clone(), env.clone());
        tokio::spawn(async move { client.decrypt(&c, &env, b"").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(kms.unwrap_calls(), 1, "the fill is under way");
    client.evict(&key_config());
    assert_eq!(filling.await.unwrap().unwrap(), b"secret");
    kms.set_latency(Duration::ZERO);
    client.decrypt(&c, &env, b"").await.unwrap();
    assert_eq!(
        kms.unwrap_calls(),
        2,
        "the DEK the eviction raced with was cached"
    );
    client.decrypt(&c, &env, b"").await.unwrap();
    assert_eq!(kms.unwrap_calls(), 2, "a fill after the eviction is cached");
}

#[tokio::test]
async fn capacity_bounds_the_cache_and_counts_evictions() {
    let mut cache = CacheConfig::default();
    cache.encrypt_capacity = 50;
    cache.decrypt_capacity = 50;
    let (client, _) = faulty_client(cache);
    for i in 0..500 {
        client
            .encrypt(&compartment(&format!("cap-{i}")), b"x", b"")
            .await
            .unwrap();
    }
    let s = client.stats();
    assert!(s.encrypt_entries <= 50 && s.decrypt_entries <= 50, "{s:?}");
    assert!(s.evictions >= 800, "{s:?}");
}

#[tokio::test]
async fn steady_state_makes_no_kms_calls() {
    let (client, kms) = faulty_client(CacheConfig::default());
    let cs: Vec<_> = (0..20)
        .map(|i| compartment(&format!("steady-{i}")))
        .collect();
    let mut envs = Vec::new();
    for c in &cs {
        envs.push(client.encrypt(c, b"warm", b"").await.unwrap());
    }
    let (w, u) = (kms.wrap_calls(), kms.unwrap_calls());
    for round in 0..500 {
        let c = &cs[round % cs.len()];
        let env = client.encrypt_compact(c, b"payload", b"").await.unwrap();
        client.decrypt(c, &env, b"").await.unwrap();
        client
            .decrypt(c, &envs[round % cs.len()], b"")
            .await
            .unwrap();
    }
    assert_eq!((kms.wrap_calls(), kms.unwrap_calls()), (w, u));
}
