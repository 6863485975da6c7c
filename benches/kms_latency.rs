//! KMS round trips through the official clients: wrap and unwrap latency of `AwsKms`
//! (`aws-sdk-kms`) against the testkit AWS fake and, when `CMEK_TEST_MOTO_URL` is set, moto; of
//! `GcpKms` (`google-cloud-kms-v1`) against the testkit Cloud KMS fake and, when
//! `CMEK_TEST_DRONGO_URL` is set, drongo; of `AzureKeyVault` (local RSA-OAEP-256 wrap, remote
//! `unwrapKey` over HTTPS) against the testkit Key Vault fake; then KMS calls per 1,000,000
//! records through the cache.
//!
//! Run (after `scripts/test.sh` has installed the emulators into `target/emulators`):
//! `target/emulators/bin/python -m moto.server -p 5555 &`,
//! `target/emulators/bin/drongo server --port 9090 &`, then
//! `CMEK_TEST_MOTO_URL=http://127.0.0.1:5555 CMEK_TEST_DRONGO_URL=http://127.0.0.1:9090 cargo bench --features aws,gcp,testkit --bench kms_latency`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmek::kms::aws::{AwsKms, Credentials};
use cmek::kms::azure::AzureKeyVault;
use cmek::kms::gcp::{GcpKms, credentials as gcp_credentials};
use cmek::testkit::aws_fake::FakeAwsKms;
use cmek::testkit::azure_fake::{FakeKeyVault, StaticToken};
use cmek::testkit::gcp_fake::FakeGcpKms;
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

async fn gcp_backend(endpoint: &str, key: &str) -> GcpKms {
    GcpKms::builder(key)
        .endpoint(endpoint)
        .credentials(gcp_credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap()
}

/// Creates a key ring and key in drongo; returns the key name.
async fn drongo_key(url: &str) -> String {
    use google_cloud_kms_v1::model::{CryptoKey, crypto_key::CryptoKeyPurpose};
    let admin = google_cloud_kms_v1::client::KeyManagementService::builder()
        .with_endpoint(url)
        .with_credentials(gcp_credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap();
    let ring = format!("bench-{}", std::process::id());
    admin
        .create_key_ring()
        .set_parent("projects/cmek/locations/us")
        .set_key_ring_id(&ring)
        .send()
        .await
        .unwrap();
    admin
        .create_crypto_key()
        .set_parent(format!("projects/cmek/locations/us/keyRings/{ring}"))
        .set_crypto_key_id("k")
        .set_crypto_key(CryptoKey::new().set_purpose(CryptoKeyPurpose::EncryptDecrypt))
        .send()
        .await
        .unwrap()
        .name
}

fn bench_backend(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    kms: &dyn KmsBackend,
) {
    let (compartment, key_config) = (
        CompartmentId::new("bench").unwrap(),
        KeyConfigId::new("local").unwrap(),
    );
    let ctx = WrapContext::new(&compartment, &key_config);
    let dek = DataKey::generate().unwrap();
    let wrapped = rt.block_on(kms.wrap(&dek, &ctx)).unwrap();
    let mut g = c.benchmark_group(name.to_owned());
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
fn calls_per_million(rt: &tokio::runtime::Runtime, name: &str, kms: Arc<dyn KmsBackend>) {
    let client = Client::builder()
        .key(KeyConfigId::new("local").unwrap(), kms)
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
        "{name}: 1,000,000 records of 256 B over 100 compartments in {:.2} s: {} backend calls ({} wraps), hit ratio {:.4}%",
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
    let mut backends: Vec<(String, Arc<dyn KmsBackend>)> = Vec::new();

    let aws_fake = rt.block_on(FakeAwsKms::start()).unwrap();
    let arn = aws_fake.create_key();
    backends.push((
        "aws-kms/fake".into(),
        Arc::new(rt.block_on(backend(&aws_fake.endpoint(), &arn))),
    ));
    match std::env::var("CMEK_TEST_MOTO_URL") {
        Ok(url) => {
            let arn = rt.block_on(moto_key(&url));
            backends.push((
                "aws-kms/moto".into(),
                Arc::new(rt.block_on(backend(&url, &arn))),
            ));
        }
        Err(_) => eprintln!("aws-kms/moto skipped: set CMEK_TEST_MOTO_URL"),
    }
    let gcp_fake = rt.block_on(FakeGcpKms::start()).unwrap();
    let key = gcp_fake.create_key("us");
    backends.push((
        "gcp-kms/fake".into(),
        Arc::new(rt.block_on(gcp_backend(&gcp_fake.endpoint(), &key))),
    ));
    match std::env::var("CMEK_TEST_DRONGO_URL") {
        Ok(url) => {
            let key = rt.block_on(drongo_key(&url));
            backends.push((
                "gcp-kms/drongo".into(),
                Arc::new(rt.block_on(gcp_backend(&url, &key))),
            ));
        }
        Err(_) => eprintln!("gcp-kms/drongo skipped: set CMEK_TEST_DRONGO_URL"),
    }
    let vault = rt.block_on(FakeKeyVault::start("tenant")).unwrap();
    vault.create_key("kek", 3072).unwrap();
    let azure = AzureKeyVault::builder(vault.vault_uri(), "kek")
        .credential(StaticToken::new("token"))
        .root_certificate_pem(vault.ca_pem())
        .unwrap()
        .build()
        .unwrap();
    backends.push(("azure-key-vault/fake".into(), Arc::new(azure)));

    for (name, kms) in &backends {
        bench_backend(&mut c, &rt, name, kms.as_ref());
    }
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        for (name, kms) in backends {
            calls_per_million(&rt, &name, kms);
        }
    }
}
