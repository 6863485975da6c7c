//! The bulk job: every object under a prefix of the inner store becomes an object of an
//! [`EncryptedStore`] (a compact streamed envelope under its compartment's current key),
//! batch by batch, resumable from a checkpoint, and safe to run again.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};

use super::body::{Ciphertext, Window, decrypting};
use super::checkpoint::Checkpoint;
use super::copy::STAGING_MARK;
use super::errors::layout_of;
use super::read::HEAD_LEN;
use super::write::upload_all;
use super::{EncryptedStore, PathBinding};
use crate::error::{Error, Result};
use crate::format::{Form, MAGIC, Preamble, StreamLayout, stream_header_len};

/// Bytes read from each object's start to tell what it is.
const PROBE_LEN: u64 = 4096;

/// How many objects a job has found in each state, and how many plaintext bytes it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MigrationCounts {
    /// Objects looked at.
    pub scanned: u64,
    /// Plaintext objects now encrypted (customer-managed keys adopted for existing data).
    pub encrypted: u64,
    /// Objects in another cmek form (self-contained, compact, streamed with the wrapped DEK
    /// inline, under an earlier key or not) now re-encrypted as objects of the store.
    pub reencrypted: u64,
    /// Objects of the store already (they need no rewrite: a rewrap of the DEK records
    /// covers them).
    pub unchanged: u64,
    /// Objects that could not be migrated (see [`MigrationReport::failures`]); they are left
    /// as they were.
    pub failed: u64,
    /// Plaintext bytes encrypted.
    pub bytes: u64,
}

/// Where a job is, for progress bars.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MigrationProgress {
    /// The counts so far (across resumed runs).
    pub counts: MigrationCounts,
    /// Objects found in total: those done by earlier runs and those this run lists.
    pub total: u64,
}

/// What a finished job did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The counts, across every run of the job.
    pub counts: MigrationCounts,
    /// The objects left as they were, and why.
    pub failures: Vec<(Path, String)>,
}

/// The bulk job over a prefix: plaintext objects are encrypted, objects in another cmek form
/// re-encrypted, objects of the store checked and left alone.
///
/// Every object is judged by its own first bytes, so a job run twice, or resumed after a
/// crash at any point, never encrypts an object twice and never loses one: a crash leaves
/// each object either as it was or fully rewritten (a put or a completed multipart upload
/// replaces an object at once). With a checkpoint file, a resumed job skips the batches
/// done; the file is removed when the job ends. (An object rewritten in a batch that a crash
/// cut short is found again as already of the store, and counted as unchanged.) Objects are rewritten only if unchanged since
/// they were read (`PutMode::Update`, where the store has it and the object fits one put).
///
/// An object in another cmek form is decrypted under the compartment of its path, with the
/// AAD [`with_source_binding`](Self::with_source_binding) says (empty unless set).
#[derive(Clone, Debug)]
pub struct Migration {
    batch_size: usize,
    concurrency: usize,
    checkpoint: Option<PathBuf>,
    job: Option<String>,
    source_binding: PathBinding,
}

impl Default for Migration {
    fn default() -> Self {
        Self {
            batch_size: 100,
            concurrency: 4,
            checkpoint: None,
            job: None,
            source_binding: PathBinding::None,
        }
    }
}

enum Found {
    Plaintext,
    Envelope,
    Streamed,
    Current,
}

impl Migration {
    /// A job with batches of 100 objects, 4 at a time, no checkpoint.
    pub fn new() -> Self {
        Self::default()
    }

    /// Objects per batch (the checkpoint is written after each).
    pub fn with_batch_size(mut self, objects: usize) -> Self {
        self.batch_size = objects.max(1);
        self
    }

    /// Objects migrated at once within a batch.
    pub fn with_concurrency(mut self, objects: usize) -> Self {
        self.concurrency = objects.max(1);
        self
    }

    /// Keep progress in `file`, and resume from it.
    pub fn with_checkpoint(mut self, file: impl Into<PathBuf>) -> Self {
        self.checkpoint = Some(file.into());
        self
    }

    /// What the checkpoint says it belongs to (unless set: the inner store as it prints
    /// itself, and the prefix). A checkpoint of another job is refused; name the job
    /// precisely (a store URL with its endpoint) when stores print alike.
    pub fn with_job_name(mut self, name: impl Into<String>) -> Self {
        self.job = Some(name.into());
        self
    }

    /// The AAD objects in other cmek forms were encrypted with ([`PathBinding::None`]
    /// unless set: an empty AAD, as `cmek encrypt` writes without `--aad`).
    pub fn with_source_binding(mut self, binding: PathBinding) -> Self {
        self.source_binding = binding;
        self
    }

    /// Runs the job over the objects under `prefix` of `store`'s inner store.
    ///
    /// # Errors
    /// Listing or checkpoint errors (a failing object does not stop the job: it is counted
    /// and reported).
    pub async fn run<T: ObjectStore>(
        &self,
        store: &EncryptedStore<T>,
        prefix: Option<&Path>,
        mut progress: impl FnMut(&MigrationProgress),
    ) -> Result<MigrationReport> {
        let job = format!(
            "{} {}",
            self.job.clone().unwrap_or_else(|| store.inner.to_string()),
            prefix.map(|p| p.as_ref()).unwrap_or_default()
        );
        let mut checkpoint = match &self.checkpoint {
            Some(file) => Checkpoint::load(file, &job)?,
            None => Checkpoint {
                job,
                ..Checkpoint::default()
            },
        };
        let after = checkpoint.after.clone();
        let mut todo: Vec<ObjectMeta> = store
            .inner
            .list(prefix)
            .try_filter(|meta| {
                let keep = after.as_deref().is_none_or(|a| meta.location.as_ref() > a);
                futures_util::future::ready(keep)
            })
            .try_collect()
            .await
            .map_err(store_error)?;
        todo.sort_unstable_by(|a, b| a.location.cmp(&b.location));
        let total = checkpoint.counts.scanned + todo.len() as u64;
        progress(&MigrationProgress {
            counts: checkpoint.counts,
            total,
        });
        for batch in todo.chunks(self.batch_size) {
            let mut results = futures_util::stream::iter(batch)
                .map(|meta| async move { (meta, self.migrate_one(store, meta).await) })
                .buffer_unordered(self.concurrency);
            while let Some((meta, result)) = results.next().await {
                let counts = &mut checkpoint.counts;
                counts.scanned += 1;
                match result {
                    Ok((Found::Current, _)) => counts.unchanged += 1,
                    Ok((Found::Plaintext, bytes)) => {
                        counts.encrypted += 1;
                        counts.bytes += bytes;
                    }
                    Ok((Found::Envelope | Found::Streamed, bytes)) => {
                        counts.reencrypted += 1;
                        counts.bytes += bytes;
                    }
                    Err(e) => {
                        counts.failed += 1;
                        checkpoint
                            .failures
                            .push((meta.location.to_string(), e.to_string()));
                    }
                }
                progress(&MigrationProgress {
                    counts: checkpoint.counts,
                    total,
                });
            }
            drop(results);
            if let (Some(file), Some(last)) = (&self.checkpoint, batch.last()) {
                checkpoint.after = Some(last.location.to_string());
                checkpoint.save(file)?;
            }
        }
        if let Some(file) = &self.checkpoint {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(MigrationReport {
            counts: checkpoint.counts,
            failures: checkpoint
                .failures
                .into_iter()
                .map(|(path, why)| (Path::from(path), why))
                .collect(),
        })
    }

    /// Migrates one object; returns what it was and the plaintext bytes written.
    async fn migrate_one<T: ObjectStore>(
        &self,
        store: &EncryptedStore<T>,
        meta: &ObjectMeta,
    ) -> object_store::Result<(Found, u64)> {
        let path = &meta.location;
        let found = self.identify(store, meta).await?;
        if let Found::Current = found {
            return Ok((Found::Current, 0));
        }
        let source = store.inner.get_opts(path, GetOptions::default()).await?;
        if !same_object(&source.meta, meta) {
            return Err(Error::transient("the object changed during the job; run it again").into());
        }
        let version = UpdateVersion {
            e_tag: source.meta.e_tag.clone(),
            version: source.meta.version.clone(),
        };
        let attributes = source.attributes.clone();
        let (plaintext, len): (BoxStream<'static, object_store::Result<Bytes>>, u64) = match found {
            Found::Current => return Ok((Found::Current, 0)),
            Found::Plaintext => (source.into_stream(), meta.size),
            Found::Envelope => {
                let envelope = source.bytes().await?;
                let compartment = store.compartment_of(path)?;
                let plaintext = store
                    .client
                    .decrypt(&compartment, &envelope, self.source_binding.aad(path))
                    .await?;
                let len = plaintext.len() as u64;
                (
                    futures_util::stream::once(async move { Ok(Bytes::from(plaintext)) }).boxed(),
                    len,
                )
            }
            Found::Streamed => {
                let mut stored = Ciphertext::new(source.into_stream());
                let mut head = stored.split_head(crate::format::PREAMBLE_LEN).await?;
                let header_len = loop {
                    match stream_header_len(&head)? {
                        Ok(len) => break len,
                        Err(at_least) => {
                            let more = stored.split_head(at_least - head.len()).await?;
                            head = [head, more].concat().into();
                        }
                    }
                };
                let prefix = header_len + crate::format::BODY_PREFIX_LEN - head.len();
                let rest = stored.split_head(prefix).await?;
                let head: Bytes = [head, rest].concat().into();
                let layout = StreamLayout::new(header_len as u64, meta.size)?;
                let compartment = store.compartment_of(path)?;
                let decryptor = store
                    .client
                    .stream_decryptor(&compartment, &head, self.source_binding.aad(path))
                    .await?;
                let window = Window {
                    skip_stored: 0,
                    stored_len: layout.total_len().saturating_sub(head.len() as u64),
                    skip_plaintext: 0,
                    len: layout.plaintext_len(),
                    through_final: true,
                };
                (
                    decrypting(decryptor, stored, window, store.buffers.clone()),
                    layout.plaintext_len(),
                )
            }
        };
        write_over(store, path, plaintext, len, version, attributes).await?;
        Ok((found, len))
    }

    /// What the object at `meta` is, from its first bytes; an object that looks like one of
    /// the store's must open (its DEK found, its commitment right) to count as one.
    async fn identify<T: ObjectStore>(
        &self,
        store: &EncryptedStore<T>,
        meta: &ObjectMeta,
    ) -> object_store::Result<Found> {
        if meta.size == 0 {
            return Ok(Found::Plaintext);
        }
        if meta.location.as_ref().contains(STAGING_MARK) {
            return Err(Error::invalid_input(
                "the staging object of an interrupted create-only copy (bound to another path); \
                 delete it",
            )
            .into());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(0..PROBE_LEN.min(meta.size))),
            ..GetOptions::default()
        };
        let probe = store
            .inner
            .get_opts(&meta.location, options)
            .await?
            .bytes()
            .await?;
        let preamble = match Preamble::peek(&probe) {
            Ok(preamble) => preamble,
            // Its first byte says cmek: a damaged envelope, or one of a later format version.
            // Encrypting it again would hide that; leave it and report it.
            Err(e) if probe.first() == Some(&MAGIC) => {
                return Err(Error::invalid_input(format!(
                    "starts like a cmek envelope but does not read as one ({}); left as it is",
                    e.message()
                ))
                .into());
            }
            Err(_) => return Ok(Found::Plaintext),
        };
        Ok(match preamble.form {
            Form::StreamedCompact => {
                layout_of(meta)?;
                let head = probe.get(..HEAD_LEN as usize).ok_or_else(|| {
                    Error::invalid_input("a compact streamed envelope without its whole head")
                })?;
                let compartment = store.compartment_of(&meta.location)?;
                store
                    .client
                    .stream_decryptor(&compartment, head, store.binding.aad(&meta.location))
                    .await?;
                Found::Current
            }
            Form::Streamed => Found::Streamed,
            Form::SelfContained | Form::Compact => Found::Envelope,
            Form::DekRecord => {
                return Err(Error::invalid_input("a DEK record, not an object").into());
            }
        })
    }
}

/// Whether a listing's entry and a read describe one version of an object. Listings of some
/// stores carry no version (S3, GCS, Azure), so what only one side has is not compared.
fn same_object(listed: &ObjectMeta, read: &ObjectMeta) -> bool {
    let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    listed.size == read.size
        && same(&listed.e_tag, &read.e_tag)
        && same(&listed.version, &read.version)
}

/// Replaces the object at `path` with the encryption of `plaintext`: one conditional put
/// when it fits one part, else a multipart upload (replacing the object when it completes).
async fn write_over<T: ObjectStore>(
    store: &EncryptedStore<T>,
    path: &Path,
    plaintext: BoxStream<'static, object_store::Result<Bytes>>,
    len: u64,
    version: UpdateVersion,
    attributes: object_store::Attributes,
) -> object_store::Result<()> {
    if len <= store.part_size as u64 {
        let pieces: Vec<Bytes> = plaintext.try_collect().await?;
        let payload: PutPayload = pieces.into_iter().collect();
        let conditional = PutOptions {
            mode: PutMode::Update(version),
            attributes: attributes.clone(),
            ..PutOptions::default()
        };
        return match store.put_opts(path, payload.clone(), conditional).await {
            Err(object_store::Error::NotImplemented { .. }) => {
                let plain = PutOptions {
                    attributes,
                    ..PutOptions::default()
                };
                store.put_opts(path, payload, plain).await.map(drop)
            }
            other => other.map(drop),
        };
    }
    let upload = store
        .put_multipart_opts(path, PutMultipartOptions::from(attributes))
        .await?;
    upload_all(upload, plaintext).await.map(drop)
}

fn store_error(e: object_store::Error) -> Error {
    Error::transient(format!("listing the store failed: {e}"))
}
