//! [`BufferPool`]: large output buffers used again instead of allocated afresh.
//!
//! A plain `put` hands the store the caller's bytes and a plain in-memory `get` hands out
//! the stored ones; the encrypted ones must write a new buffer of the object's size. Fresh
//! memory costs a page fault per 4 KiB (glibc gives each buffer over its mmap threshold new
//! pages), which is slower than the cipher itself. So the ciphertext a `put` hands the inner
//! store and the plaintext a `get` hands out come from a pool, and go back to it when their
//! last [`Bytes`] is dropped. A reused buffer is never zeroed: only the bytes written into
//! it for the new object are ever readable through the `Bytes` made from it.

use std::fmt;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

/// Buffers shorter than this are left to the allocator, which reuses small blocks well.
const MIN_POOLED: usize = 256 * 1024;

/// Buffers the pool keeps at most.
const MAX_POOLED: usize = 16;

/// Large output buffers that [`EncryptedStore`](super::EncryptedStore) uses again: it keeps
/// at most `max_bytes` of idle buffers (256 MiB unless set), and never more than 16. Clones
/// share one pool, so several stores may share one budget.
#[derive(Clone)]
pub struct BufferPool {
    shared: Arc<Shared>,
}

struct Shared {
    max_bytes: usize,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// The idle memory a store keeps unless told otherwise.
    pub const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;

    /// A pool that keeps at most `max_bytes` of idle buffers (0: keeps none, every buffer
    /// is allocated afresh).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                max_bytes,
                idle: Mutex::new(Idle::default()),
            }),
        }
    }

    /// Bytes of idle buffers the pool holds now.
    pub fn idle_bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// A buffer of at least `len` bytes, written with earlier contents or zeroes; only its
    /// first `len` bytes are meant to be written and then [`frozen`](PooledBuffer::freeze).
    pub(crate) fn take(&self, len: usize) -> PooledBuffer {
        let reused = (len >= MIN_POOLED)
            .then(|| self.shared.take_fitting(len))
            .flatten();
        PooledBuffer {
            bytes: reused.unwrap_or_else(|| vec![0u8; len]),
            len,
            pool: Arc::downgrade(&self.shared),
        }
    }
}

impl Default for BufferPool {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_BYTES)
    }
}

impl fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferPool")
            .field("max_bytes", &self.shared.max_bytes)
            .field("idle_bytes", &self.idle_bytes())
            .finish()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The smallest idle buffer of `len` to `2 × len` bytes (a larger one would hold memory
    /// the caller cannot use for as long as it keeps the bytes).
    fn take_fitting(&self, len: usize) -> Option<Vec<u8>> {
        let mut idle = self.lock();
        let (at, _) = idle
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len && b.len() / 2 <= len)
            .min_by_key(|(_, b)| b.len())?;
        let buffer = idle.buffers.swap_remove(at);
        idle.bytes -= buffer.len();
        Some(buffer)
    }

    fn give_back(&self, buffer: Vec<u8>) {
        if buffer.len() < MIN_POOLED {
            return;
        }
        let mut idle = self.lock();
        if idle.buffers.len() < MAX_POOLED && idle.bytes + buffer.len() <= self.max_bytes {
            idle.bytes += buffer.len();
            idle.buffers.push(buffer);
        }
    }
}

/// A buffer from a [`BufferPool`], and the length of it in use; it goes back to the pool
/// when dropped (as the owner of the [`Bytes`] made from it, once the last of them is).
pub(crate) struct PooledBuffer {
    /// Fully initialised, at least `len` bytes.
    bytes: Vec<u8>,
    len: usize,
    pool: Weak<Shared>,
}

impl PooledBuffer {
    /// The bytes in use, to be written.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.len]
    }

    /// Only the first `len` bytes stay in use (the rest is never readable).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// The bytes in use, as `Bytes` that give the buffer back when the last of them drops.
    pub(crate) fn freeze(self) -> Bytes {
        if self.len == 0 {
            return Bytes::new();
        }
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn a_dropped_buffer_is_used_again_and_only_its_written_bytes_are_seen() {
        let pool = BufferPool::new(8 * MIB);
        let mut first = pool.take(MIB);
        first.as_mut_slice().fill(0xaa);
        let first = first.freeze();
        let address = first.as_ptr();
        drop(first);
        assert_eq!(pool.idle_bytes(), MIB);

        let mut second = pool.take(MIB - 10);
        assert_eq!(pool.idle_bytes(), 0);
        second.as_mut_slice().fill(0x55);
        second.truncate(100);
        let second = second.freeze();
        assert_eq!(second.as_ptr(), address, "the same memory, used again");
        assert_eq!(&second[..], &[0x55; 100][..]);
    }

    #[test]
    fn the_pool_keeps_no_more_than_its_budget_and_no_small_or_far_larger_buffers() {
        let pool = BufferPool::new(3 * MIB);
        let held: Vec<Bytes> = (0..4).map(|_| pool.take(MIB).freeze()).collect();
        drop(held);
        assert_eq!(pool.idle_bytes(), 3 * MIB, "the fourth did not fit");

        drop(pool.take(1024).freeze());
        assert_eq!(pool.idle_bytes(), 3 * MIB, "small buffers are not kept");

        // A 1 MiB buffer does not serve a 256 KiB request (it would hold 4× the memory).
        let small = pool.take(MIN_POOLED);
        assert_eq!(pool.idle_bytes(), 3 * MIB);
        drop(small);

        let none = BufferPool::new(0);
        drop(none.take(MIB).freeze());
        assert_eq!(none.idle_bytes(), 0);
    }

    #[test]
    fn a_buffer_does_not_keep_its_pool_alive() {
        let pool = BufferPool::new(8 * MIB);
        let bytes = pool.take(MIB).freeze();
        let shared = Arc::downgrade(&pool.shared);
        drop(pool);
        assert!(shared.upgrade().is_none());
        drop(bytes); // freed, not given back
    }
}
