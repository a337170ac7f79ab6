//! Building and running the relay with its health endpoint.

use std::sync::Arc;

use anyhow::Context as _;
use axum::{Router, extract::State, response::Response, routing::get};
use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, metrics::RelayMetrics, relay::Relay, store};

/// A relay ready to run, with its health endpoint bound.
pub struct Application {
    relay: Relay,
    listener: TcpListener,
    router: Router,
    pool: Pool,
    settings: crate::config::RelaySettings,
}

/// Advisory lock key that lets one relay at a time run the scheduled purge.
const PURGE_LOCK_KEY: i64 = 0x6f75_7470; // "outp"

#[derive(Clone)]
struct HealthState {
    pool: Pool,
    common: Arc<plumbing::metrics::CommonMetrics>,
    metrics: Arc<RelayMetrics>,
}

impl Application {
    /// The port of the health endpoint.
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn port(&self) -> std::io::Result<u16> {
        Ok(self.listener.local_addr()?.port())
    }
}

/// `GET /ready`: 200 when the database answers and the broker channel is up.
async fn ready(State(state): State<HealthState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = plumbing::db::ping(&state.pool).await {
        problems.push(format!("database: {e}"));
    }
    if state.metrics.broker_connected.get() != 1 {
        problems.push("broker: not connected".to_owned());
    }
    plumbing::http::readiness(&problems)
}

/// `GET /metrics`: counters of this relay plus the state of the whole outbox.
async fn metrics(State(state): State<HealthState>) -> Response {
    match store::backlog_stats(&state.pool).await {
        Ok(stats) => state.metrics.observe_backlog(&stats),
        Err(e) => tracing::warn!(error = %e, "cannot read outbox statistics for /metrics"),
    }
    state.common.observe_pool(&state.pool);
    plumbing::metrics::render(&[state.metrics.registry(), state.common.registry()])
}

impl plumbing::cli::Service for Application {
    type Config = Config;
    const NAME: &'static str = "outbox-relay";
    const DATABASE: plumbing::db::Database = plumbing::db::Database::Orders;

    fn load_config() -> Result<Config, plumbing::config::ConfigError> {
        Config::from_env()
    }

    fn service_config(config: &Config) -> &plumbing::config::ServiceConfig {
        &config.service
    }

    /// Migrates the orders database (if configured), builds the pool and binds the
    /// health port. The broker is connected lazily, with backoff, by the loop.
    ///
    /// # Errors
    /// Invalid configuration, a failing migration, or a port that cannot be bound.
    async fn build(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        // Each relay names its sessions after itself, so that `outbox-relay status`
        // can tell the running relays apart and see which can only poll.
        let session_name =
            crate::listener::session_name(&uuid::Uuid::new_v4().simple().to_string()[..8]);
        tracing::info!(sessions = %session_name, "relay starting");
        let (db, pool) =
            plumbing::db::prepare(&config.service, Self::DATABASE, &session_name, shutdown)
                .await
                .context("cannot prepare the orders database")?;
        let relay = Relay::new(
            pool.clone(),
            db,
            config.broker.url.clone(),
            config.broker.topology(),
            config.relay,
        );
        let common = Arc::new(plumbing::metrics::CommonMetrics::new());
        let router = Router::new()
            .route("/health", get(plumbing::http::health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(HealthState {
                pool: pool.clone(),
                common: common.clone(),
                metrics: relay.metrics(),
            });
        let router = plumbing::metrics::instrument(router, common);
        let listener = plumbing::http::bind(&config.service.host, config.service.port).await?;
        Ok(Self {
            relay,
            listener,
            router,
            pool,
            settings: config.relay,
        })
    }

    /// Runs the relay and the health endpoint until `shutdown`; the relay finishes
    /// its batch (confirms and marks) before this returns.
    ///
    /// # Errors
    /// The health server's I/O error.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Retention runs beside the relay (one relay at a time), so that neither
        // waits for the other.
        let (pool, metrics, settings) = (self.pool.clone(), self.relay.metrics(), self.settings);
        tokio::spawn(plumbing::db::every_as_leader(
            self.pool,
            PURGE_LOCK_KEY,
            settings.purge_interval,
            shutdown.clone(),
            "purge of published outbox rows",
            move || {
                let (pool, metrics) = (pool.clone(), metrics.clone());
                async move {
                    let client = pool.get().await.map_err(store::StoreError::from)?;
                    let purged =
                        store::purge_published(&client, settings.retention, settings.purge_batch)
                            .await?;
                    metrics.purged.inc_by(purged);
                    Ok(purged)
                }
            },
        ));
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        plumbing::http::serve_alongside(self.listener, self.router, shutdown, relay).await
    }
}
