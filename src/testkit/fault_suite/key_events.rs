//! Key events (disable, delete, deny) with traffic running, and one tenant's revoked key
//! beside another's healthy one.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test suite: failures are panics

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use super::{
    FaultTarget, KeyEventTiming, SuiteConfig, cache, client, compartment, key_config, retry,
};
use crate::client::Client;
use crate::error::{ErrorKind, Result};
use crate::ids::{CompartmentId, KeyConfigId};
use crate::kms::{KeyBinding, KeyResolver, KmsBackend};
use crate::testkit::FaultyKms;

/// A key event the suite makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyChange {
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
pub(super) enum Traffic {
    Writes,
    Reads,
}

/// A key event with writes-only (warm compartments, the hardest case: nothing but the cache's
/// own refresh asks the KMS) or reads-only traffic running.
pub(super) async fn key_event(
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

/// Two tenants with their own keys: key A is revoked while its tenants write; tenant B sees no
/// error and no extra KMS call, cold or warm, over several lifetimes of its data keys.
pub(super) async fn one_revoked_key_does_not_touch_another(
    target: &dyn FaultTarget,
    config: &SuiteConfig,
) {
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
    #[async_trait::async_trait]
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
