//! Liveness and readiness: the API is ready when the orders database answers.

use axum::{extract::State, response::Response};

use super::AppState;
use crate::store;

/// Liveness: `OK` as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")),
    tag = "operations"
)]
pub async fn health() -> Response {
    plumbing::http::health().await
}

/// Readiness: 200 when the database answers.
#[utoipa::path(
    get,
    path = "/ready",
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready, with the reason", body = String, content_type = "text/plain"),
    ),
    tag = "operations"
)]
pub async fn ready(State(state): State<AppState>) -> Response {
    match store::ping(&state.pool).await {
        Ok(()) => plumbing::http::readiness(&[]),
        Err(e) => plumbing::http::readiness(&[format!("database: {e}")]),
    }
}
