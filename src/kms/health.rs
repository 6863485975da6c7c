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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rand::RngExt;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::ids::KeyConfigId;
use crate::kms::Provider;

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

/// What a call on a key is to the breaker: an ordinary call or the one probe, and the key's
/// state generation when it was let through (an answer to a call let through before the key
/// changed state does not change it back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Admission {
    probe: bool,
    generation: u64,
}

struct SlotState {
    state: KeyState,
    since: SystemTime,
    /// While not healthy: calls fail fast until then (then one probe).
    retry_at: Instant,
    /// When the probe under way was let through (a probe whose caller vanished without an
    /// answer is replaced after the probe lease).
    probe_out: Option<Instant>,
    /// Counts state changes; see [`Admission`].
    generation: u64,
    transient_in_a_row: u32,
    ever_ok: bool,
    last_success: Option<SystemTime>,
    last_error: Option<(Error, SystemTime)>,
    degraded: bool,
}

/// The breaker and health of one key's wraps, or of its unwraps of one version.
pub(crate) struct Slot {
    key_config: KeyConfigId,
    key_id: String,
    key_version: String,
    provider: Provider,
    state: Mutex<SlotState>,
}

/// What is known of one key across its slots (its wraps and the versions it unwraps).
#[derive(Default)]
struct KeyFlags {
    /// Some call of it succeeded (so a refusal now is a permission lost).
    worked: bool,
    /// A slot of it is revoked or denied (so the revocation is counted already).
    revoked: bool,
}

/// Where a slot is filed: key configuration, key id, key version (empty for wraps).
type SlotKey = (KeyConfigId, String, String);

/// Every key's slots, and who listens to their events.
pub(crate) struct HealthRegistry {
    config: BreakerConfig,
    /// How long a probe may be out before another call may probe instead.
    probe_lease: Duration,
    slots: Mutex<HashMap<SlotKey, Arc<Slot>>>,
    /// What is known of each key (configuration, key id) across its slots.
    keys: Mutex<HashMap<(KeyConfigId, String), KeyFlags>>,
    listeners: RwLock<Vec<KeyListener>>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("config", &self.config)
            .field("keys", &self.slots.lock().map(|s| s.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

/// Uniformly between half and all of `window`.
fn jittered(window: Duration) -> Duration {
    let half = window / 2;
    half + rand::rng().random_range(Duration::ZERO..=window - half)
}

/// What a failure says about its key.
enum Verdict {
    /// Disabled, revoked or deleted.
    Gone,
    /// Permission or authentication refused.
    Refused,
    /// Outage, network, timeout.
    Unreachable,
    /// Nothing about the key (throttling, a bad record, a bad request).
    Neutral,
}

fn verdict(kind: ErrorKind, is_wrap: bool) -> Verdict {
    match kind {
        ErrorKind::KeyRevoked => Verdict::Gone,
        // A key in use that a wrap cannot find was deleted (validation found it once).
        ErrorKind::NotFound if is_wrap => Verdict::Gone,
        ErrorKind::PermissionDenied | ErrorKind::Unauthenticated => Verdict::Refused,
        ErrorKind::Transient => Verdict::Unreachable,
        // The caller's deadline ran out: its budget, not evidence about the key (a hang is cut
        // off by the per-attempt timeout first, as a transient failure).
        ErrorKind::DeadlineExceeded => Verdict::Neutral,
        _ => Verdict::Neutral,
    }
}

impl HealthRegistry {
    /// A registry whose probes last at most `probe_lease` (the operations' deadline).
    pub(crate) fn new(config: BreakerConfig, probe_lease: Duration) -> Self {
        Self {
            config,
            probe_lease,
            slots: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            listeners: RwLock::new(Vec::new()),
        }
    }

    /// Adds a listener for key events.
    pub(crate) fn subscribe(&self, listener: KeyListener) {
        if let Ok(mut listeners) = self.listeners.write() {
            listeners.push(listener);
        }
    }

    /// The slot of a key's wraps (`key_version` empty) or of its unwraps of one version, made
    /// on first use.
    pub(crate) fn slot(
        &self,
        key_config: &KeyConfigId,
        key_id: &str,
        key_version: &str,
        provider: Provider,
    ) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry((
                key_config.clone(),
                key_id.to_owned(),
                key_version.to_owned(),
            ))
            .or_insert_with(|| {
                Arc::new(Slot {
                    key_config: key_config.clone(),
                    key_id: key_id.to_owned(),
                    key_version: key_version.to_owned(),
                    provider,
                    state: Mutex::new(SlotState {
                        state: KeyState::Healthy,
                        since: SystemTime::now(),
                        retry_at: Instant::now(),
                        probe_out: None,
                        generation: 0,
                        transient_in_a_row: 0,
                        ever_ok: false,
                        last_success: None,
                        last_error: None,
                        degraded: false,
                    }),
                })
            })
            .clone()
    }

    /// The state of a key, if it was ever called.
    #[cfg(test)]
    pub(crate) fn state_of(
        &self,
        key_config: &KeyConfigId,
        key_id: &str,
        key_version: &str,
    ) -> Option<KeyState> {
        let slots = self.slots.lock().ok()?;
        let slot = slots.get(&(
            key_config.clone(),
            key_id.to_owned(),
            key_version.to_owned(),
        ))?;
        Some(slot.lock().state)
    }

    /// Every key's health, sorted by configuration and key id.
    pub(crate) fn snapshot(&self) -> Vec<KeyHealth> {
        let slots: Vec<Arc<Slot>> = self
            .slots
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        let mut out: Vec<KeyHealth> = slots.iter().map(|s| s.health()).collect();
        out.sort_by(|a, b| {
            (&a.key_config, &a.key_id, &a.key_version).cmp(&(
                &b.key_config,
                &b.key_id,
                &b.key_version,
            ))
        });
        out
    }

    /// Counts keys per state (for the breaker gauge).
    pub(crate) fn counts(&self) -> [(KeyState, usize); 4] {
        let mut counts = [
            (KeyState::Healthy, 0),
            (KeyState::Revoked, 0),
            (KeyState::Denied, 0),
            (KeyState::Unreachable, 0),
        ];
        if let Ok(slots) = self.slots.lock() {
            for slot in slots.values() {
                let state = slot.lock().state;
                if let Some(c) = counts.iter_mut().find(|(s, _)| *s == state) {
                    c.1 += 1;
                }
            }
        }
        counts
    }

    /// Lets a call through, or answers it from the breaker.
    pub(crate) fn admit(&self, slot: &Slot) -> Result<Admission> {
        let mut s = slot.lock();
        let generation = s.generation;
        if s.state == KeyState::Healthy {
            return Ok(Admission {
                probe: false,
                generation,
            });
        }
        let now = Instant::now();
        let probe_free = s
            .probe_out
            .is_none_or(|since| now.saturating_duration_since(since) > self.probe_lease);
        if now >= s.retry_at && probe_free {
            s.probe_out = Some(now);
            return Ok(Admission {
                probe: true,
                generation,
            });
        }
        let wait = s.retry_at.saturating_duration_since(now);
        let (kind, last) = match &s.last_error {
            Some((e, _)) => (e.kind(), e.message().to_owned()),
            None => (ErrorKind::Transient, String::new()),
        };
        let kind = match s.state {
            KeyState::Revoked => ErrorKind::KeyRevoked,
            KeyState::Unreachable => ErrorKind::Transient,
            _ => kind,
        };
        Err(Error::new(
            kind,
            format!(
                "{} key {}{} of {} is {} (last answer: {last}); not asking the KMS again for {} ms",
                slot.provider,
                slot.key_id,
                if slot.key_version.is_empty() {
                    String::new()
                } else {
                    format!(" version {}", slot.key_version)
                },
                slot.key_config,
                s.state,
                wait.as_millis()
            ),
        )
        .failing_fast())
    }

    /// Records the outcome of an admitted call and returns it, with a deleted key's
    /// "not found" turned into [`ErrorKind::KeyRevoked`] (one kind for writers and readers).
    pub(crate) fn record<T>(
        &self,
        slot: &Slot,
        admission: Admission,
        is_wrap: bool,
        outcome: Result<T>,
    ) -> Result<T> {
        let now = SystemTime::now();
        let mut events = Vec::new();
        let outcome = {
            let mut s = slot.lock();
            if admission.probe {
                s.probe_out = None;
            }
            // An answer to a call let through before the key last changed state is history:
            // it is kept as the last success or failure, but moves nothing.
            let current = admission.generation == s.generation;
            match outcome {
                Ok(value) => {
                    if !s.ever_ok {
                        self.key_flags(slot, |k| k.worked = true);
                    }
                    s.ever_ok = true;
                    s.last_success = Some(now);
                    if current {
                        s.transient_in_a_row = 0;
                        if s.state != KeyState::Healthy {
                            events.extend(self.transition(slot, &mut s, KeyState::Healthy, None));
                        } else if std::mem::take(&mut s.degraded) {
                            events.push(slot.event(KeyEventKind::DegradedEnded, None));
                        }
                    }
                    Ok(value)
                }
                Err(e) => {
                    let e = match (e.kind(), is_wrap) {
                        (ErrorKind::NotFound, true) => Error::revoked(format!(
                            "{} (the key was deleted, or never existed)",
                            e.message()
                        )),
                        _ => e,
                    };
                    let revoked_or_denied = matches!(s.state, KeyState::Revoked | KeyState::Denied);
                    let verdict = verdict(e.kind(), is_wrap);
                    let says_something = !matches!(verdict, Verdict::Neutral);
                    let next = match verdict {
                        Verdict::Gone => {
                            s.transient_in_a_row = 0;
                            Some(KeyState::Revoked)
                        }
                        Verdict::Refused => {
                            s.transient_in_a_row = 0;
                            Some(KeyState::Denied)
                        }
                        // A revoked or refused key stays so until it answers: an outage of
                        // its KMS says nothing new about it (and must never let degraded mode
                        // serve it).
                        Verdict::Unreachable if revoked_or_denied => None,
                        Verdict::Unreachable => {
                            s.transient_in_a_row = s.transient_in_a_row.saturating_add(1);
                            (s.state == KeyState::Unreachable
                                || s.transient_in_a_row >= self.config.unreachable_after)
                                .then_some(KeyState::Unreachable)
                        }
                        Verdict::Neutral => None,
                    };
                    if !matches!(e.kind(), ErrorKind::Integrity) {
                        s.last_error = Some((e.clone(), now));
                    }
                    match next {
                        Some(state) if current => {
                            s.retry_at = Instant::now() + jittered(self.window(state));
                            if s.state != state {
                                events.extend(self.transition(
                                    slot,
                                    &mut s,
                                    state,
                                    Some(e.clone()),
                                ));
                            }
                        }
                        // A probe that found the KMS still out of reach waits out a whole
                        // window again (throttling says nothing: the retry's backoff spaces it).
                        _ if admission.probe
                            && current
                            && says_something
                            && s.state != KeyState::Healthy =>
                        {
                            s.retry_at = Instant::now() + jittered(self.window(s.state));
                        }
                        _ => {}
                    }
                    Err(e)
                }
            }
        };
        self.emit(events);
        outcome
    }

    /// A call whose caller went away before the KMS answered (cancelled, or cut off by its
    /// deadline): no answer, so nothing is learnt about the key; a probe is given back.
    /// (A call that hangs is cut off by the attempt timeout below the breaker, and counts.)
    pub(crate) fn abandoned(&self, slot: &Slot, admission: Admission) {
        if admission.probe {
            let mut s = slot.lock();
            if s.generation == admission.generation {
                s.probe_out = None;
            }
        }
    }

    /// How long a key in `state` fails fast before the next probe.
    fn window(&self, state: KeyState) -> Duration {
        match state {
            KeyState::Unreachable => self.config.probe_interval,
            _ => self.config.revoked_retry_after,
        }
    }

    /// Whether cached data keys of this key may serve past their max age now: only while it is
    /// out of reach (its last answers were outages; never revoked or refused). Marks the key
    /// degraded (an event when that starts; it ends with the next success or a revocation).
    pub(crate) fn serve_degraded(
        &self,
        key_config: &KeyConfigId,
        key_id: &str,
        key_version: &str,
    ) -> bool {
        let found = |id: &str| {
            self.slots.lock().ok().and_then(|s| {
                s.get(&(key_config.clone(), id.to_owned(), key_version.to_owned()))
                    .cloned()
            })
        };
        // Wraps of a backend that does not name its key up front are filed under "".
        let Some(slot) = found(key_id).or_else(|| found("")) else {
            return false;
        };
        // Never for a key any of whose slots is revoked or refused.
        let revoked = self
            .keys
            .lock()
            .ok()
            .and_then(|k| {
                k.get(&(key_config.clone(), key_id.to_owned()))
                    .map(|f| f.revoked)
            })
            .unwrap_or(false);
        if revoked {
            return false;
        }
        let started = {
            let mut s = slot.lock();
            // Out of reach: its breaker is open, or at least its last answers were outages.
            let out_of_reach = s.state == KeyState::Unreachable
                || (s.state == KeyState::Healthy && s.transient_in_a_row > 0);
            if !out_of_reach {
                return false;
            }
            !std::mem::replace(&mut s.degraded, true)
        };
        if started {
            tracing::warn!(key_config = %key_config, key = key_id, "degraded mode: cached data keys serve past their max age while the KMS is unreachable");
            self.emit(vec![slot.event(KeyEventKind::DegradedStarted, None)]);
        }
        true
    }

    fn transition(
        &self,
        slot: &Slot,
        s: &mut SlotState,
        to: KeyState,
        cause: Option<Error>,
    ) -> Vec<KeyEvent> {
        let from = std::mem::replace(&mut s.state, to);
        s.since = SystemTime::now();
        s.generation += 1;
        let permission_lost = cause
            .as_ref()
            .is_some_and(|e| e.kind() == ErrorKind::PermissionDenied);
        let revocation = self.key_flags(slot, |k| match to {
            KeyState::Revoked | KeyState::Denied => {
                // Once per key, however many of its versions notice; a refusal counts only
                // for a key that worked.
                let first = !std::mem::replace(&mut k.revoked, true);
                first && (to == KeyState::Revoked || (k.worked && permission_lost))
            }
            KeyState::Healthy => {
                k.revoked = false;
                false
            }
            KeyState::Unreachable => false,
        });
        match to {
            KeyState::Healthy => {
                tracing::info!(key_config = %slot.key_config, key = slot.key_id.as_str(), %from, "key answers again")
            }
            _ => {
                tracing::warn!(key_config = %slot.key_config, key = slot.key_id.as_str(), %from, %to, error = ?cause.as_ref().map(|e| e.to_string()), "key state changed")
            }
        }
        let mut events = vec![slot.event(
            KeyEventKind::StateChanged {
                from,
                to,
                revocation,
            },
            cause,
        )];
        if s.degraded && to != KeyState::Unreachable {
            s.degraded = false;
            events.push(slot.event(KeyEventKind::DegradedEnded, None));
        }
        events
    }

    fn key_flags<R>(&self, slot: &Slot, f: impl FnOnce(&mut KeyFlags) -> R) -> R {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        f(keys
            .entry((slot.key_config.clone(), slot.key_id.clone()))
            .or_default())
    }

    fn emit(&self, events: Vec<KeyEvent>) {
        if events.is_empty() {
            return;
        }
        let listeners = self.listeners.read().map(|l| l.clone()).unwrap_or_default();
        for event in &events {
            crate::telemetry::key_event(event);
            for listener in &listeners {
                listener(event);
            }
        }
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn event(&self, kind: KeyEventKind, cause: Option<Error>) -> KeyEvent {
        KeyEvent {
            key_config: self.key_config.clone(),
            key_id: self.key_id.clone(),
            key_version: self.key_version.clone(),
            kind,
            cause,
        }
    }

    fn health(&self) -> KeyHealth {
        let s = self.lock();
        KeyHealth {
            key_config: self.key_config.clone(),
            key_id: self.key_id.clone(),
            key_version: self.key_version.clone(),
            provider: self.provider,
            state: s.state,
            since: s.since,
            last_success: s.last_success,
            last_error: s.last_error.as_ref().map(|(e, at)| KeyFailure {
                kind: e.kind(),
                message: e.message().to_owned(),
                at: *at,
            }),
            degraded: s.degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> HealthRegistry {
        HealthRegistry::new(
            BreakerConfig::default()
                .with_revoked_retry_after(Duration::from_millis(100))
                .with_probe_interval(Duration::from_millis(100)),
            Duration::from_secs(1),
        )
    }

    fn events(r: &HealthRegistry) -> Arc<Mutex<Vec<KeyEventKind>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        r.subscribe(Arc::new(move |e: &KeyEvent| {
            s.lock().unwrap().push(e.kind.clone())
        }));
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_revoked_key_fails_fast_then_one_probe_restores_it() {
        let r = registry();
        let seen = events(&r);
        let k = KeyConfigId::new("k").unwrap();
        let slot = r.slot(&k, "key-1", "1", Provider::Local);
        let a = r.admit(&slot).unwrap();
        r.record(&slot, a, false, Ok(())).unwrap();
        for _ in 0..3 {
            let a = r.admit(&slot).unwrap();
            let _ = r.record::<()>(&slot, a, false, Err(Error::revoked("disabled")));
            // Only the first failure was a KMS call; the rest fail fast.
            let err = r.admit(&slot).unwrap_err();
            assert!(
                err.is_fail_fast() && err.kind() == ErrorKind::KeyRevoked,
                "{err}"
            );
            tokio::time::advance(Duration::from_millis(101)).await;
        }
        let probe = r.admit(&slot).unwrap();
        assert!(probe.probe);
        assert!(
            r.admit(&slot).unwrap_err().is_fail_fast(),
            "one probe at a time"
        );
        r.record(&slot, probe, false, Ok(())).unwrap();
        assert!(!r.admit(&slot).unwrap().probe);
        let seen = seen.lock().unwrap();
        assert_eq!(
            *seen,
            [
                KeyEventKind::StateChanged {
                    from: KeyState::Healthy,
                    to: KeyState::Revoked,
                    revocation: true
                },
                KeyEventKind::StateChanged {
                    from: KeyState::Revoked,
                    to: KeyState::Healthy,
                    revocation: false
                },
            ],
            "transitions, not failing calls"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_open_the_breaker_after_the_threshold() {
        let r = registry();
        let k = KeyConfigId::new("k").unwrap();
        let slot = r.slot(&k, "key-1", "", Provider::Aws);
        for _ in 0..5 {
            let a = r.admit(&slot).unwrap();
            let _ = r.record::<()>(&slot, a, true, Err(Error::transient("503")));
        }
        assert_eq!(r.state_of(&k, "key-1", ""), Some(KeyState::Unreachable));
        assert!(r.serve_degraded(&k, "key-1", ""));
        let err = r.admit(&slot).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(err.is_fail_fast());
        // A wrap's "not found" is a deleted key: revoked, and degraded mode ends.
        tokio::time::advance(Duration::from_millis(101)).await;
        let a = r.admit(&slot).unwrap();
        let err = r
            .record::<()>(&slot, a, true, Err(Error::not_found("no key")))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked);
        assert!(
            !r.serve_degraded(&k, "key-1", ""),
            "never after a revocation"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_to_calls_let_through_before_a_change_change_nothing() {
        let r = registry();
        let seen = events(&r);
        let k = KeyConfigId::new("k").unwrap();
        let slot = r.slot(&k, "key-1", "", Provider::Aws);
        let old = r.admit(&slot).unwrap();
        let revoking = r.admit(&slot).unwrap();
        let _ = r.record::<()>(&slot, revoking, true, Err(Error::revoked("disabled")));
        // The older call succeeds after the revocation: the key stays revoked, counted once.
        r.record(&slot, old, true, Ok(())).unwrap();
        assert_eq!(r.state_of(&k, "key-1", ""), Some(KeyState::Revoked));
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_waits_a_whole_window_and_a_vanished_probe_is_replaced() {
        let r = registry();
        let k = KeyConfigId::new("k").unwrap();
        let slot = r.slot(&k, "key-1", "", Provider::Aws);
        let a = r.admit(&slot).unwrap();
        let _ = r.record::<()>(&slot, a, true, Err(Error::revoked("disabled")));
        tokio::time::advance(Duration::from_millis(101)).await;
        // A probe that finds the KMS out of reach (of a revoked key: it stays revoked).
        let probe = r.admit(&slot).unwrap();
        let _ = r.record::<()>(&slot, probe, true, Err(Error::transient("503")));
        assert!(
            r.admit(&slot).unwrap_err().is_fail_fast(),
            "the window is rearmed"
        );
        tokio::time::advance(Duration::from_millis(101)).await;
        // A probe whose caller vanishes without an answer: given back at once.
        let probe = r.admit(&slot).unwrap();
        r.abandoned(&slot, probe);
        assert!(r.admit(&slot).unwrap().probe);
        // One that is never given back is replaced after the lease (1 s here).
        assert!(r.admit(&slot).unwrap_err().is_fail_fast());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert!(r.admit(&slot).unwrap().probe);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_of_a_revoked_key_keeps_it_revoked_and_never_degraded() {
        let r = registry();
        let k = KeyConfigId::new("k").unwrap();
        let slot = r.slot(&k, "key-1", "", Provider::Aws);
        let a = r.admit(&slot).unwrap();
        let _ = r.record::<()>(&slot, a, true, Err(Error::revoked("disabled")));
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(101)).await;
            let probe = r.admit(&slot).unwrap();
            let _ = r.record::<()>(&slot, probe, true, Err(Error::transient("503")));
        }
        assert_eq!(r.state_of(&k, "key-1", ""), Some(KeyState::Revoked));
        assert!(!r.serve_degraded(&k, "key-1", ""));
        // Nor does another version's outage degrade a key one of whose slots is revoked.
        let other = r.slot(&k, "key-1", "7", Provider::Aws);
        for _ in 0..5 {
            let a = r.admit(&other).unwrap();
            let _ = r.record::<()>(&other, a, false, Err(Error::transient("503")));
        }
        assert!(!r.serve_degraded(&k, "key-1", "7"));
    }
}
