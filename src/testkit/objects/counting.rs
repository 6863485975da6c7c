//! [`CountingStore`]: an `object_store` wrapper that counts what its inner store serves.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

/// Counts the requests an inner store answers, the bytes its `get`s return and the sizes of
/// the parts uploaded to it: what a test of an encrypting wrapper checks (a range read
/// fetches only what it needs; multipart parts have the size the store needs).
#[derive(Debug, Clone)]
pub struct CountingStore<T> {
    inner: Arc<T>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    gets: AtomicU64,
    bytes_read: AtomicU64,
    parts: Mutex<Vec<usize>>,
}

impl<T: ObjectStore> CountingStore<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner: Arc::new(inner),
            counts: Arc::default(),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// `get` requests answered so far (`get_ranges` counts one per range it fetches).
    pub fn gets(&self) -> u64 {
        self.counts.gets.load(Relaxed)
    }

    /// Bytes the answers of those requests held, once read.
    pub fn bytes_read(&self) -> u64 {
        self.counts.bytes_read.load(Relaxed)
    }

    /// The size of every multipart part uploaded, in the order `put_part` was called.
    pub fn part_sizes(&self) -> Vec<usize> {
        self.counts
            .parts
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Sets every count back to zero.
    pub fn reset(&self) {
        self.counts.gets.store(0, Relaxed);
        self.counts.bytes_read.store(0, Relaxed);
        if let Ok(mut parts) = self.counts.parts.lock() {
            parts.clear();
        }
    }
}

impl<T: ObjectStore> fmt::Display for CountingStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore({})", self.inner)
    }
}

#[async_trait]
impl<T: ObjectStore> ObjectStore for CountingStore<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(CountingUpload {
            upload,
            counts: self.counts.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.counts.gets.fetch_add(1, Relaxed);
        let mut result = self.inner.get_opts(location, options).await?;
        let counts = self.counts.clone();
        let payload = std::mem::replace(
            &mut result.payload,
            GetResultPayload::Stream(futures_util::stream::empty().boxed()),
        );
        let stream = GetResult {
            payload,
            meta: result.meta.clone(),
            range: result.range.clone(),
            attributes: Default::default(),
            extensions: Default::default(),
        }
        .into_stream()
        .inspect_ok(move |bytes| {
            counts.bytes_read.fetch_add(bytes.len() as u64, Relaxed);
        });
        result.payload = GetResultPayload::Stream(stream.boxed());
        Ok(result)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let got = self.inner.get_ranges(location, ranges).await?;
        self.counts.gets.fetch_add(ranges.len() as u64, Relaxed);
        let bytes: usize = got.iter().map(Bytes::len).sum();
        self.counts.bytes_read.fetch_add(bytes as u64, Relaxed);
        Ok(got)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct CountingUpload {
    upload: Box<dyn MultipartUpload>,
    counts: Arc<Counts>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if let Ok(mut parts) = self.counts.parts.lock() {
            parts.push(data.content_length());
        }
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.upload.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.upload.abort().await
    }
}
