//! Field-level validation of configurations, and the error table.

use crate::fixture::*;

use cmek::ErrorKind;
use cmek::control::{CreateExternalKey, Outcome, ProviderConfig};
use serde_json::{Value, json};

const KMS_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222";
const ROLE_ARN: &str = "arn:aws:iam::111122223333:role/anthropic-cmek";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

#[tokio::test]
async fn invalid_configs_get_field_level_messages() {
    let f = fixture();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"type": "aws", "kms_arn": "arn:aws:kms:us-east-1:111122223333:alias/prod", "role_arn": ROLE_ARN}),
            "provider_config.kms_arn:",
            "alias",
        ),
        (
            json!({"type": "aws", "kms_arn": "not-an-arn", "role_arn": ROLE_ARN}),
            "provider_config.kms_arn:",
            "not an ARN",
        ),
        (
            json!({"type": "aws", "kms_arn": "arn:aws:s3:us-east-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222", "role_arn": ROLE_ARN}),
            "provider_config.kms_arn:",
            "kms",
        ),
        (
            json!({"type": "aws", "kms_arn": "arn:aws:kms:us-east-1:1111:key/abcd1234-5678-90ab-cdef-000011112222", "role_arn": ROLE_ARN}),
            "provider_config.kms_arn:",
            "12 digits",
        ),
        (
            json!({"type": "aws", "kms_arn": "arn:aws:kms:us-east-1:111122223333:key/nope", "role_arn": ROLE_ARN}),
            "provider_config.kms_arn:",
            "key id",
        ),
        (
            json!({"type": "aws", "kms_arn": "arn:aws:kms:eu-west-1:111122223333:key/abcd1234-5678-90ab-cdef-000011112222", "role_arn": ROLE_ARN}),
            "provider_config.kms_arn:",
            "geo \"us\"",
        ),
        (
            json!({"type": "aws", "kms_arn": KMS_ARN, "role_arn": "arn:aws:iam::111122223333:user/bob"}),
            "provider_config.role_arn:",
            "role",
        ),
        (
            json!({"type": "aws", "kms_arn": KMS_ARN, "role_arn": ROLE_ARN, "region": "us-west-2"}),
            "provider_config.region:",
            "does not match",
        ),
        (
            json!({"type": "gcp", "key_name": "projects/acme/keyRings/cmek/cryptoKeys/a"}),
            "provider_config.key_name:",
            "projects/",
        ),
        (
            json!({"type": "gcp", "key_name": "projects/acme/locations/europe-west1/keyRings/cmek/cryptoKeys/a"}),
            "provider_config.key_name:",
            "geo \"us\"",
        ),
        (
            json!({"type": "azure", "vault_uri": "http://v.vault.azure.net", "key_name": "k", "tenant_id": TENANT}),
            "provider_config.vault_uri:",
            "https://",
        ),
        (
            json!({"type": "azure", "vault_uri": "https://v.vault.azure.net/keys/k", "key_name": "k", "tenant_id": TENANT}),
            "provider_config.vault_uri:",
            "no path",
        ),
        (
            json!({"type": "azure", "vault_uri": "https://v.vault.azure.net", "key_name": "my key", "tenant_id": TENANT}),
            "provider_config.key_name:",
            "letters, digits and dashes",
        ),
        (
            json!({"type": "azure", "vault_uri": "https://v.vault.azure.net", "key_name": "k", "tenant_id": "contoso"}),
            "provider_config.tenant_id:",
            "UUID",
        ),
        (
            json!({"type": "azure", "vault_uri": "https://v.vault.azure.net", "key_name": "k", "tenant_id": TENANT, "client_id": "app"}),
            "provider_config.client_id:",
            "UUID",
        ),
        (
            json!({"type": "local", "key_file": ""}),
            "provider_config.key_file:",
            "empty",
        ),
    ];
    for (config, field, hint) in cases {
        let config: ProviderConfig =
            serde_json::from_value(config.clone()).unwrap_or_else(|e| panic!("{config}: {e}"));
        let err = f
            .plane
            .create_external_key(&f.admin, CreateExternalKey::new("k", config.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{config:?}: {err}");
        assert_eq!(err.kind().http_status(), 422);
        assert_eq!(err.kind().api_error_code(), "validation_error");
        assert!(
            err.message().starts_with(field),
            "{config:?}: {:?} should start with {field}",
            err.message()
        );
        assert!(
            err.message().contains(hint),
            "{config:?}: {:?} should mention {hint:?}",
            err.message()
        );
    }

    let (config, _) = f.keys.add(f.dir.path(), "fine");
    let mut request = CreateExternalKey::new("k", config.clone());
    request.geo = Some("eu".into());
    let err = f
        .plane
        .create_external_key(&f.admin, request)
        .await
        .unwrap_err();
    assert!(err.message().starts_with("geo:"), "{err}");
    let err = f
        .plane
        .create_external_key(&f.admin, CreateExternalKey::new(" ", config))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("display_name:"), "{err}");

    // Malformed bodies are rejected by serde with the field named.
    for (body, needle) in [
        (
            json!({"display_name": "k", "provider_config": {"type": "oracle", "key": "x"}}),
            "oracle",
        ),
        (
            json!({"display_name": "k", "provider_config": {"type": "gcp"}}),
            "key_name",
        ),
        (
            json!({"display_name": "k", "provider_config": {"type": "gcp", "key_name": "a", "extra": 1}}),
            "extra",
        ),
    ] {
        let err = serde_json::from_value::<CreateExternalKey>(body)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
    }

    // Nothing invalid was stored, and every attempt was audited as a failure.
    assert!(f.plane.external_keys().await.unwrap().is_empty());
    let actions = f.actions();
    assert_eq!(actions.len(), 18);
    assert!(
        actions
            .iter()
            .all(|(a, o)| a == "external_key.create" && *o == Outcome::Failure)
    );
}

#[test]
fn error_kinds_map_onto_the_reference_error_table() {
    let table = [
        (ErrorKind::InvalidInput, 400, "invalid_request"),
        (ErrorKind::Unauthenticated, 401, "auth_error"),
        (ErrorKind::PermissionDenied, 403, "insufficient_scope"),
        (ErrorKind::NotFound, 404, "not_found"),
        (ErrorKind::AlreadyExists, 409, "already_exists"),
        (ErrorKind::Validation, 422, "validation_error"),
        (ErrorKind::KeyRevoked, 422, "validation_error"),
        (ErrorKind::Throttled, 429, "rate_limited"),
        (ErrorKind::Configuration, 500, "server_error"),
        (ErrorKind::Transient, 503, "server_error"),
    ];
    for (kind, status, code) in table {
        assert_eq!(
            (kind.http_status(), kind.api_error_code()),
            (status, code),
            "{kind}"
        );
    }
}
