//! Configuration of the relay, from the environment.

use std::time::Duration;

use plumbing::{
    config::{BrokerConfig, ConfigError, ServiceConfig, ServiceDefaults, duration_or, parse_or},
    db::PoolOptions,
};

/// Default `DATABASE_URL`: the local orders database (the relay reads the outbox).
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders";

/// How the relay claims and publishes.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// `RELAY_BATCH_SIZE`: rows claimed and published per cycle (default 200).
    pub batch_size: i64,
    /// `RELAY_POLL_INTERVAL`: fallback scan interval when no notification arrives
    /// (default 1s).
    pub poll_interval: Duration,
    /// `RELAY_LEASE`: how long a claim keeps other relays off the rows; a relay that
    /// dies loses its claim after this (default 30s).
    pub lease: Duration,
    /// `RELAY_CONFIRM_TIMEOUT`: longest wait for the broker's confirms of a batch;
    /// unconfirmed rows are released and published again (default 10s).
    pub confirm_timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 200,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

/// Everything the relay reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (the orders database), `HOST`, `PORT` (default 3335), pool,
    /// `MIGRATE_ON_START`.
    pub service: ServiceConfig,
    /// `BROKER_URL` and `BROKER_NAMESPACE`.
    pub broker: BrokerConfig,
    /// Claiming and publishing.
    pub relay: RelaySettings,
}

impl Config {
    /// Reads the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        let d = RelaySettings::default();
        Ok(Self {
            service: ServiceConfig::from_env(ServiceDefaults {
                database_url: DEFAULT_DATABASE_URL,
                port: 3335,
                pool: PoolOptions {
                    max_size: 4,
                    wait_timeout: Duration::from_secs(5),
                },
            })?,
            broker: BrokerConfig::from_env()?,
            relay: RelaySettings {
                batch_size: parse_or("RELAY_BATCH_SIZE", d.batch_size)?.clamp(1, 10_000),
                poll_interval: duration_or("RELAY_POLL_INTERVAL", d.poll_interval)?,
                lease: duration_or("RELAY_LEASE", d.lease)?,
                confirm_timeout: duration_or("RELAY_CONFIRM_TIMEOUT", d.confirm_timeout)?,
            },
        })
    }
}
