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

impl Application {
    /// Migrates the invoices database (if configured), builds the pool and binds the
    /// HTTP port. The broker is connected, with backoff, by the loop.
    ///
    /// # Errors
    /// Invalid configuration, a failing migration, or a port that cannot be bound.
    pub async fn build(config: &Config, shutdown: &CancellationToken) -> anyhow::Result<Self> {
        let (_, pool) = plumbing::db::prepare(
            &config.database_url,
            plumbing::db::Database::Invoices,
            config.migrate_on_start,
            config.pool,
            shutdown,
        )
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
        let listener = plumbing::http::bind(&config.host, config.port).await?;
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
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let worker = tokio::spawn(self.worker.run(shutdown.clone()));
        plumbing::http::serve_alongside(self.listener, self.router, shutdown, worker).await
    }
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
