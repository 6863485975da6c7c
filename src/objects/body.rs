//! Stored bytes in, plaintext out: the stream a `get` returns, opening chunks as they arrive.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::buffers::{BufferPool, PooledBuffer};
use crate::error::Error;
use crate::format::{CHUNK_LEN, SEALED_CHUNK_LEN};
use crate::stream::StreamDecryptor;

/// Ciphertext fed to the decryptor at once, at most: 4096 chunks (64 MiB), and the final
/// chunk with them if it is all that is left. Stores on a network deliver far smaller
/// pieces; an in-memory store that hands over a whole object at once gets it back in
/// pieces of at most 64 MiB (a 64 MiB object in one piece).
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
        // Only the head is copied: the rest of the piece it ends in stays where it is.
        let mut head = BytesMut::with_capacity(len);
        head.extend_from_slice(&std::mem::take(&mut self.read));
        while head.len() < len {
            let Some(mut piece) = self.rest.next().await.transpose()? else {
                return Err(
                    Error::invalid_input("truncated streamed envelope: no whole head").into(),
                );
            };
            let needed = (len - head.len()).min(piece.len());
            head.extend_from_slice(&piece.split_to(needed));
            self.read = piece;
        }
        Ok(head.freeze())
    }
}

/// Which plaintext a decrypting stream gives out, and where its chunks start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Stored bytes to drop before the first chunk.
    pub(crate) skip_stored: u64,
    /// Stored bytes of the chunks to open, after those dropped.
    pub(crate) stored_len: u64,
    /// Plaintext bytes of the first chunk to drop.
    pub(crate) skip_plaintext: u64,
    /// Plaintext bytes to give out.
    pub(crate) len: u64,
    /// Whether the chunks end with the object's final one, which is then opened at the end
    /// (so the length the plaintext was cut to is authenticated).
    pub(crate) through_final: bool,
}

/// The plaintext of `window` as `decryptor` opens the chunks in `stored`, in buffers from
/// `buffers`. Only authenticated bytes come out; a stream that ends early, or has bytes
/// past the object's end, ends with an error.
pub(crate) fn decrypting(
    decryptor: StreamDecryptor,
    stored: Ciphertext,
    window: Window,
    buffers: BufferPool,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let state = Opening {
        decryptor: Some(decryptor),
        stored,
        window,
        buffers,
        opened_final: false,
    };
    futures_util::stream::try_unfold(state, |mut state| async move {
        Ok(state.next().await?.map(|bytes| (bytes, state)))
    })
    .boxed()
}

struct Opening {
    /// `None` once every chunk of the window is opened, or the stream failed.
    decryptor: Option<StreamDecryptor>,
    stored: Ciphertext,
    window: Window,
    buffers: BufferPool,
    /// Whether the final chunk was opened: the store must have no bytes after it.
    opened_final: bool,
}

impl Opening {
    async fn next(&mut self) -> object_store::Result<Option<Bytes>> {
        loop {
            let Some(decryptor) = self.decryptor.as_mut() else {
                return self.no_more().await;
            };
            if self.window.len == 0 && !self.window.through_final {
                self.decryptor = None;
                return Ok(None);
            }
            if self.window.stored_len == 0 {
                self.decryptor = None;
                return Err(short());
            }
            if self.stored.read.is_empty() {
                match self.stored.rest.next().await.transpose()? {
                    Some(piece) => self.stored.read = piece,
                    None => {
                        self.decryptor = None;
                        return Err(short());
                    }
                }
                continue;
            }
            if self.window.skip_stored > 0 {
                let skip = self.window.skip_stored.min(self.stored.read.len() as u64);
                self.stored.read.advance(skip as usize);
                self.window.skip_stored -= skip;
                continue;
            }
            let batch = if self.window.stored_len <= (BATCH + SEALED_CHUNK_LEN) as u64 {
                usize::MAX
            } else {
                BATCH
            };
            let take = (self.stored.read.len().min(batch) as u64).min(self.window.stored_len);
            let piece = self.stored.read.split_to(take as usize);
            self.window.stored_len -= take;
            // The final chunk is opened into the same buffer, so that a whole object read
            // at once comes out as one piece (which `GetResult::bytes` does not copy).
            let last = self.window.stored_len == 0;
            let opens_final = last && self.window.through_final;
            let room = decryptor.output_len(piece.len()) + if opens_final { CHUNK_LEN } else { 0 };
            let mut plaintext = self.buffers.take(room);
            let opened = decryptor
                .update_into(&piece, plaintext.as_mut_slice())
                .and_then(|written| {
                    if !opens_final {
                        return Ok(written);
                    }
                    let rest = &mut plaintext.as_mut_slice()[written..];
                    Ok(written + decryptor.finish_into(rest)?)
                });
            match opened {
                Ok(written) => plaintext.truncate(written),
                Err(e) => {
                    self.decryptor = None;
                    return Err(e.into());
                }
            }
            let out = self.cut(plaintext);
            if last {
                self.decryptor = None;
                self.opened_final = opens_final;
                if self.window.len > 0 {
                    return Err(short());
                }
            }
            if out.is_some() {
                return Ok(out);
            }
        }
    }

    /// Every chunk is opened: after the final one, the store must end too.
    async fn no_more(&mut self) -> object_store::Result<Option<Bytes>> {
        if std::mem::take(&mut self.opened_final) {
            let mut trailing = !self.stored.read.is_empty();
            while !trailing {
                match self.stored.rest.next().await.transpose()? {
                    Some(piece) => trailing = !piece.is_empty(),
                    None => break,
                }
            }
            if trailing {
                return Err(Error::invalid_input(
                    "the store returned more bytes than the object's length says (changed?)",
                )
                .into());
            }
        }
        Ok(None)
    }

    /// The part of freshly opened `plaintext` inside the window.
    fn cut(&mut self, plaintext: PooledBuffer) -> Option<Bytes> {
        let opened = plaintext.freeze();
        let skip = (self.window.skip_plaintext as usize).min(opened.len());
        self.window.skip_plaintext -= skip as u64;
        let len = self.window.len.min((opened.len() - skip) as u64);
        self.window.len -= len;
        (len > 0).then(|| opened.slice(skip..skip + len as usize))
    }
}

fn short() -> object_store::Error {
    Error::invalid_input(
        "the store returned fewer bytes than the object's length says (truncated or changed)",
    )
    .into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::TryStreamExt;

    use super::*;
    use crate::stream::StreamForm;
    use crate::{Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};

    const HEAD: usize = crate::format::COMPACT_STREAM_HEADER_LEN + crate::format::BODY_PREFIX_LEN;

    fn client() -> (Client, CompartmentId) {
        let client = Client::builder()
            .key(
                KeyConfigId::new("local").unwrap(),
                Arc::new(LocalKms::generate("local:body").unwrap()),
            )
            .dek_store(Arc::new(MemoryDekStore::new()))
            .build()
            .unwrap();
        (client, CompartmentId::new("tenant-body").unwrap())
    }

    /// An object of `len` bytes: its plaintext and its stored body (after the head).
    async fn object(client: &Client, tenant: &CompartmentId, len: usize) -> (Vec<u8>, Vec<u8>) {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut encryptor = client
            .stream_encryptor(tenant, b"p", StreamForm::Compact)
            .await
            .unwrap();
        let mut stored = Vec::new(); // the head comes first
        encryptor.update(&plaintext, &mut stored).unwrap();
        encryptor.finish(&mut stored).unwrap();
        (plaintext, stored)
    }

    /// The pieces a decrypting stream gives for the whole object, fed in `pieces`.
    async fn open_whole(
        client: &Client,
        tenant: &CompartmentId,
        stored: &[u8],
        pieces: Vec<Vec<u8>>,
        plaintext_len: usize,
    ) -> object_store::Result<Vec<Bytes>> {
        let decryptor = client
            .stream_decryptor(tenant, &stored[..HEAD], b"p")
            .await
            .unwrap();
        let rest = futures_util::stream::iter(pieces.into_iter().map(|p| Ok(Bytes::from(p))));
        let window = Window {
            skip_stored: 0,
            stored_len: (stored.len() - HEAD) as u64,
            skip_plaintext: 0,
            len: plaintext_len as u64,
            through_final: true,
        };
        let stream = decrypting(
            decryptor,
            Ciphertext::new(rest.boxed()),
            window,
            BufferPool::default(),
        );
        stream.try_collect().await
    }

    #[tokio::test]
    async fn an_object_read_at_once_comes_out_in_one_piece() {
        let (client, tenant) = client();
        for len in [0, 1, CHUNK_LEN - 1, CHUNK_LEN, 100_000, 1 << 20, 64 << 20] {
            let (plaintext, stored) = object(&client, &tenant, len).await;
            let body = stored[HEAD..].to_vec();
            let pieces = open_whole(&client, &tenant, &stored, vec![body], len)
                .await
                .unwrap();
            assert!(
                pieces.len() <= 1,
                "{len} bytes came in {} pieces",
                pieces.len()
            );
            assert_eq!(pieces.concat(), plaintext, "{len} bytes");
        }
    }

    #[tokio::test]
    async fn splitting_off_the_head_copies_nothing_after_it() {
        let object = Bytes::from(vec![7u8; 1 << 20]);
        let pieces = vec![Ok(object.slice(..10)), Ok(object.slice(10..))];
        let mut stored = Ciphertext::new(futures_util::stream::iter(pieces).boxed());
        let head = stored.split_head(HEAD).await.unwrap();
        assert_eq!(head.len(), HEAD);
        assert_eq!(stored.read.len(), object.len() - HEAD);
        assert_eq!(
            stored.read.as_ptr(),
            object[HEAD..].as_ptr(),
            "the body is the store's bytes, not a copy"
        );
    }

    #[tokio::test]
    async fn small_pieces_open_to_the_same_plaintext() {
        let (client, tenant) = client();
        let (plaintext, stored) = object(&client, &tenant, 3 * CHUNK_LEN + 77).await;
        let pieces = stored[HEAD..].chunks(999).map(<[u8]>::to_vec).collect();
        let opened = open_whole(&client, &tenant, &stored, pieces, plaintext.len())
            .await
            .unwrap();
        assert_eq!(opened.concat(), plaintext);
    }

    #[tokio::test]
    async fn bytes_past_the_end_or_missing_are_errors() {
        let (client, tenant) = client();
        let len = 2 * CHUNK_LEN + 5;
        let (_, stored) = object(&client, &tenant, len).await;
        let body = stored[HEAD..].to_vec();

        let trailing = vec![body.clone(), vec![0u8; 3]];
        let err = open_whole(&client, &tenant, &stored, trailing, len)
            .await
            .expect_err("bytes after the final chunk");
        assert!(err.to_string().contains("more bytes"), "{err}");

        let short = vec![body[..body.len() - 1].to_vec()];
        let err = open_whole(&client, &tenant, &stored, short, len)
            .await
            .expect_err("one byte missing");
        assert!(err.to_string().contains("fewer bytes"), "{err}");
    }
}
