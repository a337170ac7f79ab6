//! Replay: re-publish already-published events, for recovery after the broker lost
//! messages (a queue deleted, a node restored from an old backup).
//!
//! Replayed messages keep their original message ids, so the invoices worker skips
//! the ones it already handled; they carry an `x-replay` header with the replay's
//! id. A replay only reads published rows and uses its own channel, so it is safe
//! while relays run. Every run is recorded in `outbox_replays`.

use std::time::{Duration, Instant};

use contracts::{Topology, headers};
use deadpool_postgres::Pool;
use plumbing::{broker::BrokerError, publish::Unconfirmed};
use uuid::Uuid;

use crate::{
    metrics::RelayMetrics,
    publisher::Publisher,
    store::{self, OutboxRow, ReplayFilter, StoreError},
};

/// How a replay runs.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Only list what would be re-published.
    pub dry_run: bool,
    /// Most events per second (none: as fast as confirms allow).
    pub rate: Option<f64>,
    /// Events read and published per round.
    pub batch: i64,
    /// Longest wait for one round's confirms.
    pub confirm_timeout: Duration,
}

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// The replay's id (in `outbox_replays` and the `x-replay` header).
    pub replay_id: Uuid,
    /// Events that matched the filter.
    pub matched: i64,
    /// Events re-published and confirmed.
    pub published: i64,
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker could not be reached.
    #[error("broker unavailable")]
    Broker(#[from] BrokerError),
    /// The broker did not confirm an event; the replay stopped there.
    #[error(
        "replay {replay_id} stopped: {published} events were re-published, then event {message_id} \
         (outbox id {outbox_id}) was not confirmed"
    )]
    NotConfirmed {
        /// The replay.
        replay_id: Uuid,
        /// The event that failed.
        message_id: Uuid,
        /// Its outbox id.
        outbox_id: i64,
        /// Why.
        #[source]
        reason: Unconfirmed,
        /// Events confirmed before it.
        published: i64,
    },
}

/// Runs a replay; `on_event` sees every matching event (a dry run prints them).
/// Each event the broker confirms is counted in `metrics.replayed`.
///
/// # Errors
/// [`ReplayError`]; what was re-published before the error stays recorded.
pub async fn replay(
    pool: &Pool,
    broker_url: &str,
    topology: &Topology,
    filter: &ReplayFilter,
    options: ReplayOptions,
    metrics: &RelayMetrics,
    mut on_event: impl FnMut(&OutboxRow),
) -> Result<ReplayReport, ReplayError> {
    let replay_id = store::start_replay(pool, filter, options.dry_run).await?;
    let publisher = if options.dry_run {
        None
    } else {
        Some(Publisher::connect(broker_url, topology.clone()).await?)
    };
    let marker = [(headers::REPLAY, replay_id.to_string())];
    let started = Instant::now();
    let (mut matched, mut published, mut after_id) = (0_i64, 0_i64, 0_i64);
    loop {
        let rows = store::select_published(pool, filter, after_id, options.batch).await?;
        let Some(last) = rows.last() else { break };
        after_id = last.id;
        // Under a rate cap, publish in small steps so that the pace is even.
        let step = options
            .rate
            .map_or(rows.len(), |r| (r / 10.0).clamp(1.0, 1e6) as usize);
        for chunk in rows.chunks(step.max(1)) {
            matched += chunk.len() as i64;
            chunk.iter().for_each(&mut on_event);
            if let Some(publisher) = &publisher {
                let outcomes = publisher
                    .publish_batch(chunk, options.confirm_timeout, &marker)
                    .await;
                for (row, outcome) in chunk.iter().zip(outcomes) {
                    match outcome.into_result() {
                        Ok(()) => {
                            published += 1;
                            metrics.replayed.inc();
                        }
                        Err(reason) => {
                            store::update_replay(pool, replay_id, matched, published, false)
                                .await?;
                            return Err(ReplayError::NotConfirmed {
                                replay_id,
                                message_id: row.message_id,
                                outbox_id: row.id,
                                reason,
                                published,
                            });
                        }
                    }
                }
                if let Some(rate) = options.rate {
                    let due = Duration::try_from_secs_f64(published as f64 / rate)
                        .unwrap_or(Duration::MAX);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        store::update_replay(pool, replay_id, matched, published, false).await?;
    }
    store::update_replay(pool, replay_id, matched, published, true).await?;
    if let Some(p) = publisher {
        p.close().await;
    }
    Ok(ReplayReport {
        replay_id,
        matched,
        published,
    })
}
