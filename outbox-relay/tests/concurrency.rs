//! The relay under concurrency: writers committing out of id order, several relays
//! draining one outbox, and a relay process killed in the middle of a drain.

#![allow(clippy::unwrap_used)]

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use devkit::{broker::TestBroker, db::TestDatabase, eventually, process::Service};
use lapin::message::Delivery;
use outbox_relay::{config::RelaySettings, relay::Relay};
use plumbing::db::Database;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Fixture {
    db: TestDatabase,
    broker: TestBroker,
}

impl Fixture {
    async fn new(label: &str) -> Self {
        let broker = TestBroker::new();
        broker.declare().await;
        Self {
            db: TestDatabase::migrated(label, Database::Orders).await,
            broker,
        }
    }

    fn relay(&self, settings: RelaySettings) -> Relay {
        Relay::new(
            self.db.pool(),
            plumbing::db::parse_url(&self.db.url).unwrap(),
            self.broker.url.clone(),
            self.broker.topology.clone(),
            settings,
        )
    }

    /// Inserts `n` events, each of an aggregate of its own.
    async fn insert_orders(&self, n: i32) {
        self.db
            .client()
            .await
            .execute(
                "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload)
                 SELECT gen_random_uuid(), 'order', gen_random_uuid(), 'OrderCreated', 1, '{}'::jsonb
                 FROM generate_series(1, $1)",
                &[&n],
            )
            .await
            .unwrap();
    }

    /// Starts consuming the `OrderCreated` queue; every message id received, in
    /// order of arrival, is collected.
    async fn consume(&self) -> Received {
        let rx = self
            .broker
            .watch(&self.broker.topology.order_created_queue)
            .await;
        Received::start(rx)
    }

    /// Waits until no row is left unpublished.
    async fn wait_until_all_published(&self, timeout: Duration) {
        eventually(timeout, "every outbox row to be published", || async {
            (self.db.unpublished().await == 0).then_some(())
        })
        .await;
    }

    /// Every row as (message id, aggregate id), in insertion (id) order.
    async fn rows_in_id_order(&self) -> Vec<(Uuid, Uuid)> {
        self.db
            .client()
            .await
            .query(
                "SELECT message_id, aggregate_id FROM outbox ORDER BY id",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Inserts `rows` rows over `aggregates` aggregates in one statement, interleaved:
    /// the row inserted i-th belongs to aggregate i % `aggregates`. Checks that the
    /// ids follow that interleaving and returns the rows in id order.
    async fn insert_interleaved(&self, rows: i64, aggregates: usize) -> Vec<(Uuid, Uuid)> {
        let ids: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
        let n = i64::try_from(aggregates).unwrap();
        self.db
            .client()
            .await
            .execute(
                "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload)
                 SELECT gen_random_uuid(), 'order', ($1::uuid[])[(i % $2::bigint + 1)::int], 'OrderCreated', 1, '{}'::jsonb
                 FROM generate_series(0::bigint, $3::bigint - 1) AS i
                 ORDER BY i",
                &[&ids, &n, &rows],
            )
            .await
            .unwrap();
        let inserted = self.rows_in_id_order().await;
        assert_eq!(inserted.len(), usize::try_from(rows).unwrap());
        for (i, (_, aggregate)) in inserted.iter().enumerate() {
            assert_eq!(
                *aggregate,
                ids[i % aggregates],
                "row {i} (in id order) is not of the aggregate the interleaving gives it"
            );
        }
        inserted
    }
}

/// Message ids received by a background consumer, in order of arrival.
struct Received {
    ids: Arc<Mutex<Vec<Uuid>>>,
}

impl Received {
    fn start(mut rx: UnboundedReceiver<Delivery>) -> Self {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let sink = ids.clone();
        tokio::spawn(async move {
            while let Some(delivery) = rx.recv().await {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().parse::<Uuid>().unwrap())
                    .expect("a message without message_id");
                sink.lock().unwrap().push(id);
            }
        });
        Self { ids }
    }

    fn count(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    fn distinct(&self) -> usize {
        self.ids
            .lock()
            .unwrap()
            .iter()
            .collect::<HashSet<_>>()
            .len()
    }

    /// Waits (at most `timeout`) until `n` distinct ids are in, then for a marker
    /// sent to the queue after them: whatever was confirmed to the queue before
    /// it (stragglers, duplicates) is in when it is. Returns everything received
    /// but the marker. Call it once every publisher has stopped.
    async fn collect(&self, broker: &TestBroker, n: usize, timeout: Duration) -> Vec<Uuid> {
        let deadline = Instant::now() + timeout;
        while self.distinct() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let marker: Uuid = broker
            .publish_marker_to_queue(&broker.topology.order_created_queue)
            .await
            .parse()
            .unwrap();
        eventually(
            Duration::from_secs(5),
            "the marker after the events",
            || async { self.ids.lock().unwrap().contains(&marker).then_some(()) },
        )
        .await;
        let mut ids = self.ids.lock().unwrap().clone();
        ids.retain(|id| *id != marker);
        ids
    }
}

/// Ids received more than once, with their counts.
fn duplicates(received: &[Uuid]) -> HashMap<Uuid, usize> {
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for id in received {
        *counts.entry(*id).or_default() += 1;
    }
    counts.retain(|_, c| *c > 1);
    counts
}

/// For each aggregate, its message ids in insertion order.
fn per_aggregate(rows: &[(Uuid, Uuid)]) -> HashMap<Uuid, Vec<Uuid>> {
    let mut by_aggregate: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (message, aggregate) in rows {
        by_aggregate.entry(*aggregate).or_default().push(*message);
    }
    by_aggregate
}

/// Asserts that, per aggregate, the first occurrences of message ids in `received`
/// are exactly the aggregate's events in insertion order. With `allow_duplicates`
/// false, no id may be received twice either.
fn assert_per_aggregate_order(rows: &[(Uuid, Uuid)], received: &[Uuid], allow_duplicates: bool) {
    let aggregate_of: HashMap<Uuid, Uuid> = rows.iter().copied().collect();
    let mut seen = HashSet::new();
    let mut got: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for (position, id) in received.iter().enumerate() {
        let aggregate = aggregate_of
            .get(id)
            .unwrap_or_else(|| panic!("received {id} at {position}, which is no outbox row"));
        if seen.insert(*id) {
            got.entry(*aggregate).or_default().push(*id);
        } else {
            assert!(
                allow_duplicates,
                "{id} (aggregate {aggregate}) received again at position {position}"
            );
        }
    }
    for (aggregate, expected) in per_aggregate(rows) {
        let actual = got.remove(&aggregate).unwrap_or_default();
        if actual != expected {
            let first_difference = actual
                .iter()
                .zip(&expected)
                .position(|(a, e)| a != e)
                .unwrap_or(actual.len().min(expected.len()));
            panic!(
                "aggregate {aggregate}: received {} of {} events; first difference at event {first_difference}: got {:?}, expected {:?}",
                actual.len(),
                expected.len(),
                actual.get(first_difference),
                expected.get(first_difference),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_committed_out_of_order_are_all_published() {
    const WRITERS: u64 = 8;
    const PER_WRITER: usize = 50;
    let f = Fixture::new("relay_late_commits").await;
    let received = f.consume().await;
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(
        f.relay(RelaySettings {
            poll_interval: Duration::from_millis(100),
            ..RelaySettings::default()
        })
        .run(shutdown.clone()),
    );

    // Each writer holds its transaction open for a random while after its INSERT,
    // so that rows with higher ids often commit before rows with lower ids. Ids are
    // recorded in commit order.
    let started = Instant::now();
    let commits: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut client = f.db.client().await;
        let commits = commits.clone();
        writers.push(tokio::spawn(async move {
            let aggregate = Uuid::new_v4();
            let mut jitter = devkit::Jitter::new(writer + 1);
            let mut rows = Vec::new();
            for _ in 0..PER_WRITER {
                let message_id = Uuid::new_v4();
                let tx = client.transaction().await.unwrap();
                let id: i64 = tx
                    .query_one(
                        "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload)
                         VALUES ($1, 'order', $2, 'OrderCreated', 1, '{}'::jsonb) RETURNING id",
                        &[&message_id, &aggregate],
                    )
                    .await
                    .unwrap()
                    .get(0);
                tokio::time::sleep(Duration::from_millis(jitter.below(151))).await;
                tx.commit().await.unwrap();
                commits.lock().unwrap().push(id);
                rows.push((id, message_id, aggregate));
            }
            rows
        }));
    }
    let mut rows = Vec::new();
    for writer in writers {
        rows.extend(writer.await.unwrap());
    }
    let written = started.elapsed();
    rows.sort_unstable_by_key(|(id, _, _)| *id);
    let total = rows.len();
    assert_eq!(total, usize::try_from(WRITERS).unwrap() * PER_WRITER);

    // How often did a row commit after a row with a higher id? (An id cursor would
    // have moved past it.)
    let overtaken = {
        let commits = commits.lock().unwrap();
        let mut highest = i64::MIN;
        let mut overtaken = 0;
        for id in commits.iter() {
            if *id < highest {
                overtaken += 1;
            }
            highest = highest.max(*id);
        }
        overtaken
    };
    println!(
        "{total} rows written by {WRITERS} writers in {written:?}; {overtaken} committed after a higher id"
    );
    assert!(
        overtaken > total / 10,
        "the writers did not commit out of id order often enough to test anything ({overtaken})"
    );

    f.wait_until_all_published(Duration::from_secs(30)).await;
    shutdown.cancel();
    relay.await.unwrap();
    let got = received
        .collect(&f.broker, total, Duration::from_secs(10))
        .await;
    println!(
        "all published {:?} after the writers began",
        started.elapsed()
    );

    let expected: HashSet<Uuid> = rows.iter().map(|(_, m, _)| *m).collect();
    let got_set: HashSet<Uuid> = got.iter().copied().collect();
    let missing: Vec<_> = rows
        .iter()
        .filter(|(_, m, _)| !got_set.contains(m))
        .map(|(id, _, _)| *id)
        .collect();
    assert!(
        missing.is_empty(),
        "never received rows with ids {missing:?}"
    );
    assert!(got_set.is_subset(&expected), "received unknown message ids");
    assert!(
        duplicates(&got).is_empty(),
        "received twice: {:?}",
        duplicates(&got)
    );
    assert_eq!(got.len(), total);
    // Each writer's rows were committed one after the other: their aggregate's
    // events must arrive in id order too.
    let by_id: Vec<(Uuid, Uuid)> = rows.iter().map(|(_, m, a)| (*m, *a)).collect();
    assert_per_aggregate_order(&by_id, &got, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_relays_keep_per_aggregate_order_without_duplicates() {
    const ROWS: i64 = 10_000;
    const AGGREGATES: usize = 100;
    let f = Fixture::new("relay_three").await;
    let rows = f.insert_interleaved(ROWS, AGGREGATES).await;
    let received = f.consume().await;

    let shutdown = CancellationToken::new();
    // The default poll interval: a drain must not stop at the first event of each
    // aggregate and wait for the next poll.
    let settings = RelaySettings {
        batch_size: 200,
        ..RelaySettings::default()
    };
    let relays: Vec<_> = (0..3)
        .map(|_| tokio::spawn(f.relay(settings).run(shutdown.clone())))
        .collect();
    let started = Instant::now();
    f.wait_until_all_published(Duration::from_secs(30)).await;
    let drained = started.elapsed();
    shutdown.cancel();
    for relay in relays {
        relay.await.unwrap();
    }
    let got = received
        .collect(&f.broker, rows.len(), Duration::from_secs(10))
        .await;
    println!(
        "3 relays drained {ROWS} rows over {AGGREGATES} aggregates in {drained:?}; consumer had all after {:?}",
        started.elapsed()
    );

    let distinct: HashSet<Uuid> = got.iter().copied().collect();
    let dups = duplicates(&got);
    assert!(
        dups.is_empty(),
        "{} message ids received more than once, e.g. {:?}",
        dups.len(),
        dups.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(distinct.len(), rows.len(), "distinct message ids received");
    assert_eq!(got.len(), rows.len(), "messages received");
    assert_per_aggregate_order(&rows, &got, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_drain_loses_its_claim_and_another_finishes() {
    const ROWS: i64 = 5_000;
    // Ten times a batch: when the survivor is frozen holding a claim (which
    // takes the oldest event of up to a batch of aggregates), the victim still
    // has aggregates to claim.
    const AGGREGATES: usize = 500;
    const BATCH: usize = 50;
    let f = Fixture::new("relay_kill").await;
    let rows = f.insert_interleaved(ROWS, AGGREGATES).await;
    let received = f.consume().await;
    // The victim's sessions carry a name of their own, so that its claims can be
    // told from the survivor's.
    let victim_env = [
        (
            "DATABASE_URL",
            format!("{}?application_name={VICTIM}", f.db.url),
        ),
        ("BROKER_URL", f.broker.url.clone()),
        ("BROKER_NAMESPACE", f.broker.namespace.clone()),
        ("PORT", "0".to_owned()),
        ("RELAY_BATCH_SIZE", BATCH.to_string()),
        ("RELAY_POLL_INTERVAL", "1s".to_owned()),
    ];
    let env = [
        ("DATABASE_URL", f.db.url.clone()),
        ("BROKER_URL", f.broker.url.clone()),
        ("BROKER_NAMESPACE", f.broker.namespace.clone()),
        ("PORT", "0".to_owned()),
        ("RELAY_BATCH_SIZE", BATCH.to_string()),
        // The default poll interval (1 s): rows inserted with plain SQL send no
        // notification, so this also checks that one drain goes on past the first
        // event of each aggregate instead of waiting a poll per event.
        ("RELAY_POLL_INTERVAL", "1s".to_owned()),
    ];
    let started = Instant::now();
    let (mut victim, mut survivor) = tokio::join!(
        Service::spawn("outbox-relay", &victim_env, false),
        Service::spawn("outbox-relay", &env, false),
    );

    eventually(
        Duration::from_secs(30),
        "about 1,000 messages to be received",
        || async { (received.count() >= 1_000).then_some(()) },
    )
    .await;
    // Kill the victim while it holds a claim: freeze it, and if one of its
    // sessions waits inside a transaction that locks outbox rows (a claim, which
    // nothing but the victim can end now), kill it frozen; otherwise let it claim
    // once more and look again. The survivor is frozen meanwhile, so that it
    // cannot drain the rest of the outbox before the victim is caught (on a busy
    // machine it did, and the victim had nothing left to claim).
    survivor.pause();
    let held = async {
        for _ in 0..200 {
            victim.pause();
            let held =
                f.db.scalar(&format!(
                    "SELECT count(*) FROM outbox o JOIN pg_stat_activity a ON o.xmax = a.backend_xid
                     WHERE a.datname = current_database() AND a.application_name = '{VICTIM}'
                       AND a.state = 'idle in transaction'"
                ))
                .await;
            if held > 0 {
                return held;
            }
            victim.resume();
            let claimed = claims_of(&victim).await;
            eventually(
                Duration::from_secs(5),
                "the victim to claim again (it was not caught holding a claim yet)",
                || async { (claims_of(&victim).await > claimed).then_some(()) },
            )
            .await;
        }
        panic!("the victim was never caught holding a claim")
    }
    .await;
    victim.kill();
    survivor.resume();
    let at_kill = received.count();
    let status = victim.wait(Duration::from_secs(5)).await;
    assert!(!status.success(), "the victim was killed");
    println!(
        "killed a relay {:?} after start holding a claim of {held} rows, {at_kill} messages received",
        started.elapsed()
    );

    f.wait_until_all_published(Duration::from_secs(60)).await;
    let drained = started.elapsed();
    survivor.terminate();
    let status = survivor.wait(Duration::from_secs(20)).await;
    assert!(status.success(), "the surviving relay exited with {status}");
    let got = received
        .collect(&f.broker, rows.len(), Duration::from_secs(10))
        .await;

    let dups = duplicates(&got);
    let duplicate_deliveries = got.len() - got.iter().collect::<HashSet<_>>().len();
    println!(
        "all {ROWS} rows published {drained:?} after start; {duplicate_deliveries} duplicate deliveries of {} message ids",
        dups.len()
    );
    let got_set: HashSet<Uuid> = got.iter().copied().collect();
    let missing = rows.iter().filter(|(m, _)| !got_set.contains(m)).count();
    assert_eq!(missing, 0, "message ids never received");
    assert_per_aggregate_order(&rows, &got, true);
    assert!(
        duplicate_deliveries <= 2 * BATCH,
        "{duplicate_deliveries} duplicates: more than two batches were published again"
    );
}

/// `application_name` of the killed relay's sessions.
const VICTIM: &str = "relay-victim";

/// Rows a relay process has claimed so far, per its `/metrics`.
async fn claims_of(relay: &Service) -> f64 {
    devkit::faults::metric(&relay.base_url(), "outbox_claimed_total")
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn a_transaction_that_commits_after_the_floor_passed_its_row_is_still_published() {
    // Claims start at a floor proven from two probes a second apart. A row whose
    // transaction stays open longer than that (taken id, no commit) falls below
    // the floor; the full scan every poll interval must still find it.
    let f = Fixture::new("relay_floor").await;
    let mut relay = f.relay(RelaySettings {
        poll_interval: Duration::from_secs(2),
        ..RelaySettings::default()
    });
    let shutdown = CancellationToken::new();
    let mut holder = f.db.client().await;
    let held = holder.transaction().await.unwrap();
    let held_id: i64 = held
        .query_one(
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload)
             VALUES ($1, 'order', $2, 'OrderCreated', 1, '{}'::jsonb) RETURNING id",
            &[&Uuid::new_v4(), &Uuid::new_v4()],
        )
        .await
        .unwrap()
        .get(0);

    // Traffic flows past it until the floor is above it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.claim_floor() <= held_id {
        assert!(
            Instant::now() < deadline,
            "the floor never passed the held row"
        );
        f.insert_orders(5).await;
        relay.drain(&shutdown).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held.commit().await.unwrap();

    // Its commit is late, not lost: the next full scan publishes it.
    let committed = Instant::now();
    while f.db.unpublished().await > 0 {
        assert!(
            committed.elapsed() < Duration::from_secs(5),
            "a row committed below the floor was not published"
        );
        relay.drain(&shutdown).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_drain_reports_every_event_it_published() {
    // Several pipelined batches: each one's marks are written in the background
    // while the next is published, and each must be counted once.
    let f = Fixture::new("relay_drain_count").await;
    f.insert_orders(1234).await;
    let mut relay = f.relay(RelaySettings {
        batch_size: 100,
        ..RelaySettings::default()
    });
    let published = relay.drain(&CancellationToken::new()).await.unwrap();
    assert_eq!(published, 1234);
    assert_eq!(f.db.unpublished().await, 0);
}
