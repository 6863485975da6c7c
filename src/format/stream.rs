//! Streamed envelopes (forms `0x04` and `0x05`): where every byte of an object lies, from the
//! header length and the object length alone. No keys, no I/O.
//!
//! ```text
//! header (form 0x04: the DEK record fields; form 0x05: preamble and DEK id, 20 bytes)
//! || salt (24) || commitment (32)                      the Cobblestone-256 prefix
//! || chunk 0 || chunk 1 || ... || final chunk          16 KiB + tag each; the final one shorter
//! ```

use std::ops::Range;

use super::{COMMITMENT_LEN, Preamble, TAG_LEN};
use crate::error::{Error, Result};

/// Plaintext bytes in every chunk but the last, which always holds fewer (possibly none).
pub const CHUNK_LEN: usize = 16 * 1024;
/// Bytes of a full chunk once sealed: its plaintext and the GCM tag.
pub const SEALED_CHUNK_LEN: usize = CHUNK_LEN + TAG_LEN;
/// Length of the random salt that starts a streamed body.
pub const SALT_LEN: usize = 24;
/// Bytes between the header and chunk 0: salt and body commitment.
pub const BODY_PREFIX_LEN: usize = SALT_LEN + COMMITMENT_LEN;
/// Most chunks one object may have (2^38, so at most 4 PiB − 1 byte of plaintext).
pub const MAX_CHUNKS: u64 = 1 << 38;
/// Header length of a compact streamed envelope (form `0x05`): preamble and DEK id.
pub const COMPACT_STREAM_HEADER_LEN: usize = Preamble::LEN;

const CHUNK: u64 = CHUNK_LEN as u64;
const SEALED: u64 = SEALED_CHUNK_LEN as u64;
const TAG: u64 = TAG_LEN as u64;

/// The layout of one streamed envelope: its header length and total length say where each
/// chunk starts, how long the plaintext is, and which bytes a plaintext range needs.
///
/// The lengths come from the stored object, so they are claims until the final chunk has
/// been authenticated; readers of this crate do that before answering anything that depends
/// on the length (a range reaching the end, a suffix).
///
/// ```
/// use cmek::format::StreamLayout;
///
/// // A compact streamed envelope of a 40,000-byte object.
/// let layout = StreamLayout::compact(StreamLayout::object_len(20, 40_000))?;
/// assert_eq!(layout.plaintext_len(), 40_000);
/// assert_eq!(layout.chunk_count(), 3); // 16 KiB, 16 KiB, 7,232 bytes
/// // Byte 20,000 is in chunk 1: fetch the header and prefix, then that chunk.
/// let [head, chunks] = layout.ciphertext_ranges(20_000..20_001)?;
/// assert_eq!(head, 0..76);
/// assert_eq!(chunks, 76 + 16_400..76 + 2 * 16_400);
/// # Ok::<(), cmek::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLayout {
    header_len: u64,
    object_len: u64,
    plaintext_len: u64,
}

impl StreamLayout {
    /// The layout of an object of `object_len` bytes whose header is `header_len` bytes long.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a length no streamed envelope can
    /// have: shorter than header, prefix and an empty final chunk; ending exactly on a chunk
    /// boundary or inside a tag (truncated); more than 2^38 chunks.
    pub fn new(header_len: u64, object_len: u64) -> Result<Self> {
        let truncated = || Error::invalid_input("truncated streamed envelope");
        let body = object_len
            .checked_sub(header_len)
            .and_then(|rest| rest.checked_sub(BODY_PREFIX_LEN as u64))
            .ok_or_else(truncated)?;
        let (full, last) = (body / SEALED, body % SEALED);
        if last < TAG {
            return Err(truncated());
        }
        if full >= MAX_CHUNKS {
            return Err(Error::invalid_input(
                "streamed envelope longer than 2^38 chunks",
            ));
        }
        Ok(Self {
            header_len,
            object_len,
            plaintext_len: full * CHUNK + (last - TAG),
        })
    }

    /// The layout of a compact streamed envelope (form `0x05`, a 20-byte header).
    ///
    /// # Errors
    /// As for [`StreamLayout::new`].
    pub fn compact(object_len: u64) -> Result<Self> {
        Self::new(COMPACT_STREAM_HEADER_LEN as u64, object_len)
    }

    /// The length of a streamed envelope of `plaintext_len` bytes under a `header_len`-byte
    /// header (saturating at `u64::MAX`, far beyond the 4 PiB limit).
    pub fn object_len(header_len: u64, plaintext_len: u64) -> u64 {
        let chunks = plaintext_len / CHUNK + 1;
        header_len
            .saturating_add(BODY_PREFIX_LEN as u64)
            .saturating_add(plaintext_len)
            .saturating_add(chunks.saturating_mul(TAG))
    }

    /// Bytes before the body: the cmek header.
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Total length of the envelope.
    pub fn total_len(&self) -> u64 {
        self.object_len
    }

    /// Plaintext length (as the object's length claims it; see the type's docs).
    pub fn plaintext_len(&self) -> u64 {
        self.plaintext_len
    }

    /// Number of chunks, the final (short, possibly empty) one included.
    pub fn chunk_count(&self) -> u64 {
        self.plaintext_len / CHUNK + 1
    }

    /// Index of the final chunk.
    pub fn final_chunk(&self) -> u64 {
        self.plaintext_len / CHUNK
    }

    /// Where chunk `index` lies in the envelope (tag included); empty past the final chunk.
    pub fn chunk_range(&self, index: u64) -> Range<u64> {
        if index > self.final_chunk() {
            return self.object_len..self.object_len;
        }
        let start = self.header_len + BODY_PREFIX_LEN as u64 + index * SEALED;
        start..start.saturating_add(SEALED).min(self.object_len)
    }

    /// The plaintext chunk `index` holds.
    pub fn chunk_plaintext(&self, index: u64) -> Range<u64> {
        let start = index.saturating_mul(CHUNK).min(self.plaintext_len);
        start..start.saturating_add(CHUNK).min(self.plaintext_len)
    }

    /// The chunks that must be decrypted to answer `plaintext` (clamped to the plaintext
    /// length): those covering it, and the final chunk whenever the range reaches the end, so
    /// that the length it is cut to is authenticated too. Empty for an empty range inside.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a range that starts after the end
    /// or ends before it starts.
    pub fn chunks_for(&self, plaintext: Range<u64>) -> Result<Range<u64>> {
        if plaintext.start > plaintext.end {
            return Err(Error::invalid_input("range ends before it starts"));
        }
        if plaintext.start > self.plaintext_len {
            return Err(Error::invalid_input(format!(
                "range starts at {} after the end of a {}-byte object",
                plaintext.start, self.plaintext_len
            )));
        }
        let end = plaintext.end.min(self.plaintext_len);
        let reaches_end = plaintext.end >= self.plaintext_len;
        let last = if reaches_end {
            self.final_chunk()
        } else if plaintext.start == end {
            return Ok(0..0);
        } else {
            (end - 1) / CHUNK
        };
        let first = if plaintext.start == end {
            last
        } else {
            plaintext.start / CHUNK
        };
        Ok(first..last + 1)
    }

    /// The two byte ranges of the envelope a reader of `plaintext` needs: the header with the
    /// body prefix, and the chunks of [`StreamLayout::chunks_for`] (empty if none). Fetch both
    /// in one request (object stores coalesce them when they are close).
    ///
    /// # Errors
    /// As for [`StreamLayout::chunks_for`].
    pub fn ciphertext_ranges(&self, plaintext: Range<u64>) -> Result<[Range<u64>; 2]> {
        let chunks = self.chunks_for(plaintext)?;
        let head = 0..self.header_len + BODY_PREFIX_LEN as u64;
        if chunks.is_empty() {
            return Ok([head.clone(), head.end..head.end]);
        }
        let span = self.chunk_range(chunks.start).start..self.chunk_range(chunks.end - 1).end;
        Ok([head, span])
    }
}

/// The ranges of a **compact** streamed envelope of `object_len` bytes that hold `plaintext`:
/// [`StreamLayout::ciphertext_ranges`] of [`StreamLayout::compact`].
///
/// # Errors
/// As for [`StreamLayout::compact`] and [`StreamLayout::chunks_for`].
pub fn ciphertext_ranges(plaintext: Range<u64>, object_len: u64) -> Result<[Range<u64>; 2]> {
    StreamLayout::compact(object_len)?.ciphertext_ranges(plaintext)
}

/// How long the header of the streamed envelope starting with `bytes` is, as far as `bytes`
/// tells: `Ok(Ok(len))`, or `Ok(Err(n))` when it needs at least `n` bytes to say.
///
/// # Errors
/// [`InvalidInput`](crate::ErrorKind::InvalidInput) when the preamble is not a streamed form's.
pub(crate) fn header_len(bytes: &[u8]) -> Result<std::result::Result<usize, usize>> {
    if bytes.len() < Preamble::LEN {
        return Ok(Err(Preamble::LEN));
    }
    match Preamble::peek(bytes)?.form {
        super::Form::StreamedCompact => Ok(Ok(COMPACT_STREAM_HEADER_LEN)),
        super::Form::Streamed => Ok(super::record::header_len(bytes)),
        _ => Err(Error::invalid_input(
            "not a streamed envelope (form 0x04 or 0x05)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_follow_the_spec() {
        for (plain, chunks) in [
            (0u64, 1u64),
            (1, 1),
            (16_383, 1),
            (16_384, 2),
            (16_385, 2),
            (3 * 16_384, 4),
        ] {
            let len = StreamLayout::object_len(20, plain);
            let layout = StreamLayout::compact(len).unwrap();
            assert_eq!(layout.plaintext_len(), plain);
            assert_eq!(layout.chunk_count(), chunks);
            assert_eq!(layout.chunk_range(layout.final_chunk()).end, len);
        }
    }

    #[test]
    fn impossible_lengths_are_truncations() {
        let base = 20 + BODY_PREFIX_LEN as u64;
        for len in [0, 19, base, base + 15, base + SEALED, base + SEALED + 15] {
            let err = StreamLayout::compact(len).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{len}: {err}");
        }
        assert!(StreamLayout::compact(base + 16).is_ok());
        assert!(StreamLayout::compact(base + SEALED + 16).is_ok());
        let too_long = base + MAX_CHUNKS * SEALED + 16;
        assert!(StreamLayout::compact(too_long).is_err());
        assert!(StreamLayout::compact(too_long - SEALED).is_ok());
    }

    #[test]
    fn ranges_cover_what_they_need_and_the_end_when_they_reach_it() {
        let layout = StreamLayout::compact(StreamLayout::object_len(20, 3 * 16_384)).unwrap();
        assert_eq!(layout.chunks_for(0..1).unwrap(), 0..1);
        assert_eq!(layout.chunks_for(16_383..16_385).unwrap(), 0..2);
        assert_eq!(layout.chunks_for(5..5).unwrap(), 0..0);
        // The last byte is in chunk 2; the empty chunk 3 is final and is read too.
        assert_eq!(layout.chunks_for(49_151..49_152).unwrap(), 2..4);
        assert_eq!(layout.chunks_for(49_152..49_152).unwrap(), 3..4);
        assert_eq!(layout.chunks_for(40_000..u64::MAX).unwrap(), 2..4);
        assert!(layout.chunks_for(49_153..49_160).is_err());
        let [head, span] = layout.ciphertext_ranges(0..1).unwrap();
        assert_eq!(head, 0..76);
        assert_eq!(span, 76..76 + SEALED);
    }
}
