//! `POST /orders` and `GET /orders/{id}`.

use axum::{
    Json,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use uuid::Uuid;

use super::{AppState, REQUEST_ID};
use crate::{
    domain::{CreateOrderRequest, NewOrder, order::OrderError},
    error::ApiError,
    extract::JsonBody,
    outbox::{RequestContext, is_valid_traceparent},
    store,
};

/// Creates an order: 201 with the order and its `Location`.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonBody(request): JsonBody<CreateOrderRequest>,
) -> Result<Response, ApiError> {
    let new = NewOrder::parse(&request, &state.default_currency).map_err(|e| {
        let code = match e {
            OrderError::Amount(_) => "invalid_amount",
            OrderError::Currency => "invalid_currency",
        };
        ApiError::Unprocessable {
            code,
            detail: e.to_string(),
        }
    })?;
    let context = request_context(&headers);
    let order = store::create_order(&state.pool, &new, &context).await?;
    let body = order
        .to_body()
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    let location = HeaderValue::from_str(&format!("/orders/{}", order.id))
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// Returns one order, 404 when unknown, 400 when the id is not a UUID.
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::BadRequest {
        code: "invalid_id",
        detail: "order id must be a UUID".into(),
    })?;
    let order = store::find_order(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} does not exist")))?;
    let body = order
        .to_body()
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    Ok(Json(body).into_response())
}

/// The request id and W3C trace context to store with the event.
fn request_context(headers: &HeaderMap) -> RequestContext {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let traceparent = text("traceparent").filter(|t| is_valid_traceparent(t));
    RequestContext {
        request_id: headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect()),
        tracestate: traceparent
            .as_ref()
            .and(text("tracestate"))
            .map(|s| s.chars().take(512).collect()),
        traceparent,
    }
}
