//! Data keys being made, so a purge or a key's retirement that lands meanwhile throws away only
//! the creations it concerns (the purged compartment, or compartments under the retired key),
//! never another tenant's.
//!
//! A creation registers before it resolves its compartment's key, notes the key configuration
//! once resolved, resolves again, and caches its DEK only if nothing invalidated it meanwhile,
//! checked under the same lock a purge or retirement takes. Why resolving twice is enough: a
//! change of the compartment's key (attach, rotation, deletion) is written to the store before
//! the cache is told. If the second resolve read the store before that write, the retirement
//! that follows the write comes after the key configuration was noted and invalidates the
//! creation; if it read the store after, it saw the change.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use crate::ids::{CompartmentId, KeyConfigId};

struct Creation {
    id: u64,
    key_config: Option<KeyConfigId>,
    invalidated: bool,
}

/// The creations under way, by compartment (single-flight makes it one per compartment).
#[derive(Default)]
pub(super) struct Creations {
    table: Mutex<HashMap<CompartmentId, Creation>>,
    next_id: AtomicU64,
}

/// One creation's registration; dropping it unregisters.
pub(super) struct Ticket<'a> {
    creations: &'a Creations,
    compartment: CompartmentId,
    id: u64,
}

/// The lock purges, retirements and a creation's final check take.
pub(super) struct Locked<'a>(MutexGuard<'a, HashMap<CompartmentId, Creation>>);

impl Creations {
    fn lock(&self) -> MutexGuard<'_, HashMap<CompartmentId, Creation>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a creation for `compartment`, before its key is resolved.
    pub(super) fn begin(&self, compartment: &CompartmentId) -> Ticket<'_> {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.lock().insert(
            compartment.clone(),
            Creation {
                id,
                key_config: None,
                invalidated: false,
            },
        );
        Ticket {
            creations: self,
            compartment: compartment.clone(),
            id,
        }
    }

    /// Takes the lock, to change the cache while no creation can finish.
    pub(super) fn lock_all(&self) -> Locked<'_> {
        Locked(self.lock())
    }
}

impl Locked<'_> {
    /// Invalidates the creation of `compartment`, if one is under way.
    pub(super) fn invalidate_compartment(&mut self, compartment: &CompartmentId) {
        if let Some(c) = self.0.get_mut(compartment) {
            c.invalidated = true;
        }
    }

    /// Invalidates every creation under way.
    pub(super) fn invalidate_all(&mut self) {
        for c in self.0.values_mut() {
            c.invalidated = true;
        }
    }

    /// Invalidates every creation under `key_config`.
    pub(super) fn invalidate_key_config(&mut self, key_config: &KeyConfigId) {
        for c in self.0.values_mut() {
            if c.key_config.as_ref() == Some(key_config) {
                c.invalidated = true;
            }
        }
    }
}

impl Ticket<'_> {
    /// Notes the key configuration the compartment resolved to.
    pub(super) fn resolved(&self, key_config: &KeyConfigId) {
        if let Some(c) = self.creations.lock().get_mut(&self.compartment)
            && c.id == self.id
        {
            c.key_config = Some(key_config.clone());
        }
    }

    /// Runs `cache` under the lock if nothing invalidated this creation; false otherwise.
    pub(super) fn finish(&self, cache: impl FnOnce()) -> bool {
        let table = self.creations.lock();
        let valid = table
            .get(&self.compartment)
            .is_some_and(|c| c.id == self.id && !c.invalidated);
        if valid {
            cache();
        }
        valid
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut table = self.creations.lock();
        if table
            .get(&self.compartment)
            .is_some_and(|c| c.id == self.id)
        {
            table.remove(&self.compartment);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_creations_concerned_are_invalidated() {
        let creations = Creations::default();
        let (a, b) = (
            CompartmentId::new("a").unwrap(),
            CompartmentId::new("b").unwrap(),
        );
        let (ka, kb) = (
            KeyConfigId::new("ka").unwrap(),
            KeyConfigId::new("kb").unwrap(),
        );
        let ta = creations.begin(&a);
        let tb = creations.begin(&b);
        ta.resolved(&ka);
        tb.resolved(&kb);
        let mut locked = creations.lock_all();
        locked.invalidate_key_config(&ka);
        locked.invalidate_compartment(&CompartmentId::new("c").unwrap());
        drop(locked);
        assert!(!ta.finish(|| {}));
        assert!(tb.finish(|| {}));
        drop((ta, tb));
        assert!(creations.lock().is_empty());
    }
}
