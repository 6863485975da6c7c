//! [`StreamEncryptor`]: plaintext in, the object's bytes out, in any pieces, no I/O.

use super::cobblestone::BodyKey;
use crate::error::{Error, Result};
use crate::format::{CHUNK_LEN, MAX_CHUNKS, SEALED_CHUNK_LEN, TAG_LEN};

/// What a stream asks before each batch of chunks goes under its DEK: the client counts the
/// bytes against the DEK and refuses once the DEK was retired (its key revoked, rotated or
/// deleted, its compartment purged) or its key is found revoked.
pub(crate) trait ChunkBudget: Send + Sync {
    /// May `len` more plaintext bytes be sealed?
    fn admit(&mut self, len: u64) -> Result<()>;
}

/// A budget that admits everything (raw bodies for tests and interoperability).
pub(crate) struct Unlimited;

impl ChunkBudget for Unlimited {
    fn admit(&mut self, _: u64) -> Result<()> {
        Ok(())
    }
}

/// Encrypts one object of any size into a streamed envelope, in constant memory.
///
/// Made by [`Client::stream_encryptor`](crate::Client::stream_encryptor). Feed the plaintext to
/// [`update`](Self::update) in pieces of any size; each call appends to `out` the bytes of the
/// object it completes (the header first, then every full 16 KiB chunk); at most 16 KiB − 1
/// bytes wait for more input. The object is valid only once [`finish`](Self::finish) has
/// appended the final chunk: **you must call it**. A stream dropped unfinished, or that failed,
/// leaves bytes that never decrypt (they end without a final chunk).
///
/// For `std::io` and `tokio::io`, wrap it: [`EncryptingWriter`](super::EncryptingWriter),
/// [`AsyncEncryptingWriter`](super::AsyncEncryptingWriter).
pub struct StreamEncryptor {
    body: BodyKey,
    budget: Box<dyn ChunkBudget>,
    head: Vec<u8>,
    head_written: bool,
    /// Plaintext of the chunk being filled (fewer than 16 KiB bytes).
    pending: Vec<u8>,
    next_chunk: u64,
    plaintext_len: u64,
    max_len: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Failed,
    Finished,
}

impl std::fmt::Debug for StreamEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncryptor")
            .field("plaintext_len", &self.plaintext_len)
            .field("chunks_sealed", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl StreamEncryptor {
    /// `head` is the header and body prefix; `max_len` the longest plaintext allowed.
    pub(crate) fn new(
        head: Vec<u8>,
        body: BodyKey,
        budget: Box<dyn ChunkBudget>,
        max_len: u64,
    ) -> Self {
        Self {
            body,
            budget,
            head,
            head_written: false,
            pending: Vec::with_capacity(CHUNK_LEN),
            next_chunk: 0,
            plaintext_len: 0,
            max_len: max_len.min(MAX_CHUNKS * CHUNK_LEN as u64 - 1),
            state: State::Open,
        }
    }

    /// The object's first bytes: its header, salt and body commitment (also the first bytes
    /// `update` or `finish` append).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Plaintext bytes taken so far.
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Encrypts `plaintext`, appending to `out` what it completes of the object.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) past the longest object allowed (2^38
    /// chunks, and the DEK's [`encrypt_max_bytes`](crate::CacheConfig::encrypt_max_bytes));
    /// [`Transient`](crate::ErrorKind::Transient) when the DEK was retired meanwhile, and
    /// [`KeyRevoked`](crate::ErrorKind::KeyRevoked) when its key was found revoked: write the
    /// object again. After an error the stream is dead and every call fails.
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.resize(start + self.output_len(plaintext.len()), 0);
        let written = self.update_into(plaintext, &mut out[start..]);
        out.truncate(start + *written.as_ref().unwrap_or(&0));
        written.map(drop)
    }

    /// Bytes [`update_into`](Self::update_into) writes for `plaintext_len` more bytes now.
    pub fn output_len(&self, plaintext_len: usize) -> usize {
        let head = if self.head_written {
            0
        } else {
            self.head.len()
        };
        head + (self.pending.len() + plaintext_len) / CHUNK_LEN * SEALED_CHUNK_LEN
    }

    /// Like [`update`](Self::update), writing into `out` (at least
    /// [`output_len`](Self::output_len) bytes) and returning how many bytes it wrote: for
    /// writers that reuse one buffer.
    ///
    /// # Errors
    /// As for [`StreamEncryptor::update`];
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) if `out` is too short.
    pub fn update_into(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize> {
        self.check_open()?;
        if out.len() < self.output_len(plaintext.len()) {
            return Err(Error::invalid_input("output buffer too short"));
        }
        let result = self.seal_full_chunks(plaintext, out);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Appends the final chunk (the buffered plaintext, shorter than 16 KiB, possibly empty)
    /// and ends the object.
    ///
    /// # Errors
    /// As for [`StreamEncryptor::update`].
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.resize(start + self.final_len(), 0);
        let written = self.finish_into(&mut out[start..]);
        out.truncate(start + *written.as_ref().unwrap_or(&0));
        written.map(drop)
    }

    /// Bytes [`finish_into`](Self::finish_into) writes.
    pub fn final_len(&self) -> usize {
        let head = if self.head_written {
            0
        } else {
            self.head.len()
        };
        head + self.pending.len() + TAG_LEN
    }

    /// Like [`finish`](Self::finish), writing into `out` (at least
    /// [`final_len`](Self::final_len) bytes); returns how many bytes it wrote. The stream is
    /// over either way.
    ///
    /// # Errors
    /// As for [`StreamEncryptor::finish`].
    pub fn finish_into(&mut self, out: &mut [u8]) -> Result<usize> {
        self.check_open()?;
        if out.len() < self.final_len() {
            return Err(Error::invalid_input("output buffer too short"));
        }
        let result = self.seal_final_chunk(out);
        self.state = if result.is_ok() {
            State::Finished
        } else {
            State::Failed
        };
        result
    }

    /// Whether [`finish`](Self::finish) succeeded.
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    fn check_open(&self) -> Result<()> {
        match self.state {
            State::Open => Ok(()),
            _ => Err(Error::invalid_input(
                "the stream failed or was finished; start a new one",
            )),
        }
    }

    /// Writes the head into `out` if it is not written yet; returns its length.
    fn write_head(&mut self, out: &mut [u8]) -> usize {
        if self.head_written {
            return 0;
        }
        out[..self.head.len()].copy_from_slice(&self.head);
        self.head_written = true;
        self.head.len()
    }

    fn seal_full_chunks(&mut self, mut plaintext: &[u8], out: &mut [u8]) -> Result<usize> {
        let total = self.plaintext_len.saturating_add(plaintext.len() as u64);
        if total > self.max_len {
            return Err(Error::invalid_input(format!(
                "streamed object longer than {} bytes (2^38 chunks or encrypt_max_bytes)",
                self.max_len
            )));
        }
        let completes = (self.pending.len() + plaintext.len()) / CHUNK_LEN;
        if completes > 0 {
            self.budget.admit((completes * CHUNK_LEN) as u64)?;
        }
        let mut at = self.write_head(out);
        if !self.pending.is_empty() {
            let take = (CHUNK_LEN - self.pending.len()).min(plaintext.len());
            self.pending.extend_from_slice(&plaintext[..take]);
            plaintext = &plaintext[take..];
            if self.pending.len() == CHUNK_LEN {
                let pending = std::mem::take(&mut self.pending);
                let sealed = self.seal_chunk(&pending, &mut out[at..]);
                self.pending = pending;
                self.pending.clear();
                at += sealed?;
            }
        }
        let mut chunks = plaintext.chunks_exact(CHUNK_LEN);
        for chunk in &mut chunks {
            at += self.seal_chunk(chunk, &mut out[at..])?;
        }
        self.pending.extend_from_slice(chunks.remainder());
        self.plaintext_len = total;
        Ok(at)
    }

    fn seal_final_chunk(&mut self, out: &mut [u8]) -> Result<usize> {
        self.budget.admit(self.pending.len() as u64)?;
        let at = self.write_head(out);
        let pending = std::mem::take(&mut self.pending);
        let sealed = self.seal_chunk(&pending, &mut out[at..]);
        self.pending = pending;
        Ok(at + sealed?)
    }

    /// Writes chunk `next_chunk` of `plaintext`, sealed, at the start of `out`; returns its length.
    fn seal_chunk(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize> {
        let len = plaintext.len() + TAG_LEN;
        self.body
            .seal_chunk_into(self.next_chunk, plaintext, &mut out[..len])?;
        self.next_chunk += 1;
        Ok(len)
    }
}

impl Drop for StreamEncryptor {
    fn drop(&mut self) {
        if self.state == State::Open && self.head_written {
            tracing::warn!(
                plaintext_len = self.plaintext_len,
                "a streamed object was dropped without finish(): its bytes will not decrypt"
            );
        }
    }
}
