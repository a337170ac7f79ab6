//! Work that one replica at a time does (scheduled purges), elected by a
//! session-level advisory lock.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::StoreError;

/// Takes a session-level advisory lock if it is free (for work that one replica at
/// a time should do, such as a scheduled purge). Pair with [`unlock`] on the same
/// session.
///
/// # Errors
/// The driver's error.
pub async fn try_lock(client: &Client, key: i64) -> Result<bool, tokio_postgres::Error> {
    client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .try_get(0)
}

/// Releases a lock taken by [`try_lock`]; a broken session releases it anyway.
pub async fn unlock(client: &Client, key: i64) {
    if let Err(e) = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
    {
        tracing::debug!(error = %e, "advisory unlock failed; the session's end releases it");
    }
}

/// A retention purge: what it deletes, how often, and one run of it. It runs on
/// one replica at a time (see [`every_as_leader`]).
pub struct Purge {
    what: &'static str,
    lock_key: i64,
    interval: Duration,
    run: Box<dyn FnMut(Pool) -> BoxFuture<'static, Result<u64, StoreError>> + Send>,
    purged: Option<Counter>,
}

impl Purge {
    /// A purge described as `what` in logs, run every `interval` by the replica
    /// that holds the advisory lock `lock_key`; `run` deletes what is due and
    /// returns how many rows.
    pub fn new<F, Fut>(what: &'static str, lock_key: i64, interval: Duration, mut run: F) -> Self
    where
        F: FnMut(Pool) -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64, StoreError>> + Send + 'static,
    {
        Self {
            what,
            lock_key,
            interval,
            run: Box::new(move |pool| Box::pin(run(pool))),
            purged: None,
        }
    }

    /// Counts the deleted rows in `purged` (a service's metric).
    #[must_use]
    pub fn counted(mut self, purged: Counter) -> Self {
        self.purged = Some(purged);
        self
    }
}

impl std::fmt::Debug for Purge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Purge")
            .field("what", &self.what)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Runs `purge` every its interval until `shutdown`, on one replica at a time
/// (the one that gets its advisory lock); logs what it did.
pub async fn every_as_leader(pool: Pool, mut purge: Purge, shutdown: CancellationToken) {
    let what = purge.what;
    let mut tick = tokio::time::interval(purge.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, what, "scheduled job skipped: no database connection");
                continue;
            }
        };
        match try_lock(&client, purge.lock_key).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, what, "scheduled job skipped");
                continue;
            }
        }
        match (purge.run)(pool.clone()).await {
            Ok(0) => {}
            Ok(n) => {
                if let Some(purged) = &purge.purged {
                    purged.inc_by(n);
                }
                tracing::info!(n, what, "scheduled job done");
            }
            Err(e) => {
                let e = anyhow::Error::new(e);
                tracing::warn!(error = format!("{e:#}"), what, "scheduled job failed");
            }
        }
        unlock(&client, purge.lock_key).await;
    }
}
