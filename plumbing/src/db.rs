//! PostgreSQL: connection pool, dedicated sessions, database creation, migrations,
//! and the transient/permanent classification of errors.

use std::{str::FromStr, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::{
    AsyncMessage, Client, Config, NoTls, Notification, Socket, config::SslMode, error::SqlState,
    tls::MakeTlsConnect,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls;

pub use migrations::{Database, OUTBOX_CHANNEL};

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

/// Sizes and timeouts of a connection pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: usize,
    /// Longest wait for a free connection before giving up (a bounded wait is what
    /// turns a database outage into a quick 503 instead of a hang).
    pub wait_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 16,
            wait_timeout: Duration::from_secs(2),
        }
    }
}

/// A parsed database URL: the driver's settings and, when the URL asks for TLS
/// (`sslmode=require|verify-ca|verify-full`, see [`crate::tls`]), the rustls
/// connector. The one way to reach PostgreSQL: pools ([`pool`]) and dedicated
/// sessions ([`connect`], [`listen`]) are opened from it and nothing else, so
/// every connection honours the URL's TLS settings. It deliberately does not
/// hand out the driver's configuration, whose own `connect` would ignore them.
#[derive(Clone)]
pub struct DbConfig {
    config: Config,
    tls: Option<MakeRustlsConnect>,
}

impl DbConfig {
    /// Whether connections are encrypted.
    #[must_use]
    pub fn uses_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The database name (`postgres` when none is given, as libpq does).
    #[must_use]
    pub fn database(&self) -> String {
        database_name(&self.config)
    }

    /// `host:port`, for messages (never the password).
    #[must_use]
    pub fn host(&self) -> String {
        describe_host(&self.config)
    }

    /// How long establishing one connection may take.
    #[must_use]
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.config.get_connect_timeout().copied()
    }

    /// The same server, user and TLS settings for another database.
    #[must_use]
    pub fn for_database(&self, name: &str) -> Self {
        let mut other = self.clone();
        other.config.dbname(name);
        other
    }

    /// Names the sessions opened from now on (`application_name`, shown in
    /// `pg_stat_activity`).
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.config.application_name(name);
        self
    }

    /// The sessions' `application_name`, if any.
    #[must_use]
    pub fn application_name(&self) -> Option<&str> {
        self.config.get_application_name()
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("target", &describe_host(&self.config))
            .field("database", &database_name(&self.config))
            .field("tls", &self.uses_tls())
            .finish_non_exhaustive()
    }
}

/// Parses a `postgres://` URL (or key=value string) into a driver configuration
/// with the pipeline's connect timeout and the TLS connector its `sslmode` and
/// `sslrootcert` ask for (root certificates are loaded now).
///
/// # Errors
/// [`DbError::Url`] when the URL does not parse, [`DbError::Tls`] when its TLS
/// settings cannot be used.
pub fn parse_url(url: &str) -> Result<DbConfig, DbError> {
    let (rest, mode) = tls::split_url(url)?;
    let mut config = Config::from_str(&rest).map_err(|e| DbError::Url(e.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let tls = tls::connector(&mode)?;
    config.ssl_mode(if tls.is_some() {
        SslMode::Require
    } else {
        SslMode::Disable
    });
    Ok(DbConfig { config, tls })
}

/// Database name of a configuration (`postgres` when none is given, as libpq does).
#[must_use]
fn database_name(config: &Config) -> String {
    config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres")
        .to_owned()
}

/// `host:port` of a configuration, for messages (never the password).
#[must_use]
fn describe_host(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// What a dedicated session reports besides the answers to its queries.
#[derive(Debug)]
pub enum SessionEvent {
    /// A `NOTIFY` on a channel the session listens on.
    Notification(Notification),
    /// The session ended: closed by the server, broken, or the client dropped
    /// (no error).
    Closed(Option<tokio_postgres::Error>),
}

/// Opens a dedicated session (not pooled), driving its connection on a task.
///
/// # Errors
/// [`DbError::Connect`] when the server cannot be reached or refuses the login.
pub async fn connect(config: &DbConfig) -> Result<Client, DbError> {
    open(config, |event| {
        if let SessionEvent::Closed(Some(e)) = event {
            tracing::debug!(error = %e, "database session ended");
        }
    })
    .await
}

/// Opens a dedicated session that listens on `channel`; `on_event` hears every
/// notification and, last, the session's end. Dropping the client closes it.
///
/// # Errors
/// [`DbError::Connect`] when the server cannot be reached, refuses the login, or
/// refuses `LISTEN`.
pub async fn listen<F>(config: &DbConfig, channel: &str, on_event: F) -> Result<Client, DbError>
where
    F: FnMut(SessionEvent) + Send + 'static,
{
    let client = open(config, on_event).await?;
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
        .map_err(|source| connect_error(config, source))?;
    Ok(client)
}

async fn open<F>(config: &DbConfig, on_event: F) -> Result<Client, DbError>
where
    F: FnMut(SessionEvent) + Send + 'static,
{
    match &config.tls {
        None => open_with(config, NoTls, on_event).await,
        Some(tls) => open_with(config, tls.clone(), on_event).await,
    }
}

/// Connects through `tls` and drives the connection on a task, handing its
/// notifications and its end to `on_event`.
async fn open_with<T, F>(config: &DbConfig, tls: T, mut on_event: F) -> Result<Client, DbError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    F: FnMut(SessionEvent) + Send + 'static,
{
    let (client, mut connection) = config
        .config
        .connect(tls)
        .await
        .map_err(|source| connect_error(config, source))?;
    tokio::spawn(async move {
        let end = loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => on_event(SessionEvent::Notification(n)),
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    tracing::debug!(notice = %notice.message(), "database notice");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Some(e),
                None => break None,
            }
        };
        on_event(SessionEvent::Closed(end));
    });
    Ok(client)
}

fn connect_error(config: &DbConfig, source: tokio_postgres::Error) -> DbError {
    DbError::Connect {
        database: config.database(),
        host: config.host(),
        source,
    }
}

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

/// Builds a connection pool. Connections are opened lazily, so this succeeds while
/// the database is down; requests then fail fast with [`PoolError::Timeout`] or
/// [`PoolError::Backend`] and succeed again once it is back.
///
/// # Errors
/// [`DbError::Pool`] when the pool cannot be built.
pub fn pool(config: DbConfig, options: PoolOptions) -> Result<Pool, DbError> {
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match config.tls {
        None => Manager::from_config(config.config, NoTls, manager_config),
        Some(tls) => Manager::from_config(config.config, tls, manager_config),
    };
    Pool::builder(manager)
        .max_size(options.max_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(options.wait_timeout))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
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
    let mut config = parse_url(&service.database_url)?;
    if config.application_name().is_none() {
        config = config.named(session_name);
    }
    if service.migrate_on_start {
        migrate_when_reachable(&config, database, shutdown).await?;
    }
    let pool = pool(config.clone(), service.pool)?;
    Ok((config, pool))
}

/// Takes a session-level advisory lock if it is free (for work that one replica at
/// a time should do, such as a scheduled purge). Pair with [`unlock`] on the same
/// session.
///
/// # Errors
/// The driver's error.
pub async fn try_lock(client: &Client, key: i64) -> Result<bool, tokio_postgres::Error> {
    client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .try_get(0)
}

/// Releases a lock taken by [`try_lock`]; a broken session releases it anyway.
pub async fn unlock(client: &Client, key: i64) {
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
    {
        tracing::debug!(error = %e, "advisory unlock failed; the session's end releases it");
    }
}

/// Runs `job` every `interval` until `shutdown`, on one replica at a time (the one
/// that gets the advisory lock `key`); logs what it did as `what`. For retention
/// purges.
pub async fn every_as_leader<F, Fut>(
    pool: Pool,
    key: i64,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    what: &'static str,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, what, "scheduled job skipped: no database connection");
                continue;
            }
        };
        match try_lock(&client, key).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, what, "scheduled job skipped");
                continue;
            }
        }
        match job().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, what, "scheduled job done"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), what, "scheduled job failed"),
        }
        unlock(&client, key).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("orders"), "\"orders\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn url_description_has_no_password() {
        let c = parse_url("postgres://app:s3cret@db.internal:6543/orders").unwrap();
        assert_eq!(c.host(), "db.internal:6543");
        assert_eq!(c.database(), "orders");
        assert_eq!(c.connect_timeout(), Some(CONNECT_TIMEOUT));
        let err = parse_url("postgres://x:y@h:notaport/db").unwrap_err();
        assert!(!err.to_string().contains("y@"), "{err}");
    }
}
