//! The SQL migrations of the pipeline's two databases, embedded in the binaries.
//!
//! Each service applies its own database's set at start-up (or through its
//! `migrate` command). Several copies may start at once, so the run is serialized
//! with a session-level advisory lock: the first applies, the others wait and then
//! find nothing left to do.
//!
//! The migrations also create each service's NOLOGIN role and grant it exactly
//! what the service needs ([`ServiceRole`]); the schema stays owned by whoever
//! runs them. [`enable_login`] lets a role log in.

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
    /// The database's usual name (`orders`, `invoices`), for messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Database::Orders => "orders",
            Database::Invoices => "invoices",
        }
    }

    /// The roles of the services that use this database.
    #[must_use]
    pub fn service_roles(self) -> &'static [ServiceRole] {
        match self {
            Database::Orders => &[ServiceRole::OrdersApi, ServiceRole::OutboxRelay],
            Database::Invoices => &[ServiceRole::InvoicesWorker],
        }
    }

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

/// A service's own database role, created NOLOGIN by the migrations with only
/// the grants that service needs (the migrations say which and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceRole {
    /// `orders_api`: writes orders with their events; cannot change or delete
    /// outbox rows.
    OrdersApi,
    /// `outbox_relay`: claims, marks, purges and replays outbox rows; nothing
    /// on orders.
    OutboxRelay,
    /// `invoices_worker`: records handled messages and inserts invoices.
    InvoicesWorker,
}

impl ServiceRole {
    /// The role's name in PostgreSQL.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ServiceRole::OrdersApi => "orders_api",
            ServiceRole::OutboxRelay => "outbox_relay",
            ServiceRole::InvoicesWorker => "invoices_worker",
        }
    }

    /// The database it works on.
    #[must_use]
    pub fn database(self) -> Database {
        match self {
            ServiceRole::OrdersApi | ServiceRole::OutboxRelay => Database::Orders,
            ServiceRole::InvoicesWorker => Database::Invoices,
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
    /// A service role could not be given LOGIN and its password.
    #[error("cannot let role {role} log in")]
    Login {
        /// The role.
        role: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Applies every pending migration of `database` over `client`, then gives each
/// role of `logins` LOGIN and its password ([`enable_login`]), all under an
/// advisory lock. Returns how many migrations were applied by this call.
///
/// `client` must be a dedicated session (not a pooled connection shared with other
/// work) because the lock belongs to the session.
///
/// # Errors
/// [`MigrateError`] when the lock cannot be taken or a migration fails.
pub async fn run(
    client: &mut Client,
    database: Database,
    logins: &[(ServiceRole, String)],
) -> Result<usize, MigrateError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&Database::LOCK_KEY])
        .await
        .map_err(MigrateError::Lock)?;
    let report = match database.runner().run_async(client).await {
        Ok(report) => {
            let mut enabled = Ok(());
            for (role, password) in logins {
                enabled = enable_login(client, *role, password).await;
                if enabled.is_err() {
                    break;
                }
                tracing::info!(role = role.name(), "role may log in with its password");
            }
            enabled.map(|()| report)
        }
        Err(e) => Err(MigrateError::Apply(e)),
    };
    // Release even when the run failed; if the session is broken the lock goes with it.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&Database::LOCK_KEY])
        .await;
    let report = report?;
    unlock.map_err(MigrateError::Lock)?;
    let applied = report.applied_migrations();
    for m in applied {
        tracing::info!(database = ?database, version = m.version(), name = m.name(), "migration applied");
    }
    Ok(applied.len())
}

/// Applies the migrations of `database` up to and including `version`, and no
/// further: for tests that start from an earlier schema with data in it, as an
/// upgrade finds it. Returns how many were applied.
///
/// # Errors
/// [`MigrateError::Apply`] when a migration fails.
pub async fn run_until(
    client: &mut Client,
    database: Database,
    version: i32,
) -> Result<usize, MigrateError> {
    let report = database
        .runner()
        .set_target(refinery::Target::Version(version))
        .run_async(client)
        .await
        .map_err(MigrateError::Apply)?;
    Ok(report.applied_migrations().len())
}

/// Gives `role` LOGIN with `password`. The statement is built by the server
/// (`format` with `%I` and `%L`), never by concatenating text here, and run
/// inside a `DO` block, whose statements the server's `log_statement` does not
/// log: the password is sent only as a parameter. Run it where concurrent runs
/// on the same role are serialized (the migration lock), since the server
/// refuses concurrent changes of one role.
///
/// # Errors
/// [`MigrateError::Login`] when the server refuses (e.g. the migrating role may
/// not alter roles).
pub async fn enable_login(
    client: &mut Client,
    role: ServiceRole,
    password: &str,
) -> Result<(), MigrateError> {
    let error = |source| MigrateError::Login {
        role: role.name(),
        source,
    };
    let tx = client.transaction().await.map_err(error)?;
    // Local to the transaction: the values are gone once it ends.
    tx.execute(
        "SELECT set_config('migrations.login_role', $1, true), \
                set_config('migrations.login_password', $2, true)",
        &[&role.name(), &password],
    )
    .await
    .map_err(error)?;
    tx.batch_execute(
        "DO $$ BEGIN EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', \
             current_setting('migrations.login_role'), \
             current_setting('migrations.login_password')); END $$",
    )
    .await
    .map_err(error)?;
    tx.commit().await.map_err(error)
}
