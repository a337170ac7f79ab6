//! Configuration of the worker, from the environment.

use std::time::Duration;

use crate::worker::WorkerSettings;
use plumbing::config::{BrokerConfig, ConfigError, ServiceConfig, ServiceDefaults, Settings};
use plumbing::config::{duration_or, parse_or};
use plumbing::db::{PoolOptions, SessionLimits};

/// Everything the worker reads from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL` (the invoices database), `HOST`, `PORT` (default 3334), pool,
    /// `MIGRATE_ON_START`.
    pub service: ServiceConfig,
    /// `BROKER_URL` and `BROKER_NAMESPACE`.
    pub broker: BrokerConfig,
    /// `WORKER_PREFETCH` (default 200), `WORKER_BATCH_SIZE` (default 100),
    /// `WORKER_MAX_ATTEMPTS` (default 20), `WORKER_DRAIN_TIMEOUT` (default 10s);
    /// `WORKER_UNSAFE_ACK_BEFORE_COMMIT` breaks the guarantee for the fault suite
    /// (only with the `fault-injection` feature).
    pub worker: WorkerSettings,
    /// `DEDUPE_RETENTION`: how long message ids are remembered; at least the
    /// outbox's replay window plus a margin (default 8d).
    pub dedupe_retention: Duration,
    /// `DEDUPE_PURGE_INTERVAL`: how often old message ids are purged (default 1h).
    pub purge_interval: Duration,
}

impl Settings for Config {
    const DEFAULTS: ServiceDefaults = ServiceDefaults {
        database_url: "postgres://postgres@127.0.0.1:5432/invoices",
        port: 3334,
        pool: PoolOptions {
            max_size: 8,
            wait_timeout: Duration::from_secs(5),
            limits: SessionLimits::DEFAULT,
        },
    };
    const VARIABLES: &'static [&'static str] = &[BrokerConfig::VARIABLES, "\
WORKER_PREFETCH unacknowledged deliveries the broker may send ahead (default 200)
WORKER_BATCH_SIZE most deliveries stored in one transaction (default 100)
WORKER_MAX_ATTEMPTS tries at storing a batch through database errors before its messages go back to the queue (default 20)
WORKER_DRAIN_TIMEOUT on shutdown, how long to finish the deliveries already received (default 10s)
DEDUPE_RETENTION how long message ids are remembered; at least the outbox's replay window (default 8d)
DEDUPE_PURGE_INTERVAL how often old message ids are purged (default 1h)",
        #[cfg(feature = "fault-injection")]
        "WORKER_UNSAFE_ACK_BEFORE_COMMIT BREAKS THE GUARANTEE, for the fault suite only: acknowledge messages on receipt (default false)",
    ];

    fn from_env() -> Result<Self, ConfigError> {
        let d = WorkerSettings::default();
        #[cfg(not(feature = "fault-injection"))]
        plumbing::config::ignored_fault_switch("WORKER_UNSAFE_ACK_BEFORE_COMMIT");
        Ok(Self {
            service: ServiceConfig::from_env(Self::DEFAULTS)?,
            broker: BrokerConfig::from_env()?,
            worker: WorkerSettings {
                prefetch: parse_or("WORKER_PREFETCH", d.prefetch)?.max(1),
                batch_size: parse_or("WORKER_BATCH_SIZE", d.batch_size)?.clamp(1, 10_000),
                max_attempts: parse_or("WORKER_MAX_ATTEMPTS", d.max_attempts)?.max(1),
                drain_timeout: duration_or("WORKER_DRAIN_TIMEOUT", d.drain_timeout)?,
                #[cfg(feature = "fault-injection")]
                unsafe_ack_before_commit: plumbing::config::fault_switch(
                    "WORKER_UNSAFE_ACK_BEFORE_COMMIT",
                    "messages are acknowledged before their invoices are stored",
                )?,
            },
            dedupe_retention: duration_or("DEDUPE_RETENTION", Duration::from_secs(8 * 86_400))?,
            purge_interval: duration_or("DEDUPE_PURGE_INTERVAL", Duration::from_secs(3_600))?
                .max(Duration::from_secs(1)),
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
        let (service, broker) = devkit::configs_holding(PASSWORD);
        let config = Config {
            service,
            broker,
            worker: WorkerSettings::default(),
            dedupe_retention: Duration::from_secs(60),
            purge_interval: Duration::from_secs(60),
        };
        devkit::assert_hides(PASSWORD, &config);
    }
}
