//! The decryption side: unwrapped DEKs by id, with an age limit.

use std::sync::Arc;
use std::sync::atomic::Ordering::{self, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use coarsetime::Instant;

use super::{CacheConfig, LoadedDek, SnapshotMap};
use crate::ids::{CompartmentId, DekId};

/// Where a DEK being loaded comes from; part of the single-flight key so that envelopes with
/// different headers for the same DEK id never share a result.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DekSource {
    /// From a self-contained header with this SHA-256.
    Inline([u8; 32]),
    /// From the DEK store, for this compartment.
    Stored(CompartmentId),
}

/// An unwrapped DEK in the decryption cache.
pub(crate) struct OpenDek {
    pub(crate) dek: Arc<LoadedDek>,
    born: Instant,
    /// An [`Instant`] as `u64`; only degraded mode moves it.
    expires_at: AtomicU64,
    refresh_at: Instant,
    refresh_started: AtomicBool,
    touched: super::TouchBit,
}

impl super::Touch for Arc<OpenDek> {
    #[inline]
    fn touch(&self) {
        self.touched.touch();
    }

    fn untouch(&self) -> bool {
        self.touched.untouch()
    }
}

impl OpenDek {
    pub(crate) fn new(dek: Arc<LoadedDek>, now: Instant, limits: &DecryptLimits) -> Self {
        Self {
            dek,
            born: now,
            expires_at: AtomicU64::new((now + limits.max_age.into()).as_u64()),
            refresh_at: now + limits.refresh_age.into(),
            refresh_started: AtomicBool::new(false),
            touched: super::TouchBit::default(),
        }
    }

    #[inline]
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now.as_u64() < self.expires_at.load(Relaxed)
    }

    /// When it was unwrapped.
    pub(crate) fn born(&self) -> Instant {
        self.born
    }

    /// Degraded mode: lets it serve until `until` (never shortens its life).
    pub(crate) fn extend_life(&self, until: Instant) {
        self.expires_at.fetch_max(until.as_u64(), Relaxed);
    }

    #[inline]
    pub(crate) fn refresh_due(&self, now: Instant) -> bool {
        now >= self.refresh_at && !self.refresh_started.load(Relaxed)
    }

    pub(crate) fn claim_refresh(&self) -> bool {
        !self.refresh_started.swap(true, Relaxed)
    }

    pub(crate) fn release_refresh(&self) {
        self.refresh_started.store(false, Relaxed);
    }
}

/// Age limits of the decryption side.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DecryptLimits {
    max_age: Duration,
    refresh_age: Duration,
}

/// DEK id -> unwrapped DEK, bounded in entries.
pub(crate) struct DecryptCache {
    pub(crate) map: SnapshotMap<DekId, Arc<OpenDek>>,
    pub(crate) limits: DecryptLimits,
    /// Bumped by every [`DecryptCache::forget`]: a DEK unwrapped by a flight that began before
    /// one is not cached, so a purge or eviction is never undone by a fill it raced with.
    epoch: AtomicU64,
}

impl DecryptCache {
    pub(crate) fn new(config: &CacheConfig, evictions: Arc<AtomicU64>) -> Self {
        Self {
            map: SnapshotMap::new(config.decrypt_capacity, evictions),
            limits: DecryptLimits {
                max_age: config.decrypt_max_age,
                refresh_age: config.decrypt_max_age.mul_f64(config.refresh_fraction),
            },
            epoch: AtomicU64::new(0),
        }
    }

    /// Forgets every DEK for which `forget` says so, and every fill under way.
    pub(crate) fn forget(&self, forget: impl Fn(&OpenDek) -> bool) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.map.retain(|_, open| !forget(open));
    }

    /// The epoch a fill begins in, for [`DecryptCache::insert_since`].
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches `open` unless a [`DecryptCache::forget`] happened since `epoch`; whether it did.
    pub(crate) fn insert_since(&self, epoch: u64, id: DekId, open: &Arc<OpenDek>) -> bool {
        if self.epoch() != epoch {
            return false;
        }
        self.map.insert(id, open.clone());
        // A forget between the check and the insert may have missed it: take it out again.
        if self.epoch() != epoch {
            self.map.remove_if(&id, |cur| Arc::ptr_eq(cur, open));
            return false;
        }
        true
    }

    /// DEKs cached.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
