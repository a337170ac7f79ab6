//! Configuration of the worker, from the environment.

use std::time::Duration;

use plumbing::{
    config::{BrokerConfig, ConfigError, duration_or, parse_or, var_or},
    db::PoolOptions,
};

/// Default `DATABASE_URL`: the local invoices database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/invoices";

/// Everything the worker reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: the invoices database.
    pub database_url: String,
    /// `BROKER_URL` and `BROKER_NAMESPACE`.
    pub broker: BrokerConfig,
    /// `HOST`: address of the HTTP endpoint (default `0.0.0.0`).
    pub host: String,
    /// `PORT`: port of the HTTP endpoint (default 3334).
    pub port: u16,
    /// `DB_POOL_SIZE` and `DB_POOL_TIMEOUT`.
    pub pool: PoolOptions,
    /// `WORKER_PREFETCH`: unacknowledged deliveries the broker may send ahead
    /// (default 100).
    pub prefetch: u16,
    /// `WORKER_DRAIN_TIMEOUT`: on shutdown, how long to keep handling deliveries
    /// already received after cancelling the consumer (default 10s).
    pub drain_timeout: Duration,
    /// `MIGRATE_ON_START`: apply the invoices migrations at start-up (default true).
    pub migrate_on_start: bool,
}

impl Config {
    /// Reads the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            database_url: var_or("DATABASE_URL", DEFAULT_DATABASE_URL),
            broker: BrokerConfig::from_env()?,
            host: var_or("HOST", "0.0.0.0"),
            port: parse_or("PORT", 3334)?,
            pool: PoolOptions {
                max_size: parse_or("DB_POOL_SIZE", 8)?,
                wait_timeout: duration_or("DB_POOL_TIMEOUT", Duration::from_secs(5))?,
            },
            prefetch: parse_or("WORKER_PREFETCH", 100)?,
            drain_timeout: duration_or("WORKER_DRAIN_TIMEOUT", Duration::from_secs(10))?,
            migrate_on_start: parse_or("MIGRATE_ON_START", true)?,
        })
    }
}
