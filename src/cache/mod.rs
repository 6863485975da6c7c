//! The data-key cache: the one layer every encrypt and decrypt goes through.
//!
//! * **Encryption side**, one entry per compartment: the active DEK and its usage. A DEK is retired
//!   when it reaches [`CacheConfig::encrypt_max_age`], `encrypt_max_messages` or `encrypt_max_bytes`;
//!   at [`CacheConfig::refresh_fraction`] of any limit a replacement is made in the background so
//!   steady-state callers never wait on the KMS.
//! * **Decryption side**, one entry per DEK id: unwrapped DEKs with their own age limit. Entries in
//!   use are re-unwrapped in the background before they expire, which also notices a revoked key.
//! * Both sides are bounded in entries (second-chance eviction) and both are
//!   **single-flight**: concurrent misses on one compartment or one DEK share one KMS call.
//!
//! Evicted DEKs are wiped: the expanded keys are freed by AWS-LC (which cleanses on free) or
//! zeroized by RustCrypto's `ZeroizeOnDrop`, and the raw DEK never outlives its derivation.

mod counters;
mod decrypt;
mod encrypt;
mod lease;
mod loaded;
mod single_flight;
mod snapshot_map;

use std::time::Duration;

pub(crate) use counters::Counters;
pub(crate) use decrypt::{DecryptCache, DekSource, OpenDek};
pub(crate) use encrypt::{ActiveDek, EncryptCache, Reservation};
pub(crate) use lease::EncryptionLease;
pub(crate) use loaded::LoadedDek;
pub(crate) use single_flight::SingleFlight;
pub(crate) use snapshot_map::{SnapshotMap, Touch, TouchBit};

use crate::error::{Error, Result};

/// The hard ceiling on messages per DEK: random 96-bit nonces are safe for at most 2^32
/// messages under one key (NIST SP 800-38D, section 8.3).
pub const MAX_MESSAGES_PER_DEK: u64 = 1 << 32;

/// Limits of the data-key cache. `Default` gives the documented defaults.
///
/// | field | default | why |
/// |---|---|---|
/// | `encrypt_max_age` | 5 min | bounds how long new data keeps going under a key that was revoked without us noticing, and the blast radius of one DEK; one KMS call per active compartment per 5 minutes costs nothing |
/// | `encrypt_max_messages` | 2^30 | a quarter of the 2^32 random-nonce ceiling: nonce-collision probability per DEK stays below 2^-37 |
/// | `encrypt_max_bytes` | 64 GiB | bounds the data under one DEK for hot compartments |
/// | `encrypt_capacity` | 10,000 compartments | about 10 MB; compartments beyond it pay one KMS call when they come back |
/// | `decrypt_max_age` | 5 min | the documented revocation bound: once a key is disabled, data is unreadable within this time |
/// | `decrypt_capacity` | 50,000 DEKs | reads span several DEKs per compartment (one per 5 minutes of writing) |
/// | `refresh_fraction` | 0.75 | replaces a DEK at 75% of any limit, leaving a quarter of its life to ride out a slow or failing KMS |
/// | `degraded_staleness` | off | opt-in: how long past their max age cached DEKs may serve while their key's KMS is unreachable |
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Age at which an encryption DEK is retired.
    pub encrypt_max_age: Duration,
    /// Messages after which an encryption DEK is retired (at most [`MAX_MESSAGES_PER_DEK`]).
    pub encrypt_max_messages: u64,
    /// Plaintext bytes after which an encryption DEK is retired.
    pub encrypt_max_bytes: u64,
    /// Most compartments with a cached encryption DEK.
    pub encrypt_capacity: usize,
    /// Age at which an unwrapped DEK leaves the decryption cache.
    pub decrypt_max_age: Duration,
    /// Most unwrapped DEKs in the decryption cache.
    pub decrypt_capacity: usize,
    /// Fraction of any limit at which a replacement is prepared in the background (0 < f <= 1;
    /// 1 disables refresh-ahead).
    pub refresh_fraction: f64,
    /// Degraded mode (off by default): while a key's KMS is unreachable (transient failures
    /// only; never after a revocation or a refusal), cached DEKs of that key may keep serving
    /// up to this long past their max age (on both sides), so an outage of the customer's KMS
    /// does not stop their service. An event and a metric mark when it starts and ends.
    pub degraded_staleness: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            encrypt_max_age: Duration::from_secs(300),
            encrypt_max_messages: 1 << 30,
            encrypt_max_bytes: 64 << 30,
            encrypt_capacity: 10_000,
            decrypt_max_age: Duration::from_secs(300),
            decrypt_capacity: 50_000,
            refresh_fraction: 0.75,
            degraded_staleness: None,
        }
    }
}

impl CacheConfig {
    /// Checks the limits.
    ///
    /// # Errors
    /// [`ErrorKind::Configuration`](crate::ErrorKind::Configuration) naming the bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: &'static str| Err(Error::configuration(msg));
        if self.encrypt_max_messages == 0 || self.encrypt_max_messages > MAX_MESSAGES_PER_DEK {
            return bad("encrypt_max_messages must be between 1 and 2^32");
        }
        if self.encrypt_max_bytes == 0 {
            return bad("encrypt_max_bytes must be positive");
        }
        if self.encrypt_max_age.is_zero() || self.decrypt_max_age.is_zero() {
            return bad("cache max ages must be positive");
        }
        if self.encrypt_capacity == 0 || self.decrypt_capacity == 0 {
            return bad("cache capacities must be positive");
        }
        if !(self.refresh_fraction > 0.0 && self.refresh_fraction <= 1.0) {
            return bad("refresh_fraction must be in (0, 1]");
        }
        Ok(())
    }
}

/// A snapshot of the cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Encryptions served by a cached DEK.
    pub encrypt_hits: u64,
    /// Encryptions that had to wait for a new DEK.
    pub encrypt_misses: u64,
    /// Decryptions served by a cached DEK.
    pub decrypt_hits: u64,
    /// Decryptions that had to load (and unwrap) a DEK.
    pub decrypt_misses: u64,
    /// Wrap calls made to backends (every attempt, retries included).
    pub kms_wrap_calls: u64,
    /// Unwrap calls made to backends (every attempt, retries included).
    pub kms_unwrap_calls: u64,
    /// Backend calls that failed.
    pub kms_errors: u64,
    /// DEKs created.
    pub deks_created: u64,
    /// Background refreshes started (refresh-ahead on either side).
    pub refreshes: u64,
    /// Entries pushed out by the capacity bound.
    pub evictions: u64,
    /// Revocations seen: a key moving to revoked (disabled, deleted), or to denied after it
    /// had worked. Counts changes of a key's state, not failing calls.
    pub revocations_detected: u64,
    /// Cached encryption DEKs now.
    pub encrypt_entries: u64,
    /// Cached decryption DEKs now.
    pub decrypt_entries: u64,
    /// Chunks of streamed objects decrypted by [`Client::decrypt_range`](crate::Client::decrypt_range).
    pub range_chunks_opened: u64,
}

impl Stats {
    /// Share of encryptions and decryptions served from the cache (0 when there were none).
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.encrypt_hits + self.decrypt_hits;
        let all = hits + self.encrypt_misses + self.decrypt_misses;
        if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        }
    }

    /// Backend calls of either kind.
    pub fn kms_calls(&self) -> u64 {
        self.kms_wrap_calls + self.kms_unwrap_calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_limits_checked() {
        CacheConfig::default().validate().unwrap();
        for bad in [
            CacheConfig {
                encrypt_max_messages: MAX_MESSAGES_PER_DEK + 1,
                ..CacheConfig::default()
            },
            CacheConfig {
                refresh_fraction: 0.0,
                ..CacheConfig::default()
            },
            CacheConfig {
                decrypt_capacity: 0,
                ..CacheConfig::default()
            },
        ] {
            assert_eq!(
                bad.validate().unwrap_err().kind(),
                crate::ErrorKind::Configuration
            );
        }
    }
}
