//! The worker against a real invoices database and a real RabbitMQ namespace.

#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use contracts::{OrderCreatedV1, headers};
use devkit::{
    Jitter,
    broker::TestBroker,
    db::TestDatabase,
    eventually,
    messages::{body, order_created as event, properties},
    proxy::TcpProxy,
    server_addr, swap_host,
    worker::RunningWorker,
};
use invoices_worker::{metrics::WorkerMetrics, worker::WorkerSettings};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use plumbing::db::Database;
use uuid::Uuid;

struct Fixture {
    db: TestDatabase,
    broker: TestBroker,
    stats: Arc<WorkerMetrics>,
    worker: RunningWorker,
}

impl Fixture {
    async fn start() -> Self {
        Self::start_via(None).await
    }

    /// Runs a worker whose database connections go through `proxy`, if given.
    async fn start_via(proxy: Option<&TcpProxy>) -> Self {
        let db = TestDatabase::migrated("worker", Database::Invoices).await;
        let broker = TestBroker::new();
        broker.declare().await;
        let url = proxy.map_or_else(|| db.url.clone(), |p| db.url_via(p.addr));
        let settings = WorkerSettings {
            prefetch: 20,
            max_attempts: 1_000,
            ..WorkerSettings::default()
        };
        let worker = RunningWorker::start(&url, &broker, settings).await;
        Self {
            db,
            broker,
            stats: worker.metrics.clone(),
            worker,
        }
    }

    async fn invoices(&self) -> Vec<(Uuid, i64)> {
        self.db
            .client()
            .await
            .query(
                "SELECT order_id, amount_cents FROM invoices ORDER BY amount_cents",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    async fn stop(self) {
        self.worker.stop().await;
    }
}

#[tokio::test]
async fn the_same_message_five_times_makes_one_invoice() {
    let f = Fixture::start().await;
    let e = event(2999);
    let id = Uuid::now_v7().to_string();

    for _ in 0..5 {
        f.broker.publish_raw(&body(&e), properties(&id)).await;
    }

    eventually(
        Duration::from_secs(10),
        "four duplicates to be skipped",
        || async { (f.stats.duplicates.get() == 4).then_some(()) },
    )
    .await;
    assert_eq!(f.invoices().await, vec![(e.order_id, 2999)]);
    assert_eq!(f.db.count("processed_messages").await, 1);
    assert_eq!(
        f.broker
            .ready_count(&f.broker.topology.order_created_queue)
            .await,
        0
    );
    f.stop().await;
}

#[tokio::test]
async fn a_backlog_is_stored_many_messages_per_transaction() {
    const MESSAGES: usize = 200;
    let db = TestDatabase::migrated("worker_batches", Database::Invoices).await;
    let broker = TestBroker::new();
    broker.declare().await;
    // The backlog waits in the queue before the worker starts, so its first
    // deliveries arrive together.
    broker
        .publish_many(MESSAGES, 100, || {
            (body(&event(1234)), properties(&Uuid::now_v7().to_string()))
        })
        .await;

    let worker = RunningWorker::start(&db.url, &broker, WorkerSettings::default()).await;
    eventually(
        Duration::from_secs(10),
        "every message invoiced",
        || async { (db.count("invoices").await == MESSAGES as i64).then_some(()) },
    )
    .await;
    worker.stop().await;

    // A row's xmin is the transaction that wrote it.
    let transactions = db
        .scalar("SELECT count(DISTINCT xmin::text) FROM invoices")
        .await;
    let largest = db
        .scalar("SELECT max(n) FROM (SELECT count(*) AS n FROM invoices GROUP BY xmin::text) t")
        .await;
    println!("{MESSAGES} invoices in {transactions} transactions, the largest of {largest}");
    assert!(
        transactions <= MESSAGES as i64 / 10,
        "{MESSAGES} invoices took {transactions} transactions: batches are not stored in one"
    );
    // Each message's dedupe record commits with its invoice.
    assert_eq!(
        db.scalar(
            "SELECT count(*) FROM invoices i JOIN processed_messages p USING (message_id)
             WHERE i.xmin::text = p.xmin::text"
        )
        .await,
        MESSAGES as i64
    );
}

#[tokio::test]
async fn two_messages_for_one_order_make_one_invoice() {
    let f = Fixture::start().await;
    let e = event(100);

    f.broker
        .publish_raw(&body(&e), properties(&Uuid::now_v7().to_string()))
        .await;
    f.broker
        .publish_raw(&body(&e), properties(&Uuid::now_v7().to_string()))
        .await;

    eventually(
        Duration::from_secs(10),
        "the second message to be skipped",
        || async { (f.stats.duplicates.get() == 1).then_some(()) },
    )
    .await;
    assert_eq!(f.invoices().await.len(), 1);
    f.stop().await;
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_with_a_reason() {
    let f = Fixture::start().await;
    let good = event(4200);
    let valid = body(&good);
    let id = || Uuid::now_v7().to_string();
    let mut no_version = properties(&id());
    no_version = no_version.with_headers(FieldTable::default());
    let mut version_2 = FieldTable::default();
    version_2.insert(headers::SCHEMA_VERSION.into(), AMQPValue::LongLongInt(2));
    let mut string_version = FieldTable::default();
    string_version.insert(
        headers::SCHEMA_VERSION.into(),
        AMQPValue::LongString(LongString::from("one")),
    );
    let bad: Vec<(Vec<u8>, BasicProperties, &str)> = vec![
        (
            b"\x00\xffnot json".to_vec(),
            properties(&id()),
            "malformed-body",
        ),
        (
            br#"{"order_id": 1}"#.to_vec(),
            properties(&id()),
            "malformed-body",
        ),
        (
            valid.clone(),
            BasicProperties::default().with_type("OrderCreated".into()),
            "missing-message-id",
        ),
        (
            valid.clone(),
            properties("not-a-uuid"),
            "invalid-message-id",
        ),
        (
            valid.clone(),
            properties(&id()).with_type("OrderShipped".into()),
            "unknown-type",
        ),
        (valid.clone(), no_version, "invalid-schema-version"),
        (
            valid.clone(),
            properties(&id()).with_headers(string_version),
            "invalid-schema-version",
        ),
        (
            valid.clone(),
            properties(&id()).with_headers(version_2),
            "unsupported-version",
        ),
        (
            valid.clone(),
            properties(&id()).with_content_type("text/plain".into()),
            "wrong-content-type",
        ),
        (
            serde_json::to_vec(&OrderCreatedV1 {
                amount_cents: -1,
                ..good.clone()
            })
            .unwrap(),
            properties(&id()),
            "invalid-event",
        ),
    ];
    let mut expected: Vec<&str> = bad.iter().map(|(_, _, code)| *code).collect();
    let oversized = {
        let mut event = serde_json::to_value(&good).unwrap();
        event["padding"] = "x".repeat(2 * contracts::event::MAX_BODY_BYTES).into();
        serde_json::to_vec(&event).unwrap()
    };

    for (payload, props, _) in bad {
        f.broker.publish_raw(&payload, props).await;
    }
    f.broker.publish_raw(&oversized, properties(&id())).await;
    expected.push("oversized");
    // A stranger who knows the queue's name publishes to it directly.
    let queue = f.broker.topology.order_created_queue.clone();
    f.broker
        .publish_to_queue(&queue, "{\"amount\": \"💸\"}".as_bytes(), properties(&id()))
        .await;
    expected.push("malformed-body");
    f.broker
        .publish_to_queue(
            &queue,
            &[0xde, 0xad, 0xbe, 0xef],
            BasicProperties::default(),
        )
        .await;
    expected.push("missing-message-id");
    f.broker.publish_raw(&valid, properties(&id())).await;

    eventually(
        Duration::from_secs(10),
        "the valid message after the bad ones",
        || async { (f.invoices().await.len() == 1).then_some(()) },
    )
    .await;
    let mut reasons = Vec::new();
    while let Some(d) = f.broker.get(&f.broker.topology.dead_letter_queue).await {
        let reason = plumbing::broker::header_str(&d.properties, headers::DEAD_LETTER_REASON)
            .unwrap()
            .to_owned();
        reasons.push(reason);
    }
    let codes: Vec<&str> = reasons
        .iter()
        .map(|r| r.split(':').next().unwrap())
        .collect();
    assert_eq!(codes, expected, "{reasons:#?}");
    assert_eq!(
        f.invoices().await,
        vec![(good.order_id, 4200)],
        "no invoice from a bad message"
    );
    assert_eq!(f.stats.dead_lettered_total(), 13);
    f.stop().await;
}

#[tokio::test]
async fn a_database_outage_is_retried_not_dead_lettered() {
    let proxy = TcpProxy::start(&devkit::db::server_addr()).await;
    let f = Fixture::start_via(Some(&proxy)).await;
    let e = event(777);

    proxy.cut();
    f.broker
        .publish_raw(&body(&e), properties(&Uuid::now_v7().to_string()))
        .await;
    // The premise: the worker has the message and has failed to store it, twice,
    // while the database was away.
    eventually(
        Duration::from_secs(10),
        "two failed attempts to store the message",
        || async { (f.stats.retries.get() >= 2).then_some(()) },
    )
    .await;
    assert!(f.invoices().await.is_empty());
    assert_eq!(
        f.broker
            .ready_count(&f.broker.topology.dead_letter_queue)
            .await,
        0
    );
    assert_eq!(f.stats.dead_lettered_total(), 0);

    proxy.restore();
    eventually(
        Duration::from_secs(30),
        "the invoice after the outage",
        || async { (f.invoices().await.len() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        f.broker
            .ready_count(&f.broker.topology.dead_letter_queue)
            .await,
        0
    );
    assert_eq!(
        f.broker
            .ready_count(&f.broker.topology.order_created_queue)
            .await,
        0
    );
    f.stop().await;
}

/// lapin can leave an ack pending for ever when the connection breaks under it
/// (seen in the fault suite: a worker stuck after a network cut, the queue
/// growing). The worker must notice the broken connection and reconnect anyway.
#[tokio::test]
async fn broker_connections_broken_mid_batch_are_reconnected() {
    const CUTS: usize = 12;
    let db = TestDatabase::migrated("worker", Database::Invoices).await;
    let broker = Arc::new(TestBroker::new());
    broker.declare().await;
    let proxy = TcpProxy::start(&server_addr(&broker.url, 5672)).await;
    let worker = RunningWorker::start_via(
        &db.url,
        &swap_host(&broker.url, proxy.addr),
        &broker,
        WorkerSettings::default(),
    )
    .await;

    // A steady trickle, so that small batches are always being stored and
    // acknowledged, while the connection is cut again and again.
    let publishing = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn({
        let (broker, publishing) = (broker.clone(), publishing.clone());
        async move {
            let mut sent = 0;
            while !publishing.is_cancelled() {
                broker
                    .publish_many(5, 5, || {
                        let id = Uuid::now_v7().to_string();
                        (body(&event(1234)), properties(&id))
                    })
                    .await;
                sent += 5;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            sent
        }
    });
    let mut jitter = Jitter::new(7);
    for _ in 0..CUTS {
        tokio::time::sleep(Duration::from_millis(100 + jitter.below(200))).await;
        proxy.cut();
        tokio::time::sleep(Duration::from_millis(50 + jitter.below(100))).await;
        proxy.restore();
    }
    publishing.cancel();
    let sent = publisher.await.unwrap();
    eventually(
        Duration::from_secs(30),
        "every message invoiced after the cuts",
        || async { (db.count("invoices").await == sent).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(10), "the queue to empty", || async {
        (broker
            .ready_count(&broker.topology.order_created_queue)
            .await
            == 0)
            .then_some(())
    })
    .await;
    worker.stop().await;
}

/// The guard the worker's session selects on: a connection cut with nothing in
/// flight is reported at once, with the cause.
#[tokio::test]
async fn a_cut_connection_is_reported_as_lost() {
    let broker = TestBroker::new();
    let proxy = TcpProxy::start(&server_addr(&broker.url, 5672)).await;
    let connection = plumbing::broker::connect(&swap_host(&broker.url, proxy.addr), "test")
        .await
        .unwrap();
    let mut lost = std::pin::pin!(plumbing::broker::lost(&connection));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut lost)
            .await
            .is_err(),
        "a healthy connection is not lost"
    );
    proxy.cut();
    let error = tokio::time::timeout(Duration::from_secs(5), lost)
        .await
        .expect("the cut is reported within 5 s");
    assert!(
        error.to_string().to_lowercase().contains("io"),
        "the cause is the broken socket: {error}"
    );
}
