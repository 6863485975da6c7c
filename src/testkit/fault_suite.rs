//! The fault conformance suite: what a [`Client`] over a real backend does when the customer's
//! KMS misbehaves, run against any KMS fake that implements [`FaultTarget`] (this crate's AWS,
//! Google Cloud and Azure fakes do, in [`targets`](super::targets)).
//!
//! Every scenario bounds its loops in count and time, asserts what a storage service must be
//! able to rely on, and returns what it measured:
//!
//! * **outages** as 5xx answers, as hanging requests, and as refused connections (the server
//!   stopped and restarted on its port): every caller is answered within its deadline, the key
//!   gets a bounded number of KMS calls per second, and writes resume once the KMS is back;
//! * **key events** (disable, delete, deny access) with traffic running, writes-only and
//!   reads-only: new data stops within `encrypt_max_age`, reads within `decrypt_max_age`, the
//!   revocation is reported with one kind and counted once, and a revoked key costs a bounded
//!   number of KMS calls;
//! * **throttling bursts** are ridden out by retries; a long burst fails after bounded attempts;
//! * **30% random 5xx under 200 tasks over 50 compartments**: nothing is lost (every
//!   ciphertext that was returned decrypts afterwards);
//! * **one tenant's revoked key** never touches another tenant's writes or KMS calls;
//! * **degraded mode** keeps cached data keys serving through an outage, and only then.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test suite: failures are panics

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{FaultyKms, ServerControl};
use crate::cache::CacheConfig;
use crate::client::Client;
use crate::error::{ErrorKind, Result};
use crate::ids::{CompartmentId, KeyConfigId};
use crate::kms::health::{BreakerConfig, KeyEvent, KeyEventKind};
use crate::kms::{KeyBinding, KeyResolver, KmsBackend, RetryPolicy};
use crate::store::MemoryDekStore;

/// A KMS fake (or emulator) the suite can push around, with backends for its keys built
/// through the real SDK clients.
#[async_trait]
pub trait FaultTarget: Send + Sync {
    /// A short name for messages and reports (`aws`, `gcp`, `azure`).
    fn name(&self) -> &str;
    /// Creates a fresh, enabled key; returns its handle for the other methods.
    async fn create_key(&self) -> Result<String>;
    /// A backend for `key`, through the provider's real client.
    async fn backend(&self, key: &str) -> Result<Arc<dyn KmsBackend>>;
    /// The fake's server: outages, error rates, stop and restart.
    fn server(&self) -> ServerControl<'_>;
    /// Disables `key` (or enables it again).
    fn set_disabled(&self, key: &str, disabled: bool);
    /// Deletes `key` for good.
    fn delete(&self, key: &str);
    /// Makes the key's policy deny the service (or allow it again).
    fn set_denied(&self, key: &str, denied: bool);
    /// The next `count` calls are throttled.
    fn throttle(&self, count: usize);
}

/// The limits the suite's clients run with: short, so key events and outages play out in
/// seconds.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SuiteConfig {
    /// `encrypt_max_age` and `decrypt_max_age` of the clients.
    pub max_age: Duration,
    /// The deadline of each operation.
    pub deadline: Duration,
    /// The breaker of the clients.
    pub breaker: BreakerConfig,
    /// How long an outage or a revoked key is watched.
    pub watch: Duration,
    /// Slack allowed on every time bound (a noisy 2-core CI machine).
    pub slack: Duration,
}

impl Default for SuiteConfig {
    fn default() -> Self {
        Self {
            max_age: Duration::from_millis(800),
            deadline: Duration::from_millis(1000),
            breaker: BreakerConfig::default()
                .with_revoked_retry_after(Duration::from_millis(200))
                .with_probe_interval(Duration::from_millis(200)),
            watch: Duration::from_millis(1500),
            slack: Duration::from_millis(400),
        }
    }
}

/// What the suite measured against one target.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct FaultReport {
    /// The target's name.
    pub target: String,
    /// One row per key event and traffic kind.
    pub key_events: Vec<KeyEventTiming>,
    /// One row per kind of outage.
    pub outages: Vec<OutageTiming>,
}

/// How one key event played out.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyEventTiming {
    /// `disable`, `delete` or `deny`.
    pub event: &'static str,
    /// `writes` or `reads`.
    pub traffic: &'static str,
    /// From the event until every call is refused.
    pub fails_after: Duration,
    /// The bound it is held to (`encrypt_max_age` or `decrypt_max_age`).
    pub bound: Duration,
    /// KMS calls per second while the key stayed revoked.
    pub kms_calls_per_second: f64,
}

/// How one outage played out.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OutageTiming {
    /// `5xx`, `hang` or `refused`.
    pub outage: &'static str,
    /// The longest any caller waited.
    pub longest_wait: Duration,
    /// The deadline callers had.
    pub deadline: Duration,
    /// KMS attempts per second on the key during the outage.
    pub kms_calls_per_second: f64,
    /// From the end of the outage to the first successful new data key.
    pub recovered_after: Duration,
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.key_events {
            writeln!(
                f,
                "{:<6} {:<7} {:<6} fails after {:>5} ms ({:.2} of the {} ms bound), {:.1} KMS calls/s while revoked",
                self.target,
                e.event,
                e.traffic,
                e.fails_after.as_millis(),
                e.fails_after.as_secs_f64() / e.bound.as_secs_f64(),
                e.bound.as_millis(),
                e.kms_calls_per_second
            )?;
        }
        for o in &self.outages {
            writeln!(
                f,
                "{:<6} outage {:<7} longest wait {:>5} ms (deadline {} ms), {:.1} KMS calls/s, recovered {} ms after",
                self.target,
                o.outage,
                o.longest_wait.as_millis(),
                o.deadline.as_millis(),
                o.kms_calls_per_second,
                o.recovered_after.as_millis()
            )?;
        }
        Ok(())
    }
}

/// Runs every scenario against `target`, asserting as it goes; returns the measurements.
pub async fn run_all(target: &dyn FaultTarget, config: &SuiteConfig) -> FaultReport {
    let mut report = FaultReport {
        target: target.name().to_owned(),
        ..FaultReport::default()
    };
    for event in [KeyChange::Disable, KeyChange::Delete, KeyChange::Deny] {
        report
            .key_events
            .push(key_event(target, config, event, Traffic::Writes).await);
        report
            .key_events
            .push(key_event(target, config, event, Traffic::Reads).await);
    }
    for outage in [OutageKind::Errors, OutageKind::Hang, OutageKind::Refused] {
        report
            .outages
            .push(outage_scenario(target, config, outage).await);
    }
    throttling_bursts(target, config).await;
    random_errors_lose_nothing(target, config).await;
    one_revoked_key_does_not_touch_another(target, config).await;
    degraded_mode_serves_through_an_outage(target, config).await;
    report
}

fn compartment(name: &str) -> CompartmentId {
    CompartmentId::new(name).expect("valid compartment id")
}

fn key_config(name: &str) -> KeyConfigId {
    KeyConfigId::new(name).expect("valid key config id")
}

fn cache(config: &SuiteConfig) -> CacheConfig {
    CacheConfig {
        encrypt_max_age: config.max_age,
        decrypt_max_age: config.max_age,
        ..CacheConfig::default()
    }
}

/// Fast backoff; attempts time out late (the deadline is what bounds callers), so a slow,
/// overloaded test machine is not mistaken for an outage.
fn retry() -> RetryPolicy {
    RetryPolicy::default()
        .with_backoff(Duration::from_millis(5), Duration::from_millis(40))
        .with_attempt_timeout(Some(Duration::from_secs(2)))
}

fn client(backend: Arc<dyn KmsBackend>, config: &SuiteConfig, cache: CacheConfig) -> Client {
    Client::builder()
        .key(key_config("suite"), backend)
        .dek_store(Arc::new(MemoryDekStore::new()))
        .cache(cache)
        .retry(retry())
        .deadline(config.deadline)
        .breaker(config.breaker.clone())
        .build()
        .expect("client")
}

/// A key event the suite makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyChange {
    Disable,
    Delete,
    Deny,
}

impl KeyChange {
    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Delete => "delete",
            Self::Deny => "deny",
        }
    }

    fn apply(self, target: &dyn FaultTarget, key: &str) {
        match self {
            Self::Disable => target.set_disabled(key, true),
            Self::Delete => target.delete(key),
            Self::Deny => target.set_denied(key, true),
        }
    }

    /// Undoes it; false for a deletion.
    fn undo(self, target: &dyn FaultTarget, key: &str) -> bool {
        match self {
            Self::Disable => target.set_disabled(key, false),
            Self::Delete => return false,
            Self::Deny => target.set_denied(key, false),
        }
        true
    }

    fn expected_kind(self) -> ErrorKind {
        match self {
            Self::Disable | Self::Delete => ErrorKind::KeyRevoked,
            Self::Deny => ErrorKind::PermissionDenied,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    Writes,
    Reads,
}

/// A key event with writes-only (warm compartments, the hardest case: nothing but the cache's
/// own refresh asks the KMS) or reads-only traffic running.
async fn key_event(
    target: &dyn FaultTarget,
    config: &SuiteConfig,
    event: KeyChange,
    traffic: Traffic,
) -> KeyEventTiming {
    let label = format!(
        "{} {} with {traffic:?} running",
        target.name(),
        event.name()
    );
    let key = target.create_key().await.expect("create key");
    let client = client(
        target.backend(&key).await.expect("backend"),
        config,
        cache(config),
    );
    let tenants: Vec<CompartmentId> = (0..4)
        .map(|i| compartment(&format!("tenant-{i}")))
        .collect();
    let mut envelopes = Vec::new();
    for (i, c) in tenants.iter().enumerate() {
        let compact = client
            .encrypt_compact(c, b"before", b"")
            .await
            .expect("write before");
        let whole = client
            .encrypt(c, b"before", b"")
            .await
            .expect("write before");
        envelopes.push((i, compact));
        envelopes.push((i, whole));
    }
    let calls_before = client.stats().kms_calls();
    event.apply(target, &key);
    let at = Instant::now();
    let mut last_success = Duration::ZERO;
    let mut refused_since: Option<(Duration, u64)> = None;
    let mut n = 0u64;
    while at.elapsed() < config.max_age + config.watch {
        n += 1;
        let outcome = match traffic {
            Traffic::Writes => client
                .encrypt(&tenants[(n % 4) as usize], b"after", b"")
                .await
                .map(drop),
            Traffic::Reads => {
                let (i, envelope) = &envelopes[(n as usize) % envelopes.len()];
                client.decrypt(&tenants[*i], envelope, b"").await.map(drop)
            }
        };
        match outcome {
            Ok(()) => {
                last_success = at.elapsed();
                refused_since = None;
            }
            Err(e) => {
                assert_eq!(e.kind(), event.expected_kind(), "{label}: {e}");
                refused_since.get_or_insert((at.elapsed(), client.stats().kms_calls()));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (fails_after, calls_at_refusal) =
        refused_since.unwrap_or_else(|| panic!("{label}: calls still succeed"));
    assert!(
        last_success <= config.max_age + config.slack,
        "{label}: a call succeeded {last_success:?} after the event (bound {:?})",
        config.max_age
    );
    let revoked_for = (config.max_age + config.watch).saturating_sub(fails_after);
    let calls = client.stats().kms_calls() - calls_at_refusal;
    let per_second = calls as f64 / revoked_for.as_secs_f64();
    let window = config.breaker.revoked_retry_after.as_secs_f64();
    assert!(
        per_second <= 2.0 / window + 2.0,
        "{label}: {calls} KMS calls in {revoked_for:?} under a revoked key"
    );
    let stats = client.stats();
    assert!(
        stats.kms_calls() > calls_before,
        "{label}: the KMS was asked"
    );
    assert_eq!(
        stats.revocations_detected, 1,
        "{label}: one revocation, counted once"
    );
    if event.undo(target, &key) {
        let deadline = Instant::now() + config.breaker.revoked_retry_after + config.slack * 3;
        loop {
            let outcome = match traffic {
                Traffic::Writes => client.encrypt(&tenants[0], b"again", b"").await.map(drop),
                Traffic::Reads => client
                    .decrypt(&tenants[0], &envelopes[0].1, b"")
                    .await
                    .map(drop),
            };
            if outcome.is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: no recovery after the undo"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    KeyEventTiming {
        event: event.name(),
        traffic: match traffic {
            Traffic::Writes => "writes",
            Traffic::Reads => "reads",
        },
        fails_after,
        bound: config.max_age,
        kms_calls_per_second: per_second,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OutageKind {
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
            (Self::Errors, true) => server.set_outage(super::Outage::Errors),
            (Self::Hang, true) => server.set_outage(super::Outage::Hang),
            (Self::Refused, true) => server.stop().await,
            (Self::Refused, false) => server.restart().await.expect("restart"),
            (_, false) => server.set_outage(super::Outage::None),
        }
    }
}

/// 16 callers keep asking for new data keys (new compartments) through an outage.
async fn outage_scenario(
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

/// A short throttling burst is ridden out; a long one fails after bounded attempts and leaves
/// the key usable.
async fn throttling_bursts(target: &dyn FaultTarget, config: &SuiteConfig) {
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
async fn random_errors_lose_nothing(target: &dyn FaultTarget, config: &SuiteConfig) {
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

/// Two tenants with their own keys: key A is revoked while its tenants write; tenant B sees no
/// error and no extra KMS call, cold or warm, over several lifetimes of its data keys.
async fn one_revoked_key_does_not_touch_another(target: &dyn FaultTarget, config: &SuiteConfig) {
    let label = format!("{} cross-tenant", target.name());
    let (key_a, key_b) = (
        target.create_key().await.expect("key"),
        target.create_key().await.expect("key"),
    );
    let a = target.backend(&key_a).await.expect("backend");
    let b = Arc::new(FaultyKms::new(
        target.backend(&key_b).await.expect("backend"),
    ));
    #[derive(Debug)]
    struct TwoTenants(KeyBinding, KeyBinding);
    #[async_trait]
    impl KeyResolver for TwoTenants {
        async fn encryption_key(&self, compartment: &CompartmentId) -> Result<KeyBinding> {
            Ok(if compartment.as_str().starts_with("a-") {
                self.0.clone()
            } else {
                self.1.clone()
            })
        }
        async fn decryption_key(
            &self,
            _: &CompartmentId,
            key_config: &KeyConfigId,
        ) -> Result<Arc<dyn KmsBackend>> {
            Ok(if *key_config == self.0.key_config {
                self.0.backend.clone()
            } else {
                self.1.backend.clone()
            })
        }
    }
    let client = Client::builder()
        .key_resolver(Arc::new(TwoTenants(
            KeyBinding::new(key_config("tenant-a"), a),
            KeyBinding::new(key_config("tenant-b"), b.clone()),
        )))
        .cache(cache(config))
        .retry(retry())
        .deadline(config.deadline)
        .breaker(config.breaker.clone())
        .build()
        .expect("client");
    let warm_b = compartment("b-warm");
    client
        .encrypt(&warm_b, b"warm", b"")
        .await
        .expect("B warms up");
    for i in 0..4 {
        client
            .encrypt(&compartment(&format!("a-{i}")), b"a", b"")
            .await
            .expect("A warms up");
    }
    target.set_disabled(&key_a, true);
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move {
            let mut refused = 0u64;
            let mut i = 0u64;
            while !stop.load(SeqCst) {
                i += 1;
                let c = compartment(&format!("a-{}", i % 8));
                refused += u64::from(client.encrypt(&c, b"a", b"").await.is_err());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            refused
        })
    };
    let wraps = b.wrap_calls();
    for i in 0..20 {
        client
            .encrypt(&compartment(&format!("b-cold-{i}")), b"b", b"")
            .await
            .unwrap_or_else(|e| panic!("{label}: cold tenant B {i}: {e}"));
    }
    assert_eq!(
        b.wrap_calls() - wraps,
        20,
        "{label}: one wrap per cold B compartment"
    );
    let wraps = b.wrap_calls();
    let started = Instant::now();
    while started.elapsed() < config.max_age * 2 {
        client
            .encrypt(&warm_b, b"warm", b"")
            .await
            .unwrap_or_else(|e| {
                panic!("{label}: warm tenant B after {:?}: {e}", started.elapsed())
            });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, SeqCst);
    assert!(
        load.await.expect("load task") > 0,
        "{label}: key A's writes are refused"
    );
    let lifetimes =
        (started.elapsed().as_secs_f64() / (config.max_age.as_secs_f64() * 0.75)) as u64 + 2;
    assert!(
        b.wrap_calls() - wraps <= lifetimes,
        "{label}: warm tenant B made {} wraps in {:?}",
        b.wrap_calls() - wraps,
        started.elapsed()
    );
    target.set_disabled(&key_a, false);
}

/// With degraded mode on, a warm compartment keeps writing and reading through an outage past
/// its data keys' max age (within the staleness bound), with an event when it starts and ends;
/// without it, writes stop at the max age. Never after a revocation.
async fn degraded_mode_serves_through_an_outage(target: &dyn FaultTarget, config: &SuiteConfig) {
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
    target.server().set_outage(super::Outage::Errors);
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
    target.server().set_outage(super::Outage::None);
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
