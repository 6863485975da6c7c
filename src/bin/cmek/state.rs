//! Where `--state` points: a directory (the embedded default) or a PostgreSQL URL shared by
//! every node.

use std::path::Path;
use std::sync::Arc;

use cmek::control::{ControlPlane, DefaultBackendFactory, FileControlStore, JsonLinesAuditSink};
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
        let db = cmek::postgres::Postgres::connect(state).await?;
        // A new key for a database that has state already would make everything written
        // under the key the other nodes have unreadable to them: a mistyped path, most likely.
        let create = if create == Create::Yes && !key_file.exists() && has_state(&db).await? {
            Create::No
        } else {
            create
        };
        // (Not the URL in messages: it may hold a password.)
        let provider_managed = provider_managed_key(key_file, create, &"the database")?;
        return ControlPlane::builder()
            .postgres(&db)
            .factory(Arc::new(DefaultBackendFactory::new()))
            .provider_managed(Arc::new(provider_managed))
            .build();
    }
    // A directory keeps its own provider-managed key (CMEK_PROVIDER_KEY is for URLs).
    let dir = Path::new(state);
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

/// Whether the database holds configurations or compartments already.
async fn has_state(db: &cmek::postgres::Postgres) -> cmek::Result<bool> {
    use cmek::control::ControlStore as _;
    let store = db.control_store();
    Ok(!store.external_keys().await?.is_empty() || !store.compartments().await?.is_empty())
}
