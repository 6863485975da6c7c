//! Bounded exponential backoff with full jitter around KMS calls: [`RetryPolicy`] and the
//! [`Retry`] layer.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use rand::RngExt;
use tokio::time::Instant;

use crate::error::Result;
use crate::key::DataKey;
use crate::kms::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};

/// How KMS calls are retried and timed out.
///
/// Only [retryable](crate::ErrorKind::is_retryable) errors (throttled, transient) are retried.
/// The delay before retry `n` (1-based) is drawn uniformly from
/// `0..=min(max_backoff, initial_backoff * 2^(n-1))` ("full jitter"), so a fleet of clients
/// does not retry in lockstep.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in total, including the first. Default 4.
    pub max_attempts: u32,
    /// Upper bound of the first delay. Default 50 ms.
    pub initial_backoff: Duration,
    /// Upper bound of any delay. Default 2 s.
    pub max_backoff: Duration,
    /// Time limit of one attempt; an attempt that runs longer fails as transient. Default 3 s
    /// (a hung connection then costs one attempt, not the whole deadline). Applied by the
    /// [`Timeout`](super::Timeout) layer, below the breaker, in the client's stack.
    pub attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Some(Duration::from_secs(3)),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Sets the number of attempts (at least 1).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Sets the initial and maximal backoff.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets (or removes) the per-attempt timeout.
    #[must_use]
    pub fn with_attempt_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// The upper bound of the delay before retry `retry` (1-based).
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// Runs `op` until it succeeds, fails with a non-retryable or fail-fast error, attempts run
    /// out, or the next backoff would end past the task's deadline (see
    /// [`deadline`](super::deadline)). Attempts are timed out by the [`Timeout`](super::Timeout)
    /// layer below, so the breaker between them sees a hang as a failure.
    pub(crate) async fn run<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = super::deadline::current();
        let mut attempt = 1;
        loop {
            let outcome = op().await;
            match outcome {
                Err(e) if e.is_retryable() && !e.is_fail_fast() && attempt < self.max_attempts => {
                    let ceiling = self.backoff_ceiling(attempt);
                    let delay = rand::rng().random_range(Duration::ZERO..=ceiling);
                    if deadline.is_some_and(|d| Instant::now() + delay >= d) {
                        return Err(e);
                    }
                    tracing::debug!(attempt, ?delay, error = %e, "retrying KMS call");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// Retries throttled and transient failures of `inner` per a [`RetryPolicy`], within the
/// task's deadline. It does not time attempts out: put a [`Timeout`](super::Timeout) below it.
#[derive(Clone, Debug)]
pub struct Retry<T> {
    inner: T,
    policy: RetryPolicy,
}

impl<T> Retry<T> {
    /// Retries calls through `inner` per `policy`.
    pub fn new(inner: T, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }
}

impl<T: fmt::Display> fmt::Display for Retry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retry({}, {})", self.policy.max_attempts, self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: KmsBackend> KmsBackend for Retry<T> {
    fn provider(&self) -> Provider {
        self.inner.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        self.inner.wrapping_key_id()
    }

    async fn describe(&self) -> Result<KeyDescription> {
        self.policy.run(|| self.inner.describe()).await
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        self.policy.run(|| self.inner.wrap(dek, context)).await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        self.policy
            .run(|| self.inner.unwrap(wrapped, context))
            .await
    }

    async fn check_key(&self) -> Result<()> {
        self.policy.run(|| self.inner.check_key()).await
    }
}

#[cfg(test)]
mod tests {
    use super::super::timeout::timed;
    use super::*;
    use crate::{Error, ErrorKind};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy::default().with_backoff(Duration::from_millis(1), Duration::from_millis(4))
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(50));
        assert_eq!(p.backoff_ceiling(2), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(200));
        assert_eq!(p.backoff_ceiling(40), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let calls = AtomicU32::new(0);
        let out = fast()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::new(ErrorKind::Throttled, "slow down"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::transient("down"))
            })
            .await;
        assert_eq!(out.unwrap_err().kind(), ErrorKind::Transient);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn does_not_retry_permanent_errors() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::new(ErrorKind::PermissionDenied, "no"))
            })
            .await;
        assert_eq!(out.unwrap_err().kind(), ErrorKind::PermissionDenied);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_attempts_stop_at_the_deadline() {
        let calls = AtomicU32::new(0);
        let started = Instant::now();
        let deadline = started + Duration::from_millis(4500);
        let policy = RetryPolicy::default();
        let out: Result<()> = super::super::deadline::within(deadline, async {
            policy
                .run(|| {
                    timed(policy.attempt_timeout, async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        std::future::pending::<Result<()>>().await
                    })
                })
                .await
        })
        .await;
        let err = out.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            started.elapsed() <= Duration::from_millis(4500),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a 3 s attempt, then one cut short"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_attempts_time_out_as_transient() {
        let p = RetryPolicy::none().with_attempt_timeout(Some(Duration::from_millis(100)));
        let out: Result<()> = p
            .run(|| {
                timed(p.attempt_timeout, async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(())
                })
            })
            .await;
        assert_eq!(out.unwrap_err().kind(), ErrorKind::Transient);
    }
}
