//! A smoke test of the Cloud KMS backend against drongo, a third-party Cloud KMS emulator from
//! PyPI (it checks names and AAD but does no real cryptography), so the official client is also
//! checked against a server nobody here wrote. Skipped unless `CMEK_TEST_DRONGO_URL` is set;
//! `scripts/test.sh` starts drongo and sets it, with `CMEK_REQUIRE_EMULATORS=1`.

mod common;

use cmek::kms::gcp::{GcpKms, credentials};
use cmek::{DataKey, ErrorKind, KmsBackend, WrapContext};
use common::*;
use google_cloud_kms_v1::client::KeyManagementService;
use google_cloud_kms_v1::model::CryptoKey;
use google_cloud_kms_v1::model::crypto_key::CryptoKeyPurpose;

fn drongo_url() -> Option<String> {
    match std::env::var("CMEK_TEST_DRONGO_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CMEK_REQUIRE_EMULATORS").is_some() => {
            panic!("CMEK_REQUIRE_EMULATORS is set but CMEK_TEST_DRONGO_URL is not")
        }
        Err(_) => {
            eprintln!("skipped: set CMEK_TEST_DRONGO_URL (scripts/test.sh starts drongo)");
            None
        }
    }
}

#[tokio::test]
async fn wrap_unwrap_and_checks_against_drongo() {
    let Some(url) = drongo_url() else { return };
    // Create a key ring and key through the official client.
    let admin = KeyManagementService::builder()
        .with_endpoint(&url)
        .with_credentials(credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap();
    let ring = format!("ring-{}", std::process::id());
    admin
        .create_key_ring()
        .set_parent("projects/cmek/locations/us")
        .set_key_ring_id(&ring)
        .send()
        .await
        .unwrap();
    let key = admin
        .create_crypto_key()
        .set_parent(format!("projects/cmek/locations/us/keyRings/{ring}"))
        .set_crypto_key_id("tenant-key")
        .set_crypto_key(CryptoKey::new().set_purpose(CryptoKeyPurpose::EncryptDecrypt))
        .send()
        .await
        .unwrap();

    let kms = GcpKms::builder(&key.name)
        .endpoint(&url)
        .credentials(credentials::anonymous::Builder::new().build())
        .build()
        .await
        .unwrap();
    kms.check_key().await.unwrap();
    let k = key_config();
    let (a, b) = (compartment("tenant-a"), compartment("tenant-b"));
    let dek = DataKey::generate().unwrap();
    let wrapped = kms.wrap(&dek, &WrapContext::new(&a, &k)).await.unwrap();
    assert_eq!(wrapped.key_version, "1");
    let back = kms
        .unwrap(&wrapped, &WrapContext::new(&a, &k))
        .await
        .unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());
    let err = kms
        .unwrap(&wrapped, &WrapContext::new(&b, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");

    let missing = GcpKms::builder(format!(
        "projects/cmek/locations/us/keyRings/{ring}/cryptoKeys/missing"
    ))
    .endpoint(&url)
    .credentials(credentials::anonymous::Builder::new().build())
    .build()
    .await
    .unwrap();
    let err = missing
        .wrap(&dek, &WrapContext::new(&a, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}
