//! KMS round trips through the real `aws-sdk-kms` client: wrap (`Encrypt`) and unwrap
//! (`Decrypt`) latency against the testkit fake and, when `CMEK_TEST_MOTO_URL` is set, against
//! moto; then KMS calls per 1,000,000 records through the cache.
//!
//! Run: `scripts/test.sh` starts moto for tests; for this bench start it yourself, e.g.
//! `target/moto-venv/bin/python -m moto.server -p 5555 &` then
//! `CMEK_TEST_MOTO_URL=http://127.0.0.1:5555 cargo bench --features aws,testkit --bench kms_latency`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmek::kms::aws::{AwsKms, Credentials};
use cmek::testkit::aws_fake::FakeAwsKms;
use cmek::{Client, CompartmentId, DataKey, KeyConfigId, KmsBackend, WrapContext};
use criterion::Criterion;

const ROLE: &str = "arn:aws:iam::123456789012:role/cmek-bench";

async fn backend(endpoint: &str, arn: &str) -> AwsKms {
    AwsKms::builder(arn)
        .role_arn(ROLE)
        .endpoint_url(endpoint)
        .sts_endpoint_url(endpoint)
        .credentials(Credentials::new("AKIDBENCH", "secret", None, None, "bench"))
        .build()
        .await
        .unwrap()
}

async fn moto_key(url: &str) -> String {
    let config = aws_sdk_kms::config::Builder::new()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKIDBENCH", "secret", None, None, "bench"))
        .build();
    let out = aws_sdk_kms::Client::from_conf(config)
        .create_key()
        .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
        .send()
        .await
        .unwrap();
    out.key_metadata().unwrap().arn().unwrap().to_owned()
}

fn bench_backend(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, kms: &AwsKms) {
    let (compartment, key_config) = (
        CompartmentId::new("bench").unwrap(),
        KeyConfigId::new("local").unwrap(),
    );
    let ctx = WrapContext::new(&compartment, &key_config);
    let dek = DataKey::generate().unwrap();
    let wrapped = rt.block_on(kms.wrap(&dek, &ctx)).unwrap();
    let mut g = c.benchmark_group(format!("aws-kms/{name}"));
    g.sample_size(50).measurement_time(Duration::from_secs(5));
    g.bench_function("wrap", |b| {
        b.iter(|| rt.block_on(kms.wrap(&dek, &ctx)).unwrap())
    });
    g.bench_function("unwrap", |b| {
        b.iter(|| rt.block_on(kms.unwrap(&wrapped, &ctx)).unwrap())
    });
    g.finish();
}

/// Encrypts 1,000,000 compact records over 100 compartments and reports the KMS calls made.
fn calls_per_million(rt: &tokio::runtime::Runtime, name: &str, kms: AwsKms) {
    let client = Client::builder()
        .key(KeyConfigId::new("local").unwrap(), Arc::new(kms))
        .dek_store(Arc::new(cmek::MemoryDekStore::new()))
        .build()
        .unwrap();
    let compartments: Vec<_> = (0..100)
        .map(|i| CompartmentId::new(format!("tenant-{i}")).unwrap())
        .collect();
    let started = Instant::now();
    rt.block_on(async {
        let record = [7u8; 256];
        let mut out = Vec::new();
        for i in 0..1_000_000 {
            client
                .encrypt_compact_into(&compartments[i % 100], &record, b"", &mut out)
                .await
                .unwrap();
        }
    });
    let s = client.stats();
    println!(
        "aws-kms/{name}: 1,000,000 records of 256 B over 100 compartments in {:.2} s: {} KMS calls ({} Encrypt), hit ratio {:.4}%",
        started.elapsed().as_secs_f64(),
        s.kms_calls(),
        s.kms_wrap_calls,
        s.hit_ratio() * 100.0
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    let fake = rt.block_on(FakeAwsKms::start()).unwrap();
    let arn = fake.create_key();
    let kms = rt.block_on(backend(&fake.endpoint(), &arn));
    bench_backend(&mut c, &rt, "fake", &kms);
    let moto = std::env::var("CMEK_TEST_MOTO_URL").ok();
    match &moto {
        Some(url) => {
            let arn = rt.block_on(moto_key(url));
            let kms = rt.block_on(backend(url, &arn));
            bench_backend(&mut c, &rt, "moto", &kms);
        }
        None => eprintln!("aws-kms/moto skipped: set CMEK_TEST_MOTO_URL"),
    }
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        calls_per_million(&rt, "fake", kms);
        if let Some(url) = &moto {
            let arn = rt.block_on(moto_key(url));
            calls_per_million(&rt, "moto", rt.block_on(backend(url, &arn)));
        }
    }
}
