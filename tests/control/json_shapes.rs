//! The reference API's JSON shapes: requests, responses, ids.

use cmek::ErrorKind;
use cmek::control::{
    Compartment, CreateExternalKey, ExternalKey, ExternalKeyId, ProviderConfig, ValidationResult,
    ValidationStatus,
};
use serde_json::{Value, json};

#[test]
fn the_seed_create_request_and_response_round_trip() {
    let body = json!({
        "display_name": "x",
        "provider_config": {
            "kms_arn": "arn:aws:kms:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222",
            "role_arn": "arn:aws:iam::111122223333:role/anthropic-cmek",
            "type": "aws"
        }
    });
    let mut request: CreateExternalKey = serde_json::from_value(body.clone()).unwrap();
    assert_eq!(serde_json::to_value(&request).unwrap(), body);
    request.validate().unwrap();
    assert_eq!(request.geo.as_deref(), Some("us"));
    match &request.provider_config {
        ProviderConfig::Aws { region, .. } => assert_eq!(region.as_deref(), Some("us-east-1")),
        other => panic!("{other:?}"),
    }

    let response = json!({
        "id": "ekey_01SDCCSbTxrXDpWc1phhtcfK",
        "created_at": "2024-10-30T23:58:27.427722Z",
        "display_name": "prod-us-key",
        "geo": "us",
        "provider_config": {
            "kms_arn": "arn:aws:kms:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222",
            "role_arn": "arn:aws:iam::111122223333:role/anthropic-cmek",
            "type": "aws",
            "region": "us-east-1"
        },
        "type": "external_key",
        "updated_at": "2024-10-30T23:58:27.427722Z"
    });
    let key: ExternalKey = serde_json::from_value(response.clone()).unwrap();
    assert_eq!(key.id.as_str(), "ekey_01SDCCSbTxrXDpWc1phhtcfK");
    assert_eq!(key.created_at.unix_timestamp(), 1_730_332_707);
    assert_eq!(key.created_at.microsecond(), 427_722);
    assert!(!key.is_validated() && !key.is_deleted());
    assert_eq!(serde_json::to_value(&key).unwrap(), response);
}

#[test]
fn the_seed_azure_and_gcp_requests_round_trip() {
    let azure = json!({
        "display_name": "<friendly-name>",
        "geo": "us",
        "provider_config": {
            "type": "azure",
            "vault_uri": "https://contoso-cmek.vault.azure.net/",
            "key_name": "tenant-kek",
            "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47"
        }
    });
    let mut request: CreateExternalKey = serde_json::from_value(azure.clone()).unwrap();
    request.validate().unwrap();
    assert_eq!(serde_json::to_value(&request).unwrap(), azure);
    assert_eq!(
        request.provider_config.key_ref(),
        "https://contoso-cmek.vault.azure.net/keys/tenant-kek"
    );

    let with_client = json!({"type": "azure", "vault_uri": "https://v.vault.azure.net", "key_name": "k",
        "tenant_id": "72f988bf-86f1-41af-91ab-2d7cd011db47", "client_id": "0f7d2b5c-1a2b-4c3d-8e9f-0a1b2c3d4e5f"});
    let mut config: ProviderConfig = serde_json::from_value(with_client.clone()).unwrap();
    config.validate().unwrap();
    assert_eq!(serde_json::to_value(&config).unwrap(), with_client);

    let gcp = json!({"type": "gcp", "key_name": "projects/acme/locations/us-east1/keyRings/cmek/cryptoKeys/tenant-a"});
    let mut config: ProviderConfig = serde_json::from_value(gcp.clone()).unwrap();
    config.validate().unwrap();
    assert_eq!(serde_json::to_value(&config).unwrap(), gcp);
}

#[test]
fn validation_results_have_the_seed_shape() {
    let seed = json!({ "type": "external_key_validation", "status": "success", "error": null });
    let parsed: ValidationResult = serde_json::from_value(seed.clone()).unwrap();
    assert_eq!(parsed.status, ValidationStatus::Success);
    assert_eq!(serde_json::to_value(&parsed).unwrap(), seed);
}

#[test]
fn compartments_carry_the_seed_fields() {
    let seed = json!({
        "type": "compartment",
        "compartment_id": "f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c",
        "external_key_id": "ekey_01SDCCSbTxrXDpWc1phhtcfK",
        "created_at": "2024-10-30T23:58:27.427722Z",
        "updated_at": "2024-10-30T23:58:27.427722Z"
    });
    let c: Compartment = serde_json::from_value(seed.clone()).unwrap();
    assert_eq!(
        c.compartment_id.as_str(),
        "f8a7b6c5-4d3e-4f1a-8b9c-0d1e2f3a4b5c"
    );
    assert_eq!(serde_json::to_value(&c).unwrap(), seed);

    let fresh = Compartment::new(time::OffsetDateTime::now_utc()).unwrap();
    let id = fresh.compartment_id.as_str();
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    assert_eq!(
        id.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12],
        "{id} is not a UUID"
    );
    assert_eq!(&hex[12..13], "4", "{id} is not version 4");
    assert!(
        matches!(&hex[16..17], "8" | "9" | "a" | "b"),
        "{id} is not RFC 4122"
    );
    assert_eq!(
        serde_json::to_value(&fresh).unwrap()["external_key_id"],
        Value::Null
    );
}

#[test]
fn generated_ids_are_ekey_and_base62() {
    let ids: Vec<ExternalKeyId> = (0..100)
        .map(|_| ExternalKeyId::generate().unwrap())
        .collect();
    for id in &ids {
        let rest = id.as_str().strip_prefix("ekey_").unwrap();
        assert_eq!(rest.len(), 24);
        assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    for bad in ["ekey_", "key_abc", "ekey_a-b", "EKEY_abc"] {
        assert_eq!(
            ExternalKeyId::new(bad).unwrap_err().kind(),
            ErrorKind::InvalidInput,
            "{bad}"
        );
    }
}
