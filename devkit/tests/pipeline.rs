//! The relay and the worker together: a crash between publish and mark.

#![allow(clippy::unwrap_used)]

use std::{sync::atomic::Ordering, time::Duration};

use devkit::{broker::TestBroker, db::TestDatabase, eventually};
use invoices_worker::worker::Worker;
use orders_api::{
    domain::{Amount, NewOrder},
    outbox::RequestContext,
};
use outbox_relay::{config::RelaySettings, publisher::Publisher, relay::Relay, store};
use plumbing::db::Database;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn relay_crash_after_publish_before_mark_still_gives_one_invoice() {
    let orders = TestDatabase::migrated("pipe_orders", Database::Orders).await;
    let invoices = TestDatabase::migrated("pipe_invoices", Database::Invoices).await;
    let broker = TestBroker::new();
    let order = orders_api::store::create_order(
        &orders.pool(),
        &NewOrder {
            id: uuid::Uuid::now_v7(),
            amount: Amount::from_cents(1234).unwrap(),
            currency: "BRL".into(),
        },
        &RequestContext::default(),
    )
    .await
    .unwrap();

    // A relay claims the row with a short lease and publishes it, then "dies":
    // the broker confirmed, but the row is never marked.
    let publisher = Publisher::connect(&broker.url, broker.topology.clone())
        .await
        .unwrap();
    let rows = store::claim_batch(&orders.pool(), 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let outcomes = publisher
        .publish_batch(&rows, Duration::from_secs(5), &[])
        .await;
    assert_eq!(outcomes, vec![outbox_relay::publisher::Outcome::Confirmed]);
    drop(publisher);

    let worker = Worker::new(
        invoices.pool(),
        broker.url.clone(),
        broker.topology.clone(),
        10,
        Duration::from_secs(5),
    );
    let stats = worker.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    eventually(
        Duration::from_secs(10),
        "the first delivery to be invoiced",
        || async { (stats.invoiced.load(Ordering::Relaxed) == 1).then_some(()) },
    )
    .await;

    // Another relay takes the row over once the lease has run out and publishes it
    // again under the same message id.
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
        || async { (stats.duplicates.load(Ordering::Relaxed) == 1).then_some(()) },
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
    assert_eq!(stats.invoiced.load(Ordering::Relaxed), 1);
    shutdown.cancel();
    task.await.unwrap();
}
