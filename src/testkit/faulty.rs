//! A fault-injecting KMS backend decorator.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::key::DataKey;
use crate::kms::local::LocalKms;
use crate::kms::{KeyDescription, KeyStateControl, KmsBackend, Provider, WrapContext, WrappedKey};

/// What the next wrap, unwrap or key check call does.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fails with this kind (message "injected fault").
    Fail(ErrorKind),
    /// Waits this long more, then behaves normally.
    Delay(Duration),
    /// Behaves normally.
    Pass,
}

/// A backend decorator that adds latency, scripted faults and an off switch, and counts calls.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cmek::Result<()> {
/// use std::time::Duration;
/// use cmek::ErrorKind;
/// use cmek::testkit::{Fault, FaultyKms};
///
/// let kms = FaultyKms::in_memory()?;
/// kms.set_latency(Duration::from_millis(5));
/// kms.push_faults([Fault::Fail(ErrorKind::Throttled), Fault::Pass]);
/// kms.disable(); // every call now fails with ErrorKind::KeyRevoked
/// # Ok(()) }
/// ```
pub struct FaultyKms<B = LocalKms> {
    inner: B,
    latency: Mutex<Duration>,
    script: Mutex<VecDeque<Fault>>,
    disabled: AtomicBool,
    wrap_calls: AtomicU64,
    unwrap_calls: AtomicU64,
    describe_calls: AtomicU64,
}

impl FaultyKms<LocalKms> {
    /// Around a fresh in-memory local key `local:test`.
    ///
    /// # Errors
    /// An RNG failure.
    pub fn in_memory() -> Result<Self> {
        Ok(Self::new(LocalKms::generate("local:test")?))
    }
}

impl<B: KmsBackend> FaultyKms<B> {
    /// Wraps `inner`; no faults until told.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            latency: Mutex::new(Duration::ZERO),
            script: Mutex::new(VecDeque::new()),
            disabled: AtomicBool::new(false),
            wrap_calls: AtomicU64::new(0),
            unwrap_calls: AtomicU64::new(0),
            describe_calls: AtomicU64::new(0),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Adds `latency` to every call (simulates a remote KMS).
    pub fn set_latency(&self, latency: Duration) {
        if let Ok(mut l) = self.latency.lock() {
            *l = latency;
        }
    }

    /// Queues faults; each wrap, unwrap or key check call takes the next one.
    pub fn push_faults(&self, faults: impl IntoIterator<Item = Fault>) {
        if let Ok(mut s) = self.script.lock() {
            s.extend(faults);
        }
    }

    /// The next `n` wrap, unwrap or key check calls fail with `kind`.
    pub fn fail_next(&self, n: usize, kind: ErrorKind) {
        self.push_faults(std::iter::repeat_n(Fault::Fail(kind), n));
    }

    /// Drops queued faults.
    pub fn clear_faults(&self) {
        if let Ok(mut s) = self.script.lock() {
            s.clear();
        }
    }

    /// Every call fails with [`ErrorKind::KeyRevoked`] until [`FaultyKms::enable`].
    pub fn disable(&self) {
        self.disabled.store(true, SeqCst);
    }

    /// Undoes [`FaultyKms::disable`].
    pub fn enable(&self) {
        self.disabled.store(false, SeqCst);
    }

    /// Wrap calls so far.
    pub fn wrap_calls(&self) -> u64 {
        self.wrap_calls.load(SeqCst)
    }

    /// Unwrap calls so far.
    pub fn unwrap_calls(&self) -> u64 {
        self.unwrap_calls.load(SeqCst)
    }

    /// Describe calls so far.
    pub fn describe_calls(&self) -> u64 {
        self.describe_calls.load(SeqCst)
    }

    async fn before_call(&self) -> Result<()> {
        let latency = self.latency.lock().map(|l| *l).unwrap_or_default();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let fault = self.script.lock().ok().and_then(|mut s| s.pop_front());
        match fault {
            Some(Fault::Fail(kind)) => return Err(Error::new(kind, "injected fault")),
            Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
            Some(Fault::Pass) | None => {}
        }
        if self.disabled.load(SeqCst) {
            return Err(Error::revoked("key is disabled (injected)"));
        }
        Ok(())
    }
}

impl<B: KmsBackend> fmt::Debug for FaultyKms<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyKms")
            .field("inner", &self.inner)
            .field("disabled", &self.disabled.load(SeqCst))
            .field("wrap_calls", &self.wrap_calls())
            .field("unwrap_calls", &self.unwrap_calls())
            .finish_non_exhaustive()
    }
}

impl<B: KmsBackend> fmt::Display for FaultyKms<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyKms({})", self.inner)
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<B: KmsBackend> KmsBackend for FaultyKms<B> {
    fn provider(&self) -> Provider {
        self.inner.provider()
    }

    fn wrapping_key_id(&self) -> Option<&str> {
        self.inner.wrapping_key_id()
    }

    async fn describe(&self) -> Result<KeyDescription> {
        self.describe_calls.fetch_add(1, SeqCst);
        self.inner.describe().await
    }

    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> Result<WrappedKey> {
        self.wrap_calls.fetch_add(1, SeqCst);
        self.before_call().await?;
        self.inner.wrap(dek, context).await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext<'_>) -> Result<DataKey> {
        self.unwrap_calls.fetch_add(1, SeqCst);
        self.before_call().await?;
        self.inner.unwrap(wrapped, context).await
    }

    async fn check_key(&self) -> Result<()> {
        self.before_call().await?;
        self.inner.check_key().await
    }
}

#[async_trait]
impl<B: KmsBackend> KeyStateControl for FaultyKms<B> {
    async fn disable_key(&self) -> Result<()> {
        self.disable();
        Ok(())
    }

    async fn enable_key(&self) -> Result<()> {
        self.enable();
        Ok(())
    }
}
