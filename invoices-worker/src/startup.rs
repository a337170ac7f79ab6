//! The worker as a service: what it adds to the shape every service has (see
//! [`plumbing::service`]).

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use deadpool_postgres::Pool;
use plumbing::{
    db::{Database, DbConfig, Purge},
    endpoints::Vitals,
    service::{About, Service},
};
use tokio_util::sync::CancellationToken;

use crate::{config::Config, store, worker::Worker};

/// The worker, assembled over the invoices database.
pub struct Application {
    worker: Worker,
    pool: Pool,
    dedupe_retention: Duration,
    purge_interval: Duration,
}

/// `GET /invoices/{order_id}`: the order's invoice, 404 while there is none yet.
async fn invoice(State(pool): State<Pool>, Path(order_id): Path<String>) -> Response {
    let Ok(order_id) = uuid::Uuid::try_parse(&order_id) else {
        return plumbing::http::problem(
            StatusCode::BAD_REQUEST,
            "invalid_id",
            "order id must be a UUID",
        );
    };
    match store::find_invoice(&pool, order_id).await {
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

impl Service for Application {
    type Config = Config;
    const ABOUT: About = plumbing::about!(Database::Invoices);

    /// The broker is connected, with backoff, by the loop.
    fn assemble(config: &Config, _db: DbConfig, pool: Pool) -> anyhow::Result<Self> {
        let topology = config.broker.topology();
        let worker = Worker::new(
            pool.clone(),
            config.broker.url.expose().to_owned(),
            topology,
            config.worker,
        );
        Ok(Self {
            worker,
            pool,
            dedupe_retention: config.dedupe_retention,
            purge_interval: config.purge_interval,
        })
    }

    fn vitals(&self) -> Arc<dyn Vitals> {
        self.worker.metrics()
    }

    /// Adds `GET /invoices/{order_id}`.
    fn router(&self, endpoints: Router) -> Router {
        let invoices = Router::new().route("/invoices/{order_id}", get(invoice));
        endpoints.merge(invoices.with_state(self.pool.clone()))
    }

    /// Dedupe records past `DEDUPE_RETENTION`.
    fn purge(&self) -> Option<Purge> {
        // The advisory lock that lets one worker at a time purge old dedupe records.
        const PURGE_LOCK_KEY: i64 = 0x696e_7670; // "invp"
        let retention = self.dedupe_retention;
        let purge =
            move |pool: Pool| async move { store::purge_processed(&pool, retention, 1_000).await };
        let what = "purge of old dedupe records";
        let purge = Purge::new(what, PURGE_LOCK_KEY, self.purge_interval, purge);
        Some(purge.counted(self.worker.metrics().purged.clone()))
    }

    /// The worker finishes the deliveries in hand before this returns.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = ()> + Send {
        self.worker.run(shutdown)
    }
}
