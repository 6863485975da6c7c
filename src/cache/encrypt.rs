//! The encryption side: one active DEK per compartment, with usage limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use coarsetime::Instant;

use super::{CacheConfig, LoadedDek};
use crate::ids::CompartmentId;

/// Limits in the form the hot path checks them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EncryptLimits {
    max_age: Duration,
    refresh_age: Duration,
    max_messages: u64,
    refresh_messages: u64,
    max_bytes: u64,
    refresh_bytes: u64,
}

impl EncryptLimits {
    /// The longest plaintext one streamed object may have under a DEK.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// How old a DEK gets before a replacement is prepared.
    pub(crate) fn refresh_age(&self) -> Duration {
        self.refresh_age
    }

    fn new(c: &CacheConfig) -> Self {
        let f = c.refresh_fraction;
        // At 1 a DEK is used up before any refresh would be due: refresh-ahead is off.
        let frac = |n: u64| {
            if f >= 1.0 {
                u64::MAX
            } else {
                ((n as f64 * f) as u64).clamp(1, n)
            }
        };
        Self {
            max_age: c.encrypt_max_age,
            refresh_age: c.encrypt_max_age.mul_f64(f),
            max_messages: c.encrypt_max_messages,
            refresh_messages: frac(c.encrypt_max_messages),
            max_bytes: c.encrypt_max_bytes,
            refresh_bytes: frac(c.encrypt_max_bytes),
        }
    }
}

/// What a caller may do with the active DEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reservation {
    /// Use it.
    Granted,
    /// Use it, and a replacement should be prepared in the background.
    GrantedRefreshDue,
    /// It reached a limit: do not use it.
    Exhausted,
}

/// The `expires_at` of a retired DEK: in the past of every clock reading, and final.
const RETIRED: u64 = 0;

/// The DEK a compartment's new data goes under, with its usage so far.
pub(crate) struct ActiveDek {
    pub(crate) dek: Arc<LoadedDek>,
    /// Where the messages granted under this DEK are added when it is dropped (for `Stats`).
    retired: Arc<AtomicU64>,
    born: Instant,
    /// An [`Instant`] as `u64`; only degraded mode moves it.
    expires_at: AtomicU64,
    refresh_at: Instant,
    messages: AtomicU64,
    bytes: AtomicU64,
    refresh_started: AtomicBool,
    touched: super::TouchBit,
}

impl super::Touch for Arc<ActiveDek> {
    #[inline]
    fn touch(&self) {
        self.touched.touch();
    }

    fn untouch(&self) -> bool {
        self.touched.untouch()
    }
}

impl ActiveDek {
    pub(crate) fn new(
        dek: Arc<LoadedDek>,
        now: Instant,
        limits: &EncryptLimits,
        retired: Arc<AtomicU64>,
    ) -> Self {
        Self {
            dek,
            retired,
            born: now,
            expires_at: AtomicU64::new((now + limits.max_age.into()).as_u64()),
            refresh_at: now + limits.refresh_age.into(),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            refresh_started: AtomicBool::new(false),
            touched: super::TouchBit::default(),
        }
    }

    /// Counts one message of `len` bytes against the limits. Never grants more than
    /// `max_messages` messages, so the 2^32 random-nonce ceiling holds under any concurrency:
    /// a refused attempt takes back only its own increment, so the count never falls below the
    /// number of messages granted. Afterwards `messages` is exactly the number granted.
    #[inline]
    pub(crate) fn reserve(&self, len: u64, now: Instant, limits: &EncryptLimits) -> Reservation {
        if now.as_u64() >= self.expires_at.load(Relaxed) {
            return Reservation::Exhausted;
        }
        let before = self.messages.fetch_add(1, Relaxed);
        if before >= limits.max_messages {
            self.messages.fetch_sub(1, Relaxed);
            return Reservation::Exhausted;
        }
        let bytes_before = self.bytes.fetch_add(len, Relaxed);
        if bytes_before >= limits.max_bytes {
            self.bytes.fetch_sub(len, Relaxed);
            self.messages.fetch_sub(1, Relaxed);
            return Reservation::Exhausted;
        }
        if before + 1 >= limits.refresh_messages
            || bytes_before.saturating_add(len) >= limits.refresh_bytes
            || now >= self.refresh_at
        {
            Reservation::GrantedRefreshDue
        } else {
            Reservation::Granted
        }
    }

    /// Whether it can still take messages (a cheap check without reserving).
    pub(crate) fn is_usable(&self, now: Instant, limits: &EncryptLimits) -> bool {
        now.as_u64() < self.expires_at.load(Relaxed) && self.within_usage_limits(limits)
    }

    /// Whether it is below its message and byte limits (whatever its age).
    pub(crate) fn within_usage_limits(&self, limits: &EncryptLimits) -> bool {
        self.messages.load(Relaxed) < limits.max_messages
            && self.bytes.load(Relaxed) < limits.max_bytes
    }

    /// When it was made.
    pub(crate) fn born(&self) -> Instant {
        self.born
    }

    /// Ends its life now and for good: every later reservation is refused, and degraded mode
    /// cannot extend it (it was retired while callers or leases may still hold it).
    pub(crate) fn expire(&self) {
        self.expires_at.store(RETIRED, Relaxed);
    }

    /// Degraded mode: lets it serve until `until` (never shortens its life, never revives a
    /// retired DEK).
    pub(crate) fn extend_life(&self, until: Instant) {
        let _ = self.expires_at.fetch_update(Relaxed, Relaxed, |at| {
            (at != RETIRED).then(|| at.max(until.as_u64()))
        });
    }

    /// Counts `len` more bytes of a streamed object whose one message was reserved when it
    /// started. False once the DEK is retired: the stream must stop. (The byte limit is not
    /// checked here: an object in progress is never cut by other traffic; the DEK takes no
    /// new message once it is over the limit.)
    pub(crate) fn add_stream_bytes(&self, len: u64) -> bool {
        if self.expires_at.load(Relaxed) == RETIRED {
            return false;
        }
        self.bytes.fetch_add(len, Relaxed);
        true
    }

    /// Messages granted so far.
    pub(crate) fn messages(&self) -> u64 {
        self.messages.load(Relaxed)
    }

    /// Claims the one background refresh of this DEK; false if it is claimed already.
    #[inline]
    pub(crate) fn claim_refresh(&self) -> bool {
        !self.refresh_started.load(Relaxed) && !self.refresh_started.swap(true, Relaxed)
    }

    /// Gives the claim back after a failed refresh so a later caller can try again.
    pub(crate) fn release_refresh(&self) {
        self.refresh_started.store(false, Relaxed);
    }
}

impl Drop for ActiveDek {
    fn drop(&mut self) {
        self.retired.fetch_add(self.messages.load(Relaxed), Relaxed);
    }
}

/// Compartment -> active DEK, bounded in entries.
pub(crate) struct EncryptCache {
    pub(crate) map: super::SnapshotMap<CompartmentId, Arc<ActiveDek>>,
    pub(crate) limits: EncryptLimits,
}

impl EncryptCache {
    pub(crate) fn new(config: &CacheConfig, evictions: Arc<AtomicU64>) -> Self {
        Self {
            map: super::SnapshotMap::new(config.encrypt_capacity, evictions),
            limits: EncryptLimits::new(config),
        }
    }

    /// Forgets the DEK of `compartment` and expires it for whoever still holds it.
    pub(crate) fn purge(&self, compartment: &CompartmentId) {
        self.map.remove_if(compartment, |active| {
            active.expire();
            true
        });
    }

    /// Forgets (and expires) every DEK for which `retire` says so.
    pub(crate) fn retire(&self, retire: impl Fn(&ActiveDek) -> bool) {
        self.map.retain(|_, active| {
            let gone = retire(active);
            if gone {
                active.expire();
            }
            !gone
        });
    }

    /// Compartments with a cached DEK.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_messages: u64, max_bytes: u64) -> EncryptLimits {
        EncryptLimits::new(&CacheConfig {
            encrypt_max_messages: max_messages,
            encrypt_max_bytes: max_bytes,
            ..CacheConfig::default()
        })
    }

    fn dek() -> Arc<LoadedDek> {
        crate::internal::test_loaded_dek()
    }

    #[test]
    fn message_limit_is_never_exceeded() {
        let l = limits(4, u64::MAX);
        let now = Instant::now();
        let a = ActiveDek::new(dek(), now, &l, Arc::default());
        let granted = (0..10)
            .filter(|_| a.reserve(1, now, &l) != Reservation::Exhausted)
            .count();
        assert_eq!(granted, 4);
        assert!(!a.is_usable(now, &l));
        assert_eq!(a.messages(), 4, "refused attempts are not counted");
        let retired = Arc::new(AtomicU64::new(0));
        drop(ActiveDek::new(dek(), now, &l, retired.clone()));
        let b = ActiveDek::new(dek(), now, &l, retired.clone());
        (0..3).for_each(|_| assert_ne!(b.reserve(1, now, &l), Reservation::Exhausted));
        drop(b);
        assert_eq!(retired.load(Relaxed), 3);
    }

    #[test]
    fn a_retired_dek_stays_retired_even_in_degraded_mode() {
        let l = limits(100, u64::MAX);
        let now = Instant::now();
        let a = ActiveDek::new(dek(), now, &l, Arc::default());
        assert_eq!(a.reserve(1, now, &l), Reservation::Granted);
        a.expire();
        assert_eq!(a.reserve(1, now, &l), Reservation::Exhausted);
        a.extend_life(now + Duration::from_secs(60).into());
        assert_eq!(
            a.reserve(1, now, &l),
            Reservation::Exhausted,
            "revived by extend_life"
        );
        assert!(!a.is_usable(now, &l));
    }

    #[test]
    fn refresh_is_due_at_three_quarters() {
        let l = limits(100, u64::MAX);
        let now = Instant::now();
        let a = ActiveDek::new(dek(), now, &l, Arc::default());
        let first_due = (1..=100)
            .find(|_| a.reserve(1, now, &l) == Reservation::GrantedRefreshDue)
            .unwrap();
        assert_eq!(first_due, 75);
        assert!(a.claim_refresh());
        assert!(!a.claim_refresh());
        a.release_refresh();
        assert!(a.claim_refresh());
    }

    #[test]
    fn byte_limit_allows_one_oversized_message_then_retires() {
        let l = limits(u64::MAX >> 1, 1000);
        let now = Instant::now();
        let a = ActiveDek::new(dek(), now, &l, Arc::default());
        assert_ne!(a.reserve(5000, now, &l), Reservation::Exhausted);
        assert_eq!(a.reserve(1, now, &l), Reservation::Exhausted);
    }

    #[test]
    fn a_refresh_fraction_of_one_turns_refresh_ahead_off() {
        let l = EncryptLimits::new(&CacheConfig {
            encrypt_max_messages: 5,
            refresh_fraction: 1.0,
            ..CacheConfig::default()
        });
        let now = Instant::now();
        let a = ActiveDek::new(dek(), now, &l, Arc::default());
        let later = now + Duration::from_secs(299).into();
        for _ in 0..5 {
            assert_eq!(a.reserve(1, later, &l), Reservation::Granted);
        }
        assert_eq!(a.reserve(1, later, &l), Reservation::Exhausted);
    }

    #[test]
    fn age_limit_retires() {
        let l = limits(100, u64::MAX);
        let now = Instant::now();
        let a = ActiveDek::new(dek(), now, &l, Arc::default());
        let later = now + CacheConfig::default().encrypt_max_age.into();
        assert_eq!(a.reserve(1, later, &l), Reservation::Exhausted);
        assert_eq!(
            a.reserve(1, now + Duration::from_secs(230).into(), &l),
            Reservation::GrantedRefreshDue
        );
    }
}
