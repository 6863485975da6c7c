//! `std::io` adapters: [`EncryptingWriter`] and [`DecryptingReader`], and [`read_head`].

use std::io::{self, Read, Write};

use super::{StreamDecryptor, StreamEncryptor};
use crate::format::{BODY_PREFIX_LEN, CHUNK_LEN, SEALED_CHUNK_LEN, stream_header_len};

/// Plaintext chunks an adapter handles per call: bounds its buffer at 64 KiB.
pub(super) const BATCH_CHUNKS: usize = 4;

/// A [`Write`] that encrypts into a streamed object written to `W`.
///
/// Call [`finish`](Self::finish) at the end: it writes the final chunk and returns `W`. An
/// unfinished writer leaves an object that does not decrypt.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> cmek::Result<()> {
/// # use std::sync::Arc;
/// # use std::io::{Read, Write};
/// # use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, stream::StreamForm};
/// # let client = Client::builder()
/// #     .key(KeyConfigId::new("local")?, Arc::new(LocalKms::generate("local:k")?))
/// #     .build()?;
/// # let tenant = CompartmentId::new("t")?;
/// let encryptor = client.stream_encryptor(&tenant, b"video/7", StreamForm::SelfContained).await?;
/// let mut writer = encryptor.into_writer(Vec::new());
/// writer.write_all(&vec![7u8; 100_000])?;
/// let object = writer.finish()?;
///
/// let mut reader = std::io::Cursor::new(&object);
/// let head = cmek::stream::read_head(&mut reader)?;
/// let decryptor = client.stream_decryptor(&tenant, &head, b"video/7").await?;
/// let mut plaintext = Vec::new();
/// decryptor.into_reader(reader).read_to_end(&mut plaintext)?;
/// assert_eq!(plaintext, vec![7u8; 100_000]);
/// # Ok(()) }
/// ```
pub struct EncryptingWriter<W> {
    encryptor: StreamEncryptor,
    inner: W,
    buf: Vec<u8>,
    /// The inner writer failed: chunks may be lost, so the object can no longer be finished.
    failed: bool,
}

impl<W> std::fmt::Debug for EncryptingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptingWriter")
            .field("encryptor", &self.encryptor)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StreamEncryptor {
    /// Wraps `inner` in a [`Write`] that encrypts into it.
    pub fn into_writer<W: Write>(self, inner: W) -> EncryptingWriter<W> {
        EncryptingWriter {
            encryptor: self,
            inner,
            buf: vec![0; BATCH_CHUNKS * SEALED_CHUNK_LEN + super::MAX_HEAD_LEN],
            failed: false,
        }
    }
}

impl<W: Write> EncryptingWriter<W> {
    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "an earlier write to the inner writer failed: the object is lost, start again",
            ));
        }
        Ok(())
    }

    /// Writes `n` bytes of `buf` to the inner writer; a failure ends the object.
    fn drain(&mut self, n: usize) -> io::Result<()> {
        let written = self.inner.write_all(&self.buf[..n]);
        self.failed |= written.is_err();
        written
    }

    /// Writes the final chunk, flushes and returns the inner writer: the object is complete.
    ///
    /// # Errors
    /// What the encryptor or the inner writer fail with.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        let n = self
            .encryptor
            .finish_into(&mut self.buf)
            .map_err(io::Error::other)?;
        self.drain(n)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: Write> Write for EncryptingWriter<W> {
    fn write(&mut self, plaintext: &[u8]) -> io::Result<usize> {
        self.check()?;
        let take = plaintext.len().min(BATCH_CHUNKS * CHUNK_LEN);
        let n = self
            .encryptor
            .update_into(&plaintext[..take], &mut self.buf)
            .map_err(io::Error::other)?;
        self.drain(n)?;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A [`Read`] of the plaintext of a streamed object read from `R` (after its head).
///
/// It returns only authenticated bytes; end of file (`Ok(0)`) comes only after the final chunk
/// was authenticated, so a truncated object ends in an error, never in a short success.
/// Reads of 16 KiB or more decrypt straight into the caller's buffer.
pub struct DecryptingReader<R> {
    decryptor: StreamDecryptor,
    inner: R,
    sealed: Vec<u8>,
    plain: Vec<u8>,
    plain_at: usize,
    plain_len: usize,
    eof: bool,
    /// Why an earlier read failed: the stream is over.
    failed: Option<io::ErrorKind>,
}

impl<R> std::fmt::Debug for DecryptingReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptingReader")
            .field("decryptor", &self.decryptor)
            .field("eof", &self.eof)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl StreamDecryptor {
    /// Wraps `inner`, positioned just after the object's head, in a [`Read`] of the plaintext.
    pub fn into_reader<R: Read>(self, inner: R) -> DecryptingReader<R> {
        DecryptingReader {
            decryptor: self,
            inner,
            sealed: vec![0; SEALED_CHUNK_LEN],
            plain: vec![0; CHUNK_LEN],
            plain_at: 0,
            plain_len: 0,
            eof: false,
            failed: None,
        }
    }
}

impl<R: Read> Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_at < self.plain_len {
                let n = (self.plain_len - self.plain_at).min(buf.len());
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                return Ok(n);
            }
            if let Some(kind) = self.failed {
                return Err(io::Error::new(kind, "the stream failed at an earlier read"));
            }
            if self.eof || buf.is_empty() {
                return Ok(0);
            }
            match self.next_chunk(buf) {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {}
                Err(e) => {
                    // The stream is over: a later read must not look like a clean end.
                    self.failed = Some(e.kind());
                    return Err(e);
                }
            }
        }
    }
}

impl<R: Read> DecryptingReader<R> {
    /// Reads and opens the next chunk: straight into `buf` when it holds a whole chunk
    /// (`Some(len)`), else into the reader's own buffer (`None`).
    fn next_chunk(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        {
            let got = read_full(&mut self.inner, &mut self.sealed)?;
            let (out, direct) = if buf.len() >= CHUNK_LEN {
                (&mut *buf, true)
            } else {
                (&mut self.plain[..], false)
            };
            let last = got < SEALED_CHUNK_LEN;
            let n = if last {
                self.decryptor
                    .update_into(&self.sealed[..got], out)
                    .and_then(|_| self.decryptor.finish_into(out))
            } else {
                self.decryptor.update_into(&self.sealed, out)
            }
            .map_err(io::Error::other)?;
            self.eof = last;
            if direct {
                return Ok(Some(n));
            }
            (self.plain_at, self.plain_len) = (0, n);
            Ok(None)
        }
    }
}

/// Reads until `buf` is full or the reader ends; returns how much it read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads the head of a streamed object from `reader` (its header, salt and body commitment,
/// nothing more), to pass to [`Client::stream_decryptor`](crate::Client::stream_decryptor).
///
/// # Errors
/// `InvalidData` for bytes that are not a streamed envelope; `UnexpectedEof` for a truncated
/// head; the reader's errors.
pub fn read_head(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    while let Some(need) = head_needs(&head)? {
        let start = head.len();
        head.resize(need, 0);
        reader.read_exact(&mut head[start..])?;
    }
    Ok(head)
}

/// How long `head` must grow to hold the whole head of its streamed envelope (`None`: it
/// does). Shared by [`read_head`] and [`read_head_async`](super::read_head_async).
pub(super) fn head_needs(head: &[u8]) -> io::Result<Option<usize>> {
    let needed = match stream_header_len(head).map_err(invalid_data)? {
        Ok(header) => header + BODY_PREFIX_LEN,
        Err(at_least) => at_least,
    };
    Ok((head.len() < needed).then_some(needed))
}

fn invalid_data(e: crate::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
