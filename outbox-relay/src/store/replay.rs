//! Replays: which published events are sent again, and the record of each
//! replay run.

use deadpool_postgres::Pool;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{OutboxRow, StoreError};

/// Which published events a replay re-publishes. Every condition is optional;
/// all given ones must hold.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReplayFilter {
    /// Events created at or after this time.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub since: Option<OffsetDateTime>,
    /// Events created before this time.
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub until: Option<OffsetDateTime>,
    /// Events of this aggregate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_id: Option<Uuid>,
    /// Events of this type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Message ids from this one (inclusive; UUIDv7 ids sort by time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_message_id: Option<Uuid>,
    /// Message ids up to this one (inclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_message_id: Option<Uuid>,
}

/// Published (not skipped) events matching `filter` with an outbox id above
/// `after_id`, in write order, at most `limit` (keyset pagination).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn select_published(
    pool: &Pool,
    filter: &ReplayFilter,
    after_id: i64,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(concat!(
            "SELECT ",
            row_columns!(),
            " FROM outbox o
                 WHERE o.published_at IS NOT NULL AND o.skipped_at IS NULL AND o.id > $1
                   AND ($2::timestamptz IS NULL OR o.created_at >= $2)
                   AND ($3::timestamptz IS NULL OR o.created_at < $3)
                   AND ($4::uuid IS NULL OR o.aggregate_id = $4)
                   AND ($5::text IS NULL OR o.event_type = $5)
                   AND ($6::uuid IS NULL OR o.message_id >= $6)
                   AND ($7::uuid IS NULL OR o.message_id <= $7)
                 ORDER BY o.id LIMIT $8"
        ))
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &after_id,
                &filter.since,
                &filter.until,
                &filter.aggregate_id,
                &filter.event_type,
                &filter.from_message_id,
                &filter.to_message_id,
                &limit,
            ],
        )
        .await?;
    rows.iter()
        .map(OutboxRow::from_row)
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(StoreError::from)
}

/// Records the start of a replay; returns its id (sent in the replay header).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn start_replay(
    pool: &Pool,
    filter: &ReplayFilter,
    dry_run: bool,
) -> Result<Uuid, StoreError> {
    let replay_id = Uuid::now_v7();
    let operator = std::env::var("USER").ok();
    let filter = serde_json::to_value(filter).unwrap_or_default();
    pool.get()
        .await?
        .execute(
            "INSERT INTO outbox_replays (replay_id, filter, dry_run, operator) VALUES ($1, $2, $3, $4)",
            &[&replay_id, &filter, &dry_run, &operator],
        )
        .await?;
    Ok(replay_id)
}

/// Records a replay's progress (and its end, when `finished`).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn update_replay(
    pool: &Pool,
    replay_id: Uuid,
    matched: i64,
    published: i64,
    finished: bool,
) -> Result<(), StoreError> {
    pool.get()
        .await?
        .execute(
            "UPDATE outbox_replays SET matched = $2, published = $3,
                    finished_at = CASE WHEN $4 THEN now() END
             WHERE replay_id = $1",
            &[&replay_id, &matched, &published, &finished],
        )
        .await?;
    Ok(())
}

/// A recorded replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplayRecord {
    /// Replay id.
    pub replay_id: Uuid,
    /// When it started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When it finished (none while running, or if it failed).
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// The filter.
    pub filter: Value,
    /// Dry run?
    pub dry_run: bool,
    /// Events matched.
    pub matched: i64,
    /// Events re-published.
    pub published: i64,
    /// Who ran it.
    pub operator: Option<String>,
}

/// The most recent replays, newest first.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn recent_replays(pool: &Pool, limit: i64) -> Result<Vec<ReplayRecord>, StoreError> {
    let rows = pool
        .get()
        .await?
        .query(
            "SELECT replay_id, started_at, finished_at, filter, dry_run, matched, published, operator
             FROM outbox_replays ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ReplayRecord {
                replay_id: r.try_get(0)?,
                started_at: r.try_get(1)?,
                finished_at: r.try_get(2)?,
                filter: r.try_get(3)?,
                dry_run: r.try_get(4)?,
                matched: r.try_get(5)?,
                published: r.try_get(6)?,
                operator: r.try_get(7)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()
        .map_err(StoreError::from)
}
