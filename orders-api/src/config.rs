//! Configuration of the orders API, from the environment.

use std::time::Duration;

use plumbing::config::{ConfigError, ServiceConfig, ServiceDefaults, Settings};
use plumbing::config::{duration_or, parse_or, var_or};
use plumbing::db::{PoolOptions, SessionLimits};

/// Everything the API reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (the orders database), `HOST`, `PORT` (default 3333), pool,
    /// `MIGRATE_ON_START`.
    pub service: ServiceConfig,
    /// `REQUEST_TIMEOUT`: longest a request may take (default 10s).
    pub request_timeout: Duration,
    /// `MAX_BODY_BYTES`: largest request body (default 64 KiB).
    pub max_body_bytes: usize,
    /// `DEFAULT_CURRENCY`: currency of orders that name none (default BRL).
    pub default_currency: String,
    /// `IDEMPOTENCY_KEY_TTL`: how long an `Idempotency-Key` is remembered
    /// (default 24h); expired keys are purged hourly by one API replica.
    pub idempotency_key_ttl: Duration,
    /// `HTTP_TRUST_TRACEPARENT`: continue the trace of a client's W3C
    /// `traceparent`/`tracestate` (default false: they are dropped and each
    /// request starts a trace of its own, which the relay and the worker continue).
    /// Only for an API whose callers are trusted, e.g. behind a gateway that sets
    /// these headers itself: a public client could otherwise choose trace ids
    /// (joining or polluting other traces) and force sampling.
    pub trust_traceparent: bool,
    /// `ORDERS_UNSAFE_REPLY_BEFORE_COMMIT`: BREAKS THE GUARANTEE, for the fault
    /// suite only (default false; exists only with the `fault-injection` feature). Answers 201 at once and writes the order 200 ms
    /// later, ignoring a failed write (idempotency keys are ignored too): the fault suite
    /// runs with it to show that its checker reports the 201s that were lost.
    #[cfg(feature = "fault-injection")]
    pub unsafe_reply_before_commit: bool,
}

impl Settings for Config {
    const DEFAULTS: ServiceDefaults = ServiceDefaults {
        database_url: "postgres://postgres@127.0.0.1:5432/orders",
        port: 3333,
        // The database gives up on a statement well before REQUEST_TIMEOUT's
        // default (10s) runs out, so that no query outlives its request; the
        // API's transactions are single statements, never idle for long.
        pool: PoolOptions {
            limits: SessionLimits {
                statement_timeout: Duration::from_secs(5),
                idle_in_transaction_timeout: Duration::from_secs(10),
            },
            ..PoolOptions::DEFAULT
        },
    };
    const VARIABLES: &'static [&'static str] = &["\
REQUEST_TIMEOUT longest a request may take; a slower one is answered 408 while its body is still arriving, 503 after (default 10s)
MAX_BODY_BYTES largest request body in bytes (default 65536)
DEFAULT_CURRENCY ISO 4217 currency of orders that name none (default BRL)
IDEMPOTENCY_KEY_TTL how long an Idempotency-Key is remembered; expired keys are purged hourly (default 24h)
HTTP_TRUST_TRACEPARENT true continues a client's W3C traceparent/tracestate; false drops them and starts a trace per request (default false: for a public API)",
        #[cfg(feature = "fault-injection")]
        "ORDERS_UNSAFE_REPLY_BEFORE_COMMIT BREAKS THE GUARANTEE, for the fault suite only: answer 201 before the order is stored (default false)",
    ];

    fn from_env() -> Result<Self, ConfigError> {
        #[cfg(not(feature = "fault-injection"))]
        plumbing::config::ignored_fault_switch("ORDERS_UNSAFE_REPLY_BEFORE_COMMIT");
        Ok(Self {
            service: ServiceConfig::from_env(Self::DEFAULTS)?,
            request_timeout: duration_or("REQUEST_TIMEOUT", Duration::from_secs(10))?,
            max_body_bytes: parse_or("MAX_BODY_BYTES", 64 * 1024)?,
            default_currency: var_or("DEFAULT_CURRENCY", "BRL"),
            idempotency_key_ttl: duration_or("IDEMPOTENCY_KEY_TTL", Duration::from_secs(86_400))?,
            trust_traceparent: parse_or("HTTP_TRUST_TRACEPARENT", false)?,
            #[cfg(feature = "fault-injection")]
            unsafe_reply_before_commit: plumbing::config::fault_switch(
                "ORDERS_UNSAFE_REPLY_BEFORE_COMMIT",
                "orders are answered 201 before they are committed",
            )?,
        })
    }

    fn service(&self) -> &ServiceConfig {
        &self.service
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "Pa55-s3cret";

    #[test]
    fn debug_shows_no_password() {
        let config = Config {
            service: devkit::configs_holding(PASSWORD).0,
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 1024,
            default_currency: "BRL".into(),
            idempotency_key_ttl: Duration::from_secs(60),
            trust_traceparent: false,
            #[cfg(feature = "fault-injection")]
            unsafe_reply_before_commit: false,
        };
        devkit::assert_hides(PASSWORD, &config);
    }
}
