//! The SQL migrations of the pipeline's two databases, embedded in the binaries.
//!
//! Each service applies its own database's set at start-up (or through its
//! `migrate` command). Several copies may start at once, so the run is serialized
//! with a session-level advisory lock: the first applies, the others wait and then
//! find nothing left to do.

use tokio_postgres::Client;

/// `NOTIFY` channel the orders API signals on when it writes outbox rows, and the
/// relay listens on. The payload is empty: a notification is only a hint to look.
pub const OUTBOX_CHANNEL: &str = "outbox_inserted";

mod orders {
    refinery::embed_migrations!("orders");
}

mod invoices {
    refinery::embed_migrations!("invoices");
}

/// Which database a set of migrations belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// The orders database: `orders` and `outbox`, used by the API and the relay.
    Orders,
    /// The invoices database: `invoices` and `processed_messages`, used by the worker.
    Invoices,
}

impl Database {
    /// Advisory lock key that serializes concurrent migration runs (any fixed number
    /// no other code of ours locks; `0x6f757462` is "outb").
    const LOCK_KEY: i64 = 0x6f75_7462;

    fn runner(self) -> refinery::Runner {
        match self {
            Database::Orders => orders::migrations::runner(),
            Database::Invoices => invoices::migrations::runner(),
        }
    }
}

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Taking or releasing the advisory lock failed.
    #[error("could not take the migration lock")]
    Lock(#[source] tokio_postgres::Error),
    /// A migration failed (or the applied ones diverge from the embedded ones).
    #[error("applying migrations failed")]
    Apply(#[source] refinery::Error),
}

/// Applies every pending migration of `database` over `client`, under an advisory
/// lock. Returns how many migrations were applied by this call.
///
/// `client` must be a dedicated session (not a pooled connection shared with other
/// work) because the lock belongs to the session.
///
/// # Errors
/// [`MigrateError`] when the lock cannot be taken or a migration fails.
pub async fn run(client: &mut Client, database: Database) -> Result<usize, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&Database::LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?;
    let report = database.runner().run_async(client).await;
    // Release even when the run failed; if the session is broken the lock goes with it.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&Database::LOCK_KEY])
        .await;
    let report = report.map_err(MigrateError::Apply)?;
    unlock.map_err(MigrateError::Lock)?;
    let applied = report.applied_migrations();
    for m in applied {
        tracing::info!(database = ?database, version = m.version(), name = m.name(), "migration applied");
    }
    Ok(applied.len())
}
