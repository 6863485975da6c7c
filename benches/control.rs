//! The control plane's costs.
//!
//! * `control-hot/1KiB`: 1 KiB compact encryptions through the `ControlPlane`'s client (a
//!   compartment with an attached, validated key) against the raw AES-256-GCM seal in the same
//!   group: the key resolver and its store are only on the miss path, so the ratio must match
//!   the plain client's.
//! * `rewrap/<latency>/batch-<n>`: re-wrapping 200 DEK records (4 compartments) after a rotation,
//!   with 0 or 1 ms of simulated KMS latency per call (`FaultyKms`), for batch sizes 1, 10 and
//!   100 (each batch's records are re-wrapped concurrently).
//! * `validate`: one validation of a local key (key check, round trip, cross-compartment check).
//!
//! Run: `cargo bench --features testkit --bench control`.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmek::control::{
    Actor, BackendFactory, ControlPlane, CreateExternalKey, DefaultBackendFactory, ExternalKey,
    MemoryAuditSink, MemoryControlStore, ProviderConfig,
};
use cmek::internal::RawCipher;
use cmek::testkit::FaultyKms;
use cmek::{CacheConfig, CipherProvider, CompartmentId, KmsBackend, LocalKms, MemoryDekStore};
use common::{block, runtime};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Hands out two fault-injecting keys, `old` and `new`, by key file name.
#[derive(Debug)]
struct TwoKeys {
    old: Arc<FaultyKms>,
    new: Arc<FaultyKms>,
}

#[async_trait::async_trait]
impl BackendFactory for TwoKeys {
    async fn backend(&self, config: &ProviderConfig) -> cmek::Result<Arc<dyn KmsBackend>> {
        match config.key_ref().as_str() {
            "old" => Ok(self.old.clone()),
            "new" => Ok(self.new.clone()),
            _ => DefaultBackendFactory::new().backend(config).await,
        }
    }
}

fn local(name: &str) -> ProviderConfig {
    ProviderConfig::Local {
        key_file: name.to_owned(),
    }
}

/// A plane with the `old` key validated and attached to `compartments` new compartments.
async fn plane(
    cache: CacheConfig,
    compartments: usize,
) -> (ControlPlane, Arc<TwoKeys>, ExternalKey, Vec<CompartmentId>) {
    let keys = Arc::new(TwoKeys {
        old: Arc::new(FaultyKms::new(LocalKms::generate("local:old").unwrap())),
        new: Arc::new(FaultyKms::new(LocalKms::generate("local:new").unwrap())),
    });
    let plane = ControlPlane::builder()
        .store(Arc::new(MemoryControlStore::new()))
        .dek_store(Arc::new(MemoryDekStore::new()))
        .audit(Arc::new(MemoryAuditSink::new()))
        .factory(keys.clone())
        .provider_managed(Arc::new(LocalKms::generate("local:provider").unwrap()))
        .cache(cache)
        .build()
        .unwrap();
    let admin = Actor::new("bench");
    let key = plane
        .create_external_key(&admin, CreateExternalKey::new("old", local("old")))
        .await
        .unwrap();
    plane.validate_external_key(&admin, &key.id).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..compartments {
        ids.push(
            plane
                .create_compartment(&admin, Some(&key.id))
                .await
                .unwrap()
                .compartment_id,
        );
    }
    (plane, keys, key, ids)
}

fn hot_path(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    let mut g = cr.benchmark_group("control-hot/1KiB");
    g.throughput(Throughput::Bytes(1024));
    let pt = vec![0x5au8; 1024];
    let raw = RawCipher::new(CipherProvider::default(), &[7u8; 32]).unwrap();
    let mut out = vec![0u8; 1024 + 16];
    g.bench_function("raw-seal", |b| {
        b.iter(|| raw.seal(&[1u8; 12], b"", black_box(&pt), &mut out).unwrap())
    });
    let (plane, _keys, _key, ids) = rt.block_on(plane(CacheConfig::default(), 1));
    let client = plane.client().clone();
    let c = &ids[0];
    block(&rt, client.encrypt(c, b"warm", b"")).unwrap();
    let mut env = Vec::new();
    g.bench_function("control-plane-client-compact", |b| {
        b.iter(|| {
            block(
                &rt,
                client.encrypt_compact_into(c, black_box(&pt), b"", &mut env),
            )
            .unwrap()
        })
    });
    g.finish();
}

fn rewrap(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    const RECORDS: usize = 200;
    let mut g = cr.benchmark_group("rewrap");
    g.sample_size(10);
    g.throughput(Throughput::Elements(RECORDS as u64));
    for latency in [Duration::ZERO, Duration::from_millis(1)] {
        for batch in [1, 10, 100] {
            let id = BenchmarkId::new(
                format!("{}ms", latency.as_millis()),
                format!("batch-{batch}"),
            );
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // One DEK record per message, so 200 messages make 200 records.
                        let mut cache = CacheConfig::default();
                        cache.encrypt_max_messages = 1;
                        let (plane, keys, key, ids) = rt.block_on(plane(cache, 4));
                        let admin = Actor::new("bench");
                        rt.block_on(async {
                            for n in 0..RECORDS {
                                plane
                                    .client()
                                    .encrypt_compact(&ids[n % ids.len()], b"record", b"")
                                    .await
                                    .unwrap();
                            }
                            plane
                                .rotate_external_key(&admin, &key.id, local("new"))
                                .await
                                .unwrap();
                        });
                        keys.old.set_latency(latency);
                        keys.new.set_latency(latency);
                        let start = Instant::now();
                        let job = rt
                            .block_on(plane.rewrap(&admin, &key.id, batch, |_| {}))
                            .unwrap();
                        total += start.elapsed();
                        assert_eq!(job.rewrapped as usize, RECORDS);
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

fn validate(cr: &mut Criterion) {
    let rt = runtime();
    let _ctx = rt.enter();
    let (plane, _keys, key, _) = rt.block_on(plane(CacheConfig::default(), 0));
    let admin = Actor::new("bench");
    cr.bench_function("validate/local", |b| {
        b.iter(|| {
            rt.block_on(plane.validate_external_key(&admin, &key.id))
                .unwrap()
        })
    });
}

criterion_group!(benches, hot_path, rewrap, validate);
criterion_main!(benches);
