//! The [`Timeout`] layer: one attempt may take at most the per-attempt timeout, and never
//! longer than the operation's deadline. It sits below the breaker, so a hanging KMS counts
//! against its key like any other outage.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::key::DataKey;
use crate::kms::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};

/// Runs one attempt within `limit` and the task's deadline; a hang becomes a transient error
/// (or [`DeadlineExceeded`](crate::ErrorKind::DeadlineExceeded) when the deadline is what ran
/// out).
pub(crate) async fn timed<T>(
    limit: Option<Duration>,
    attempt: impl Future<Output = Result<T>>,
) -> Result<T> {
    let deadline = super::deadline::current();
    let limit = match (limit, deadline) {
        (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
        (t, None) => t,
        (None, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
    };
    let Some(limit) = limit else {
        return attempt.await;
    };
    match tokio::time::timeout(limit, attempt).await {
        Ok(outcome) => outcome,
        Err(_) if deadline.is_some_and(|d| Instant::now() >= d) => Err(super::deadline::exceeded()),
        Err(_) => Err(Error::transient(format!(
            "KMS call timed out after {} ms",
            limit.as_millis()
        ))),
    }
}

/// Times out each call of `inner` after `limit` (and at the task's deadline).
#[derive(Clone, Debug)]
pub struct Timeout<T> {
    inner: T,
    limit: Option<Duration>,
}

impl<T> Timeout<T> {
    /// Calls through `inner` may take at most `limit` (`None`: only the deadline bounds them).
    pub fn new(inner: T, limit: Option<Duration>) -> Self {
        Self { inner, limit }
    }
}

impl<T: fmt::Display> fmt::Display for Timeout<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Some(limit) => write!(f, "Timeout({} ms, {})", limit.as_millis(), self.inner),
            None => write!(f, "Timeout(none, {})", self.inner),
        }
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: KmsBackend> KmsBackend for Timeout<T> {
    fn provider(&self) -> Provider {
        self.inner.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        self.inner.wrapping_key_id()
    }

    async fn describe(&self) -> Result<KeyDescription> {
        timed(self.limit, self.inner.describe()).await
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        timed(self.limit, self.inner.wrap(dek, context)).await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        timed(self.limit, self.inner.unwrap(wrapped, context)).await
    }

    async fn check_key(&self) -> Result<()> {
        timed(self.limit, self.inner.check_key()).await
    }
}
