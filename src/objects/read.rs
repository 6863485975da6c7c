//! `get`: whole objects, ranges and heads, decrypted; `get_ranges` behind one head request.

use std::ops::Range;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path;
use object_store::{
    Attributes, Extensions, GetOptions, GetRange, GetResult, GetResultPayload,
    OBJECT_STORE_COALESCE_DEFAULT, ObjectMeta, ObjectStore, coalesce_ranges,
};

use super::EncryptedStore;
use super::body::{Ciphertext, Window, decrypting};
use super::errors::{caller_attributes, layout_of, range_error};
use crate::error::Error;
use crate::format::{
    BODY_PREFIX_LEN, CHUNK_LEN, COMPACT_STREAM_HEADER_LEN, Form, Preamble, SEALED_CHUNK_LEN,
    StreamLayout, TAG_LEN,
};
use crate::ids::CompartmentId;
use crate::stream::{ByteRange, StreamDecryptor, assemble};

/// The head of every object: the compact streamed header, salt and body commitment.
pub(crate) const HEAD_LEN: u64 = (COMPACT_STREAM_HEADER_LEN + BODY_PREFIX_LEN) as u64;
const CHUNK: u64 = CHUNK_LEN as u64;
const SEALED: u64 = SEALED_CHUNK_LEN as u64;
const TAG: u64 = TAG_LEN as u64;

/// How many times a range read starts over when the object changes between its requests.
const READ_ATTEMPTS: usize = 3;

/// How a range read asks the inner store for the bytes it needs.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    /// The range starts in chunk 0: one request from the object's start.
    FromStart(GetRange),
    /// The head and the chunks in two concurrent requests (the chunks are planned without
    /// the object's length; a rare miss costs one more request).
    Concurrent(GetRange),
    /// The head first, since only the object's length says where a suffix starts.
    HeadFirst,
}

fn chunk_start(index: u64) -> u64 {
    HEAD_LEN.saturating_add(index.saturating_mul(SEALED))
}

fn plan(range: &GetRange) -> Plan {
    match *range {
        GetRange::Bounded(ref r) => {
            let (first, last) = (r.start / CHUNK, r.end.saturating_sub(1) / CHUNK);
            // One tag past the last chunk: if the plaintext ends exactly there, the empty
            // final chunk comes with it.
            let end = chunk_start(last.saturating_add(1)).saturating_add(TAG);
            if first == 0 {
                Plan::FromStart(GetRange::Bounded(0..end))
            } else {
                Plan::Concurrent(GetRange::Bounded(chunk_start(first)..end))
            }
        }
        GetRange::Offset(offset) => match offset / CHUNK {
            0 => Plan::FromStart(GetRange::Offset(0)),
            first => Plan::Concurrent(GetRange::Offset(chunk_start(first))),
        },
        GetRange::Suffix(_) => Plan::HeadFirst,
    }
}

/// One answer of the inner store, opened: its metadata and its stored bytes.
struct Answer {
    meta: ObjectMeta,
    attributes: Attributes,
    extensions: Extensions,
    /// The stored bytes `stored` holds.
    range: Range<u64>,
    stored: Ciphertext,
}

impl From<GetResult> for Answer {
    fn from(result: GetResult) -> Self {
        let GetResult {
            payload,
            meta,
            range,
            attributes,
            extensions,
        } = result;
        let stream = GetResult {
            payload,
            meta: meta.clone(),
            range: range.clone(),
            attributes: Attributes::new(),
            extensions: Extensions::new(),
        }
        .into_stream();
        Self {
            meta,
            attributes,
            extensions,
            range,
            stored: Ciphertext::new(stream),
        }
    }
}

impl Answer {
    /// Splits the object's head off an answer that starts at the object's start.
    async fn split_head(&mut self) -> object_store::Result<Bytes> {
        if self.range.start != 0 {
            return Err(Error::invalid_input("the store answered another range").into());
        }
        let head = self.stored.split_head(HEAD_LEN as usize).await?;
        self.range.start = HEAD_LEN;
        Ok(head)
    }
}

/// Whether two answers come from one version of the object.
fn same_version(a: &ObjectMeta, b: &ObjectMeta) -> bool {
    a.e_tag == b.e_tag
        && a.version == b.version
        && a.size == b.size
        && a.last_modified == b.last_modified
}

fn with_range(options: &GetOptions, range: GetRange) -> GetOptions {
    GetOptions {
        range: Some(range),
        ..options.clone()
    }
}

/// Options that read `range` of the version `meta` describes, and no other.
fn pinned(meta: &ObjectMeta, range: Range<u64>, extensions: &Extensions) -> GetOptions {
    GetOptions {
        if_match: meta.e_tag.clone(),
        version: meta.version.clone(),
        range: Some(GetRange::Bounded(range)),
        extensions: extensions.clone(),
        ..GetOptions::default()
    }
}

fn plaintext_result(
    mut meta: ObjectMeta,
    layout: StreamLayout,
    range: Range<u64>,
    attributes: Attributes,
    extensions: Extensions,
    stream: futures_util::stream::BoxStream<'static, object_store::Result<Bytes>>,
) -> GetResult {
    meta.size = layout.plaintext_len();
    GetResult {
        payload: GetResultPayload::Stream(stream),
        meta,
        range,
        attributes: caller_attributes(attributes),
        extensions,
    }
}

impl<T: ObjectStore> EncryptedStore<T> {
    pub(super) async fn get_decrypted(
        &self,
        location: &Path,
        mut options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if options.head {
            let mut result = self.inner.get_opts(location, options).await?;
            let layout = layout_of(&result.meta)?;
            result.meta.size = layout.plaintext_len();
            result.range = 0..layout.plaintext_len();
            result.payload = GetResultPayload::Stream(futures_util::stream::empty().boxed());
            result.attributes = caller_attributes(result.attributes);
            return Ok(result);
        }
        let compartment = self.compartment_of(location)?;
        match options.range.take() {
            None => self.get_whole(location, options, &compartment).await,
            Some(range) => {
                range.is_valid().map_err(range_error)?;
                for _ in 0..READ_ATTEMPTS {
                    if let Some(result) = self
                        .try_range(location, &options, &range, &compartment)
                        .await?
                    {
                        return Ok(result);
                    }
                }
                Err(Error::transient("the object changed during every attempt to read it").into())
            }
        }
    }

    async fn get_whole(
        &self,
        location: &Path,
        options: GetOptions,
        compartment: &CompartmentId,
    ) -> object_store::Result<GetResult> {
        let mut answer = Answer::from(self.inner.get_opts(location, options).await?);
        let layout = layout_of(&answer.meta)?;
        let head = answer.split_head().await?;
        let decryptor = self.decryptor(compartment, location, &head).await?;
        let window = Window {
            skip_stored: 0,
            stored_len: layout.total_len().saturating_sub(HEAD_LEN),
            skip_plaintext: 0,
            len: layout.plaintext_len(),
            through_final: true,
        };
        let stream = decrypting(decryptor, answer.stored, window, self.buffers.clone());
        Ok(plaintext_result(
            answer.meta,
            layout,
            0..layout.plaintext_len(),
            answer.attributes,
            answer.extensions,
            stream,
        ))
    }

    /// One attempt at a range read; `None` if the object changed between its requests.
    async fn try_range(
        &self,
        location: &Path,
        options: &GetOptions,
        range: &GetRange,
        compartment: &CompartmentId,
    ) -> object_store::Result<Option<GetResult>> {
        let head_options = with_range(options, GetRange::Bounded(0..HEAD_LEN));
        let (mut head_answer, chunks_answer) = match plan(range) {
            Plan::FromStart(r) => {
                let answer = Answer::from(
                    self.inner
                        .get_opts(location, with_range(options, r))
                        .await?,
                );
                (answer, None)
            }
            Plan::Concurrent(r) => {
                let (head, chunks) = futures_util::future::join(
                    self.inner.get_opts(location, head_options),
                    self.inner.get_opts(location, with_range(options, r)),
                )
                .await;
                (Answer::from(head?), Some(chunks))
            }
            Plan::HeadFirst => (
                Answer::from(self.inner.get_opts(location, head_options).await?),
                None,
            ),
        };
        let head = head_answer.split_head().await?;
        let layout = layout_of(&head_answer.meta)?;
        let wanted = range
            .as_range(layout.plaintext_len())
            .map_err(range_error)?;
        let chunks = layout.chunks_for(wanted.clone())?;
        let [_, needed] = layout.ciphertext_ranges(wanted.clone())?;

        let head_meta = head_answer.meta.clone();
        let covers = |answer: &Answer| {
            same_version(&answer.meta, &head_meta)
                && answer.range.start <= needed.start
                && needed.end <= answer.range.end
        };
        let fetched = match chunks_answer {
            Some(result) => Some(Answer::from(result?)).filter(covers),
            None => None,
        };
        let body = match fetched {
            Some(answer) => answer,
            None if covers(&head_answer) => head_answer.take_body(),
            None => {
                let options = pinned(&head_meta, needed.clone(), &options.extensions);
                match self.inner.get_opts(location, options).await {
                    Ok(result) => match Some(Answer::from(result)).filter(covers) {
                        Some(answer) => answer,
                        None => return Ok(None),
                    },
                    Err(object_store::Error::Precondition { .. }) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        };

        let decryptor = self
            .decryptor(compartment, location, &head)
            .await?
            .starting_at(chunks.start);
        let window = Window {
            skip_stored: needed.start - body.range.start,
            stored_len: needed.end - needed.start,
            skip_plaintext: wanted.start.saturating_sub(chunks.start * CHUNK),
            len: wanted.end - wanted.start,
            through_final: chunks.end == layout.chunk_count(),
        };
        self.client.count_range_chunks(chunks.end - chunks.start);
        let stream = decrypting(decryptor, body.stored, window, self.buffers.clone());
        Ok(Some(plaintext_result(
            head_answer.meta,
            layout,
            wanted,
            head_answer.attributes,
            head_answer.extensions,
            stream,
        )))
    }

    /// `get_ranges`: one request for the head, then the chunks of every range, coalesced as
    /// `object_store` does and pinned to the head's version.
    pub(super) async fn get_ranges_decrypted(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let compartment = self.compartment_of(location)?;
        for _ in 0..READ_ATTEMPTS {
            match self.try_ranges(location, ranges, &compartment).await {
                // The object changed between the head and the chunks: read it again.
                Err(object_store::Error::Precondition { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::transient("the object changed during every attempt to read it").into())
    }

    async fn try_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
        compartment: &CompartmentId,
    ) -> object_store::Result<Vec<Bytes>> {
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..HEAD_LEN)),
            ..GetOptions::default()
        };
        let mut answer = Answer::from(self.inner.get_opts(location, options).await?);
        let head = answer.split_head().await?;
        let layout = layout_of(&answer.meta)?;
        let mut wanted = Vec::with_capacity(ranges.len());
        let mut spans = Vec::with_capacity(ranges.len());
        for range in ranges {
            let plaintext = GetRange::Bounded(range.clone())
                .as_range(layout.plaintext_len())
                .map_err(range_error)?;
            let [_, span] = layout.ciphertext_ranges(plaintext.clone())?;
            wanted.push(plaintext);
            spans.push(span);
        }
        let meta = &answer.meta;
        let fetched = coalesce_ranges(
            &spans,
            |span| async move {
                let len = span.end - span.start;
                let options = pinned(meta, span, &Extensions::new());
                let bytes = self
                    .inner
                    .get_opts(location, options)
                    .await?
                    .bytes()
                    .await?;
                if bytes.len() as u64 != len {
                    // A store without ETags or versions, and the object changed.
                    return Err(object_store::Error::Precondition {
                        path: location.to_string(),
                        source: "the store returned another length than asked".into(),
                    });
                }
                Ok(bytes)
            },
            OBJECT_STORE_COALESCE_DEFAULT,
        )
        .await?;
        let body = self
            .client
            .body_key(
                compartment,
                &head,
                COMPACT_STREAM_HEADER_LEN,
                self.binding.aad(location),
            )
            .await?;
        let mut out = Vec::with_capacity(ranges.len());
        for (plaintext, span) in wanted.into_iter().zip(fetched) {
            let fetched = assemble(layout, &ByteRange::Bounded(plaintext), head.clone(), span)?;
            let (bytes, chunks) = fetched.open(&body)?;
            self.client.count_range_chunks(chunks);
            out.push(Bytes::from(bytes));
        }
        Ok(out)
    }

    /// The decryptor of an object of this store whose head is `head`.
    async fn decryptor(
        &self,
        compartment: &CompartmentId,
        location: &Path,
        head: &[u8],
    ) -> object_store::Result<StreamDecryptor> {
        if Preamble::peek(head)?.form != Form::StreamedCompact {
            return Err(Error::invalid_input(format!(
                "{location} is not an object of an EncryptedStore (not a compact streamed envelope)"
            ))
            .into());
        }
        Ok(self
            .client
            .stream_decryptor(compartment, head, self.binding.aad(location))
            .await?)
    }
}

impl Answer {
    /// The rest of an answer whose head was split off, as the answer of the chunks.
    fn take_body(&mut self) -> Answer {
        Answer {
            meta: self.meta.clone(),
            attributes: Attributes::new(),
            extensions: Extensions::new(),
            range: self.range.clone(),
            stored: std::mem::replace(
                &mut self.stored,
                Ciphertext::new(futures_util::stream::empty().boxed()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_need_no_object_length_except_for_suffixes() {
        assert_eq!(
            plan(&GetRange::Bounded(0..10)),
            Plan::FromStart(GetRange::Bounded(0..HEAD_LEN + SEALED + TAG))
        );
        assert_eq!(
            plan(&GetRange::Bounded(CHUNK..CHUNK + 1)),
            Plan::Concurrent(GetRange::Bounded(
                HEAD_LEN + SEALED..HEAD_LEN + 2 * SEALED + TAG
            ))
        );
        // A range ending on a chunk boundary needs no more than that chunk and a tag.
        assert_eq!(
            plan(&GetRange::Bounded(2 * CHUNK..3 * CHUNK)),
            Plan::Concurrent(GetRange::Bounded(
                HEAD_LEN + 2 * SEALED..HEAD_LEN + 3 * SEALED + TAG
            ))
        );
        assert_eq!(
            plan(&GetRange::Offset(5)),
            Plan::FromStart(GetRange::Offset(0))
        );
        assert_eq!(
            plan(&GetRange::Offset(CHUNK)),
            Plan::Concurrent(GetRange::Offset(HEAD_LEN + SEALED))
        );
        assert_eq!(plan(&GetRange::Suffix(5)), Plan::HeadFirst);
        // Far past any object: saturates instead of overflowing.
        assert!(matches!(
            plan(&GetRange::Bounded(u64::MAX - 1..u64::MAX)),
            Plan::Concurrent(GetRange::Bounded(_))
        ));
    }
}
