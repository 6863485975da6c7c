//! Key events seen through the real SDK clients against the testkit's cloud fakes: a disabled,
//! deleted or denied key stops new data within the documented bounds on every backend, is
//! reported one way and counted once, KMS integrity failures stay opaque, and validation works
//! under a least-privilege key policy.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cmek::control::{
    Actor, ControlPlane, CreateExternalKey, DefaultBackendFactory, MemoryAuditSink,
    MemoryControlStore, ProviderConfig, VALIDATION_COMPARTMENT, ValidationStatus,
};
use cmek::kms::aws::{AwsKms, Credentials};
use cmek::kms::azure::AzureKeyVault;
use cmek::testkit::aws_fake::FakeAwsKms;
use cmek::testkit::azure_fake::{FakeKeyVault, StaticToken};
use cmek::{
    CacheConfig, Client, DataKey, ErrorKind, KmsBackend, LocalKms, WrapContext, WrappedKey,
};
use common::*;

const ROLE: &str = "arn:aws:iam::111122223333:role/cmek-events";
const TENANT: &str = "00000000-0000-4000-8000-0000000000aa";

fn aws_credentials() -> Credentials {
    Credentials::new("AKIDSERVICE", "service-secret", None, None, "test")
}

async fn aws_backend(fake: &FakeAwsKms, arn: &str) -> AwsKms {
    AwsKms::builder(arn)
        .role_arn(ROLE)
        .endpoint_url(fake.endpoint())
        .sts_endpoint_url(fake.endpoint())
        .credentials(aws_credentials())
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

fn azure_backend(vault: &FakeKeyVault, key: &str) -> AzureKeyVault {
    AzureKeyVault::builder(vault.vault_uri(), key)
        .tenant_id(TENANT)
        .credential(StaticToken::new("t"))
        .root_certificate_pem(vault.ca_pem())
        .unwrap()
        .build()
        .unwrap()
}

fn client_over(backend: Arc<dyn KmsBackend>, cache: CacheConfig) -> Client {
    Client::builder()
        .key(key_config(), backend)
        .cache(cache)
        .retry(fast_retry())
        .build()
        .unwrap()
}

/// Writes only (a warm compartment and a new cold one every few milliseconds) after `revoke`;
/// returns how long after it the last write succeeded.
async fn last_write_after(client: &Client, revoke: impl FnOnce(), run_for: Duration) -> Duration {
    let warm = compartment("tenant-warm");
    client.encrypt(&warm, b"before", b"").await.unwrap();
    revoke();
    let revoked_at = Instant::now();
    let mut last_ok = Duration::ZERO;
    let mut i = 0;
    while revoked_at.elapsed() < run_for {
        i += 1;
        let cold = compartment(&format!("tenant-cold-{i}"));
        for c in [&warm, &cold] {
            if client.encrypt(c, b"after", b"").await.is_ok() {
                last_ok = revoked_at.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    last_ok
}

/// Azure wraps locally with the key's public half; a disabled key must still stop new data
/// within `encrypt_max_age` when nothing is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_writes_stop_within_the_encrypt_bound_after_a_disable() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    vault.create_key("kek", 3072).unwrap();
    let mut cache = CacheConfig::default();
    cache.encrypt_max_age = Duration::from_millis(500);
    let client = client_over(Arc::new(azure_backend(&vault, "kek")), cache);
    let last = last_write_after(
        &client,
        || vault.set_enabled("kek", None, false),
        Duration::from_millis(1500),
    )
    .await;
    assert!(
        last <= Duration::from_millis(500),
        "writes went on {last:?} after the key was disabled"
    );
}

/// A key policy that starts denying a key that worked is treated like a disable for new data,
/// and counted as one revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_access_denied_on_a_working_key_stops_new_data_and_is_counted() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let client = client_over(
        Arc::new(aws_backend(&fake, &arn).await),
        CacheConfig::default(),
    );
    let warm = compartment("tenant-warm");
    let record = client.encrypt(&warm, b"before", b"").await.unwrap();
    fake.deny_access(&arn, true);
    // Any KMS answer shows the denial: here a cold compartment's first write.
    let err = client
        .encrypt(&compartment("tenant-cold"), b"x", b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let err = client.encrypt(&warm, b"after", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert_eq!(client.stats().revocations_detected, 1);
    // Reads of cached data keys run out as after a disable; access restored, writes resume.
    assert_eq!(
        client.decrypt(&warm, &record, b"").await.unwrap(),
        b"before"
    );
    fake.deny_access(&arn, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.encrypt(&warm, b"again", b"").await.is_err() {
        assert!(Instant::now() < deadline, "writes did not resume");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deleted key is reported as revoked to writers and readers alike, and counted once however
/// many calls fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_a_deleted_key_is_one_revocation_for_writes_and_reads() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let mut cache = CacheConfig::default();
    cache.decrypt_max_age = Duration::from_millis(200);
    let client = client_over(Arc::new(aws_backend(&fake, &arn).await), cache);
    let c = compartment("tenant-a");
    let envelope = client.encrypt(&c, b"data", b"").await.unwrap();
    fake.delete_key(&arn);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..30 {
        let err = client
            .encrypt(&compartment(&format!("tenant-{i}")), b"x", b"")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "write {i}: {err}");
        let err = client.decrypt(&c, &envelope, b"").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "read {i}: {err}");
    }
    assert_eq!(client.stats().revocations_detected, 1);
}

/// A tampered wrapped key is refused by AWS KMS with `InvalidCiphertextException`; the error
/// says only "decryption failed" (the detail goes to debug tracing).
#[tokio::test]
async fn aws_integrity_failures_carry_no_detail() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let kms = aws_backend(&fake, &arn).await;
    let (c, k) = (compartment("tenant-a"), key_config());
    let ctx = WrapContext::new(&c, &k);
    let wrapped = kms.wrap(&DataKey::generate().unwrap(), &ctx).await.unwrap();
    let mut blob = wrapped.ciphertext.clone();
    let last = blob.len() - 1;
    blob[last] ^= 1;
    let tampered = WrappedKey::new(
        wrapped.provider,
        wrapped.key_id.clone(),
        wrapped.key_version.clone(),
        blob,
    );
    let err = kms.unwrap(&tampered, &ctx).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Integrity);
    assert_eq!(err.to_string(), "integrity: decryption failed");
    assert_eq!(format!("{err:?}").matches(&arn).count(), 0, "{err:?}");
}

/// A customer whose key policy allows `kms:EncryptionContext:compartment_id` only for its own
/// compartments and the documented validation value passes validation.
#[tokio::test]
async fn validation_passes_under_a_least_privilege_key_policy() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let audit = Arc::new(MemoryAuditSink::new());
    let plane = ControlPlane::builder()
        .store(Arc::new(MemoryControlStore::new()))
        .audit(audit)
        .factory(Arc::new(
            DefaultBackendFactory::new()
                .aws_endpoint(fake.endpoint())
                .aws_credentials(aws_credentials()),
        ))
        .provider_managed(Arc::new(LocalKms::generate("local:provider").unwrap()))
        .retry(fast_retry())
        .build()
        .unwrap();
    let admin = Actor::new("admin");
    let config: ProviderConfig = serde_json::from_value(
        serde_json::json!({"type": "aws", "kms_arn": arn, "role_arn": ROLE}),
    )
    .unwrap();
    let key = plane
        .create_external_key(&admin, CreateExternalKey::new("least privilege", config))
        .await
        .unwrap();
    let c = plane.create_compartment(&admin, None).await.unwrap();
    fake.restrict_compartments(
        &arn,
        Some(&[VALIDATION_COMPARTMENT, c.compartment_id.as_str()]),
    );
    let result = plane.validate_external_key(&admin, &key.id).await.unwrap();
    assert_eq!(result.status, ValidationStatus::Success, "{result:?}");
    plane
        .attach_external_key(&admin, &c.compartment_id, &key.id)
        .await
        .unwrap();
    let client = plane.client();
    let envelope = client
        .encrypt(&c.compartment_id, b"allowed", b"")
        .await
        .unwrap();
    assert_eq!(
        client
            .decrypt(&c.compartment_id, &envelope, b"")
            .await
            .unwrap(),
        b"allowed"
    );
    // The refusal of the other validation compartment is no revocation.
    assert_eq!(client.stats().revocations_detected, 0);
}
