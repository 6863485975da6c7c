//! Between cmek and `object_store`: errors, plaintext sizes, and the attributes that must not
//! reach the inner store as they are.

use object_store::{Attribute, Attributes, ObjectMeta};

use crate::error::Error;
use crate::format::StreamLayout;

/// The `store` name in the errors [`EncryptedStore`](super::EncryptedStore) returns.
pub(crate) const STORE: &str = "EncryptedStore";

/// The metadata key that keeps the caller's `Content-Encoding` (letters and underscores
/// only, so Azure accepts it as a metadata name).
pub const CONTENT_ENCODING_KEY: &str = "cmek_content_encoding";

impl From<Error> for object_store::Error {
    /// A cmek error as `object_store`'s `Generic` error, with the cmek error as its source:
    /// [`cmek_error`] finds it again.
    fn from(error: Error) -> Self {
        Self::Generic {
            store: STORE,
            source: Box::new(error),
        }
    }
}

/// The cmek error behind an error of [`EncryptedStore`](super::EncryptedStore), if it came
/// from cmek (a revoked key, an object that does not authenticate, a KMS outage), with its
/// [`kind`](Error::kind).
pub fn cmek_error(error: &object_store::Error) -> Option<&Error> {
    match error {
        object_store::Error::Generic { source, .. } => source.downcast_ref::<Error>(),
        _ => None,
    }
}

pub(crate) fn range_error(
    source: impl std::error::Error + Send + Sync + 'static,
) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: Box::new(source),
    }
}

/// The layout of the stored object `meta` describes, which must be a compact streamed
/// envelope.
pub(crate) fn layout_of(meta: &ObjectMeta) -> crate::Result<StreamLayout> {
    StreamLayout::compact(meta.size).map_err(|_| {
        Error::invalid_input(format!(
            "{} ({} bytes) is not an object of an EncryptedStore: no compact streamed envelope \
             has that length",
            meta.location, meta.size
        ))
    })
}

/// `meta` with the plaintext size.
pub(crate) fn plaintext_meta(mut meta: ObjectMeta) -> object_store::Result<ObjectMeta> {
    meta.size = layout_of(&meta)?.plaintext_len();
    Ok(meta)
}

/// The attributes to store for the caller's: `Content-Encoding` moves into metadata, because
/// the stored bytes are not in that encoding and stores act on it (GCS decompresses `gzip`
/// objects for clients that do not accept it, and ignores their ranges).
pub(crate) fn stored_attributes(mut attributes: Attributes) -> crate::Result<Attributes> {
    let key = Attribute::Metadata(CONTENT_ENCODING_KEY.into());
    if attributes.get(&key).is_some() {
        return Err(Error::invalid_input(format!(
            "the metadata key {CONTENT_ENCODING_KEY} is reserved by EncryptedStore"
        )));
    }
    if let Some(encoding) = attributes.remove(&Attribute::ContentEncoding) {
        attributes.insert(key, encoding);
    }
    Ok(attributes)
}

/// The caller's attributes from the stored ones (the inverse of [`stored_attributes`]).
pub(crate) fn caller_attributes(mut attributes: Attributes) -> Attributes {
    if let Some(encoding) = attributes.remove(&Attribute::Metadata(CONTENT_ENCODING_KEY.into())) {
        attributes.insert(Attribute::ContentEncoding, encoding);
    }
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_encoding_travels_as_metadata_and_back() {
        let caller = Attributes::from_iter([
            (Attribute::ContentEncoding, "gzip"),
            (Attribute::ContentType, "text/csv"),
        ]);
        let stored = stored_attributes(caller.clone()).unwrap();
        assert!(stored.get(&Attribute::ContentEncoding).is_none());
        assert_eq!(
            stored
                .get(&Attribute::Metadata(CONTENT_ENCODING_KEY.into()))
                .map(|v| v.as_ref()),
            Some("gzip")
        );
        assert_eq!(caller_attributes(stored), caller);
        let reserved =
            Attributes::from_iter([(Attribute::Metadata(CONTENT_ENCODING_KEY.into()), "x")]);
        assert!(stored_attributes(reserved).is_err());
    }

    #[test]
    fn sizes_that_no_object_has_are_refused() {
        let meta = |size| ObjectMeta {
            location: "a/b".into(),
            last_modified: Default::default(),
            size,
            e_tag: None,
            version: None,
        };
        assert_eq!(plaintext_meta(meta(76 + 16)).unwrap().size, 0);
        assert_eq!(plaintext_meta(meta(76 + 16 + 5)).unwrap().size, 5);
        let err = plaintext_meta(meta(10)).unwrap_err();
        assert_eq!(
            cmek_error(&err).unwrap().kind(),
            crate::ErrorKind::InvalidInput
        );
        assert!(err.to_string().contains("a/b"), "{err}");
    }
}
