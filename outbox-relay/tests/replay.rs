//! Replays: which published events an operator's filter picks (by time, by
//! aggregate, by type), the pace `--rate` keeps, and the `outbox-relay replay`
//! command that drives them.

#![allow(clippy::unwrap_used)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use devkit::{broker::TestBroker, db::TestDatabase, eventually};
use lapin::message::Delivery;
use outbox_relay::{
    metrics::RelayMetrics,
    replay::{ReplayOptions, ReplayReport, replay},
    store::ReplayFilter,
};
use plumbing::db::Database;
use time::{OffsetDateTime, format_description::well_known::Rfc3339, macros::datetime};
use tokio::sync::mpsc::UnboundedReceiver;
use uuid::Uuid;

/// The events every test starts from, written as published (or not).
struct History {
    /// Aggregate with three published events and one unpublished.
    a: Uuid,
    /// Aggregate with one published event of a type the relay cannot route.
    b: Uuid,
    /// B, `OrderShipped`, 09:00: no routing key, so a replay that picks it fails.
    shipped: Uuid,
    /// A, 10:00.
    a1: Uuid,
    /// B, 11:00.
    b1: Uuid,
    /// A, 12:00.
    a2: Uuid,
    /// A, 13:00.
    a3: Uuid,
}

struct Fixture {
    db: TestDatabase,
    broker: TestBroker,
    tap: UnboundedReceiver<Delivery>,
    history: History,
}

impl Fixture {
    async fn new() -> Self {
        let db = TestDatabase::migrated("replay", Database::Orders).await;
        let broker = TestBroker::new();
        broker.declare().await;
        let tap = broker.tap().await;
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let history = History {
            a,
            b,
            shipped: insert(
                &db,
                b,
                "OrderShipped",
                datetime!(2026-01-01 09:00 UTC),
                true,
            )
            .await,
            a1: insert(
                &db,
                a,
                "OrderCreated",
                datetime!(2026-01-01 10:00 UTC),
                true,
            )
            .await,
            b1: insert(
                &db,
                b,
                "OrderCreated",
                datetime!(2026-01-01 11:00 UTC),
                true,
            )
            .await,
            a2: insert(
                &db,
                a,
                "OrderCreated",
                datetime!(2026-01-01 12:00 UTC),
                true,
            )
            .await,
            a3: insert(
                &db,
                a,
                "OrderCreated",
                datetime!(2026-01-01 13:00 UTC),
                true,
            )
            .await,
        };
        // Never published: a replay must not pick it, whatever the filter.
        insert(
            &db,
            a,
            "OrderCreated",
            datetime!(2026-01-01 12:30 UTC),
            false,
        )
        .await;
        Self {
            db,
            broker,
            tap,
            history,
        }
    }

    /// Replays `filter`; returns the report and the replayed-events counter.
    async fn replay(&self, filter: &ReplayFilter, dry_run: bool) -> (ReplayReport, u64) {
        let metrics = RelayMetrics::default();
        let options = ReplayOptions {
            dry_run,
            rate: None,
            batch: 2,
            confirm_timeout: Duration::from_secs(5),
        };
        let report = replay(
            &self.db.pool(),
            &self.broker.url,
            &self.broker.topology,
            filter,
            options,
            &metrics,
            |_| {},
        )
        .await
        .unwrap();
        (report, metrics.replayed.get())
    }

    /// Everything published to the exchange since the last call, in order, as
    /// (message id, replay id): a marker published now ends the list.
    async fn received(&mut self) -> Vec<(Uuid, Option<String>)> {
        let marker = self.broker.publish_marker().await;
        let mut got = Vec::new();
        loop {
            let d = tokio::time::timeout(Duration::from_secs(5), self.tap.recv())
                .await
                .expect("the marker did not arrive")
                .unwrap();
            let id = d.properties.message_id().clone().unwrap().to_string();
            if id == marker {
                return got;
            }
            let replay = plumbing::broker::header_str(&d.properties, contracts::headers::REPLAY)
                .map(str::to_owned);
            got.push((id.parse().unwrap(), replay));
        }
    }

    /// Asserts that the replay of `filter` re-published exactly `expected`, in
    /// that order, each marked with the replay's id, and counted each.
    async fn assert_replays(&mut self, filter: &ReplayFilter, expected: &[Uuid]) {
        let (report, replayed) = self.replay(filter, false).await;
        let n = i64::try_from(expected.len()).unwrap();
        assert_eq!((report.matched, report.published), (n, n), "{filter:?}");
        assert_eq!(replayed, expected.len() as u64, "the replayed counter");
        let marker = report.replay_id.to_string();
        let got = self.received().await;
        assert_eq!(
            got,
            expected
                .iter()
                .map(|id| (*id, Some(marker.clone())))
                .collect::<Vec<_>>(),
            "{filter:?}"
        );
    }
}

/// Writes an event of `aggregate` created at `created_at`, published or not;
/// returns its message id.
async fn insert(
    db: &TestDatabase,
    aggregate: Uuid,
    event_type: &str,
    created_at: OffsetDateTime,
    published: bool,
) -> Uuid {
    let message_id = Uuid::now_v7();
    db.client()
        .await
        .execute(
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version,
                                 payload, created_at, published_at)
             VALUES ($1, 'order', $2, $3, 1, '{}', $4::timestamptz, CASE WHEN $5 THEN $4::timestamptz + interval '1 second' END)",
            &[&message_id, &aggregate, &event_type, &created_at, &published],
        )
        .await
        .unwrap();
    message_id
}

#[tokio::test]
async fn a_replay_by_time_takes_events_from_since_up_to_until() {
    let mut f = Fixture::new().await;
    let h = &f.history;
    let expected = [h.b1, h.a2];

    // `since` is inclusive, `until` exclusive; the unpublished 12:30 event stays out.
    let filter = ReplayFilter {
        since: Some(datetime!(2026-01-01 11:00 UTC)),
        until: Some(datetime!(2026-01-01 13:00 UTC)),
        ..ReplayFilter::default()
    };

    f.assert_replays(&filter, &expected).await;
}

#[tokio::test]
async fn a_replay_by_aggregate_takes_that_aggregates_published_events_in_order() {
    let mut f = Fixture::new().await;
    let h = &f.history;
    let expected = [h.a1, h.a2, h.a3];
    let filter = ReplayFilter {
        aggregate_id: Some(h.a),
        ..ReplayFilter::default()
    };

    f.assert_replays(&filter, &expected).await;
}

#[tokio::test]
async fn a_replay_by_type_takes_only_that_type() {
    let mut f = Fixture::new().await;
    let h = &f.history;
    let expected = [h.a1, h.b1, h.a2, h.a3];
    let (shipped, b) = (h.shipped, h.b);

    // `OrderShipped` has no route: picking it would stop the replay with an error.
    f.assert_replays(
        &ReplayFilter {
            event_type: Some("OrderCreated".into()),
            ..ReplayFilter::default()
        },
        &expected,
    )
    .await;

    // A dry run of the other type lists it and publishes nothing.
    let mut listed = Vec::new();
    let metrics = RelayMetrics::default();
    let filter = ReplayFilter {
        event_type: Some("OrderShipped".into()),
        ..ReplayFilter::default()
    };
    let report = replay(
        &f.db.pool(),
        &f.broker.url,
        &f.broker.topology,
        &filter,
        ReplayOptions {
            dry_run: true,
            rate: None,
            batch: 10,
            confirm_timeout: Duration::from_secs(5),
        },
        &metrics,
        |row| listed.push((row.message_id, row.aggregate_id)),
    )
    .await
    .unwrap();
    assert_eq!(listed, vec![(shipped, b)]);
    assert_eq!((report.matched, report.published), (1, 0));
    assert_eq!(metrics.replayed.get(), 0);
    assert!(f.received().await.is_empty(), "a dry run publishes nothing");
}

#[tokio::test]
async fn a_replay_under_a_rate_keeps_its_pace() {
    const EVENTS: usize = 30;
    const RATE: f64 = 60.0;
    let f = Fixture::new().await;
    f.db.client()
        .await
        .execute("DELETE FROM outbox", &[])
        .await
        .unwrap();
    for _ in 0..EVENTS {
        insert(
            &f.db,
            Uuid::now_v7(),
            "OrderCreated",
            OffsetDateTime::now_utc(),
            true,
        )
        .await;
    }
    // When each message reaches the tap.
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut tap = f.broker.tap().await;
    let recorder = tokio::spawn({
        let arrivals = arrivals.clone();
        async move {
            while tap.recv().await.is_some() {
                arrivals.lock().unwrap().push(Instant::now());
            }
        }
    });
    let metrics = RelayMetrics::default();

    let started = Instant::now();
    let report = replay(
        &f.db.pool(),
        &f.broker.url,
        &f.broker.topology,
        &ReplayFilter::default(),
        ReplayOptions {
            dry_run: false,
            rate: Some(RATE),
            batch: 100,
            confirm_timeout: Duration::from_secs(5),
        },
        &metrics,
        |_| {},
    )
    .await
    .unwrap();
    let took = started.elapsed();

    assert_eq!(report.published, EVENTS as i64);
    assert_eq!(metrics.replayed.get(), EVENTS as u64);
    // 30 events at 60/s: half a second (unpaced, they take a few milliseconds),
    // and not much more.
    assert!(took >= Duration::from_millis(500), "took {took:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    eventually(Duration::from_secs(5), "every replayed event", || async {
        (arrivals.lock().unwrap().len() == EVENTS).then_some(())
    })
    .await;
    recorder.abort();
    // Evenly: in steps of a tenth of the rate (6 events), the k-th step no
    // earlier than k/10 s after the start.
    let step = (RATE / 10.0) as usize;
    for (i, at) in arrivals.lock().unwrap().iter().enumerate() {
        let due = Duration::from_secs_f64((i / step * step) as f64 / RATE);
        assert!(
            at.duration_since(started) >= due,
            "event {i} arrived {:?} after the start, before its time {due:?}",
            at.duration_since(started)
        );
    }
}

/// Runs `outbox-relay replay` with `args` against the fixture.
async fn command(f: &Fixture, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(devkit::process::binary_path("outbox-relay"))
        .arg("replay")
        .args(args)
        .env("DATABASE_URL", &f.db.url)
        .env("BROKER_URL", &f.broker.url)
        .env("BROKER_NAMESPACE", &f.broker.namespace)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap()
}

/// The message ids a dry run printed (second column of each event line).
fn listed(output: &std::process::Output) -> Vec<Uuid> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split('\t').nth(1)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn the_replay_command_passes_every_filter_and_the_rate_on() {
    let mut f = Fixture::new().await;
    let (a, a2, b1, a3) = (f.history.a, f.history.a2, f.history.b1, f.history.a3);
    let rfc3339 = |t: OffsetDateTime| t.format(&Rfc3339).unwrap();
    let since = rfc3339(datetime!(2026-01-01 11:00 UTC));
    let until = rfc3339(datetime!(2026-01-01 13:00 UTC));

    let by_time = command(&f, &["--dry-run", "--since", &since, "--until", &until]).await;
    assert_eq!(listed(&by_time), vec![b1, a2]);
    let by_aggregate = command(
        &f,
        &[
            "--dry-run",
            "--aggregate-id",
            &a.to_string(),
            "--since",
            &since,
        ],
    )
    .await;
    assert_eq!(listed(&by_aggregate), vec![a2, a3]);
    let by_type = command(
        &f,
        &[
            "--dry-run",
            "--event-type",
            "OrderShipped",
            "--until",
            &since,
        ],
    )
    .await;
    assert_eq!(listed(&by_type), vec![f.history.shipped]);

    // Four events at 8/s: half a second at least.
    let started = Instant::now();
    let paced = command(&f, &["--event-type", "OrderCreated", "--rate", "8"]).await;
    let took = started.elapsed();
    assert!(
        paced.status.success(),
        "{}",
        String::from_utf8_lossy(&paced.stderr)
    );
    assert!(
        String::from_utf8_lossy(&paced.stdout).contains("4 events matched, 4 re-published"),
        "{}",
        String::from_utf8_lossy(&paced.stdout)
    );
    assert!(took >= Duration::from_millis(500), "took {took:?}");
    assert_eq!(f.received().await.len(), 4);

    let refused = command(&f, &["--rate", "0"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--rate must be a positive number"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        f.received().await.is_empty(),
        "a refused replay publishes nothing"
    );
}
