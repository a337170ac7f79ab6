//! `POST /orders`, `GET /orders` and `GET /orders/{id}`: a customer's orders.

use axum::{
    Json,
    extract::{Path, Query, State},
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
    store::{self, After, IdempotencyKey, Keyed},
};

/// Creates an order of the calling customer and its `OrderCreated` event in one
/// transaction.
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
        (status = 401, description = "No bearer token, or one that is refused (expired, not yet valid, another issuer or audience, a bad signature, …)", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json",
            headers(("www-authenticate" = String, description = "`Bearer realm=\"orders\"`, with `error=\"invalid_token\"` and a description when a token was refused"))),
        (status = 400, description = "Not JSON, or an invalid Idempotency-Key", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within the request timeout (a slow client)", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 415, description = "Content type is not JSON", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 422, description = "Wrong shape, invalid amount or currency, or a reused Idempotency-Key", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or the token's signing key is not cached and the JWKS cannot be fetched; retry after the Retry-After seconds", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json",
            headers(("retry-after" = String))),
    ),
    security(("bearer" = [])),
    tag = "orders"
)]
pub async fn create(
    State(state): State<AppState>,
    Caller(customer): Caller,
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
        let order = store::create_order_unsafely(&state.pool, &customer, &new, &context);
        state.metrics.created.inc();
        return created(&order);
    }
    let Some(key) = idempotency_key(&headers, &new)? else {
        let order = store::create_order(&state.pool, &customer, &new, &context).await?;
        state.metrics.created.inc();
        return created(&order);
    };
    match store::create_order_once(&state.pool, &customer, &new, &context, &key).await? {
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
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location(&order.id.to_string())?)],
        Json(body_of(order)?),
    )
        .into_response())
}

/// The response body of an order; failing to write it is a bug (500).
fn body_of(order: &Order) -> Result<OrderBody, ApiError> {
    order
        .to_body()
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))
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

/// Returns one of the calling customer's orders.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    operation_id = "get_order",
    params(("id" = uuid::Uuid, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 401, description = "No bearer token, or one that is refused (expired, not yet valid, another issuer or audience, a bad signature, …)", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json",
            headers(("www-authenticate" = String, description = "`Bearer realm=\"orders\"`, with `error=\"invalid_token\"` and a description when a token was refused"))),
        (status = 400, description = "The id is not a UUID", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 404, description = "No such order of the calling customer (another customer's order is not found either)", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or the token's signing key cannot be fetched; retry after the Retry-After seconds", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
    tag = "orders"
)]
pub async fn get(
    State(state): State<AppState>,
    Caller(customer): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = Uuid::try_parse(&id).map_err(|_| ApiError::BadRequest {
        code: "invalid_id",
        detail: "order id must be a UUID".into(),
    })?;
    let order = store::find_order(&state.pool, &customer, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} does not exist")))?;
    Ok(Json(body_of(&order)?).into_response())
}

/// Orders per page of `GET /orders` unless `limit` says otherwise.
const DEFAULT_PAGE: i64 = 20;
/// Largest `limit` of `GET /orders`.
const MAX_PAGE: i64 = 100;

/// Query of `GET /orders`, taken as text so that a bad value gets our own
/// problem body.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Orders per page, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page; absent for the first page.
    #[param(value_type = Option<String>, pattern = "^[0-9a-f]{1,14}-[0-9a-f]{32}$")]
    cursor: Option<String>,
}

/// A page of the calling customer's orders, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = OrderPage)]
pub struct OrderPage {
    /// The orders, newest first.
    orders: Vec<OrderBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// Lists the calling customer's orders, newest first, a page at a time.
///
/// Pages follow each other by cursor (keyset pagination): orders created while a
/// client pages through appear at the start of the list and never shift, repeat
/// or hide the orders of the pages that follow.
#[utoipa::path(
    get,
    path = "/orders",
    operation_id = "list_orders",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 401, description = "No bearer token, or one that is refused (expired, not yet valid, another issuer or audience, a bad signature, …)", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json",
            headers(("www-authenticate" = String, description = "`Bearer realm=\"orders\"`, with `error=\"invalid_token\"` and a description when a token was refused"))),
        (status = 400, description = "An invalid limit or cursor", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable, or the token's signing key cannot be fetched; retry after the Retry-After seconds", body = ref(crate::openapi::PROBLEM), content_type = "application/problem+json"),
    ),
    security(("bearer" = [])),
    tag = "orders"
)]
pub async fn list(
    State(state): State<AppState>,
    Caller(customer): Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest {
        code: "invalid_query",
        detail: e.body_text(),
    })?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::BadRequest {
                code: "invalid_limit",
                detail: format!("limit must be an integer from 1 to {MAX_PAGE}"),
            })?,
    };
    let after = query
        .cursor
        .as_deref()
        .map(|text| {
            parse_cursor(text).ok_or_else(|| ApiError::BadRequest {
                code: "invalid_cursor",
                detail: "cursor is not a next_cursor this API returned".into(),
            })
        })
        .transpose()?;
    // One more than asked: whether it comes tells whether there is a next page.
    let mut orders = store::list_orders(&state.pool, &customer, limit + 1, after).await?;
    let page = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = orders.len() > page;
    orders.truncate(page);
    let next_cursor = more
        .then(|| orders.last().map(|o| cursor(o.created_at, o.id)))
        .flatten();
    let orders = orders.iter().map(body_of).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(OrderPage {
        orders,
        next_cursor,
    })
    .into_response())
}

/// The cursor of the page after the order created at `created_at` with `id`:
/// its creation time in microseconds since the epoch and its id, in hex. Opaque
/// to clients.
fn cursor(created_at: time::OffsetDateTime, id: Uuid) -> String {
    let micros = created_at.unix_timestamp_nanos() / 1_000;
    // Orders are created after 1970: the time is positive and fits in 64 bits.
    let micros = u64::try_from(micros).unwrap_or_default();
    format!("{micros:x}-{}", id.simple())
}

/// The position a [`cursor`] names, if `text` is one. Whatever matches the
/// documented pattern is a position (14 hex digits of microseconds reach
/// beyond the year 4000): a client cannot send a well-formed cursor that is
/// refused.
fn parse_cursor(text: &str) -> Option<After> {
    let (micros, id) = text.split_once('-')?;
    if micros.is_empty() || micros.len() > 14 || id.len() != 32 {
        return None;
    }
    let micros = u64::from_str_radix(micros, 16).ok()?;
    let created_at =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).ok()?;
    let id = Uuid::try_parse(id).ok()?;
    Some(After { created_at, id })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_names_the_order_it_was_made_from() {
        let created_at = time::macros::datetime!(2026-12-03 10:11:12.345678 UTC);
        let id = Uuid::now_v7();
        let text = cursor(created_at, id);
        assert_eq!(parse_cursor(&text), Some(After { created_at, id }));
        for bad in [
            "",
            "-",
            "x-y",
            &format!("-{}", id.simple()),
            &format!("{}-{}", "f".repeat(15), id.simple()),
            &format!("zz-{}", id.simple()),
            &format!("10-{id}"),
            "ffffffffffffffff-00000000000000000000000000000000",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
        // The largest well-formed cursor is a position.
        assert!(parse_cursor("ffffffffffffff-ffffffffffffffffffffffffffffffff").is_some());
    }
}
