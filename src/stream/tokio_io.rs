//! `tokio::io` adapters: [`AsyncEncryptingWriter`], [`AsyncDecryptingReader`] and
//! [`read_head_async`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::std_io::{BATCH_CHUNKS, head_needs};
use super::{StreamDecryptor, StreamEncryptor};
use crate::format::{CHUNK_LEN, SEALED_CHUNK_LEN};

/// An [`AsyncWrite`] that encrypts into a streamed object written to `W`.
///
/// End it with [`finish`](Self::finish) (returns `W`) or `shutdown()` (also shuts `W` down):
/// either writes the final chunk. An object whose writer was dropped before does not decrypt.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::sync::Arc;
/// # use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, stream::StreamForm};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # let client = Client::builder()
/// #     .key(KeyConfigId::new("local")?, Arc::new(LocalKms::generate("local:k")?))
/// #     .build()?;
/// # let tenant = CompartmentId::new("t")?;
/// let mut writer = client
///     .encrypting_writer(&tenant, b"backup/1", StreamForm::SelfContained, Vec::new())
///     .await?;
/// writer.write_all(b"any number of bytes").await?;
/// let object = writer.finish().await?;
///
/// let mut reader = client.decrypting_reader(&tenant, &object[..], b"backup/1").await?;
/// let mut plaintext = Vec::new();
/// reader.read_to_end(&mut plaintext).await?;
/// assert_eq!(plaintext, b"any number of bytes");
/// # Ok(()) }
/// ```
pub struct AsyncEncryptingWriter<W> {
    encryptor: StreamEncryptor,
    inner: W,
    buf: Vec<u8>,
    buf_at: usize,
    buf_len: usize,
    finished: bool,
}

impl<W> std::fmt::Debug for AsyncEncryptingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncEncryptingWriter")
            .field("encryptor", &self.encryptor)
            .field("unwritten", &(self.buf_len - self.buf_at))
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl StreamEncryptor {
    /// Wraps `inner` in an [`AsyncWrite`] that encrypts into it.
    pub fn into_async_writer<W: AsyncWrite + Unpin>(self, inner: W) -> AsyncEncryptingWriter<W> {
        AsyncEncryptingWriter {
            encryptor: self,
            inner,
            buf: vec![0; BATCH_CHUNKS * SEALED_CHUNK_LEN + super::MAX_HEAD_LEN],
            buf_at: 0,
            buf_len: 0,
            finished: false,
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncEncryptingWriter<W> {
    /// Writes the final chunk, flushes and returns the inner writer (not shut down).
    ///
    /// # Errors
    /// What the encryptor or the inner writer fail with.
    pub async fn finish(mut self) -> io::Result<W> {
        std::future::poll_fn(|cx| self.poll_finish(cx)).await?;
        std::future::poll_fn(|cx| Pin::new(&mut self.inner).poll_flush(cx)).await?;
        Ok(self.inner)
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.buf_at < self.buf_len {
            let n = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.buf_at..self.buf_len])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.buf_at += n;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        if !self.finished {
            let n = self
                .encryptor
                .finish_into(&mut self.buf)
                .map_err(io::Error::other)?;
            (self.buf_at, self.buf_len, self.finished) = (0, n, true);
            ready!(self.poll_drain(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncEncryptingWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        plaintext: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if this.finished {
            return Poll::Ready(Err(io::Error::other("write after the stream was finished")));
        }
        let take = plaintext.len().min(BATCH_CHUNKS * CHUNK_LEN);
        let n = this
            .encryptor
            .update_into(&plaintext[..take], &mut this.buf)
            .map_err(io::Error::other)?;
        (this.buf_at, this.buf_len) = (0, n);
        Poll::Ready(Ok(take))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// Finishes the object (writes its final chunk), then shuts the inner writer down.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_finish(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// An [`AsyncRead`] of the plaintext of a streamed object read from `R` (after its head).
///
/// It yields only authenticated bytes, and signals the end only after the final chunk was
/// authenticated: a truncated object ends in an error, never in a short success.
pub struct AsyncDecryptingReader<R> {
    decryptor: StreamDecryptor,
    inner: R,
    sealed: Vec<u8>,
    sealed_len: usize,
    plain: Vec<u8>,
    plain_at: usize,
    plain_len: usize,
    eof: bool,
    /// Why an earlier read failed: the stream is over.
    failed: Option<io::ErrorKind>,
}

impl<R> std::fmt::Debug for AsyncDecryptingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncDecryptingReader")
            .field("decryptor", &self.decryptor)
            .field("eof", &self.eof)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StreamDecryptor {
    /// Wraps `inner`, positioned just after the object's head, in an [`AsyncRead`] of the
    /// plaintext.
    pub fn into_async_reader<R: AsyncRead + Unpin>(self, inner: R) -> AsyncDecryptingReader<R> {
        AsyncDecryptingReader {
            decryptor: self,
            inner,
            sealed: vec![0; SEALED_CHUNK_LEN],
            sealed_len: 0,
            plain: vec![0; CHUNK_LEN],
            plain_at: 0,
            plain_len: 0,
            eof: false,
            failed: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncDecryptingReader<R> {
    /// Reads one sealed chunk (or what is left before the end) and opens it.
    fn poll_next_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ended = false;
        while self.sealed_len < SEALED_CHUNK_LEN {
            let mut read = ReadBuf::new(&mut self.sealed[self.sealed_len..]);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                ended = true;
                break;
            }
            self.sealed_len += n;
        }
        let sealed = &self.sealed[..self.sealed_len];
        let n = if ended {
            self.decryptor
                .update_into(sealed, &mut self.plain)
                .and_then(|_| self.decryptor.finish_into(&mut self.plain))
        } else {
            self.decryptor.update_into(sealed, &mut self.plain)
        }
        .map_err(io::Error::other)?;
        (self.sealed_len, self.plain_at, self.plain_len, self.eof) = (0, 0, n, ended);
        Poll::Ready(Ok(()))
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncDecryptingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain_len {
                let n = (this.plain_len - this.plain_at).min(buf.remaining());
                buf.put_slice(&this.plain[this.plain_at..this.plain_at + n]);
                this.plain_at += n;
                return Poll::Ready(Ok(()));
            }
            if let Some(kind) = this.failed {
                return Poll::Ready(Err(io::Error::new(
                    kind,
                    "the stream failed at an earlier read",
                )));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Err(e) = ready!(this.poll_next_chunk(cx)) {
                this.failed = Some(e.kind());
                return Poll::Ready(Err(e));
            }
        }
    }
}

/// Reads the head of a streamed object from `reader` (header, salt and body commitment, nothing
/// more): the async [`read_head`](super::read_head).
///
/// # Errors
/// As for [`read_head`](super::read_head).
pub async fn read_head_async(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    while let Some(need) = head_needs(&head)? {
        let start = head.len();
        head.resize(need, 0);
        reader.read_exact(&mut head[start..]).await?;
    }
    Ok(head)
}
