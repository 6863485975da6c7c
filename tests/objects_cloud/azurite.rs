//! Azure Blob through `object_store`'s Azure client, against Azurite.

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use object_store::azure::MicrosoftAzureBuilder;

use super::{http, server, suites};

/// Azurite's well-known development account and key.
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Creates `container` with a request signed by the development account's shared key.
fn create_container(url: &str, container: &str) -> u16 {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap()
        .replace("+0000", "GMT");
    let version = "2021-08-06";
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD
        .decode(KEY)
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    http(
        "PUT",
        &format!("{url}/{ACCOUNT}/{container}?restype=container"),
        &[
            ("x-ms-date", date),
            ("x-ms-version", version.to_string()),
            ("Authorization", format!("SharedKey {ACCOUNT}:{signature}")),
        ],
    )
}

#[tokio::test]
async fn azure_blob_on_azurite_passes_both_suites() {
    // object_store's Azure client finds Azurite through AZURITE_BLOB_STORAGE_URL.
    let Some(url) = server("AZURITE_BLOB_STORAGE_URL") else {
        return;
    };
    for container in ["cmek-objects-fixed", "cmek-objects"] {
        let status = create_container(&url, container);
        assert!(
            status == 201 || status == 409,
            "create container {container}: {status}"
        );
    }
    let azure = |container: &str| {
        MicrosoftAzureBuilder::new()
            .with_use_emulator(true)
            .with_container_name(container)
            .build()
            .unwrap()
    };
    suites::object_store_suite(
        &suites::encrypted_fixed(azure("cmek-objects-fixed")),
        true,
        false,
        true,
    )
    .await;
    cmek::testkit::objects::run_all(&suites::encrypted(azure("cmek-objects"))).await;
}
