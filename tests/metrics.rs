//! What reaches the `metrics` facade (feature `metrics`): KMS calls with latency by provider,
//! operation and outcome, errors by kind, revocations, breaker states, degraded mode and the
//! cache counters, and never a label that names a compartment.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cmek::testkit::FaultyKms;
use cmek::{CacheConfig, Client, ErrorKind, MemoryDekStore};
use common::*;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

type Metrics = Vec<(String, Vec<(String, String)>, DebugValue)>;

fn read(snapshotter: &metrics_util::debugging::Snapshotter) -> Metrics {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

fn value(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.0,
            DebugValue::Histogram(h) => h.len() as f64,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kms_calls_key_events_degraded_mode_and_cache_counters_are_published() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let mut cache = CacheConfig::default();
    cache.encrypt_max_age = Duration::from_millis(300);
    cache.degraded_staleness = Some(Duration::from_secs(5));
    let kms = Arc::new(FaultyKms::in_memory().unwrap());
    let client = Client::builder()
        .key(key_config(), kms.clone())
        .dek_store(Arc::new(MemoryDekStore::new()))
        .cache(cache)
        .retry(fast_retry())
        .breaker(short_breaker())
        .metrics_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let tenant = compartment("tenant-do-not-label-me");
    for i in 0..10 {
        let envelope = client
            .encrypt(&tenant, format!("{i}").as_bytes(), b"")
            .await
            .unwrap();
        client.decrypt(&tenant, &envelope, b"").await.unwrap();
    }

    // An outage: the cached data key serves past its max age (degraded mode).
    kms.fail_next(10_000, ErrorKind::Transient);
    tokio::time::sleep(Duration::from_millis(400)).await;
    client
        .encrypt(&tenant, b"during the outage", b"")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    // The debugging recorder reads back the change since the last read.
    let during = read(&snapshotter);
    assert_eq!(value(&during, "cmek_degraded_keys", &[]), Some(1.0));
    assert_eq!(
        value(&during, "cmek_degraded_total", &[("event", "started")]),
        Some(1.0)
    );
    assert!(
        value(
            &during,
            "cmek_degraded_serves_total",
            &[("cache", "encrypt")]
        )
        .unwrap()
            >= 1.0
    );
    let ok = [("provider", "local"), ("op", "wrap"), ("outcome", "ok")];
    assert_eq!(value(&during, "cmek_kms_requests_total", &ok), Some(1.0));
    let transient = [
        ("provider", "local"),
        ("op", "wrap"),
        ("outcome", "transient"),
    ];
    assert!(value(&during, "cmek_kms_requests_total", &transient).unwrap() >= 4.0);
    assert!(value(&during, "cmek_kms_latency_seconds", &transient).unwrap() >= 4.0);
    kms.clear_faults();
    tokio::time::sleep(BREAKER_WINDOW).await;
    client.purge(&tenant);
    client.encrypt(&tenant, b"recovered", b"").await.unwrap();

    // A revocation, seen by a cold write.
    kms.disable();
    let err = client
        .encrypt(&compartment("cold"), b"x", b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked);
    tokio::time::sleep(Duration::from_millis(60)).await;

    let after = read(&snapshotter);
    assert_eq!(
        value(&after, "cmek_kms_requests_total", &ok),
        Some(1.0),
        "the recovery"
    );
    let revoked = [
        ("provider", "local"),
        ("op", "wrap"),
        ("outcome", "key_revoked"),
    ];
    assert_eq!(
        value(&after, "cmek_kms_requests_total", &revoked),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "cmek_errors_total", &[("kind", "key_revoked")]),
        Some(1.0)
    );
    assert_eq!(value(&after, "cmek_revocations_total", &[]), Some(1.0));
    assert_eq!(
        value(&after, "cmek_degraded_keys", &[]),
        Some(-1.0),
        "back to none"
    );
    assert_eq!(
        value(&after, "cmek_degraded_total", &[("event", "ended")]),
        Some(1.0)
    );
    assert_eq!(
        value(&after, "cmek_keys", &[("state", "revoked")]),
        Some(1.0)
    );
    // Published from the cache's own counters, as totals.
    assert!(value(&after, "cmek_cache_hits_total", &[("cache", "encrypt")]).unwrap() >= 9.0);
    assert!(value(&after, "cmek_cache_hits_total", &[("cache", "decrypt")]).unwrap() >= 10.0);
    assert!(value(&after, "cmek_deks_cached", &[("cache", "decrypt")]).unwrap() >= 1.0);
    // No label names a compartment (or a key): 10,000 tenants must not mean 10,000 series.
    for (name, labels, _) in &after {
        for (k, v) in labels {
            assert!(
                !v.contains("tenant") && !v.contains("local:"),
                "{name}{{{k}={v}}}"
            );
        }
    }
}
