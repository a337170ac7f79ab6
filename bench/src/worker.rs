//! Worker: drain rate of a queue of `OrderCreated` events, beside pgbench running
//! the same per-message SQL on the same database and the worker handling one
//! message per transaction, all in the same run.

use std::time::{Duration, Instant};

use devkit::{broker::TestBroker, db::TestDatabase};
use invoices_worker::worker::{Worker, WorkerSettings};
use plumbing::db::Database;
use tokio_util::sync::CancellationToken;

use crate::{Row, Scale, Section, rate, verdict};

/// The SQL the worker runs for one message, as a pgbench script.
const PER_MESSAGE_SQL: &str = "WITH seen AS (
    INSERT INTO processed_messages (message_id) VALUES (gen_random_uuid())
    ON CONFLICT (message_id) DO NOTHING RETURNING message_id)
INSERT INTO invoices (id, order_id, message_id, amount_cents, currency, order_created_at)
SELECT gen_random_uuid(), gen_random_uuid(), seen.message_id, 2999, 'BRL', now() FROM seen
ON CONFLICT (order_id) DO NOTHING;
";

/// Runs the worker benchmark.
pub async fn run(scale: Scale) -> Section {
    let events: usize = scale.pick(100_000, 5_000);
    let single: usize = scale.pick(20_000, 1_000);
    let pgbench_seconds: u64 = scale.pick(10, 2);
    let settings = WorkerSettings::default();

    let broker = TestBroker::new();
    broker.declare().await;

    // 1. pgbench: the per-message SQL, one message per transaction, 4 clients.
    let db = TestDatabase::migrated("bench_pgbench", Database::Invoices).await;
    let pgbench = crate::pgbench(&db.url, PER_MESSAGE_SQL, 4, pgbench_seconds);
    drop(db);

    // 2. The worker draining a queue of `events` messages, batched.
    let batched = drain(&broker, events, settings).await;

    // 3. The same worker handling one message per transaction.
    let one = drain(
        &broker,
        single,
        WorkerSettings {
            batch_size: 1,
            ..settings
        },
    )
    .await;

    let ratio = batched / pgbench;
    Section {
        name: "worker",
        rows: vec![
            Row::new(
                format!(
                    "drain of {events} queued events (batch {}, prefetch {})",
                    settings.batch_size, settings.prefetch
                ),
                format!("{batched:.0} msg/s"),
                format!("pgbench, per-message SQL, 4 clients: {pgbench:.0} msg/s"),
                format!("{:.1} %", 100.0 * ratio),
                verdict("≥ 70 % of pgbench", ratio >= 0.7),
            ),
            Row::new(
                format!("one message per transaction ({single} events)"),
                format!("{one:.0} msg/s"),
                "",
                format!("batching: {:.1}×", batched / one),
                "",
            ),
        ],
        json: serde_json::json!({
            "events": events,
            "pgbench_per_s": pgbench.round(),
            "worker_drain_per_s": batched.round(),
            "one_per_transaction_per_s": one.round(),
            "ratio_pgbench": (ratio * 1000.0).round() / 1000.0,
            "ratio_one_per_transaction": (batched / one * 100.0).round() / 100.0,
        }),
    }
}

/// Queues `n` valid events, then times a worker (fresh database) draining them.
async fn drain(broker: &TestBroker, n: usize, settings: WorkerSettings) -> f64 {
    let db = TestDatabase::migrated("bench_worker", Database::Invoices).await;
    queue_events(broker, n).await;
    let worker = Worker::new(
        db.pool(),
        broker.url.clone(),
        broker.topology.clone(),
        settings,
    );
    let metrics = worker.metrics();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    while metrics.invoiced.get() < n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(db.count("invoices").await as usize, n);
    rate(n, elapsed)
}

/// Publishes `n` distinct `OrderCreated` events to the queue, 500 unconfirmed at most.
async fn queue_events(broker: &TestBroker, n: usize) {
    broker
        .publish_many(n, 500, || {
            let id = uuid::Uuid::now_v7().to_string();
            (
                devkit::messages::body(&devkit::messages::order_created(2999)),
                devkit::messages::properties(&id),
            )
        })
        .await;
}
