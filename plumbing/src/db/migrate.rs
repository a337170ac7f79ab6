//! Start-up: create the database if needed, apply its migrations (waiting while
//! the server is unreachable), build the pool.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;

use super::{
    Database, DbConfig, DbError, connect, db_message, is_transient, parse_url, quote_ident,
};

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
/// dedicated session. Returns how many were applied.
///
/// # Errors
/// [`DbError`] when the database is unreachable or a migration fails.
pub async fn migrate(config: &DbConfig, database: Database) -> Result<usize, DbError> {
    ensure_database(config).await?;
    let mut client = connect(config).await?;
    migrations::run(&mut client, database)
        .await
        .map_err(|source| DbError::Migrate { database, source })
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
    loop {
        let err = match migrate(config, database).await {
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
    let pool = super::pool(config.clone(), service.pool)?;
    Ok((config, pool))
}

/// The `migrate` command of each binary: create the database if needed, apply its
/// migrations, log the result.
///
/// # Errors
/// [`DbError`] when the URL is invalid, the database unreachable or a migration fails.
pub async fn migrate_command(database_url: &str, database: Database) -> Result<(), DbError> {
    let config = parse_url(database_url)?;
    let applied = migrate(&config, database).await?;
    tracing::info!(?database, applied, "database is up to date");
    Ok(())
}
