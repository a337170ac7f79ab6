//! The relay loop: claim a batch, publish it with confirms, mark what was
//! confirmed; wake on notifications, poll as a fallback, back off while the
//! database or the broker is down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use contracts::Topology;
use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tokio_postgres::Config as PgConfig;
use tokio_util::sync::CancellationToken;

use crate::{
    config::RelaySettings,
    listener::Listener,
    publisher::{Outcome, Publisher},
    store::{self, StoreError},
};

/// What one cycle did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows confirmed by the broker and marked published.
    pub published: usize,
    /// Rows the broker refused (attempt recorded).
    pub rejected: usize,
    /// Rows whose fate is unknown because the channel failed (released for retry).
    pub lost: usize,
}

/// Why a cycle could not run.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker could not be reached or the channel failed.
    #[error("broker unavailable: {0}")]
    Broker(String),
}

/// State shared with the health endpoint.
#[derive(Debug, Default)]
pub struct RelayHealth {
    broker_connected: AtomicBool,
}

impl RelayHealth {
    /// Whether the relay currently has a working broker channel.
    #[must_use]
    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }
}

/// The outbox relay.
pub struct Relay {
    pool: Pool,
    db_config: PgConfig,
    broker_url: String,
    topology: Topology,
    settings: RelaySettings,
    publisher: Option<Publisher>,
    health: Arc<RelayHealth>,
}

impl Relay {
    /// A relay over `pool` (the orders database) publishing to `broker_url`.
    #[must_use]
    pub fn new(
        pool: Pool,
        db_config: PgConfig,
        broker_url: String,
        topology: Topology,
        settings: RelaySettings,
    ) -> Self {
        Self {
            pool,
            db_config,
            broker_url,
            topology,
            settings,
            publisher: None,
            health: Arc::default(),
        }
    }

    /// State for the health endpoint.
    #[must_use]
    pub fn health(&self) -> Arc<RelayHealth> {
        self.health.clone()
    }

    /// The pool the relay reads the outbox through.
    #[must_use]
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Connects to the broker if there is no working channel.
    ///
    /// # Errors
    /// [`RelayError::Broker`] when the broker cannot be reached.
    pub async fn ensure_publisher(&mut self) -> Result<&Publisher, RelayError> {
        if !self.publisher.as_ref().is_some_and(Publisher::is_connected) {
            self.health.broker_connected.store(false, Ordering::Relaxed);
            self.publisher = None;
            let publisher = Publisher::connect(&self.broker_url, self.topology.clone())
                .await
                .map_err(|e| RelayError::Broker(e.to_string()))?;
            tracing::info!(exchange = %self.topology.exchange, "connected to the broker");
            self.publisher = Some(publisher);
            self.health.broker_connected.store(true, Ordering::Relaxed);
        }
        self.publisher
            .as_ref()
            .ok_or_else(|| RelayError::Broker("no channel".into()))
    }

    /// One cycle: claim a batch, publish it, mark the confirmed rows, record the
    /// refused ones and release the lost ones.
    ///
    /// # Errors
    /// [`RelayError`] when the database or the broker is unavailable; nothing is
    /// marked published that the broker did not confirm.
    pub async fn run_once(&mut self) -> Result<BatchReport, RelayError> {
        let confirm_timeout = self.settings.confirm_timeout;
        // Connect before claiming, so that rows are not leased while the broker is down.
        self.ensure_publisher().await?;
        let rows =
            store::claim_batch(&self.pool, self.settings.batch_size, self.settings.lease).await?;
        if rows.is_empty() {
            return Ok(BatchReport::default());
        }
        let publisher = self.ensure_publisher().await?;
        let outcomes = publisher.publish_batch(&rows, confirm_timeout, &[]).await;

        let mut confirmed = Vec::new();
        let mut rejected = Vec::new();
        let mut lost = Vec::new();
        let mut lost_reason = None;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Confirmed => confirmed.push(row.id),
                Outcome::Rejected(reason) => {
                    tracing::warn!(outbox_id = row.id, message_id = %row.message_id, attempts = row.attempts + 1, reason, "broker refused event");
                    rejected.push((row.id, reason));
                }
                Outcome::Lost(reason) => {
                    lost.push(row.id);
                    lost_reason.get_or_insert(reason);
                }
            }
        }
        let report = BatchReport {
            claimed: rows.len(),
            published: confirmed.len(),
            rejected: rejected.len(),
            lost: lost.len(),
        };
        // If marking fails, the rows stay claimed until their lease ends and are
        // published again: a duplicate that the consumer skips, never a loss.
        store::mark_published(&self.pool, &confirmed).await?;
        store::record_failures(&self.pool, &rejected).await?;
        if let Some(reason) = lost_reason {
            // The channel is broken: drop it, give the rows back, reconnect next cycle.
            self.health.broker_connected.store(false, Ordering::Relaxed);
            if let Some(p) = self.publisher.take() {
                p.close().await;
            }
            // If releasing fails too, the lease runs out and another cycle takes them.
            if let Err(e) = store::release(&self.pool, &lost).await {
                tracing::warn!(error = %e, "could not release unconfirmed rows; they return when their lease ends");
            }
            return Err(RelayError::Broker(reason));
        }
        tracing::debug!(?report, "batch done");
        Ok(report)
    }

    /// Runs cycles until a batch comes back less than full (the backlog is drained).
    ///
    /// # Errors
    /// As [`Relay::run_once`].
    pub async fn drain(&mut self, shutdown: &CancellationToken) -> Result<usize, RelayError> {
        let mut published = 0;
        loop {
            let report = self.run_once().await?;
            published += report.published;
            let full =
                i64::try_from(report.claimed).unwrap_or(i64::MAX) >= self.settings.batch_size;
            if !full || shutdown.is_cancelled() {
                return Ok(published);
            }
        }
    }

    /// Runs until `shutdown`: drains on every notification and poll tick, backs off
    /// (exponential, jittered) while the database or broker is down. A batch in
    /// flight is finished — published, confirmed, marked — before returning.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let mut listener: Option<Listener> = None;
        let mut delays = plumbing::backoff::reconnect_delays();
        while !shutdown.is_cancelled() {
            if !listener.as_ref().is_some_and(Listener::is_alive) {
                listener = match Listener::start(
                    &self.db_config,
                    plumbing::db::OUTBOX_CHANNEL,
                    wake.clone(),
                )
                .await
                {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot listen for notifications; polling");
                        None
                    }
                };
            }
            match self.drain(&shutdown).await {
                Ok(published) => {
                    if published > 0 {
                        tracing::debug!(published, "drained");
                    }
                    delays = plumbing::backoff::reconnect_delays();
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, cause = %plumbing::telemetry::error_chain(&e), retry_in = ?delay, "relay cycle failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        if let Some(p) = self.publisher.take() {
            p.close().await;
        }
        tracing::info!("relay stopped");
    }
}
