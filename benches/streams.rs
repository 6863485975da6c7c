//! Streamed envelopes against the raw cipher, in the same group and run, for both providers.
//!
//! * `stream-encrypt/1GiB`: `raw-seal-1MiB/<p>` seals 1024 buffers of 1 MiB in place (the
//!   cipher alone, one nonce per MiB); `cmek/<p>` writes one 1 GiB streamed object (compact
//!   form) through `StreamEncryptor::update_into` in 1 MiB pieces into a reused buffer: 65,536
//!   chunks of 16 KiB, each its own GCM call, plus the per-object key derivation.
//! * `stream-decrypt/1GiB`: out-of-place opens of 1 MiB buffers vs `StreamDecryptor::update_into`
//!   over a 1 GiB object in 1 MiB pieces.
//! * `range-read/1GiB-object`: `Client::decrypt_range` of 1 byte in the middle of a 1 GiB object
//!   held in memory, warm DEK (header parse, cache lookup, body key derivation and commitment
//!   check, one 16 KiB chunk opened), against one raw 16 KiB open.
//!
//! Run: `cargo bench --bench streams` (summary in BENCHMARKS.md).

mod common;

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use cmek::internal::RawCipher;
use cmek::stream::StreamForm;
use cmek::{CipherProvider, Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use common::{block, runtime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const MIB: usize = 1 << 20;
const PIECES: usize = 1024; // 1 GiB in 1 MiB pieces
const NONCE: [u8; 12] = [1u8; 12];

fn client(provider: CipherProvider) -> (Client, CompartmentId) {
    let client = Client::builder()
        .key(
            KeyConfigId::new("local").unwrap(),
            Arc::new(LocalKms::generate("local:bench").unwrap()),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .cipher(provider)
        .build()
        .unwrap();
    (
        client,
        CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c").unwrap(),
    )
}

/// A 1 GiB compact streamed object of `piece` repeated.
fn object(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    c: &CompartmentId,
    piece: &[u8],
) -> Vec<u8> {
    let mut encryptor = block(rt, client.stream_encryptor(c, b"", StreamForm::Compact)).unwrap();
    let mut out = Vec::with_capacity(PIECES * (MIB + MIB / 1000) + 4096);
    for _ in 0..PIECES {
        encryptor.update(piece, &mut out).unwrap();
    }
    encryptor.finish(&mut out).unwrap();
    out
}

fn stream_encrypt(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    let mut g = cr.benchmark_group("stream-encrypt/1GiB");
    g.throughput(Throughput::Bytes((PIECES * MIB) as u64));
    g.sample_size(10);
    let piece = vec![0x5au8; MIB];
    for &p in CipherProvider::available() {
        let raw = RawCipher::new(p, &[7u8; 32]).unwrap();
        let mut buf = piece.clone();
        g.bench_function(BenchmarkId::new("raw-seal-1MiB", p), |b| {
            b.iter(|| {
                for _ in 0..PIECES {
                    black_box(raw.seal_in_place(&NONCE, b"", &mut buf).unwrap());
                }
            })
        });
        let (client, c) = client(p);
        let mut out = vec![0u8; MIB + MIB / 500 + 8192];
        g.bench_function(BenchmarkId::new("cmek", p), |b| {
            b.iter(|| {
                let mut encryptor =
                    block(&rt, client.stream_encryptor(&c, b"", StreamForm::Compact)).unwrap();
                for _ in 0..PIECES {
                    black_box(encryptor.update_into(&piece, &mut out).unwrap());
                }
                black_box(encryptor.finish_into(&mut out).unwrap());
            })
        });
    }
    g.finish();
}

fn stream_decrypt(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    let mut g = cr.benchmark_group("stream-decrypt/1GiB");
    g.throughput(Throughput::Bytes((PIECES * MIB) as u64));
    g.sample_size(10);
    let piece = vec![0x5au8; MIB];
    for &p in CipherProvider::available() {
        let raw = RawCipher::new(p, &[7u8; 32]).unwrap();
        let mut sealed = piece.clone();
        let tag = raw.seal_in_place(&NONCE, b"", &mut sealed).unwrap();
        let mut opened = vec![0u8; MIB];
        g.bench_function(BenchmarkId::new("raw-open-1MiB", p), |b| {
            b.iter(|| {
                for _ in 0..PIECES {
                    raw.open(&NONCE, b"", &sealed, &tag, &mut opened).unwrap();
                }
                black_box(&opened);
            })
        });
        let (client, c) = client(p);
        let object = object(&rt, &client, &c, &piece);
        let head_len = cmek::format::COMPACT_STREAM_HEADER_LEN + cmek::format::BODY_PREFIX_LEN;
        let mut out = vec![0u8; MIB + 2 * 16_384];
        g.bench_function(BenchmarkId::new("cmek", p), |b| {
            b.iter(|| {
                let mut decryptor =
                    block(&rt, client.stream_decryptor(&c, &object[..head_len], b"")).unwrap();
                for piece in object[head_len..].chunks(MIB) {
                    black_box(decryptor.update_into(piece, &mut out).unwrap());
                }
                black_box(decryptor.finish_into(&mut out).unwrap());
            })
        });
    }
    g.finish();
}

fn range_read(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    let mut g = cr.benchmark_group("range-read/1GiB-object");
    g.throughput(Throughput::Bytes(1));
    let piece = vec![0x5au8; MIB];
    for &p in CipherProvider::available() {
        let raw = RawCipher::new(p, &[7u8; 32]).unwrap();
        let mut sealed = vec![0x5au8; 16_384];
        let tag = raw.seal_in_place(&NONCE, b"", &mut sealed).unwrap();
        let mut opened = vec![0u8; 16_384];
        g.bench_function(BenchmarkId::new("raw-open-16KiB", p), |b| {
            b.iter(|| raw.open(&NONCE, b"", &sealed, &tag, &mut opened).unwrap())
        });
        let (client, c) = client(p);
        let object = Bytes::from(object(&rt, &client, &c, &piece));
        let middle = (PIECES * MIB / 2) as u64 + 12_345;
        block(
            &rt,
            client.decrypt_range(&c, &object, middle..middle + 1, b""),
        )
        .unwrap();
        let before = client.stats().range_chunks_opened;
        let mut reads = 0u64;
        g.bench_function(BenchmarkId::new("cmek-1-byte", p), |b| {
            b.iter(|| {
                reads += 1;
                block(
                    &rt,
                    client.decrypt_range(&c, &object, middle..middle + 1, b""),
                )
                .unwrap()
            })
        });
        let opened = client.stats().range_chunks_opened - before;
        eprintln!(
            "{p}: {:.2} chunks decrypted per 1-byte read ({opened} in {reads} reads)",
            opened as f64 / reads.max(1) as f64
        );
    }
    g.finish();
}

criterion_group!(benches, stream_encrypt, stream_decrypt, range_read);
criterion_main!(benches);
