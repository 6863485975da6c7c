//! What the inner store serves: a range read fetches the head and only its chunks; uploads
//! go in parts of the configured size.

use bytes::Bytes;
use cmek::testkit::objects::CountingStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};

use super::suites::encrypted;

const CHUNK: u64 = 16_384;
const SEALED: u64 = CHUNK + 16;
const HEAD: u64 = 76;

#[tokio::test]
async fn a_small_range_fetches_the_head_and_its_chunks_only() {
    let store = encrypted(CountingStore::new(InMemory::new()));
    let path = Path::from("tenant/object");
    let plaintext: Bytes = (0..64 * CHUNK).map(|i| i as u8).collect();
    store.put(&path, plaintext.clone().into()).await.unwrap();
    let counts = store.inner();

    // 1 KiB inside chunk 20: the head (76 bytes) and chunk 20, plus one tag's worth of
    // look-ahead for a plaintext that might end right there.
    counts.reset();
    let start = 20 * CHUNK + 100;
    let got = store.get_range(&path, start..start + 1024).await.unwrap();
    assert_eq!(got, plaintext.slice(start as usize..start as usize + 1024));
    assert_eq!(counts.gets(), 2);
    assert_eq!(counts.bytes_read(), HEAD + SEALED + 16);

    // 1 KiB across the edge of chunks 30 and 31: two chunks.
    counts.reset();
    let start = 31 * CHUNK - 512;
    let got = store.get_range(&path, start..start + 1024).await.unwrap();
    assert_eq!(got, plaintext.slice(start as usize..start as usize + 1024));
    assert_eq!(counts.bytes_read(), HEAD + 2 * SEALED + 16);

    // In chunk 0: one request.
    counts.reset();
    store.get_range(&path, 10..20).await.unwrap();
    assert_eq!(counts.gets(), 1);
    assert_eq!(counts.bytes_read(), HEAD + SEALED + 16);

    // A suffix: the head (which tells the length), then the final chunk and the one before.
    counts.reset();
    let options = GetOptions::new().with_range(Some(GetRange::Suffix(10)));
    let tail = store
        .get_opts(&path, options)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(tail, plaintext.slice(plaintext.len() - 10..));
    assert_eq!(counts.gets(), 2);
    // 64 full chunks: the last 10 bytes are in chunk 63, then the empty final chunk.
    assert_eq!(counts.bytes_read(), HEAD + SEALED + 16);
}

#[tokio::test]
async fn uploads_go_in_parts_of_the_configured_size() {
    let part = 5 * 1024 * 1024;
    let store = encrypted(CountingStore::new(InMemory::new())).with_part_size(part);
    let path = Path::from("tenant/multipart");
    let mut writer =
        WriteMultipart::new_with_chunk_size(store.put_multipart(&path).await.unwrap(), 1_000_000);
    let plaintext: Bytes = (0..13_000_000u64).map(|i| (i % 251) as u8).collect();
    for piece in plaintext.chunks(777_777) {
        writer.write(piece);
    }
    writer.finish().await.unwrap();
    let sizes = store.inner().part_sizes();
    let stored = store.inner().head(&path).await.unwrap().size as usize;
    assert_eq!(sizes.iter().sum::<usize>(), stored);
    let (last, full) = sizes.split_last().unwrap();
    assert!(full.iter().all(|&s| s == part), "{sizes:?}");
    assert!(*last <= part && *last > 0, "{sizes:?}");
    assert_eq!(
        store.get(&path).await.unwrap().bytes().await.unwrap(),
        plaintext
    );
}

#[tokio::test]
async fn an_aborted_upload_leaves_nothing() {
    let store = encrypted(InMemory::new());
    let path = Path::from("tenant/aborted");
    let mut upload = store.put_multipart(&path).await.unwrap();
    upload.put_part(vec![7u8; 6 << 20].into()).await.unwrap();
    upload.abort().await.unwrap();
    assert!(matches!(
        store.head(&path).await,
        Err(object_store::Error::NotFound { .. })
    ));
    // Nothing more can be written to it.
    assert!(upload.put_part(vec![1u8; 10].into()).await.is_err());
}

#[tokio::test]
async fn copies_larger_than_a_part_stream_through_multipart() {
    let store = encrypted(CountingStore::new(InMemory::new())).with_part_size(20_000);
    let (from, to) = (Path::from("tenant/big"), Path::from("other/big"));
    let plaintext: Bytes = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    store.put(&from, plaintext.clone().into()).await.unwrap();
    store.copy(&from, &to).await.unwrap();
    assert_eq!(
        store.get(&to).await.unwrap().bytes().await.unwrap(),
        plaintext
    );
    let parts = store.inner().part_sizes();
    assert!(
        parts.len() > 1 && parts[..parts.len() - 1].iter().all(|&p| p == 20_000),
        "{parts:?}"
    );

    // Create-only: through a staging object, which is gone afterwards.
    let err = store.copy_if_not_exists(&from, &to).await.unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err}"
    );
    let fresh = Path::from("other/fresh");
    store.copy_if_not_exists(&from, &fresh).await.unwrap();
    assert_eq!(
        store.get(&fresh).await.unwrap().bytes().await.unwrap(),
        plaintext
    );
    let listed = store
        .inner()
        .list_with_delimiter(Some(&Path::from("other")))
        .await
        .unwrap();
    let names: Vec<&str> = listed.objects.iter().map(|m| m.location.as_ref()).collect();
    assert_eq!(
        names,
        ["other/big", "other/fresh"],
        "no staging object left"
    );
}
