//! The Azure Key Vault backend (official `azure_security_keyvault_keys` client) against the
//! testkit's HTTPS Key Vault fake: conformance, local wrap after one look at the key, remote
//! unwrap on the recorded version, rotation, the compartment-swap attack, key state, faults and
//! key checks.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cmek::kms::KeyStateControl;
use cmek::kms::azure::AzureKeyVault;
use cmek::testkit::azure_fake::{AzureFault, FakeKeyVault, StaticToken};
use cmek::testkit::conformance;
use cmek::{Client, DataKey, ErrorKind, KmsBackend, WrapContext, WrappedKey, inspect};
use common::*;

const TENANT: &str = "00000000-0000-0000-0000-0000000000aa";

fn backend(vault: &FakeKeyVault, key: &str, token: Arc<StaticToken>) -> AzureKeyVault {
    AzureKeyVault::builder(vault.vault_uri(), key)
        .tenant_id(TENANT)
        .credential(token)
        .root_certificate_pem(vault.ca_pem())
        .unwrap()
        .build()
        .unwrap()
}

fn client(kms: AzureKeyVault) -> Client {
    Client::builder()
        .key(key_config(), Arc::new(kms))
        .retry(fast_retry())
        .build()
        .unwrap()
}

/// Disables and enables the current version, for the conformance suite.
struct Control<'a>(&'a FakeKeyVault, &'a str, &'a AzureKeyVault);

#[async_trait]
impl KeyStateControl for Control<'_> {
    async fn disable_key(&self) -> cmek::Result<()> {
        self.0.set_enabled(self.1, None, false);
        // Wrapping is local: the backend learns of the state when it fetches the key again.
        self.2.check_key().await.ok();
        Ok(())
    }
    async fn enable_key(&self) -> cmek::Result<()> {
        self.0.set_enabled(self.1, None, true);
        self.2.check_key().await.ok();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    vault.create_key("kek", 3072).unwrap();
    let token = StaticToken::new("token-1");
    let kms = Arc::new(backend(&vault, "kek", token.clone()));
    conformance::run_all(kms.clone(), Some(&Control(&vault, "kek", &kms))).await;
    assert!(vault.challenges() >= 1, "the bearer challenge was answered");
    assert!(vault.tokens_seen().iter().all(|t| t == "token-1"));
    assert!(
        token
            .requests()
            .iter()
            .all(|scopes| scopes == &["https://vault.azure.net/.default"]),
        "{:?}",
        token.requests()
    );
}

#[tokio::test]
async fn wraps_locally_and_unwraps_remotely_on_the_recorded_version() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    let v1 = vault.create_key("kek", 3072).unwrap();
    let kms = backend(&vault, "kek", StaticToken::new("t"));
    let (c, k) = (compartment("tenant-a"), key_config());
    let ctx = WrapContext::new(&c, &k);
    let dek = DataKey::generate().unwrap();
    let wrapped = kms.wrap(&dek, &ctx).await.unwrap();
    assert_eq!(wrapped.key_version, v1);
    assert_eq!(wrapped.ciphertext.len(), 384, "RSA-3072");
    for _ in 0..10 {
        kms.wrap(&dek, &ctx).await.unwrap();
    }
    // One look at the key per wrap (its state and current version); the RSA-OAEP encryption
    // itself is local.
    assert_eq!(vault.calls("get"), 11, "one key fetch per wrap");
    assert_eq!(vault.calls("wrapkey"), 0, "wrapping is local");
    let back = kms.unwrap(&wrapped, &ctx).await.unwrap();
    assert_eq!(back.expose_secret(), dek.expose_secret());
    assert_eq!(vault.calls("unwrapkey"), 1);
}

#[tokio::test]
async fn rotation_is_picked_up_for_new_deks_and_old_envelopes_still_open() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    let v1 = vault.create_key("kek", 3072).unwrap();
    let kms = AzureKeyVault::builder(vault.vault_uri(), "kek")
        .credential(StaticToken::new("t"))
        .root_certificate_pem(vault.ca_pem())
        .unwrap()
        .public_key_refresh(Duration::from_millis(100))
        .build()
        .unwrap();
    let client = client(kms);
    let c = compartment("tenant-a");
    let old = client.encrypt(&c, b"under v1", b"").await.unwrap();
    assert_eq!(
        inspect(&old).unwrap().key_version.as_deref(),
        Some(v1.as_str())
    );
    let v2 = vault.rotate("kek").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    client.purge(&c);
    let new = client.encrypt(&c, b"under v2", b"").await.unwrap();
    assert_eq!(
        inspect(&new).unwrap().key_version.as_deref(),
        Some(v2.as_str())
    );
    let reader = self::client(backend(&vault, "kek", StaticToken::new("t")));
    assert_eq!(reader.decrypt(&c, &old, b"").await.unwrap(), b"under v1");
    assert_eq!(reader.decrypt(&c, &new, b"").await.unwrap(), b"under v2");
}

#[tokio::test]
async fn a_wrapped_dek_moved_to_another_compartment_fails() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    vault.create_key("kek", 3072).unwrap();
    let kms = backend(&vault, "kek", StaticToken::new("t"));
    let k = key_config();
    let (a, b) = (compartment("tenant-a"), compartment("tenant-b"));
    let wrapped = kms
        .wrap(&DataKey::generate().unwrap(), &WrapContext::new(&a, &k))
        .await
        .unwrap();
    // The RSA unwrap succeeds (Key Vault cannot bind a context), the binding check does not.
    let err = kms
        .unwrap(&wrapped, &WrapContext::new(&b, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");

    // Through the client: tenant A's wrapped DEK spliced into an envelope of tenant B.
    let client = client(backend(&vault, "kek", StaticToken::new("t")));
    let env_a = client.encrypt(&a, b"secret of A", b"").await.unwrap();
    let env_b = client.encrypt(&b, b"secret of B", b"").await.unwrap();
    let info_a = inspect(&env_a).unwrap();
    let info_b = inspect(&env_b).unwrap();
    let mut spliced = env_b[..info_b.header_len].to_vec();
    let wrapped_at = info_b.header_len - info_b.wrapped_dek_len.unwrap();
    let a_wrapped = &env_a[info_a.header_len - info_a.wrapped_dek_len.unwrap()..info_a.header_len];
    spliced[wrapped_at..].copy_from_slice(a_wrapped);
    spliced.extend_from_slice(&env_a[info_a.header_len..]);
    let reader = self::client(backend(&vault, "kek", StaticToken::new("t")));
    assert!(reader.decrypt(&b, &spliced, b"").await.is_err());
    assert_eq!(
        reader.decrypt(&a, &env_a, b"").await.unwrap(),
        b"secret of A"
    );
}

#[tokio::test]
async fn disabled_expired_and_not_yet_valid_keys_are_revoked() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    let v1 = vault.create_key("kek", 3072).unwrap();
    let kms = backend(&vault, "kek", StaticToken::new("t"));
    let (c, k) = (compartment("tenant-a"), key_config());
    let ctx = WrapContext::new(&c, &k);
    let wrapped = kms.wrap(&DataKey::generate().unwrap(), &ctx).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (label, change) in [
        (
            "disabled",
            Box::new(|v: &FakeKeyVault| v.set_enabled("kek", None, false))
                as Box<dyn Fn(&FakeKeyVault)>,
        ),
        (
            "expired",
            Box::new(move |v: &FakeKeyVault| v.set_expires("kek", None, Some(now - 60))),
        ),
        (
            "not yet valid",
            Box::new(move |v: &FakeKeyVault| v.set_not_before("kek", None, Some(now + 3600))),
        ),
    ] {
        change(&vault);
        let err = kms.unwrap(&wrapped, &ctx).await.err().unwrap();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{label}: {err}");
        let err = kms.check_key().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{label}: {err}");
        // Wrapping is local, but the key state fetched with the public key stops it.
        let err = kms
            .wrap(&DataKey::generate().unwrap(), &ctx)
            .await
            .err()
            .unwrap();
        assert_eq!(err.kind(), ErrorKind::KeyRevoked, "{label}: {err}");
        vault.set_enabled("kek", None, true);
        vault.set_expires("kek", None, None);
        vault.set_not_before("kek", None, None);
        kms.check_key().await.unwrap();
    }
    assert_eq!(wrapped.key_version, v1);
    kms.unwrap(&wrapped, &ctx).await.unwrap();
}

#[tokio::test]
async fn faults_map_onto_kinds() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    vault.create_key("kek", 3072).unwrap();
    let writer = client(backend(&vault, "kek", StaticToken::new("t")));
    let c = compartment("tenant-a");
    let env = writer.encrypt(&c, b"data", b"").await.unwrap();

    let reader = client(backend(&vault, "kek", StaticToken::new("t")));
    vault.inject(AzureFault::Forbidden, 1);
    let err = reader.decrypt(&c, &env, b"").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(
        err.to_string().contains("propagate"),
        "the RBAC hint: {err}"
    );

    let missing = backend(&vault, "missing", StaticToken::new("t"));
    let (cc, k) = (compartment("x"), key_config());
    let err = missing
        .wrap(&DataKey::generate().unwrap(), &WrapContext::new(&cc, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    let kms = backend(&vault, "kek", StaticToken::new("t"));
    let forged = WrappedKey::new(
        cmek::Provider::Azure,
        kms.key_id(),
        inspect(&env).unwrap().key_version.unwrap(),
        vec![1u8; 384],
    );
    let err = kms
        .unwrap(&forged, &WrapContext::new(&c, &k))
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
}

#[tokio::test]
async fn key_checks_for_validation() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    vault.create_key("good", 3072).unwrap();
    vault.create_key("small", 2048).unwrap();
    vault.create_key("no-unwrap", 3072).unwrap();
    vault.set_key_ops("no-unwrap", &["encrypt", "decrypt", "wrapKey"]);
    vault.create_key("ec", 3072).unwrap();
    vault.set_key_type("ec", "EC");
    backend(&vault, "good", StaticToken::new("t"))
        .check_key()
        .await
        .unwrap();
    vault.set_key_type("good", "RSA-HSM");
    backend(&vault, "good", StaticToken::new("t"))
        .check_key()
        .await
        .unwrap();
    for (key, expected) in [
        ("small", "2048 bits"),
        ("no-unwrap", "unwrapKey"),
        ("ec", "RSA"),
    ] {
        let err = backend(&vault, key, StaticToken::new("t"))
            .check_key()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{key}: {err}");
        assert!(err.to_string().contains(expected), "{key}: {err}");
    }
    let err = AzureKeyVault::builder("http://vault.example", "k")
        .credential(StaticToken::new("t"))
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("vault_uri") && err.to_string().contains("https"),
        "{err}"
    );
    let err = AzureKeyVault::builder("https://v.vault.azure.net", "bad name!")
        .credential(StaticToken::new("t"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("key_name"), "{err}");
    let err = AzureKeyVault::builder("https://v.vault.azure.net", "k")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Configuration, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_makes_one_unwrap_per_dek() {
    let vault = FakeKeyVault::start(TENANT).await.unwrap();
    vault.create_key("kek", 3072).unwrap();
    let writer = client(backend(&vault, "kek", StaticToken::new("t")));
    let compartments: Vec<_> = (0..10)
        .map(|i| compartment(&format!("tenant-{i}")))
        .collect();
    let mut envelopes = Vec::new();
    for i in 0..5_000 {
        let c = &compartments[i % 10];
        envelopes.push((
            c.clone(),
            writer
                .encrypt(c, format!("record {i}").as_bytes(), b"")
                .await
                .unwrap(),
        ));
    }
    assert_eq!(vault.calls("get"), 10, "one vault call per new DEK");
    let reader = client(backend(&vault, "kek", StaticToken::new("t")));
    for (c, env) in &envelopes {
        reader.decrypt(c, env, b"").await.unwrap();
    }
    assert_eq!(vault.calls("unwrapkey"), 10);
}
