//! Range reads: what can read byte ranges ([`RangeSource`]), which ranges a plaintext range
//! needs, and opening only the chunks that cover it.

use std::ops::{Range, RangeFrom, RangeFull};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use zeroize::Zeroizing;

use super::BodyKey;
use crate::error::{Error, Result};
use crate::format::{BODY_PREFIX_LEN, CHUNK_LEN, Form, Preamble, StreamLayout, stream_header_len};

/// Anything that can read byte ranges of one stored object: a file, a buffer, an object store.
///
/// `read_ranges` gets every range a read needs at once (the head and the chunks), so a remote
/// implementation can fetch them in one request.
#[async_trait]
pub trait RangeSource: Send + Sync {
    /// The object's length in bytes.
    async fn size(&self) -> Result<u64>;

    /// The bytes of each of `ranges`, in order; each exactly as long as its range (a source
    /// that returns fewer bytes makes the read fail).
    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>>;
}

#[async_trait]
impl RangeSource for Bytes {
    async fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }

    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        ranges.iter().map(|r| slice(self, r)).collect()
    }
}

#[async_trait]
impl RangeSource for Vec<u8> {
    async fn size(&self) -> Result<u64> {
        Ok(self.len() as u64)
    }

    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        ranges
            .iter()
            .map(|r| {
                let r = usize_range(r, self.len())?;
                Ok(Bytes::copy_from_slice(&self[r]))
            })
            .collect()
    }
}

fn slice(bytes: &Bytes, range: &Range<u64>) -> Result<Bytes> {
    Ok(bytes.slice(usize_range(range, bytes.len())?))
}

fn usize_range(range: &Range<u64>, len: usize) -> Result<Range<usize>> {
    let start = usize::try_from(range.start).ok();
    let end = usize::try_from(range.end).ok();
    match (start, end) {
        (Some(start), Some(end)) if start <= end && end <= len => Ok(start..end),
        _ => Err(Error::invalid_input("range outside the object")),
    }
}

/// A file read by positional reads on the blocking thread pool (safe to share between
/// concurrent readers).
#[derive(Clone, Debug)]
pub struct FileSource {
    file: Arc<std::fs::File>,
    size: u64,
    /// Without positional reads, a seek and a read must not interleave with another's.
    #[cfg(not(unix))]
    cursor: Arc<std::sync::Mutex<()>>,
}

impl FileSource {
    /// Opens `path` for range reads.
    ///
    /// # Errors
    /// The I/O error, as an [`Error`] of the matching kind, if it cannot be opened.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_owned();
        crate::files::blocking(move || {
            let file = std::fs::File::open(&path)?;
            let size = file.metadata()?.len();
            Ok(Self {
                file: Arc::new(file),
                size,
                #[cfg(not(unix))]
                cursor: Arc::default(),
            })
        })
        .await
    }
}

#[async_trait]
impl RangeSource for FileSource {
    async fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    async fn read_ranges(&self, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let (file, ranges) = (self.file.clone(), ranges.to_vec());
        #[cfg(not(unix))]
        let cursor = self.cursor.clone();
        crate::files::blocking(move || {
            #[cfg(not(unix))]
            let _cursor = cursor
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?;
            ranges
                .iter()
                .map(|r| {
                    let len = usize::try_from(r.end.saturating_sub(r.start))
                        .map_err(|_| std::io::Error::other("range too long"))?;
                    let mut buf = vec![0u8; len];
                    read_exact_at(&file, &mut buf, r.start)?;
                    Ok(Bytes::from(buf))
                })
                .collect::<std::io::Result<Vec<_>>>()
                .map_err(Error::from)
        })
        .await
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(not(unix))]
fn read_exact_at(mut file: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

/// Which plaintext bytes a range read wants; like HTTP `Range` and object_store's `GetRange`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ByteRange {
    /// `start..end`, cut at the end of the plaintext.
    Bounded(Range<u64>),
    /// From an offset to the end.
    From(u64),
    /// The last `n` bytes (all of them if the plaintext is shorter).
    Suffix(u64),
}

impl From<Range<u64>> for ByteRange {
    fn from(r: Range<u64>) -> Self {
        Self::Bounded(r)
    }
}

impl From<RangeFrom<u64>> for ByteRange {
    fn from(r: RangeFrom<u64>) -> Self {
        Self::From(r.start)
    }
}

impl From<RangeFull> for ByteRange {
    fn from(_: RangeFull) -> Self {
        Self::From(0)
    }
}

impl ByteRange {
    /// The bounded range this is for a plaintext of `len` bytes (`From` and `Suffix` reach
    /// the end, so their reads authenticate the final chunk).
    fn resolve(&self, len: u64) -> Range<u64> {
        match *self {
            Self::Bounded(ref r) => r.clone(),
            Self::From(start) => start..u64::MAX,
            Self::Suffix(n) => len.saturating_sub(n)..u64::MAX,
        }
    }
}

/// Bytes of a range read, fetched: the object's head and the span of chunks the range needs.
pub(crate) struct Fetched {
    pub(crate) layout: StreamLayout,
    pub(crate) head: Bytes,
    chunks: Range<u64>,
    span: Bytes,
    wanted: Range<u64>,
}

impl Fetched {
    /// The length of the object's cmek header.
    pub(crate) fn header_len(&self) -> usize {
        self.layout.header_len() as usize
    }

    /// Opens the chunks and cuts the wanted bytes out of them; returns them and how many
    /// chunks were decrypted.
    pub(crate) fn open(&self, body: &BodyKey) -> Result<(Vec<u8>, u64)> {
        // Wiped if a later chunk fails: no plaintext of a failed read is left behind.
        let mut out = Zeroizing::new(Vec::with_capacity(
            (self.wanted.end - self.wanted.start) as usize,
        ));
        let mut scratch = Zeroizing::new(vec![0u8; CHUNK_LEN]);
        let span_start = self.layout.chunk_range(self.chunks.start).start;
        for index in self.chunks.clone() {
            let at = self.layout.chunk_range(index);
            let sealed = self
                .span
                .get((at.start - span_start) as usize..(at.end - span_start) as usize)
                .ok_or_else(|| Error::invalid_input("the source returned a short range"))?;
            let plain_len = sealed.len().saturating_sub(crate::format::TAG_LEN);
            body.open_chunk_into(index, sealed, &mut scratch[..plain_len])?;
            let plain = self.layout.chunk_plaintext(index);
            let from = self.wanted.start.max(plain.start);
            let to = self.wanted.end.min(plain.end);
            if from < to {
                out.extend_from_slice(
                    &scratch[(from - plain.start) as usize..(to - plain.start) as usize],
                );
            }
        }
        Ok((
            std::mem::take(&mut *out),
            self.chunks.end - self.chunks.start,
        ))
    }
}

/// The most chunk bytes a read fetches on the guess that the object is a compact streamed
/// envelope (a wrong guess costs no more than this).
const SPECULATE_MAX: u64 = 256 << 10;

/// How much of the object's start a read fetches when it does not know the header's length.
const HEAD_GUESS: u64 = 2048;

/// Fetches what reading `range` of the streamed object in `source` needs. On the guess that it
/// is a compact streamed envelope (the form for objects, whose header length is known), the
/// head and the chunks come in one request, with the object's first 2 KiB so that a wrong guess
/// (form `0x04`) usually needs only one more request, for the chunks. A read of more than
/// 256 KiB of chunks asks for the head first.
pub(crate) async fn read_range(
    source: &(impl RangeSource + ?Sized),
    range: &ByteRange,
) -> Result<Fetched> {
    let size = source.size().await?;
    let head_guess = 0..HEAD_GUESS.min(size);
    let mut prefix = None;
    if let Ok(layout) = StreamLayout::compact(size)
        && let Ok([head, span]) = layout.ciphertext_ranges(range.resolve(layout.plaintext_len()))
        && span.end - span.start <= SPECULATE_MAX
    {
        let first = head.start..head.end.max(head_guess.end);
        let [first_bytes, span_bytes] = read_two(source, first, span).await?;
        if Preamble::peek(&first_bytes)?.form == Form::StreamedCompact {
            let head_bytes = first_bytes.slice(..(head.end - head.start) as usize);
            return assemble(layout, range, head_bytes, span_bytes);
        }
        prefix = Some(first_bytes);
    }
    let mut prefix = match prefix {
        Some(bytes) => bytes,
        None => fetch_one(source, head_guess).await?,
    };
    let header_len = loop {
        match stream_header_len(&prefix)? {
            Ok(len) => break len,
            Err(at_least) if (at_least as u64) <= size => {
                prefix = fetch_one(source, 0..at_least as u64).await?;
            }
            Err(_) => return Err(Error::invalid_input("truncated streamed envelope")),
        }
    };
    let layout = StreamLayout::new(header_len as u64, size)?;
    let [head, span] = layout.ciphertext_ranges(range.resolve(layout.plaintext_len()))?;
    let head_bytes = if prefix.len() as u64 >= head.end {
        prefix.slice(..head.end as usize)
    } else {
        fetch_one(source, head).await?
    };
    let span_bytes = if span.is_empty() {
        Bytes::new()
    } else {
        fetch_one(source, span).await?
    };
    assemble(layout, range, head_bytes, span_bytes)
}

/// The fetched head and chunk span of a read of `range`, checked against `layout`.
pub(crate) fn assemble(
    layout: StreamLayout,
    range: &ByteRange,
    head: Bytes,
    span: Bytes,
) -> Result<Fetched> {
    let wanted = range.resolve(layout.plaintext_len());
    let chunks = layout.chunks_for(wanted.clone())?;
    let [head_range, span_range] = layout.ciphertext_ranges(wanted.clone())?;
    if head.len() as u64 != head_range.end - head_range.start
        || span.len() as u64 != span_range.end - span_range.start
    {
        return Err(Error::invalid_input("the source returned a short range"));
    }
    Preamble::peek(&head)?;
    debug_assert!(head.len() >= layout.header_len() as usize + BODY_PREFIX_LEN);
    Ok(Fetched {
        layout,
        head,
        chunks,
        span,
        wanted: wanted.start..wanted.end.min(layout.plaintext_len()),
    })
}

/// Two ranges in one request, each checked for its length.
async fn read_two(
    source: &(impl RangeSource + ?Sized),
    first: Range<u64>,
    second: Range<u64>,
) -> Result<[Bytes; 2]> {
    let got = source.read_ranges(&[first.clone(), second.clone()]).await?;
    let Ok([a, b]) = <[Bytes; 2]>::try_from(got) else {
        return Err(Error::invalid_input(
            "the source returned another number of ranges",
        ));
    };
    if a.len() as u64 != first.end - first.start || b.len() as u64 != second.end - second.start {
        return Err(Error::invalid_input("the source returned a short range"));
    }
    Ok([a, b])
}

async fn fetch_one(source: &(impl RangeSource + ?Sized), range: Range<u64>) -> Result<Bytes> {
    let len = range.end - range.start;
    let got = source.read_ranges(&[range]).await?;
    match <[Bytes; 1]>::try_from(got) {
        Ok([bytes]) if bytes.len() as u64 == len => Ok(bytes),
        _ => Err(Error::invalid_input("the source returned a short range")),
    }
}
