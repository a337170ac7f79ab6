//! Batches, competing consumers, outages, the delivery limit, the DLQ commands,
//! dedupe retention and the invoice endpoint.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use contracts::OrderCreatedV1;
use devkit::{
    broker::TestBroker,
    db::TestDatabase,
    eventually,
    messages::{body, order_created as event, properties},
    proxy::TcpProxy,
    worker::RunningWorker,
};
use invoices_worker::{dlq, store, worker::WorkerSettings};
use plumbing::db::Database;
use uuid::Uuid;

async fn publish(broker: &TestBroker, message_id: Uuid, e: &OrderCreatedV1) {
    broker
        .publish_raw(&body(e), properties(&message_id.to_string()))
        .await;
}

#[tokio::test]
async fn the_same_message_to_two_competing_consumers_makes_one_invoice() {
    let db = TestDatabase::migrated("worker_compete", Database::Invoices).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let settings = WorkerSettings {
        prefetch: 1,
        batch_size: 1,
        ..WorkerSettings::default()
    };
    let a = RunningWorker::start(&db.url, &broker, settings).await;
    let b = RunningWorker::start(&db.url, &broker, settings).await;
    let e = event(500);
    let id = Uuid::now_v7();

    futures::future::join_all((0..5).map(|_| publish(&broker, id, &e))).await;

    let handled = || {
        a.metrics.invoiced.get()
            + a.metrics.duplicates.get()
            + b.metrics.invoiced.get()
            + b.metrics.duplicates.get()
    };
    eventually(
        Duration::from_secs(10),
        "five deliveries handled",
        || async { (handled() == 5).then_some(()) },
    )
    .await;
    assert_eq!(a.metrics.invoiced.get() + b.metrics.invoiced.get(), 1);
    assert_eq!(db.count("invoices").await, 1);
    assert!(
        a.metrics.consumed.get() > 0 && b.metrics.consumed.get() > 0,
        "both consumed"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_mixed_batch_is_settled_message_by_message() {
    let db = TestDatabase::migrated("worker_batch", Database::Invoices).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let good: Vec<(Uuid, OrderCreatedV1)> =
        (1..=3).map(|i| (Uuid::now_v7(), event(i * 100))).collect();
    // Queued before the worker starts, so that they arrive as one batch.
    for (id, e) in &good {
        publish(&broker, *id, e).await;
    }
    publish(&broker, good[0].0, &good[0].1).await;
    publish(&broker, good[1].0, &good[1].1).await;
    broker
        .publish_raw(b"not json", properties(&Uuid::now_v7().to_string()))
        .await;
    broker
        .publish_raw(
            &serde_json::to_vec(&good[2].1).unwrap(),
            properties(&Uuid::now_v7().to_string()).with_type("Refund".into()),
        )
        .await;

    let w = RunningWorker::start(&db.url, &broker, WorkerSettings::default()).await;
    eventually(
        Duration::from_secs(10),
        "seven deliveries handled",
        || async {
            (w.metrics.invoiced.get()
                + w.metrics.duplicates.get()
                + w.metrics.dead_lettered_total()
                == 7)
                .then_some(())
        },
    )
    .await;
    assert_eq!(w.metrics.invoiced.get(), 3);
    assert_eq!(w.metrics.duplicates.get(), 2);
    assert_eq!(w.metrics.dead_lettered_total(), 2);
    assert_eq!(db.count("invoices").await, 3);
    w.stop().await;
    // Everything was acked or rejected: nothing returns to the queue at shutdown.
    assert_eq!(
        broker
            .ready_count(&broker.topology.order_created_queue)
            .await,
        0
    );
    let listed = dlq::list(&broker.url, &broker.topology, 10).await.unwrap();
    let mut reasons: Vec<&str> = listed
        .iter()
        .map(|m| m.reason.split(':').next().unwrap())
        .collect();
    reasons.sort_unstable();
    assert_eq!(reasons, vec!["malformed-body", "unknown-type"]);
    // Listing leaves them in place: the broker returns unacked messages to the
    // queue asynchronously once the listing channel is closed.
    eventually(
        Duration::from_secs(5),
        "listed messages back in the DLQ",
        || async {
            (broker.ready_count(&broker.topology.dead_letter_queue).await == 2).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_database_cut_acks_nothing_uncommitted_and_recovers() {
    let db = TestDatabase::migrated("worker_cut", Database::Invoices).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let proxy = TcpProxy::start(&devkit::db::server_addr()).await;
    let events: Vec<(Uuid, OrderCreatedV1)> =
        (1..=50).map(|i| (Uuid::now_v7(), event(i))).collect();
    proxy.cut();
    let settings = WorkerSettings {
        max_attempts: 1_000,
        ..WorkerSettings::default()
    };
    let w = RunningWorker::start(&db.url_via(proxy.addr), &broker, settings).await;
    for (id, e) in &events {
        publish(&broker, *id, e).await;
    }
    eventually(Duration::from_secs(10), "the worker to retry", || async {
        (w.metrics.retries.get() > 0).then_some(())
    })
    .await;
    w.stop().await;
    assert_eq!(db.count("invoices").await, 0);
    // Nothing acked that was not committed: all 50 return to the queue (the
    // broker requeues a closed consumer's unacked messages asynchronously).
    eventually(
        Duration::from_secs(5),
        "all 50 deliveries back in the queue",
        || async {
            (broker
                .ready_count(&broker.topology.order_created_queue)
                .await
                == 50)
                .then_some(())
        },
    )
    .await;

    proxy.restore();
    let w = RunningWorker::start(&db.url_via(proxy.addr), &broker, settings).await;
    eventually(
        Duration::from_secs(20),
        "fifty invoices after recovery",
        || async { (w.metrics.invoiced.get() == 50).then_some(()) },
    )
    .await;
    assert_eq!(db.count("invoices").await, 50);
    assert_eq!(db.count("processed_messages").await, 50);
    w.stop().await;
}

#[tokio::test]
async fn a_message_that_always_fails_transiently_ends_in_the_dlq_and_can_be_requeued() {
    let db = TestDatabase::migrated("worker_limit", Database::Invoices).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let proxy = TcpProxy::start(&devkit::db::server_addr()).await;
    proxy.cut();
    // One attempt per delivery: every delivery hands the message back at once.
    let settings = WorkerSettings {
        max_attempts: 1,
        ..WorkerSettings::default()
    };
    let w = RunningWorker::start(&db.url_via(proxy.addr), &broker, settings).await;
    let (id, e) = (Uuid::now_v7(), event(4242));
    publish(&broker, id, &e).await;

    eventually(
        Duration::from_secs(30),
        "the delivery limit to dead-letter it",
        || async {
            (broker.ready_count(&broker.topology.dead_letter_queue).await == 1).then_some(())
        },
    )
    .await;
    assert!(w.metrics.requeued.get() >= contracts::topology::DELIVERY_LIMIT as u64);
    let listed = dlq::list(&broker.url, &broker.topology, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].message_id.as_deref(),
        Some(id.to_string().as_str())
    );
    assert!(
        listed[0].reason.contains("delivery_limit"),
        "{}",
        listed[0].reason
    );
    w.stop().await;

    // After the fix: requeue, and it is invoiced once.
    proxy.restore();
    let w = RunningWorker::start(&db.url, &broker, WorkerSettings::default()).await;
    let n = dlq::requeue(
        &broker.url,
        &broker.topology,
        &dlq::Selection::Messages(vec![id]),
    )
    .await
    .unwrap();
    assert_eq!(n, 1);
    eventually(
        Duration::from_secs(10),
        "the requeued message to be invoiced",
        || async { (w.metrics.invoiced.get() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        broker.ready_count(&broker.topology.dead_letter_queue).await,
        0
    );
    // Requeued again (say, by mistake): still one invoice.
    publish(&broker, id, &e).await;
    eventually(
        Duration::from_secs(10),
        "the copy to be skipped",
        || async { (w.metrics.duplicates.get() == 1).then_some(()) },
    )
    .await;
    assert_eq!(db.count("invoices").await, 1);
    w.stop().await;
}

#[tokio::test]
async fn purge_keeps_dedupe_records_inside_the_window() {
    let db = TestDatabase::migrated("worker_purge", Database::Invoices).await;
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO processed_messages (message_id, processed_at)
             SELECT gen_random_uuid(), now() - interval '9 days' FROM generate_series(1, 25)
             UNION ALL
             SELECT gen_random_uuid(), now() - interval '7 days' FROM generate_series(1, 5)
             UNION ALL
             SELECT gen_random_uuid(), now() FROM generate_series(1, 5)",
            &[],
        )
        .await
        .unwrap();

    let purged = store::purge_processed(&db.pool(), Duration::from_secs(8 * 86_400), 10)
        .await
        .unwrap();

    assert_eq!(purged, 25);
    assert_eq!(db.count("processed_messages").await, 10);
}

#[tokio::test]
async fn ready_only_while_the_database_and_the_broker_answer() {
    use invoices_worker::{config::Config, startup::Application};
    use plumbing::{
        config::{BrokerConfig, Secret, ServiceConfig},
        db::PoolOptions,
        service::Service as _,
    };

    let db = TestDatabase::migrated("worker_ready", Database::Invoices).await;
    let broker = TestBroker::new();
    let db_proxy = TcpProxy::start(&devkit::db::server_addr()).await;
    let broker_proxy = TcpProxy::start(&devkit::broker::server_addr()).await;
    let config = Config {
        service: ServiceConfig {
            pool: PoolOptions {
                max_size: 2,
                wait_timeout: Duration::from_millis(500),
                ..PoolOptions::DEFAULT
            },
            ..devkit::service_config(db.url_via(db_proxy.addr))
        },
        broker: BrokerConfig {
            url: Secret::url(devkit::swap_host(&broker.url, broker_proxy.addr)),
            namespace: broker.namespace.clone(),
        },
        worker: WorkerSettings::default(),
        dedupe_retention: Duration::from_secs(86_400),
        purge_interval: Duration::from_secs(3_600),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = Application::build(&config, &shutdown).await.unwrap();
    let port = app.port().unwrap();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    devkit::assert_ready_follows(port, &db_proxy, &broker_proxy).await;

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
