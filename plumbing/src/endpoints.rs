//! The operational endpoints every service serves, written once: `GET /health`
//! (liveness), `GET /ready` (the database answers, and whatever else the service
//! needs) and `GET /metrics` (the service's own metrics, then the HTTP and pool
//! metrics every service has). A service states only what it adds, as [`Vitals`].

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use prometheus_client::registry::Registry;

use crate::export::Exposition;

/// What a service adds to `/ready` and `/metrics`.
pub trait Vitals: Send + Sync + 'static {
    /// The service's own metrics, rendered before the common ones.
    fn registry(&self) -> &Registry;

    /// Why the service is not ready besides its database (e.g. its broker
    /// connection is down); `None` (the default) when nothing else is needed.
    fn unready(&self) -> Option<String> {
        None
    }

    /// Reads what is measured at scrape time (e.g. the state of a table) into
    /// the metrics, before they are rendered. Nothing by default.
    fn refresh<'a>(&'a self, pool: &'a Pool) -> BoxFuture<'a, ()> {
        let _ = pool;
        Box::pin(async {})
    }
}

/// `/health`, `/ready` and `/metrics` of a service: its database answers, its
/// vitals say what else is missing, and its `exposition` is what `/metrics`
/// serves (the service's metrics, then the common ones, which
/// [`crate::metrics::instrument`] fills).
pub fn routes(exposition: Exposition) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(exposition)
}

/// `GET /health`: liveness, `200 text/plain OK` as long as the process serves HTTP.
pub async fn health() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "OK",
    )
        .into_response()
}

/// `GET /ready`: 200 when the database answers and the service's vitals say
/// nothing is missing, 503 with what is not ready otherwise.
async fn ready(State(state): State<Exposition>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = crate::db::ping(state.pool()).await {
        problems.push(format!("database: {e}"));
    }
    problems.extend(state.vitals().unready());
    readiness(&problems)
}

/// `GET /metrics`: the service's metrics, then the HTTP and pool metrics.
async fn metrics(State(state): State<Exposition>) -> Response {
    crate::metrics::response(state.text().await)
}

/// The body of a readiness answer: `200 OK` or `503` with what is not ready.
#[must_use]
pub fn readiness(problems: &[String]) -> Response {
    if problems.is_empty() {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "READY".to_owned(),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("NOT READY: {}", problems.join("; ")),
        )
            .into_response()
    }
}
