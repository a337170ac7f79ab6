//! What the operator commands read and change: the backlog, the running relays,
//! blocked events and their retry or skip, and the purge of published rows.

use std::time::Duration;

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreError;

/// The state of the outbox as a whole.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BacklogStats {
    /// Unpublished rows that are not blocked.
    pub backlog: i64,
    /// Age in seconds of the oldest unpublished row (0 when none).
    pub oldest_age_seconds: f64,
    /// Blocked rows.
    pub blocked_rows: i64,
    /// Aggregates with a blocked row.
    pub blocked_aggregates: i64,
    /// Rows waiting for their next attempt after a failure.
    pub retrying: i64,
}

/// Counts the backlog, blocked and retrying rows (for `/metrics` and `status`).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn backlog_stats(pool: &Pool) -> Result<BacklogStats, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT count(*) FILTER (WHERE blocked_at IS NULL),
                    coalesce(extract(epoch FROM now() - min(created_at))::float8, 0),
                    count(*) FILTER (WHERE blocked_at IS NOT NULL),
                    count(DISTINCT aggregate_id) FILTER (WHERE blocked_at IS NOT NULL),
                    count(*) FILTER (WHERE next_attempt_at > now() AND blocked_at IS NULL)
             FROM outbox WHERE published_at IS NULL",
        )
        .await?;
    let row = client.query_one(&statement, &[]).await?;
    Ok(BacklogStats {
        backlog: row.try_get(0)?,
        oldest_age_seconds: row.try_get(1)?,
        blocked_rows: row.try_get(2)?,
        blocked_aggregates: row.try_get(3)?,
        retrying: row.try_get(4)?,
    })
}

/// A running relay, as its sessions on the orders database show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunningRelay {
    /// Its instance name (logged when it starts).
    pub instance: String,
    /// Its pooled sessions.
    pub sessions: i64,
    /// Whether it holds a notification session; without one it only polls.
    pub notification_session: bool,
    /// When its oldest session started.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
}

/// The relays connected to this database, oldest first, found by the names of
/// their sessions (`application_name`, see [`crate::listener::session_name`]).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn running_relays(pool: &Pool) -> Result<Vec<RunningRelay>, StoreError> {
    let rows = pool
        .get()
        .await?
        .query(
            "SELECT split_part(substr(application_name, length($1) + 1), '/', 1),
                    count(*) FILTER (WHERE right(application_name, length($2)) <> $2),
                    bool_or(right(application_name, length($2)) = $2),
                    min(backend_start)
             FROM pg_stat_activity
             WHERE datname = current_database() AND starts_with(application_name, $1)
             GROUP BY 1 ORDER BY 4",
            &[
                &crate::listener::SESSION_PREFIX,
                &crate::listener::SESSION_SUFFIX,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(RunningRelay {
                instance: r.try_get(0)?,
                sessions: r.try_get(1)?,
                notification_session: r.try_get(2)?,
                since: r.try_get(3)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(StoreError::from)
}

/// A blocked row, as operators see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BlockedEvent {
    /// Outbox id.
    pub id: i64,
    /// Message id.
    pub message_id: Uuid,
    /// Aggregate id.
    pub aggregate_id: Uuid,
    /// Event type.
    pub event_type: String,
    /// Attempts made.
    pub attempts: i32,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was blocked.
    #[serde(with = "time::serde::rfc3339")]
    pub blocked_at: OffsetDateTime,
    /// Later events of the same aggregate waiting behind it.
    pub waiting_behind: i64,
}

/// The blocked rows, oldest first.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn blocked_events(pool: &Pool, limit: i64) -> Result<Vec<BlockedEvent>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT b.id, b.message_id, b.aggregate_id, b.event_type, b.attempts, b.last_error,
                    b.blocked_at,
                    (SELECT count(*) FROM outbox w
                     WHERE w.aggregate_id = b.aggregate_id AND w.published_at IS NULL AND w.id > b.id)
             FROM outbox b
             WHERE b.published_at IS NULL AND b.blocked_at IS NOT NULL
             ORDER BY b.id LIMIT $1",
            &[&limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(BlockedEvent {
                id: r.try_get(0)?,
                message_id: r.try_get(1)?,
                aggregate_id: r.try_get(2)?,
                event_type: r.try_get(3)?,
                attempts: r.try_get(4)?,
                last_error: r.try_get(5)?,
                blocked_at: r.try_get(6)?,
                waiting_behind: r.try_get(7)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(StoreError::from)
}

/// Which blocked rows an operator acts on.
#[derive(Debug, Clone)]
pub enum Selection {
    /// One event.
    Message(Uuid),
    /// The blocked event of one aggregate.
    Aggregate(Uuid),
    /// Every blocked event.
    All,
}

impl Selection {
    fn params(&self) -> (Option<Uuid>, Option<Uuid>) {
        match self {
            Selection::Message(id) => (Some(*id), None),
            Selection::Aggregate(id) => (None, Some(*id)),
            Selection::All => (None, None),
        }
    }
}

/// Unblocks rows for another round of attempts (after the cause was fixed).
/// Returns how many.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn retry_blocked(pool: &Pool, selection: &Selection) -> Result<u64, StoreError> {
    let (message, aggregate) = selection.params();
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE outbox SET blocked_at = NULL, attempts = 0, next_attempt_at = NULL
             WHERE published_at IS NULL AND blocked_at IS NOT NULL
               AND ($1::uuid IS NULL OR message_id = $1)
               AND ($2::uuid IS NULL OR aggregate_id = $2)",
            &[&message, &aggregate],
        )
        .await?)
}

/// Gives up on blocked rows: they count as done (never published), and the events
/// behind them go out. Returns how many.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn skip_blocked(
    pool: &Pool,
    selection: &Selection,
    reason: &str,
) -> Result<u64, StoreError> {
    let (message, aggregate) = selection.params();
    let client = pool.get().await?;
    Ok(client
        .execute(
            "UPDATE outbox SET skipped_at = now(), published_at = now(),
                               last_error = concat_ws(' | ', last_error, 'skipped: ' || $3)
             WHERE published_at IS NULL AND blocked_at IS NOT NULL
               AND ($1::uuid IS NULL OR message_id = $1)
               AND ($2::uuid IS NULL OR aggregate_id = $2)",
            &[&message, &aggregate, &reason],
        )
        .await?)
}

/// Deletes published rows older than `older_than`, `batch` rows per statement so
/// that no statement holds many locks or runs long. Returns how many were deleted.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn purge_published(
    client: &tokio_postgres::Client,
    older_than: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    plumbing::db::purge_in_batches(
        client,
        "DELETE FROM outbox WHERE id IN (
             SELECT id FROM outbox
             WHERE published_at IS NOT NULL
               AND published_at < now() - $1 * interval '1 second'
             ORDER BY id
             LIMIT $2)",
        older_than,
        batch,
    )
    .await
}
