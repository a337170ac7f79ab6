//! The relay's Prometheus metrics.

use std::sync::atomic::{AtomicI64, AtomicU64};

use deadpool_postgres::Pool;
use futures::future::BoxFuture;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::store::BacklogStats;

/// Why a publish did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// Returned by the broker as unroutable (ack + returned message).
    Returned,
    /// Nacked by the broker.
    Nacked,
    /// The row cannot be published (unknown event type, unencodable payload).
    Invalid,
    /// The channel failed before the confirm; published again later.
    Lost,
}

impl FailureReason {
    /// Every reason (the series start at 0).
    pub const ALL: [FailureReason; 4] = [
        FailureReason::Returned,
        FailureReason::Nacked,
        FailureReason::Invalid,
        FailureReason::Lost,
    ];

    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::Returned => "returned",
            FailureReason::Nacked => "nacked",
            FailureReason::Invalid => "invalid",
            FailureReason::Lost => "lost",
        }
    }
}

impl EncodeLabelValue for FailureReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label set of failure counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    /// Why.
    pub reason: FailureReason,
}

/// Everything the relay counts and measures.
#[derive(Debug)]
pub struct RelayMetrics {
    registry: Registry,
    /// Rows claimed.
    pub claimed: Counter,
    /// Events confirmed by the broker and marked published.
    pub published: Counter,
    /// Publish failures by reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Rows blocked after too many attempts.
    pub blocked: Counter,
    /// Time from an event's creation to the broker's confirm.
    pub commit_to_confirm: Histogram,
    /// Time from a batch's first publish to its last confirm.
    pub confirm_seconds: Histogram,
    /// Events re-published by replays.
    pub replayed: Counter,
    /// Published rows deleted by retention.
    pub purged: Counter,
    /// 1 while the relay has a working broker channel.
    pub broker_connected: Gauge,
    /// 1 while the relay's notification session is open (0: it polls).
    pub notification_session: Gauge,
    backlog: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    blocked_rows: Gauge,
    blocked_aggregates: Gauge,
    /// Rows this relay has claimed and not yet recorded (its claims).
    pub in_flight: Gauge,
    retrying: Gauge<i64, AtomicI64>,
}

impl Default for RelayMetrics {
    /// Creates the metrics and registers them.
    fn default() -> Self {
        let mut registry = Registry::with_prefix("outbox");
        let m = Self {
            claimed: Counter::default(),
            published: Counter::default(),
            failures: Family::default(),
            blocked: Counter::default(),
            commit_to_confirm: plumbing::metrics::latency_histogram(),
            confirm_seconds: plumbing::metrics::latency_histogram(),
            replayed: Counter::default(),
            purged: Counter::default(),
            broker_connected: Gauge::default(),
            notification_session: Gauge::default(),
            backlog: Gauge::default(),
            oldest_age: Gauge::default(),
            blocked_rows: Gauge::default(),
            blocked_aggregates: Gauge::default(),
            in_flight: Gauge::default(),
            retrying: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "claimed",
            "Outbox rows claimed by this relay",
            m.claimed.clone(),
        );
        registry.register(
            "published",
            "Events confirmed by the broker and marked published",
            m.published.clone(),
        );
        registry.register(
            "publish_failures",
            "Publishes that did not succeed, by reason",
            m.failures.clone(),
        );
        registry.register(
            "blocked",
            "Rows blocked after reaching the attempt limit",
            m.blocked.clone(),
        );
        registry.register(
            "commit_to_confirm_seconds",
            "Time from an event's creation to the broker's confirm",
            m.commit_to_confirm.clone(),
        );
        registry.register(
            "confirm_seconds",
            "Time from a batch's first publish to its last broker confirm",
            m.confirm_seconds.clone(),
        );
        registry.register(
            "replayed",
            "Events re-published by replays",
            m.replayed.clone(),
        );
        registry.register(
            "purged",
            "Published rows deleted by retention",
            m.purged.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while the relay has a working broker channel",
            m.broker_connected.clone(),
        );
        registry.register(
            "notification_session",
            "1 while the relay's LISTEN session is open; 0 while it can only poll",
            m.notification_session.clone(),
        );
        registry.register(
            "backlog",
            "Unpublished, unblocked outbox rows",
            m.backlog.clone(),
        );
        registry.register(
            "oldest_unpublished_age_seconds",
            "Age of the oldest unpublished event",
            m.oldest_age.clone(),
        );
        registry.register(
            "blocked_rows",
            "Rows blocked until an operator acts",
            m.blocked_rows.clone(),
        );
        registry.register(
            "blocked_aggregates",
            "Aggregates whose events wait behind a blocked row",
            m.blocked_aggregates.clone(),
        );
        registry.register(
            "in_flight_rows",
            "Rows claimed (locked) by this relay and not yet recorded",
            m.in_flight.clone(),
        );
        registry.register(
            "retrying_rows",
            "Rows waiting for their next attempt after a failure",
            m.retrying.clone(),
        );
        for reason in FailureReason::ALL {
            let _ = m.failures.get_or_create(&FailureLabels { reason });
        }
        Self { registry, ..m }
    }
}

impl RelayMetrics {
    /// Counts a failure.
    pub fn failed(&self, reason: FailureReason) {
        self.failures.get_or_create(&FailureLabels { reason }).inc();
    }

    /// Sets the gauges that describe the whole outbox (read at scrape time).
    pub fn observe_backlog(&self, stats: &BacklogStats) {
        self.backlog.set(stats.backlog);
        self.oldest_age.set(stats.oldest_age_seconds);
        self.blocked_rows.set(stats.blocked_rows);
        self.blocked_aggregates.set(stats.blocked_aggregates);
        self.retrying.set(stats.retrying);
    }
}

/// `/ready` needs a working broker channel; `/metrics` adds the state of the
/// whole outbox, read at scrape time.
impl plumbing::endpoints::Vitals for RelayMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn unready(&self) -> Option<String> {
        (self.broker_connected.get() != 1).then(|| "broker: not connected".to_owned())
    }

    fn refresh<'a>(&'a self, pool: &'a Pool) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            match crate::store::backlog_stats(pool).await {
                Ok(stats) => self.observe_backlog(&stats),
                Err(e) => tracing::warn!(error = %e, "cannot read outbox statistics for /metrics"),
            }
        })
    }
}
