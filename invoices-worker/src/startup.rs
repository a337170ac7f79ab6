//! Building and running the worker with its HTTP endpoint.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{config::Config, metrics::WorkerMetrics, store, worker::Worker};

/// Advisory lock key that lets one worker at a time purge old dedupe records.
const PURGE_LOCK_KEY: i64 = 0x696e_7670; // "invp"

/// A worker ready to run, with its HTTP endpoint bound.
pub struct Application {
    worker: Worker,
    listener: TcpListener,
    router: Router,
    pool: Pool,
    metrics: Arc<WorkerMetrics>,
    dedupe_retention: Duration,
    purge_interval: Duration,
}

#[derive(Clone)]
struct HttpState {
    pool: Pool,
    common: Arc<plumbing::metrics::CommonMetrics>,
    metrics: Arc<WorkerMetrics>,
}

impl Application {
    /// The port of the HTTP endpoint.
    ///
    /// # Errors
    /// If the socket has no local address.
    pub fn port(&self) -> std::io::Result<u16> {
        Ok(self.listener.local_addr()?.port())
    }
}

/// `GET /ready`: 200 when the database answers and the consumer is running.
async fn ready(State(state): State<HttpState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = plumbing::db::ping(&state.pool).await {
        problems.push(format!("database: {e}"));
    }
    if state.metrics.broker_connected.get() != 1 {
        problems.push("broker: not consuming".to_owned());
    }
    plumbing::http::readiness(&problems)
}

/// `GET /metrics`.
async fn metrics(State(state): State<HttpState>) -> Response {
    state.common.observe_pool(&state.pool);
    plumbing::metrics::render(&[state.metrics.registry(), state.common.registry()])
}

/// `GET /invoices/{order_id}`: the order's invoice, 404 while there is none yet.
async fn invoice(State(state): State<HttpState>, Path(order_id): Path<String>) -> Response {
    let Ok(order_id) = uuid::Uuid::try_parse(&order_id) else {
        return plumbing::http::problem(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "order id must be a UUID",
        );
    };
    match store::find_invoice(&state.pool, order_id).await {
        Ok(Some(invoice)) => Json(invoice).into_response(),
        Ok(None) => plumbing::http::problem(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("order {order_id} has no invoice (yet)"),
        ),
        Err(e) => {
            tracing::warn!(error = %e, cause = %plumbing::telemetry::error_chain(&e), "invoice lookup failed");
            plumbing::http::problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "service temporarily unavailable",
            )
        }
    }
}

impl plumbing::cli::Service for Application {
    type Config = Config;
    const NAME: &'static str = "invoices-worker";
    const DATABASE: plumbing::db::Database = plumbing::db::Database::Invoices;

    fn load_config() -> Result<Config, plumbing::config::ConfigError> {
        Config::from_env()
    }

    fn service_config(config: &Config) -> &plumbing::config::ServiceConfig {
        &config.service
    }

    /// Migrates the invoices database (if configured), builds the pool and binds the
    /// HTTP port. The broker is connected, with backoff, by the loop.
    ///
    /// # Errors
    /// Invalid configuration, a failing migration, or a port that cannot be bound.
    async fn build(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let (_, pool) =
            plumbing::db::prepare(&config.service, Self::DATABASE, Self::NAME, shutdown)
                .await
                .context("cannot prepare the invoices database")?;
        let worker = Worker::new(
            pool.clone(),
            config.broker.url.clone(),
            config.broker.topology(),
            config.worker,
        );
        let metrics = worker.metrics();
        let common = Arc::new(plumbing::metrics::CommonMetrics::new());
        let router = Router::new()
            .route("/health", get(plumbing::http::health))
            .route("/ready", get(ready))
            .route("/metrics", get(self::metrics))
            .route("/invoices/{order_id}", get(invoice))
            .with_state(HttpState {
                pool: pool.clone(),
                common: common.clone(),
                metrics: metrics.clone(),
            });
        let router = plumbing::metrics::instrument(router, common);
        let listener = plumbing::http::bind(&config.service.host, config.service.port).await?;
        Ok(Self {
            worker,
            listener,
            router,
            pool,
            metrics,
            dedupe_retention: config.dedupe_retention,
            purge_interval: config.purge_interval,
        })
    }

    /// Runs the worker, the dedupe purge and the HTTP endpoint until `shutdown`;
    /// the worker finishes the deliveries in hand before this returns.
    ///
    /// # Errors
    /// The HTTP server's I/O error.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let (pool, metrics, retention) = (self.pool.clone(), self.metrics, self.dedupe_retention);
        tokio::spawn(plumbing::db::every_as_leader(
            self.pool,
            PURGE_LOCK_KEY,
            self.purge_interval,
            shutdown.clone(),
            "purge of old dedupe records",
            move || {
                let (pool, metrics) = (pool.clone(), metrics.clone());
                async move {
                    let purged = store::purge_processed(&pool, retention, 1_000).await?;
                    metrics.purged.inc_by(purged);
                    Ok(purged)
                }
            },
        ));
        let worker = tokio::spawn(self.worker.run(shutdown.clone()));
        plumbing::http::serve_alongside(self.listener, self.router, shutdown, worker).await
    }
}
