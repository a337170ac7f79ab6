//! Readiness: the API is ready when the orders database answers.

use axum::{extract::State, response::Response};

use super::AppState;

/// `GET /ready`: 200 when the database answers, 503 otherwise.
pub async fn ready(State(state): State<AppState>) -> Response {
    match plumbing::db::ping(&state.pool).await {
        Ok(()) => plumbing::http::readiness(&[]),
        Err(e) => plumbing::http::readiness(&[format!("database: {e}")]),
    }
}
