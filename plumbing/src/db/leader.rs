//! Work that one replica at a time does (scheduled purges), elected by a
//! session-level advisory lock.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::Client;

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

/// Runs `job` every `interval` until `shutdown`, on one replica at a time (the one
/// that gets the advisory lock `key`); logs what it did as `what`. For retention
/// purges.
pub async fn every_as_leader<F, Fut>(
    pool: Pool,
    key: i64,
    interval: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    what: &'static str,
    mut job: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    let mut tick = tokio::time::interval(interval);
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
        match try_lock(&client, key).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, what, "scheduled job skipped");
                continue;
            }
        }
        match job().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, what, "scheduled job done"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), what, "scheduled job failed"),
        }
        unlock(&client, key).await;
    }
}
