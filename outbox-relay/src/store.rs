//! The relay's SQL on the outbox: claim, mark published, record failures.
//!
//! Rows are claimed by state (`published_at IS NULL`), never by an id cursor: an
//! identity value is handed out at insert time, not at commit time, so a cursor
//! would skip rows whose transaction commits after a higher id was read.
//!
//! A claim is a transaction that holds row locks (`FOR UPDATE SKIP LOCKED`) on one
//! batch while the batch is published, and commits the marks as soon as the
//! broker's confirms are in: bounded by the confirm timeout, typically a few
//! milliseconds. Other relays skip the locked rows. A relay that dies loses its
//! claim at once (its connection closes and the transaction rolls back), or, if its
//! connection hangs, after `idle_in_transaction_session_timeout`. Compared with a
//! lease column this halves the writes per event (no claim update), measured 1.7×
//! fewer database seconds per event.
//!
//! Only the oldest unpublished event of each aggregate is claimable, so events of
//! one order reach the broker in the order they were written, whatever the number of
//! relays, and a failing event holds back its own aggregate only.

use std::time::Duration;

use deadpool_postgres::{Object, Pool};
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
    /// Event body: the JSON text as stored, sent as it is.
    pub payload: String,
    /// Extra headers (trace context, correlation id).
    pub headers: Value,
    /// When the event was written.
    pub created_at: OffsetDateTime,
    /// Failed publish attempts so far.
    pub attempts: i32,
}

/// The columns [`OutboxRow::from_row`] reads, in its order, of `outbox o`.
macro_rules! row_columns {
    () => {
        "o.id, o.message_id, o.aggregate_id, o.event_type, o.schema_version, \
         o.payload::text, o.headers, o.created_at, o.attempts"
    };
}

impl OutboxRow {
    /// Reads a row selected with `row_columns!()`.
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
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
    }
}

/// A database failure of the relay: the store error every service has.
pub use plumbing::db::StoreError;

/// A claim used after it was finished (a bug).
fn finished() -> StoreError {
    StoreError::invariant("the claim was already finished")
}

const CLAIM: &str = concat!(
    "SELECT ",
    row_columns!(),
    "
FROM outbox o
WHERE o.published_at IS NULL
  AND o.id >= $2
  AND o.blocked_at IS NULL
  AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
  AND NOT EXISTS (
      SELECT 1 FROM outbox earlier
      WHERE earlier.aggregate_id = o.aggregate_id
        AND earlier.published_at IS NULL
        AND earlier.id < o.id
      -- Keeps the check a per-row probe, never an anti-join (see claim_batch).
      OFFSET 0)
ORDER BY o.id
LIMIT $1
FOR UPDATE OF o SKIP LOCKED"
);

/// `published_at` is the moment of the mark, after the broker's confirm
/// (`clock_timestamp()`, not `now()`, which is when the claim began), so that
/// `published_at - created_at` bounds commit→publish from above.
const MARK_PUBLISHED: &str =
    "UPDATE outbox SET published_at = clock_timestamp(), last_error = NULL WHERE id = ANY($1)";

const RECORD_FAILURES: &str = "
UPDATE outbox SET attempts = outbox.attempts + 1,
                  last_error = failed.error,
                  next_attempt_at = now() + least(
                      interval '1 second' * power(2, least(outbox.attempts, 16)),
                      interval '5 minutes'),
                  blocked_at = CASE WHEN outbox.attempts + 1 >= $3 THEN now() END
FROM unnest($1::bigint[], $2::text[]) AS failed(id, error)
WHERE outbox.id = failed.id
RETURNING outbox.id, outbox.message_id, outbox.aggregate_id, outbox.blocked_at IS NOT NULL";

/// A batch of rows locked by this relay, in an open transaction on its own
/// connection. [`Claim::finish`] writes the outcomes and commits; dropping it
/// unfinished closes the connection, which rolls back and frees the rows at once.
pub struct Claim {
    client: Option<Object>,
    /// The claimed rows, oldest first.
    pub rows: Vec<OutboxRow>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("rows", &self.rows.len())
            .finish()
    }
}

/// A row that reached the attempt limit.
#[derive(Debug, Clone)]
pub struct Blocked {
    /// Outbox id.
    pub id: i64,
    /// Message id.
    pub message_id: Uuid,
    /// The aggregate that now waits.
    pub aggregate_id: Uuid,
}

/// Claims up to `limit` publishable rows with an id of at least `from_id`, oldest
/// first. The claim's transaction is aborted by the server if it stays idle
/// longer than `max_idle` (a relay whose connection hangs must not hold rows
/// forever).
///
/// `from_id` only saves work: the scan of the unpublished-rows index starts
/// there instead of walking the entries of rows marked published that VACUUM
/// has not removed yet. 0 scans everything; a higher value must come from
/// [`lowest_unpublished`] (see [`crate::floor`]).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn claim_batch(
    pool: &Pool,
    limit: i64,
    max_idle: Duration,
    from_id: i64,
) -> Result<Claim, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(CLAIM).await?;
    // Owned by the claim before BEGIN: if anything below fails, dropping the claim
    // closes the connection instead of pooling one with an open transaction.
    let mut claim = Claim {
        client: Some(client),
        rows: Vec::new(),
    };
    // One round trip for all four; SET LOCAL ends with the transaction. The
    // server's setting is an int of milliseconds: at most about 24 days.
    //
    // The claim has one good plan whatever the statistics say, and the server
    // is held to it, so the prepared statement's generic plan is that plan and
    // no claim is planned again:
    // - the per-aggregate check stays a subquery probed through
    //   `outbox_unpublished_by_aggregate` for each candidate (`OFFSET 0` keeps
    //   it from becoming an anti-join). The anti-join plan, chosen while the
    //   outbox was nearly empty and kept once a backlog built up, checked each
    //   candidate against every unpublished row: 1.8 s per claim with 15,000
    //   rows waiting, 5.2 s in a plain EXPLAIN;
    // - candidates come from a plain index scan of `outbox_unpublished`, never a
    //   bitmap or sequential scan. A plain scan marks the index entries of rows
    //   marked published as dead the first time it meets them, so later claims
    //   skip them without visiting the table. A bitmap scan (what the planner
    //   picks for a small LIMIT once the table has grown) visits the table for
    //   every published row still in the index on every claim: in steady
    //   traffic with autovacuum behind, 2.8 ms per claim after 15 s, growing,
    //   against 0.2 ms.
    let max_idle_ms = max_idle.as_millis().clamp(1, i32::MAX as u128);
    let begin = format!(
        "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {max_idle_ms}; \
         SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off"
    );
    let client = claim.client()?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&limit, &from_id];
    // Sent together, answered in order: one round trip for the transaction's
    // start and the claim. Should BEGIN fail, the error is returned and the rows
    // are never used (dropping the claim closes the connection).
    let (begun, rows) = tokio::join!(
        client.batch_execute(&begin),
        client.query(&statement, &params)
    );
    begun?;
    let rows = rows?;
    claim.rows = rows
        .iter()
        .map(OutboxRow::from_row)
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    if claim.rows.is_empty() {
        // Nothing locked: end the transaction now rather than hold a connection.
        claim.finish(&[], &[], 1).await?;
        return Ok(Claim::empty());
    }
    Ok(claim)
}

impl Claim {
    /// A claim of nothing.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            client: None,
            rows: Vec::new(),
        }
    }

    fn client(&self) -> Result<&Object, StoreError> {
        self.client.as_ref().ok_or_else(finished)
    }

    /// Marks `confirmed` rows published and records `failures` (one more attempt,
    /// the error, a growing delay of 1 s doubling to 5 min by the database clock; a
    /// row reaching `max_attempts` is blocked, and with it the later events of its
    /// aggregate, until an operator retries or skips it), then commits. Rows in
    /// neither list (lost with the channel) are simply unlocked. Returns the rows
    /// this call blocked.
    ///
    /// # Errors
    /// [`StoreError`] when the database fails: nothing is marked then, and the rows
    /// are published again later (a duplicate the consumer skips, never a loss).
    pub async fn finish(
        mut self,
        confirmed: &[i64],
        failures: &[(i64, String)],
        max_attempts: i32,
    ) -> Result<Vec<Blocked>, StoreError> {
        let Some(client) = self.client.take() else {
            return if confirmed.is_empty() && failures.is_empty() {
                Ok(Vec::new())
            } else {
                Err(finished())
            };
        };
        let result = async {
            let mark = match confirmed {
                [] => None,
                _ => Some(client.prepare_cached(MARK_PUBLISHED).await?),
            };
            let record = match failures {
                [] => None,
                _ => Some(client.prepare_cached(RECORD_FAILURES).await?),
            };
            let (ids, errors): (Vec<i64>, Vec<String>) = failures.iter().cloned().unzip();
            // Sent together, answered in order: one round trip for the writes and
            // the COMMIT. A statement that fails aborts the transaction; the
            // COMMIT behind it then only ends it (the server answers ROLLBACK),
            // nothing is written, and the statement's error is returned.
            let (marked, recorded, committed) = tokio::join!(
                async {
                    match &mark {
                        Some(mark) => client.execute(mark, &[&confirmed]).await.map(Some),
                        None => Ok(None),
                    }
                },
                async {
                    match &record {
                        Some(record) => client
                            .query(record, &[&ids, &errors, &max_attempts])
                            .await
                            .map(Some),
                        None => Ok(None),
                    }
                },
                client.batch_execute("COMMIT"),
            );
            marked?;
            let recorded = recorded?;
            committed?;
            let mut blocked = Vec::new();
            for row in recorded.unwrap_or_default() {
                if row.try_get::<_, bool>(3)? {
                    blocked.push(Blocked {
                        id: row.try_get(0)?,
                        message_id: row.try_get(1)?,
                        aggregate_id: row.try_get(2)?,
                    });
                }
            }
            Ok::<_, StoreError>(blocked)
        }
        .await;
        if result.is_err() {
            // The transaction may still be open: do not return the connection to
            // the pool; closing it rolls back.
            drop(Object::take(client));
        }
        result
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Unfinished (a failure or a crash being simulated): close the
            // connection instead of pooling it, so the server rolls back.
            drop(Object::take(client));
        }
    }
}

/// The lowest id an unpublished row has among ids of at least `from_id` (blocked,
/// retrying and claimed rows included), or, when there is none, the id after
/// the highest: where a claim may start scanning, as seen now. Rows still being
/// written may get lower ids; [`crate::floor`] waits for them.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn lowest_unpublished(pool: &Pool, from_id: i64) -> Result<i64, StoreError> {
    // Not a cached statement: planned afresh each time (once a second), so a
    // generic plan made while the outbox was tiny (a sequential scan) cannot
    // stick once it is large. Planned with the actual bound, `min(id)` is one
    // descent of the unpublished-rows index.
    Ok(pool
        .get()
        .await?
        .query_one(
            "SELECT coalesce(
                 (SELECT min(id) FROM outbox WHERE published_at IS NULL AND id >= $1),
                 (SELECT max(id) + 1 FROM outbox),
                 $1)",
            &[&from_id],
        )
        .await?
        .try_get(0)?)
}

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
