//! Stored bytes in, plaintext out: the stream a `get` returns, opening chunks as they arrive.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::error::Error;
use crate::format::SEALED_CHUNK_LEN;
use crate::stream::StreamDecryptor;

/// Ciphertext fed to the decryptor at once, at most: 4096 chunks (64 MiB). Stores on a
/// network deliver far smaller pieces; an in-memory store that hands over a whole object
/// at once gets it back in pieces of at most 64 MiB.
const BATCH: usize = 4096 * SEALED_CHUNK_LEN;

/// Stored bytes of one object, from some offset on: what is already read, then the rest.
pub(crate) struct Ciphertext {
    pub(crate) read: Bytes,
    pub(crate) rest: BoxStream<'static, object_store::Result<Bytes>>,
}

impl Ciphertext {
    pub(crate) fn new(rest: BoxStream<'static, object_store::Result<Bytes>>) -> Self {
        Self {
            read: Bytes::new(),
            rest,
        }
    }

    /// Splits off the first `len` bytes (the object's head), reading as much as needed.
    pub(crate) async fn split_head(&mut self, len: usize) -> object_store::Result<Bytes> {
        if self.read.len() >= len {
            return Ok(self.read.split_to(len));
        }
        let mut head = BytesMut::with_capacity(len);
        head.extend_from_slice(&self.read);
        while head.len() < len {
            let Some(piece) = self.rest.next().await.transpose()? else {
                return Err(
                    Error::invalid_input("truncated streamed envelope: no whole head").into(),
                );
            };
            head.extend_from_slice(&piece);
        }
        self.read = head.split_off(len).freeze();
        Ok(head.freeze())
    }
}

/// Which plaintext a decrypting stream gives out, and where its chunks start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Stored bytes to drop before the first chunk.
    pub(crate) skip_stored: u64,
    /// Plaintext bytes of the first chunk to drop.
    pub(crate) skip_plaintext: u64,
    /// Plaintext bytes to give out.
    pub(crate) len: u64,
    /// Whether the chunks end with the object's final one, which is then opened at the end
    /// (so the length the plaintext was cut to is authenticated).
    pub(crate) through_final: bool,
}

/// The plaintext of `window` as `decryptor` opens the chunks in `stored`. Only
/// authenticated bytes come out; a stream that ends early ends with an error.
pub(crate) fn decrypting(
    decryptor: StreamDecryptor,
    stored: Ciphertext,
    window: Window,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let state = Opening {
        decryptor: Some(decryptor),
        stored,
        window,
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        Ok(state.next().await?.map(|bytes| (bytes, state)))
    })
    .boxed()
}

struct Opening {
    /// `None` once the stream has ended.
    decryptor: Option<StreamDecryptor>,
    stored: Ciphertext,
    window: Window,
}

impl Opening {
    async fn next(&mut self) -> object_store::Result<Option<Bytes>> {
        loop {
            let Some(decryptor) = self.decryptor.as_mut() else {
                return Ok(None);
            };
            if self.window.len == 0 && !self.window.through_final {
                self.decryptor = None;
                return Ok(None);
            }
            if self.stored.read.is_empty() {
                match self.stored.rest.next().await.transpose()? {
                    Some(piece) => self.stored.read = piece,
                    None => return self.end(),
                }
                continue;
            }
            if self.window.skip_stored > 0 {
                let skip = self.window.skip_stored.min(self.stored.read.len() as u64);
                self.stored.read.advance(skip as usize);
                self.window.skip_stored -= skip;
                continue;
            }
            let take = self.stored.read.len().min(BATCH);
            let piece = self.stored.read.split_to(take);
            // Zeroed by the allocator (fresh pages need no memset), then overwritten.
            let mut plaintext = vec![0u8; decryptor.output_len(piece.len())];
            match decryptor.update_into(&piece, &mut plaintext) {
                Ok(written) => plaintext.truncate(written),
                Err(e) => {
                    self.decryptor = None;
                    return Err(e.into());
                }
            }
            if let Some(bytes) = self.cut(plaintext) {
                return Ok(Some(bytes));
            }
        }
    }

    /// The stored bytes ended: open the final chunk if the window reaches it.
    fn end(&mut self) -> object_store::Result<Option<Bytes>> {
        let Some(decryptor) = self.decryptor.take() else {
            return Ok(None);
        };
        let mut plaintext = Vec::new();
        if self.window.through_final {
            decryptor.finish(&mut plaintext)?;
        } else if decryptor.pending_len() > 0 {
            return Err(short());
        }
        let out = self.cut(plaintext);
        if self.window.len > 0 {
            return Err(short());
        }
        Ok(out)
    }

    /// The part of freshly opened `plaintext` inside the window.
    fn cut(&mut self, mut plaintext: Vec<u8>) -> Option<Bytes> {
        let skip = (self.window.skip_plaintext as usize).min(plaintext.len());
        if skip > 0 {
            plaintext.drain(..skip);
            self.window.skip_plaintext -= skip as u64;
        }
        plaintext.truncate(self.window.len.min(plaintext.len() as u64) as usize);
        self.window.len -= plaintext.len() as u64;
        (!plaintext.is_empty()).then(|| Bytes::from(plaintext))
    }
}

fn short() -> object_store::Error {
    Error::invalid_input(
        "the store returned fewer bytes than the object's length says (truncated or changed)",
    )
    .into()
}
