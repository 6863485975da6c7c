//! Counters behind [`Stats`]. Hit counters sit on the hot path, so they are striped across
//! cache lines to keep tasks on different cores from contending on one atomic.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::Stats;

const STRIPES: usize = 16;

#[repr(align(128))]
#[derive(Default)]
struct Padded(AtomicU64);

/// A counter spread over cache-line-padded stripes, one chosen per thread.
#[derive(Default)]
pub(crate) struct StripedCounter([Padded; STRIPES]);

thread_local! {
    static STRIPE: usize = {
        use std::hash::{BuildHasher, RandomState};
        (RandomState::new().hash_one(std::thread::current().id()) as usize) % STRIPES
    };
}

impl StripedCounter {
    #[inline]
    pub(crate) fn incr(&self) {
        let i = STRIPE.with(|s| *s);
        self.0[i].0.fetch_add(1, Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Relaxed)).sum()
    }
}

/// Every counter of the cache.
#[derive(Default)]
pub(crate) struct Counters {
    /// Messages granted under DEKs that have been dropped.
    pub(crate) retired_encryptions: std::sync::Arc<AtomicU64>,
    pub(crate) decrypt_hits: StripedCounter,
    pub(crate) encrypt_misses: AtomicU64,
    pub(crate) decrypt_misses: AtomicU64,
    /// KMS attempts, counted by the observation layer.
    pub(crate) kms: std::sync::Arc<crate::kms::layers::KmsCounters>,
    pub(crate) deks_created: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) evictions: std::sync::Arc<AtomicU64>,
    pub(crate) revocations_detected: AtomicU64,
    /// Chunks decrypted by range reads.
    pub(crate) range_chunks: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub(crate) fn add_range_chunks(&self, n: u64) {
        self.range_chunks.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            encrypt_hits: 0,
            encrypt_misses: self.encrypt_misses.load(Relaxed),
            decrypt_hits: self.decrypt_hits.get(),
            decrypt_misses: self.decrypt_misses.load(Relaxed),
            kms_wrap_calls: self.kms.wrap_calls.load(Relaxed),
            kms_unwrap_calls: self.kms.unwrap_calls.load(Relaxed),
            kms_errors: self.kms.errors.load(Relaxed),
            deks_created: self.deks_created.load(Relaxed),
            refreshes: self.refreshes.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            revocations_detected: self.revocations_detected.load(Relaxed),
            encrypt_entries: 0,
            decrypt_entries: 0,
            range_chunks_opened: self.range_chunks.load(Relaxed),
        }
    }
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.snapshot().fmt(f)
    }
}
