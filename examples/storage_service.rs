//! A small multi-tenant blob store built on `cmek`, through the whole customer-managed-key life
//! cycle, with everything on disk (local key files stand in for the customer's KMS):
//!
//! 1. a workspace stores blobs under the provider-managed key;
//! 2. the customer registers their key, it is validated and attached (write-once);
//! 3. the customer rotates to a new key; `rewrap` moves the stored data keys over;
//! 4. the customer destroys the old key, the service restarts: every blob still reads;
//! 5. the customer disables their key: the workspace's data becomes unreadable.
//!
//! Run: `cargo run --example storage_service [STATE_DIR]` (a temporary directory by default).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cmek::control::{
    Actor, ControlPlane, CreateExternalKey, FileControlStore, JsonLinesAuditSink, ProviderConfig,
};
use cmek::{CompartmentId, ErrorKind, FileDekStore, LocalKms};

/// Blobs as files of compact envelopes, one directory per workspace (compartment).
struct BlobStore {
    plane: ControlPlane,
    blobs: PathBuf,
}

impl BlobStore {
    /// Opens the service's state under `state`: control-plane records, DEK records, the audit
    /// trail, the provider-managed key and the blobs.
    fn open(state: &Path) -> cmek::Result<Self> {
        let provider_key = state.join("provider-managed.key");
        let provider_managed = if provider_key.exists() {
            LocalKms::open(&provider_key)?
        } else {
            LocalKms::create(&provider_key, "local:provider-managed")?
        };
        let plane = ControlPlane::builder()
            .store(Arc::new(FileControlStore::open(state.join("control"))?))
            .dek_store(Arc::new(FileDekStore::open(state.join("dek_records"))?))
            .audit(Arc::new(JsonLinesAuditSink::open(
                state.join("audit.jsonl"),
            )?))
            .provider_managed(Arc::new(provider_managed))
            .build()?;
        Ok(Self {
            plane,
            blobs: state.join("blobs"),
        })
    }

    fn path(&self, workspace: &CompartmentId, name: &str) -> PathBuf {
        self.blobs.join(workspace.as_str()).join(name)
    }

    /// Stores a blob; the blob's name is bound to it as additional data, so blobs cannot be
    /// swapped on disk.
    async fn put(&self, workspace: &CompartmentId, name: &str, data: &[u8]) -> cmek::Result<()> {
        let envelope = self
            .plane
            .client()
            .encrypt_compact(workspace, data, name.as_bytes())
            .await?;
        let path = self.path(workspace, name);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.blobs))?;
        std::fs::write(path, envelope)?;
        Ok(())
    }

    async fn get(&self, workspace: &CompartmentId, name: &str) -> cmek::Result<Vec<u8>> {
        let envelope = std::fs::read(self.path(workspace, name))?;
        self.plane
            .client()
            .decrypt(workspace, &envelope, name.as_bytes())
            .await
    }
}

/// A key file in the "customer's KMS", as a provider configuration.
fn customer_key(state: &Path, name: &str) -> cmek::Result<ProviderConfig> {
    let path = state.join("customer-kms").join(format!("{name}.key"));
    std::fs::create_dir_all(path.parent().unwrap_or(state))?;
    LocalKms::create(&path, format!("local:customer-{name}"))?;
    Ok(ProviderConfig::Local {
        key_file: path.display().to_string(),
    })
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temporary = tempfile::tempdir()?;
    let state = std::env::args_os()
        .nth(1)
        .map_or_else(|| temporary.path().to_owned(), PathBuf::from);
    let admin = Actor::new("admin@example.com");

    // 1. A workspace, data under the provider-managed key.
    let store = BlobStore::open(&state)?;
    let workspace = store.plane.create_compartment(&admin, None).await?;
    let ws = &workspace.compartment_id;
    println!("created workspace {ws}");
    store
        .put(ws, "before-cmek.txt", b"written before CMEK")
        .await?;

    // 2. The customer's key: registered (the reference API's JSON), validated, attached.
    let key = store
        .plane
        .create_external_key(
            &admin,
            CreateExternalKey::new("customer key", customer_key(&state, "v1")?),
        )
        .await?;
    println!("{}", json(&key));
    let validation = store.plane.validate_external_key(&admin, &key.id).await?;
    println!("{}", json(&validation));
    store.plane.attach_external_key(&admin, ws, &key.id).await?;
    store
        .put(ws, "under-v1.txt", b"written under key v1")
        .await?;

    // 3. The customer rotates to a new key; stored data keys are re-wrapped, data untouched.
    let ProviderConfig::Local { key_file } = &key.provider_config else {
        return Err("the customer key of this example is a local key file".into());
    };
    let old_key_file = PathBuf::from(key_file);
    store
        .plane
        .rotate_external_key(&admin, &key.id, customer_key(&state, "v2")?)
        .await?;
    store
        .put(ws, "under-v2.txt", b"written under key v2")
        .await?;
    let job = store
        .plane
        .rewrap(&admin, &key.id, 100, |job| {
            println!("rewrap: {} rewrapped so far", job.rewrapped);
        })
        .await?;
    println!("{}", json(&job));

    // 4. The old key is destroyed and the service restarts: everything still reads.
    std::fs::remove_file(&old_key_file)?;
    drop(store);
    let store = BlobStore::open(&state)?;
    for (name, text) in [
        ("before-cmek.txt", "written before CMEK"),
        ("under-v1.txt", "written under key v1"),
        ("under-v2.txt", "written under key v2"),
    ] {
        let data = store.get(ws, name).await?;
        assert_eq!(data, text.as_bytes());
        println!("read {name}: {}", String::from_utf8_lossy(&data));
    }

    // 5. The customer disables their key: the workspace's CMEK data is unreadable (after a
    //    restart here; a running service sees it within the cache's decrypt_max_age).
    let current = store.plane.external_key(&key.id).await?;
    if let ProviderConfig::Local { key_file } = &current.provider_config {
        LocalKms::open(key_file)?.set_enabled(false)?;
    }
    drop(store);
    let store = BlobStore::open(&state)?;
    let err = store
        .get(ws, "under-v2.txt")
        .await
        .err()
        .ok_or("data under a disabled key must not read")?;
    assert_eq!(err.kind(), ErrorKind::KeyRevoked);
    println!("after the customer disabled the key: {err}");
    // Data written before CMEK was enabled stays under the provider-managed key.
    assert_eq!(
        store.get(ws, "before-cmek.txt").await?,
        b"written before CMEK"
    );

    let trail = std::fs::read_to_string(state.join("audit.jsonl"))?;
    println!(
        "audit trail: {} events in {}",
        trail.lines().count(),
        state.join("audit.jsonl").display()
    );
    Ok(())
}
