//! Configuration of the relay, from the environment.

use std::time::Duration;

use plumbing::config::{BrokerConfig, ConfigError, ServiceConfig, ServiceDefaults, Settings};
use plumbing::config::{duration_or, parse_or};
use plumbing::db::{PoolOptions, SessionLimits};

/// How the relay claims and publishes.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// `RELAY_BATCH_SIZE`: rows claimed and published per cycle, the window of
    /// unconfirmed messages (default 500).
    pub batch_size: i64,
    /// `RELAY_BATCH_WINDOW`: when the last claim did not fill a batch, the next
    /// one starts no sooner than this after it, so that events arriving meanwhile
    /// go out together (default 2ms; 0 claims as soon as possible).
    pub batch_window: Duration,
    /// `RELAY_POLL_INTERVAL`: fallback scan interval when no notification arrives
    /// (default 1s).
    pub poll_interval: Duration,
    /// `RELAY_CLAIM_MAX_IDLE`: a claim's transaction is aborted by the server when
    /// it stays idle this long (a relay whose connection hangs; one that dies loses
    /// its claim at once) (default 30s).
    pub max_idle: Duration,
    /// `RELAY_CONFIRM_TIMEOUT`: longest wait for the broker's confirms of a batch;
    /// unconfirmed rows are released and published again (default 10s).
    pub confirm_timeout: Duration,
    /// `RELAY_MAX_ATTEMPTS`: failed attempts after which a row is blocked and its
    /// aggregate waits for an operator (default 10).
    pub max_attempts: i32,
    /// `RELAY_RETENTION`: how long published rows are kept for replays (default 7d).
    pub retention: Duration,
    /// `RELAY_PURGE_INTERVAL`: how often one relay purges older rows (default 1h).
    pub purge_interval: Duration,
    /// `RELAY_PURGE_BATCH`: rows deleted per statement by the purge (default 1000).
    pub purge_batch: i64,
    /// `RELAY_UNSAFE_MARK_BEFORE_PUBLISH`: BREAKS THE GUARANTEE, for the fault
    /// suite only (default false). Marks each batch published before publishing
    /// it and ignores the broker's answer: the naive at-most-once relay, which
    /// loses events when it dies or the broker fails in between. The fault suite
    /// runs with it to show that its checker reports the loss. Exists only with
    /// the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub unsafe_mark_before_publish: bool,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            batch_window: Duration::from_millis(2),
            poll_interval: Duration::from_secs(1),
            max_idle: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(10),
            max_attempts: 10,
            retention: Duration::from_secs(7 * 86_400),
            purge_interval: Duration::from_secs(3_600),
            purge_batch: 1_000,
            #[cfg(feature = "fault-injection")]
            unsafe_mark_before_publish: false,
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

impl Settings for Config {
    const DEFAULTS: ServiceDefaults = ServiceDefaults {
        database_url: "postgres://postgres@127.0.0.1:5432/orders",
        port: 3335,
        // A claim's transaction has its own idle limit, RELAY_CLAIM_MAX_IDLE
        // (it outlives the publishing of its batch); the session's applies to
        // everything else.
        pool: PoolOptions {
            max_size: 4,
            wait_timeout: Duration::from_secs(5),
            limits: SessionLimits::DEFAULT,
        },
    };
    const VARIABLES: &'static [&'static str] = &[
        BrokerConfig::VARIABLES,
        crate::provision::VARIABLES,
        "\
RELAY_BATCH_SIZE rows claimed and published per cycle, the window of unconfirmed messages (default 500)
RELAY_BATCH_WINDOW after a claim that did not fill a batch, least time before the next one (default 2ms)
RELAY_POLL_INTERVAL scan interval when no notification arrives (default 1s)
RELAY_CLAIM_MAX_IDLE the server aborts a claim idle this long; at least 3 x RELAY_CONFIRM_TIMEOUT (default 30s)
RELAY_CONFIRM_TIMEOUT longest wait for a batch's confirms; unconfirmed rows go out again (default 10s)
RELAY_MAX_ATTEMPTS failed attempts after which a row is blocked until an operator acts (default 10)
RELAY_RETENTION how long published rows are kept for replays (default 7d)
RELAY_PURGE_INTERVAL how often one relay purges older rows (default 1h)
RELAY_PURGE_BATCH rows deleted per statement by the purge (default 1000)",
        #[cfg(feature = "fault-injection")]
        "RELAY_UNSAFE_MARK_BEFORE_PUBLISH BREAKS THE GUARANTEE, for the fault suite only: mark rows published before the broker has them (default false)",
    ];

    fn from_env() -> Result<Self, ConfigError> {
        let d = RelaySettings::default();
        #[cfg(not(feature = "fault-injection"))]
        plumbing::config::ignored_fault_switch("RELAY_UNSAFE_MARK_BEFORE_PUBLISH");
        Ok(Self {
            service: ServiceConfig::from_env(Self::DEFAULTS)?,
            broker: BrokerConfig::from_env()?,
            relay: RelaySettings {
                batch_size: parse_or("RELAY_BATCH_SIZE", d.batch_size)?.clamp(1, 10_000),
                batch_window: duration_or("RELAY_BATCH_WINDOW", d.batch_window)?
                    .min(Duration::from_secs(1)),
                poll_interval: duration_or("RELAY_POLL_INTERVAL", d.poll_interval)?,
                max_idle: duration_or("RELAY_CLAIM_MAX_IDLE", d.max_idle)?
                    .max(Duration::from_secs(1)),
                confirm_timeout: duration_or("RELAY_CONFIRM_TIMEOUT", d.confirm_timeout)?,
                max_attempts: parse_or("RELAY_MAX_ATTEMPTS", d.max_attempts)?.max(1),
                retention: duration_or("RELAY_RETENTION", d.retention)?,
                purge_interval: duration_or("RELAY_PURGE_INTERVAL", d.purge_interval)?
                    .max(Duration::from_secs(1)),
                purge_batch: parse_or("RELAY_PURGE_BATCH", d.purge_batch)?.clamp(1, 100_000),
                #[cfg(feature = "fault-injection")]
                unsafe_mark_before_publish: plumbing::config::fault_switch(
                    "RELAY_UNSAFE_MARK_BEFORE_PUBLISH",
                    "events are marked published before the broker has them",
                )?,
            },
        })
    }

    fn service(&self) -> &ServiceConfig {
        &self.service
    }
}

impl RelaySettings {
    /// Checks that the settings fit together.
    ///
    /// # Errors
    /// [`ConfigError`] when a claim could be aborted by the server while its batch
    /// is still being published: a pipelined claim stays open for up to three
    /// confirm timeouts (publish, confirms, then the next batch's confirms while it
    /// is recorded), so `RELAY_CLAIM_MAX_IDLE` must be at least that.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_idle < self.confirm_timeout * 3 {
            return Err(ConfigError {
                name: "RELAY_CLAIM_MAX_IDLE".into(),
                value: format!("{:?}", self.max_idle),
                reason: format!(
                    "must be at least three times RELAY_CONFIRM_TIMEOUT ({:?}), or a slow \
                     broker would have the database abort claims still being published and \
                     their rows published again",
                    self.confirm_timeout
                ),
            });
        }
        Ok(())
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
            relay: RelaySettings::default(),
        };
        devkit::assert_hides(PASSWORD, &config);
    }

    #[test]
    fn a_claim_must_outlive_its_publishing() {
        assert!(RelaySettings::default().validate().is_ok());
        let too_short = RelaySettings {
            max_idle: Duration::from_secs(20),
            confirm_timeout: Duration::from_secs(10),
            ..RelaySettings::default()
        };
        let err = too_short.validate().unwrap_err();
        assert_eq!(err.name, "RELAY_CLAIM_MAX_IDLE");
    }
}
