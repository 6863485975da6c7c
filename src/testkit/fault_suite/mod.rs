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

mod key_events;
mod outages;

use key_events::{KeyChange, Traffic, key_event, one_revoked_key_does_not_touch_another};
use outages::{
    OutageKind, degraded_mode_serves_through_an_outage, outage_scenario,
    random_errors_lose_nothing, throttling_bursts,
};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::ServerControl;
use crate::cache::CacheConfig;
use crate::client::Client;
use crate::error::Result;
use crate::ids::{CompartmentId, KeyConfigId};
use crate::kms::health::BreakerConfig;
use crate::kms::{KmsBackend, RetryPolicy};
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
