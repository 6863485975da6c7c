//! Per-key health: what each KMS key last answered, the breaker that keeps a failing key from
//! costing a KMS call per request, and the events the cache and the control plane react to.
//!
//! A key is one `(key configuration, backend key id)` pair, so an earlier key of a rotated
//! configuration that was destroyed never holds back the current one, and one customer's key
//! never holds back another's. Each key has one breaker for its wraps and one per key version
//! for its unwraps, so a destroyed old version holds back neither the others nor new data.
//! States:
//!
//! | state | entered on | calls |
//! |---|---|---|
//! | [`KeyState::Healthy`] | a success | go to the KMS |
//! | [`KeyState::Revoked`] | the key disabled, revoked or deleted | fail fast for a jittered [`BreakerConfig::revoked_retry_after`], then one probe |
//! | [`KeyState::Denied`] | a permission or authentication refusal | as for `Revoked` |
//! | [`KeyState::Unreachable`] | [`BreakerConfig::unreachable_after`] transient failures in a row | fail fast; one probe per jittered [`BreakerConfig::probe_interval`] |
//!
//! A probe that succeeds makes the key healthy again at once.

mod registry;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::error::{Error, ErrorKind};
use crate::ids::KeyConfigId;
use crate::kms::Provider;

pub(crate) use registry::{Admission, HealthRegistry, Slot};

/// What a key's last answers say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyState {
    /// Answering.
    Healthy,
    /// Disabled, revoked, scheduled for deletion or deleted.
    Revoked,
    /// The KMS refuses us: a key policy, IAM binding or role assignment is missing, or our
    /// credentials are not accepted.
    Denied,
    /// Not answering (outage, network, timeouts).
    Unreachable,
}

impl KeyState {
    /// `healthy`, `revoked`, `denied` or `unreachable`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Revoked => "revoked",
            Self::Denied => "denied",
            Self::Unreachable => "unreachable",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the breaker treats failing keys. `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerConfig {
    /// How long a revoked or denied key fails fast before one call probes it again (jittered
    /// between half and all of it). Default 5 s.
    pub revoked_retry_after: Duration,
    /// Transient failures in a row after which a key counts as unreachable. Default 5: more
    /// than one operation's attempts, so a blip one operation rides out by retrying never
    /// trips the breaker.
    pub unreachable_after: u32,
    /// How often an unreachable key is probed (jittered between half and all of it); other
    /// calls fail fast meanwhile. Default 1 s.
    pub probe_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            revoked_retry_after: Duration::from_secs(5),
            unreachable_after: 5,
            probe_interval: Duration::from_secs(1),
        }
    }
}

impl BreakerConfig {
    /// Sets how long a revoked or denied key fails fast.
    #[must_use]
    pub fn with_revoked_retry_after(mut self, window: Duration) -> Self {
        self.revoked_retry_after = window;
        self
    }

    /// Sets after how many transient failures in a row a key counts as unreachable (at least 1).
    #[must_use]
    pub fn with_unreachable_after(mut self, failures: u32) -> Self {
        self.unreachable_after = failures.max(1);
        self
    }

    /// Sets how often an unreachable key is probed.
    #[must_use]
    pub fn with_probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }
}

/// The last failure of a key, as its health view shows it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyFailure {
    /// Its kind.
    pub kind: ErrorKind,
    /// Its message.
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

/// One key's health, for an operator's view (see `Client::key_health`).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyHealth {
    /// The key configuration.
    pub key_config: KeyConfigId,
    /// The backend's key id (ARN, resource name, key id); empty when the backend does not say.
    pub key_id: String,
    /// The key version whose unwraps this is about; empty for the key's wraps (and for
    /// backends whose ciphertexts name their own version, as on AWS).
    pub key_version: String,
    /// The kind of KMS.
    pub provider: Provider,
    /// What its last answers say.
    pub state: KeyState,
    /// Since when it is in that state.
    pub since: SystemTime,
    /// The last successful call.
    pub last_success: Option<SystemTime>,
    /// The last failed call.
    pub last_error: Option<KeyFailure>,
    /// Whether cached data keys of it are serving past their max age (degraded mode).
    pub degraded: bool,
}

/// What happened to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyEventKind {
    /// It moved from one state to another.
    StateChanged {
        /// Before.
        from: KeyState,
        /// Now.
        to: KeyState,
        /// Whether this is a revocation of a key that worked: disabled or deleted, or a
        /// permission loss after a success. Counted in `Stats::revocations_detected`.
        revocation: bool,
    },
    /// Cached data keys of it started serving past their max age while it is unreachable.
    DegradedStarted,
    /// That ended (the key answers again, or was revoked).
    DegradedEnded,
}

/// An event of one key, passed to every listener.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyEvent {
    /// The key configuration.
    pub key_config: KeyConfigId,
    /// The backend's key id (empty when the backend does not say).
    pub key_id: String,
    /// The key version concerned; empty for the key's wraps, or the whole key.
    pub key_version: String,
    /// What happened.
    pub kind: KeyEventKind,
    /// The KMS answer behind it, if any.
    pub cause: Option<Error>,
}

/// Receives key events; called synchronously, so it must not block.
pub type KeyListener = Arc<dyn Fn(&KeyEvent) + Send + Sync>;
