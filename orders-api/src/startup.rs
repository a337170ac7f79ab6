//! Building and running the API: migrate, pool, bind, serve until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    routes::{self, AppState, Limits},
};

/// A bound, ready-to-run API.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    pool: deadpool_postgres::Pool,
    key_ttl: std::time::Duration,
}

/// Advisory lock key that lets one API replica at a time purge expired keys.
const PURGE_LOCK_KEY: i64 = 0x6964_656d; // "idem"

impl Application {
    /// The port the API listens on.
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn port(&self) -> std::io::Result<u16> {
        Ok(self.listener.local_addr()?.port())
    }
}

impl plumbing::cli::Service for Application {
    type Config = Config;
    const NAME: &'static str = "orders-api";
    const DATABASE: plumbing::db::Database = plumbing::db::Database::Orders;

    fn load_config() -> Result<Config, plumbing::config::ConfigError> {
        Config::from_env()
    }

    fn service_config(config: &Config) -> &plumbing::config::ServiceConfig {
        &config.service
    }

    /// Applies migrations (if configured), builds the pool and binds the port.
    ///
    /// # Errors
    /// Invalid configuration, an unreachable database at migration time (after
    /// `shutdown`), a failing migration, or a port that cannot be bound.
    async fn build(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        if !contracts::event::is_currency_code(&config.default_currency) {
            anyhow::bail!(
                "DEFAULT_CURRENCY={:?} is not a three-letter ISO 4217 code",
                config.default_currency
            );
        }
        let (_, pool) =
            plumbing::db::prepare(&config.service, Self::DATABASE, Self::NAME, shutdown)
                .await
                .context("cannot prepare the orders database")?;
        let state = AppState {
            pool: pool.clone(),
            default_currency: Arc::from(config.default_currency.as_str()),
            metrics: Arc::new(crate::metrics::ApiMetrics::new()),
            unsafe_reply_before_commit: config.unsafe_reply_before_commit,
        };
        if config.unsafe_reply_before_commit {
            tracing::error!(
                "ORDERS_UNSAFE_REPLY_BEFORE_COMMIT is set: orders are answered 201 before they are \
                 committed and CAN BE LOST; this mode exists for the fault suite only"
            );
        }
        let router = routes::router(
            state,
            Limits {
                max_body_bytes: config.max_body_bytes,
                request_timeout: config.request_timeout,
            },
        );
        let listener = plumbing::http::bind(&config.service.host, config.service.port).await?;
        Ok(Self {
            listener,
            router,
            pool,
            key_ttl: config.idempotency_key_ttl,
        })
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests.
    ///
    /// # Errors
    /// The server's I/O error.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (pool, ttl) = (self.pool.clone(), self.key_ttl);
        tokio::spawn(plumbing::db::every_as_leader(
            self.pool,
            PURGE_LOCK_KEY,
            std::time::Duration::from_secs(3_600),
            shutdown.clone(),
            "purge of expired idempotency keys",
            move || {
                let pool = pool.clone();
                async move { Ok(crate::store::purge_keys(&pool, ttl).await?) }
            },
        ));
        plumbing::http::serve(self.listener, self.router, shutdown)
            .await
            .context("HTTP server failed")
    }
}
