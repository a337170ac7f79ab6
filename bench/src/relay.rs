//! Relay: drain rate of an outbox backlog beside the raw confirmed-publish rate of
//! a minimal lapin publisher (same message size, persistence, queue type and
//! window), measured in the same run; then commit→consume latency of an idle relay.

use std::time::{Duration, Instant};

use devkit::{broker::TestBroker, db::TestDatabase};
use orders_api::{
    domain::{Amount, NewOrder},
    outbox::RequestContext,
};
use outbox_relay::{config::RelaySettings, relay::Relay};
use plumbing::db::Database;
use tokio_util::sync::CancellationToken;

use crate::{Row, Scale, Section, ms, percentile, rate, verdict};

/// Runs the relay benchmark.
pub async fn run(scale: Scale) -> Section {
    let events: usize = scale.pick(100_000, 5_000);
    let samples: usize = scale.pick(300, 20);
    let settings = RelaySettings::default();
    let window = usize::try_from(settings.batch_size).unwrap();

    let db = TestDatabase::migrated("bench_relay", Database::Orders).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let queue = broker.topology.order_created_queue.clone();

    // A representative event body: what the API writes for one order.
    let (payload, headers) = sample_event(&db).await;
    // The relay sends the stored JSON text as it is; so does the baseline.
    let body = payload_text(&db, &payload).await.into_bytes();

    // 1. Baseline: a minimal confirmed publisher. Warm up the broker and the
    // queue, then measure the baseline before and after the relay (background
    // work of the broker after a purge, checkpoints of the database: the two runs
    // bracket whatever the machine was doing).
    raw_publish(&broker, &body, &headers, events / 10, window).await;
    broker.purge(&queue).await;
    let cpu = crate::Cpu::now();
    let raw_before = raw_publish(&broker, &body, &headers, events, window).await;
    let raw_cpu = cpu.since();
    broker.purge(&queue).await;

    // 2. The relay draining a backlog of the same size.
    seed_backlog(&db, events, &payload, &headers).await;
    let mut relay = Relay::new(
        db.pool(),
        plumbing::db::parse_url(&db.url).unwrap(),
        broker.url.clone(),
        broker.topology.clone(),
        settings,
    );
    relay.ensure_publisher().await.unwrap();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let cpu = crate::Cpu::now();
    let mut published = 0;
    while published < events {
        published += relay.drain(&shutdown).await.unwrap();
    }
    let drain = rate(published, started.elapsed());
    let relay_cpu = cpu.since();
    assert_eq!(
        broker.ready_count(&queue).await as usize,
        events,
        "every event in the queue once"
    );
    broker.purge(&queue).await;
    let raw_after = raw_publish(&broker, &body, &headers, events, window).await;
    broker.purge(&queue).await;
    let raw = f64::midpoint(raw_before, raw_after);

    // 3. Latency of an idle relay woken by NOTIFY.
    let mut latencies = latency(&db, &broker, settings, samples).await;
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);

    let ratio = drain / raw;
    // Whole-machine CPU per message: what PostgreSQL's claims and marks add.
    #[allow(clippy::cast_precision_loss)]
    let per_thousand = |(busy, _): (f64, f64)| busy * 1e3 / events as f64 * 1e3;
    Section {
        name: "relay",
        rows: vec![
            Row::new(
                format!(
                    "drain of a {events}-event backlog ({} B bodies, window {window})",
                    body.len()
                ),
                format!("{drain:.0} events/s"),
                format!(
                    "raw lapin confirmed publish {raw:.0} msg/s ({raw_before:.0} before / {raw_after:.0} after)"
                ),
                format!("{:.1} %", 100.0 * ratio),
                verdict("≥ 70 % of raw", ratio >= 0.7),
            ),
            Row::new(
                "whole machine while publishing: CPU busy, CPU ms per 1,000 events",
                format!(
                    "relay {:.0} % busy, {:.0} ms",
                    relay_cpu.1 * 100.0,
                    per_thousand(relay_cpu)
                ),
                format!(
                    "raw {:.0} % busy, {:.0} ms",
                    raw_cpu.1 * 100.0,
                    per_thousand(raw_cpu)
                ),
                format!(
                    "{:.2}× the CPU",
                    per_thousand(relay_cpu) / per_thousand(raw_cpu)
                ),
                "",
            ),
            Row::new(
                format!("idle relay commit→consume ({samples} orders)"),
                format!("p50 {:.2} ms, p99 {:.2} ms", ms(p50), ms(p99)),
                "",
                "",
                "",
            ),
        ],
        json: serde_json::json!({
            "events": events,
            "body_bytes": body.len(),
            "window": window,
            "raw_publish_per_s": raw.round(),
            "raw_publish_before_per_s": raw_before.round(),
            "raw_publish_after_per_s": raw_after.round(),
            "relay_drain_per_s": drain.round(),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "cpu_busy_raw": (raw_cpu.1 * 100.0).round() / 100.0,
            "cpu_busy_relay": (relay_cpu.1 * 100.0).round() / 100.0,
            "cpu_ms_per_1000_raw": per_thousand(raw_cpu).round(),
            "cpu_ms_per_1000_relay": per_thousand(relay_cpu).round(),
            "commit_to_consume_p50_ms": ms(p50),
            "commit_to_consume_p99_ms": ms(p99),
        }),
    }
}

/// The payload and headers the API would store for one order.
pub(crate) async fn sample_event(db: &TestDatabase) -> (serde_json::Value, serde_json::Value) {
    orders_api::store::create_order(
        &db.pool(),
        &devkit::messages::customer(),
        &NewOrder {
            id: uuid::Uuid::now_v7(),
            amount: Amount::from_cents(2999).unwrap(),
            currency: contracts::Currency::BRL,
        },
        &RequestContext {
            request_id: Some(uuid::Uuid::new_v4().to_string()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        },
    )
    .await
    .unwrap();
    let client = db.client().await;
    let row = client
        .query_one("SELECT payload, headers FROM outbox", &[])
        .await
        .unwrap();
    client.execute("DELETE FROM outbox", &[]).await.unwrap();
    (row.get(0), row.get(1))
}

/// The text PostgreSQL renders for a `jsonb` payload (what the relay publishes).
pub(crate) async fn payload_text(db: &TestDatabase, payload: &serde_json::Value) -> String {
    db.client()
        .await
        .query_one("SELECT $1::jsonb::text", &[payload])
        .await
        .unwrap()
        .get(0)
}

/// Inserts `n` unpublished events, one aggregate each, in one statement.
async fn seed_backlog(
    db: &TestDatabase,
    n: usize,
    payload: &serde_json::Value,
    headers: &serde_json::Value,
) {
    let client = db.client().await;
    client
        .execute(
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload, headers)
             SELECT gen_random_uuid(), 'order', gen_random_uuid(), 'OrderCreated', 1, $2, $3
             FROM generate_series(1, $1)",
            &[&i32::try_from(n).unwrap(), payload, headers],
        )
        .await
        .unwrap();
    client.batch_execute("VACUUM ANALYZE outbox").await.unwrap();
}

/// Publishes `n` persistent messages with the same body and properties as the
/// relay's, through the same exchange and routing key, with at most `window`
/// unconfirmed; returns messages per second.
async fn raw_publish(
    broker: &TestBroker,
    body: &[u8],
    headers: &serde_json::Value,
    n: usize,
    window: usize,
) -> f64 {
    let extra: Vec<(&str, String)> = headers
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap().to_owned()))
        .collect();
    let started = Instant::now();
    broker
        .publish_many(n, window, || {
            let properties = plumbing::broker::Outbound {
                message_id: uuid::Uuid::now_v7(),
                event_type: "OrderCreated",
                schema_version: 1,
                timestamp: 1_800_000_000,
                headers: extra.clone(),
            }
            .properties();
            (body.to_vec(), properties)
        })
        .await;
    rate(n, started.elapsed())
}

/// Commit→consume latency of single orders written to an idle relay.
async fn latency(
    db: &TestDatabase,
    broker: &TestBroker,
    settings: RelaySettings,
    samples: usize,
) -> Vec<Duration> {
    let mut seen = broker.watch(&broker.topology.order_created_queue).await;
    let relay = Relay::new(
        db.pool(),
        plumbing::db::parse_url(&db.url).unwrap(),
        broker.url.clone(),
        broker.topology.clone(),
        settings,
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pool = db.pool();
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let new = NewOrder {
            id: uuid::Uuid::now_v7(),
            amount: Amount::from_cents(100 + i64::try_from(i).unwrap()).unwrap(),
            currency: contracts::Currency::BRL,
        };
        orders_api::store::create_order(
            &pool,
            &devkit::messages::customer(),
            &new,
            &RequestContext::default(),
        )
        .await
        .unwrap();
        let committed = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        latencies.push(committed.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await.unwrap();
    latencies
}
