//! The control plane over the real cloud backends, as `DefaultBackendFactory` builds them from
//! provider configurations, against the testkit's wire-compatible AWS, Google Cloud and Azure
//! fakes: validation outcomes as each cloud reports them, attaching, and data bound to the
//! compartment.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cmek::control::{
    Actor, ControlPlane, CreateExternalKey, DefaultBackendFactory, ExternalKey, MemoryAuditSink,
    MemoryControlStore, ProviderConfig, ValidationStatus,
};
use cmek::kms::aws::Credentials;
use cmek::kms::gcp::credentials::anonymous;
use cmek::testkit::aws_fake::{AwsFault, FakeAwsKms, FakeKeySpec, FakeKeyState};
use cmek::testkit::azure_fake::{AzureFault, FakeKeyVault, StaticToken};
use cmek::testkit::gcp_fake::{FakeGcpKms, FakeVersionState};
use cmek::{CacheConfig, ErrorKind, LocalKms, inspect};
use common::fast_retry;

const ROLE: &str = "arn:aws:iam::111122223333:role/cmek-control";
const TENANT: &str = "00000000-0000-4000-8000-0000000000aa";

fn plane(factory: DefaultBackendFactory) -> ControlPlane {
    plane_with(factory, CacheConfig::default()).0
}

fn plane_with(
    factory: DefaultBackendFactory,
    cache: CacheConfig,
) -> (ControlPlane, Arc<MemoryAuditSink>) {
    let audit = Arc::new(MemoryAuditSink::new());
    let plane = ControlPlane::builder()
        .store(Arc::new(MemoryControlStore::new()))
        .audit(audit.clone())
        .factory(Arc::new(factory))
        .provider_managed(Arc::new(LocalKms::generate("local:provider").unwrap()))
        .cache(cache)
        .retry(fast_retry())
        .build()
        .unwrap();
    (plane, audit)
}

/// How long a cached data key may serve decryption in the deletion tests.
const DECRYPT_BOUND: Duration = Duration::from_millis(300);

/// Encryption DEKs live long (the default 5 minutes), decryption DEKs `DECRYPT_BOUND`.
fn short_decrypt_cache() -> CacheConfig {
    let mut cache = CacheConfig::default();
    cache.decrypt_max_age = DECRYPT_BOUND;
    cache
}

/// Writes data under `key`, deletes the key in the KMS with `delete`, then checks that within
/// the decryption bound nothing is readable (`KeyRevoked`), that no new data goes under the
/// key from the moment the deletion is seen, and that the revocation is audited.
async fn deleting_the_kms_key_revokes_its_data(
    plane: &ControlPlane,
    audit: &MemoryAuditSink,
    key: &ExternalKey,
    delete: impl FnOnce(),
) {
    let c = plane
        .create_compartment(&Actor::new("admin"), Some(&key.id))
        .await
        .unwrap()
        .compartment_id;
    let client = plane.client();
    let compact = client.encrypt_compact(&c, b"compact", b"").await.unwrap();
    let whole = client.encrypt(&c, b"self-contained", b"").await.unwrap();
    assert_eq!(
        client.decrypt(&c, &whole, b"").await.unwrap(),
        b"self-contained"
    );

    delete();
    tokio::time::sleep(DECRYPT_BOUND + Duration::from_millis(150)).await;
    for envelope in [&compact, &whole] {
        let err = client.decrypt(&c, envelope, b"").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{err}");
    }
    // The cached encryption DEK would still be good for minutes: it is dropped on detection.
    let err = client.encrypt(&c, b"new", b"").await.unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::KeyRevoked | ErrorKind::NotFound),
        "{err}"
    );
    // Key events are recorded by a task of their own: wait for it.
    let detected: Vec<_> = audit
        .wait_for("key.revocation_detected", Duration::from_secs(5))
        .await;
    assert_eq!(detected.len(), 1, "{detected:?}");
    assert_eq!(
        detected[0].external_key_id.as_deref(),
        Some(key.id.as_str())
    );
}

fn aws_factory(endpoint: &str) -> DefaultBackendFactory {
    DefaultBackendFactory::new()
        .aws_endpoint(endpoint)
        .aws_credentials(Credentials::new(
            "AKIDSERVICE",
            "service-secret",
            None,
            None,
            "test",
        ))
        .aws_external_id("platform-external-id")
}

async fn create(plane: &ControlPlane, config: ProviderConfig) -> ExternalKey {
    plane
        .create_external_key(&Actor::new("admin"), CreateExternalKey::new("key", config))
        .await
        .unwrap()
}

/// Validates `key`; `None` on success, else the failure's type.
async fn validate(plane: &ControlPlane, key: &ExternalKey) -> Option<String> {
    let result = plane
        .validate_external_key(&Actor::new("admin"), &key.id)
        .await
        .unwrap();
    assert_eq!(
        result.status == ValidationStatus::Success,
        result.error.is_none()
    );
    result.error.map(|e| e.kind)
}

/// Attaches a validated key to a new compartment, then round-trips data through it and checks
/// that the data key is bound to the compartment.
async fn attach_and_use(plane: &ControlPlane, key: &ExternalKey) {
    let admin = Actor::new("admin");
    let c = plane
        .create_compartment(&admin, None)
        .await
        .unwrap()
        .compartment_id;
    plane
        .attach_external_key(&admin, &c, &key.id)
        .await
        .unwrap();
    let client = plane.client();
    let envelope = client
        .encrypt(&c, b"customer data", b"row 1")
        .await
        .unwrap();
    let info = inspect(&envelope).unwrap();
    assert_eq!(info.compartment_id.as_deref(), Some(c.as_str()));
    assert_eq!(info.key_config_id.as_deref(), Some(key.id.as_str()));
    assert_eq!(
        client.decrypt(&c, &envelope, b"row 1").await.unwrap(),
        b"customer data"
    );
    let other = plane
        .create_compartment(&admin, Some(&key.id))
        .await
        .unwrap()
        .compartment_id;
    assert_eq!(
        client
            .decrypt(&other, &envelope, b"row 1")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Integrity
    );
}

fn aws_config(arn: &str) -> ProviderConfig {
    serde_json::from_value(serde_json::json!({"type": "aws", "kms_arn": arn, "role_arn": ROLE}))
        .unwrap()
}

#[tokio::test]
async fn aws_keys_validate_attach_and_classify_failures() {
    let fake = FakeAwsKms::start().await.unwrap();
    let plane = plane(aws_factory(&fake.endpoint()));

    let good = create(&plane, aws_config(&fake.create_key())).await;
    match &good.provider_config {
        ProviderConfig::Aws { region, .. } => assert_eq!(region.as_deref(), Some("us-east-1")),
        other => panic!("{other:?}"),
    }
    assert_eq!(validate(&plane, &good).await, None);
    assert!(
        fake.assumed_roles().iter().any(|r| r.role_arn == ROLE),
        "AssumeRole into the customer's role"
    );
    attach_and_use(&plane, &good).await;

    let denied_arn = fake.create_key();
    fake.deny_access(&denied_arn, true);
    let denied = create(&plane, aws_config(&denied_arn)).await;
    assert_eq!(
        validate(&plane, &denied).await.as_deref(),
        Some("permission_denied")
    );
    fake.deny_access(&denied_arn, false);
    assert_eq!(
        validate(&plane, &denied).await,
        None,
        "fixing the key policy and retrying works"
    );

    let disabled_arn = fake.create_key();
    fake.set_key_state(&disabled_arn, FakeKeyState::Disabled);
    assert_eq!(
        validate(&plane, &create(&plane, aws_config(&disabled_arn)).await)
            .await
            .as_deref(),
        Some("key_disabled")
    );

    let signing = fake.create_key_with(FakeKeySpec {
        key_usage: "SIGN_VERIFY".into(),
        key_spec: "RSA_3072".into(),
        ..FakeKeySpec::default()
    });
    assert_eq!(
        validate(&plane, &create(&plane, aws_config(&signing)).await)
            .await
            .as_deref(),
        Some("wrong_key_type")
    );

    let missing = create(
        &plane,
        aws_config("arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000000"),
    )
    .await;
    assert_eq!(
        validate(&plane, &missing).await.as_deref(),
        Some("key_not_found")
    );

    // Throttling is retried; access denied is not.
    fake.inject(AwsFault::Throttle, 2);
    assert_eq!(validate(&plane, &good).await, None);
    fake.inject(AwsFault::AccessDenied, 1);
    assert_eq!(
        validate(&plane, &good).await.as_deref(),
        Some("permission_denied")
    );

    // A disabled key is caught again by a later validation.
    fake.set_key_state(&fake_arn(&good), FakeKeyState::Disabled);
    assert_eq!(
        validate(&plane, &good).await.as_deref(),
        Some("key_disabled")
    );
}

fn fake_arn(key: &ExternalKey) -> String {
    key.provider_config.key_ref()
}

#[tokio::test]
async fn an_unreachable_kms_is_a_network_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let plane = plane(aws_factory(&endpoint));
    let key = create(
        &plane,
        aws_config("arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001"),
    )
    .await;
    let result = plane
        .validate_external_key(&Actor::new("admin"), &key.id)
        .await
        .unwrap();
    let error = result.error.unwrap();
    assert_eq!(error.kind, "network_error", "{}", error.message);
}

#[tokio::test]
async fn gcp_keys_validate_attach_rotate_and_classify_failures() {
    let fake = FakeGcpKms::start().await.unwrap();
    let plane = plane(
        DefaultBackendFactory::new()
            .gcp_endpoint(fake.endpoint())
            .gcp_credentials(anonymous::Builder::new().build()),
    );
    let gcp = |name: String| ProviderConfig::Gcp { key_name: name };

    let name = fake.create_key("us-east1");
    let good = create(&plane, gcp(name.clone())).await;
    assert_eq!(validate(&plane, &good).await, None);
    attach_and_use(&plane, &good).await;

    // Rotating the key material in Cloud KMS: same configuration, old data readable.
    let admin = Actor::new("admin");
    let c = plane
        .create_compartment(&admin, Some(&good.id))
        .await
        .unwrap()
        .compartment_id;
    let old = plane.client().encrypt(&c, b"v1", b"").await.unwrap();
    assert_eq!(fake.rotate(&name), 2);
    plane.client().purge(&c);
    let new = plane.client().encrypt(&c, b"v2", b"").await.unwrap();
    assert_eq!(inspect(&old).unwrap().key_version.as_deref(), Some("1"));
    assert_eq!(inspect(&new).unwrap().key_version.as_deref(), Some("2"));
    plane.client().purge(&c);
    assert_eq!(plane.client().decrypt(&c, &old, b"").await.unwrap(), b"v1");
    assert_eq!(plane.client().decrypt(&c, &new, b"").await.unwrap(), b"v2");

    let signing = create(
        &plane,
        gcp(fake.create_key_with_purpose("us-east1", "ASYMMETRIC_SIGN")),
    )
    .await;
    assert_eq!(
        validate(&plane, &signing).await.as_deref(),
        Some("wrong_key_type")
    );

    let denied_name = fake.create_key("us");
    fake.deny_access(&denied_name, true);
    let denied = create(&plane, gcp(denied_name)).await;
    assert_eq!(
        validate(&plane, &denied).await.as_deref(),
        Some("permission_denied")
    );

    let disabled_name = fake.create_key("us-central1");
    fake.set_version_state(&disabled_name, 1, FakeVersionState::Disabled);
    assert_eq!(
        validate(&plane, &create(&plane, gcp(disabled_name)).await)
            .await
            .as_deref(),
        Some("key_disabled")
    );

    let missing = create(
        &plane,
        gcp("projects/acme/locations/us/keyRings/none/cryptoKeys/none".into()),
    )
    .await;
    assert_eq!(
        validate(&plane, &missing).await.as_deref(),
        Some("key_not_found")
    );

    // Outside the US: refused at creation, before any call.
    let err = plane
        .create_external_key(
            &admin,
            CreateExternalKey::new("eu", gcp(fake.create_key("europe-west1"))),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation);
    assert!(
        err.message().starts_with("provider_config.key_name:"),
        "{err}"
    );
}

#[tokio::test]
async fn azure_keys_validate_attach_and_classify_failures() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    let plane = plane(
        DefaultBackendFactory::new()
            .azure_credential(StaticToken::new("access-token"))
            .azure_root_certificate_pem(vault.ca_pem()),
    );
    let azure = |name: &str| ProviderConfig::Azure {
        vault_uri: vault.vault_uri(),
        key_name: name.to_owned(),
        tenant_id: TENANT.to_owned(),
        client_id: None,
    };

    vault.create_key("tenant-kek", 3072).unwrap();
    let good = create(&plane, azure("tenant-kek")).await;
    assert_eq!(validate(&plane, &good).await, None);
    attach_and_use(&plane, &good).await;

    vault.create_key("small", 2048).unwrap();
    assert_eq!(
        validate(&plane, &create(&plane, azure("small")).await)
            .await
            .as_deref(),
        Some("wrong_key_type")
    );

    vault.create_key("no-wrap", 3072).unwrap();
    vault.set_key_ops("no-wrap", &["encrypt", "decrypt"]);
    assert_eq!(
        validate(&plane, &create(&plane, azure("no-wrap")).await)
            .await
            .as_deref(),
        Some("wrong_key_type")
    );

    vault.create_key("off", 4096).unwrap();
    vault.set_enabled("off", None, false);
    assert_eq!(
        validate(&plane, &create(&plane, azure("off")).await)
            .await
            .as_deref(),
        Some("key_disabled")
    );

    assert_eq!(
        validate(&plane, &create(&plane, azure("never-created")).await)
            .await
            .as_deref(),
        Some("key_not_found")
    );

    // A missing role assignment (403 ForbiddenByRbac) comes with the propagation hint.
    vault.inject(AzureFault::Forbidden, 1);
    let result = plane
        .validate_external_key(&Actor::new("admin"), &good.id)
        .await
        .unwrap();
    let error = result.error.unwrap();
    assert_eq!(error.kind, "permission_denied");
    assert!(error.message.contains("propagate"), "{}", error.message);
}

#[tokio::test]
async fn a_deleted_aws_key_revokes_its_data_within_the_bound() {
    let fake = FakeAwsKms::start().await.unwrap();
    let (plane, audit) = plane_with(aws_factory(&fake.endpoint()), short_decrypt_cache());
    let arn = fake.create_key();
    let key = create(&plane, aws_config(&arn)).await;
    assert_eq!(validate(&plane, &key).await, None);
    deleting_the_kms_key_revokes_its_data(&plane, &audit, &key, || fake.delete_key(&arn)).await;
}

#[tokio::test]
async fn a_deleted_azure_key_revokes_its_data_within_the_bound() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    let (plane, audit) = plane_with(
        DefaultBackendFactory::new()
            .azure_credential(StaticToken::new("access-token"))
            .azure_root_certificate_pem(vault.ca_pem()),
        short_decrypt_cache(),
    );
    vault.create_key("doomed", 3072).unwrap();
    let key = create(
        &plane,
        ProviderConfig::Azure {
            vault_uri: vault.vault_uri(),
            key_name: "doomed".to_owned(),
            tenant_id: TENANT.to_owned(),
            client_id: None,
        },
    )
    .await;
    assert_eq!(validate(&plane, &key).await, None);
    deleting_the_kms_key_revokes_its_data(&plane, &audit, &key, || vault.delete_key("doomed"))
        .await;
}
