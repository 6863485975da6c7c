//! The deadline of the operation under way, and the [`Deadline`] layer that enforces it.
//!
//! An operation (an encryption that needs a new data key, a validation, one record of a rewrap)
//! gets one deadline that covers every KMS attempt and every backoff inside it. It travels with
//! the task as a task-local value, so layers deeper down ([`Retry`](super::Retry)) can stop
//! before it instead of starting an attempt that cannot finish.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::key::DataKey;
use crate::kms::{KeyDescription, KmsBackend, Provider, WrapContext, WrappedKey};

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the operation this task is running, if one was set with [`within`].
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Time left before the current deadline (`None` without one).
pub fn remaining() -> Option<Duration> {
    current().map(|d| d.saturating_duration_since(Instant::now()))
}

/// Runs `op` under `deadline`, or under an earlier one already set for this task (a nested
/// operation never extends its caller's time). Fails with
/// [`ErrorKind::DeadlineExceeded`] when it runs out.
///
/// # Errors
/// `op`'s error, or the deadline's.
pub async fn within<T>(deadline: Instant, op: impl Future<Output = Result<T>>) -> Result<T> {
    let deadline = current().map_or(deadline, |outer| outer.min(deadline));
    DEADLINE
        .scope(deadline, async move {
            match tokio::time::timeout_at(deadline, op).await {
                Ok(outcome) => outcome,
                Err(_) => Err(exceeded()),
            }
        })
        .await
}

/// The error of an operation whose deadline passed.
pub(crate) fn exceeded() -> Error {
    Error::new(
        ErrorKind::DeadlineExceeded,
        "the operation's deadline passed before the KMS answered",
    )
}

/// Bounds every call by the task's deadline, or by `default` from the call's start when the
/// task has none.
#[derive(Clone, Debug)]
pub struct Deadline<T> {
    inner: T,
    default: Duration,
}

impl<T> Deadline<T> {
    /// Calls through `inner` get `default` unless the task already has a deadline.
    pub fn new(inner: T, default: Duration) -> Self {
        Self { inner, default }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.default
    }
}

impl<T: fmt::Display> fmt::Display for Deadline<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Deadline({} ms, {})",
            self.default.as_millis(),
            self.inner
        )
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<T: KmsBackend> KmsBackend for Deadline<T> {
    fn provider(&self) -> Provider {
        self.inner.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        self.inner.wrapping_key_id()
    }

    async fn describe(&self) -> Result<KeyDescription> {
        within(self.deadline(), self.inner.describe()).await
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        within(self.deadline(), self.inner.wrap(dek, context)).await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        within(self.deadline(), self.inner.unwrap(wrapped, context)).await
    }

    async fn check_key(&self) -> Result<()> {
        within(self.deadline(), self.inner.check_key()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_nested_deadline_never_extends_the_outer_one() {
        let outer = Instant::now() + Duration::from_millis(100);
        let out = within(outer, async {
            let inner = Instant::now() + Duration::from_secs(60);
            within(inner, async {
                assert_eq!(current(), Some(outer));
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(())
            })
            .await
        })
        .await;
        assert_eq!(out.unwrap_err().kind(), ErrorKind::DeadlineExceeded);
        assert_eq!(current(), None);
    }
}
