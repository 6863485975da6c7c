//! Metrics through the `metrics` facade (feature `metrics`; without it every function here is
//! empty). No label ever names a compartment or a key: ten thousand tenants must not mean ten
//! thousand series.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `cmek_kms_requests_total` | counter | `provider`, `op`, `outcome` (`ok` or an error kind) |
//! | `cmek_kms_latency_seconds` | histogram | `provider`, `op`, `outcome` |
//! | `cmek_errors_total` | counter | `kind`: errors returned to callers |
//! | `cmek_revocations_total` | counter | keys revoked (disabled, deleted, access lost) |
//! | `cmek_key_state_changes_total` | counter | `from`, `to` |
//! | `cmek_degraded_total` | counter | `event` (`started`, `ended`) |
//! | `cmek_degraded_keys` | gauge | keys whose cached DEKs serve past their max age |
//! | `cmek_degraded_serves_total` | counter | `cache`: stale DEKs stretched in degraded mode |
//! | `cmek_keys` | gauge | `state`: keys per breaker state |
//! | `cmek_cache_hits_total`, `cmek_cache_misses_total` | counter | `cache` (`encrypt`, `decrypt`) |
//! | `cmek_deks_cached` | gauge | `cache` |
//! | `cmek_deks_created_total`, `cmek_cache_evictions_total` | counter | |
//!
//! The hot path records nothing: cache counters are published from [`Stats`] every
//! `ClientBuilder::metrics_interval` by a background task.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::Stats;
use crate::error::Error;
use crate::kms::Provider;
#[cfg(feature = "metrics")]
use crate::kms::health::KeyEventKind;
use crate::kms::health::{KeyEvent, KeyState};

/// One KMS attempt.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn kms_call(
    provider: Provider,
    op: &'static str,
    outcome: &'static str,
    elapsed: Duration,
) {
    #[cfg(feature = "metrics")]
    {
        let labels = [
            ("provider", provider.as_str()),
            ("op", op),
            ("outcome", outcome),
        ];
        metrics::counter!("cmek_kms_requests_total", &labels).increment(1);
        metrics::histogram!("cmek_kms_latency_seconds", &labels).record(elapsed.as_secs_f64());
    }
}

/// An error returned to a caller.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn error(e: &Error) {
    #[cfg(feature = "metrics")]
    metrics::counter!("cmek_errors_total", "kind" => e.kind().as_str()).increment(1);
}

/// A key event.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn key_event(event: &KeyEvent) {
    #[cfg(feature = "metrics")]
    match &event.kind {
        KeyEventKind::StateChanged {
            from,
            to,
            revocation,
        } => {
            metrics::counter!("cmek_key_state_changes_total", "from" => from.as_str(), "to" => to.as_str())
                .increment(1);
            if *revocation {
                metrics::counter!("cmek_revocations_total").increment(1);
            }
        }
        KeyEventKind::DegradedStarted => {
            metrics::counter!("cmek_degraded_total", "event" => "started").increment(1);
            metrics::gauge!("cmek_degraded_keys").increment(1.0);
        }
        KeyEventKind::DegradedEnded => {
            metrics::counter!("cmek_degraded_total", "event" => "ended").increment(1);
            metrics::gauge!("cmek_degraded_keys").decrement(1.0);
        }
    }
}

/// A stale DEK stretched in degraded mode.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn degraded_use(cache: &'static str) {
    #[cfg(feature = "metrics")]
    metrics::counter!("cmek_degraded_serves_total", "cache" => cache).increment(1);
}

/// Publishes a snapshot of the cache counters and the breaker states.
#[cfg(feature = "metrics")]
fn publish(stats: &Stats, keys: &[(KeyState, usize)]) {
    {
        for (cache, hits, misses, entries) in [
            (
                "encrypt",
                stats.encrypt_hits,
                stats.encrypt_misses,
                stats.encrypt_entries,
            ),
            (
                "decrypt",
                stats.decrypt_hits,
                stats.decrypt_misses,
                stats.decrypt_entries,
            ),
        ] {
            metrics::counter!("cmek_cache_hits_total", "cache" => cache).absolute(hits);
            metrics::counter!("cmek_cache_misses_total", "cache" => cache).absolute(misses);
            metrics::gauge!("cmek_deks_cached", "cache" => cache).set(entries as f64);
        }
        metrics::counter!("cmek_deks_created_total").absolute(stats.deks_created);
        metrics::counter!("cmek_cache_evictions_total").absolute(stats.evictions);
        for (state, count) in keys {
            metrics::gauge!("cmek_keys", "state" => state.as_str()).set(*count as f64);
        }
    }
}

/// What the publisher reads: the cache counters and the number of keys per breaker state.
pub(crate) type Snapshot = (Stats, [(KeyState, usize); 4]);

/// Publishes `read(owner)` every `every` from a background task, until the owner is dropped
/// (needs a tokio runtime when called; without one, nothing is published).
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
pub(crate) fn publish_periodically<T: Send + Sync + 'static>(
    owner: &Arc<T>,
    every: Duration,
    read: fn(&T) -> Snapshot,
) {
    #[cfg(feature = "metrics")]
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak: std::sync::Weak<T> = Arc::downgrade(owner);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
            loop {
                tick.tick().await;
                let Some(owner) = weak.upgrade() else { return };
                let (stats, keys) = read(&owner);
                publish(&stats, &keys);
            }
        });
    }
}
