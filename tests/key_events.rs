//! One tenant's key events (revocation, purge, rotation) never touch another tenant's cache or
//! KMS budget, and records are read only in their one canonical encoding.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cmek::testkit::FaultyKms;
use cmek::{
    CacheConfig, Client, CompartmentId, DekStore, ErrorKind, KeyBinding, KeyConfigId, KeyResolver,
    KmsBackend, MemoryDekStore, WrappedKey,
};
use common::*;

/// Compartments whose name starts with `a-` go under key A, the others under key B.
#[derive(Debug)]
struct TwoKeys {
    a: KeyBinding,
    b: KeyBinding,
}

impl TwoKeys {
    fn new(a: Arc<FaultyKms>, b: Arc<FaultyKms>) -> Self {
        Self {
            a: KeyBinding::new(KeyConfigId::new("key-a").unwrap(), a),
            b: KeyBinding::new(KeyConfigId::new("key-b").unwrap(), b),
        }
    }
}

#[async_trait]
impl KeyResolver for TwoKeys {
    async fn encryption_key(&self, compartment: &CompartmentId) -> cmek::Result<KeyBinding> {
        Ok(if compartment.as_str().starts_with("a-") {
            self.a.clone()
        } else {
            self.b.clone()
        })
    }

    async fn decryption_key(
        &self,
        _compartment: &CompartmentId,
        key_config: &KeyConfigId,
    ) -> cmek::Result<Arc<dyn KmsBackend>> {
        if *key_config == self.a.key_config {
            Ok(self.a.backend.clone())
        } else {
            Ok(self.b.backend.clone())
        }
    }
}

fn two_key_client(cache: CacheConfig) -> (Client, Arc<FaultyKms>, Arc<FaultyKms>) {
    let a = Arc::new(FaultyKms::new(cmek::LocalKms::generate("local:a").unwrap()));
    let b = Arc::new(FaultyKms::new(cmek::LocalKms::generate("local:b").unwrap()));
    let client = Client::builder()
        .key_resolver(Arc::new(TwoKeys::new(a.clone(), b.clone())))
        .dek_store(Arc::new(MemoryDekStore::new()))
        .cache(cache)
        .retry(fast_retry())
        .build()
        .unwrap();
    (client, a, b)
}

/// A cold encryption of one compartment is not thrown away by purges of other compartments
/// that land while its KMS call is under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_of_other_compartments_do_not_discard_a_data_key_being_made() {
    let (client, kms) = faulty_client(CacheConfig::default());
    kms.set_latency(Duration::from_millis(100));
    let x = compartment("tenant-x");
    let purger = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                client.purge(&compartment(&format!("tenant-y-{i}")));
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    for _ in 0..3 {
        client.purge(&x);
        let outcome = client.encrypt(&x, b"payload", b"").await;
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    purger.abort();
    assert_eq!(
        kms.wrap_calls(),
        3,
        "one wrap per cold encryption, none wasted"
    );
}

/// Key A is disabled while its tenants keep writing; tenant B (another key) sees no error and
/// no extra KMS call, cold or warm, across several of its DEK lifetimes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_under_load_does_not_touch_another_key() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_age = Duration::from_millis(800);
    let (client, a, b) = two_key_client(cache);
    b.set_latency(Duration::from_millis(20));
    let warm = compartment("b-warm");
    client.encrypt(&warm, b"warm up", b"").await.unwrap();
    a.disable();
    let stop = Instant::now() + Duration::from_millis(2500);
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut failures = 0u64;
            while Instant::now() < stop {
                for i in 0..8 {
                    let c = compartment(&format!("a-{i}"));
                    failures += u64::from(client.encrypt(&c, b"a", b"").await.is_err());
                }
                tokio::task::yield_now().await;
            }
            failures
        })
    };
    let wraps_before = b.wrap_calls();
    let mut cold = 0;
    for i in 0..20 {
        let outcome = client
            .encrypt(&compartment(&format!("b-cold-{i}")), b"b", b"")
            .await;
        assert!(outcome.is_ok(), "cold tenant B {i}: {outcome:?}");
        cold += 1;
    }
    assert_eq!(
        b.wrap_calls() - wraps_before,
        cold,
        "one wrap per cold B compartment"
    );
    let warm_wraps_before = b.wrap_calls();
    let started = Instant::now();
    let mut writes = 0u64;
    while Instant::now() < stop {
        let outcome = client.encrypt(&warm, b"warm", b"").await;
        assert!(
            outcome.is_ok(),
            "warm tenant B after {:?}: {outcome:?}",
            started.elapsed()
        );
        writes += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(writes > 100);
    assert!(load.await.unwrap() > 0, "key A's writes fail");
    // One DEK per 0.75 × 800 ms of writing at most (refresh ahead), plus the one in hand.
    let lifetimes = (started.elapsed().as_millis() / 600) as u64 + 2;
    assert!(
        b.wrap_calls() - warm_wraps_before <= lifetimes,
        "warm tenant B made {} wraps in {:?}",
        b.wrap_calls() - warm_wraps_before,
        started.elapsed()
    );
}

/// A DEK record whose key version is rewritten in another decimal spelling is refused.
#[tokio::test]
async fn a_record_with_a_non_canonical_key_version_is_refused() {
    let store = Arc::new(MemoryDekStore::new());
    let kms: Arc<dyn KmsBackend> = Arc::new(cmek::LocalKms::generate("local:canon").unwrap());
    let client = |store: &Arc<MemoryDekStore>| {
        Client::builder()
            .key(key_config(), kms.clone())
            .dek_store(store.clone())
            .build()
            .unwrap()
    };
    let tenant = compartment("tenant-canon");
    let envelope = client(&store)
        .encrypt_compact(&tenant, b"row", b"")
        .await
        .unwrap();
    let id = cmek::DekId::from_hex(&cmek::inspect(&envelope).unwrap().dek_id).unwrap();
    let record = store.get(&tenant, &id).await.unwrap().unwrap();
    assert_eq!(record.wrapped().key_version, "1");
    for spelling in ["001", "01", "+1", " 1", "1 "] {
        let w = record.wrapped();
        let rewritten = record.clone().with_wrapping(
            record.key_config().clone(),
            WrappedKey::new(w.provider, w.key_id.clone(), spelling, w.ciphertext.clone()),
        );
        let forged = Arc::new(MemoryDekStore::new());
        forged.put(&rewritten).await.unwrap();
        let err = client(&forged)
            .decrypt(&tenant, &envelope, b"")
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            ErrorKind::Integrity,
            "version {spelling:?}: {err}"
        );
    }
}

/// Every operation is bounded by its deadline, retries included, even when the KMS hangs; a
/// per-call deadline overrides the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_kms_holds_no_caller_past_its_deadline() {
    let kms = Arc::new(FaultyKms::in_memory().unwrap());
    let client = Client::builder()
        .key(key_config(), kms.clone())
        .retry(cmek::RetryPolicy::default().with_attempt_timeout(Some(Duration::from_secs(30))))
        .deadline(Duration::from_millis(400))
        .build()
        .unwrap();
    kms.set_latency(Duration::from_secs(60));
    for (client, bound) in [
        (client.clone(), Duration::from_millis(400)),
        (
            client.with_deadline(Duration::from_millis(150)),
            Duration::from_millis(150),
        ),
    ] {
        let started = Instant::now();
        let err = client
            .encrypt(&compartment("tenant-hang"), b"x", b"")
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
        assert!(
            waited >= bound && waited < bound + Duration::from_millis(150),
            "{waited:?}"
        );
    }
}

/// A caller that joined another caller's stuck KMS call (with a shorter deadline) does not
/// inherit its failure: with time left, it asks again and gets the recovered KMS's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_caller_does_not_inherit_a_stale_failure() {
    let kms = Arc::new(FaultyKms::in_memory().unwrap());
    let client = Client::builder()
        .key(key_config(), kms.clone())
        .retry(fast_retry())
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    // The first wrap hangs (a connection stuck before the KMS recovered), the next ones pass.
    kms.push_faults([cmek::testkit::Fault::Delay(Duration::from_secs(60))]);
    let tenant = compartment("tenant-joined");
    let hasty = {
        let (client, tenant) = (
            client.with_deadline(Duration::from_millis(300)),
            tenant.clone(),
        );
        tokio::spawn(async move { client.encrypt(&tenant, b"hasty", b"").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let patient = client.encrypt(&tenant, b"patient", b"").await;
    assert!(patient.is_ok(), "{patient:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        hasty.await.unwrap().unwrap_err().kind(),
        ErrorKind::DeadlineExceeded
    );
}

/// A revoked key fails fast: its failing callers cost a few KMS calls, not one each; the
/// health view shows it; re-enabling brings it back after the breaker's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_costs_a_bounded_number_of_kms_calls() {
    let (client, kms) = faulty_client(CacheConfig::default());
    client
        .encrypt(&compartment("warm"), b"x", b"")
        .await
        .unwrap();
    kms.disable();
    let before = kms.wrap_calls();
    let mut refused = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        for i in 0..20 {
            let c = compartment(&format!("cold-{i}-{refused}"));
            let err = client.encrypt(&c, b"x", b"").await.unwrap_err();
            assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
            refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let calls = kms.wrap_calls() - before;
    // One call, then one probe per (jittered, 25 to 50 ms) window.
    assert!(
        refused > 200 && calls <= 500 / 25 + 2,
        "{refused} refused, {calls} KMS calls"
    );
    assert_eq!(client.stats().revocations_detected, 1);
    let health = client.key_health();
    let wraps = health
        .iter()
        .find(|h| h.key_version.is_empty())
        .expect("the key's wraps");
    assert_eq!(wraps.state, cmek::KeyState::Revoked);
    assert!(wraps.last_success.is_some());
    assert_eq!(
        wraps.last_error.as_ref().unwrap().kind,
        ErrorKind::KeyRevoked
    );
    kms.enable();
    tokio::time::sleep(BREAKER_WINDOW).await;
    client
        .encrypt(&compartment("again"), b"x", b"")
        .await
        .unwrap();
    assert_eq!(client.key_health()[0].state, cmek::KeyState::Healthy);
}

/// Callers that give up (short deadlines, cancellation) before a slow KMS answers teach the
/// breaker nothing: the key stays healthy for everyone else, and no probe is left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_do_not_open_the_breaker() {
    let (client, kms) = faulty_client(CacheConfig::default());
    kms.set_latency(Duration::from_millis(200));
    let hasty = client.with_deadline(Duration::from_millis(20));
    for i in 0..12 {
        let err = hasty
            .encrypt(&compartment(&format!("hasty-{i}")), b"x", b"")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err}");
    }
    // Callers cancelled mid-call (their tasks aborted).
    for i in 0..12 {
        let client = client.clone();
        let task = tokio::spawn(async move {
            client
                .encrypt(&compartment(&format!("cancelled-{i}")), b"x", b"")
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    }
    let patient = client.encrypt(&compartment("patient"), b"x", b"").await;
    assert!(patient.is_ok(), "{patient:?}");
    assert!(
        client
            .key_health()
            .iter()
            .all(|h| h.state == cmek::KeyState::Healthy),
        "{:?}",
        client.key_health()
    );
}
