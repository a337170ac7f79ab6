//! The API's Prometheus metrics (`orders_…`), served at `GET /metrics` beside the
//! HTTP and pool metrics every service has.

use std::sync::Arc;

use plumbing::metrics::CommonMetrics;
use prometheus_client::{metrics::counter::Counter, registry::Registry};

/// What the API counts.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    /// Orders stored (each with its outbox event).
    pub created: Counter,
    /// Answers replayed for a repeated `Idempotency-Key`.
    pub idempotent_replays: Counter,
    /// HTTP requests and database pool.
    pub common: Arc<CommonMetrics>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    /// Creates and registers the metrics.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("orders");
        let created = Counter::default();
        let idempotent_replays = Counter::default();
        registry.register(
            "created",
            "Orders stored with their OrderCreated event",
            created.clone(),
        );
        registry.register(
            "idempotent_replays",
            "Answers replayed for a repeated Idempotency-Key (no order created)",
            idempotent_replays.clone(),
        );
        Self {
            registry,
            created,
            idempotent_replays,
            common: Arc::new(CommonMetrics::new()),
        }
    }

    /// The API's own registry.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}
