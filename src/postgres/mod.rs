//! Shared state on PostgreSQL (feature `postgres`): DEK records and control state that many
//! service nodes read and write as one.
//!
//! [`Postgres::connect`] opens a pool of connections and brings the database's schema up to
//! date (versioned migrations, applied once however many nodes start at the same moment);
//! [`Postgres::dek_store`] and [`Postgres::control_store`] are the stores over it. The rules
//! that must hold across nodes are the database's: a DEK record is one row, replaced whole;
//! a compartment's key is set by `UPDATE … WHERE external_key_id IS NULL` (write-once however
//! many nodes race); a configuration changes by `UPDATE … WHERE updated_at_ns = $expected`
//! (compare-and-swap); an attachment and a deletion of its key take the key's row lock, so
//! they never cross.
//!
//! ```no_run
//! # async fn run() -> cmek::Result<()> {
//! use std::sync::Arc;
//! use cmek::postgres::Postgres;
//!
//! let db = Postgres::connect("postgres://cmek@db.internal:5432/cmek").await?;
//! let deks = Arc::new(db.dek_store());
//! let control = Arc::new(db.control_store());
//! # let _ = (deks, control);
//! # Ok(()) }
//! ```
//!
//! Every change that affects cached DEKs (a key attached, rotated or deleted; a revocation a
//! node saw at the KMS) is recorded with it and pushed to every node: [`Postgres::follow`]
//! starts a [`ChangeFeed`] that applies them to a node's [`Client`](crate::Client).
//!
//! Connections use TLS (rustls) when the URL asks for it with `sslmode=require`,
//! `verify-ca` or `verify-full`; each verifies the server's certificate and name, against the
//! system's certificate authorities or those of `sslrootcert=<PEM file>`. Otherwise they are
//! plain TCP, for a private network or a local socket.

mod audit;
mod changes;
mod control_store;
mod dek_store;
mod errors;
mod feed;
mod leases;
mod options;
mod schema;
mod tls;

use std::fmt;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

pub use audit::PostgresAuditSink;
pub use changes::Change;
pub use control_store::PostgresControlStore;
pub use dek_store::PostgresDekStore;
pub use feed::{ChangeFeed, FeedOptions};
pub use options::PostgresOptions;

use crate::error::{Error, Result};
use errors::db_error;
use tls::Tls;

/// A pool of connections to one PostgreSQL database whose schema is up to date. Clones share
/// the pool.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    /// How connections are made (plain, or TLS with these roots).
    tls: Tls,
    /// For connections of their own (the change feed's listener).
    config: std::sync::Arc<tokio_postgres::Config>,
    timeout: Duration,
    /// `host:port/dbname`, for messages (never the password).
    target: std::sync::Arc<str>,
}

impl Postgres {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/dbname`,
    /// or the key-value form `host=… dbname=…`) and migrates its schema.
    ///
    /// # Errors
    /// [`InvalidInput`](crate::ErrorKind::InvalidInput) for a malformed URL;
    /// [`Transient`](crate::ErrorKind::Transient) when the server cannot be reached within
    /// 5 seconds (see [`Postgres::connect_with`]); [`Configuration`](crate::ErrorKind::Configuration) for refused credentials
    /// or a schema newer than this version of cmek knows.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// [`Postgres::connect`] with a pool size and timeout of one's own.
    ///
    /// # Errors
    /// As for [`Postgres::connect`], within `options.timeout`.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        let db = Self::lazy(url, options)?;
        db.timed("migrating the schema", async {
            let mut client = db.client().await?;
            schema::migrate(&mut client).await
        })
        .await?;
        Ok(db)
    }

    /// A pool to `url` that connects on first use and does not migrate.
    pub(crate) fn lazy(url: &str, options: PostgresOptions) -> Result<Self> {
        let timeout = options.timeout;
        let (mut config, tls) = tls::configure(url)?;
        config.connect_timeout(timeout);
        // The server gives up too, so that a node cut off mid-transaction holds no lock for
        // longer than this (the counter of changes is one row every writer takes).
        let ms = timeout.as_millis();
        let server_options = format!(
            "{} -c statement_timeout={ms} -c lock_timeout={ms} -c idle_in_transaction_session_timeout={ms}",
            config.get_options().unwrap_or_default()
        );
        config.options(server_options.trim());
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("cmek");
        }
        let target = target_of(&config);
        let shared = std::sync::Arc::new(config.clone());
        let recycling = || ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::Plain => Manager::from_config(config, NoTls, recycling()),
            Tls::Rustls(tls) => Manager::from_config(config, tls.clone(), recycling()),
        };
        let pool = Pool::builder(manager)
            .max_size(options.max_connections)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::configuration(format!("PostgreSQL pool: {e}")))?;
        Ok(Self {
            pool,
            tls,
            config: shared,
            timeout,
            target: target.into(),
        })
    }

    /// The DEK records in this database.
    pub fn dek_store(&self) -> PostgresDekStore {
        PostgresDekStore::new(self.clone())
    }

    /// The audit trail in this database, readable as an activity feed.
    pub fn audit_sink(&self) -> PostgresAuditSink {
        PostgresAuditSink::new(self.clone())
    }

    /// The control plane's state in this database.
    pub fn control_store(&self) -> PostgresControlStore {
        PostgresControlStore::new(self.clone())
    }

    /// The schema version this version of cmek brings a database to.
    pub fn schema_version() -> i32 {
        schema::LATEST
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| errors::pool_error(e, &self.target))
    }

    /// Runs `work` (which takes its connections from the pool) within the timeout.
    async fn timed<T>(
        &self,
        doing: &'static str,
        work: impl Future<Output = std::result::Result<T, OpError>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(e, doing)),
            Err(_) => Err(Error::transient(format!(
                "PostgreSQL at {}: {doing} took longer than {:?}",
                self.target, self.timeout
            ))),
        }
    }

    /// The cmek error of a failed operation.
    fn error(&self, e: OpError, doing: &str) -> Error {
        match e {
            OpError::Db(e) => db_error(e, doing, &self.target),
            OpError::Cmek(e) => e,
        }
    }
}

/// A transaction at READ COMMITTED, whatever the database's default: the rules here rely on
/// each statement seeing what committed before it (a deletion counting the attachment it
/// waited for, a node reading the schema version the one before it wrote).
async fn transaction(
    client: &mut deadpool_postgres::Object,
) -> std::result::Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::ReadCommitted)
        .start()
        .await
}

/// What an operation on a connection fails with: the database's error, or cmek's own (a
/// rule such as write-once, a corrupt row).
#[derive(Debug)]
enum OpError {
    Db(tokio_postgres::Error),
    Cmek(Error),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e)
    }
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        Self::Cmek(e)
    }
}

/// Column `index` of `row`, or an error (never a panic) for a value of another type.
fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    index: usize,
) -> std::result::Result<T, OpError> {
    row.try_get(index).map_err(|e| {
        Error::invalid_input(format!("a row in the database is not what cmek wrote: {e}")).into()
    })
}

fn target_of(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Postgres")
            .field("target", &self.target)
            .field("tls", &matches!(self.tls, Tls::Rustls(_)))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "postgres://{}", self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_printed() {
        let db = Postgres::lazy(
            "postgres://cmek:hunter2-secret@db.example:6543/state",
            PostgresOptions::default(),
        )
        .unwrap();
        for shown in [format!("{db:?}"), db.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("db.example:6543/state"), "{shown}");
        }
    }

    #[test]
    fn a_malformed_url_is_invalid_input() {
        let err = Postgres::lazy("postgres://[::1", PostgresOptions::default()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::InvalidInput);
    }
}
