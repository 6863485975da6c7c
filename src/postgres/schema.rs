//! The tables, as versioned migrations applied once, in order, under an advisory lock (so
//! nodes starting together do not race).

use deadpool_postgres::GenericClient;

use super::OpError;
use crate::error::Error;

/// Version 1: DEK records, external key configurations, compartments, rewrap jobs.
///
/// Times are Unix nanoseconds (`bigint`), so that a stored `updated_at` compares equal to the
/// one a reader holds (compare-and-swap); `timestamptz` keeps only microseconds.
const V1: &str = "
CREATE TABLE cmek_dek_records (
    compartment_id text NOT NULL,
    dek_id bytea NOT NULL CHECK (length(dek_id) = 16),
    key_config_id text NOT NULL,
    record bytea NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (compartment_id, dek_id)
);
CREATE INDEX cmek_dek_records_by_key_config ON cmek_dek_records (key_config_id);

CREATE TABLE cmek_external_keys (
    id text PRIMARY KEY,
    body jsonb NOT NULL,
    created_at_ns bigint NOT NULL,
    updated_at_ns bigint NOT NULL,
    deleted boolean NOT NULL
);

CREATE TABLE cmek_compartments (
    id text PRIMARY KEY,
    external_key_id text REFERENCES cmek_external_keys (id),
    created_at_ns bigint NOT NULL,
    updated_at_ns bigint NOT NULL
);
CREATE INDEX cmek_compartments_by_external_key ON cmek_compartments (external_key_id);

CREATE TABLE cmek_rewrap_jobs (
    external_key_id text PRIMARY KEY,
    body jsonb NOT NULL
);
";

/// Version 2: the change log every node's feed follows (see `changes.rs`), numbered by the
/// one-row generation counter (its row lock orders the changes as they commit).
const V2: &str = "
CREATE TABLE cmek_generation (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    value bigint NOT NULL
);
INSERT INTO cmek_generation (value) VALUES (0);

CREATE TABLE cmek_changes (
    generation bigint PRIMARY KEY,
    made_at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    key_config_id text,
    compartment_id text
);
";

/// Version 3: job leases (times by the database's clock, in Unix nanoseconds) and the audit
/// trail, numbered by a sequence for paging.
const V3: &str = "
CREATE TABLE cmek_leases (
    job text PRIMARY KEY,
    holder text NOT NULL,
    expires_at_ns bigint NOT NULL
);

CREATE TABLE cmek_audit (
    seq bigserial PRIMARY KEY,
    event jsonb NOT NULL
);
";

/// One migration: its version, its SQL, and the oldest schema version whose cmek still
/// works correctly on a database after it (its own version unless it only adds what older
/// nodes may ignore, such as an index): this lets a rolling deploy keep older nodes running.
struct Migration {
    version: i32,
    compatible_from: i32,
    sql: &'static str,
}

/// Every migration, in order. Version 2 made every change record itself for the other
/// nodes, and version 3 made jobs take leases: nodes that do neither are not compatible.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        compatible_from: 1,
        sql: V1,
    },
    Migration {
        version: 2,
        compatible_from: 2,
        sql: V2,
    },
    Migration {
        version: 3,
        compatible_from: 3,
        sql: V3,
    },
];

/// The version [`migrate`] brings a database to.
pub(super) const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// The advisory lock migrations hold (an arbitrary constant: "cmek" in ASCII).
const MIGRATION_LOCK: i64 = 0x636d_656b;

/// The schema version of the database (0 before the first migration).
async fn current_version(client: &impl GenericClient) -> Result<i32, OpError> {
    let row = client
        .query_one("SELECT to_regclass('cmek_schema') IS NOT NULL", &[])
        .await?;
    if !super::column::<bool>(&row, 0)? {
        return Ok(0);
    }
    let row = client
        .query_one("SELECT max(version) FROM cmek_schema", &[])
        .await?;
    Ok(super::column::<Option<i32>>(&row, 0)?.unwrap_or(0))
}

/// A database at `current`, newer than this cmek: usable if the newer cmek that migrated it
/// declared this version compatible, refused otherwise.
async fn newer(client: &impl GenericClient, current: i32) -> Result<i32, OpError> {
    // Every migration this cmek does not know must allow it (a version without the column
    // allows only itself).
    let row = client
        .query_one(
            "SELECT max(coalesce(compatible_from, version)) FROM cmek_schema WHERE version > $1",
            &[&LATEST],
        )
        .await?;
    let compatible_from = super::column::<Option<i32>>(&row, 0)?.unwrap_or(current);
    if compatible_from <= LATEST {
        tracing::info!(
            database = current,
            this = LATEST,
            "the database's cmek schema is newer, and compatible with this cmek"
        );
        return Ok(current);
    }
    Err(Error::configuration(format!(
        "the database's cmek schema is version {current}, newer than this cmek knows ({LATEST}) and not compatible with it (it needs version {compatible_from} at least): upgrade cmek"
    ))
    .into())
}

/// Applies the migrations the database lacks, in one transaction. A database already up to
/// date is only read (a role without the right to create tables can connect); a newer one
/// is used if it says it is compatible with this version.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<i32, OpError> {
    match current_version(&*client).await? {
        LATEST => return Ok(LATEST),
        current if current > LATEST => return newer(&*client, current).await,
        _ => {}
    }
    let tx = super::transaction(client).await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS cmek_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        );
        ALTER TABLE cmek_schema ADD COLUMN IF NOT EXISTS compatible_from integer",
    )
    .await?;
    let current = current_version(&tx).await?;
    if current > LATEST {
        return newer(&tx, current).await;
    }
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO cmek_schema (version, compatible_from) VALUES ($1, $2)",
            &[&migration.version, &migration.compatible_from],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(LATEST)
}
