//! The cache's slow paths and concurrency.
//!
//! * `cold/…`: one encryption on a compartment with no cached DEK (DEK generation, wrap, key
//!   derivation, header encoding, DEK record store, cache inserts), with the local backend
//!   directly and with 5 ms of simulated KMS latency (`FaultyKms`); and one decryption whose DEK
//!   must be unwrapped (after a `purge`). Each runs through `Runtime::block_on`.
//! * `tasks/<n>`: 1 KiB encryptions by n concurrent tokio tasks over 64 compartments on a
//!   2-worker runtime; throughput in bytes.
//!
//! Run: `cargo bench --bench cache`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cmek::testkit::FaultyKms;
use cmek::{Client, CompartmentId, KeyConfigId, LocalKms, MemoryDekStore};
use common::runtime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn client_over(kms: Arc<dyn cmek::KmsBackend>) -> Client {
    Client::builder()
        .key(KeyConfigId::new("local").unwrap(), kms)
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()
        .unwrap()
}

fn cold(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    let mut g = cr.benchmark_group("cold");
    let counter = AtomicU64::new(0);
    let fresh =
        || CompartmentId::new(format!("cold-{}", counter.fetch_add(1, Ordering::Relaxed))).unwrap();

    let local_kms: Arc<dyn cmek::KmsBackend> = Arc::new(LocalKms::generate("local:bench").unwrap());
    let local = client_over(local_kms.clone());
    g.bench_function("encrypt-miss/local", |b| {
        b.iter(|| {
            rt.block_on(local.encrypt(&fresh(), b"first record", b""))
                .unwrap()
        })
    });

    let slow_kms = Arc::new(FaultyKms::in_memory().unwrap());
    slow_kms.set_latency(Duration::from_millis(5));
    let slow = client_over(slow_kms);
    g.sample_size(20);
    g.bench_function("encrypt-miss/5ms-kms", |b| {
        b.iter(|| {
            rt.block_on(slow.encrypt(&fresh(), b"first record", b""))
                .unwrap()
        })
    });

    // A reader with a small cache, so that `purge` (which scans the decryption cache) stays cheap.
    let c = fresh();
    let env = rt.block_on(local.encrypt(&c, b"record", b"")).unwrap();
    let reader = client_over(local_kms);
    g.sample_size(100);
    g.bench_function("decrypt-miss/local", |b| {
        b.iter(|| {
            reader.purge(&c);
            rt.block_on(reader.decrypt(&c, &env, b"")).unwrap()
        })
    });
    g.finish();
}

fn tasks(cr: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = client_over(Arc::new(LocalKms::generate("local:bench").unwrap()));
    let compartments: Arc<Vec<CompartmentId>> = Arc::new(
        (0..64)
            .map(|i| CompartmentId::new(format!("tenant-{i}")).unwrap())
            .collect(),
    );
    let mut g = cr.benchmark_group("tasks");
    const PER_TASK: u64 = 2_000;
    for n in [1u64, 2, 16, 128] {
        g.throughput(Throughput::Bytes(n * PER_TASK * 1024));
        g.bench_function(BenchmarkId::new("encrypt-1KiB", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    rt.block_on(async {
                        let handles: Vec<_> = (0..n)
                            .map(|t| {
                                let (client, compartments) = (client.clone(), compartments.clone());
                                tokio::spawn(async move {
                                    let pt = vec![7u8; 1024];
                                    let mut env = Vec::new();
                                    for i in 0..PER_TASK {
                                        let c = &compartments[((t * 31 + i) % 64) as usize];
                                        client
                                            .encrypt_compact_into(c, &pt, b"", &mut env)
                                            .await
                                            .unwrap();
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.unwrap();
                        }
                    });
                    total += started.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cold, tasks);
criterion_main!(benches);
