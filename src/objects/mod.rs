//! [`EncryptedStore`]: an [`object_store`] wrapper that keeps every object under its
//! compartment's key.
//!
//! Every object is a compact streamed envelope (form `0x05`, see [`crate::stream`]): a 20-byte
//! header naming the compartment's DEK, then the Cobblestone-256 body in 16 KiB chunks. The
//! wrapped DEK lives in the client's [`DekStore`](crate::DekStore), so rotating or rewrapping
//! a compartment's key touches DEK records only and never rewrites an object.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cmek::{Client, KeyConfigId, LocalKms, MemoryDekStore};
//! use cmek::objects::{Compartments, EncryptedStore};
//! use object_store::{ObjectStore, ObjectStoreExt, memory::InMemory, path::Path};
//!
//! let client = Client::builder()
//!     .key(KeyConfigId::new("local")?, Arc::new(LocalKms::generate("local:k")?))
//!     .dek_store(Arc::new(MemoryDekStore::default()))
//!     .build()?;
//! // The first path segment names the tenant's compartment.
//! let store = EncryptedStore::new(InMemory::new(), client, Compartments::first_segment())?;
//!
//! let path = Path::from("tenant-a/reports/2026.csv");
//! store.put(&path, "id,total\n1,42\n".into()).await?;
//! assert_eq!(store.get_range(&path, 3..8).await?, "total");
//! assert_eq!(store.head(&path).await?.size, 14); // plaintext sizes
//! // The stored bytes are ciphertext.
//! assert_ne!(store.inner().get(&path).await?.bytes().await?, "id,total\n1,42\n");
//! # Ok(()) }
//! ```
//!
//! What each operation does:
//!
//! * `put` encrypts the payload; multipart uploads encrypt each part as it comes, in
//!   constant memory, and upload parts of exactly [`EncryptedStore::with_part_size`] bytes
//!   (5 MiB unless set, S3's minimum), the last one shorter.
//! * `get` decrypts as the bytes arrive and yields only authenticated plaintext; an object
//!   that ends early fails at its end. A range fetches the head and only the chunks that
//!   cover it (in two concurrent requests, one when the range starts in the first chunk;
//!   a suffix needs the head first for the length), and returns exactly the bytes asked for.
//!   `get_ranges` reads the head once, then the chunks of all ranges, coalesced.
//! * `head` and `list` report **plaintext** sizes, computed from the stored sizes (no extra
//!   request); an object whose size no envelope can have is reported as an error.
//! * ETags, versions and modification times are the stored object's, so conditional
//!   requests (`if_match`, `PutMode::Create`, `PutMode::Update`) keep their meaning.
//! * Attributes are kept; `Content-Encoding` is stored as the metadata key
//!   [`CONTENT_ENCODING_KEY`] and given back as `Content-Encoding`, because stores act on it.
//! * `copy` and `rename` re-encrypt under the destination (see [`PathBinding`]).
//! * `delete` and `delete_stream` pass through; `list_with_delimiter` does too, but for the
//!   sizes.
//!
//! The buffers a `put` seals into and a `get` opens into come from the store's
//! [`BufferPool`] and go back to it when the last `Bytes` made from them is dropped, so a
//! busy store does not pay for fresh memory (a page fault per 4 KiB) on every large object.
//!
//! Errors from cmek (a revoked key, an object that does not authenticate) arrive as
//! `object_store::Error::Generic`; [`cmek_error`] gives back the typed [`crate::Error`].

mod body;
mod buffers;
mod checkpoint;
mod copy;
mod errors;
mod migrate;
mod placement;
mod read;
mod write;

use std::fmt;
use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::ids::CompartmentId;

pub use buffers::BufferPool;
pub use errors::{CONTENT_ENCODING_KEY, cmek_error};
pub use migrate::{Migration, MigrationCounts, MigrationProgress, MigrationReport};
pub use placement::{Compartments, PathBinding};

/// An [`ObjectStore`] that encrypts every object under its compartment's key, in the shape
/// of `object_store`'s own wrappers (`PrefixStore`, `LimitStore`). See the
/// [module docs](self) for what each operation does.
#[derive(Debug)]
pub struct EncryptedStore<T: ObjectStore> {
    inner: T,
    client: Client,
    compartments: Compartments,
    binding: PathBinding,
    part_size: usize,
    buffers: BufferPool,
}

impl<T: ObjectStore> EncryptedStore<T> {
    /// Wraps `inner`: objects go under the compartments `compartments` chooses, their paths
    /// bound as AAD.
    ///
    /// # Errors
    /// [`Configuration`](crate::ErrorKind::Configuration) if `client` has no DEK store (the
    /// objects' DEK records live there).
    pub fn new(inner: T, client: Client, compartments: Compartments) -> Result<Self> {
        if !client.has_dek_store() {
            return Err(Error::configuration(
                "an EncryptedStore needs a client with a DEK store (its objects name their DEK)",
            ));
        }
        Ok(Self {
            inner,
            client,
            compartments,
            binding: PathBinding::default(),
            part_size: write::DEFAULT_PART_SIZE,
            buffers: BufferPool::default(),
        })
    }

    /// What objects' AAD binds ([`PathBinding::Path`] unless set). Readers must use the
    /// binding the objects were written with.
    pub fn with_path_binding(mut self, binding: PathBinding) -> Self {
        self.binding = binding;
        self
    }

    /// The size of the parts multipart uploads send (at least 1 byte; 5 MiB unless set).
    /// S3 allows 10,000 parts, so 5 MiB parts cap an object near 48 GiB: raise it for
    /// larger objects.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }

    /// The pool whose buffers hold the ciphertext of `put`s and the plaintext of `get`s
    /// (a pool of [`BufferPool::DEFAULT_MAX_BYTES`] of its own unless set;
    /// `BufferPool::new(0)` allocates every buffer afresh).
    pub fn with_buffer_pool(mut self, pool: BufferPool) -> Self {
        self.buffers = pool;
        self
    }

    /// The size of the parts multipart uploads send.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// The wrapped store (which holds ciphertext).
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The client whose keys this store uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The compartment of the object at `location`.
    ///
    /// # Errors
    /// As the [`Compartments`] rule says, as an `object_store` error.
    pub fn compartment_of(&self, location: &Path) -> object_store::Result<CompartmentId> {
        Ok(self.compartments.of(location)?)
    }
}

impl<T: ObjectStore> fmt::Display for EncryptedStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptedStore({})", self.inner)
    }
}

#[async_trait]
impl<T: ObjectStore> ObjectStore for EncryptedStore<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.put_encrypted(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.encrypting_upload(location, location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.get_decrypted(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.get_ranges_decrypted(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner
            .list(prefix)
            .and_then(|meta| futures_util::future::ready(errors::plaintext_meta(meta)))
            .boxed()
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner
            .list_with_offset(prefix, offset)
            .and_then(|meta| futures_util::future::ready(errors::plaintext_meta(meta)))
            .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects = listed
            .objects
            .into_iter()
            .map(errors::plaintext_meta)
            .collect::<object_store::Result<_>>()?;
        Ok(listed)
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.copy_object(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.rename_object(from, to, options).await
    }
}
