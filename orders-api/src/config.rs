//! Configuration of the orders API, from the environment.

use std::time::Duration;

use plumbing::{
    config::{ConfigError, duration_or, parse_or, var_or},
    db::PoolOptions,
};

/// Default `DATABASE_URL`: the local orders database.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";

/// Everything the API reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: the orders database.
    pub database_url: String,
    /// `HOST`: address to listen on (default `0.0.0.0`).
    pub host: String,
    /// `PORT`: port to listen on (default 3333; 0 picks a free one).
    pub port: u16,
    /// `DB_POOL_SIZE` and `DB_POOL_TIMEOUT`.
    pub pool: PoolOptions,
    /// `REQUEST_TIMEOUT`: longest a request may take (default 10s).
    pub request_timeout: Duration,
    /// `MAX_BODY_BYTES`: largest request body (default 64 KiB).
    pub max_body_bytes: usize,
    /// `DEFAULT_CURRENCY`: currency of orders that name none (default BRL).
    pub default_currency: String,
    /// `MIGRATE_ON_START`: apply migrations at start-up (default true).
    pub migrate_on_start: bool,
}

impl Config {
    /// Reads the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        let defaults = PoolOptions::default();
        Ok(Self {
            database_url: var_or("DATABASE_URL", DEFAULT_DATABASE_URL),
            host: var_or("HOST", "0.0.0.0"),
            port: parse_or("PORT", 3333)?,
            pool: PoolOptions {
                max_size: parse_or("DB_POOL_SIZE", defaults.max_size)?,
                wait_timeout: duration_or("DB_POOL_TIMEOUT", defaults.wait_timeout)?,
            },
            request_timeout: duration_or("REQUEST_TIMEOUT", Duration::from_secs(10))?,
            max_body_bytes: parse_or("MAX_BODY_BYTES", 64 * 1024)?,
            default_currency: var_or("DEFAULT_CURRENCY", "BRL"),
            migrate_on_start: parse_or("MIGRATE_ON_START", true)?,
        })
    }
}
