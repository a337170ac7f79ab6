//! The API's Prometheus metrics (`orders_…`), served at `GET /metrics` beside the
//! HTTP and pool metrics every service has.

use prometheus_client::{metrics::counter::Counter, registry::Registry};

/// What the API counts.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    /// Orders stored (each with its outbox event).
    pub created: Counter,
    /// Answers replayed for a repeated `Idempotency-Key`.
    pub idempotent_replays: Counter,
    /// Refused tokens and JWKS fetches (`orders_auth_…`).
    pub auth: crate::auth::AuthMetrics,
}

impl Default for ApiMetrics {
    /// Creates and registers the metrics.
    fn default() -> Self {
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
        let auth = crate::auth::AuthMetrics::default();
        auth.register(&mut registry);
        Self {
            registry,
            created,
            idempotent_replays,
            auth,
        }
    }
}

/// `/ready` needs the database only; `/metrics` starts with the API's own.
impl plumbing::endpoints::Vitals for ApiMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}
