//! `copy` and `rename`. With paths bound (the default) an object is valid at one path only,
//! so both re-encrypt: the plaintext streams through this node, in constant memory, into a
//! new object under the destination's compartment and path. Without path binding, within
//! one compartment, the inner store copies by itself.

use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, RenameOptions, RenameTargetMode,
};
use rand::Rng as _;

use super::write::upload_all;
use super::{EncryptedStore, PathBinding};

impl<T: ObjectStore> EncryptedStore<T> {
    /// Whether the inner store may copy `from` to `to` itself: the ciphertext is valid at both.
    fn copies_in_place(&self, from: &Path, to: &Path) -> object_store::Result<bool> {
        Ok(self.binding == PathBinding::None
            && self.compartment_of(from)? == self.compartment_of(to)?)
    }

    pub(super) async fn copy_object(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if self.copies_in_place(from, to)? {
            return self.inner.copy_opts(from, to, options).await;
        }
        let source = self.get_decrypted(from, GetOptions::default()).await?;
        let attributes = source.attributes.clone();
        if source.meta.size <= self.part_size as u64 {
            let plaintext = source.bytes().await?;
            let mode = match options.mode {
                CopyMode::Overwrite => PutMode::Overwrite,
                CopyMode::Create => PutMode::Create,
            };
            let opts = PutOptions {
                mode,
                attributes,
                ..PutOptions::default()
            };
            self.put_encrypted(to, PutPayload::from(plaintext), opts)
                .await?;
            return Ok(());
        }
        // Multipart uploads cannot be create-only: a create-only copy of a large object is
        // written to a temporary path (bound to `to`), then copied there by the inner store
        // if nothing is at `to` yet; so it needs the inner store's create-only copy (S3: a
        // configured `S3CopyIfNotExists`). A crash in between leaves the temporary object,
        // named `<name>.cmek-copy-<hex>`.
        let staging = match options.mode {
            CopyMode::Overwrite => None,
            CopyMode::Create => Some(staging_path(to)),
        };
        let written_at = staging.as_ref().unwrap_or(to);
        let upload = self
            .encrypting_upload(written_at, to, PutMultipartOptions::from(attributes))
            .await?;
        upload_all(upload, source.into_stream()).await?;
        if let Some(staging) = staging {
            let copied = self.inner.copy_opts(&staging, to, options).await;
            let _ = self.inner.delete(&staging).await;
            copied?;
        }
        Ok(())
    }

    pub(super) async fn rename_object(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        if self.copies_in_place(from, to)? {
            return self.inner.rename_opts(from, to, options).await;
        }
        if from == to {
            // Copying then deleting would delete the object.
            self.inner.head(from).await?;
            return match options.target_mode {
                RenameTargetMode::Overwrite => Ok(()),
                RenameTargetMode::Create => Err(object_store::Error::AlreadyExists {
                    path: to.to_string(),
                    source: "renamed onto itself".into(),
                }),
            };
        }
        let mode = match options.target_mode {
            RenameTargetMode::Overwrite => CopyMode::Overwrite,
            RenameTargetMode::Create => CopyMode::Create,
        };
        let copy = CopyOptions {
            mode,
            extensions: options.extensions,
        };
        self.copy_object(from, to, copy).await?;
        self.inner.delete(from).await
    }
}

/// What the names of staging objects of create-only copies hold.
pub(crate) const STAGING_MARK: &str = ".cmek-copy-";

/// A temporary path beside `to`, for a create-only copy.
fn staging_path(to: &Path) -> Path {
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let mut parts: Vec<_> = to.parts().collect();
    let name = parts
        .pop()
        .map(|p| p.as_ref().to_owned())
        .unwrap_or_default();
    Path::from_iter(parts).join(format!(
        "{name}{STAGING_MARK}{:016x}",
        u64::from_be_bytes(suffix)
    ))
}
