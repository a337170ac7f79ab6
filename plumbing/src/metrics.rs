//! Prometheus metrics: every service keeps its own registry and serves it at
//! `GET /metrics` in the OpenMetrics text format, together with the metrics every
//! service has ([`CommonMetrics`]: HTTP connections, HTTP requests by route and
//! status, database pool usage).

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use deadpool_postgres::Pool;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registries as one exposition: their families in order, one `# EOF`.
///
/// # Errors
/// If a registry cannot be encoded.
pub fn encode_text(registries: &[&Registry]) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    for registry in registries {
        encode(&mut body, registry)?;
        // Each encoding ends the exposition; only the last may.
        if let Some(stripped) = body.strip_suffix("# EOF\n") {
            body.truncate(stripped.len());
        }
    }
    body.push_str("# EOF\n");
    Ok(body)
}

/// An exposition ([`encode_text`]) as the `/metrics` response.
#[must_use]
pub fn response(text: Result<String, std::fmt::Error>) -> Response {
    match text {
        Ok(body) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A latency histogram from 1 ms to about 65 s (doubling buckets), in seconds.
#[must_use]
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Labels of an HTTP request count.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route's pattern (`/orders/{id}`), `unmatched` for unknown paths.
    pub route: String,
    /// The request method.
    pub method: String,
    /// The response status code.
    pub status: u16,
}

/// Labels of an HTTP latency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's pattern.
    pub route: String,
    /// The request method.
    pub method: String,
}

/// Labels of the pool gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PoolLabels {
    /// `in_use` or `idle`.
    pub state: &'static str,
}

/// Labels of the count of connections the server closed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CloseLabels {
    /// `header_timeout` or `idle_timeout` ([`crate::http::CloseReason`]).
    pub reason: &'static str,
}

/// What every service measures: its HTTP connections and requests, and its
/// database pool.
#[derive(Debug)]
pub struct CommonMetrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    open_connections: Gauge,
    max_connections: Gauge,
    closed_connections: Family<CloseLabels, Counter>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    pool_waiting: Gauge,
}

impl Default for CommonMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CommonMetrics {
    /// Creates and registers the metrics (`http_server_…`, `db_pool_…`).
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        let (pool_max, pool_waiting) = (Gauge::default(), Gauge::default());
        let (open_connections, max_connections) = (Gauge::default(), Gauge::default());
        let closed_connections = Family::<CloseLabels, Counter>::default();
        registry.register(
            "http_server_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Time to answer an HTTP request, by route and method",
            duration.clone(),
        );
        registry.register(
            "http_server_open_connections",
            "HTTP connections open now",
            open_connections.clone(),
        );
        registry.register(
            "http_server_max_connections",
            "Most HTTP connections open at once (HTTP_MAX_CONNECTIONS); more wait to be accepted",
            max_connections.clone(),
        );
        registry.register(
            "http_server_connections_closed",
            "HTTP connections the server closed itself, by reason (header_timeout, idle_timeout)",
            closed_connections.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database connections of this process's pool, by state (in_use, idle)",
            pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Size limit of this process's database pool",
            pool_max.clone(),
        );
        registry.register(
            "db_pool_waiting",
            "Requests waiting for a database connection",
            pool_waiting.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            open_connections,
            max_connections,
            closed_connections,
            pool_connections,
            pool_max,
            pool_waiting,
        }
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.duration
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    /// Counts a connection accepted.
    pub fn connection_opened(&self) {
        self.open_connections.inc();
    }

    /// Counts a connection gone (however it ended).
    pub fn connection_ended(&self) {
        self.open_connections.dec();
    }

    /// Counts a connection the server closed itself, for `reason`.
    pub fn connection_closed(&self, reason: crate::http::CloseReason) {
        self.closed_connections
            .get_or_create(&CloseLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Shows the connection cap.
    pub fn set_max_connections(&self, max: u32) {
        self.max_connections.set(i64::from(max));
    }

    /// Reads the pool's current usage into the gauges (call before rendering).
    pub fn observe_pool(&self, pool: &Pool) {
        let status = pool.status();
        let idle = i64::try_from(status.available).unwrap_or(i64::MAX);
        let open = i64::try_from(status.size).unwrap_or(i64::MAX);
        self.pool_connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(idle);
        self.pool_connections
            .get_or_create(&PoolLabels { state: "in_use" })
            .set(open.saturating_sub(idle));
        self.pool_max
            .set(i64::try_from(status.max_size).unwrap_or(i64::MAX));
        self.pool_waiting
            .set(i64::try_from(status.waiting).unwrap_or(i64::MAX));
    }

    /// The registry to render beside the service's own.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`) counting and timing every
/// request by its route pattern, so that ids in paths do not explode the series.
pub async fn track(
    axum::extract::State(metrics): axum::extract::State<Arc<CommonMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m.to_owned(),
        _ => "other".to_owned(),
    };
    let response = next.run(request).await;
    metrics.observe_request(
        &route,
        &method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Adds [`track`] to every route of `router` (and its fallback).
pub fn instrument(router: axum::Router, metrics: Arc<CommonMetrics>) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(metrics, track))
}
