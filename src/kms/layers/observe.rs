//! The [`Observe`] layer: every KMS attempt counted, timed and traced (never with key material).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::DataKey;
use crate::kms::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};

/// Counts of KMS attempts, behind [`Stats`](crate::Stats).
#[derive(Debug, Default)]
pub(crate) struct KmsCounters {
    pub(crate) wrap_calls: AtomicU64,
    pub(crate) unwrap_calls: AtomicU64,
    pub(crate) errors: AtomicU64,
}

/// Counts, times and traces every call of `inner` (each attempt, when below a
/// [`Retry`](super::Retry)), abandoned ones included: `tracing` events at debug level (warn for
/// failures) with provider, operation, key configuration, latency and outcome, and the
/// `metrics` facade's `cmek_kms_requests_total` and `cmek_kms_latency_seconds` (feature
/// `metrics`; outcome `ok`, an error kind, or `cancelled`).
pub struct Observe<T> {
    inner: T,
    counters: Arc<KmsCounters>,
}

impl<T> Observe<T> {
    pub(crate) fn new(inner: T, counters: Arc<KmsCounters>) -> Self {
        Self { inner, counters }
    }
}

impl<T: fmt::Debug> fmt::Debug for Observe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<T: fmt::Display> fmt::Display for Observe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Observe({})", self.inner)
    }
}

impl<T: KmsBackend> Observe<T> {
    fn seen<R>(
        &self,
        op: &'static str,
        key_config: Option<&str>,
        started: Instant,
        outcome: &Result<R>,
    ) {
        let counter = match op {
            "wrap" => Some(&self.counters.wrap_calls),
            "unwrap" => Some(&self.counters.unwrap_calls),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Relaxed);
        }
        let elapsed = started.elapsed();
        let provider = self.inner.provider();
        let outcome_name = match outcome {
            Ok(_) => "ok",
            Err(e) => e.kind().as_str(),
        };
        crate::telemetry::kms_call(provider, op, outcome_name, elapsed);
        let elapsed_ms = elapsed.as_secs_f64() * 1e3;
        let key_config = key_config.unwrap_or("-");
        match outcome {
            Ok(_) => tracing::debug!(
                provider = provider.as_str(),
                op,
                key_config,
                elapsed_ms,
                "KMS call succeeded"
            ),
            Err(e) => {
                self.counters.errors.fetch_add(1, Relaxed);
                tracing::warn!(provider = provider.as_str(), op, key_config, elapsed_ms, error = %e, "KMS call failed");
            }
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: KmsBackend> KmsBackend for Observe<T> {
    fn provider(&self) -> Provider {
        self.inner.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        self.inner.wrapping_key_id()
    }

    async fn describe(&self) -> Result<KeyDescription> {
        let started = Instant::now();
        let outcome = self.inner.describe().await;
        self.seen("describe", None, started, &outcome);
        outcome
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        let started = Instant::now();
        let outcome = self.inner.wrap(dek, context).await;
        self.seen(
            "wrap",
            Some(context.key_config().as_str()),
            started,
            &outcome,
        );
        outcome
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        let started = Instant::now();
        let outcome = self.inner.unwrap(wrapped, context).await;
        self.seen(
            "unwrap",
            Some(context.key_config().as_str()),
            started,
            &outcome,
        );
        outcome
    }

    async fn check_key(&self) -> Result<()> {
        let started = Instant::now();
        let outcome = self.inner.check_key().await;
        self.seen("check_key", None, started, &outcome);
        outcome
    }
}
