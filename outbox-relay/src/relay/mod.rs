//! The relay loop: claim a batch, publish it with confirms, mark what was
//! confirmed; wake on notifications, poll as a fallback, back off while the
//! database or the broker is down, purge old rows on a schedule.
//!
//! Draining is pipelined: while the broker confirms batch n and the relay records
//! it (marks, failures) as soon as the confirms are in, batch n+1 is claimed on
//! another connection, so the database and the broker work at the same time.
//! Per-aggregate order is unaffected: a claim that does not yet see batch n's
//! marks sees its rows unpublished and takes no later event of their aggregates.
//!
//! In steady traffic a claim that did not fill its batch is followed by the next
//! one only after `RELAY_BATCH_WINDOW`, so each cycle's fixed cost (a transaction,
//! a claim, a mark) is shared by the events that arrived meanwhile.
//!
//! How a batch's outcomes are written down is in `relay/outcomes.rs`; the deliberately
//! broken mode the fault suite uses, in `relay/marking_first.rs`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use contracts::Topology;
use deadpool_postgres::Pool;
use plumbing::{broker::BrokerError, db::DbConfig, publish::Lost};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "fault-injection")]
mod marking_first;
mod outcomes;

use outcomes::{Marking, Settled};

use crate::{
    config::RelaySettings,
    floor::Floor,
    listener::Listener,
    metrics::RelayMetrics,
    publisher::Publisher,
    store::{self, Claim, StoreError},
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

impl std::ops::AddAssign for BatchReport {
    fn add_assign(&mut self, other: Self) {
        self.claimed += other.claimed;
        self.published += other.published;
        self.rejected += other.rejected;
        self.lost += other.lost;
    }
}

/// Why a cycle could not run.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker could not be reached.
    #[error("broker unavailable")]
    Broker(#[from] BrokerError),
    /// The channel failed while a batch was in flight; its unconfirmed rows are
    /// published again.
    #[error("broker channel lost")]
    Lost(#[from] Lost),
    /// There is no channel although one was just opened (a bug).
    #[error("no broker channel")]
    NoChannel,
    /// The task writing a batch's outcomes down ended without an answer (a bug:
    /// its rows are published again).
    #[error("recording a batch failed")]
    Recording(#[source] tokio::task::JoinError),
}

/// Locks a mutex that only holds plain values (a panic elsewhere cannot leave
/// it inconsistent).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The outbox relay.
pub struct Relay {
    pool: Pool,
    db_config: DbConfig,
    broker_url: String,
    topology: Topology,
    settings: RelaySettings,
    publisher: Option<Publisher>,
    metrics: Arc<RelayMetrics>,
    /// When the last claim started, and whether it filled its batch.
    last_claim: std::sync::Mutex<Option<(Instant, bool)>>,
    /// Where claims start in the unpublished-rows index.
    floor: std::sync::Mutex<Floor>,
    /// The notification session, while [`Relay::run`] runs.
    listener: Option<Listener>,
}

/// Claims in a row that found events, after which the relay counts as busy and
/// pauses its notifications (see [`crate::listener`]): with the default batch
/// window that is about 16 ms of uninterrupted traffic.
const BUSY_AFTER_CLAIMS: u32 = 8;

/// How far apart the two probes that move the claims' floor up are (see
/// [`crate::floor`]); a claim every `RELAY_POLL_INTERVAL` scans from 0.
const FLOOR_SETTLE: Duration = Duration::from_secs(1);

impl Relay {
    /// A relay over `pool` (the orders database) publishing to `broker_url`.
    #[must_use]
    pub fn new(
        pool: Pool,
        db_config: DbConfig,
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
            metrics: Arc::default(),
            last_claim: std::sync::Mutex::new(None),
            floor: std::sync::Mutex::new(Floor::new(FLOOR_SETTLE, settings.poll_interval)),
            listener: None,
        }
    }

    /// The id its claims start at in the unpublished-rows index (see
    /// [`crate::floor`]), except the one full scan every poll interval.
    #[must_use]
    pub fn claim_floor(&self) -> i64 {
        lock(&self.floor).id()
    }

    /// The relay's metrics (shared with the HTTP endpoint).
    #[must_use]
    pub fn metrics(&self) -> Arc<RelayMetrics> {
        self.metrics.clone()
    }

    /// Connects to the broker if there is no working channel.
    ///
    /// # Errors
    /// [`RelayError::Broker`] when the broker cannot be reached.
    pub async fn ensure_publisher(&mut self) -> Result<&Publisher, RelayError> {
        if !self.publisher.as_ref().is_some_and(Publisher::is_connected) {
            self.disconnect().await;
            let publisher = Publisher::connect(&self.broker_url, self.topology.clone())
                .await?
                .observe_confirms(self.metrics.confirm_seconds.clone());
            tracing::info!(exchange = %self.topology.exchange, "connected to the broker");
            self.publisher = Some(publisher);
            self.metrics.broker_connected.set(1);
        }
        self.publisher.as_ref().ok_or(RelayError::NoChannel)
    }

    async fn disconnect(&mut self) {
        self.metrics.broker_connected.set(0);
        if let Some(p) = self.publisher.take() {
            p.close().await;
        }
    }

    async fn claim(&self) -> Result<Claim, StoreError> {
        let not_before = match *self.lock_last_claim() {
            Some((started, false)) => Some(started + self.settings.batch_window),
            _ => None,
        };
        if let Some(at) = not_before {
            tokio::time::sleep_until(at.into()).await;
        }
        let started = Instant::now();
        let plan = lock(&self.floor).plan(started);
        let claim = store::claim_batch(
            &self.pool,
            self.settings.batch_size,
            self.settings.max_idle,
            plan.from_id,
        )
        .await?;
        if plan.probe {
            let (at, from) = (Instant::now(), lock(&self.floor).id());
            match store::lowest_unpublished(&self.pool, from).await {
                Ok(lowest) => lock(&self.floor).probed(at, lowest),
                // The floor stays where it is: claims only do more work.
                Err(e) => {
                    tracing::debug!(error = %e, "cannot probe the outbox's lowest unpublished id");
                }
            }
        }
        *self.lock_last_claim() =
            Some((started, claim.rows.len() as i64 >= self.settings.batch_size));
        self.metrics.claimed.inc_by(claim.rows.len() as u64);
        self.metrics.in_flight.inc_by(claim.rows.len() as i64);
        Ok(claim)
    }

    fn lock_last_claim(&self) -> std::sync::MutexGuard<'_, Option<(Instant, bool)>> {
        lock(&self.last_claim)
    }

    /// One unpipelined cycle: claim a batch, publish it, wait for the confirms,
    /// record the outcomes.
    ///
    /// # Errors
    /// [`RelayError`] when the database or the broker is unavailable; nothing is
    /// marked published that the broker did not confirm.
    pub async fn run_once(&mut self) -> Result<BatchReport, RelayError> {
        // Connect before claiming, so that rows are not locked while the broker is down.
        self.ensure_publisher().await?;
        let claim = self.claim().await?;
        if claim.rows.is_empty() {
            return Ok(BatchReport::default());
        }
        let confirm_timeout = self.settings.confirm_timeout;
        let outcomes = self
            .ensure_publisher()
            .await?
            .publish_batch(&claim.rows, confirm_timeout, &[])
            .await;
        self.record(Settled { claim, outcomes }).await
    }

    /// Runs pipelined cycles until a claim made after every earlier batch was
    /// recorded comes back empty (the backlog is drained, also when one aggregate
    /// has many events waiting), or `shutdown` is cancelled; the batch in flight is
    /// always finished. Returns how many events were published.
    ///
    /// # Errors
    /// As [`Relay::run_once`].
    pub async fn drain(&mut self, shutdown: &CancellationToken) -> Result<usize, RelayError> {
        #[cfg(feature = "fault-injection")]
        if self.settings.unsafe_mark_before_publish {
            return self.drain_marking_first(shutdown).await;
        }
        self.ensure_publisher().await?;
        let mut published = 0;
        let mut batch = self.claim().await?;
        // The previous batch's marks, written in the background.
        let mut marking: Option<Marking> = None;
        // Whether the last claim began after every earlier batch of this drain
        // was marked: only then does an empty claim mean there is nothing left.
        let mut conclusive = true;
        let mut busy_streak = 0;
        loop {
            if batch.rows.is_empty() {
                if let Some(previous) = marking.take() {
                    published += self.marked(previous).await?;
                }
                if conclusive || shutdown.is_cancelled() {
                    return Ok(published);
                }
                // An empty claim made while the previous batch was being marked
                // proves nothing: the next events of its aggregates become
                // claimable once it is. Look again.
                batch = self.claim().await?;
                conclusive = true;
                busy_streak = 0;
                continue;
            }
            busy_streak += 1;
            if busy_streak == BUSY_AFTER_CLAIMS
                && let Some(listener) = self.listener.as_mut()
            {
                listener.pause().await;
            }
            let write_timeout = self.settings.confirm_timeout;
            let in_flight = match self.ensure_publisher().await {
                Ok(publisher) => publisher.start(&batch.rows, &[], write_timeout).await,
                Err(e) => {
                    self.release(Some(batch)).await;
                    if let Some(previous) = marking.take() {
                        let _ = self.marked(previous).await;
                    }
                    return Err(e);
                }
            };
            let more = !shutdown.is_cancelled();
            // While the broker confirms this batch, the next one is claimed on
            // another connection.
            let (outcomes, next) =
                tokio::join!(in_flight.settle(self.settings.confirm_timeout), async {
                    if more { Some(self.claim().await) } else { None }
                });
            // The batch is marked as soon as its confirms are in, in the
            // background, while the next one is published. Per-aggregate order
            // holds: a claim that does not see the marks yet sees the batch's
            // rows unpublished and takes no later event of their aggregates; one
            // that sees them sees events the broker has confirmed.
            let previous = marking.replace(self.mark_in_background(Settled {
                claim: batch,
                outcomes,
            }));
            conclusive = false;
            let failure = match previous {
                Some(previous) => match self.marked(previous).await {
                    Ok(count) => {
                        published += count;
                        None
                    }
                    Err(e) => Some(e),
                },
                None => None,
            };
            batch = match (failure, next) {
                (Some(e), next) => {
                    self.release(next.and_then(Result::ok)).await;
                    if let Some(current) = marking.take() {
                        let _ = self.marked(current).await;
                    }
                    return Err(e);
                }
                (None, Some(Err(e))) => {
                    if let Some(current) = marking.take() {
                        let _ = self.marked(current).await;
                    }
                    return Err(e.into());
                }
                (None, Some(Ok(claim))) => claim,
                (None, None) => {
                    if let Some(current) = marking.take() {
                        published += self.marked(current).await?;
                    }
                    return Ok(published);
                }
            };
        }
    }

    /// Runs until `shutdown`: drains on every notification and poll tick, backs off
    /// (exponential, jittered) while the database or broker is down. A batch in
    /// flight is finished — published, confirmed, marked — before returning.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        self.listener = Some(Listener::new(
            &self.db_config,
            wake.clone(),
            self.metrics.notification_session.clone(),
        ));
        let mut delays = plumbing::backoff::reconnect_delays();
        while !shutdown.is_cancelled() {
            // A session opened now may have missed notifications: the drain
            // below scans anyway.
            if let Some(listener) = self.listener.as_mut() {
                listener.ensure().await;
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
            // Listen again before waiting; what committed while notifications
            // were paused is found by one more scan.
            let resumed = match self.listener.as_mut() {
                Some(listener) => listener.resume().await,
                None => false,
            };
            if resumed {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
            }
        }
        self.listener = None;
        self.disconnect().await;
        tracing::info!("relay stopped");
    }
}
