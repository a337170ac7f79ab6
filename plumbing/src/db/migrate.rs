//! Start-up: create the database if needed, apply its migrations (waiting while
//! the server is unreachable), build the pool.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;

use migrations::ServiceRole;

use super::{
    Database, DbConfig, DbError, connect, db_message, is_transient, parse_url, quote_ident,
};
use crate::config::{Secret, var};

/// Makes sure the configured database exists, creating it through the `postgres`
/// maintenance database when it does not (the local default setup). When the role
/// may not create databases, the error says how to create it by hand.
///
/// # Errors
/// [`DbError::Connect`] when the server is unreachable, [`DbError::Missing`] when the
/// database is absent and cannot be created.
pub async fn ensure_database(config: &DbConfig) -> Result<(), DbError> {
    let err = match connect(config).await {
        Ok(_) => return Ok(()),
        Err(DbError::Connect { source, .. })
            if source.code() == Some(&SqlState::INVALID_CATALOG_NAME) =>
        {
            source
        }
        Err(other) => return Err(other),
    };
    let database = config.database();
    tracing::info!(database, cause = %db_message(&err), "database does not exist, creating it");
    let maintenance = config.for_database("postgres");
    let client = connect(&maintenance).await.map_err(|e| DbError::Missing {
        database: database.clone(),
        reason: format!("{e}"),
    })?;
    let statement = format!("CREATE DATABASE {}", quote_ident(&database));
    match client.batch_execute(&statement).await {
        Ok(()) => Ok(()),
        // Another process created it at the same moment: depending on timing the
        // server reports either error.
        Err(e)
            if e.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || e.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(())
        }
        Err(e) => Err(DbError::Missing {
            database,
            reason: db_message(&e),
        }),
    }
}

/// Creates the database if needed and applies `database`'s migrations on a
/// dedicated session, then gives the service roles of `logins` LOGIN and their
/// passwords. Returns how many migrations were applied.
///
/// # Errors
/// [`DbError`] when the database is unreachable, a migration fails or a role
/// cannot be changed.
pub async fn migrate(
    config: &DbConfig,
    database: Database,
    logins: &[(ServiceRole, Secret)],
) -> Result<usize, DbError> {
    ensure_database(config).await?;
    let mut client = connect(config).await?;
    // Exposed only here, for the statement that sets them (server-side, never
    // in the statement's text).
    let logins: Vec<(ServiceRole, String)> = logins
        .iter()
        .map(|(role, password)| (*role, password.expose().to_owned()))
        .collect();
    migrations::run(&mut client, database, &logins)
        .await
        .map_err(|source| DbError::Migrate { database, source })
}

/// The service roles of `database` whose password variable is set, with their
/// passwords: `ORDERS_API_DB_PASSWORD` and `OUTBOX_RELAY_DB_PASSWORD` for the
/// orders database, `INVOICES_WORKER_DB_PASSWORD` for the invoices database.
/// What `migrate` and migrate-on-start give LOGIN; a role whose variable is
/// unset is left as it is.
#[must_use]
pub fn logins_from_env(database: Database) -> Vec<(ServiceRole, Secret)> {
    database
        .service_roles()
        .iter()
        .filter_map(|role| role_password(*role).1.map(|p| (*role, p)))
        .collect()
}

/// The variable that holds `role`'s password, and its value if it is set.
#[must_use]
pub fn role_password(role: ServiceRole) -> (&'static str, Option<Secret>) {
    let (variable, password) = match role {
        ServiceRole::OrdersApi => ("ORDERS_API_DB_PASSWORD", var("ORDERS_API_DB_PASSWORD")),
        ServiceRole::OutboxRelay => ("OUTBOX_RELAY_DB_PASSWORD", var("OUTBOX_RELAY_DB_PASSWORD")),
        ServiceRole::InvoicesWorker => (
            "INVOICES_WORKER_DB_PASSWORD",
            var("INVOICES_WORKER_DB_PASSWORD"),
        ),
    };
    (variable, password.map(Secret::new))
}

/// Applies migrations at start-up, waiting (with backoff) while the database is
/// unreachable. Permanent failures (bad credentials, a failing migration) return
/// at once; so does a shutdown signal.
///
/// # Errors
/// [`DbError`] for permanent failures, or the last error if shut down while waiting.
pub async fn migrate_when_reachable(
    config: &DbConfig,
    database: Database,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<usize, DbError> {
    let mut delays = crate::backoff::reconnect_delays();
    let logins = logins_from_env(database);
    loop {
        let err = match migrate(config, database, &logins).await {
            Ok(applied) => return Ok(applied),
            Err(e) => e,
        };
        let retry = match &err {
            DbError::Connect { source, .. } => is_transient(source),
            _ => false,
        };
        if !retry || shutdown.is_cancelled() {
            return Err(err);
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(10));
        tracing::warn!(error = %err, cause = %crate::telemetry::error_chain(&err), retry_in = ?delay, "database not reachable yet");
        tokio::select! {
            () = shutdown.cancelled() => return Err(err),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// A service's database at start-up: parses the URL (naming its sessions
/// `session_name` unless the URL names them), applies the migrations if
/// configured (waiting while the server is unreachable), and builds the pool.
/// The configuration returned, like the pool, opens sessions with the service's
/// [`super::SessionLimits`].
///
/// # Errors
/// [`DbError`] for an invalid URL, a failing migration, or shutdown while waiting.
pub async fn prepare(
    service: &crate::config::ServiceConfig,
    database: Database,
    session_name: &str,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(DbConfig, Pool), DbError> {
    let mut config = parse_url(service.database_url.expose())?;
    if config.application_name().is_none() {
        config = config.named(session_name);
    }
    if service.migrate_on_start {
        migrate_when_reachable(&config, database, shutdown).await?;
    }
    // Migrations (above) run without limits; every session from here on has them,
    // pooled or dedicated (the relay's notification session).
    let config = config.limited(service.pool.limits);
    let pool = super::pool(config.clone(), service.pool)?;
    Ok((config, pool))
}

/// The `migrate` command of each binary: create the database if needed, apply its
/// migrations, give the service roles whose password is set LOGIN (see
/// [`logins_from_env`]), log the result.
///
/// # Errors
/// [`DbError`] when the URL is invalid, the database unreachable or a migration fails.
pub async fn migrate_command(database_url: &str, database: Database) -> Result<(), DbError> {
    let config = parse_url(database_url)?;
    let applied = migrate(&config, database, &logins_from_env(database)).await?;
    tracing::info!(?database, applied, "database is up to date");
    Ok(())
}
