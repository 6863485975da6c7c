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

/// One attempt under way: counted when it starts, recorded when it ends, or as `cancelled`
/// when its future is dropped first (a timeout, a caller that gave up).
struct Attempt<'a> {
    counters: &'a KmsCounters,
    provider: Provider,
    op: &'static str,
    key_config: &'a str,
    started: Instant,
    done: bool,
}

impl<'a> Attempt<'a> {
    fn start(
        counters: &'a KmsCounters,
        provider: Provider,
        op: &'static str,
        key_config: &'a str,
    ) -> Self {
        match op {
            "wrap" => counters.wrap_calls.fetch_add(1, Relaxed),
            "unwrap" => counters.unwrap_calls.fetch_add(1, Relaxed),
            _ => 0,
        };
        Self {
            counters,
            provider,
            op,
            key_config,
            started: Instant::now(),
            done: false,
        }
    }

    fn end<R>(mut self, outcome: Result<R>) -> Result<R> {
        self.done = true;
        let (provider, op, key_config) = (self.provider.as_str(), self.op, self.key_config);
        match &outcome {
            Ok(_) => {
                let elapsed_ms = self.record("ok");
                tracing::debug!(provider, op, key_config, elapsed_ms, "KMS call succeeded");
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Relaxed);
                let elapsed_ms = self.record(e.kind().as_str());
                tracing::warn!(provider, op, key_config, elapsed_ms, error = %e, "KMS call failed");
            }
        }
        outcome
    }

    /// Feeds the metrics; returns the latency in milliseconds.
    fn record(&self, outcome: &'static str) -> f64 {
        let elapsed = self.started.elapsed();
        crate::telemetry::kms_call(self.provider, self.op, outcome, elapsed);
        elapsed.as_secs_f64() * 1e3
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.counters.errors.fetch_add(1, Relaxed);
            let elapsed_ms = self.record("cancelled");
            let (provider, op, key_config) = (self.provider.as_str(), self.op, self.key_config);
            tracing::warn!(
                provider,
                op,
                key_config,
                elapsed_ms,
                "KMS call abandoned (timed out or cancelled)"
            );
        }
    }
}

impl<T: KmsBackend> Observe<T> {
    fn attempt<'a>(&'a self, op: &'static str, key_config: &'a str) -> Attempt<'a> {
        Attempt::start(&self.counters, self.inner.provider(), op, key_config)
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
        let attempt = self.attempt("describe", "-");
        attempt.end(self.inner.describe().await)
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        let attempt = self.attempt("wrap", context.key_config().as_str());
        attempt.end(self.inner.wrap(dek, context).await)
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        let attempt = self.attempt("unwrap", context.key_config().as_str());
        attempt.end(self.inner.unwrap(wrapped, context).await)
    }

    async fn check_key(&self) -> Result<()> {
        let attempt = self.attempt("check_key", "-");
        attempt.end(self.inner.check_key().await)
    }
}
