//! The suite every [`EncryptedStore`] must pass over its inner store (in-memory, local files,
//! S3, GCS, Azure Blob): call [`run_all`] from a test against the store's server or emulator.
//! It adds to `object_store`'s own `integration` functions what only an encrypting store
//! has: ranges at every chunk edge, plaintext sizes, objects moved or altered behind the
//! store's back. Each check panics with a message that names what went wrong.
//!
//! The store must use [`Compartments::first_segment`](crate::objects::Compartments) and the
//! default [`PathBinding::Path`](crate::objects::PathBinding); the checks write under
//! `conformance-a/` and `conformance-b/` and delete what they wrote.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cmek::objects::{Compartments, EncryptedStore};
//! use cmek::testkit::objects;
//! use cmek::{Client, KeyConfigId, LocalKms, MemoryDekStore};
//! use object_store::memory::InMemory;
//!
//! let client = Client::builder()
//!     .key(KeyConfigId::new("local")?, Arc::new(LocalKms::generate("local:k")?))
//!     .dek_store(Arc::new(MemoryDekStore::default()))
//!     .build()?;
//! let store = EncryptedStore::new(InMemory::new(), client, Compartments::first_segment())?;
//! objects::run_all(&store).await;
//! # Ok(()) }
//! ```

#![allow(clippy::expect_used, clippy::unwrap_used)] // a test suite: failures are panics

mod counting;

pub use counting::CountingStore;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode, PutPayload,
};

use crate::ErrorKind;
use crate::format::CHUNK_LEN;
use crate::objects::{CONTENT_ENCODING_KEY, EncryptedStore, cmek_error};

const CHUNK: usize = CHUNK_LEN;

/// Runs every check.
pub async fn run_all<T: ObjectStore>(store: &EncryptedStore<T>) {
    round_trips_at_chunk_edges(store).await;
    ranges_at_every_chunk_edge(store).await;
    ranges_outside_fail(store).await;
    get_ranges_match(store).await;
    moved_objects_are_refused(store).await;
    copy_and_rename_reencrypt(store).await;
    altered_objects_fail(store).await;
    conditions_keep_their_meaning(store).await;
    content_encoding_stays_out_of_the_store(store).await;
}

/// `len` bytes that differ at every position of a chunk.
fn data(len: usize) -> Bytes {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

async fn get_all<T: ObjectStore>(
    store: &EncryptedStore<T>,
    path: &Path,
) -> object_store::Result<Bytes> {
    store.get(path).await?.bytes().await
}

/// Objects of the sizes at the format's edges read back whole, with plaintext sizes in
/// `head`, `list` and `list_with_delimiter`.
pub async fn round_trips_at_chunk_edges<T: ObjectStore>(store: &EncryptedStore<T>) {
    let prefix = Path::from("conformance-a/edges");
    for len in [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        3 * CHUNK,
        3 * CHUNK + 100,
    ] {
        let path = prefix.clone().join(format!("{len}"));
        let plaintext = data(len);
        store
            .put(&path, plaintext.clone().into())
            .await
            .expect("put failed");
        assert_eq!(
            get_all(store, &path).await.expect("get failed"),
            plaintext,
            "{len}-byte object"
        );
        assert_eq!(
            store.head(&path).await.expect("head").size,
            len as u64,
            "head size"
        );
        let stored = store.inner().head(&path).await.expect("inner head").size;
        assert!(stored > len as u64, "the inner store holds the envelope");
    }
    use futures_util::TryStreamExt;
    let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await.expect("list");
    assert_eq!(listed.len(), 7, "list sees every object");
    for meta in &listed {
        let len: u64 = meta.location.filename().unwrap().parse().unwrap();
        assert_eq!(meta.size, len, "list reports plaintext sizes");
    }
    let delimited = store
        .list_with_delimiter(Some(&prefix))
        .await
        .expect("list_with_delimiter");
    for meta in &delimited.objects {
        let len: u64 = meta.location.filename().unwrap().parse().unwrap();
        assert_eq!(
            meta.size, len,
            "list_with_delimiter reports plaintext sizes"
        );
    }
    for meta in listed {
        store.delete(&meta.location).await.expect("delete");
    }
}

/// Every kind of range, starting and ending at and around every chunk edge, returns exactly
/// the bytes asked for.
pub async fn ranges_at_every_chunk_edge<T: ObjectStore>(store: &EncryptedStore<T>) {
    for len in [3 * CHUNK + 100, 2 * CHUNK] {
        let path = Path::from(format!("conformance-a/ranges-{len}"));
        let plaintext = data(len);
        store
            .put(&path, plaintext.clone().into())
            .await
            .expect("put failed");
        let mut edges = vec![0, 1, len - 1];
        for k in 1..=len / CHUNK {
            edges.extend([k * CHUNK - 1, k * CHUNK, k * CHUNK + 1]);
        }
        edges.retain(|&e| e < len);
        for &start in &edges {
            for end in [start + 1, start + CHUNK, start + CHUNK + 1, len, len + 100] {
                let end_in = end.min(len);
                let got = store.get_range(&path, start as u64..end as u64).await;
                assert_eq!(
                    got.expect("bounded range failed"),
                    plaintext.slice(start..end_in),
                    "{start}..{end} of a {len}-byte object"
                );
            }
            let options = GetOptions::new().with_range(Some(GetRange::Offset(start as u64)));
            let result = store
                .get_opts(&path, options)
                .await
                .expect("offset range failed");
            assert_eq!(
                result.range,
                start as u64..len as u64,
                "offset range's range"
            );
            assert_eq!(
                result.meta.size, len as u64,
                "a range's meta has the plaintext size"
            );
            assert_eq!(
                result.bytes().await.unwrap(),
                plaintext.slice(start..),
                "{start}.."
            );
            let n = len - start;
            let options = GetOptions::new().with_range(Some(GetRange::Suffix(n as u64)));
            let result = store
                .get_opts(&path, options)
                .await
                .expect("suffix range failed");
            assert_eq!(
                result.range,
                start as u64..len as u64,
                "suffix range's range"
            );
            assert_eq!(
                result.bytes().await.unwrap(),
                plaintext.slice(start..),
                "-{n}"
            );
        }
        let options = GetOptions::new().with_range(Some(GetRange::Suffix(len as u64 + 10)));
        let whole = store.get_opts(&path, options).await.expect("long suffix");
        assert_eq!(
            whole.bytes().await.unwrap(),
            plaintext,
            "a suffix longer than the object"
        );
        store.delete(&path).await.expect("delete");
    }
}

/// Ranges that start at or after the end fail, like the plain stores' do; empty objects
/// answer suffixes with nothing.
pub async fn ranges_outside_fail<T: ObjectStore>(store: &EncryptedStore<T>) {
    let path = Path::from("conformance-a/outside");
    store
        .put(&path, data(CHUNK).into())
        .await
        .expect("put failed");
    let len = CHUNK as u64;
    for range in [
        GetRange::Bounded(len..len + 1),
        GetRange::Offset(len),
        GetRange::Bounded(len + CHUNK as u64..len + 2 * CHUNK as u64),
    ] {
        let options = GetOptions::new().with_range(Some(range.clone()));
        assert!(
            store.get_opts(&path, options).await.is_err(),
            "{range} of a {len}-byte object"
        );
    }
    let empty = Path::from("conformance-a/empty");
    store
        .put(&empty, PutPayload::default())
        .await
        .expect("put empty");
    let options = GetOptions::new().with_range(Some(GetRange::Suffix(5)));
    let result = store
        .get_opts(&empty, options)
        .await
        .expect("suffix of an empty object");
    assert_eq!(result.range, 0..0);
    assert!(result.bytes().await.unwrap().is_empty());
    let options = GetOptions::new().with_range(Some(GetRange::Bounded(0..1)));
    assert!(
        store.get_opts(&empty, options).await.is_err(),
        "0..1 of an empty object"
    );
    store.delete(&path).await.expect("delete");
    store.delete(&empty).await.expect("delete");
}

/// `get_ranges` returns each range as `get_range` would.
pub async fn get_ranges_match<T: ObjectStore>(store: &EncryptedStore<T>) {
    let len = 5 * CHUNK + 3;
    let path = Path::from("conformance-a/get-ranges");
    let plaintext = data(len);
    store
        .put(&path, plaintext.clone().into())
        .await
        .expect("put failed");
    let ranges = [
        0..1,
        5..CHUNK as u64 + 5,
        4 * CHUNK as u64..len as u64,
        2..3,
        0..len as u64 + 9,
    ];
    let got = store
        .get_ranges(&path, &ranges)
        .await
        .expect("get_ranges failed");
    for (range, bytes) in ranges.iter().zip(got) {
        let end = (range.end as usize).min(len);
        assert_eq!(
            bytes,
            plaintext.slice(range.start as usize..end),
            "{range:?}"
        );
    }
    let past_the_end = len as u64..len as u64 + 1;
    assert!(
        store
            .get_ranges(&path, std::slice::from_ref(&past_the_end))
            .await
            .is_err()
    );
    store.delete(&path).await.expect("delete");
}

fn assert_refused(result: object_store::Result<Bytes>, what: &str) {
    let err = result.expect_err(what);
    let kind = cmek_error(&err).map(|e| e.kind());
    assert!(
        matches!(kind, Some(ErrorKind::Integrity | ErrorKind::NotFound)),
        "{what}: expected a cmek integrity or not-found error, got {err}"
    );
}

/// An object copied to another path, or another compartment, by the inner store does not
/// decrypt there.
pub async fn moved_objects_are_refused<T: ObjectStore>(store: &EncryptedStore<T>) {
    let (a, b) = (
        Path::from("conformance-a/moved-1"),
        Path::from("conformance-a/moved-2"),
    );
    let other = Path::from("conformance-b/moved-1");
    store.put(&a, data(100).into()).await.expect("put");
    store.put(&b, data(200).into()).await.expect("put");
    store.inner().copy(&a, &b).await.expect("inner copy");
    assert_refused(
        get_all(store, &b).await,
        "an object swapped within a compartment",
    );
    let range = store.get_range(&b, 0..10).await;
    assert_refused(range, "a range of a swapped object");
    store.inner().copy(&a, &other).await.expect("inner copy");
    assert_refused(
        get_all(store, &other).await,
        "an object moved to another compartment",
    );
    for path in [a, b, other] {
        store.delete(&path).await.expect("delete");
    }
}

/// The store's own `copy`, `copy_if_not_exists` and `rename` leave readable objects: new
/// envelopes under the destination's compartment and path.
pub async fn copy_and_rename_reencrypt<T: ObjectStore>(store: &EncryptedStore<T>) {
    let (a, b) = (
        Path::from("conformance-a/copy-1"),
        Path::from("conformance-b/copy-2"),
    );
    let plaintext = data(3 * CHUNK + 5);
    store.put(&a, plaintext.clone().into()).await.expect("put");
    store.copy(&a, &b).await.expect("copy");
    assert_eq!(get_all(store, &b).await.expect("copied object"), plaintext);
    let stored_a = store.inner().get(&a).await.unwrap().bytes().await.unwrap();
    let stored_b = store.inner().get(&b).await.unwrap().bytes().await.unwrap();
    assert_ne!(stored_a, stored_b, "a copy is a new envelope");
    let err = store
        .copy_if_not_exists(&a, &b)
        .await
        .expect_err("copy onto an object");
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    let c = Path::from("conformance-a/copy-3");
    store.rename(&b, &c).await.expect("rename");
    assert_eq!(get_all(store, &c).await.expect("renamed object"), plaintext);
    let err = store.head(&b).await.expect_err("renamed away");
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    for path in [a, c] {
        store.delete(&path).await.expect("delete");
    }
}

/// A flipped byte fails the chunk it is in (and whole reads) but not other chunks' ranges;
/// a truncated object fails at its end, or has a length no object can have.
pub async fn altered_objects_fail<T: ObjectStore>(store: &EncryptedStore<T>) {
    let path = Path::from("conformance-a/altered");
    let plaintext = data(3 * CHUNK);
    store
        .put(&path, plaintext.clone().into())
        .await
        .expect("put");
    let stored = store
        .inner()
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let chunk_1 = 76 + CHUNK + 16 + 100;
    let mut flipped = stored.to_vec();
    flipped[chunk_1] ^= 1;
    store
        .inner()
        .put(&path, flipped.into())
        .await
        .expect("inner put");
    assert_refused(
        get_all(store, &path).await,
        "a whole read of an altered object",
    );
    assert_refused(
        store.get_range(&path, CHUNK as u64..CHUNK as u64 + 1).await,
        "a range of an altered chunk",
    );
    let untouched = store
        .get_range(&path, 0..10)
        .await
        .expect("a range of an intact chunk");
    assert_eq!(untouched, plaintext.slice(0..10));

    let truncated = stored.slice(..stored.len() - 5);
    store
        .inner()
        .put(&path, truncated.into())
        .await
        .expect("inner put");
    let err = get_all(store, &path).await.expect_err("a truncated object");
    assert!(cmek_error(&err).is_some(), "a cmek error: {err}");
    let cut = stored.slice(..76 + 2 * (CHUNK + 16));
    store
        .inner()
        .put(&path, cut.into())
        .await
        .expect("inner put");
    let err = store
        .head(&path)
        .await
        .expect_err("an object cut at a chunk boundary");
    assert_eq!(
        cmek_error(&err).map(|e| e.kind()),
        Some(ErrorKind::InvalidInput),
        "{err}"
    );
    store.delete(&path).await.expect("delete");
}

/// ETags are the stored object's: create-only puts, `if_match` and `if_none_match` work on
/// whole reads and ranges.
pub async fn conditions_keep_their_meaning<T: ObjectStore>(store: &EncryptedStore<T>) {
    let path = Path::from("conformance-a/conditions");
    let _ = store.delete(&path).await;
    let created = store
        .put_opts(&path, data(10).into(), PutMode::Create.into())
        .await
        .expect("create");
    let err = store
        .put_opts(&path, data(10).into(), PutMode::Create.into())
        .await
        .expect_err("create onto an object");
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    let meta = store.head(&path).await.expect("head");
    assert_eq!(meta.e_tag, created.e_tag, "head shows the put's ETag");
    // Conditional updates, one at a time, where the store has them.
    let update = |version: &object_store::PutResult| {
        PutMode::Update(object_store::UpdateVersion {
            e_tag: version.e_tag.clone(),
            version: version.version.clone(),
        })
    };
    match store
        .put_opts(&path, data(12).into(), update(&created).into())
        .await
    {
        Ok(_) => {
            let err = store
                .put_opts(&path, data(13).into(), update(&created).into())
                .await
                .expect_err("an update against a stale ETag");
            assert!(
                matches!(err, object_store::Error::Precondition { .. }),
                "{err}"
            );
            assert_eq!(get_all(store, &path).await.unwrap(), data(12));
        }
        Err(object_store::Error::NotImplemented { .. }) => {}
        Err(e) => panic!("conditional update: {e}"),
    }
    let meta = store.head(&path).await.expect("head");
    let tag = meta.e_tag.clone().expect("the store has ETags");
    let matching = GetOptions::new().with_if_match(Some(tag.clone()));
    store
        .get_opts(&path, matching)
        .await
        .expect("if_match the current ETag");
    let stale = GetOptions::new()
        .with_if_match(Some("\"stale\"".to_string()))
        .with_range(Some(GetRange::Bounded(2..4)));
    let err = store
        .get_opts(&path, stale)
        .await
        .expect_err("if_match a stale ETag");
    assert!(
        matches!(err, object_store::Error::Precondition { .. }),
        "{err}"
    );
    let unchanged = GetOptions::new()
        .with_if_none_match(Some(tag))
        .with_range(Some(GetRange::Suffix(3)));
    let err = store
        .get_opts(&path, unchanged)
        .await
        .expect_err("if_none_match the ETag");
    assert!(
        matches!(err, object_store::Error::NotModified { .. }),
        "{err}"
    );
    store.delete(&path).await.expect("delete");
}

/// `Content-Encoding` comes back to the caller but is not what the inner store holds.
pub async fn content_encoding_stays_out_of_the_store<T: ObjectStore>(store: &EncryptedStore<T>) {
    let path = Path::from("conformance-a/encoded");
    let attributes = Attributes::from_iter([
        (Attribute::ContentEncoding, "gzip"),
        (Attribute::ContentType, "application/json"),
    ]);
    match store
        .put_opts(&path, data(50).into(), attributes.clone().into())
        .await
    {
        Ok(_) => {}
        Err(object_store::Error::NotImplemented { .. }) => return,
        Err(e) => panic!("put with attributes: {e}"),
    }
    let got = store.get(&path).await.expect("get");
    assert_eq!(
        got.attributes, attributes,
        "the caller's attributes come back"
    );
    let stored = store.inner().get(&path).await.expect("inner get");
    assert!(
        stored.attributes.get(&Attribute::ContentEncoding).is_none(),
        "stored without Content-Encoding"
    );
    assert_eq!(
        stored
            .attributes
            .get(&Attribute::Metadata(CONTENT_ENCODING_KEY.into()))
            .map(|v| v.as_ref()),
        Some("gzip")
    );
    store.delete(&path).await.expect("delete");
}
