//! Where `--state` points: a directory (the embedded default) or a PostgreSQL URL shared by
//! every node.

use std::path::Path;
use std::sync::Arc;

use cmek::control::{
    ControlPlane, ControlPlaneBuilder, DefaultBackendFactory, FileControlStore, JsonLinesAuditSink,
};
use cmek::{Error, ErrorKind, FileDekStore, LocalKms};

/// The provider-managed key's file in a state directory, and its key id.
const PROVIDER_MANAGED_FILE: &str = "provider-managed.key";
const PROVIDER_MANAGED_KEY_ID: &str = "local:provider-managed";

/// Whether a command may make new state (only those that create something).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Create {
    Yes,
    No,
}

/// Whether `state` is a PostgreSQL URL rather than a directory.
pub(crate) fn is_url(state: &str) -> bool {
    state.starts_with("postgres://") || state.starts_with("postgresql://")
}

/// Opens the control plane whose state `state` names. A directory holds `control/`
/// (configurations, compartments, rewrap jobs), `dek_records/`, `audit.jsonl` and the
/// provider-managed key file; a `postgres://` URL holds all but the key file, which is
/// `provider_key` then (every node needs the same one). Only a command that creates something
/// makes new state: elsewhere a missing state is a mistyped path.
pub(crate) async fn open_plane(
    state: &str,
    provider_key: Option<&Path>,
    create: Create,
) -> cmek::Result<ControlPlane> {
    if is_url(state) {
        let Some(key_file) = provider_key else {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "with a PostgreSQL --state, give --provider-key (the provider-managed key file every node shares)",
            ));
        };
        // (Not the URL in messages: it may hold a password.)
        let provider_managed = provider_managed_key(key_file, create, &"the database")?;
        return on_postgres(state)
            .await?
            .factory(Arc::new(DefaultBackendFactory::new()))
            .provider_managed(Arc::new(provider_managed))
            .build();
    }
    let dir = match provider_key {
        None => Path::new(state),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                "--provider-key goes with a PostgreSQL --state; a state directory keeps its own",
            ));
        }
    };
    if create == Create::No && !dir.join("control").is_dir() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "no cmek state in {} (`cmek keys create` or `cmek compartments create` makes one)",
                dir.display()
            ),
        ));
    }
    std::fs::create_dir_all(dir)?;
    let provider_managed =
        provider_managed_key(&dir.join(PROVIDER_MANAGED_FILE), create, &dir.display())?;
    ControlPlane::builder()
        .store(Arc::new(FileControlStore::open(dir.join("control"))?))
        .dek_store(Arc::new(FileDekStore::open(dir.join("dek_records"))?))
        .audit(Arc::new(JsonLinesAuditSink::open(dir.join("audit.jsonl"))?))
        .factory(Arc::new(DefaultBackendFactory::new()))
        .provider_managed(Arc::new(provider_managed))
        .build()
}

/// The provider-managed key in `key_file`, made only by a command that creates something: a
/// new key would make every provider-managed envelope of the state unreadable.
fn provider_managed_key(
    key_file: &Path,
    create: Create,
    state: &dyn std::fmt::Display,
) -> cmek::Result<LocalKms> {
    if key_file.exists() {
        LocalKms::open(key_file)
    } else if create == Create::Yes {
        LocalKms::create(key_file, PROVIDER_MANAGED_KEY_ID)
    } else {
        Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "the state in {state} has no provider-managed key file ({}); restore it from a backup",
                key_file.display()
            ),
        ))
    }
}

async fn on_postgres(url: &str) -> cmek::Result<ControlPlaneBuilder> {
    let db = cmek::postgres::Postgres::connect(url).await?;
    Ok(ControlPlane::builder().postgres(&db))
}
