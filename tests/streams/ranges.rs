//! Range reads: random ranges of random objects equal the plaintext slices; a read fetches
//! and decrypts only what it needs; alterations are caught by every range that touches them.

use std::ops::Range;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use cmek::format::{SEALED_CHUNK_LEN, StreamLayout};
use cmek::stream::{ByteRange, FileSource, RangeSource, StreamForm};
use rand::{RngExt, SeedableRng};

use super::{client, data, seal};
use crate::common::compartment;

#[tokio::test]
async fn random_ranges_of_random_objects_equal_the_slices() {
    let client = client();
    let tenant = compartment("tenant-a");
    let seed = rand::random::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for case in 0..40 {
        let len = match case % 4 {
            0 => rng.random_range(0..100),
            1 => 16_384 * rng.random_range(1..5),
            _ => rng.random_range(0..150_000),
        };
        let form = if case % 2 == 0 {
            StreamForm::Compact
        } else {
            StreamForm::SelfContained
        };
        let plaintext = data(len, seed ^ case);
        let object = Bytes::from(seal(&client, &tenant, form, &plaintext, b"r").await);
        for _ in 0..25 {
            let a = rng.random_range(0..=len);
            let b = rng.random_range(a..=len + 20);
            let (range, expected): (ByteRange, &[u8]) = match rng.random_range(0..3) {
                0 => ((a as u64..b as u64).into(), &plaintext[a..b.min(len)]),
                1 => ((a as u64..).into(), &plaintext[a..]),
                _ => {
                    let n = b - a;
                    (
                        ByteRange::Suffix(n as u64),
                        &plaintext[len.saturating_sub(n)..],
                    )
                }
            };
            let got = client
                .decrypt_range(&tenant, &object, range.clone(), b"r")
                .await
                .unwrap_or_else(|e| panic!("seed {seed} case {case} {range:?} of {len}: {e}"));
            assert_eq!(got, expected, "seed {seed} case {case} {range:?} of {len}");
        }
        let past = client
            .decrypt_range(&tenant, &object, len as u64 + 1..len as u64 + 2, b"r")
            .await;
        assert!(past.is_err(), "a range after the end");
    }
}

/// Counts what a read asks its source for.
struct Counting {
    inner: Bytes,
    calls: Mutex<Vec<Vec<Range<u64>>>>,
}

#[async_trait]
impl RangeSource for Counting {
    async fn size(&self) -> cmek::Result<u64> {
        self.inner.size().await
    }

    async fn read_ranges(&self, ranges: &[Range<u64>]) -> cmek::Result<Vec<Bytes>> {
        self.calls.lock().unwrap().push(ranges.to_vec());
        self.inner.read_ranges(ranges).await
    }
}

#[tokio::test]
async fn a_one_byte_read_fetches_one_request_and_decrypts_at_most_two_chunks() {
    let client = client();
    let tenant = compartment("tenant-a");
    let len = 64 * 16_384; // 1 MiB: the final chunk is empty
    let plaintext = data(len, 21);
    let object = Bytes::from(seal(&client, &tenant, StreamForm::Compact, &plaintext, b"").await);
    let source = Counting {
        inner: object.clone(),
        calls: Mutex::default(),
    };
    for at in [0usize, 1, 16_383, 16_384, len / 2, len - 16_384, len - 1] {
        source.calls.lock().unwrap().clear();
        let before = client.stats().range_chunks_opened;
        let got = client
            .decrypt_range(&tenant, &source, at as u64..at as u64 + 1, b"")
            .await
            .unwrap();
        assert_eq!(got, &plaintext[at..at + 1]);
        let opened = client.stats().range_chunks_opened - before;
        let expected = if at == len - 1 { 2 } else { 1 };
        assert_eq!(
            opened, expected,
            "byte {at}: the final chunk only when reaching the end"
        );
        let calls = source.calls.lock().unwrap();
        assert_eq!(calls.len(), 1, "byte {at}: one request");
        let fetched: u64 = calls[0].iter().map(|r| r.end - r.start).sum();
        assert!(
            fetched <= 76 + 2 * SEALED_CHUNK_LEN as u64,
            "byte {at}: {fetched} bytes"
        );
    }
}

#[tokio::test]
async fn self_contained_streams_read_ranges_too_and_files_are_sources() {
    let client = client();
    let tenant = compartment("tenant-a");
    let plaintext = data(300_000, 22);
    let object = seal(
        &client,
        &tenant,
        StreamForm::SelfContained,
        &plaintext,
        b"f",
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("object.cmek");
    std::fs::write(&path, &object).unwrap();
    // In memory, counted: the guess of the compact form costs a 2 KiB head, not a second
    // fetch of the chunks.
    let source = Counting {
        inner: Bytes::from(object.clone()),
        calls: Mutex::default(),
    };
    let got = client
        .decrypt_range(&tenant, &source, 200_000..200_001, b"f")
        .await
        .unwrap();
    assert_eq!(got, &plaintext[200_000..200_001]);
    let calls = source.calls.lock().unwrap().clone();
    assert!(calls.len() <= 2, "{calls:?}");
    let fetched: u64 = calls.iter().flatten().map(|r| r.end - r.start).sum();
    assert!(
        fetched <= 2048 + 3 * SEALED_CHUNK_LEN as u64,
        "{fetched} bytes: {calls:?}"
    );
    let file = FileSource::open(&path).await.unwrap();
    for range in [0..1u64, 123_456..234_567, 299_990..300_000] {
        let got = client
            .decrypt_range(&tenant, &file, range.clone(), b"f")
            .await
            .unwrap();
        assert_eq!(got, &plaintext[range.start as usize..range.end as usize]);
    }
}

#[tokio::test]
async fn an_altered_chunk_fails_the_ranges_that_touch_it_and_only_those() {
    let client = client();
    let tenant = compartment("tenant-a");
    let plaintext = data(5 * 16_384 + 10, 23);
    let mut object = seal(&client, &tenant, StreamForm::Compact, &plaintext, b"").await;
    let layout = StreamLayout::compact(object.len() as u64).unwrap();
    let at = layout.chunk_range(2).start as usize + 100;
    object[at] ^= 0x80;
    let object = Bytes::from(object);
    for (range, touches) in [
        (0..16_384u64, false),
        (16_000..33_000, true),
        (2 * 16_384..2 * 16_384 + 1, true),
        (3 * 16_384..4 * 16_384, false),
        (5 * 16_384..5 * 16_384 + 10, false),
    ] {
        let got = client
            .decrypt_range(&tenant, &object, range.clone(), b"")
            .await;
        match touches {
            true => assert_eq!(
                got.unwrap_err().kind(),
                cmek::ErrorKind::Integrity,
                "{range:?}"
            ),
            false => assert_eq!(
                got.unwrap(),
                &plaintext[range.start as usize..range.end as usize],
                "{range:?}"
            ),
        }
    }
    // A suffix must authenticate the final chunk: cut the object inside its last chunk.
    let cut = object.slice(..object.len() - 3);
    let tail = client
        .decrypt_range(&tenant, &cut, ByteRange::Suffix(5), b"")
        .await;
    assert!(tail.is_err(), "a suffix of a truncated object");
}
