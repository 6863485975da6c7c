//! The registry of key slots: each key's breaker state, the admission of calls and probes, the
//! verdict on each answer, and the events it emits.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rand::RngExt;
use tokio::time::Instant;

use super::{BreakerConfig, KeyEvent, KeyEventKind, KeyFailure, KeyHealth, KeyListener, KeyState};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::KeyConfigId;
use crate::kms::Provider;

/// What a call on a key is to the breaker: an ordinary call or the one probe, and the key's
/// state generation when it was let through (an answer to a call let through before the key
/// changed state does not change it back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Admission {
    pub(super) probe: bool,
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
