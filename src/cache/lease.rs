//! A lease on a compartment's encryption DEK: what a writer holds across `.await`s when it does
//! not know up front how many messages or bytes it will seal (a stream). Each part reserves
//! its share of the DEK's budget as it goes, against the same limits single messages meet, so
//! the 2^32 random-nonce ceiling and the byte limit hold for leases and messages together.

use std::sync::Arc;

use coarsetime::Instant;

use super::encrypt::EncryptLimits;
use super::{ActiveDek, LoadedDek, Reservation};

/// A compartment's encryption DEK held by one writer. Cheap to hold; never blocks the cache.
///
/// A DEK retired while leased (its key revoked, rotated or deleted, its compartment purged) is
/// expired at once: the lease's next [`EncryptionLease::reserve`] is refused.
pub(crate) struct EncryptionLease {
    active: Arc<ActiveDek>,
    limits: EncryptLimits,
}

impl EncryptionLease {
    pub(crate) fn new(active: Arc<ActiveDek>, limits: EncryptLimits) -> Self {
        Self { active, limits }
    }

    /// The leased DEK.
    pub(crate) fn dek(&self) -> &LoadedDek {
        &self.active.dek
    }

    /// Reserves one more message of `len` bytes under the leased DEK. `Exhausted` means it
    /// reached a limit or was retired: seal nothing more under it.
    pub(crate) fn reserve(&self, len: u64) -> Reservation {
        self.active.reserve(len, Instant::now(), &self.limits)
    }

    /// Counts `len` more bytes of the streamed object this lease writes; false once the DEK
    /// was retired.
    pub(crate) fn add_stream_bytes(&self, len: u64) -> bool {
        self.active.add_stream_bytes(len)
    }

    /// The limits the DEK is held to.
    pub(crate) fn limits(&self) -> &EncryptLimits {
        &self.limits
    }

    /// The leased DEK's place in the cache.
    pub(crate) fn active(&self) -> &Arc<ActiveDek> {
        &self.active
    }
}

impl std::fmt::Debug for EncryptionLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionLease")
            .field("dek", &self.active.dek)
            .field("messages", &self.active.messages())
            .finish_non_exhaustive()
    }
}
