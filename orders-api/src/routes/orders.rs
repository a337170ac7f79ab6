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
    auth::Caller,
    domain::{
        CreateOrderRequest, NewOrder, Order,
        order::{OrderBody, OrderError},
    },
    error::ApiError,
    extract::JsonBody,
    outbox::{RequestContext, is_valid_traceparent},
    store::{self, IdempotencyKey, Keyed},
};

/// Creates an order and its `OrderCreated` event in one transaction.
#[utoipa::path(
    post,
    path = "/orders",
    operation_id = "create_order",
    request_body(content = CreateOrderRequest, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1–255 visible ASCII characters; a retry with the same key gets the same answer and creates nothing"),
        ("x-request-id" = Option<String>, Header, description = "Request id; generated when absent, returned, stored with the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, stored with the event"),
    ),
    responses(
        (status = 201, description = "Created (or replayed for a repeated Idempotency-Key)", body = OrderBody,
            headers(("location" = String, description = "/orders/{id}"), ("idempotent-replayed" = String, description = "`true` on a replayed response"))),
        (status = 400, description = "Not JSON, or an invalid Idempotency-Key", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within the request timeout (a slow client)", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 415, description = "Content type is not JSON", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 422, description = "Wrong shape, invalid amount or currency, or a reused Idempotency-Key", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; retry after the Retry-After seconds", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json",
            headers(("retry-after" = String))),
    ),
    tag = "orders"
)]
pub async fn create(
    State(state): State<AppState>,
    _caller: Caller,
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
    #[cfg(feature = "fault-injection")]
    if state.unsafe_reply_before_commit {
        let order = store::create_order_unsafely(&state.pool, &new, &context);
        state.metrics.created.inc();
        return created(&order);
    }
    let Some(key) = idempotency_key(&headers, &new)? else {
        let order = store::create_order(&state.pool, &new, &context).await?;
        state.metrics.created.inc();
        return created(&order);
    };
    match store::create_order_once(&state.pool, &new, &context, &key).await? {
        Keyed::Created(order) => {
            state.metrics.created.inc();
            created(&order)
        }
        Keyed::Replayed { status, body } => {
            state.metrics.idempotent_replays.inc();
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
            let mut response = (status, Json(&body)).into_response();
            if let Some(id) = body.get("id").and_then(|v| v.as_str()) {
                response
                    .headers_mut()
                    .insert(header::LOCATION, location(id)?);
            }
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            Ok(response)
        }
        Keyed::Mismatch => Err(ApiError::Unprocessable {
            code: "idempotency_key_reused",
            detail: "this Idempotency-Key was used for a different request".into(),
        }),
    }
}

/// Header of a response replayed for a repeated `Idempotency-Key`.
const IDEMPOTENT_REPLAYED: header::HeaderName =
    header::HeaderName::from_static("idempotent-replayed");

fn created(order: &Order) -> Result<Response, ApiError> {
    let body = order
        .to_body()
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location(&order.id.to_string())?)],
        Json(body),
    )
        .into_response())
}

fn location(id: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!("/orders/{id}"))
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))
}

/// The `Idempotency-Key` header (1–255 visible ASCII characters), with what the
/// request asks for: the amount in cents and the currency, so that `29.99` and
/// `"29.990"` are the same request.
fn idempotency_key(
    headers: &HeaderMap,
    new: &NewOrder,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::BadRequest {
            code: "invalid_idempotency_key",
            detail: "Idempotency-Key must be 1 to 255 visible ASCII characters".into(),
        })?;
    Ok(Some(IdempotencyKey {
        key: key.to_owned(),
        fingerprint: format!("{} {}", new.amount.cents(), new.currency),
    }))
}

/// Returns one order.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "get_order",
    params(("id" = uuid::Uuid, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 400, description = "The id is not a UUID", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
    ),
    tag = "orders"
)]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
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

/// The request id and W3C trace context to store with the event: the context of
/// this request's span (a child of the caller's trace, if it sent one and it is
/// trusted), so that the relay and the worker continue the same trace. With
/// tracing turned off, the caller's own valid and trusted `traceparent` is passed
/// on unchanged (an untrusted one was removed before).
fn request_context(headers: &HeaderMap) -> RequestContext {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (traceparent, tracestate) = match plumbing::telemetry::inject(&tracing::Span::current()) {
        (Some(traceparent), tracestate) => (Some(traceparent), tracestate),
        (None, _) => {
            let traceparent = text("traceparent").filter(|t| is_valid_traceparent(t));
            let tracestate = traceparent.as_ref().and(text("tracestate"));
            (traceparent, tracestate)
        }
    };
    RequestContext {
        request_id: headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(128).collect()),
        tracestate: tracestate.map(|s| s.chars().take(512).collect()),
        traceparent,
    }
}
