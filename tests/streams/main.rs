//! Streamed envelopes through the client: round trips through every API, tampering of every
//! kind, range reads, and the DEK's life while an object is written.

#[path = "../common/mod.rs"]
mod common;
mod ranges;
mod tampering;

use std::io::{Read, Write};
use std::sync::Arc;

use cmek::stream::{StreamForm, read_head};
use cmek::{Client, CompartmentId, ErrorKind, LocalKms, MemoryDekStore, RevokeMode};
use common::{compartment, key_config};
use rand::{Rng, RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The sizes the format's edges are at: empty, one byte, around one chunk, whole chunks.
pub const SIZES: [usize; 9] = [
    0, 1, 16_383, 16_384, 16_385, 32_768, 49_152, 50_000, 100_001,
];

/// A client over a local key, with a memory DEK store.
pub fn client() -> Client {
    Client::builder()
        .key(
            key_config(),
            Arc::new(LocalKms::generate("local:streams").unwrap()),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()
        .unwrap()
}

/// `len` pseudo-random bytes from `seed`.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Seals `plaintext` with the sans-I/O encryptor, in pieces of random sizes.
pub async fn seal(
    client: &Client,
    tenant: &CompartmentId,
    form: StreamForm,
    plaintext: &[u8],
    aad: &[u8],
) -> Vec<u8> {
    let mut encryptor = client.stream_encryptor(tenant, aad, form).await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(plaintext.len() as u64);
    let mut out = Vec::new();
    let mut rest = plaintext;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(40_000));
        encryptor.update(&rest[..n], &mut out).unwrap();
        rest = &rest[n..];
    }
    encryptor.finish(&mut out).unwrap();
    out
}

/// Opens a streamed object with the std reader, in reads of `read_size` bytes.
pub async fn open_std(
    client: &Client,
    tenant: &CompartmentId,
    object: &[u8],
    aad: &[u8],
    read_size: usize,
) -> (Vec<u8>, cmek::Result<()>) {
    let mut reader = std::io::Cursor::new(object);
    let head = match read_head(&mut reader) {
        Ok(head) => head,
        Err(e) => return (Vec::new(), Err(cmek::Error::from(e))),
    };
    let decryptor = match client.stream_decryptor(tenant, &head, aad).await {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut reader = decryptor.into_reader(reader);
    let mut out = Vec::new();
    let mut buf = vec![0u8; read_size];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (out, Ok(())),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Err(cmek::Error::from(e))),
        }
    }
}

#[tokio::test]
async fn every_size_round_trips_through_every_api() {
    let client = client();
    let tenant = compartment("tenant-a");
    for form in [StreamForm::Compact, StreamForm::SelfContained] {
        for (i, &len) in SIZES.iter().enumerate() {
            let plaintext = data(len, i as u64);
            let object = seal(&client, &tenant, form, &plaintext, b"aad").await;
            let layout = match form {
                StreamForm::Compact => cmek::format::StreamLayout::compact(object.len() as u64),
                _ => cmek::format::StreamLayout::new(
                    cmek::inspect(&object).unwrap().header_len as u64,
                    object.len() as u64,
                ),
            }
            .unwrap();
            assert_eq!(layout.plaintext_len(), len as u64, "{form:?} {len}");

            // Whole, in memory.
            assert_eq!(
                client.decrypt(&tenant, &object, b"aad").await.unwrap(),
                plaintext
            );
            // std reader, small and large reads.
            for read_size in [1000, 16_384, 70_000] {
                let (got, outcome) = open_std(&client, &tenant, &object, b"aad", read_size).await;
                outcome.unwrap();
                assert_eq!(got, plaintext, "{form:?} {len} reads of {read_size}");
            }
            // tokio reader.
            let mut reader = client
                .decrypting_reader(&tenant, &object[..], b"aad")
                .await
                .unwrap();
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, plaintext);
            // Whole range.
            let all = client
                .decrypt_range(&tenant, &object, .., b"aad")
                .await
                .unwrap();
            assert_eq!(all, plaintext);
        }
    }
}

#[tokio::test]
async fn std_and_tokio_writers_write_what_the_encryptor_would() {
    let client = client();
    let tenant = compartment("tenant-a");
    let plaintext = data(200_000, 9);
    // std writer, written in odd pieces.
    let encryptor = client
        .stream_encryptor(&tenant, b"x", StreamForm::Compact)
        .await
        .unwrap();
    let mut writer = encryptor.into_writer(Vec::new());
    for piece in plaintext.chunks(7_777) {
        writer.write_all(piece).unwrap();
    }
    let object = writer.finish().unwrap();
    assert_eq!(
        client.decrypt(&tenant, &object, b"x").await.unwrap(),
        plaintext
    );
    // tokio writer, ended by shutdown.
    let mut writer = client
        .encrypting_writer(&tenant, b"x", StreamForm::SelfContained, Vec::new())
        .await
        .unwrap();
    for piece in plaintext.chunks(100_000) {
        writer.write_all(piece).await.unwrap();
    }
    writer.shutdown().await.unwrap();
    let object = writer.get_ref().clone();
    assert_eq!(
        client.decrypt(&tenant, &object, b"x").await.unwrap(),
        plaintext
    );
}

#[tokio::test]
async fn each_object_has_its_own_salt_and_counts_as_one_message() {
    let client = client();
    let tenant = compartment("tenant-a");
    let before = client.stats();
    let one = seal(&client, &tenant, StreamForm::Compact, b"same", b"").await;
    let two = seal(&client, &tenant, StreamForm::Compact, b"same", b"").await;
    assert_eq!(one[..20], two[..20], "one DEK");
    assert_ne!(one[20..44], two[20..44], "two salts");
    assert_ne!(one, two);
    assert_eq!(client.stats().deks_created - before.deks_created, 1);
}

#[tokio::test]
async fn the_wrong_compartment_or_aad_fails_before_any_chunk() {
    let client = client();
    let (a, b) = (compartment("tenant-a"), compartment("tenant-b"));
    for form in [StreamForm::Compact, StreamForm::SelfContained] {
        let object = seal(&client, &a, form, &data(40_000, 1), b"object/1").await;
        let head = read_head(&mut &object[..]).unwrap();
        let wrong_aad = client.stream_decryptor(&a, &head, b"object/2").await;
        assert_eq!(
            wrong_aad.unwrap_err().kind(),
            ErrorKind::Integrity,
            "{form:?}"
        );
        let wrong_tenant = client.stream_decryptor(&b, &head, b"object/1").await;
        let kind = wrong_tenant.unwrap_err().kind();
        assert!(
            matches!(kind, ErrorKind::Integrity | ErrorKind::NotFound),
            "{form:?}: {kind:?}"
        );
        let range = client.decrypt_range(&a, &object, 0..10, b"object/2").await;
        assert_eq!(range.unwrap_err().kind(), ErrorKind::Integrity);
    }
}

#[tokio::test]
async fn compact_streams_need_a_dek_store() {
    let client = Client::builder()
        .key(
            key_config(),
            Arc::new(LocalKms::generate("local:k").unwrap()),
        )
        .build()
        .unwrap();
    let err = client
        .stream_encryptor(&compartment("t"), b"", StreamForm::Compact)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration);
}

#[tokio::test]
async fn an_unfinished_stream_never_decrypts() {
    let client = client();
    let tenant = compartment("tenant-a");
    for len in [0usize, 10, 16_384, 40_000] {
        let mut encryptor = client
            .stream_encryptor(&tenant, b"", StreamForm::Compact)
            .await
            .unwrap();
        let mut out = Vec::new();
        encryptor.update(&data(len, 3), &mut out).unwrap();
        drop(encryptor);
        assert!(client.decrypt(&tenant, &out, b"").await.is_err(), "{len}");
        let (_, outcome) = open_std(&client, &tenant, &out, b"", 16_384).await;
        assert!(outcome.is_err(), "{len}");
    }
}

#[tokio::test]
async fn a_revocation_or_purge_stops_a_stream_being_written() {
    let client = client();
    let tenant = compartment("tenant-a");
    let chunk = data(16_384, 4);
    let mut out = Vec::new();

    let mut encryptor = client
        .stream_encryptor(&tenant, b"", StreamForm::Compact)
        .await
        .unwrap();
    encryptor.update(&chunk, &mut out).unwrap();
    client.purge(&tenant);
    let err = encryptor.update(&chunk, &mut out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(
        encryptor.update(&chunk, &mut out).is_err(),
        "a failed stream stays failed"
    );

    let mut encryptor = client
        .stream_encryptor(&tenant, b"", StreamForm::Compact)
        .await
        .unwrap();
    encryptor.update(&chunk, &mut out).unwrap();
    client.revoke(&key_config(), RevokeMode::Immediately);
    let err = encryptor.update(&chunk, &mut out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    let mut tail = Vec::new();
    assert!(encryptor.finish(&mut tail).is_err());
}

#[tokio::test]
async fn an_object_longer_than_the_dek_byte_limit_is_refused() {
    let mut cache = cmek::CacheConfig::default();
    cache.encrypt_max_bytes = 100_000;
    let client = Client::builder()
        .key(
            key_config(),
            Arc::new(LocalKms::generate("local:k").unwrap()),
        )
        .cache(cache)
        .build()
        .unwrap();
    let tenant = compartment("t");
    let mut encryptor = client
        .stream_encryptor(&tenant, b"", StreamForm::SelfContained)
        .await
        .unwrap();
    let mut out = Vec::new();
    encryptor.update(&data(100_000, 5), &mut out).unwrap();
    let err = encryptor.update(b"x", &mut out).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[tokio::test]
async fn the_encryptor_shows_no_key_material() {
    let client = client();
    let encryptor = client
        .stream_encryptor(&compartment("t"), b"", StreamForm::Compact)
        .await
        .unwrap();
    let shown = format!("{encryptor:?}");
    assert!(shown.starts_with("StreamEncryptor"), "{shown}");
    assert!(!shown.contains("key:") && shown.len() < 200, "{shown}");
}

/// A writer that fails its first write after `ok` bytes, then works again.
struct Flaky {
    ok: usize,
    failed: bool,
    written: Vec<u8>,
}

impl Write for Flaky {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if !self.failed && self.written.len() + bytes.len() > self.ok {
            self.failed = true;
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "flaky"));
        }
        self.written.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_writer_whose_inner_writer_failed_stays_failed() {
    let client = client();
    let tenant = compartment("tenant-a");
    let encryptor = client
        .stream_encryptor(&tenant, b"", StreamForm::Compact)
        .await
        .unwrap();
    let mut writer = encryptor.into_writer(Flaky {
        ok: 20_000,
        failed: false,
        written: Vec::new(),
    });
    let piece = data(16_384, 8);
    writer.write_all(&piece).unwrap();
    assert!(writer.write_all(&piece).is_err(), "the inner writer failed");
    // Retrying, as one does after a timeout, must not yield an object that cannot decrypt.
    assert!(
        writer.write_all(&piece).is_err(),
        "a retry after a lost chunk"
    );
    assert!(writer.finish().is_err(), "finish after a lost chunk");
}
