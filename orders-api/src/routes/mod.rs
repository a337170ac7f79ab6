//! HTTP routes of the orders API.

pub(crate) mod orders;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request},
    http::{HeaderName, Uri},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use deadpool_postgres::Pool;
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{error::ApiError, extract::BodyProgress};

/// Header carrying the request id (generated when the client sends none).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Orders database pool.
    pub pool: Pool,
    /// Currency of orders that name none.
    pub default_currency: Arc<str>,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Arc<crate::metrics::ApiMetrics>,
    /// Who is calling ([`crate::auth::Caller`]).
    pub auth: Arc<crate::auth::Authenticator>,
    /// `ORDERS_UNSAFE_REPLY_BEFORE_COMMIT` (fault suite only; see the config).
    #[cfg(feature = "fault-injection")]
    pub unsafe_reply_before_commit: bool,
}

impl axum::extract::FromRef<AppState> for Arc<crate::auth::Authenticator> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

/// Limits applied to every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Longest a request may take before it is answered with 503.
    pub request_timeout: Duration,
    /// Whether a client's `traceparent`/`tracestate` are continued (see
    /// [`crate::config::Config::trust_traceparent`]).
    pub trust_traceparent: bool,
}

/// The API's routes with `endpoints` (`/health`, `/ready`, `/metrics`), under
/// its middleware: body limit, timeout, request id, trace context, request span.
pub fn router(state: AppState, limits: Limits, endpoints: Router) -> Router {
    let timeout = limits.request_timeout;
    let trust_traceparent = limits.trust_traceparent;
    Router::new()
        .route(
            "/orders",
            axum::routing::post(orders::create).get(orders::list),
        )
        .route("/orders/{id}", get(orders::get))
        .route("/openapi.json", get(openapi))
        .with_state(state)
        .merge(endpoints)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            with_timeout(req, next, timeout)
        }))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::map_request(drop_untrusted_request_id))
                .layer(middleware::map_request(move |req: Request| async move {
                    drop_untrusted_trace_context(req, trust_traceparent)
                }))
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(record_response),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
}

/// Longest client-sent `x-request-id` kept.
const MAX_REQUEST_ID: usize = 64;

/// Removes a client's `x-request-id` that is empty, longer than
/// [`MAX_REQUEST_ID`] or not made of letters, digits and `-_.:`, so that a
/// fresh one is generated: the id goes into logs, spans and the stored event,
/// and a client on the internet must not put arbitrary text there.
async fn drop_untrusted_request_id(mut req: Request) -> Request {
    let trusted = req.headers().get(&REQUEST_ID).map(|value| {
        let id = value.as_bytes();
        !id.is_empty()
            && id.len() <= MAX_REQUEST_ID
            && id
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    });
    if trusted == Some(false) {
        req.headers_mut().remove(&REQUEST_ID);
    }
    req
}

/// Removes a client's W3C trace context unless it is trusted, before the request
/// span is made: the request then starts a trace of its own, and that trace (not
/// the client's) is stored with the event and continued by the relay and the
/// worker. A public client must not choose the trace ids of our spans (joining
/// someone else's trace, or flooding one) nor force them to be sampled.
fn drop_untrusted_trace_context(mut req: Request, trusted: bool) -> Request {
    if !trusted {
        let headers = req.headers_mut();
        headers.remove("traceparent");
        headers.remove("tracestate");
    }
    req
}

/// The server span of a request (OpenTelemetry HTTP semantic conventions),
/// continuing the caller's trace when it sends a `traceparent` that is trusted
/// (see [`drop_untrusted_trace_context`]).
fn request_span(req: &Request) -> tracing::Span {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(axum::extract::MatchedPath::as_str);
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{} {}", req.method(), route.unwrap_or("unmatched")),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %req.method(),
        http.route = route,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
        request_id = header(REQUEST_ID.as_str()).unwrap_or_default(),
        // The authenticated customer ([`crate::auth::Caller`]); never the token.
        enduser.id = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    plumbing::telemetry::continue_trace(&span, header("traceparent"), header("tracestate"));
    span
}

fn record_response(response: &Response, _latency: Duration, span: &tracing::Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Answers a request that takes longer than the limit, so that neither a stalled
/// database nor a slow client can hold a connection (or graceful shutdown)
/// forever: 408 while the body is still arriving, 503 otherwise.
async fn with_timeout(mut req: Request, next: Next, timeout: Duration) -> Response {
    let progress = BodyProgress::default();
    req.extensions_mut().insert(progress.clone());
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) if progress.receiving() => ApiError::RequestTimeout(format!(
            "the request body did not arrive within {timeout:?}"
        ))
        .into_response(),
        Err(_) => ApiError::Unavailable(anyhow::anyhow!("request timed out after {timeout:?}"))
            .into_response(),
    }
}

/// `GET /openapi.json`: the API's OpenAPI 3.1 description.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_json",
    summary = "This document.",
    responses((status = 200, description = "The OpenAPI description", content_type = "application/json")),
    tag = "operations"
)]
pub(crate) async fn openapi() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| crate::openapi::json().unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.clone(),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!(
        "method {} is not allowed on {}",
        req.method(),
        req.uri().path()
    ))
}
