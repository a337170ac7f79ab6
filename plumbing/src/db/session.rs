//! Connecting: dedicated sessions (plain, or listening for notifications) and
//! the connection pool, each through the URL's TLS settings.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, Socket, tls::MakeTlsConnect};

use super::{CONNECT_TIMEOUT, DbConfig, DbError, quote_ident};

/// Sizes and timeouts of a connection pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: usize,
    /// Longest wait for a free connection before giving up (a bounded wait is what
    /// turns a database outage into a quick 503 instead of a hang).
    pub wait_timeout: Duration,
    /// What the server allows each of the pool's sessions.
    pub limits: SessionLimits,
}

impl PoolOptions {
    /// The defaults: 16 connections, a 2 s wait, [`SessionLimits::DEFAULT`].
    pub const DEFAULT: Self = Self {
        max_size: 16,
        wait_timeout: Duration::from_secs(2),
        limits: SessionLimits::DEFAULT,
    };
}

/// Limits the server enforces on a session, sent as startup parameters (the
/// connection's `options`), so that they hold from its first statement and
/// whatever the code runs. Zero turns a limit off, as in PostgreSQL.
///
/// A statement the server cancels fails with SQLSTATE 57014 (`query_canceled`),
/// which [`super::is_transient`] counts as worth retrying: the API answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// `statement_timeout`: the server cancels a statement that runs (or waits
    /// for a lock) longer, so that no query outlives the request that sent it.
    pub statement_timeout: Duration,
    /// `idle_in_transaction_session_timeout`: the server ends a session that
    /// stays idle inside a transaction longer, freeing its locks and snapshot.
    pub idle_in_transaction_timeout: Duration,
}

impl SessionLimits {
    /// The defaults: statements of at most 30 s, 30 s idle in a transaction.
    pub const DEFAULT: Self = Self {
        statement_timeout: Duration::from_secs(30),
        idle_in_transaction_timeout: Duration::from_secs(30),
    };

    /// No limits (migrations, which may rewrite large tables).
    pub const NONE: Self = Self {
        statement_timeout: Duration::ZERO,
        idle_in_transaction_timeout: Duration::ZERO,
    };

    /// The `options` startup parameter that sets them: `-c name=<ms>` each, the
    /// server's unit for both. Longer than the server's maximum (about 24 days)
    /// is sent as that maximum.
    #[must_use]
    pub fn startup_options(&self) -> String {
        let ms = |d: Duration| d.as_millis().min(i32::MAX as u128);
        format!(
            "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
            ms(self.statement_timeout),
            ms(self.idle_in_transaction_timeout)
        )
    }
}

impl PoolOptions {
    /// The same for an operator's command (a purge, a replay): no statement
    /// timeout, because such a command may scan a large table and the operator
    /// who started it is there to stop it; the idle limit stays.
    #[must_use]
    pub fn for_operator(self) -> Self {
        Self {
            limits: SessionLimits {
                statement_timeout: Duration::ZERO,
                ..self.limits
            },
            ..self
        }
    }
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self::DEFAULT
    }
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

/// Builds a connection pool whose sessions have `options.limits` (see
/// [`DbConfig::limited`]). Connections are opened lazily, so this succeeds while
/// the database is down; requests then fail fast with
/// [`deadpool_postgres::PoolError::Timeout`] or
/// [`deadpool_postgres::PoolError::Backend`] and succeed again once it is back.
///
/// # Errors
/// [`DbError::Pool`] when the pool cannot be built.
pub fn pool(config: DbConfig, options: PoolOptions) -> Result<Pool, DbError> {
    let config = config.limited(options.limits);
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
