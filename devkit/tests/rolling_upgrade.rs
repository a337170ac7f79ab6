//! A rolling upgrade to `OrderCreated` 1.1 (events with `customer_id`), with
//! every mix that can be in flight at once: 1.0 events written before the
//! upgrade (published and waiting in the queue, or still in the outbox), 1.0
//! events from an API replica of the previous release still running, and 1.1
//! events from the new API. The new worker invoices each once, with its customer
//! where the event has one; the previous worker's decoder (`devkit::legacy`)
//! reads everything the new release publishes; nothing is dead-lettered; and a
//! replay of all of it, the events from before the upgrade included, still
//! makes exactly one invoice per order.

#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, time::Duration};

use devkit::{broker::TestBroker, db::TestDatabase, eventually, worker::RunningWorker};
use invoices_worker::worker::WorkerSettings;
use orders_api::{
    domain::{Amount, NewOrder},
    outbox::RequestContext,
};
use outbox_relay::{
    config::RelaySettings,
    relay::Relay,
    replay::{ReplayOptions, replay},
    store::ReplayFilter,
};
use plumbing::db::Database;
use uuid::Uuid;

/// The last orders migration before orders had customers.
const BEFORE_CUSTOMERS: i32 = 4;

/// An order and its event exactly as the API of the previous release wrote them:
/// its statement (no customer column) and its 1.0 payload.
async fn write_as_previous_release(db: &TestDatabase, cents: i64) -> Uuid {
    let event = devkit::messages::order_created_v1_0(cents);
    db.client()
        .await
        .execute(
            "WITH new_order AS (
                 INSERT INTO orders (id, amount_cents, currency, created_at)
                 VALUES ($1, $2, 'BRL', $3) RETURNING id)
             INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type,
                                 schema_version, payload, created_at)
             SELECT $4, 'order', new_order.id, 'OrderCreated', 1, $5, $3 FROM new_order",
            &[
                &event.order_id,
                &cents,
                &event.created_at,
                &Uuid::now_v7(),
                &serde_json::to_value(&event).unwrap(),
            ],
        )
        .await
        .unwrap();
    event.order_id
}

fn relay(orders: &TestDatabase, broker: &TestBroker) -> Relay {
    Relay::new(
        orders.pool(),
        plumbing::db::parse_url(&orders.url).unwrap(),
        broker.url.clone(),
        broker.topology.clone(),
        RelaySettings::default(),
    )
}

#[tokio::test]
async fn every_mix_of_a_rolling_upgrade_is_invoiced_once_and_nothing_is_dead_lettered() {
    let orders =
        TestDatabase::at_version("upgrade_orders", Database::Orders, BEFORE_CUSTOMERS).await;
    let invoices = TestDatabase::migrated("upgrade_invoices", Database::Invoices).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let mut tap = broker.tap().await;

    // Before the upgrade: three orders; two published (waiting in the queue
    // for a worker), one still in the outbox.
    let mut customers: BTreeMap<Uuid, Option<String>> = BTreeMap::new();
    for cents in [101, 102] {
        customers.insert(write_as_previous_release(&orders, cents).await, None);
    }
    // The previous release's relay has no customer column to read either: it
    // publishes what is in the outbox.
    let mut relay_before = relay(&orders, &broker);
    assert_eq!(relay_before.run_once().await.unwrap().published, 2);
    drop(relay_before);
    customers.insert(write_as_previous_release(&orders, 103).await, None);

    // The deploy's migrate step. Every order written before stays valid, with
    // no customer.
    orders.upgrade(Database::Orders).await;
    let legacy: i64 = orders
        .client()
        .await
        .query_one("SELECT count(*) FROM orders WHERE customer_id IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(legacy, 3);

    // During the rollout: a replica of the previous release still writes 1.0
    // events, the new release writes 1.1 events with the customer.
    customers.insert(write_as_previous_release(&orders, 104).await, None);
    for (cents, customer) in [(201, "customer-a"), (202, "customer-b")] {
        let order = orders_api::store::create_order(
            &orders.pool(),
            &contracts::CustomerId::try_from(customer).unwrap(),
            &NewOrder {
                id: Uuid::now_v7(),
                amount: Amount::from_cents(cents).unwrap(),
                currency: contracts::Currency::BRL,
            },
            &RequestContext::default(),
        )
        .await
        .unwrap();
        customers.insert(order.id, Some(customer.to_owned()));
    }
    let mut relay = relay(&orders, &broker);
    assert_eq!(relay.run_once().await.unwrap().published, 4);

    // The previous worker's decoder reads every event published, 1.1 included.
    let mut published = Vec::new();
    for _ in 0..6 {
        let delivery = tokio::time::timeout(Duration::from_secs(5), tap.recv())
            .await
            .unwrap()
            .unwrap();
        let old = devkit::legacy::decode(&plumbing::broker::inbound(&delivery))
            .unwrap_or_else(|reason| panic!("the previous worker would dead-letter it: {reason}"));
        published.push(old.order_id);
    }
    published.sort();
    assert_eq!(published, customers.keys().copied().collect::<Vec<_>>());

    // The new worker invoices each order once, with its customer if it has one.
    let worker = RunningWorker::start(&invoices.url, &broker, WorkerSettings::default()).await;
    let stats = worker.metrics.clone();
    let client = invoices.client().await;
    let invoiced = || async {
        client
            .query("SELECT order_id, customer_id FROM invoices", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect::<BTreeMap<Uuid, Option<String>>>()
    };
    let got = eventually(Duration::from_secs(15), "six invoices", || async {
        let got = invoiced().await;
        (got.len() >= 6).then_some(got)
    })
    .await;
    assert_eq!(got, customers, "one invoice per order, with its customer");

    // A replay of everything, the events from before the upgrade included.
    let metrics = outbox_relay::metrics::RelayMetrics::default();
    let report = replay(
        &orders.pool(),
        &broker.url,
        &broker.topology,
        &ReplayFilter::default(),
        ReplayOptions {
            dry_run: false,
            rate: None,
            batch: 100,
            confirm_timeout: Duration::from_secs(5),
        },
        &metrics,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((report.matched, report.published), (6, 6));
    eventually(
        Duration::from_secs(15),
        "the six replayed copies to be skipped",
        || async { (stats.duplicates.get() == 6).then_some(()) },
    )
    .await;
    assert_eq!(invoiced().await, customers, "still one invoice per order");
    assert_eq!(stats.invoiced.get(), 6);
    assert_eq!(
        broker.ready_count(&broker.topology.dead_letter_queue).await,
        0,
        "nothing dead-lettered"
    );
    worker.stop().await;
}
