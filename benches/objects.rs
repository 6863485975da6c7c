//! `EncryptedStore` over the in-memory store against the plain in-memory store and the raw
//! cipher, in the same group and run (default cipher provider).
//!
//! * `objects-put/<size>`: `plain` is `InMemory::put`; `raw-seal-1MiB` seals the same bytes
//!   in 1 MiB calls into an output buffer of the object's size (the cipher alone, writing its
//!   output to memory); `encrypted` is `EncryptedStore::put` (a compact streamed envelope:
//!   16 KiB chunks into a fresh buffer, then the inner put). The goal:
//!   `encrypted - plain <= 1.2 x raw-seal-1MiB`.
//! * `objects-get/<size>`: whole-object `get` and `bytes()`, plain and decrypted, against
//!   1 MiB opens of the same bytes into an output buffer of the object's size.
//!
//! A plain in-memory `get` hands out the stored buffer and a plain `put` keeps the caller's:
//! neither allocates. The encrypted ones must write a new buffer, and glibc's malloc gives
//! buffers over its mmap threshold fresh pages each time (a page fault per 4 KiB), so
//! `EncryptedStore` takes them from its `BufferPool`; `encrypted-unpooled` is the same store
//! with `BufferPool::new(0)`, every buffer allocated afresh.
//! * `objects-range/1GiB`: `get_range` of 1 KiB in the middle of a 1 GiB object, warm DEK
//!   (two requests to the inner store: head and one chunk); the goal is under 100 µs.
//!
//! Run: `cargo bench --bench objects --features object-store,testkit` (summary in
//! BENCHMARKS.md).

mod common;

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use cmek::internal::RawCipher;
use cmek::objects::{BufferPool, Compartments, EncryptedStore};
use cmek::{CipherProvider, Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use common::runtime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use object_store::ObjectStoreExt;
use object_store::memory::InMemory;
use object_store::path::Path;

const MIB: usize = 1 << 20;
const NONCE: [u8; 12] = [1u8; 12];

fn store() -> EncryptedStore<InMemory> {
    let client = Client::builder()
        .key(
            KeyConfigId::new("local").unwrap(),
            Arc::new(LocalKms::generate("local:bench").unwrap()),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()
        .unwrap();
    let tenant = CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c").unwrap();
    EncryptedStore::new(InMemory::new(), client, Compartments::fixed(tenant)).unwrap()
}

fn put_and_get(cr: &mut Criterion) {
    let rt = runtime();
    let raw = RawCipher::new(CipherProvider::default(), &[7u8; 32]).unwrap();
    for size in [MIB, 64 * MIB] {
        let name = format!("{}MiB", size / MIB);
        let data = Bytes::from(vec![0x5au8; size]);
        let plain = InMemory::new();
        let encrypted = store();
        let unpooled = store().with_buffer_pool(BufferPool::new(0));
        let path = Path::from("bench/object");

        let mut g = cr.benchmark_group(format!("objects-put/{name}"));
        g.throughput(Throughput::Bytes(size as u64));
        g.sample_size(if size > MIB { 20 } else { 100 });
        g.bench_function("plain", |b| {
            b.iter(|| rt.block_on(plain.put(&path, data.clone().into())).unwrap())
        });
        // Out of place into a buffer of the whole object's size (touched once before), as
        // the store's path writes a new buffer.
        let mut sealed_out = vec![0u8; size + size / MIB * 16];
        g.bench_function(
            BenchmarkId::new("raw-seal-1MiB", CipherProvider::default()),
            |b| {
                b.iter(|| {
                    for (piece, out) in data.chunks(MIB).zip(sealed_out.chunks_mut(MIB + 16)) {
                        raw.seal(&NONCE, b"", piece, out).unwrap();
                    }
                    black_box(&sealed_out);
                })
            },
        );
        g.bench_function("encrypted", |b| {
            b.iter(|| {
                rt.block_on(encrypted.put(&path, data.clone().into()))
                    .unwrap()
            })
        });
        g.bench_function("encrypted-unpooled", |b| {
            b.iter(|| {
                rt.block_on(unpooled.put(&path, data.clone().into()))
                    .unwrap()
            })
        });
        g.finish();

        // Stored afresh, so that the get group also runs alone (`-- objects-get`).
        rt.block_on(plain.put(&path, data.clone().into())).unwrap();
        rt.block_on(encrypted.put(&path, data.clone().into()))
            .unwrap();
        rt.block_on(unpooled.put(&path, data.clone().into()))
            .unwrap();
        let mut g = cr.benchmark_group(format!("objects-get/{name}"));
        g.throughput(Throughput::Bytes(size as u64));
        g.sample_size(if size > MIB { 20 } else { 100 });
        g.bench_function("plain", |b| {
            b.iter(|| {
                rt.block_on(async { plain.get(&path).await?.bytes().await })
                    .unwrap()
            })
        });
        let sealed: Vec<(Vec<u8>, [u8; 16])> = data
            .chunks(MIB)
            .map(|piece| {
                let mut piece = piece.to_vec();
                let tag = raw.seal_in_place(&NONCE, b"", &mut piece).unwrap();
                (piece, tag)
            })
            .collect();
        let mut opened = vec![0u8; size];
        g.bench_function(
            BenchmarkId::new("raw-open-1MiB", CipherProvider::default()),
            |b| {
                b.iter(|| {
                    for ((piece, tag), out) in sealed.iter().zip(opened.chunks_mut(MIB)) {
                        raw.open(&NONCE, b"", piece, tag, out).unwrap();
                    }
                    black_box(&opened);
                })
            },
        );
        g.bench_function("encrypted", |b| {
            b.iter(|| {
                rt.block_on(async { encrypted.get(&path).await?.bytes().await })
                    .unwrap()
            })
        });
        g.bench_function("encrypted-unpooled", |b| {
            b.iter(|| {
                rt.block_on(async { unpooled.get(&path).await?.bytes().await })
                    .unwrap()
            })
        });
        g.finish();
    }
}

fn range(cr: &mut Criterion) {
    let rt = runtime();
    let size = 1024 * MIB;
    let data = Bytes::from(vec![0x33u8; size]);
    let plain = InMemory::new();
    let encrypted = store();
    let path = Path::from("bench/gibibyte");
    rt.block_on(plain.put(&path, data.clone().into())).unwrap();
    rt.block_on(encrypted.put(&path, data.into())).unwrap();
    let at = (size / 2 + 12_345) as u64;
    let mut g = cr.benchmark_group("objects-range/1GiB");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("plain", |b| {
        b.iter(|| rt.block_on(plain.get_range(&path, at..at + 1024)).unwrap())
    });
    g.bench_function("encrypted", |b| {
        b.iter(|| {
            rt.block_on(encrypted.get_range(&path, at..at + 1024))
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, put_and_get, range);
criterion_main!(benches);
