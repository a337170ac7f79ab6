//! The relay against a real orders database and a real RabbitMQ namespace.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use devkit::{broker::TestBroker, db::TestDatabase, eventually, proxy::TcpProxy};
use lapin::types::{AMQPValue, ShortString};
use orders_api::{
    domain::{Amount, NewOrder},
    outbox::RequestContext,
};
use outbox_relay::{config::RelaySettings, relay::Relay};
use plumbing::db::Database;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Fixture {
    db: TestDatabase,
    broker: TestBroker,
}

impl Fixture {
    async fn new() -> Self {
        let broker = TestBroker::new();
        broker.declare().await;
        Self {
            db: TestDatabase::migrated("relay", Database::Orders).await,
            broker,
        }
    }

    fn relay_with(&self, broker_url: &str, settings: RelaySettings) -> Relay {
        self.relay_on(self.db.pool(), broker_url, settings)
    }

    /// A relay on `pool` (which the test can watch).
    fn relay_on(
        &self,
        pool: deadpool_postgres::Pool,
        broker_url: &str,
        settings: RelaySettings,
    ) -> Relay {
        let config = plumbing::db::parse_url(&self.db.url).unwrap();
        Relay::new(
            pool,
            config,
            broker_url.to_owned(),
            self.broker.topology.clone(),
            settings,
        )
    }

    fn relay(&self) -> Relay {
        self.relay_with(&self.broker.url, RelaySettings::default())
    }

    /// Creates an order the way the API does; returns (order id, message id).
    async fn order(&self, cents: i64) -> (Uuid, Uuid) {
        let pool = self.db.pool();
        let new = NewOrder {
            id: Uuid::now_v7(),
            amount: Amount::from_cents(cents).unwrap(),
            currency: contracts::Currency::BRL,
        };
        let context = RequestContext {
            request_id: Some(format!("req-{cents}")),
            ..RequestContext::default()
        };
        let order =
            orders_api::store::create_order(&pool, &devkit::messages::customer(), &new, &context)
                .await
                .unwrap();
        let message_id: Uuid = self
            .db
            .client()
            .await
            .query_one(
                "SELECT message_id FROM outbox WHERE aggregate_id = $1",
                &[&order.id],
            )
            .await
            .unwrap()
            .get(0);
        (order.id, message_id)
    }

    async fn unpublished(&self) -> i64 {
        self.db.unpublished().await
    }
}

fn header<'a>(d: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(key)
}

#[tokio::test]
async fn publishes_the_envelope_and_marks_only_after_confirm() {
    let f = Fixture::new().await;
    let mut seen = f.broker.watch(&f.broker.topology.order_created_queue).await;
    let (order_id, message_id) = f.order(2999).await;
    let mut relay = f.relay();

    let report = relay.run_once().await.unwrap();

    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(f.unpublished().await, 0);
    let d = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    let p = &d.properties;
    assert_eq!(
        p.message_id().as_ref().map(ShortString::as_str),
        Some(message_id.to_string().as_str())
    );
    assert_eq!(
        p.kind().as_ref().map(ShortString::as_str),
        Some("OrderCreated")
    );
    assert_eq!(
        p.content_type().as_ref().map(ShortString::as_str),
        Some("application/json")
    );
    assert_eq!(p.delivery_mode(), &Some(2));
    assert!(p.timestamp().is_some());
    assert_eq!(
        header(&d, "x-schema-version"),
        Some(&AMQPValue::LongLongInt(1))
    );
    assert_eq!(
        plumbing::broker::header_str(p, "x-correlation-id"),
        Some("req-2999")
    );
    let decoded = plumbing::broker::inbound(&d).decode().unwrap();
    assert_eq!(decoded.message_id, message_id);
    let contracts::Event::OrderCreatedV1(e) = decoded.event;
    assert_eq!((e.order_id, e.amount_cents), (order_id, 2999));
    // Nothing left: a second cycle claims nothing.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);
}

#[tokio::test]
async fn unroutable_event_stays_unpublished_with_its_error() {
    let f = Fixture::new().await;
    let mut relay = f.relay();
    relay.ensure_publisher().await.unwrap();
    f.broker.unbind_order_created().await;
    f.order(100).await;

    let report = relay.run_once().await.unwrap();

    assert_eq!(
        (report.claimed, report.published, report.rejected),
        (1, 0, 1)
    );
    let row = f
        .db
        .client()
        .await
        .query_one(
            "SELECT published_at IS NULL, attempts, last_error, next_attempt_at > now() FROM outbox",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "an unroutable event must not be marked published"
    );
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(
        row.get::<_, String>(2).contains("NO_ROUTE"),
        "{}",
        row.get::<_, String>(2)
    );
    assert!(row.get::<_, bool>(3), "retry is delayed");
    // Not retried before its delay.
    assert_eq!(relay.run_once().await.unwrap().claimed, 0);

    // Once the route is back and the delay has passed, it goes out.
    f.broker.declare().await;
    f.db.client()
        .await
        .execute("UPDATE outbox SET next_attempt_at = now()", &[])
        .await
        .unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 1);
    assert_eq!(f.unpublished().await, 0);
}

#[tokio::test]
async fn a_nacked_event_stays_unpublished_and_counts_as_nacked() {
    use lapin::{
        options::{QueueBindOptions, QueueDeclareOptions},
        types::{FieldTable, LongString},
    };
    use outbox_relay::metrics::{FailureLabels, FailureReason};

    let f = Fixture::new().await;
    let mut relay = f.relay();
    relay.ensure_publisher().await.unwrap();
    // The only queue bound for OrderCreated is full from the start and refuses
    // what it cannot take: RabbitMQ routes the message there and nacks it.
    f.broker.unbind_order_created().await;
    let channel = f.broker.channel().await;
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    let full = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            full.name().clone(),
            f.broker.topology.exchange.as_str().into(),
            contracts::EventType::OrderCreated.routing_key().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    f.order(100).await;

    let report = relay.run_once().await.unwrap();

    assert_eq!(
        (
            report.claimed,
            report.published,
            report.rejected,
            report.lost
        ),
        (1, 0, 1, 0)
    );
    let failures = |reason| {
        relay
            .metrics()
            .failures
            .get_or_create(&FailureLabels { reason })
            .get()
    };
    assert_eq!(failures(FailureReason::Nacked), 1);
    assert_eq!(
        failures(FailureReason::Returned)
            + failures(FailureReason::Invalid)
            + failures(FailureReason::Lost),
        0
    );
    let row =
        f.db.client()
            .await
            .query_one(
                "SELECT published_at IS NULL, attempts, last_error FROM outbox",
                &[],
            )
            .await
            .unwrap();
    assert!(
        row.get::<_, bool>(0),
        "a nacked event is not marked published"
    );
    assert_eq!(row.get::<_, i32>(1), 1);
    assert!(
        row.get::<_, String>(2).contains("nacked"),
        "{}",
        row.get::<_, String>(2)
    );
}

#[tokio::test]
async fn a_failing_event_blocks_only_its_own_aggregate() {
    let f = Fixture::new().await;
    let mut seen = f.broker.watch(&f.broker.topology.order_created_queue).await;
    let (blocked, _) = f.order(100).await;
    let (other, _) = f.order(200).await;
    // Put an event the relay cannot route at the head of `blocked`'s history, and a
    // later, valid event behind it.
    let client = f.db.client().await;
    client
        .execute(
            "UPDATE outbox SET event_type = 'OrderShipped' WHERE aggregate_id = $1",
            &[&blocked],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload)
             SELECT $1, aggregate_type, aggregate_id, 'OrderCreated', 1, payload FROM outbox WHERE aggregate_id = $2",
            &[&Uuid::now_v7(), &blocked],
        )
        .await
        .unwrap();
    let mut relay = f.relay();

    let report = relay.run_once().await.unwrap();

    // The head of `blocked` is refused; the event behind it waits; `other` goes out.
    assert_eq!(
        (report.claimed, report.published, report.rejected),
        (2, 1, 1)
    );
    let d = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .unwrap()
        .unwrap();
    let contracts::Event::OrderCreatedV1(e) = plumbing::broker::inbound(&d).decode().unwrap().event;
    assert_eq!(e.order_id, other);
    let waiting: i64 = client
        .query_one(
            "SELECT count(*) FROM outbox WHERE aggregate_id = $1 AND published_at IS NULL",
            &[&blocked],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 2);
    client
        .execute("UPDATE outbox SET next_attempt_at = now()", &[])
        .await
        .unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!(
        (report.claimed, report.rejected),
        (1, 1),
        "still only the head is tried"
    );
}

#[tokio::test]
async fn events_of_one_aggregate_are_published_in_order() {
    let f = Fixture::new().await;
    let mut seen = f.broker.watch(&f.broker.topology.order_created_queue).await;
    let (order_id, first) = f.order(100).await;
    let client = f.db.client().await;
    let mut expected = vec![first];
    for _ in 0..4 {
        let id = Uuid::now_v7();
        client
            .execute(
                "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload)
                 SELECT $1, aggregate_type, aggregate_id, event_type, schema_version, payload
                 FROM outbox WHERE message_id = $2",
                &[&id, &first],
            )
            .await
            .unwrap();
        expected.push(id);
    }
    let mut relay = f.relay();

    // One event of the aggregate per cycle: the next is claimable only once the
    // previous one is marked published.
    for cycle in 1..=5 {
        let report = relay.run_once().await.unwrap();
        assert_eq!(report.published, 1, "cycle {cycle}");
    }
    assert_eq!(f.unpublished().await, 0);

    let mut got = Vec::new();
    while got.len() < expected.len() {
        let d = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        got.push(plumbing::broker::inbound(&d).decode().unwrap().message_id);
    }
    assert_eq!(got, expected, "events of order {order_id} out of order");
}

#[tokio::test]
async fn a_notification_wakes_an_idle_relay_at_once() {
    let f = Fixture::new().await;
    let mut seen = f.broker.watch(&f.broker.topology.order_created_queue).await;
    // A poll interval far longer than the test: only a notification can explain a
    // quick publish.
    let pool = f.db.pool();
    let relay = f.relay_on(
        pool.clone(),
        &f.broker.url,
        RelaySettings {
            poll_interval: Duration::from_secs(600),
            ..RelaySettings::default()
        },
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    // Let it connect and go idle.
    eventually(Duration::from_secs(10), "the relay to listen", || async {
        let listening: i64 = f
            .db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (listening > 0).then_some(())
    })
    .await;
    // The premise: the relay's first scan of the outbox is over, so an order
    // written now is not in it. The scan is the relay's first use of its pool
    // and gives its connection back when it ends.
    eventually(
        Duration::from_secs(10),
        "the relay's first scan to end",
        || async {
            let status = pool.status();
            (status.size > 0 && status.available == status.size).then_some(())
        },
    )
    .await;

    let started = Instant::now();
    let (_, message_id) = f.order(500).await;
    let d = tokio::time::timeout(Duration::from_secs(3), seen.recv())
        .await
        .unwrap()
        .unwrap();
    let latency = started.elapsed();

    assert_eq!(
        plumbing::broker::inbound(&d).decode().unwrap().message_id,
        message_id
    );
    println!("commit → consumer latency of an idle relay: {latency:?}");
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn broker_outage_loses_nothing() {
    let f = Fixture::new().await;
    let proxy = TcpProxy::start(&devkit::broker::server_addr()).await;
    let via_proxy = devkit::swap_host(&f.broker.url, proxy.addr);
    let relay = f.relay_with(
        &via_proxy,
        RelaySettings {
            poll_interval: Duration::from_millis(200),
            ..RelaySettings::default()
        },
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    f.order(1).await;
    eventually(
        Duration::from_secs(10),
        "the first event to be published",
        || async { (f.unpublished().await == 0).then_some(()) },
    )
    .await;

    proxy.cut();
    for cents in 2..=21 {
        f.order(cents).await;
    }
    // The premise: the relay, with the events waiting, went on trying to reach
    // the broker (two reconnects refused after the last event was written).
    let refused = proxy.refused();
    eventually(
        Duration::from_secs(5),
        "the relay to try the broker twice more",
        || async { (proxy.refused() >= refused + 2).then_some(()) },
    )
    .await;
    assert_eq!(
        f.unpublished().await,
        20,
        "nothing is marked while the broker is away"
    );

    proxy.restore();
    eventually(
        Duration::from_secs(30),
        "the backlog to drain after the outage",
        || async { (f.unpublished().await == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        f.broker
            .ready_count(&f.broker.topology.order_created_queue)
            .await,
        21,
        "every event reached the queue"
    );
    shutdown.cancel();
    task.await.unwrap();
}

/// Inserts `n` unpublished events, one aggregate each, in one statement.
async fn insert_backlog(db: &TestDatabase, n: i32) {
    db.client()
        .await
        .execute(
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload, headers)
             SELECT gen_random_uuid(), 'order', gen_random_uuid(), 'OrderCreated', 1, '{}', '{}'
             FROM generate_series(1, $1)",
            &[&n],
        )
        .await
        .unwrap();
}

/// A pool of one connection, so that every claim reuses its prepared statement
/// (and, after five executions, may get the server's generic plan).
fn single_connection_pool(db: &TestDatabase) -> deadpool_postgres::Pool {
    plumbing::db::pool(
        plumbing::db::parse_url(&db.url).unwrap(),
        plumbing::db::PoolOptions {
            max_size: 1,
            ..plumbing::db::PoolOptions::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn a_backlog_after_a_quiet_start_is_claimed_quickly() {
    // One connection, so that every claim reuses its prepared statement: the
    // server may switch it to a generic plan made while the outbox was tiny.
    let db = TestDatabase::migrated("relay_plan", Database::Orders).await;
    let pool = single_connection_pool(&db);
    insert_backlog(&db, 3).await;
    for _ in 0..10 {
        let claim = outbox_relay::store::claim_batch(&pool, 500, Duration::from_secs(30), 0)
            .await
            .unwrap();
        assert_eq!(claim.rows.len(), 3);
        claim.finish(&[], &[], 10).await.unwrap();
    }

    // Then a burst (or a broker outage) leaves 15,000 events waiting.
    insert_backlog(&db, 15_000).await;
    let started = Instant::now();
    let claim = outbox_relay::store::claim_batch(&pool, 500, Duration::from_secs(30), 0)
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(claim.rows.len(), 500);
    // With the plan made for 3 rows this took 1.8 s; planned afresh, ~30 ms.
    assert!(
        took < Duration::from_millis(500),
        "claiming 500 of 15,003 rows took {took:?}"
    );
    claim.finish(&[], &[], 10).await.unwrap();
}

#[tokio::test]
async fn claims_stay_fast_while_published_rows_pile_up_unvacuumed() {
    // Steady traffic with autovacuum behind: 60,000 rows marked published sit in
    // the unpublished-rows index until VACUUM, a few events wait, and the table
    // was never analyzed (so the planner guesses, and guesses a bitmap scan). A
    // claim that visits the table for each of them on every claim (the bitmap
    // scan) took 5–15 ms here; a plain index scan marks them dead once and then
    // skips them (about 0.3 ms).
    let db = TestDatabase::migrated("relay_dead_entries", Database::Orders).await;
    let pool = single_connection_pool(&db);
    insert_backlog(&db, 60_000).await;
    let client = db.client().await;
    client
        .batch_execute("UPDATE outbox SET published_at = now()")
        .await
        .unwrap();
    insert_backlog(&db, 12).await;

    let mut took = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let claim = outbox_relay::store::claim_batch(&pool, 500, Duration::from_secs(30), 0)
            .await
            .unwrap();
        took.push(started.elapsed());
        assert_eq!(claim.rows.len(), 12);
        claim.finish(&[], &[], 10).await.unwrap();
    }
    took.sort();
    let median = took[took.len() / 2];
    assert!(
        median < Duration::from_millis(3),
        "median claim of 12 rows behind 60,000 published ones: {median:?} (all: {took:?})"
    );
}
