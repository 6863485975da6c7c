//! The hot path against the raw cipher, in the same group and run, for both providers.
//!
//! * `encrypt/<size>`: `raw-seal/<p>` is an out-of-place AES-256-GCM seal with a fixed nonce into a
//!   reused buffer (the cipher alone); `cmek/<p>` is `Client::encrypt_into` (self-contained
//!   envelope) and `cmek-compact/<p>` is `Client::encrypt_compact_into`, both into a reused buffer
//!   with a cached DEK. They add the cache lookup, limit accounting, a random nonce, the header
//!   copy and 32 bytes of extra AAD.
//! * `encrypt-in-place/<size>`: in-place seal vs `Client::encrypt_in_place_detached`.
//! * `decrypt/<size>`: out-of-place open into a reused buffer vs `Client::decrypt_into`.
//! * `decrypt-in-place/<size>`: in-place open vs `Client::decrypt_in_place` (zero copy).
//!
//! Run: `cargo bench --bench hot_path` (results in target/criterion; summary in BENCHMARKS.md).

mod common;

use std::hint::black_box;
use std::sync::Arc;

use cmek::internal::RawCipher;
use cmek::{CipherProvider, Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use common::{block, runtime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [(usize, &str); 4] = [
    (64, "64B"),
    (1024, "1KiB"),
    (16 * 1024, "16KiB"),
    (1 << 20, "1MiB"),
];
const AAD: &[u8] = b"tenant/object/42";
const NONCE: [u8; 12] = [1u8; 12];

fn client(provider: CipherProvider, rt: &tokio::runtime::Runtime) -> (Client, CompartmentId) {
    let client = Client::builder()
        .key(
            KeyConfigId::new("local").unwrap(),
            Arc::new(LocalKms::generate("local:bench").unwrap()),
        )
        .dek_store(Arc::new(MemoryDekStore::new()))
        .cipher(provider)
        .build()
        .unwrap();
    let c = CompartmentId::new("f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c").unwrap();
    block(rt, client.encrypt(&c, b"warm", b"")).unwrap();
    (client, c)
}

fn encrypt(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    for (size, label) in SIZES {
        let mut g = cr.benchmark_group(format!("encrypt/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        let pt = vec![0x5au8; size];
        for &p in CipherProvider::available() {
            let raw = RawCipher::new(p, &[7u8; 32]).unwrap();
            let mut out = vec![0u8; size + 16];
            g.bench_function(BenchmarkId::new("raw-seal", p), |b| {
                b.iter(|| raw.seal(&NONCE, AAD, black_box(&pt), &mut out).unwrap())
            });
            let (client, c) = client(p, &rt);
            let mut env = Vec::new();
            g.bench_function(BenchmarkId::new("cmek", p), |b| {
                b.iter(|| {
                    block(&rt, client.encrypt_into(&c, black_box(&pt), AAD, &mut env)).unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("cmek-compact", p), |b| {
                b.iter(|| {
                    block(
                        &rt,
                        client.encrypt_compact_into(&c, black_box(&pt), AAD, &mut env),
                    )
                    .unwrap()
                })
            });
        }
        g.finish();
    }
}

fn decrypt(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    for (size, label) in SIZES {
        let mut g = cr.benchmark_group(format!("decrypt/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        let pt = vec![0x5au8; size];
        for &p in CipherProvider::available() {
            let raw = RawCipher::new(p, &[7u8; 32]).unwrap();
            let mut sealed = vec![0u8; size + 16];
            raw.seal(&NONCE, AAD, &pt, &mut sealed).unwrap();
            let (ct, tag) = sealed.split_at(size);
            let tag: [u8; 16] = tag.try_into().unwrap();
            let mut out = vec![0u8; size];
            g.bench_function(BenchmarkId::new("raw-open", p), |b| {
                b.iter(|| {
                    raw.open(&NONCE, AAD, black_box(ct), &tag, &mut out)
                        .unwrap()
                })
            });
            let (client, c) = client(p, &rt);
            let env = block(&rt, client.encrypt(&c, &pt, AAD)).unwrap();
            let compact = block(&rt, client.encrypt_compact(&c, &pt, AAD)).unwrap();
            let mut out = Vec::new();
            g.bench_function(BenchmarkId::new("cmek", p), |b| {
                b.iter(|| {
                    block(&rt, client.decrypt_into(&c, black_box(&env), AAD, &mut out)).unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("cmek-compact", p), |b| {
                b.iter(|| {
                    block(
                        &rt,
                        client.decrypt_into(&c, black_box(&compact), AAD, &mut out),
                    )
                    .unwrap()
                })
            });
        }
        g.finish();
    }
}

/// In-place encryption: raw in-place seal vs `Client::encrypt_in_place_detached` (header and
/// tag returned apart, the data never copied). Each iteration encrypts the buffer again.
fn encrypt_in_place(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    for (size, label) in SIZES {
        let mut g = cr.benchmark_group(format!("encrypt-in-place/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        for &p in CipherProvider::available() {
            let raw = RawCipher::new(p, &[7u8; 32]).unwrap();
            let mut buf = vec![0x5au8; size];
            g.bench_function(BenchmarkId::new("raw-seal", p), |b| {
                b.iter(|| raw.seal_in_place(&NONCE, AAD, black_box(&mut buf)).unwrap())
            });
            let (client, c) = client(p, &rt);
            let mut header = Vec::new();
            g.bench_function(BenchmarkId::new("cmek", p), |b| {
                b.iter(|| {
                    block(
                        &rt,
                        client.encrypt_in_place_detached(&c, black_box(&mut buf), AAD, &mut header),
                    )
                    .unwrap()
                })
            });
        }
        g.finish();
    }
}

/// In-place decryption destroys its input, so each iteration flips the buffer between a
/// ciphertext C (tag T_C) and its decryption P, which is itself the ciphertext of C with tag T_P
/// (GCM is CTR mode): every iteration is a full tag check plus decryption with no copy.
fn decrypt_in_place(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    for (size, label) in SIZES {
        let mut g = cr.benchmark_group(format!("decrypt-in-place/{label}"));
        g.throughput(Throughput::Bytes(size as u64));
        let pt = vec![0x5au8; size];
        for &p in CipherProvider::available() {
            let raw = RawCipher::new(p, &[7u8; 32]).unwrap();
            let mut buf = pt.clone();
            let tag_c = raw.seal_in_place(&NONCE, AAD, &mut buf).unwrap();
            let mut c_text = buf.clone();
            let tag_p = raw.seal_in_place(&NONCE, AAD, &mut c_text).unwrap(); // seal(C) = (P, T_P)
            let tags = [tag_c, tag_p];
            let mut i = 0;
            g.bench_function(BenchmarkId::new("raw-open", p), |b| {
                b.iter(|| {
                    raw.open_in_place(&NONCE, AAD, black_box(&mut buf), &tags[i & 1])
                        .unwrap();
                    i += 1;
                })
            });

            let (client, c) = client(p, &rt);
            let mut env = block(&rt, client.encrypt(&c, &pt, AAD)).unwrap();
            let n = env.len();
            let tag_c: [u8; 16] = env[n - 16..].try_into().unwrap();
            let tag_p = block(&rt, cmek::internal::partner_tag(&client, &c, &env, AAD)).unwrap();
            let tags = [tag_c, tag_p];
            let mut i = 0;
            g.bench_function(BenchmarkId::new("cmek", p), |b| {
                b.iter(|| {
                    let tag = &tags[i & 1];
                    env[n - 16..].copy_from_slice(tag);
                    block(&rt, client.decrypt_in_place(&c, black_box(&mut env), AAD)).unwrap();
                    i += 1;
                })
            });
        }
        g.finish();
    }
}

criterion_group!(
    benches,
    encrypt,
    encrypt_in_place,
    decrypt,
    decrypt_in_place
);
criterion_main!(benches);
