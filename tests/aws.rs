//! The AWS KMS backend (real `aws-sdk-kms` client) against the wire-compatible fake of the
//! testkit, which enforces key state: how each AWS answer maps onto error kinds. Outages,
//! throttling and key events under load are in the shared fault suite (`faults.rs`); tests
//! against moto are in `aws_moto.rs`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cmek::kms::KeyStateControl;
use cmek::kms::aws::{AwsKms, Credentials};
use cmek::testkit::aws_fake::{FakeAwsKms, FakeKeySpec, FakeKeyState};
use cmek::testkit::conformance;
use cmek::{
    CacheConfig, Client, DataKey, ErrorKind, KmsBackend, RetryPolicy, WrapContext, WrappedKey,
};
use common::*;

const ROLE: &str = "arn:aws:iam::111122223333:role/cmek-test";

async fn backend(fake: &FakeAwsKms, arn: &str) -> AwsKms {
    AwsKms::builder(arn)
        .role_arn(ROLE)
        .external_id("tenant-external-id")
        .endpoint_url(fake.endpoint())
        .sts_endpoint_url(fake.endpoint())
        .credentials(Credentials::new(
            "AKIDSERVICEIDENTITY",
            "service-secret",
            None,
            None,
            "test",
        ))
        .call_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap()
}

fn client(backend: AwsKms, retry: RetryPolicy) -> Client {
    Client::builder()
        .key(key_config(), Arc::new(backend))
        .retry(retry)
        .breaker(short_breaker())
        .cache(CacheConfig::default())
        .build()
        .unwrap()
}

/// Disables and enables a fake key, for the conformance suite.
struct FakeKeyControl<'a>(&'a FakeAwsKms, String);

#[async_trait]
impl KeyStateControl for FakeKeyControl<'_> {
    async fn disable_key(&self) -> cmek::Result<()> {
        self.0.set_key_state(&self.1, FakeKeyState::Disabled);
        Ok(())
    }
    async fn enable_key(&self) -> cmek::Result<()> {
        self.0.set_key_state(&self.1, FakeKeyState::Enabled);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let kms = Arc::new(backend(&fake, &arn).await);
    conformance::run_all(kms, Some(&FakeKeyControl(&fake, arn))).await;
}

#[tokio::test]
async fn assumes_the_customer_role_and_calls_kms_with_its_session() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let kms = backend(&fake, &arn).await;
    let (c, k) = (compartment("tenant-a"), key_config());
    let dek = DataKey::generate().unwrap();
    let wrapped = kms.wrap(&dek, &WrapContext::new(&c, &k)).await.unwrap();
    kms.unwrap(&wrapped, &WrapContext::new(&c, &k))
        .await
        .unwrap();

    let assumed = fake.assumed_roles();
    assert_eq!(assumed.len(), 1, "one AssumeRole for both calls");
    assert_eq!(assumed[0].role_arn, ROLE);
    assert_eq!(assumed[0].session_name, "cmek");
    assert_eq!(
        assumed[0].external_id.as_deref(),
        Some("tenant-external-id")
    );
    let used = fake.access_keys_used();
    assert_eq!(used.len(), 2);
    assert!(
        used.iter().all(|k| *k == assumed[0].access_key_id),
        "{used:?}"
    );
    assert_eq!(wrapped.key_id, arn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_assumed_role_session_is_refreshed_before_it_expires() {
    let fake = FakeAwsKms::start().await.unwrap();
    // The SDK renews credentials 5–10 s before they expire (a 10 s buffer less up to 5 s of
    // jitter), so a 12 s session is renewed within 7 s.
    fake.set_session_duration(Duration::from_secs(12));
    let arn = fake.create_key();
    let kms = backend(&fake, &arn).await;
    let (c, k) = (compartment("tenant-a"), key_config());
    let dek = DataKey::generate().unwrap();
    for _ in 0..30 {
        // The fake refuses expired sessions, so every call succeeding shows the refresh.
        kms.wrap(&dek, &WrapContext::new(&c, &k)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        fake.assumed_roles().len() >= 2,
        "{:?}",
        fake.assumed_roles()
    );
}

#[tokio::test]
async fn disabled_and_pending_deletion_keys_are_revoked() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let client = client(backend(&fake, &arn).await, fast_retry());
    let c = compartment("tenant-a");
    let env = client.encrypt(&c, b"data", b"").await.unwrap();
    for state in [FakeKeyState::Disabled, FakeKeyState::PendingDeletion] {
        fake.set_key_state(&arn, state);
        client.purge(&c);
        let err = client.encrypt(&c, b"more", b"").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{state:?}: {err}");
        let err = client.decrypt(&c, &env, b"").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{state:?}: {err}");
        assert!(
            err.to_string()
                .contains(if state == FakeKeyState::Disabled {
                    "DisabledException"
                } else {
                    "KMSInvalidStateException"
                }),
            "{err}"
        );
        fake.set_key_state(&arn, FakeKeyState::Enabled);
        // The key's breaker asks the KMS again after its (short, in tests) window.
        tokio::time::sleep(BREAKER_WINDOW).await;
    }
    assert_eq!(client.decrypt(&c, &env, b"").await.unwrap(), b"data");
}

#[tokio::test]
async fn access_denied_is_a_permission_error_and_not_retried() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let client = client(backend(&fake, &arn).await, fast_retry());
    fake.deny_access(&arn, true);
    let err = client
        .encrypt(&compartment("a"), b"x", b"")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    assert!(
        err.to_string().contains("AccessDeniedException") && err.to_string().contains("request id"),
        "{err}"
    );
    assert_eq!(fake.calls("Encrypt"), 1);
}

#[tokio::test]
async fn an_unknown_key_is_not_found() {
    let fake = FakeAwsKms::start().await.unwrap();
    let missing = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000";
    let kms = backend(&fake, missing).await;
    let (c, k) = (compartment("a"), key_config());
    let err = kms
        .wrap(&DataKey::generate().unwrap(), &WrapContext::new(&c, &k))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Through the client a key in use that cannot be found was deleted: revoked, as for reads.
    let client = client(kms, fast_retry());
    let err = client.encrypt(&c, b"x", b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    assert!(err.message().contains("deleted"), "{err}");
}

#[tokio::test]
async fn a_ciphertext_blob_of_another_key_is_refused() {
    let fake = FakeAwsKms::start().await.unwrap();
    let (arn_a, arn_b) = (fake.create_key(), fake.create_key());
    let (kms_a, kms_b) = (backend(&fake, &arn_a).await, backend(&fake, &arn_b).await);
    let (c, k) = (compartment("tenant-a"), key_config());
    let ctx = WrapContext::new(&c, &k);
    let wrapped = kms_a
        .wrap(&DataKey::generate().unwrap(), &ctx)
        .await
        .unwrap();
    // The blob of key A, presented as if key B had wrapped it: Decrypt is pinned to key B.
    let swapped = WrappedKey::new(
        cmek::Provider::Aws,
        arn_b.clone(),
        "",
        wrapped.ciphertext.clone(),
    );
    let err = kms_b.unwrap(&swapped, &ctx).await.err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert_eq!(err.to_string(), "integrity: decryption failed", "opaque");
}

#[tokio::test]
async fn key_checks_for_validation() {
    let fake = FakeAwsKms::start().await.unwrap();
    let good = fake.create_key();
    backend(&fake, &good).await.check_key().await.unwrap();

    let signing = fake.create_key_with(FakeKeySpec {
        key_usage: "SIGN_VERIFY".into(),
        key_spec: "RSA_3072".into(),
        ..FakeKeySpec::default()
    });
    let err = backend(&fake, &signing)
        .await
        .check_key()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("ENCRYPT_DECRYPT"), "{err}");

    let eu = fake.create_key_with(FakeKeySpec {
        region: "eu-west-1".into(),
        ..FakeKeySpec::default()
    });
    let err = backend(&fake, &eu).await.check_key().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("not a US region"), "{err}");

    fake.set_key_state(&good, FakeKeyState::Disabled);
    let err = backend(&fake, &good).await.check_key().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");

    let mrk = fake.create_key_with(FakeKeySpec {
        multi_region: true,
        ..FakeKeySpec::default()
    });
    let err = AwsKms::builder(&mrk).build().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.to_string().contains("multi-region"), "{err}");
}

#[tokio::test]
async fn the_region_comes_from_the_arn_and_a_mismatch_is_refused() {
    let arn = "arn:aws:kms:us-east-2:111122223333:key/abcd1234-5678-90ab-cdef-000011112222";
    let err = AwsKms::builder(arn)
        .region("us-west-2")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(
        err.to_string().contains("region") && err.to_string().contains("us-east-2"),
        "{err}"
    );
    let err = AwsKms::builder(arn)
        .role_arn("arn:aws:iam::1:role/x")
        .build()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("role_arn"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_makes_one_kms_call_per_compartment() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let writer = client(backend(&fake, &arn).await, fast_retry());
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
    assert_eq!(fake.calls("Encrypt"), 10);
    let reader = client(backend(&fake, &arn).await, fast_retry());
    for (c, env) in &envelopes {
        reader.decrypt(c, env, b"").await.unwrap();
    }
    assert_eq!(fake.calls("Decrypt"), 10);
}

/// Everything logged by this test binary. A global subscriber, because thread-local ones race
/// with tracing's per-callsite interest cache when tests run in parallel.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_call_is_traced_without_key_material() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
    });
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let kms = backend(&fake, &arn).await;
    let (c, k) = (compartment("tenant-a"), key_config());
    let dek = DataKey::generate().unwrap();
    let wrapped = kms.wrap(&dek, &WrapContext::new(&c, &k)).await.unwrap();
    kms.unwrap(&wrapped, &WrapContext::new(&c, &k))
        .await
        .unwrap();
    fake.deny_access(&arn, true);
    let _ = kms.wrap(&dek, &WrapContext::new(&c, &k)).await;

    let all = String::from_utf8(LOGS.lock().unwrap().clone()).unwrap();
    let text: String = all
        .lines()
        .filter(|l| l.contains(&arn))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "op=\"Encrypt\"",
        "op=\"Decrypt\"",
        "outcome=\"ok\"",
        "outcome=\"permission_denied\"",
        "provider=\"aws\"",
        "latency_ms",
        "request_id",
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
    use base64::Engine as _;
    let hex: String = dek
        .expose_secret()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(dek.expose_secret());
    assert!(
        !all.contains(&hex) && !all.contains(&b64),
        "key material in the logs"
    );
}

/// STS answering 5xx while the customer's role is assumed is an outage, not bad credentials.
#[tokio::test]
async fn an_sts_outage_is_transient() {
    let fake = FakeAwsKms::start().await.unwrap();
    let arn = fake.create_key();
    let kms = backend(&fake, &arn).await;
    fake.server().set_outage(cmek::testkit::Outage::Errors);
    let (c, k) = (compartment("tenant-a"), key_config());
    let err = kms
        .wrap(&DataKey::generate().unwrap(), &WrapContext::new(&c, &k))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    fake.server().set_outage(cmek::testkit::Outage::None);
    kms.wrap(&DataKey::generate().unwrap(), &WrapContext::new(&c, &k))
        .await
        .unwrap();
}
