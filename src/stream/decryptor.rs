//! [`StreamDecryptor`]: the bytes of a streamed object in, authenticated plaintext out.

use super::cobblestone::BodyKey;
use crate::error::{Error, Result};
use crate::format::{CHUNK_LEN, SEALED_CHUNK_LEN, TAG_LEN};

/// Decrypts the chunks of one streamed object in order, in constant memory.
///
/// Made by [`Client::stream_decryptor`](crate::Client::stream_decryptor) from the object's head.
/// Feed the rest of the object to [`update`](Self::update) in pieces of any size: each call
/// yields the plaintext of every chunk it completes, once that chunk is authenticated (a full
/// 16 KiB chunk is never the final one, so no look-ahead is needed). At the end of the object
/// call [`finish`](Self::finish): it opens the final, shorter chunk. Until `finish` succeeds
/// the plaintext is a prefix of the object, and an object that ends early (truncated) fails
/// there. No byte that is not authenticated is ever returned.
pub struct StreamDecryptor {
    body: BodyKey,
    /// Bytes of the chunk being filled (fewer than a sealed full chunk).
    sealed: Vec<u8>,
    next_chunk: u64,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Failed,
    Finished,
}

impl std::fmt::Debug for StreamDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecryptor")
            .field("chunks_opened", &self.next_chunk)
            .finish_non_exhaustive()
    }
}

impl StreamDecryptor {
    pub(crate) fn new(body: BodyKey) -> Self {
        Self {
            body,
            sealed: Vec::with_capacity(SEALED_CHUNK_LEN),
            next_chunk: 0,
            state: State::Open,
        }
    }

    /// This decryptor, to be fed the object from the start of chunk `index` on (range reads).
    #[cfg(feature = "object-store")]
    pub(crate) fn starting_at(mut self, index: u64) -> Self {
        self.next_chunk = index;
        self
    }

    /// Decrypts `ciphertext` (the object's next bytes), appending authenticated plaintext to
    /// `out`.
    ///
    /// # Errors
    /// [`Integrity`](crate::ErrorKind::Integrity) for a chunk that does not open (altered,
    /// moved, from another object). After an error the stream is dead and every call fails.
    pub fn update(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.resize(start + self.output_len(ciphertext.len()), 0);
        let written = self.update_into(ciphertext, &mut out[start..]);
        out.truncate(start + *written.as_ref().unwrap_or(&0));
        written.map(drop)
    }

    /// Bytes [`update_into`](Self::update_into) writes for `ciphertext_len` more bytes now.
    pub fn output_len(&self, ciphertext_len: usize) -> usize {
        (self.sealed.len() + ciphertext_len) / SEALED_CHUNK_LEN * CHUNK_LEN
    }

    /// Like [`update`](Self::update), writing into `out` (at least
    /// [`output_len`](Self::output_len) bytes); returns how many bytes it wrote.
    ///
    /// # Errors
    /// As for [`StreamDecryptor::update`];
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) if `out` is too short.
    pub fn update_into(&mut self, ciphertext: &[u8], out: &mut [u8]) -> Result<usize> {
        self.check_open()?;
        if out.len() < self.output_len(ciphertext.len()) {
            return Err(Error::invalid_input("output buffer too short"));
        }
        let result = self.open_full_chunks(ciphertext, out);
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    /// Opens the final chunk and ends the object, appending its plaintext to `out`.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) if the object ends on a chunk boundary
    /// or inside a tag (truncated); [`Integrity`](crate::ErrorKind::Integrity) if its last
    /// chunk does not open (truncated inside a chunk, altered).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        let start = out.len();
        out.resize(start + CHUNK_LEN, 0);
        let written = self.finish_into(&mut out[start..]);
        out.truncate(start + *written.as_ref().unwrap_or(&0));
        written.map(drop)
    }

    /// Like [`finish`](Self::finish), writing into `out` (16 KiB − 1 bytes are always enough);
    /// returns how many bytes it wrote.
    ///
    /// # Errors
    /// As for [`StreamDecryptor::finish`].
    pub fn finish_into(&mut self, out: &mut [u8]) -> Result<usize> {
        self.check_open()?;
        self.state = State::Failed;
        let len = self.sealed.len();
        if len < TAG_LEN {
            return Err(truncated());
        }
        let plain = len - TAG_LEN;
        let Some(out) = out.get_mut(..plain) else {
            return Err(Error::invalid_input("output buffer too short"));
        };
        self.body
            .open_chunk_into(self.next_chunk, &self.sealed, out)?;
        self.sealed.clear();
        self.next_chunk += 1;
        self.state = State::Finished;
        Ok(plain)
    }

    /// Whether [`finish`](Self::finish) succeeded: the whole object was authenticated.
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

    fn open_full_chunks(&mut self, mut ciphertext: &[u8], out: &mut [u8]) -> Result<usize> {
        let mut at = 0;
        if !self.sealed.is_empty() {
            let take = (SEALED_CHUNK_LEN - self.sealed.len()).min(ciphertext.len());
            self.sealed.extend_from_slice(&ciphertext[..take]);
            ciphertext = &ciphertext[take..];
            if self.sealed.len() < SEALED_CHUNK_LEN {
                return Ok(0);
            }
            self.body
                .open_chunk_into(self.next_chunk, &self.sealed, &mut out[..CHUNK_LEN])?;
            self.sealed.clear();
            self.next_chunk += 1;
            at = CHUNK_LEN;
        }
        let mut chunks = ciphertext.chunks_exact(SEALED_CHUNK_LEN);
        for chunk in &mut chunks {
            let opened =
                self.body
                    .open_chunk_into(self.next_chunk, chunk, &mut out[at..at + CHUNK_LEN]);
            if let Err(e) = opened {
                // Chunks opened earlier in this call are authenticated, but the caller sees
                // only the error: wipe them too.
                zeroize::Zeroize::zeroize(&mut out[..at]);
                return Err(e);
            }
            self.next_chunk += 1;
            at += CHUNK_LEN;
        }
        self.sealed.extend_from_slice(chunks.remainder());
        Ok(at)
    }
}

fn truncated() -> Error {
    Error::invalid_input("truncated streamed envelope: it ends without its final chunk")
}
