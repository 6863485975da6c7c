//! A bounded concurrent map built for a read-mostly hot path.
//!
//! Each of 64 shards is an immutable `HashMap` behind an `ArcSwap`: a read is an `ArcSwap` load
//! (no lock, no reference-count traffic) and a hash lookup, and the value is used in place.
//! A write (cache miss, refresh, purge) copies one shard under that shard's mutex. Misses are
//! rare (one per DEK per compartment per max age), so copying 1/64 of the map then is cheap.
//!
//! The capacity bound evicts with a second-chance (CLOCK-like) policy: values carry a
//! "touched" bit that reads set; eviction takes an untouched entry and clears the bits it
//! passes over.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use foldhash::fast::RandomState;

/// At most this many shards, and at least 32 entries per shard.
const MAX_SHARDS: usize = 64;

/// The "recently read" bit a cached value carries for the eviction scan.
#[derive(Debug, Default)]
pub(crate) struct TouchBit(std::sync::atomic::AtomicBool);

impl TouchBit {
    /// Sets the bit; reads it first so hot entries do not write their cache line every time.
    #[inline]
    pub(crate) fn touch(&self) {
        if !self.0.load(Relaxed) {
            self.0.store(true, Relaxed);
        }
    }

    /// Clears the bit, returning whether it was set.
    pub(crate) fn untouch(&self) -> bool {
        self.0.swap(false, Relaxed)
    }
}

/// A value that records whether it was read since the last eviction scan.
pub(crate) trait Touch {
    /// Marks it read.
    fn touch(&self);
    /// Clears the mark, returning whether it was set.
    fn untouch(&self) -> bool;
}

type Shard<K, V> = HashMap<K, V, RandomState>;

/// One shard: the current snapshot and the lock writers take to replace it.
type ShardCell<K, V> = (ArcSwap<Shard<K, V>>, Mutex<()>);

pub(crate) struct SnapshotMap<K, V> {
    shards: Box<[ShardCell<K, V>]>,
    shard_mask: usize,
    hasher: RandomState,
    shard_capacity: usize,
    evictions: Arc<AtomicU64>,
}

impl<K: Hash + Eq + Clone, V: Clone + Touch> SnapshotMap<K, V> {
    /// A map of at most `capacity` entries.
    pub(crate) fn new(capacity: usize, evictions: Arc<AtomicU64>) -> Self {
        let hasher = RandomState::default();
        // The largest power of two with at least 32 entries per shard, at most MAX_SHARDS.
        let wanted = (capacity / 32).clamp(1, MAX_SHARDS);
        let shards = 1usize << (usize::BITS - 1 - wanted.leading_zeros());
        Self {
            shards: (0..shards)
                .map(|_| {
                    (
                        ArcSwap::from_pointee(HashMap::with_hasher(hasher.clone())),
                        Mutex::new(()),
                    )
                })
                .collect(),
            shard_mask: shards - 1,
            hasher,
            shard_capacity: (capacity / shards).max(1),
            evictions,
        }
    }

    #[inline]
    fn shard(&self, key: &K) -> &ShardCell<K, V> {
        let h = self.hasher.hash_one(key);
        &self.shards[(h >> 32) as usize & self.shard_mask]
    }

    /// Runs `f` on the value of `key`, in place. The hot path.
    #[inline]
    pub(crate) fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let shard = self.shard(key).0.load();
        let value = shard.get(key)?;
        value.touch();
        Some(f(value))
    }

    /// A clone of the value of `key`.
    pub(crate) fn get(&self, key: &K) -> Option<V> {
        self.with(key, V::clone)
    }

    /// Inserts or replaces, evicting an entry if the shard is full.
    pub(crate) fn insert(&self, key: K, value: V) {
        self.update(&key, |map| {
            if !map.contains_key(&key) && map.len() >= self.shard_capacity {
                self.evict_one(map);
            }
            map.insert(key.clone(), value);
        });
    }

    /// Removes `key` if `pred` holds for its value.
    pub(crate) fn remove_if(&self, key: &K, pred: impl FnOnce(&V) -> bool) {
        self.update(key, |map| {
            if map.get(key).is_some_and(pred) {
                map.remove(key);
            }
        });
    }

    #[cfg(test)]
    /// Removes `key`.
    pub(crate) fn remove(&self, key: &K) {
        self.remove_if(key, |_| true);
    }

    /// Keeps only the entries for which `keep` holds.
    pub(crate) fn retain(&self, keep: impl Fn(&K, &V) -> bool) {
        for (cell, lock) in self.shards.iter() {
            let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let current = cell.load();
            if current.iter().all(|(k, v)| keep(k, v)) {
                continue;
            }
            let mut map = Shard::clone(&current);
            map.retain(|k, v| keep(k, v));
            cell.store(Arc::new(map));
        }
    }

    /// Visits every entry.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for (cell, _) in self.shards.iter() {
            cell.load().iter().for_each(|(k, v)| f(k, v));
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|(cell, _)| cell.load().len()).sum()
    }

    fn update(&self, key: &K, change: impl FnOnce(&mut Shard<K, V>)) {
        let (cell, lock) = self.shard(key);
        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = Shard::clone(&cell.load());
        change(&mut map);
        cell.store(Arc::new(map));
    }

    fn evict_one(&self, map: &mut Shard<K, V>) {
        let victim = map
            .iter()
            .find(|(_, v)| !v.untouch())
            .or_else(|| map.iter().next())
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            map.remove(&k);
            self.evictions.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct V(Arc<TouchBit>);
    impl Touch for V {
        fn touch(&self) {
            self.0.touch();
        }
        fn untouch(&self) -> bool {
            self.0.untouch()
        }
    }

    #[test]
    fn bounded_and_keeps_hot_entries() {
        let ev = Arc::new(AtomicU64::new(0));
        let m = SnapshotMap::<u64, V>::new(64 * 4, ev.clone());
        let hot = u64::MAX;
        m.insert(hot, V::default());
        for k in 0..10_000u64 {
            assert!(
                m.with(&hot, |_| ()).is_some(),
                "the hot entry was evicted at {k}"
            );
            m.insert(k, V::default());
        }
        assert!(m.len() <= 64 * 4);
        for capacity in [1usize, 50, 100, 1000, 10_000, 12_345] {
            let m = SnapshotMap::<u64, V>::new(capacity, Arc::default());
            (0..3 * capacity as u64).for_each(|k| m.insert(k, V::default()));
            assert!(
                m.len() <= capacity && m.len() >= capacity * 9 / 10,
                "{capacity}: {}",
                m.len()
            );
        }
        assert_eq!(ev.load(Relaxed) as usize, 10_001 - m.len());
        m.retain(|k, _| k % 3 != 0);
        assert!((0..10_000u64).all(|k| k % 3 != 0 || m.get(&k).is_none()));
        let some = (0..10_000u64).find(|k| m.get(k).is_some()).unwrap();
        m.remove(&some);
        assert!(m.get(&some).is_none());
    }
}
