//! PostgreSQL's errors as cmek's kinds: what is worth retrying, what an operator must fix.

use tokio_postgres::error::SqlState;

use crate::error::{Error, ErrorKind};

/// The cmek error for a failed statement while `doing` something on the database at `target`.
pub(super) fn db_error(e: tokio_postgres::Error, doing: &str, target: &str) -> Error {
    let refusal = super::tls::refusal(&e);
    let kind = match e.code() {
        Some(code) => kind_of(code),
        // TLS refused the server (an unknown authority, another name): a setup to fix.
        None if refusal.is_some() => ErrorKind::Configuration,
        // No SQLSTATE: the connection broke, timed out or was never made.
        None => ErrorKind::Transient,
    };
    let reason = match (e.as_db_error(), refusal) {
        (Some(db), _) => db.message().to_owned(),
        (None, Some(refusal)) => format!("{e}: {refusal}"),
        (None, None) => e.to_string(),
    };
    Error::new(kind, format!("PostgreSQL at {target}: {doing}: {reason}")).with_source(e)
}

fn kind_of(code: &SqlState) -> ErrorKind {
    let class = &code.code()[..2];
    if *code == SqlState::UNIQUE_VIOLATION {
        ErrorKind::AlreadyExists
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        ErrorKind::PermissionDenied
    } else if *code == SqlState::QUERY_CANCELED {
        // statement_timeout: the operation's deadline.
        ErrorKind::DeadlineExceeded
    } else if *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
    {
        // lock_timeout (another writer holds the row), or our own transaction cut off.
        ErrorKind::Transient
    } else {
        match class {
            // Connection exceptions, insufficient resources, operator intervention (a server
            // shutting down), transaction rollbacks (serialization failures, deadlocks).
            "08" | "53" | "57" | "40" => ErrorKind::Transient,
            // Everything else is a setup to fix: credentials, a missing table, a bad schema.
            _ => ErrorKind::Configuration,
        }
    }
}

/// The cmek error for a connection the pool could not give within its timeouts.
pub(super) fn pool_error(e: deadpool_postgres::PoolError, target: &str) -> Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => db_error(e, "connecting", target),
        PoolError::Timeout(_) => Error::transient(format!(
            "PostgreSQL at {target}: no connection within the timeout"
        )),
        other => Error::configuration(format!("PostgreSQL at {target}: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_states_are_transient_and_setup_faults_are_not() {
        assert_eq!(kind_of(&SqlState::LOCK_NOT_AVAILABLE), ErrorKind::Transient);
        assert_eq!(
            kind_of(&SqlState::QUERY_CANCELED),
            ErrorKind::DeadlineExceeded
        );
        assert_eq!(
            kind_of(&SqlState::T_R_SERIALIZATION_FAILURE),
            ErrorKind::Transient
        );
        assert_eq!(kind_of(&SqlState::ADMIN_SHUTDOWN), ErrorKind::Transient);
        assert_eq!(kind_of(&SqlState::CONNECTION_FAILURE), ErrorKind::Transient);
        assert_eq!(
            kind_of(&SqlState::TOO_MANY_CONNECTIONS),
            ErrorKind::Transient
        );
        assert_eq!(
            kind_of(&SqlState::UNIQUE_VIOLATION),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            kind_of(&SqlState::INVALID_PASSWORD),
            ErrorKind::Configuration
        );
        assert_eq!(
            kind_of(&SqlState::UNDEFINED_TABLE),
            ErrorKind::Configuration
        );
        assert_eq!(
            kind_of(&SqlState::INSUFFICIENT_PRIVILEGE),
            ErrorKind::PermissionDenied
        );
    }
}
