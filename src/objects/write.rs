//! `put` and multipart uploads, encrypted as they go: every object a compact streamed
//! envelope under its compartment's DEK, bound to its path.

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::{FutureExt, StreamExt};
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    UploadPart,
};

use super::EncryptedStore;
use super::errors::stored_attributes;
use crate::error::Error;
use crate::format::{COMPACT_STREAM_HEADER_LEN, StreamLayout};
use crate::stream::{StreamEncryptor, StreamForm};

/// The part size of multipart uploads unless set: S3's minimum for all parts but the last.
pub(crate) const DEFAULT_PART_SIZE: usize = 5 * 1024 * 1024;

impl<T: ObjectStore> EncryptedStore<T> {
    /// The encryptor of a new object at `bound_to` (its compartment, its path as AAD).
    async fn encryptor(&self, bound_to: &Path) -> object_store::Result<StreamEncryptor> {
        let compartment = self.compartment_of(bound_to)?;
        Ok(self
            .client
            .stream_encryptor(
                &compartment,
                self.binding.aad(bound_to),
                StreamForm::Compact,
            )
            .await?)
    }

    pub(super) async fn put_encrypted(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let attributes = stored_attributes(opts.attributes)?;
        let mut encryptor = self.encryptor(location).await?;
        let len = StreamLayout::object_len(
            COMPACT_STREAM_HEADER_LEN as u64,
            payload.content_length() as u64,
        );
        let len = usize::try_from(len)
            .map_err(|_| Error::invalid_input("the payload is too long for this platform"))?;
        let mut sealed = self.buffers.take(len);
        let out = sealed.as_mut_slice();
        let mut at = 0;
        for piece in &payload {
            at += encryptor.update_into(piece, &mut out[at..])?;
        }
        at += encryptor.finish_into(&mut out[at..])?;
        sealed.truncate(at);
        let opts = PutOptions { attributes, ..opts };
        self.inner
            .put_opts(location, sealed.freeze().into(), opts)
            .await
    }

    /// A multipart upload to `location` of an object bound to `bound_to` (the same path, but
    /// for copies made through a temporary object).
    pub(super) async fn encrypting_upload(
        &self,
        location: &Path,
        bound_to: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let attributes = stored_attributes(opts.attributes)?;
        let encryptor = self.encryptor(bound_to).await?;
        let opts = PutMultipartOptions { attributes, ..opts };
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(EncryptingUpload {
            encryptor: Some(encryptor),
            inner,
            sealed: BytesMut::new(),
            part_size: self.part_size,
        }))
    }
}

/// Uploads every piece of `plaintext` through `upload` and completes it; aborts it if
/// anything fails, so a failed copy or migration leaves no object behind.
pub(super) async fn upload_all(
    mut upload: Box<dyn MultipartUpload>,
    mut plaintext: BoxStream<'static, object_store::Result<Bytes>>,
) -> object_store::Result<PutResult> {
    let streamed = async {
        while let Some(piece) = plaintext.next().await.transpose()? {
            upload.put_part(piece.into()).await?;
        }
        upload.complete().await
    }
    .await;
    if streamed.is_err() {
        let _ = upload.abort().await;
    }
    streamed
}

/// A multipart upload that encrypts its parts as they come and uploads the envelope in
/// parts of exactly `part_size` bytes (the last one shorter): whatever size the caller's
/// parts have, every store's minimum part size holds, and stores that want equal parts
/// (R2) get them.
#[derive(Debug)]
struct EncryptingUpload {
    /// `None` once completed, aborted or failed.
    encryptor: Option<StreamEncryptor>,
    inner: Box<dyn MultipartUpload>,
    /// Sealed bytes not yet in a part (fewer than `part_size` between calls).
    sealed: BytesMut,
    part_size: usize,
}

impl EncryptingUpload {
    fn seal(&mut self, data: &PutPayload) -> crate::Result<()> {
        let encryptor = self
            .encryptor
            .as_mut()
            .ok_or_else(|| Error::invalid_input("the upload failed, completed or was aborted"))?;
        for piece in data {
            let start = self.sealed.len();
            self.sealed
                .resize(start + encryptor.output_len(piece.len()), 0);
            match encryptor.update_into(piece, &mut self.sealed[start..]) {
                Ok(written) => self.sealed.truncate(start + written),
                Err(e) => {
                    self.encryptor = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Uploads every full part of the sealed bytes (and the rest too if `last`).
    fn send_parts(&mut self, last: bool) -> Vec<UploadPart> {
        let mut parts = Vec::new();
        while self.sealed.len() >= self.part_size {
            let part = self.sealed.split_to(self.part_size).freeze();
            parts.push(self.inner.put_part(part.into()));
        }
        if last && !self.sealed.is_empty() {
            let part = self.sealed.split().freeze();
            parts.push(self.inner.put_part(part.into()));
        }
        parts
    }
}

fn all(parts: Vec<UploadPart>) -> UploadPart {
    futures_util::future::try_join_all(parts)
        .map(|done| done.map(drop))
        .boxed()
}

#[async_trait]
impl MultipartUpload for EncryptingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if let Err(e) = self.seal(&data) {
            return futures_util::future::ready(Err(e.into())).boxed();
        }
        all(self.send_parts(false))
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let encryptor = self
            .encryptor
            .take()
            .ok_or_else(|| Error::invalid_input("the upload failed, completed or was aborted"))?;
        let start = self.sealed.len();
        self.sealed.resize(start + encryptor.final_len(), 0);
        let mut encryptor = encryptor;
        let written = encryptor.finish_into(&mut self.sealed[start..])?;
        self.sealed.truncate(start + written);
        all(self.send_parts(true)).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.encryptor = None;
        self.sealed.clear();
        self.inner.abort().await
    }
}
