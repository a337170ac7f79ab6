//! The relay's SQL on the outbox: claim, mark published, record failures, release.
//!
//! Rows are claimed by state (`published_at IS NULL`), never by an id cursor: an
//! identity value is handed out at insert time, not at commit time, so a cursor
//! would skip rows whose transaction commits after a higher id was read.
//!
//! A claim is a lease (`locked_until`, computed by the database clock) taken in one
//! short transaction; no transaction stays open while the broker is being talked to.
//! Only the oldest unpublished event of each aggregate is claimable, so events of one
//! order reach the broker in the order they were written, whatever the number of
//! relays, and a failing event holds back its own aggregate only.

use std::time::Duration;

use deadpool_postgres::{Pool, PoolError};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

/// A claimed outbox row, ready to publish.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Outbox id.
    pub id: i64,
    /// Message id (the consumer's deduplication key).
    pub message_id: Uuid,
    /// Aggregate id.
    pub aggregate_id: Uuid,
    /// Event type name.
    pub event_type: String,
    /// Schema version.
    pub schema_version: i32,
    /// Event body.
    pub payload: Value,
    /// Extra headers (trace context, correlation id).
    pub headers: Value,
    /// When the event was written.
    pub created_at: OffsetDateTime,
    /// Failed publish attempts so far.
    pub attempts: i32,
}

/// A database failure of the relay.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had.
    #[error("no database connection")]
    Pool(#[from] PoolError),
    /// A statement failed.
    #[error("outbox query failed")]
    Query(#[from] tokio_postgres::Error),
}

const CLAIM: &str = "
WITH candidates AS (
    SELECT o.id
    FROM outbox o
    WHERE o.published_at IS NULL
      AND (o.locked_until IS NULL OR o.locked_until < now())
      AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
      AND NOT EXISTS (
          SELECT 1 FROM outbox earlier
          WHERE earlier.aggregate_id = o.aggregate_id
            AND earlier.published_at IS NULL
            AND earlier.id < o.id)
    ORDER BY o.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox SET locked_until = now() + $2 * interval '1 millisecond'
FROM candidates
WHERE outbox.id = candidates.id
RETURNING outbox.id, outbox.message_id, outbox.aggregate_id, outbox.event_type,
          outbox.schema_version, outbox.payload, outbox.headers, outbox.created_at,
          outbox.attempts";

/// Claims up to `limit` publishable rows for `lease`, oldest first.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn claim_batch(
    pool: &Pool,
    limit: i64,
    lease: Duration,
) -> Result<Vec<OutboxRow>, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(CLAIM).await?;
    let lease_ms = f64::from(u32::try_from(lease.as_millis()).unwrap_or(u32::MAX));
    let rows = client.query(&statement, &[&limit, &lease_ms]).await?;
    let mut claimed = rows
        .iter()
        .map(|r| {
            Ok(OutboxRow {
                id: r.try_get(0)?,
                message_id: r.try_get(1)?,
                aggregate_id: r.try_get(2)?,
                event_type: r.try_get(3)?,
                schema_version: r.try_get(4)?,
                payload: r.try_get(5)?,
                headers: r.try_get(6)?,
                created_at: r.try_get(7)?,
                attempts: r.try_get(8)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    // RETURNING has no defined order; publish in write order.
    claimed.sort_unstable_by_key(|r| r.id);
    Ok(claimed)
}

/// Marks rows published (after the broker confirmed them) and ends their claim.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn mark_published(pool: &Pool, ids: &[i64]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE outbox SET published_at = now(), locked_until = NULL, last_error = NULL
             WHERE id = ANY($1) AND published_at IS NULL",
        )
        .await?;
    Ok(client.execute(&statement, &[&ids]).await?)
}

/// Records failed publish attempts: one more attempt, the error, and a growing
/// delay before the next try (1 s doubling to 5 min, by the database clock).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn record_failures(pool: &Pool, failures: &[(i64, String)]) -> Result<u64, StoreError> {
    if failures.is_empty() {
        return Ok(0);
    }
    let (ids, errors): (Vec<i64>, Vec<String>) = failures.iter().cloned().unzip();
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE outbox SET attempts = outbox.attempts + 1,
                               last_error = failed.error,
                               locked_until = NULL,
                               next_attempt_at = now() + least(
                                   interval '1 second' * power(2, least(outbox.attempts, 16)),
                                   interval '5 minutes')
             FROM unnest($1::bigint[], $2::text[]) AS failed(id, error)
             WHERE outbox.id = failed.id AND outbox.published_at IS NULL",
        )
        .await?;
    Ok(client.execute(&statement, &[&ids, &errors]).await?)
}

/// Ends the claim on rows that were not published through no fault of their own
/// (the broker connection failed), so that they are retried at once.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn release(pool: &Pool, ids: &[i64]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "UPDATE outbox SET locked_until = NULL WHERE id = ANY($1) AND published_at IS NULL",
        )
        .await?;
    Ok(client.execute(&statement, &[&ids]).await?)
}

/// Checks that the database answers.
///
/// # Errors
/// [`StoreError`] when it does not.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}
