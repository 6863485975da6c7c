//! Outages (5xx, hangs, refused connections), degraded mode through them, throttling bursts
//! and random errors.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test suite: failures are panics

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    FaultTarget, OutageTiming, SuiteConfig, cache, client, compartment, key_config, retry,
};
use crate::client::Client;
use crate::error::ErrorKind;
use crate::kms::health::{KeyEvent, KeyEventKind};
use crate::store::MemoryDekStore;
use crate::testkit::ServerControl;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OutageKind {
    Errors,
    Hang,
    Refused,
}

impl OutageKind {
    fn name(self) -> &'static str {
        match self {
            Self::Errors => "5xx",
            Self::Hang => "hang",
            Self::Refused => "refused",
        }
    }

    async fn set(self, server: &ServerControl<'_>, on: bool) {
        match (self, on) {
            (Self::Errors, true) => server.set_outage(crate::testkit::Outage::Errors),
            (Self::Hang, true) => server.set_outage(crate::testkit::Outage::Hang),
            (Self::Refused, true) => server.stop().await,
            (Self::Refused, false) => server.restart().await.expect("restart"),
            (_, false) => server.set_outage(crate::testkit::Outage::None),
        }
    }
}

/// 16 callers keep asking for new data keys (new compartments) through an outage.
pub(super) async fn outage_scenario(
    target: &dyn FaultTarget,
    config: &SuiteConfig,
    outage: OutageKind,
) -> OutageTiming {
    let label = format!("{} outage {}", target.name(), outage.name());
    let key = target.create_key().await.expect("create key");
    let client = client(
        target.backend(&key).await.expect("backend"),
        config,
        cache(config),
    );
    let warm = compartment("warm");
    let before = client
        .encrypt(&warm, b"before", b"")
        .await
        .expect("write before");
    let server = target.server();
    outage.set(&server, true).await;
    // A warm compartment goes on: its cached data key needs no KMS.
    assert_eq!(
        client
            .decrypt(&warm, &before, b"")
            .await
            .expect("warm read"),
        b"before"
    );
    client
        .encrypt(&warm, b"during", b"")
        .await
        .expect("warm write");
    let calls_before = client.stats().kms_calls();
    let started = Instant::now();
    let longest = Arc::new(Mutex::new(Duration::ZERO));
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (client, longest, next, watch) =
                (client.clone(), longest.clone(), next.clone(), config.watch);
            let label = label.clone();
            tokio::spawn(async move {
                while started.elapsed() < watch {
                    let c = compartment(&format!("cold-{}", next.fetch_add(1, SeqCst)));
                    let asked = Instant::now();
                    let outcome = client.encrypt(&c, b"x", b"").await;
                    let waited = asked.elapsed();
                    {
                        let mut l = longest.lock().unwrap();
                        *l = (*l).max(waited);
                    }
                    match outcome {
                        Err(e) => assert!(
                            matches!(e.kind(), ErrorKind::Transient | ErrorKind::DeadlineExceeded),
                            "{label}: {e}"
                        ),
                        Ok(_) => panic!("{label}: a new data key was made during the outage"),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("an outage caller panicked");
    }
    let elapsed = started.elapsed();
    let calls = client.stats().kms_calls() - calls_before;
    outage.set(&server, false).await;
    let ended = Instant::now();
    let recovery_bound = config.breaker.probe_interval + config.deadline + config.slack * 2;
    let mut i = 0;
    loop {
        i += 1;
        if client
            .encrypt(&compartment(&format!("after-{i}")), b"x", b"")
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            ended.elapsed() < recovery_bound,
            "{label}: no recovery after the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_after = ended.elapsed();
    let longest_wait = *longest.lock().unwrap();
    assert!(
        longest_wait <= config.deadline + config.slack,
        "{label}: a caller waited {longest_wait:?} (deadline {:?})",
        config.deadline
    );
    let per_second = calls as f64 / elapsed.as_secs_f64();
    // Until the breaker opens, callers' attempts; then one probe per interval.
    let bound = 16.0 * 4.0 / elapsed.as_secs_f64()
        + 2.0 / config.breaker.probe_interval.as_secs_f64()
        + 2.0;
    assert!(
        per_second <= bound,
        "{label}: {calls} KMS attempts in {elapsed:?} (bound {bound:.1}/s)"
    );
    OutageTiming {
        outage: outage.name(),
        longest_wait,
        deadline: config.deadline,
        kms_calls_per_second: per_second,
        recovered_after,
    }
}

/// With degraded mode on, a warm compartment keeps writing and reading through an outage past
/// its data keys' max age (within the staleness bound), with an event when it starts and ends;
/// without it, writes stop at the max age. Never after a revocation.
pub(super) async fn degraded_mode_serves_through_an_outage(
    target: &dyn FaultTarget,
    config: &SuiteConfig,
) {
    let label = format!("{} degraded mode", target.name());
    let key = target.create_key().await.expect("create key");
    let backend = target.backend(&key).await.expect("backend");
    let mut degraded = cache(config);
    degraded.degraded_staleness = Some(config.max_age * 4);
    let client = client(backend.clone(), config, degraded);
    let events = Arc::new(Mutex::new(Vec::new()));
    {
        let events = events.clone();
        client.subscribe_key_events(Arc::new(move |e: &KeyEvent| {
            events.lock().unwrap().push(e.kind.clone())
        }));
    }
    let plain = self::client(backend, config, cache(config));
    let c = compartment("degraded");
    let envelope = client
        .encrypt(&c, b"before", b"")
        .await
        .expect("write before");
    plain
        .encrypt(&c, b"before", b"")
        .await
        .expect("write before");
    target.server().set_outage(crate::testkit::Outage::Errors);
    let started = Instant::now();
    let mut plain_refused = false;
    while started.elapsed() < config.max_age * 2 {
        client
            .encrypt(&c, b"during", b"")
            .await
            .unwrap_or_else(|e| panic!("{label}: write after {:?}: {e}", started.elapsed()));
        assert_eq!(
            client.decrypt(&c, &envelope, b"").await.expect("read"),
            b"before",
            "{label}"
        );
        plain_refused |= plain.encrypt(&c, b"during", b"").await.is_err();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        plain_refused,
        "{label}: without degraded mode, writes stop at the max age"
    );
    target.server().set_outage(crate::testkit::Outage::None);
    let ended = Instant::now();
    while !events
        .lock()
        .unwrap()
        .contains(&KeyEventKind::DegradedEnded)
    {
        client.encrypt(&c, b"after", b"").await.ok();
        assert!(
            ended.elapsed() < config.deadline * 5,
            "{label}: degraded mode did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        events
            .lock()
            .unwrap()
            .contains(&KeyEventKind::DegradedStarted),
        "{label}"
    );
    // A revocation ends it for good: no stale data key serves a revoked key.
    target.set_disabled(&key, true);
    let revoked = Instant::now();
    while client.encrypt(&c, b"x", b"").await.is_ok() {
        assert!(
            revoked.elapsed() < config.max_age + config.slack,
            "{label}: writes went on under a revoked key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    target.set_disabled(&key, false);
}

/// A short throttling burst is ridden out; a long one fails after bounded attempts and leaves
/// the key usable.
pub(super) async fn throttling_bursts(target: &dyn FaultTarget, config: &SuiteConfig) {
    let label = format!("{} throttling", target.name());
    let key = target.create_key().await.expect("create key");
    let client = client(
        target.backend(&key).await.expect("backend"),
        config,
        cache(config),
    );
    target.throttle(2);
    client
        .encrypt(&compartment("burst-short"), b"x", b"")
        .await
        .unwrap_or_else(|e| panic!("{label}: a short burst was not ridden out: {e}"));
    target.throttle(50);
    let before = client.stats().kms_calls();
    let err = client
        .encrypt(&compartment("burst-long"), b"x", b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Throttled, "{label}: {err}");
    assert!(
        client.stats().kms_calls() - before <= 4,
        "{label}: bounded attempts"
    );
    target.throttle(0);
    // Throttling says nothing about the key: the breaker did not open.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let drain = Instant::now();
    while client
        .encrypt(&compartment("after-burst"), b"x", b"")
        .await
        .is_err()
    {
        assert!(
            drain.elapsed() < config.deadline * 5,
            "{label}: the key stayed unusable"
        );
    }
}

/// 30% of requests fail with a 5xx while 200 tasks write to 50 compartments: some writes fail,
/// but every ciphertext that was returned decrypts afterwards.
pub(super) async fn random_errors_lose_nothing(target: &dyn FaultTarget, config: &SuiteConfig) {
    let label = format!("{} 30% 5xx", target.name());
    let key = target.create_key().await.expect("create key");
    let backend = target.backend(&key).await.expect("backend");
    let store = Arc::new(MemoryDekStore::new());
    let build = |store: &Arc<MemoryDekStore>| {
        Client::builder()
            .key(key_config("suite"), backend.clone())
            .dek_store(store.clone())
            .cache(cache(config))
            .retry(retry())
            .deadline(config.deadline * 2)
            .breaker(config.breaker.clone())
            .build()
            .expect("client")
    };
    let writer = build(&store);
    target.server().set_error_rate(0.3);
    let started = Instant::now();
    let errors = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..200)
        .map(|t| {
            let (writer, errors) = (writer.clone(), errors.clone());
            tokio::spawn(async move {
                let mut written = Vec::new();
                for n in 0..3 {
                    let c = compartment(&format!("random-{}", (t * 3 + n) % 50));
                    let text = format!("task {t} record {n}");
                    let outcome = if n % 2 == 0 {
                        writer.encrypt_compact(&c, text.as_bytes(), b"").await
                    } else {
                        writer.encrypt(&c, text.as_bytes(), b"").await
                    };
                    match outcome {
                        Ok(envelope) => written.push((c, text, envelope)),
                        Err(e) => {
                            let mut errors = errors.lock().unwrap();
                            if errors.len() < 5 {
                                errors.push(e.to_string());
                            }
                        }
                    }
                    // Fresh data keys now and then, so the KMS keeps being asked.
                    if n == 1 {
                        writer.purge(&compartment(&format!("random-{}", t % 50)));
                    }
                }
                written
            })
        })
        .collect();
    let mut written = Vec::new();
    for task in tasks {
        written.extend(task.await.expect("a writer panicked"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{label}: bounded"
    );
    target.server().set_error_rate(0.0);
    assert!(
        written.len() >= 100,
        "{label}: only {} of 600 writes succeeded; errors like {:?}",
        written.len(),
        errors.lock().unwrap()
    );
    // A cold reader (after the breaker's window) decrypts every returned ciphertext.
    tokio::time::sleep(config.breaker.probe_interval + Duration::from_millis(50)).await;
    let reader = build(&store);
    for (c, text, envelope) in &written {
        let back = reader
            .decrypt(c, envelope, b"")
            .await
            .unwrap_or_else(|e| panic!("{label}: a returned ciphertext does not decrypt: {e}"));
        assert_eq!(back, text.as_bytes(), "{label}");
    }
}
