//! The OpenAPI 3.1 description of the API, generated with utoipa, served at
//! `GET /openapi.json` and checked in as `orders-api/openapi.json` (a test keeps
//! the two equal).

use utoipa::{OpenApi, ToSchema};

/// Body of `POST /orders`. Unknown fields are refused.
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct CreateOrder {
    /// The amount, > 0, at most 2 decimal places, at most 1000000.00, converted to
    /// cents exactly. Decimal JSON numbers such as `29.99` are accepted too; the
    /// schema lists only the forms a JSON Schema can pin down exactly (a decimal
    /// number's cents cannot be expressed without float rounding).
    #[schema(schema_with = amount_schema)]
    amount: String,
    /// ISO 4217 code (three upper-case letters); default BRL.
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: Option<String>,
}

/// Decimal strings the schema describes: 0.01 to 1000000.00, at most two places.
const AMOUNT_PATTERN: &str =
    r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,5}(\.[0-9]{1,2})?|1000000(\.00?)?)$";

/// `amount`: whole units as a number (`30`), or a decimal string (`"29.99"`).
fn amount_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1_000_000)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(AMOUNT_PATTERN)),
        )
        .build()
        .into()
}

/// An order.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Order {
    /// Order id (UUIDv7).
    id: uuid::Uuid,
    /// The amount as a number with two decimal places.
    amount: f64,
    /// The amount in cents, exact.
    amount_cents: i64,
    /// ISO 4217 code.
    currency: String,
    /// When the order was stored (RFC 3339).
    #[schema(format = DateTime)]
    created_at: String,
}

/// An error (RFC 9457 problem details), `application/problem+json`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Problem {
    /// Always `about:blank`.
    #[schema(rename = "type")]
    kind: String,
    /// The HTTP status phrase.
    title: String,
    /// The HTTP status code.
    status: u16,
    /// What is wrong.
    detail: String,
    /// A stable, machine-readable code (`invalid_amount`, `unavailable`, …).
    code: String,
}

/// Creates an order and its `OrderCreated` event in one transaction.
#[utoipa::path(
    post,
    path = "/orders",
    request_body(content = CreateOrder, content_type = "application/json"),
    params(
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "1–255 visible ASCII characters; a retry with the same key gets the same answer and creates nothing"),
        ("x-request-id" = Option<String>, Header, description = "Request id; generated when absent, returned, stored with the event"),
        ("traceparent" = Option<String>, Header, description = "W3C trace context, stored with the event"),
    ),
    responses(
        (status = 201, description = "Created (or replayed for a repeated Idempotency-Key)", body = Order,
            headers(("location" = String, description = "/orders/{id}"), ("idempotent-replayed" = String, description = "`true` on a replayed response"))),
        (status = 400, description = "Not JSON, or an invalid Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within the request timeout (a slow client)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content type is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Wrong shape, invalid amount or currency, or a reused Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable; retry after the Retry-After seconds", body = Problem, content_type = "application/problem+json",
            headers(("retry-after" = String))),
    ),
    tag = "orders"
)]
#[allow(dead_code)]
fn create_order() {}

/// Returns one order.
#[utoipa::path(
    get,
    path = "/orders/{id}",
    params(("id" = uuid::Uuid, Path, description = "Order id (UUID)")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "The id is not a UUID", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "orders"
)]
#[allow(dead_code)]
fn get_order() {}

/// Liveness: `OK` as long as the process serves HTTP.
#[utoipa::path(
    get,
    path = "/health",
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")),
    tag = "operations"
)]
#[allow(dead_code)]
fn health() {}

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
#[allow(dead_code)]
fn ready() {}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    responses((status = 200, description = "Request, order and pool metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8")),
    tag = "operations"
)]
#[allow(dead_code)]
fn metrics() {}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI description", content_type = "application/json")),
    tag = "operations"
)]
#[allow(dead_code)]
fn openapi_json() {}

/// The API's description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orders-api",
        description = "Orders REST API of the transactional-outbox pipeline: each accepted order is stored with its OrderCreated event in one transaction."
    ),
    paths(create_order, get_order, health, ready, metrics, openapi_json),
    components(schemas(CreateOrder, Order, Problem))
)]
pub struct ApiDoc;

/// The description as pretty JSON (what `/openapi.json` serves and the committed
/// file holds).
///
/// # Errors
/// Only if serialization fails (never in practice).
pub fn json() -> Result<String, serde_json::Error> {
    ApiDoc::openapi().to_pretty_json()
}
