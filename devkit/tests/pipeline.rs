//! The relay and the worker together: a crash between publish and mark.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use devkit::worker::RunningWorker;
use devkit::{broker::TestBroker, db::TestDatabase, eventually};
use invoices_worker::worker::WorkerSettings;
use orders_api::{
    domain::{Amount, NewOrder},
    outbox::RequestContext,
};
use outbox_relay::{config::RelaySettings, publisher::Publisher, relay::Relay, store};
use plumbing::db::Database;

#[tokio::test]
async fn relay_crash_after_publish_before_mark_still_gives_one_invoice() {
    let orders = TestDatabase::migrated("pipe_orders", Database::Orders).await;
    let invoices = TestDatabase::migrated("pipe_invoices", Database::Invoices).await;
    let broker = TestBroker::new();
    // The worker's queue exists, as after provision-broker (the relay declares
    // only its exchange).
    broker.declare().await;
    let order = orders_api::store::create_order(
        &orders.pool(),
        &devkit::messages::customer(),
        &NewOrder {
            id: uuid::Uuid::now_v7(),
            amount: Amount::from_cents(1234).unwrap(),
            currency: contracts::Currency::BRL,
        },
        &RequestContext::default(),
    )
    .await
    .unwrap();

    // A relay claims the row and publishes it, then "dies": the broker confirmed,
    // but the row is never marked (the claim's connection goes away unfinished).
    let publisher = Publisher::connect(&broker.url, broker.topology.clone())
        .await
        .unwrap();
    let claim = store::claim_batch(&orders.pool(), 10, Duration::from_secs(30), 0)
        .await
        .unwrap();
    assert_eq!(claim.rows.len(), 1);
    let outcomes = publisher
        .publish_batch(&claim.rows, Duration::from_secs(5), &[])
        .await;
    assert!(
        matches!(
            outcomes.as_slice(),
            [outbox_relay::publisher::Outcome::Confirmed]
        ),
        "{outcomes:?}"
    );
    drop(claim);
    drop(publisher);

    let worker = RunningWorker::start(&invoices.url, &broker, WorkerSettings::default()).await;
    let stats = worker.metrics.clone();
    eventually(
        Duration::from_secs(10),
        "the first delivery to be invoiced",
        || async { (stats.invoiced.get() == 1).then_some(()) },
    )
    .await;

    // Another relay takes the row over (the dead one's locks went with its
    // connection) and publishes it again under the same message id.
    let mut relay = Relay::new(
        orders.pool(),
        plumbing::db::parse_url(&orders.url).unwrap(),
        broker.url.clone(),
        broker.topology.clone(),
        RelaySettings::default(),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.run_once().await.unwrap().published == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row was never re-published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    eventually(
        Duration::from_secs(10),
        "the re-published copy to be skipped",
        || async { (stats.duplicates.get() == 1).then_some(()) },
    )
    .await;
    let rows = invoices
        .client()
        .await
        .query("SELECT order_id, amount_cents FROM invoices", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "exactly one invoice");
    assert_eq!(rows[0].get::<_, uuid::Uuid>(0), order.id);
    assert_eq!(rows[0].get::<_, i64>(1), 1234);
    assert_eq!(stats.invoiced.get(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_replay_redelivers_the_same_ids_and_still_one_invoice_per_order() {
    use outbox_relay::{
        replay::{ReplayOptions, replay},
        store::ReplayFilter,
    };

    let orders = TestDatabase::migrated("replay_orders", Database::Orders).await;
    let invoices = TestDatabase::migrated("replay_invoices", Database::Invoices).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let mut tap = broker.tap().await;
    let mut ids = Vec::new();
    for cents in [100, 200, 300, 400] {
        let order = orders_api::store::create_order(
            &orders.pool(),
            &devkit::messages::customer(),
            &NewOrder {
                id: uuid::Uuid::now_v7(),
                amount: Amount::from_cents(cents).unwrap(),
                currency: contracts::Currency::BRL,
            },
            &RequestContext::default(),
        )
        .await
        .unwrap();
        ids.push(order.id);
    }
    let worker = RunningWorker::start(&invoices.url, &broker, WorkerSettings::default()).await;
    let stats = worker.metrics.clone();
    let mut relay = Relay::new(
        orders.pool(),
        plumbing::db::parse_url(&orders.url).unwrap(),
        broker.url.clone(),
        broker.topology.clone(),
        RelaySettings::default(),
    );
    assert_eq!(relay.run_once().await.unwrap().published, 4);
    let mut first = Vec::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(Duration::from_secs(5), tap.recv())
            .await
            .unwrap()
            .unwrap();
        first.push(d.properties.message_id().clone().unwrap().to_string());
    }
    eventually(Duration::from_secs(10), "four invoices", || async {
        (stats.invoiced.get() == 4).then_some(())
    })
    .await;

    // Replay the events of the second and third order by message-id range.
    let message_ids: Vec<uuid::Uuid> = orders
        .client()
        .await
        .query("SELECT message_id FROM outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let filter = ReplayFilter {
        from_message_id: Some(message_ids[1]),
        to_message_id: Some(message_ids[2]),
        ..ReplayFilter::default()
    };
    let options = ReplayOptions {
        dry_run: false,
        rate: Some(1000.0),
        batch: 100,
        confirm_timeout: Duration::from_secs(5),
    };
    let metrics = outbox_relay::metrics::RelayMetrics::default();
    let report = replay(
        &orders.pool(),
        &broker.url,
        &broker.topology,
        &filter,
        options,
        &metrics,
        |_| {},
    )
    .await
    .unwrap();

    assert_eq!((report.matched, report.published), (2, 2));
    assert_eq!(metrics.replayed.get(), 2, "replayed events are counted");
    let mut again = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), tap.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            plumbing::broker::header_str(&d.properties, contracts::headers::REPLAY),
            Some(report.replay_id.to_string().as_str())
        );
        again.push(d.properties.message_id().clone().unwrap().to_string());
    }
    assert_eq!(again, first[1..3].to_vec(), "same message ids, same order");
    eventually(
        Duration::from_secs(10),
        "the replayed copies to be skipped",
        || async { (stats.duplicates.get() == 2).then_some(()) },
    )
    .await;
    assert_eq!(
        invoices.count("invoices").await,
        4,
        "still one invoice per order"
    );
    let recorded: (i64, i64, bool) = {
        let row = orders
            .client()
            .await
            .query_one(
                "SELECT matched, published, finished_at IS NOT NULL FROM outbox_replays",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(recorded, (2, 2, true));

    // A dry run lists without publishing.
    let dry = replay(
        &orders.pool(),
        &broker.url,
        &broker.topology,
        &ReplayFilter::default(),
        ReplayOptions {
            dry_run: true,
            ..options
        },
        &metrics,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((dry.matched, dry.published), (4, 0));
    assert_eq!(metrics.replayed.get(), 2, "a dry run replays nothing");
    // Nothing reached the exchange: the next message a tap gets is a marker sent
    // after the dry run (a queue delivers in order).
    let marker = broker.publish_marker().await;
    let next = tokio::time::timeout(Duration::from_secs(5), tap.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next.properties.message_id().as_ref().map(|id| id.as_str()),
        Some(marker.as_str()),
        "the dry run published something"
    );
    worker.stop().await;
}
