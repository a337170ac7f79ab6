//! Building and running the worker with its HTTP endpoint.

use std::sync::Arc;

use anyhow::Context as _;
use axum::{Router, extract::State, response::Response, routing::get};
use deadpool_postgres::Pool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    store,
    worker::{Worker, WorkerStats},
};

/// A worker ready to run, with its HTTP endpoint bound.
pub struct Application {
    worker: Worker,
    listener: TcpListener,
    router: Router,
}

#[derive(Clone)]
struct HttpState {
    pool: Pool,
    stats: Arc<WorkerStats>,
}

/// `GET /ready`: 200 when the database answers and the consumer is running.
async fn ready(State(state): State<HttpState>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = store::ping(&state.pool).await {
        problems.push(format!("database: {e}"));
    }
    if !state.stats.broker_connected() {
        problems.push("broker: not consuming".to_owned());
    }
    plumbing::http::readiness(&problems)
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
        let (_, pool) = plumbing::db::prepare(&config.service, Self::DATABASE, shutdown)
            .await
            .context("cannot prepare the invoices database")?;
        let worker = Worker::new(
            pool.clone(),
            config.broker.url.clone(),
            config.broker.topology(),
            config.prefetch,
            config.drain_timeout,
        );
        let router = Router::new()
            .route("/health", get(plumbing::http::health))
            .route("/ready", get(ready))
            .with_state(HttpState {
                pool,
                stats: worker.stats(),
            });
        let listener = plumbing::http::bind(&config.service.host, config.service.port).await?;
        Ok(Self {
            worker,
            listener,
            router,
        })
    }

    /// Runs the worker and the HTTP endpoint until `shutdown`; the worker finishes
    /// the deliveries in hand before this returns.
    ///
    /// # Errors
    /// The HTTP server's I/O error.
    async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let worker = tokio::spawn(self.worker.run(shutdown.clone()));
        plumbing::http::serve_alongside(self.listener, self.router, shutdown, worker).await
    }
}
