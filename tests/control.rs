//! The control plane over local keys behind fault-injecting backends: the reference API's JSON,
//! field-level validation, classified validation outcomes, write-once attachment, rotation and
//! rewrap, deletion and revocation, restart, audit events.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cmek::control::{
    Actor, AuditEvent, BackendFactory, Compartment, ControlPlane, ControlStore, CreateExternalKey,
    DefaultBackendFactory, ExternalKey, ExternalKeyId, FileControlStore, JsonLinesAuditSink,
    MemoryAuditSink, MemoryControlStore, Outcome, PROVIDER_MANAGED, ProviderConfig, RewrapJob,
    ValidationResult, ValidationStatus,
};
use cmek::testkit::{Fault, FaultyKms};
use cmek::{
    CacheConfig, CompartmentId, DataKey, DekStore, ErrorKind, FileDekStore, KeyDescription,
    KmsBackend, LocalKms, MemoryDekStore, Provider, WrapContext, WrappedKey,
};
use common::{BREAKER_WINDOW, fast_retry, short_breaker};
use serde_json::{Value, json};

/// Hands out registered fault-injecting local keys by key file; anything else goes to the
/// default factory.
#[derive(Debug, Default)]
struct Keys(
    Mutex<HashMap<String, Arc<dyn KmsBackend>>>,
    /// Backends handed out so far.
    std::sync::atomic::AtomicUsize,
);

impl Keys {
    fn add(&self, dir: &Path, name: &str) -> (ProviderConfig, Arc<FaultyKms>) {
        let path = dir.join(format!("{name}.key"));
        let kms = Arc::new(FaultyKms::new(
            LocalKms::create(&path, format!("local:{name}")).unwrap(),
        ));
        let config = ProviderConfig::Local {
            key_file: path.display().to_string(),
        };
        self.register(&config, kms.clone());
        (config, kms)
    }

    fn register(&self, config: &ProviderConfig, backend: Arc<dyn KmsBackend>) {
        self.0.lock().unwrap().insert(config.key_ref(), backend);
    }

    fn builds(&self) -> usize {
        self.1.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl BackendFactory for Keys {
    async fn backend(&self, config: &ProviderConfig) -> cmek::Result<Arc<dyn KmsBackend>> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Building a cloud client takes a while (credentials, sometimes a network call).
        tokio::time::sleep(Duration::from_millis(2)).await;
        let registered = self.0.lock().unwrap().get(&config.key_ref()).cloned();
        match registered {
            Some(backend) => Ok(backend),
            None => DefaultBackendFactory::new().backend(config).await,
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    keys: Arc<Keys>,
    audit: Arc<MemoryAuditSink>,
    provider_managed: Arc<FaultyKms>,
    dek_store: Arc<dyn DekStore>,
    plane: ControlPlane,
    admin: Actor,
}

fn fixture_with(store: Arc<dyn ControlStore>, cache: CacheConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(Keys::default());
    let audit = Arc::new(MemoryAuditSink::new());
    let provider_managed = Arc::new(FaultyKms::new(
        LocalKms::generate("local:provider").unwrap(),
    ));
    let dek_store: Arc<dyn DekStore> = Arc::new(MemoryDekStore::new());
    let plane = ControlPlane::builder()
        .store(store)
        .dek_store(dek_store.clone())
        .audit(audit.clone())
        .factory(keys.clone())
        .provider_managed(provider_managed.clone())
        .cache(cache)
        .retry(fast_retry())
        .breaker(short_breaker())
        .build()
        .unwrap();
    Fixture {
        dir,
        keys,
        audit,
        provider_managed,
        dek_store,
        plane,
        admin: Actor::new("admin@example.com"),
    }
}

fn fixture() -> Fixture {
    fixture_with(Arc::new(MemoryControlStore::new()), CacheConfig::default())
}

impl Fixture {
    /// A registered local key and its configuration, created (not validated).
    async fn key(&self, name: &str) -> (ExternalKey, Arc<FaultyKms>) {
        let (config, kms) = self.keys.add(self.dir.path(), name);
        let key = self
            .plane
            .create_external_key(&self.admin, CreateExternalKey::new(name, config))
            .await
            .unwrap();
        (key, kms)
    }

    /// A registered local key, created and validated.
    async fn validated_key(&self, name: &str) -> (ExternalKey, Arc<FaultyKms>) {
        let (key, kms) = self.key(name).await;
        let result = self
            .plane
            .validate_external_key(&self.admin, &key.id)
            .await
            .unwrap();
        assert_eq!(result.status, ValidationStatus::Success, "{result:?}");
        (key, kms)
    }

    async fn compartment(&self, key: Option<&ExternalKeyId>) -> CompartmentId {
        self.plane
            .create_compartment(&self.admin, key)
            .await
            .unwrap()
            .compartment_id
    }

    fn actions(&self) -> Vec<(String, Outcome)> {
        self.audit
            .events()
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect()
    }
}

/// Drops every cached data key of these compartments, so the next calls go to the KMS.
fn purge(client: &cmek::Client, compartments: &[CompartmentId]) {
    for c in compartments {
        client.purge(c);
    }
}

fn inspect(envelope: &[u8]) -> cmek::format::EnvelopeInfo {
    cmek::format::inspect(envelope).unwrap()
}

// ---------------------------------------------------------------------------------------------
// JSON shapes of the reference API

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

// ---------------------------------------------------------------------------------------------
// Field-level validation

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

// ---------------------------------------------------------------------------------------------
// Validate

#[tokio::test]
async fn validate_classifies_each_failure_cause() {
    let f = fixture();
    let (key, kms) = f.key("customer").await;
    let cases: Vec<(Vec<Fault>, bool, &str)> = vec![
        (
            vec![Fault::Fail(ErrorKind::PermissionDenied)],
            false,
            "permission_denied",
        ),
        (
            vec![Fault::Fail(ErrorKind::Unauthenticated)],
            false,
            "authentication_failed",
        ),
        (
            vec![Fault::Fail(ErrorKind::Transient); 8],
            false,
            "network_error",
        ),
        (
            vec![Fault::Fail(ErrorKind::NotFound)],
            false,
            "key_not_found",
        ),
        (vec![], true, "key_disabled"),
        (
            vec![Fault::Fail(ErrorKind::Validation)],
            false,
            "wrong_key_type",
        ),
        // The key checks and the wrap pass, the unwrap under the same context does not.
        (
            vec![Fault::Pass, Fault::Pass, Fault::Fail(ErrorKind::Integrity)],
            false,
            "context_mismatch",
        ),
    ];
    for (faults, disable, cause) in cases {
        kms.clear_faults();
        kms.push_faults(faults);
        if disable {
            kms.disable();
        }
        let result = f
            .plane
            .validate_external_key(&f.admin, &key.id)
            .await
            .unwrap();
        kms.enable();
        assert_eq!(result.status, ValidationStatus::Failure, "{cause}");
        let error = result.error.clone().unwrap();
        assert_eq!(error.kind, cause, "{result:?}");
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["type"], "external_key_validation");
        assert_eq!(json["status"], "failure");
        assert_eq!(json["error"]["type"], cause);
        if cause == "permission_denied" {
            assert!(
                error.message.contains("propagate") && error.message.contains("retry later"),
                "{}",
                error.message
            );
        }
        // A failed validation is recorded and blocks attaching.
        let stored = f.plane.external_key(&key.id).await.unwrap();
        assert!(!stored.is_validated());
        let c = f.compartment(None).await;
        let err = f
            .plane
            .attach_external_key(&f.admin, &c, &key.id)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{err}");
    }

    // A transient failure is retried and the validation succeeds; a permission failure is not
    // retried (the script would have let a second attempt pass).
    kms.push_faults([
        Fault::Fail(ErrorKind::Transient),
        Fault::Fail(ErrorKind::Throttled),
    ]);
    let retried = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    assert_eq!(
        (retried.status, retried.error),
        (ValidationStatus::Success, None)
    );
    kms.push_faults([Fault::Fail(ErrorKind::PermissionDenied)]);
    let result = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    assert_eq!(result.error.unwrap().kind, "permission_denied");

    let validations: Vec<Outcome> = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == "external_key.validate")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(validations.len(), 9);
    assert_eq!(
        validations
            .iter()
            .filter(|o| **o == Outcome::Success)
            .count(),
        1
    );
}

/// A "KMS" that ignores the context: it unwraps a data key under any compartment.
#[derive(Debug)]
struct IgnoresContext(LocalKms);

impl std::fmt::Display for IgnoresContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IgnoresContext({})", self.0)
    }
}

#[async_trait]
impl KmsBackend for IgnoresContext {
    fn provider(&self) -> Provider {
        Provider::Local
    }
    async fn describe(&self) -> cmek::Result<KeyDescription> {
        self.0.describe().await
    }
    async fn wrap(&self, dek: &DataKey, context: &WrapContext<'_>) -> cmek::Result<WrappedKey> {
        let fixed = CompartmentId::new("fixed").unwrap();
        self.0
            .wrap(dek, &WrapContext::new(&fixed, context.key_config()))
            .await
    }
    async fn unwrap(
        &self,
        wrapped: &WrappedKey,
        context: &WrapContext<'_>,
    ) -> cmek::Result<DataKey> {
        let fixed = CompartmentId::new("fixed").unwrap();
        self.0
            .unwrap(wrapped, &WrapContext::new(&fixed, context.key_config()))
            .await
    }
}

#[tokio::test]
async fn validate_rejects_a_key_that_does_not_bind_compartments() {
    let f = fixture();
    let config = ProviderConfig::Local {
        key_file: "/nonexistent/ignores-context".into(),
    };
    f.keys.register(
        &config,
        Arc::new(IgnoresContext(LocalKms::generate("local:loose").unwrap())),
    );
    let key = f
        .plane
        .create_external_key(&f.admin, CreateExternalKey::new("loose", config))
        .await
        .unwrap();
    let result = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    let error = result.error.unwrap();
    assert_eq!(error.kind, "context_mismatch");
    assert!(
        error.message.contains("another compartment"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn validate_reports_a_missing_key_file_as_not_found() {
    let f = fixture();
    let config = ProviderConfig::Local {
        key_file: f.dir.path().join("missing.key").display().to_string(),
    };
    let key = f
        .plane
        .create_external_key(&f.admin, CreateExternalKey::new("gone", config))
        .await
        .unwrap();
    let result = f
        .plane
        .validate_external_key(&f.admin, &key.id)
        .await
        .unwrap();
    assert_eq!(result.error.unwrap().kind, "key_not_found");
    let unknown = ExternalKeyId::new("ekey_doesnotexist").unwrap();
    let err = f
        .plane
        .validate_external_key(&f.admin, &unknown)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.kind().http_status()),
        (ErrorKind::NotFound, 404)
    );
}

// ---------------------------------------------------------------------------------------------
// Compartments and the write-once attachment

#[tokio::test]
async fn data_written_before_attaching_stays_readable_and_new_data_uses_the_key() {
    let f = fixture();
    let c = f.compartment(None).await;
    let client = f.plane.client();
    let before = client.encrypt(&c, b"before", b"").await.unwrap();
    let before_compact = client
        .encrypt_compact(&c, b"before, compact", b"")
        .await
        .unwrap();
    assert_eq!(
        inspect(&before).key_config_id.as_deref(),
        Some(PROVIDER_MANAGED)
    );
    assert_eq!(
        f.provider_managed.wrap_calls(),
        1,
        "one provider-managed data key for both"
    );

    let (key, kms) = f.validated_key("customer").await;
    let wraps = kms.wrap_calls();
    let attached = f
        .plane
        .attach_external_key(&f.admin, &c, &key.id)
        .await
        .unwrap();
    assert_eq!(attached.external_key_id.as_ref(), Some(&key.id));
    let after = client.encrypt(&c, b"after", b"").await.unwrap();
    let info = inspect(&after);
    assert_eq!(info.key_config_id.as_deref(), Some(key.id.as_str()));
    assert_eq!(info.compartment_id.as_deref(), Some(c.as_str()));
    assert_eq!(kms.wrap_calls(), wraps + 1);

    assert_eq!(client.decrypt(&c, &before, b"").await.unwrap(), b"before");
    assert_eq!(
        client.decrypt(&c, &before_compact, b"").await.unwrap(),
        b"before, compact"
    );
    assert_eq!(client.decrypt(&c, &after, b"").await.unwrap(), b"after");

    // The data key is bound to the compartment: another compartment cannot open it.
    let other = f.compartment(Some(&key.id)).await;
    assert_eq!(
        client
            .decrypt(&other, &after, b"")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Integrity
    );
}

#[tokio::test]
async fn attaching_is_write_once_and_idempotent() {
    let f = fixture();
    let (a, _) = f.validated_key("a").await;
    let (b, _) = f.validated_key("b").await;
    let c = f.compartment(None).await;
    f.plane
        .attach_external_key(&f.admin, &c, &a.id)
        .await
        .unwrap();
    let again = f
        .plane
        .attach_external_key(&f.admin, &c, &a.id)
        .await
        .unwrap();
    assert_eq!(again.external_key_id.as_ref(), Some(&a.id));
    let err = f
        .plane
        .attach_external_key(&f.admin, &c, &b.id)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.kind().http_status()),
        (ErrorKind::AlreadyExists, 409)
    );
    assert!(err.message().contains("write-once"), "{err}");
    assert_eq!(
        f.plane
            .compartment(&c)
            .await
            .unwrap()
            .external_key_id
            .as_ref(),
        Some(&a.id)
    );

    let missing = CompartmentId::new("0b7e1d2c-0000-4000-8000-000000000000").unwrap();
    assert_eq!(
        f.plane
            .attach_external_key(&f.admin, &missing, &a.id)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let unknown = ExternalKeyId::new("ekey_unknown").unwrap();
    assert_eq!(
        f.plane
            .attach_external_key(&f.admin, &c, &unknown)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    let (unvalidated, _) = f.key("unvalidated").await;
    let err = f
        .plane
        .create_compartment(&f.admin, Some(&unvalidated.id))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.message().contains("validate it first"), "{err}");
}

async fn race_attach(plane: Arc<ControlPlane>, c: &CompartmentId, keys: [&ExternalKeyId; 2]) {
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (plane, c, key) = (plane.clone(), c.clone(), keys[i % 2].clone());
            tokio::spawn(async move {
                let outcome = plane
                    .attach_external_key(&Actor::new(format!("admin-{i}")), &c, &key)
                    .await;
                (key, outcome)
            })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    let mut conflicts = 0;
    for task in tasks {
        let (key, outcome) = task.await.unwrap();
        match outcome {
            Ok(c) => {
                assert_eq!(c.external_key_id.as_ref(), Some(&key));
                winners.insert(key);
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
                conflicts += 1;
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one key wins");
    assert_eq!(conflicts, 32, "every attempt with the other key conflicts");
    let stored = plane.compartment(c).await.unwrap().external_key_id.unwrap();
    assert!(winners.contains(&stored));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attaches_have_exactly_one_winner_in_memory() {
    let f = fixture();
    let (a, _) = f.validated_key("a").await;
    let (b, _) = f.validated_key("b").await;
    let c = f.compartment(None).await;
    let Fixture { plane, .. } = f;
    race_attach(Arc::new(plane), &c, [&a.id, &b.id]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_attaches_have_exactly_one_winner_on_disk() {
    let state = tempfile::tempdir().unwrap();
    let f = fixture_with(
        Arc::new(FileControlStore::open(state.path()).unwrap()),
        CacheConfig::default(),
    );
    let (a, _) = f.validated_key("a").await;
    let (b, _) = f.validated_key("b").await;
    let c = f.compartment(None).await;
    race_attach(Arc::new(f.plane), &c, [&a.id, &b.id]).await;

    // Separate store instances on one directory (as separate processes would be) race too.
    let c2 = Compartment::new(time::OffsetDateTime::now_utc()).unwrap();
    FileControlStore::open(state.path())
        .unwrap()
        .insert_compartment(&c2)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (root, id, key) = (
                state.path().to_owned(),
                c2.compartment_id.clone(),
                [&a.id, &b.id][i % 2].clone(),
            );
            tokio::spawn(async move {
                let store = FileControlStore::open(root).unwrap();
                store
                    .attach(&id, &key, time::OffsetDateTime::now_utc())
                    .await
                    .map(|c| c.external_key_id)
            })
        })
        .collect();
    let mut winners = std::collections::HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(key) => {
                winners.insert(key.unwrap());
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(winners.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_configuration_is_built_once_for_many_compartments() {
    let store = Arc::new(MemoryControlStore::new());
    let f = fixture_with(store.clone(), CacheConfig::default());
    let (key, _) = f.validated_key("shared").await;
    let mut compartments = Vec::new();
    for _ in 0..64 {
        compartments.push(f.compartment(Some(&key.id)).await);
    }
    // Another instance of the service on the same state: nothing built yet.
    let plane = ControlPlane::builder()
        .store(store)
        .dek_store(f.dek_store.clone())
        .audit(f.audit.clone())
        .factory(f.keys.clone())
        .provider_managed(f.provider_managed.clone())
        .retry(fast_retry())
        .build()
        .unwrap();
    let builds = f.keys.builds();
    let tasks: Vec<_> = compartments
        .into_iter()
        .map(|c| {
            let client = plane.client().clone();
            tokio::spawn(async move { client.encrypt(&c, b"first write", b"").await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        f.keys.builds() - builds,
        1,
        "64 compartments under one cold configuration share one backend build"
    );
}

/// Races a deletion (not forced) of a key against attachments of it, many times: either the
/// deletion wins and nothing ends up attached to the deleted key, or it is refused (409) and
/// the key stays.
async fn deletion_and_attachments_never_cross(store: Arc<dyn ControlStore>) {
    let f = fixture_with(store, CacheConfig::default());
    let plane = Arc::new(f.plane);
    let admin = f.admin.clone();
    for round in 0..20 {
        let (config, _) = f.keys.add(f.dir.path(), &format!("k{round}"));
        let key = plane
            .create_external_key(&admin, CreateExternalKey::new("k", config))
            .await
            .unwrap();
        plane.validate_external_key(&admin, &key.id).await.unwrap();
        let mut compartments = Vec::new();
        for _ in 0..4 {
            compartments.push(
                plane
                    .create_compartment(&admin, None)
                    .await
                    .unwrap()
                    .compartment_id,
            );
        }
        let start = Arc::new(tokio::sync::Barrier::new(compartments.len() + 2));
        let attaches: Vec<_> = compartments
            .iter()
            .map(|c| {
                let (plane, admin, start, c, id) = (
                    plane.clone(),
                    admin.clone(),
                    start.clone(),
                    c.clone(),
                    key.id.clone(),
                );
                tokio::spawn(async move {
                    start.wait().await;
                    plane.attach_external_key(&admin, &c, &id).await
                })
            })
            .collect();
        let created = {
            let (plane, admin, start, id) =
                (plane.clone(), admin.clone(), start.clone(), key.id.clone());
            tokio::spawn(async move {
                start.wait().await;
                plane.create_compartment(&admin, Some(&id)).await
            })
        };
        start.wait().await;
        let deleted = plane.delete_external_key(&admin, &key.id, false).await;
        let mut refused = 0;
        for task in attaches {
            if let Err(e) = task.await.unwrap() {
                assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
                refused += 1;
            }
        }
        if let Err(e) = created.await.unwrap() {
            assert_eq!(e.kind(), ErrorKind::Validation, "{e}");
            refused += 1;
        }
        // A deletion that is taken back was never visible: nobody was refused because of it.
        // One that stands came before every attachment: all of them were refused.
        match &deleted {
            Ok(_) => assert_eq!(refused, compartments.len() + 1, "round {round}"),
            Err(_) => assert_eq!(
                refused, 0,
                "round {round}: attaches refused by a deletion that was taken back"
            ),
        }
        let stored = plane.external_key(&key.id).await.unwrap();
        let attached = plane
            .compartments()
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.external_key_id.as_ref() == Some(&key.id))
            .count();
        match deleted {
            Ok(_) => assert!(
                stored.is_deleted() && attached == 0,
                "round {round}: deleted, yet {attached} compartment(s) attached"
            ),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
                assert!(!stored.is_deleted() && attached > 0, "round {round}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_and_attachments_never_cross_in_memory() {
    deletion_and_attachments_never_cross(Arc::new(MemoryControlStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletion_and_attachments_never_cross_on_disk() {
    let state = tempfile::tempdir().unwrap();
    deletion_and_attachments_never_cross(Arc::new(FileControlStore::open(state.path()).unwrap()))
        .await;
}

// ---------------------------------------------------------------------------------------------
// Rotation and rewrap

#[tokio::test]
async fn rotating_the_key_material_keeps_old_data_readable() {
    let f = fixture();
    let (key, kms) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let old = client.encrypt(&c, b"v1", b"").await.unwrap();
    let old_compact = client
        .encrypt_compact(&c, b"v1 compact", b"")
        .await
        .unwrap();
    assert_eq!(kms.inner().rotate().unwrap(), 2);
    client.purge(&c);
    let new = client.encrypt(&c, b"v2", b"").await.unwrap();
    assert_eq!(inspect(&old).key_version.as_deref(), Some("1"));
    assert_eq!(inspect(&new).key_version.as_deref(), Some("2"));
    assert_eq!(
        inspect(&new).key_config_id.as_deref(),
        Some(key.id.as_str())
    );
    client.purge(&c);
    assert_eq!(client.decrypt(&c, &old, b"").await.unwrap(), b"v1");
    assert_eq!(
        client.decrypt(&c, &old_compact, b"").await.unwrap(),
        b"v1 compact"
    );
    assert_eq!(client.decrypt(&c, &new, b"").await.unwrap(), b"v2");
    // Same configuration throughout.
    assert_eq!(
        f.plane.external_key(&key.id).await.unwrap().provider_config,
        key.provider_config
    );
}

#[tokio::test]
async fn rotate_then_rewrap_keeps_everything_readable_and_resumes_after_a_failure() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_messages = 5;
    // No background refreshes: the DEK records counted below are exactly the ones written.
    cache.refresh_fraction = 1.0;
    let f = fixture_with(Arc::new(MemoryControlStore::new()), cache);
    let (key, old_kms) = f.validated_key("old").await;
    let client = f.plane.client();
    let mut compact = Vec::new();
    let mut contained = Vec::new();
    let mut compartments = Vec::new();
    for _ in 0..3 {
        compartments.push(f.compartment(Some(&key.id)).await);
    }
    for (i, c) in compartments.iter().enumerate() {
        for n in 0..20 {
            let text = format!("compartment {i} record {n}");
            compact.push((
                c.clone(),
                text.clone(),
                client
                    .encrypt_compact(c, text.as_bytes(), b"")
                    .await
                    .unwrap(),
            ));
        }
        contained.push((
            c.clone(),
            client.encrypt(c, b"self-contained", b"").await.unwrap(),
        ));
    }
    let mut records = 0;
    for c in &compartments {
        records += f.dek_store.list(c).await.unwrap().len();
    }
    assert!(records >= 12, "{records} DEK records");

    // Rotate to a new key: validated first; new data goes under it at once.
    let (new_config, new_kms) = f.keys.add(f.dir.path(), "new");
    let (bad_config, bad_kms) = f.keys.add(f.dir.path(), "bad");
    bad_kms.disable();
    let err = f
        .plane
        .rotate_external_key(&f.admin, &key.id, bad_config)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(err.message().contains("key_disabled"), "{err}");
    let rotated = f
        .plane
        .rotate_external_key(&f.admin, &key.id, new_config.clone())
        .await
        .unwrap();
    assert_eq!(rotated.id, key.id);
    assert_eq!(rotated.provider_config, new_config);
    assert_eq!(
        rotated.previous_provider_configs,
        vec![key.provider_config.clone()]
    );
    assert!(rotated.is_validated());
    let new_wraps = new_kms.wrap_calls();
    let fresh = client
        .encrypt(&compartments[0], b"after rotation", b"")
        .await
        .unwrap();
    assert_eq!(
        new_kms.wrap_calls(),
        new_wraps + 1,
        "new data goes under the new key at once"
    );
    assert_eq!(inspect(&fresh).key_id.as_deref(), Some("local:new"));
    let records_after_rotation = {
        let mut n = 0;
        for c in &compartments {
            n += f.dek_store.list(c).await.unwrap().len();
        }
        n
    };

    let mut under_old_key = 0;
    for c in &compartments {
        for id in f.dek_store.list(c).await.unwrap() {
            under_old_key += usize::from(
                f.dek_store
                    .get(c, &id)
                    .await
                    .unwrap()
                    .unwrap()
                    .wrapped()
                    .key_id
                    == "local:old",
            );
        }
    }
    assert!(under_old_key >= 8, "{under_old_key}");

    // The first run fails part-way: the new key refuses its 7th wrap (in the second batch).
    new_kms.push_faults(
        std::iter::repeat_n(Fault::Pass, 6).chain([Fault::Fail(ErrorKind::PermissionDenied)]),
    );
    let progress = Mutex::new(Vec::<RewrapJob>::new());
    let err = f
        .plane
        .rewrap(&f.admin, &key.id, 4, |job| {
            progress.lock().unwrap().push(job.clone())
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied);
    let first = progress.lock().unwrap().clone();
    assert!(!first.is_empty(), "progress is reported per batch");
    assert!(first.windows(2).all(|w| w[0].examined < w[1].examined));

    // Everything stays readable mid-rewrap, from a cold cache.
    purge(client, &compartments);
    for (c, text, envelope) in &compact {
        assert_eq!(
            client.decrypt(c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }

    // The rerun resumes after the last checkpoint and finishes (once the new key's breaker has
    // found it usable again); throttling and transient failures are retried.
    tokio::time::sleep(BREAKER_WINDOW).await;
    new_kms.clear_faults();
    purge(client, &compartments[..1]);
    client
        .encrypt(&compartments[0], b"probe", b"")
        .await
        .unwrap();
    let records_after_rotation = records_after_rotation + 1; // the probe's data key
    new_kms.push_faults([
        Fault::Fail(ErrorKind::Throttled),
        Fault::Fail(ErrorKind::Transient),
    ]);
    let progress = Mutex::new(Vec::<RewrapJob>::new());
    let done = f
        .plane
        .rewrap(&f.admin, &key.id, 4, |job| {
            progress.lock().unwrap().push(job.clone())
        })
        .await
        .unwrap();
    assert!(done.finished_at.is_some());
    assert_eq!(
        done.rewrapped as usize, under_old_key,
        "every record under the old key is rewrapped exactly once"
    );
    assert!(done.examined as usize >= records_after_rotation);
    assert!(
        progress.lock().unwrap()[0].examined > first.last().unwrap().examined,
        "resumed, not restarted"
    );

    // All DEK records are under the new key now: the old key can go.
    for c in &compartments {
        for id in f.dek_store.list(c).await.unwrap() {
            let record = f.dek_store.get(c, &id).await.unwrap().unwrap();
            assert_eq!(record.wrapped().key_id, "local:new");
        }
    }
    old_kms.disable();
    purge(client, &compartments);
    for (c, text, envelope) in &compact {
        assert_eq!(
            client.decrypt(c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }
    assert_eq!(
        client.decrypt(&compartments[0], &fresh, b"").await.unwrap(),
        b"after rotation"
    );
    // Self-contained envelopes carry their own wrapped DEK: readable only while the old key is.
    let (c, envelope) = &contained[0];
    assert_eq!(
        client.decrypt(c, envelope, b"").await.unwrap_err().kind(),
        ErrorKind::KeyRevoked
    );
    old_kms.enable();
    tokio::time::sleep(BREAKER_WINDOW).await;
    assert_eq!(
        client.decrypt(c, envelope, b"").await.unwrap(),
        b"self-contained"
    );

    // Idempotent: a rerun finds everything current.
    let again = f.plane.rewrap(&f.admin, &key.id, 4, |_| {}).await.unwrap();
    assert_eq!(
        (again.rewrapped, again.already_current as usize),
        (0, records_after_rotation)
    );

    let actions: Vec<String> = f.actions().into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "external_key.rotate")
            .count(),
        2
    );
    assert_eq!(actions.iter().filter(|a| *a == "rewrap.start").count(), 3);
    let completes: Vec<Outcome> = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == "rewrap.complete")
        .map(|e| e.outcome)
        .collect();
    assert_eq!(
        completes,
        [Outcome::Failure, Outcome::Success, Outcome::Success]
    );
}

// ---------------------------------------------------------------------------------------------
// Deletion and revocation

/// Runs `a` and `b` at the same time on a plane over `store`: a slow validation of the key
/// against a rotation, and two slow rotations against each other. No change may be lost.
async fn concurrent_key_changes_are_not_lost(store: Arc<dyn ControlStore>) {
    let f = fixture_with(store, CacheConfig::default());
    let (key, old_kms) = f.validated_key("old").await;
    let (b, b_kms) = f.keys.add(f.dir.path(), "b");
    let (c, c_kms) = f.keys.add(f.dir.path(), "c");

    // A validation that takes a while, and a rotation that lands meanwhile.
    old_kms.set_latency(Duration::from_millis(100));
    let (validated, rotated) =
        tokio::join!(f.plane.validate_external_key(&f.admin, &key.id), async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            f.plane
                .rotate_external_key(&f.admin, &key.id, b.clone())
                .await
        });
    old_kms.set_latency(Duration::ZERO);
    assert_eq!(validated.unwrap().status, ValidationStatus::Success);
    rotated.unwrap();
    let stored = f.plane.external_key(&key.id).await.unwrap();
    assert_eq!(
        stored.provider_config, b,
        "the validation did not undo the rotation"
    );
    assert_eq!(
        stored.previous_provider_configs,
        std::slice::from_ref(&key.provider_config)
    );
    assert!(
        stored.is_validated(),
        "the rotation's validation of b stands"
    );

    // Two rotations at once: both keys stay known to the configuration.
    b_kms.set_latency(Duration::from_millis(50));
    c_kms.set_latency(Duration::from_millis(50));
    let (d, _) = f.keys.add(f.dir.path(), "d");
    let (to_c, to_d) = tokio::join!(
        f.plane.rotate_external_key(&f.admin, &key.id, c.clone()),
        f.plane.rotate_external_key(&f.admin, &key.id, d.clone()),
    );
    to_c.unwrap();
    to_d.unwrap();
    let stored = f.plane.external_key(&key.id).await.unwrap();
    let mut known: Vec<String> = std::iter::once(&stored.provider_config)
        .chain(&stored.previous_provider_configs)
        .map(ProviderConfig::key_ref)
        .collect();
    known.sort();
    let mut expected: Vec<String> = [&key.provider_config, &b, &c, &d]
        .into_iter()
        .map(ProviderConfig::key_ref)
        .collect();
    expected.sort();
    assert_eq!(
        known, expected,
        "no key the configuration wrapped with is forgotten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_key_changes_are_not_lost_in_memory() {
    concurrent_key_changes_are_not_lost(Arc::new(MemoryControlStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_key_changes_are_not_lost_on_disk() {
    let state = tempfile::tempdir().unwrap();
    concurrent_key_changes_are_not_lost(Arc::new(FileControlStore::open(state.path()).unwrap()))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_file_store_updates_a_configuration_by_compare_and_swap_across_instances() {
    let state = tempfile::tempdir().unwrap();
    let f = fixture_with(
        Arc::new(FileControlStore::open(state.path()).unwrap()),
        CacheConfig::default(),
    );
    let (key, _) = f.key("shared").await;

    // A stale token is refused.
    let store = FileControlStore::open(state.path()).unwrap();
    let mut changed = key.clone();
    changed.display_name = "renamed".into();
    changed.updated_at = key.updated_at + time::Duration::seconds(1);
    store
        .update_external_key(&changed, key.updated_at)
        .await
        .unwrap();
    let err = store
        .update_external_key(&changed, key.updated_at)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");

    // 16 writers on separate store instances (as separate processes would be), each adding its
    // mark by read, change, compare-and-swap, retried on conflict: every mark survives.
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let (root, id) = (state.path().to_owned(), key.id.clone());
            tokio::spawn(async move {
                let store = FileControlStore::open(root).unwrap();
                loop {
                    let mut k = store.external_key(&id).await.unwrap().unwrap();
                    let read_at = k.updated_at;
                    k.display_name.push_str(&format!(" w{i}"));
                    k.updated_at = read_at + time::Duration::microseconds(1);
                    match store.update_external_key(&k, read_at).await {
                        Ok(()) => break,
                        Err(e) => assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}"),
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let name = store
        .external_key(&key.id)
        .await
        .unwrap()
        .unwrap()
        .display_name;
    for i in 0..16 {
        assert!(name.contains(&format!(" w{i}")), "{name}");
    }
}

#[tokio::test]
async fn rewrap_passes_over_a_record_no_key_can_unwrap_and_a_later_run_retries_it() {
    let mut cache = CacheConfig::default();
    cache.encrypt_max_messages = 1; // one DEK record per message
    cache.refresh_fraction = 1.0;
    let f = fixture_with(Arc::new(MemoryControlStore::new()), cache);
    let (key, old_kms) = f.validated_key("old").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let mut envelopes = Vec::new();
    for n in 0..4 {
        if n == 1 {
            // The first record under version 1 of the old key, the others under version 2.
            old_kms.inner().rotate().unwrap();
        }
        let text = format!("record {n}");
        let envelope = client
            .encrypt_compact(&c, text.as_bytes(), b"")
            .await
            .unwrap();
        envelopes.push((text, envelope));
    }
    assert_eq!(f.dek_store.list(&c).await.unwrap().len(), 4);
    let (new_config, _) = f.keys.add(f.dir.path(), "new");
    f.plane
        .rotate_external_key(&f.admin, &key.id, new_config)
        .await
        .unwrap();

    // Version 1 of the old key is disabled: its record cannot be read, the others can.
    old_kms
        .inner()
        .set_version_state(1, cmek::kms::local::VersionState::Disabled)
        .unwrap();
    let job = f.plane.rewrap(&f.admin, &key.id, 1, |_| {}).await.unwrap();
    assert!(job.finished_at.is_some());
    assert_eq!(
        (
            job.examined,
            job.rewrapped,
            job.already_current,
            job.unreadable
        ),
        (4, 3, 0, 1),
        "the unreadable record does not hold back the others"
    );
    let complete = f
        .audit
        .events()
        .into_iter()
        .rfind(|e| e.action == "rewrap.complete")
        .unwrap();
    assert_eq!(complete.outcome, Outcome::Failure);
    assert!(
        complete.detail.as_deref().unwrap().contains("unreadable 1"),
        "{complete:?}"
    );

    // The version is back: the next run (once its breaker asks again) moves the last record.
    old_kms
        .inner()
        .set_version_state(1, cmek::kms::local::VersionState::Enabled)
        .unwrap();
    tokio::time::sleep(BREAKER_WINDOW).await;
    let job = f.plane.rewrap(&f.admin, &key.id, 1, |_| {}).await.unwrap();
    assert_eq!(
        (
            job.examined,
            job.rewrapped,
            job.already_current,
            job.unreadable
        ),
        (4, 1, 3, 0)
    );
    for id in f.dek_store.list(&c).await.unwrap() {
        let record = f.dek_store.get(&c, &id).await.unwrap().unwrap();
        assert_eq!(record.wrapped().key_id, "local:new");
    }
    purge(client, std::slice::from_ref(&c));
    for (text, envelope) in &envelopes {
        assert_eq!(
            client.decrypt(&c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }
}

#[tokio::test]
async fn deleting_an_attached_key_needs_force_and_stops_new_encryptions_at_once() {
    let f = fixture();
    let (key, _) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let envelope = client.encrypt(&c, b"kept", b"").await.unwrap();

    let err = f
        .plane
        .delete_external_key(&f.admin, &key.id, false)
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.kind().http_status()),
        (ErrorKind::AlreadyExists, 409)
    );
    assert!(err.message().contains("force"), "{err}");
    client.encrypt(&c, b"still fine", b"").await.unwrap();

    let deleted = f
        .plane
        .delete_external_key(&f.admin, &key.id, true)
        .await
        .unwrap();
    assert!(deleted.is_deleted());
    let err = client.encrypt(&c, b"refused", b"").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::KeyRevoked,
        "a cached data key must not outlive the deletion"
    );
    assert!(err.message().contains("deleted"), "{err}");
    assert_eq!(
        client.decrypt(&c, &envelope, b"").await.unwrap(),
        b"kept",
        "readable while the KMS key is"
    );
    let other = f.compartment(None).await;
    assert_eq!(
        f.plane
            .attach_external_key(&f.admin, &other, &key.id)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Validation
    );

    let (unattached, _) = f.validated_key("spare").await;
    f.plane
        .delete_external_key(&f.admin, &unattached.id, false)
        .await
        .unwrap();
    assert!(
        f.actions()
            .contains(&("external_key.delete".to_owned(), Outcome::Failure))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_made_while_its_key_is_deleted_is_not_used() {
    let f = fixture();
    let (key, kms) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    kms.set_latency(Duration::from_millis(300));
    let client = f.plane.client().clone();
    let first = tokio::spawn({
        let (client, c) = (client.clone(), c.clone());
        async move { client.encrypt(&c, b"racing the deletion", b"").await }
    });
    // The encryption is waiting on the KMS for its data key when the key is deleted.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        kms.wrap_calls(),
        2,
        "validation's wrap and the encryption's"
    );
    f.plane
        .delete_external_key(&f.admin, &key.id, true)
        .await
        .unwrap();
    let err = first.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    let err = client.encrypt(&c, b"after", b"").await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::KeyRevoked,
        "no data key of a deleted configuration is cached: {err}"
    );
}

#[tokio::test]
async fn a_disabled_kms_key_makes_data_unreadable_within_the_cache_bound() {
    let bound = Duration::from_millis(300);
    let mut cache = CacheConfig::default();
    cache.encrypt_max_age = bound;
    cache.decrypt_max_age = bound;
    let f = fixture_with(Arc::new(MemoryControlStore::new()), cache);
    let (key, kms) = f.validated_key("customer").await;
    let c = f.compartment(Some(&key.id)).await;
    let client = f.plane.client();
    let envelope = client.encrypt(&c, b"secret", b"").await.unwrap();
    assert_eq!(client.decrypt(&c, &envelope, b"").await.unwrap(), b"secret");

    kms.disable();
    tokio::time::sleep(bound + Duration::from_millis(150)).await;
    let err = client.decrypt(&c, &envelope, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    assert!(err.to_string().contains("disabled"), "{err}");
    assert_eq!(
        client.encrypt(&c, b"more", b"").await.unwrap_err().kind(),
        ErrorKind::KeyRevoked
    );

    let detected: Vec<AuditEvent> = f
        .audit
        .events()
        .into_iter()
        .filter(|e| e.action == "key.revocation_detected")
        .collect();
    assert_eq!(
        detected.len(),
        1,
        "one event per revocation, not per failing call"
    );
    assert_eq!(
        detected[0].external_key_id.as_deref(),
        Some(key.id.as_str())
    );
    assert_eq!(detected[0].actor, Actor::system());

    kms.enable();
    tokio::time::sleep(BREAKER_WINDOW).await;
    assert_eq!(
        client.decrypt(&c, &envelope, b"").await.unwrap(),
        b"secret",
        "re-enabling the key restores access"
    );
}

// ---------------------------------------------------------------------------------------------
// Persistence and audit

fn durable_plane(state: &Path, provider_managed: Arc<LocalKms>) -> ControlPlane {
    ControlPlane::builder()
        .store(Arc::new(
            FileControlStore::open(state.join("control")).unwrap(),
        ))
        .dek_store(Arc::new(
            FileDekStore::open(state.join("dek_records")).unwrap(),
        ))
        .audit(Arc::new(
            JsonLinesAuditSink::open(state.join("audit.jsonl")).unwrap(),
        ))
        .provider_managed(provider_managed)
        .retry(fast_retry())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_restart_keeps_all_state() {
    let state = tempfile::tempdir().unwrap();
    let pm_path = state.path().join("provider-managed.key");
    let admin = Actor::new("admin@example.com");
    let kek = |name: &str| {
        let path = state.path().join(format!("{name}.key"));
        LocalKms::create(&path, format!("local:{name}")).unwrap();
        ProviderConfig::Local {
            key_file: path.display().to_string(),
        }
    };
    let (a, b) = (kek("a"), kek("b"));

    let (keys, compartments, envelopes) = {
        let plane = durable_plane(
            state.path(),
            Arc::new(LocalKms::create(&pm_path, "local:provider").unwrap()),
        );
        let key = plane
            .create_external_key(&admin, CreateExternalKey::new("a", a))
            .await
            .unwrap();
        plane.validate_external_key(&admin, &key.id).await.unwrap();
        let spare = plane
            .create_external_key(&admin, CreateExternalKey::new("spare", b.clone()))
            .await
            .unwrap();
        let unattached = plane
            .create_compartment(&admin, None)
            .await
            .unwrap()
            .compartment_id;
        let attached = plane
            .create_compartment(&admin, None)
            .await
            .unwrap()
            .compartment_id;
        let early = plane
            .client()
            .encrypt_compact(&attached, b"early", b"")
            .await
            .unwrap();
        plane
            .attach_external_key(&admin, &attached, &key.id)
            .await
            .unwrap();
        let late = plane
            .client()
            .encrypt_compact(&attached, b"late", b"")
            .await
            .unwrap();
        plane.rotate_external_key(&admin, &key.id, b).await.unwrap();
        let rotated = plane
            .client()
            .encrypt_compact(&attached, b"rotated", b"")
            .await
            .unwrap();
        plane.rewrap(&admin, &key.id, 10, |_| {}).await.unwrap();
        plane
            .delete_external_key(&admin, &spare.id, false)
            .await
            .unwrap();
        let plain = plane
            .client()
            .encrypt(&unattached, b"provider-managed", b"")
            .await
            .unwrap();
        (
            plane.external_keys().await.unwrap(),
            plane.compartments().await.unwrap(),
            vec![
                (attached.clone(), early, "early"),
                (attached.clone(), late, "late"),
                (attached, rotated, "rotated"),
                (unattached, plain, "provider-managed"),
            ],
        )
    };

    let plane = durable_plane(state.path(), Arc::new(LocalKms::open(&pm_path).unwrap()));
    assert_eq!(plane.external_keys().await.unwrap(), keys);
    assert_eq!(plane.compartments().await.unwrap(), compartments);
    let key = keys.iter().find(|k| !k.is_deleted()).unwrap();
    assert!(key.is_validated() && key.previous_provider_configs.len() == 1);
    for (c, envelope, text) in &envelopes {
        assert_eq!(
            plane.client().decrypt(c, envelope, b"").await.unwrap(),
            text.as_bytes()
        );
    }
    let attached = &envelopes[0].0;
    let other = plane
        .create_external_key(&admin, CreateExternalKey::new("c", kek("c")))
        .await
        .unwrap();
    plane
        .validate_external_key(&admin, &other.id)
        .await
        .unwrap();
    let err = plane
        .attach_external_key(&admin, attached, &other.id)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::AlreadyExists,
        "write-once survives a restart: {err}"
    );
    assert_eq!(
        plane
            .attach_external_key(&admin, attached, &key.id)
            .await
            .unwrap()
            .external_key_id
            .as_ref(),
        Some(&key.id)
    );
    let job = FileControlStore::open(state.path().join("control"))
        .unwrap()
        .rewrap_job(&key.id)
        .await
        .unwrap()
        .unwrap();
    assert!(job.finished_at.is_some() && job.rewrapped >= 1);

    // The audit trail survived too, one JSON object per line.
    let trail: Vec<AuditEvent> = std::fs::read_to_string(state.path().join("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = trail.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "external_key.create",
            "external_key.validate",
            "external_key.create",
            "compartment.create",
            "compartment.create",
            "compartment.attach",
            "external_key.rotate",
            "rewrap.start",
            "rewrap.complete",
            "external_key.delete",
            "external_key.create",
            "external_key.validate",
            "compartment.attach",
            "compartment.attach",
        ]
    );
    assert!(trail.iter().all(|e| e.actor == admin));
    assert_eq!(trail[5].compartment_id.as_deref(), Some(attached.as_str()));
    assert_eq!(trail[12].outcome, Outcome::Failure);

    // No key material in the trail: none of the key files' secrets appear in it.
    let text = std::fs::read_to_string(state.path().join("audit.jsonl")).unwrap();
    for file in ["a.key", "b.key", "c.key", "provider-managed.key"] {
        let secrets = long_strings(
            &serde_json::from_slice(&std::fs::read(state.path().join(file)).unwrap()).unwrap(),
        );
        assert!(!secrets.is_empty());
        for secret in secrets {
            assert!(
                !text.contains(&secret),
                "{file} leaked into the audit trail"
            );
        }
    }
}

/// Every string of 32 or more characters in a JSON value (key material is among them).
fn long_strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) if s.len() >= 32 => vec![s.clone()],
        Value::Array(items) => items.iter().flat_map(long_strings).collect(),
        Value::Object(map) => map.values().flat_map(long_strings).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn every_admin_change_is_audited_with_who_what_and_outcome() {
    let f = fixture();
    let (key, _) = f.validated_key("customer").await;
    let c = f.compartment(None).await;
    f.plane
        .attach_external_key(&f.admin, &c, &key.id)
        .await
        .unwrap();
    let events = f.audit.events();
    let summary: Vec<(&str, Option<&str>, Option<&str>, Outcome)> = events
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.external_key_id.as_deref(),
                e.compartment_id.as_deref(),
                e.outcome,
            )
        })
        .collect();
    let k = Some(key.id.as_str());
    assert_eq!(
        summary,
        [
            ("external_key.create", None, None, Outcome::Success),
            ("external_key.validate", k, None, Outcome::Success),
            ("compartment.create", None, None, Outcome::Success),
            ("compartment.attach", k, Some(c.as_str()), Outcome::Success),
        ]
    );
    assert!(events.iter().all(|e| e.actor == f.admin));
    assert!(
        events[0]
            .detail
            .as_deref()
            .unwrap()
            .contains(key.id.as_str())
    );
    let json = serde_json::to_value(&events[3]).unwrap();
    for field in [
        "time",
        "actor",
        "action",
        "external_key_id",
        "compartment_id",
        "outcome",
    ] {
        assert!(json.get(field).is_some(), "{field} missing from {json}");
    }
}

#[tokio::test]
async fn an_earlier_key_gone_after_rewrap_leaves_the_configuration_working() {
    let state = tempfile::tempdir().unwrap();
    let pm_path = state.path().join("provider-managed.key");
    let admin = Actor::new("admin@example.com");
    let kek = |name: &str| {
        let path = state.path().join(format!("{name}.key"));
        LocalKms::create(&path, format!("local:{name}")).unwrap();
        ProviderConfig::Local {
            key_file: path.display().to_string(),
        }
    };
    let (a, b) = (kek("a"), kek("b"));

    let (c, key, compact, self_contained) = {
        let plane = durable_plane(
            state.path(),
            Arc::new(LocalKms::create(&pm_path, "local:provider").unwrap()),
        );
        let key = plane
            .create_external_key(&admin, CreateExternalKey::new("a", a))
            .await
            .unwrap();
        plane.validate_external_key(&admin, &key.id).await.unwrap();
        let c = plane
            .create_compartment(&admin, Some(&key.id))
            .await
            .unwrap()
            .compartment_id;
        let compact = plane
            .client()
            .encrypt_compact(&c, b"compact under a", b"")
            .await
            .unwrap();
        let self_contained = plane
            .client()
            .encrypt(&c, b"self-contained under a", b"")
            .await
            .unwrap();
        plane.rotate_external_key(&admin, &key.id, b).await.unwrap();
        plane.rewrap(&admin, &key.id, 10, |_| {}).await.unwrap();
        (c, key, compact, self_contained)
    };

    // The customer destroys the earlier key once the rewrap is done.
    std::fs::remove_file(state.path().join("a.key")).unwrap();

    let plane = durable_plane(state.path(), Arc::new(LocalKms::open(&pm_path).unwrap()));
    let client = plane.client();
    let fresh = client
        .encrypt_compact(&c, b"under b", b"")
        .await
        .expect("the current key still wraps");
    assert_eq!(client.decrypt(&c, &fresh, b"").await.unwrap(), b"under b");
    assert_eq!(
        client.decrypt(&c, &compact, b"").await.unwrap(),
        b"compact under a",
        "the rewrapped record no longer needs the earlier key"
    );
    let err = client.decrypt(&c, &self_contained, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.to_string().contains("local:a") && err.to_string().contains("unavailable"),
        "the error names the missing key: {err}"
    );
    assert_eq!(
        plane
            .validate_external_key(&admin, &key.id)
            .await
            .unwrap()
            .status,
        ValidationStatus::Success
    );
}
