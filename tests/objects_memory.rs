//! A 1 GiB object streamed into an `EncryptedStore` over local files and read back, whole and
//! by a range, in constant memory: the process's peak resident set grows by far less than
//! the object. Alone in its test binary, so no other test's memory is counted.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;

use bytes::Bytes;
use cmek::objects::{Compartments, EncryptedStore};
use cmek::testkit::objects::CountingStore;
use cmek::{Client, LocalKms, MemoryDekStore};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

const GIB: u64 = 1 << 30;
const PIECE: usize = 1 << 20;

/// The peak resident set of this process so far, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Piece `i` of the object: random bytes, with the piece's index in its first 8 bytes so
/// that every piece differs (cheap to make again when checking, even in a debug build).
fn piece(base: &[u8], i: u64) -> Bytes {
    let mut piece = base.to_vec();
    piece[..8].copy_from_slice(&i.to_be_bytes());
    piece.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_through_in_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::builder()
        .key(
            common::key_config(),
            Arc::new(LocalKms::generate("local:gib").unwrap()),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()
        .unwrap();
    let inner = CountingStore::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let store = EncryptedStore::new(inner, client, Compartments::first_segment()).unwrap();
    let path = Path::from("tenant/one-gibibyte.bin");
    let pieces = GIB / PIECE as u64;
    let before = peak_rss();

    let mut base = vec![0u8; PIECE];
    rand::RngExt::fill(&mut rand::rng(), &mut base[..]);
    let mut upload = store.put_multipart(&path).await.unwrap();
    for i in 0..pieces {
        upload.put_part(piece(&base, i).into()).await.unwrap();
    }
    upload.complete().await.unwrap();
    assert_eq!(store.head(&path).await.unwrap().size, GIB);

    // Read back in whatever pieces the store yields, each compared with what was written.
    let mut at = 0u64;
    let mut stream = store.get(&path).await.unwrap().into_stream();
    let mut expected = piece(&base, 0);
    while let Some(bytes) = stream.next().await {
        let mut bytes = bytes.unwrap();
        while !bytes.is_empty() {
            let offset = (at % PIECE as u64) as usize;
            if offset == 0 {
                expected = piece(&base, at / PIECE as u64);
            }
            let n = bytes.len().min(PIECE - offset);
            assert!(
                bytes[..n] == expected[offset..offset + n],
                "bytes at {at} differ"
            );
            bytes = bytes.slice(n..);
            at += n as u64;
        }
    }
    assert_eq!(at, GIB, "the whole object reads back");

    // 1 KiB in the middle: the head and at most two chunks (and a tag) come off the disk.
    store.inner().reset();
    let start = GIB / 2 + 12_345;
    let got = store.get_range(&path, start..start + 1024).await.unwrap();
    let expected = piece(&base, start / PIECE as u64);
    let at = (start % PIECE as u64) as usize;
    assert_eq!(got, expected.slice(at..at + 1024));
    assert!(
        store.inner().bytes_read() <= 76 + 2 * 16_400 + 16,
        "{}",
        store.inner().bytes_read()
    );

    if let (Some(before), Some(after)) = (before, peak_rss()) {
        let grown = after.saturating_sub(before);
        eprintln!(
            "peak resident set grew by {} KiB for a 1 GiB object",
            grown / 1024
        );
        assert!(
            grown < 64 << 20,
            "peak RSS grew by {grown} bytes for a 1 GiB object"
        );
    }
}
