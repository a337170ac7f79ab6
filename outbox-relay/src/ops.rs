//! Operator commands: status, replay, purge, retry and skip of blocked events.

use std::{fmt::Write as _, time::Duration};

use anyhow::Context as _;
use deadpool_postgres::Pool;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use uuid::Uuid;

use crate::{
    config::Config,
    metrics::RelayMetrics,
    replay::{self, ReplayOptions},
    store::{
        self, BacklogStats, BlockedEvent, ReplayFilter, ReplayRecord, RunningRelay, Selection,
    },
};

/// Connects to the orders database for an operator command (no migrations: the
/// command works on whatever schema the relays maintain; no statement timeout,
/// see [`plumbing::db::PoolOptions::for_operator`]).
///
/// # Errors
/// An invalid URL or an unreachable database.
pub async fn connect(config: &Config) -> anyhow::Result<Pool> {
    let db = plumbing::db::parse_url(config.service.database_url.expose())?;
    let pool = plumbing::db::pool(db, config.service.pool.for_operator())?;
    plumbing::db::ping(&pool)
        .await
        .context("cannot reach the orders database")?;
    Ok(pool)
}

/// Everything `status` shows.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    /// The relays connected to the database.
    pub relays: Vec<RunningRelay>,
    /// Backlog, oldest age, blocked and retrying rows.
    pub outbox: BacklogStats,
    /// Blocked events, oldest first.
    pub blocked: Vec<BlockedEvent>,
    /// Recent replays, newest first.
    pub replays: Vec<ReplayRecord>,
}

/// Reads the status.
///
/// # Errors
/// When the database fails.
pub async fn status(pool: &Pool) -> anyhow::Result<Status> {
    Ok(Status {
        relays: store::running_relays(pool).await?,
        outbox: store::backlog_stats(pool).await?,
        blocked: store::blocked_events(pool, 50).await?,
        replays: store::recent_replays(pool, 10).await?,
    })
}

/// The status as text for a terminal.
#[must_use]
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let polling = s.relays.iter().filter(|r| !r.notification_session).count();
    let _ = writeln!(
        out,
        "relays: {} connected{}",
        s.relays.len(),
        if polling > 0 {
            format!(", {polling} WITHOUT a notification session (they only poll: see their logs)")
        } else {
            String::new()
        }
    );
    for r in &s.relays {
        let _ = writeln!(
            out,
            "  relay {} since {}: {} pooled sessions, {}",
            r.instance,
            rfc3339(r.since),
            r.sessions,
            if r.notification_session {
                "notification session open"
            } else {
                "no notification session: polling only"
            }
        );
    }
    let o = &s.outbox;
    let _ = writeln!(
        out,
        "backlog: {} unpublished events, oldest {:.1}s old ({} waiting to retry after a failure)",
        o.backlog, o.oldest_age_seconds, o.retrying
    );
    let _ = writeln!(
        out,
        "blocked: {} events in {} aggregates",
        o.blocked_rows, o.blocked_aggregates
    );
    for b in &s.blocked {
        let _ = writeln!(
            out,
            "  message {} ({}, outbox id {}) of aggregate {}: {} attempts, blocked {}, {} later events waiting\n    last error: {}",
            b.message_id,
            b.event_type,
            b.id,
            b.aggregate_id,
            b.attempts,
            rfc3339(b.blocked_at),
            b.waiting_behind,
            b.last_error.as_deref().unwrap_or("-"),
        );
    }
    if !s.blocked.is_empty() {
        let _ = writeln!(
            out,
            "  fix the cause, then `outbox-relay retry --message-id <id>` (or `skip --message-id <id> --reason …`)"
        );
    }
    let _ = writeln!(out, "recent replays:");
    if s.replays.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for r in &s.replays {
        let state = match (r.finished_at, r.dry_run) {
            (Some(_), true) => "dry run",
            (Some(_), false) => "finished",
            (None, _) => "unfinished",
        };
        let _ = writeln!(
            out,
            "  {} {} by {}: {} matched, {} re-published ({state}); filter {}",
            rfc3339(r.started_at),
            r.replay_id,
            r.operator.as_deref().unwrap_or("?"),
            r.matched,
            r.published,
            r.filter,
        );
    }
    out
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// `replay`: prints each matching event in a dry run, and a summary.
///
/// # Errors
/// When the database or the broker fails; progress stays recorded.
pub async fn run_replay(
    config: &Config,
    filter: ReplayFilter,
    dry_run: bool,
    rate: Option<f64>,
) -> anyhow::Result<()> {
    if let Some(rate) = rate {
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "--rate must be a positive number of events per second"
        );
    }
    let pool = connect(config).await?;
    let options = ReplayOptions {
        dry_run,
        rate,
        batch: config.relay.batch_size,
        confirm_timeout: config.relay.confirm_timeout,
    };
    // A command's own counters: nothing scrapes them, the summary below reports.
    let metrics = RelayMetrics::default();
    let report = replay::replay(
        &pool,
        config.broker.url.expose(),
        &config.broker.topology(),
        &filter,
        options,
        &metrics,
        |row| {
            if dry_run {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    row.id,
                    row.message_id,
                    row.event_type,
                    row.aggregate_id,
                    rfc3339(row.created_at)
                );
            }
        },
    )
    .await?;
    if dry_run {
        println!(
            "dry run {}: {} events would be re-published",
            report.replay_id, report.matched
        );
    } else {
        println!(
            "replay {}: {} events matched, {} re-published with their original message ids",
            report.replay_id, report.matched, report.published
        );
    }
    Ok(())
}

/// `purge`: deletes published rows older than `older_than`.
///
/// # Errors
/// When the database fails.
pub async fn run_purge(config: &Config, older_than: Duration) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    let client = pool.get().await?;
    let deleted = store::purge_published(&client, older_than, config.relay.purge_batch).await?;
    println!("purged {deleted} published events older than {older_than:?}");
    Ok(())
}

/// The selection of a `retry` or `skip` command.
#[must_use]
pub fn selection(message_id: Option<Uuid>, aggregate_id: Option<Uuid>) -> Selection {
    match (message_id, aggregate_id) {
        (Some(id), _) => Selection::Message(id),
        (None, Some(id)) => Selection::Aggregate(id),
        (None, None) => Selection::All,
    }
}

/// `retry`: unblocks events for another round of attempts.
///
/// # Errors
/// When the database fails.
pub async fn run_retry(config: &Config, selection: Selection) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    let n = store::retry_blocked(&pool, &selection).await?;
    println!("{n} blocked events will be retried");
    Ok(())
}

/// `skip`: gives up on blocked events.
///
/// # Errors
/// When the database fails.
pub async fn run_skip(config: &Config, selection: Selection, reason: &str) -> anyhow::Result<()> {
    let pool = connect(config).await?;
    let n = store::skip_blocked(&pool, &selection, reason).await?;
    println!("{n} blocked events skipped; the events behind them will be published");
    Ok(())
}
