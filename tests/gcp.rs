//! The Cloud KMS backend (official `google-cloud-kms-v1` client over REST) against the testkit
//! fake: conformance, rotation, disabled and destroyed versions, CRC32C corruption either way,
//! throttling, 5xx, key checks. A smoke test against drongo is in `gcp_drongo.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cmek::kms::KeyStateControl;
use cmek::kms::gcp::{GcpKms, credentials};
use cmek::testkit::conformance;
use cmek::testkit::gcp_fake::{FakeGcpKms, FakeVersionState, GcpFault};
use cmek::{Client, DataKey, ErrorKind, KmsBackend, WrapContext, inspect};
use common::*;

async fn backend(fake: &FakeGcpKms, key: &str) -> GcpKms {
    GcpKms::builder(key)
        .endpoint(fake.endpoint())
        .credentials(credentials::anonymous::Builder::new().build())
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

fn client(kms: GcpKms) -> Client {
    Client::builder()
        .key(key_config(), Arc::new(kms))
        .retry(fast_retry())
        .build()
        .unwrap()
}

/// Disables and enables the primary version, for the conformance suite.
struct Control<'a>(&'a FakeGcpKms, String);

#[async_trait]
impl KeyStateControl for Control<'_> {
    async fn disable_key(&self) -> cmek::Result<()> {
        self.0
            .set_version_state(&self.1, 1, FakeVersionState::Disabled);
        Ok(())
    }
    async fn enable_key(&self) -> cmek::Result<()> {
        self.0
            .set_version_state(&self.1, 1, FakeVersionState::Enabled);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let fake = FakeGcpKms::start().await.unwrap();
    let key = fake.create_key("us-central1");
    let kms = Arc::new(backend(&fake, &key).await);
    conformance::run_all(kms, Some(&Control(&fake, key))).await;
}

#[tokio::test]
async fn the_encrypting_version_is_recorded_and_rotation_keeps_old_data_readable() {
    let fake = FakeGcpKms::start().await.unwrap();
    let key = fake.create_key("us");
    let client = client(backend(&fake, &key).await);
    let c = compartment("tenant-a");
    let old = client.encrypt(&c, b"before rotation", b"").await.unwrap();
    assert_eq!(inspect(&old).unwrap().key_version.as_deref(), Some("1"));
    assert_eq!(inspect(&old).unwrap().key_id.as_deref(), Some(key.as_str()));

    assert_eq!(fake.rotate(&key), 2);
    client.purge(&c);
    let new = client.encrypt(&c, b"after rotation", b"").await.unwrap();
    assert_eq!(inspect(&new).unwrap().key_version.as_deref(), Some("2"));

    let reader = self::client(backend(&fake, &key).await);
    assert_eq!(
        reader.decrypt(&c, &old, b"").await.unwrap(),
        b"before rotation"
    );
    assert_eq!(
        reader.decrypt(&c, &new, b"").await.unwrap(),
        b"after rotation"
    );
}

#[tokio::test]
async fn disabled_and_destroyed_versions_are_revoked() {
    let fake = FakeGcpKms::start().await.unwrap();
    let key = fake.create_key("us");
    let writer = client(backend(&fake, &key).await);
    let c = compartment("tenant-a");
    let env = writer.encrypt(&c, b"data", b"").await.unwrap();
    fake.rotate(&key);

    fake.set_version_state(&key, 1, FakeVersionState::Disabled);
    let reader = client(backend(&fake, &key).await);
    let err = reader.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    assert!(
        err.to_string().contains("FAILED_PRECONDITION") && err.to_string().contains("DISABLED"),
        "{err}"
    );

    fake.set_version_state(&key, 1, FakeVersionState::Enabled);
    let reader = client(backend(&fake, &key).await);
    assert_eq!(reader.decrypt(&c, &env, b"").await.unwrap(), b"data");

    fake.set_version_state(&key, 1, FakeVersionState::Destroyed);
    let reader = client(backend(&fake, &key).await);
    let err = reader.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");

    fake.set_version_state(&key, 2, FakeVersionState::Disabled);
    let err = reader.encrypt(&c, b"new", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
}

#[tokio::test]
async fn corrupted_checksums_are_repeated_then_fail_as_integrity() {
    let fake = FakeGcpKms::start().await.unwrap();
    let key = fake.create_key("us");
    let kms = backend(&fake, &key).await;
    let (c, k) = (compartment("tenant-a"), key_config());
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().unwrap();

    // One corruption each way (and one unconfirmed request): repeated, then fine.
    for fault in [
        GcpFault::CorruptResponseCrc,
        GcpFault::CorruptRequest,
        GcpFault::UnverifiedRequest,
    ] {
        let before = fake.calls("encrypt");
        fake.inject(fault.clone(), 1);
        kms.wrap(&dek, &ctx)
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(fake.calls("encrypt") - before, 2, "{fault:?}");
    }
    let wrapped = kms.wrap(&dek, &ctx).await.unwrap();
    for fault in [GcpFault::CorruptResponseCrc, GcpFault::CorruptRequest] {
        fake.inject(fault, 1);
        let back = kms.unwrap(&wrapped, &ctx).await.unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());
    }

    // Persistent corruption: 1 + 2 repeats, then Integrity, and the client does not retry it.
    let client = client(backend(&fake, &key).await);
    let before = fake.calls("encrypt");
    fake.inject(GcpFault::CorruptResponseCrc, 10);
    let err = client.encrypt(&c, b"x", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert_eq!(err.to_string(), "integrity: decryption failed", "opaque");
    assert_eq!(fake.calls("encrypt") - before, 3);
}

#[tokio::test]
async fn permission_and_unknown_keys() {
    let fake = FakeGcpKms::start().await.unwrap();
    let key = fake.create_key("us");
    let kms = backend(&fake, &key).await;
    let k = key_config();
    let a = compartment("tenant-a");

    fake.deny_access(&key, true);
    let err = kms
        .wrap(&DataKey::generate().unwrap(), &WrapContext::new(&a, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("cryptoKeyEncrypterDecrypter"),
        "{err}"
    );

    let missing = backend(
        &fake,
        "projects/cmek-test/locations/us/keyRings/ring/cryptoKeys/missing",
    )
    .await;
    let err = missing
        .wrap(&DataKey::generate().unwrap(), &WrapContext::new(&a, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn key_checks_for_validation() {
    let fake = FakeGcpKms::start().await.unwrap();
    let good = fake.create_key("us-east1");
    backend(&fake, &good).await.check_key().await.unwrap();

    let signing = fake.create_key_with_purpose("us", "ASYMMETRIC_SIGN");
    let err = backend(&fake, &signing)
        .await
        .check_key()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("ENCRYPT_DECRYPT"), "{err}");

    let eu = fake.create_key("europe-west1");
    let err = backend(&fake, &eu).await.check_key().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("not a US location"), "{err}");

    fake.set_version_state(&good, 1, FakeVersionState::Disabled);
    let err = backend(&fake, &good).await.check_key().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");

    let err =
        GcpKms::builder("projects/p/locations/us/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1")
            .build()
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("key_name") && err.to_string().contains("version"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_makes_one_kms_call_per_compartment() {
    let fake = FakeGcpKms::start().await.unwrap();
    let key = fake.create_key("us");
    let writer = client(backend(&fake, &key).await);
    let compartments: Vec<_> = (0..10)
        .map(|i| compartment(&format!("tenant-{i}")))
        .collect();
    let mut envelopes = Vec::new();
    for i in 0..10_000 {
        let c = &compartments[i % 10];
        envelopes.push((
            c.clone(),
            writer
                .encrypt(c, format!("record {i}").as_bytes(), b"")
                .await
                .unwrap(),
        ));
    }
    assert_eq!(fake.calls("encrypt"), 10);
    let reader = client(backend(&fake, &key).await);
    for (c, env) in &envelopes {
        reader.decrypt(c, env, b"").await.unwrap();
    }
    assert_eq!(fake.calls("decrypt"), 10);
}
