//! Configuration of the worker, from the environment.

use std::time::Duration;

use plumbing::{
    config::{BrokerConfig, ConfigError, ServiceConfig, ServiceDefaults, duration_or, parse_or},
    db::PoolOptions,
};

/// Default `DATABASE_URL`: the local invoices database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/invoices";

/// Everything the worker reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (the invoices database), `HOST`, `PORT` (default 3334), pool,
    /// `MIGRATE_ON_START`.
    pub service: ServiceConfig,
    /// `BROKER_URL` and `BROKER_NAMESPACE`.
    pub broker: BrokerConfig,
    /// `WORKER_PREFETCH`: unacknowledged deliveries the broker may send ahead
    /// (default 100).
    pub prefetch: u16,
    /// `WORKER_DRAIN_TIMEOUT`: on shutdown, how long to keep handling deliveries
    /// already received after cancelling the consumer (default 10s).
    pub drain_timeout: Duration,
}

impl Config {
    /// Reads the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            service: ServiceConfig::from_env(ServiceDefaults {
                database_url: DEFAULT_DATABASE_URL,
                port: 3334,
                pool: PoolOptions {
                    max_size: 8,
                    wait_timeout: Duration::from_secs(5),
                },
            })?,
            broker: BrokerConfig::from_env()?,
            prefetch: parse_or("WORKER_PREFETCH", 100)?,
            drain_timeout: duration_or("WORKER_DRAIN_TIMEOUT", Duration::from_secs(10))?,
        })
    }
}
