//! PostgreSQL: the parsed URL ([`DbConfig`]), connection pool and dedicated
//! sessions, database creation and migrations, leader-only scheduled work, what
//! the services' stores share (their error, ping, batched purge), and the
//! transient/permanent classification of errors.

mod leader;
mod migrate;
mod session;
mod store;
mod url;

use std::time::Duration;

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

use crate::tls;

pub use leader::{Purge, every_as_leader, try_lock, unlock};
pub use migrate::{
    ensure_database, logins_from_env, migrate, migrate_command, migrate_when_reachable, prepare,
    role_password,
};
pub use migrations::{Database, OUTBOX_CHANNEL, ServiceRole};
pub use session::{PoolOptions, SessionEvent, SessionLimits, connect, listen, pool};
pub use store::{StoreError, ping, purge_in_batches};
pub use url::{DbConfig, check_url, parse_url};

/// How long establishing one connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    Url(String),
    /// The URL's TLS settings cannot be used.
    #[error("DATABASE_URL's TLS settings: {0}")]
    Tls(#[from] tls::TlsError),
    /// Connecting failed.
    #[error("cannot connect to database {database:?} on {host}")]
    Connect {
        /// The database name.
        database: String,
        /// Host and port, without credentials.
        host: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The database does not exist and could not be created.
    #[error(
        "database {database:?} does not exist and could not be created ({reason}); create it with: createdb -h <host> -U <user> {database}"
    )]
    Missing {
        /// The database name.
        database: String,
        /// Why creating it failed.
        reason: String,
    },
    /// Building the pool failed.
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    /// Migrations failed.
    #[error("migrating the {database:?} database failed")]
    Migrate {
        /// Which database.
        database: Database,
        /// The cause.
        #[source]
        source: migrations::MigrateError,
    },
}

/// The server's message for a database error, or the driver's description.
#[must_use]
pub fn db_message(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map_or_else(|| err.to_string(), |d| d.message().to_owned())
}

/// Quotes an SQL identifier (for the few statements that take no parameters).
#[must_use]
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A client span for one database operation (OpenTelemetry database semantic
/// conventions: named `{operation} {collection}`); mark failures with
/// [`failed_span`].
#[must_use]
pub fn client_span(operation: &'static str, collection: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db.query",
        otel.name = %format!("{operation} {collection}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        db.system.name = "postgresql",
        db.operation.name = operation,
        db.collection.name = collection,
        error.type = tracing::field::Empty,
    )
}

/// Marks a [`client_span`] as failed, with a short error type (a SQLSTATE, or
/// what the caller knows).
pub fn failed_span(span: &tracing::Span, error_type: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}

/// Whether a driver error is worth retrying: the connection broke, the server is
/// shutting down or overloaded, or the transaction lost a serialization or deadlock
/// race. Constraint violations, syntax and type errors are permanent.
#[must_use]
pub fn is_transient(err: &tokio_postgres::Error) -> bool {
    let Some(db) = err.as_db_error() else {
        // No SQLSTATE: I/O error, closed connection or timeout.
        return true;
    };
    let code = db.code().code();
    code.starts_with("08") // connection exception
        || code.starts_with("53") // insufficient resources
        || code.starts_with("57P") // operator intervention (shutdown, cannot connect now)
        || code == SqlState::T_R_SERIALIZATION_FAILURE.code()
        || code == SqlState::T_R_DEADLOCK_DETECTED.code()
        || code == SqlState::LOCK_NOT_AVAILABLE.code()
        || code == SqlState::QUERY_CANCELED.code()
}

/// Whether a pool error is worth retrying (see [`is_transient`]).
#[must_use]
pub fn is_transient_pool(err: &PoolError) -> bool {
    match err {
        PoolError::Timeout(_) => true,
        PoolError::Backend(e) => is_transient(e),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
