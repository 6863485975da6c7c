//! The AWS KMS backend against moto (`moto_server`, started by `scripts/test.sh`): a KMS and STS
//! nobody here wrote. moto does not enforce key state, so disabled keys are tested against the
//! testkit fake (`aws.rs`). Skipped unless `CMEK_TEST_MOTO_URL` is set; `scripts/test.sh` sets it
//! and also `CMEK_REQUIRE_EMULATORS=1`, which turns a missing moto into a failure.

mod common;

use std::sync::Arc;

use aws_sdk_kms::config::{BehaviorVersion, Region};
use cmek::kms::aws::{AwsKms, Credentials};
use cmek::testkit::conformance;
use cmek::{Client, DataKey, ErrorKind, KmsBackend, WrapContext, WrappedKey};
use common::*;

const ROLE: &str = "arn:aws:iam::123456789012:role/cmek-moto";

fn moto_url() -> Option<String> {
    match std::env::var("CMEK_TEST_MOTO_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("CMEK_REQUIRE_EMULATORS is set but CMEK_TEST_MOTO_URL is not")
        }
        Err(_) => {
            eprintln!("skipped: set CMEK_TEST_MOTO_URL (scripts/test.sh starts moto)");
            None
        }
    }
}

fn credentials() -> Credentials {
    Credentials::new("AKIDMOTOSERVICE", "moto-secret", None, None, "test")
}

/// Creates a symmetric key in moto through the SDK; returns its ARN.
async fn create_key(url: &str) -> String {
    let config = aws_sdk_kms::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(credentials())
        .build();
    // moto leaves KeyUsage null unless it is given (real KMS defaults it), so name it.
    let out = aws_sdk_kms::Client::from_conf(config)
        .create_key()
        .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
        .key_spec(aws_sdk_kms::types::KeySpec::SymmetricDefault)
        .send()
        .await
        .unwrap();
    out.key_metadata().unwrap().arn().unwrap().to_owned()
}

async fn backend(url: &str, arn: &str) -> AwsKms {
    AwsKms::builder(arn)
        .role_arn(ROLE)
        .endpoint_url(url)
        .sts_endpoint_url(url)
        .credentials(credentials())
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite_against_moto() {
    let Some(url) = moto_url() else { return };
    let arn = create_key(&url).await;
    // moto accepts calls on disabled keys, so the disabled-key check runs against the fake.
    conformance::run_all(Arc::new(backend(&url, &arn).await), None).await;
}

#[tokio::test]
async fn assume_role_through_moto_sts_then_kms() {
    let Some(url) = moto_url() else { return };
    let arn = create_key(&url).await;
    let kms = AwsKms::builder(&arn)
        .role_arn(ROLE)
        .external_id("ext")
        .session_name("cmek-moto-test")
        .endpoint_url(&url)
        .sts_endpoint_url(&url)
        .credentials(credentials())
        .build()
        .await
        .unwrap();
    assert_eq!(kms.role_arn().unwrap().as_str(), ROLE);
    let (c, k) = (compartment("tenant-a"), key_config());
    let dek = DataKey::generate().unwrap();
    let wrapped = kms.wrap(&dek, &WrapContext::new(&c, &k)).await.unwrap();
    assert_eq!(wrapped.key_id, arn);
    let back = kms
        .unwrap(&wrapped, &WrapContext::new(&c, &k))
        .await
        .unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());
    kms.check_key().await.unwrap();
}

#[tokio::test]
async fn unknown_keys_are_refused() {
    let Some(url) = moto_url() else { return };
    let arn = create_key(&url).await;
    let kms = backend(&url, &arn).await;
    let k = key_config();
    let a = compartment("tenant-a");

    let missing = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-4000-8000-000000000000";
    let err = backend(&url, missing)
        .await
        .wrap(&DataKey::generate().unwrap(), &WrapContext::new(&a, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // A blob that names no key: real KMS answers InvalidCiphertextException, moto
    // AccessDeniedException; either way it is refused and not retried.
    let forged = WrappedKey::new(cmek::Provider::Aws, arn.clone(), "", vec![7u8; 120]);
    let err = kms
        .unwrap(&forged, &WrapContext::new(&a, &k))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Integrity | ErrorKind::PermissionDenied
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_client_path_with_cache() {
    let Some(url) = moto_url() else { return };
    let arn = create_key(&url).await;
    let client = Client::builder()
        .key(key_config(), Arc::new(backend(&url, &arn).await))
        .build()
        .unwrap();
    let compartments: Vec<_> = (0..10)
        .map(|i| compartment(&format!("moto-tenant-{i}")))
        .collect();
    let mut envelopes = Vec::new();
    for i in 0..5_000 {
        let c = &compartments[i % 10];
        let env = client
            .encrypt(c, format!("record {i}").as_bytes(), b"moto")
            .await
            .unwrap();
        envelopes.push((c.clone(), i, env));
    }
    let reader = Client::builder()
        .key(key_config(), Arc::new(backend(&url, &arn).await))
        .build()
        .unwrap();
    for (c, i, env) in &envelopes {
        assert_eq!(
            reader.decrypt(c, env, b"moto").await.unwrap(),
            format!("record {i}").as_bytes()
        );
    }
    assert_eq!(client.stats().kms_wrap_calls, 10);
    assert_eq!(reader.stats().kms_unwrap_calls, 10);
}
