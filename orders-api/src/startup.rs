//! The API as a service: what it adds to the shape every service has (see
//! [`plumbing::service`]).

use std::{sync::Arc, time::Duration};

use axum::Router;
use deadpool_postgres::Pool;
use plumbing::{
    db::{Database, DbConfig, Purge},
    endpoints::Vitals,
    service::{About, Service},
};
use prometheus_client::registry::Registry;

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticator,
    config::Config,
    metrics::ApiMetrics,
    routes::{self, AppState, Limits},
};

/// The orders API, assembled over its database.
pub struct Application {
    state: AppState,
    limits: Limits,
    key_ttl: Duration,
}

impl Service for Application {
    type Config = Config;
    const ABOUT: About = plumbing::about!(Database::Orders);

    /// A default currency that is not an ISO 4217 code is refused before the
    /// database is touched, and so are a statement timeout that would let a
    /// query outlive its request and authentication without its settings.
    fn check(config: &Config) -> anyhow::Result<()> {
        config.auth.check()?;
        if !contracts::event::is_currency_code(&config.default_currency) {
            return Err(plumbing::config::ConfigError {
                name: "DEFAULT_CURRENCY".into(),
                value: config.default_currency.clone(),
                reason: "not a three-letter ISO 4217 code".into(),
            }
            .into());
        }
        let statement_timeout = config.service.pool.limits.statement_timeout;
        if statement_timeout.is_zero() || statement_timeout >= config.request_timeout {
            anyhow::bail!(
                "DB_STATEMENT_TIMEOUT={statement_timeout:?} must be more than 0s and less than \
                 REQUEST_TIMEOUT ({:?}): the database must give up on a request's statement \
                 before the request is answered, or the query keeps running after it",
                config.request_timeout
            );
        }
        Ok(())
    }

    fn assemble(config: &Config, _db: DbConfig, pool: Pool) -> anyhow::Result<Self> {
        let metrics = Arc::new(ApiMetrics::default());
        let auth = Arc::new(Authenticator::new(&config.auth, metrics.auth.clone())?);
        let state = AppState {
            pool,
            default_currency: Arc::from(config.default_currency.as_str()),
            metrics,
            auth,
            #[cfg(feature = "fault-injection")]
            unsafe_reply_before_commit: config.unsafe_reply_before_commit,
        };
        let limits = Limits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
            trust_traceparent: config.trust_traceparent,
        };
        let key_ttl = config.idempotency_key_ttl;
        Ok(Self {
            state,
            limits,
            key_ttl,
        })
    }

    fn vitals(&self) -> Arc<dyn Vitals> {
        Arc::new(ApiVitals {
            metrics: self.state.metrics.clone(),
            auth: self.state.auth.clone(),
        })
    }

    fn router(&self, endpoints: Router) -> Router {
        routes::router(self.state.clone(), self.limits, endpoints)
    }

    /// Keeps the signing keys of the bearer tokens fresh, beside the server.
    async fn run(self, shutdown: CancellationToken) {
        self.state.auth.keep_keys_fresh(shutdown).await;
    }

    /// Expired idempotency keys, hourly.
    fn purge(&self) -> Option<Purge> {
        // The advisory lock that lets one API replica at a time purge expired keys.
        const PURGE_LOCK_KEY: i64 = 0x6964_656d; // "idem"
        let ttl = self.key_ttl;
        let purge = move |pool: Pool| async move { crate::store::purge_keys(&pool, ttl).await };
        let hourly = Duration::from_secs(3_600);
        let what = "purge of expired idempotency keys";
        Some(Purge::new(what, PURGE_LOCK_KEY, hourly, purge))
    }
}

/// What `/ready` and `/metrics` add: the API's metrics, and no readiness until
/// the signing keys of the bearer tokens are loaded.
struct ApiVitals {
    metrics: Arc<ApiMetrics>,
    auth: Arc<Authenticator>,
}

impl Vitals for ApiVitals {
    fn registry(&self) -> &Registry {
        self.metrics.registry()
    }

    fn unready(&self) -> Option<String> {
        self.auth.unready()
    }
}
