//! No secret (DEK or KEK material) appears in any Debug, Display, error text or envelope.

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine as _;
use cmek::testkit::FaultyKms;
use cmek::{
    CacheConfig, Client, DataKey, KeyDescription, KmsBackend, LocalKms, MemoryDekStore, Provider,
    WrapContext, WrappedKey,
};
use common::*;

/// Records every DEK it is asked to wrap, so the test knows the secrets to look for.
struct Spy {
    inner: LocalKms,
    seen: Mutex<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for Spy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spy")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Spy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Spy({})", self.inner)
    }
}

#[async_trait]
impl KmsBackend for Spy {
    fn provider(&self) -> Provider {
        self.inner.provider()
    }
    async fn describe(&self) -> cmek::Result<KeyDescription> {
        self.inner.describe().await
    }
    async fn wrap(&self, dek: &DataKey, ctx: &WrapContext<'_>) -> cmek::Result<WrappedKey> {
        self.seen.lock().unwrap().push(*dek.expose_secret());
        self.inner.wrap(dek, ctx).await
    }
    async fn unwrap(&self, w: &WrappedKey, ctx: &WrapContext<'_>) -> cmek::Result<DataKey> {
        self.inner.unwrap(w, ctx).await
    }
}

fn renderings(secret: &[u8]) -> Vec<String> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        hex.clone(),
        hex.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        format!("{:?}", &secret[..6])
            .trim_end_matches(']')
            .to_owned(),
        String::from_utf8_lossy(secret).into_owned(),
    ]
}

fn assert_clean(label: &str, text: &str, secrets: &[Vec<u8>]) {
    for s in secrets {
        for r in renderings(s) {
            assert!(
                !text.contains(&r),
                "{label} leaks a secret rendered as {r:?}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn nothing_prints_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.json");
    let kek = LocalKms::create(&path, "local:secrets").unwrap();
    kek.rotate().unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut secrets: Vec<Vec<u8>> = file["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            base64::engine::general_purpose::STANDARD
                .decode(v["material"].as_str().unwrap())
                .unwrap()
        })
        .collect();

    let spy = Arc::new(Spy {
        inner: kek,
        seen: Mutex::new(Vec::new()),
    });
    let client = Client::builder()
        .key(key_config(), spy.clone())
        .dek_store(Arc::new(MemoryDekStore::new()))
        .build()
        .unwrap();
    let c = compartment("tenant-secret");
    let env = client.encrypt(&c, b"payload", b"aad").await.unwrap();
    let compact = client
        .encrypt_compact(&c, b"payload", b"aad")
        .await
        .unwrap();
    secrets.extend(spy.seen.lock().unwrap().iter().map(|k| k.to_vec()));
    assert_eq!(secrets.len(), 3, "two KEK versions and one DEK");

    let mut outputs = vec![
        ("client", format!("{client:?}")),
        ("stats", format!("{:?}", client.stats())),
        ("spy backend", format!("{:?}", spy.inner)),
        ("inspect", format!("{:?}", cmek::inspect(&env).unwrap())),
        (
            "inspect json",
            serde_json::to_string(&cmek::inspect(&env).unwrap()).unwrap(),
        ),
        ("faulty", format!("{:?}", FaultyKms::in_memory().unwrap())),
        ("envelope bytes", String::from_utf8_lossy(&env).into_owned()),
        (
            "compact bytes",
            String::from_utf8_lossy(&compact).into_owned(),
        ),
    ];
    // Errors from every failure path.
    let mut bad = env.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let failures = [
        client.decrypt(&c, &bad, b"aad").await.unwrap_err(),
        client.decrypt(&c, &env, b"other").await.unwrap_err(),
        client
            .decrypt(&compartment("other"), &env, b"aad")
            .await
            .unwrap_err(),
        client.decrypt(&c, &env[..30], b"aad").await.unwrap_err(),
        Client::builder().build().unwrap_err(),
    ];
    for e in &failures {
        outputs.push(("error display", e.to_string()));
        outputs.push(("error debug", format!("{e:?}")));
    }
    let (faulty_client, faulty) = faulty_client(CacheConfig::default());
    faulty.disable();
    let e = faulty_client.encrypt(&c, b"x", b"").await.unwrap_err();
    outputs.push(("revoked error", format!("{e:?} {e}")));
    for (label, text) in &outputs {
        assert_clean(label, text, &secrets);
    }
}

#[test]
fn wrapped_keys_and_records_do_not_dump_bytes() {
    let w = WrappedKey::new(
        Provider::Aws,
        "arn:aws:kms:us-east-1:1:key/x",
        "",
        vec![0xAB; 40],
    );
    let text = format!("{w:?}");
    assert!(text.contains("ciphertext_len: 40"), "{text}");
    assert!(!text.contains("171"), "{text}");
}

/// Collects everything the library logs, at every level.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn logs_never_contain_key_material() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let kek = LocalKms::generate("local:logs").unwrap();
    let spy = Arc::new(Spy {
        inner: kek,
        seen: Mutex::new(Vec::new()),
    });
    let client = Client::builder()
        .key(key_config(), spy.clone())
        .retry(fast_retry())
        .build()
        .unwrap();
    let c = compartment("tenant-logs");
    let env = client.encrypt(&c, b"payload", b"").await.unwrap();
    client.purge(&c);
    client.decrypt(&c, &env, b"").await.unwrap();
    client.revoke(&key_config(), cmek::RevokeMode::Immediately);
    let _ = client.encrypt(&c, b"x", b"").await;

    let (faulty, kms) = faulty_client(CacheConfig::default());
    kms.fail_next(2, cmek::ErrorKind::Transient);
    faulty.encrypt(&c, b"x", b"").await.unwrap();

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("KMS call"),
        "the test saw no KMS log lines: {text}"
    );
    assert!(text.contains("retrying KMS call"), "{text}");
    let secrets: Vec<Vec<u8>> = spy
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|k| k.to_vec())
        .collect();
    assert!(!secrets.is_empty());
    assert_clean("logs", &text, &secrets);
}
