//! Orders belong to customers, at the store: a customer reads, lists and
//! re-sends (by `Idempotency-Key`) only their own orders. (Over HTTP, with the
//! customer taken from the caller's token, in `api.rs`.)

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use contracts::CustomerId;
use devkit::db::TestDatabase;
use orders_api::{
    domain::{Amount, NewOrder, Order},
    outbox::RequestContext,
    store::{self, After, IdempotencyKey, Keyed},
};
use plumbing::db::Database;
use uuid::Uuid;

fn customer(name: &str) -> CustomerId {
    CustomerId::try_from(name).unwrap()
}

fn new_order(cents: i64) -> NewOrder {
    NewOrder {
        id: Uuid::now_v7(),
        amount: Amount::from_cents(cents).unwrap(),
        currency: contracts::Currency::BRL,
    }
}

async fn create(pool: &deadpool_postgres::Pool, who: &CustomerId, cents: i64) -> Order {
    store::create_order(pool, who, &new_order(cents), &RequestContext::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_order_is_found_only_by_its_customer() {
    let db = TestDatabase::migrated("customers_find", Database::Orders).await;
    let pool = db.pool();
    let (alice, bob) = (customer("alice"), customer("bob"));
    let order = create(&pool, &alice, 1000).await;
    let found = store::find_order(&pool, &alice, order.id).await.unwrap();
    assert_eq!(found, Some(order.clone()));
    assert_eq!(
        store::find_order(&pool, &bob, order.id).await.unwrap(),
        None
    );
    // The customer is stored with the order and in its event.
    let row = db
        .client()
        .await
        .query_one(
            "SELECT o.customer_id, e.payload->>'customer_id'
             FROM orders o JOIN outbox e ON e.aggregate_id = o.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("alice"));
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("alice"));
}

#[tokio::test]
async fn an_idempotency_key_is_the_customers_own() {
    let db = TestDatabase::migrated("customers_keys", Database::Orders).await;
    let pool = db.pool();
    let (alice, bob) = (customer("alice"), customer("bob"));
    let key = |fingerprint: &str| IdempotencyKey {
        key: "order-1".into(),
        fingerprint: fingerprint.into(),
    };
    let once = |who: CustomerId, cents: i64| {
        let pool = pool.clone();
        async move {
            let fingerprint = format!("{cents} BRL");
            store::create_order_once(
                &pool,
                &who,
                &new_order(cents),
                &RequestContext::default(),
                &key(&fingerprint),
            )
            .await
            .unwrap()
        }
    };
    let Keyed::Created(a) = once(alice.clone(), 500).await else {
        panic!("alice's first use of the key must create")
    };
    // Bob picked the same key: his own order, not Alice's, not a 422.
    let Keyed::Created(b) = once(bob.clone(), 700).await else {
        panic!("bob's first use of the same key must create")
    };
    assert_ne!(a.id, b.id);
    assert_eq!(b.customer_id, bob);
    // Each one's retry replays their own order.
    for (who, cents, order) in [(&alice, 500, &a), (&bob, 700, &b)] {
        match once(who.clone(), cents).await {
            Keyed::Replayed { body, .. } => {
                assert_eq!(body["id"], order.id.to_string());
                assert_eq!(body["customer_id"], who.as_str());
            }
            other => panic!("a retry must replay, got {other:?}"),
        }
    }
    assert!(matches!(once(alice.clone(), 501).await, Keyed::Mismatch));
    assert_eq!(db.count("orders").await, 2);
    assert_eq!(db.count("outbox").await, 2);
}

/// Pages by cursor while the same customer keeps creating orders: every order
/// that existed when paging began is listed exactly once, newest first, and
/// nobody else's order is.
#[tokio::test]
async fn paging_is_stable_while_orders_are_created() {
    let db = TestDatabase::migrated("customers_pages", Database::Orders).await;
    let pool = db.pool();
    let (alice, bob) = (customer("alice"), customer("bob"));
    let mut existing = Vec::new();
    for cents in 1..=25 {
        existing.push(create(&pool, &alice, cents).await);
        if cents % 5 == 0 {
            create(&pool, &bob, cents).await;
        }
    }
    existing.reverse();

    let mut listed: Vec<Order> = Vec::new();
    let mut after: Option<After> = None;
    let mut pages = 0;
    loop {
        let page = store::list_orders(&pool, &alice, 7, after).await.unwrap();
        pages += 1;
        // New orders between pages, as a busy customer would create them.
        for cents in 1000..1003 {
            create(&pool, &alice, cents).await;
        }
        let Some(last) = page.last() else { break };
        after = Some(After {
            created_at: last.created_at,
            id: last.id,
        });
        listed.extend(page);
    }
    assert_eq!(pages, 5, "4 pages of 7, 7, 7, 4, then an empty one");
    assert_eq!(
        listed.iter().map(|o| o.id).collect::<Vec<_>>()[..7],
        existing.iter().map(|o| o.id).collect::<Vec<_>>()[..7],
        "the first page is the newest orders, newest first"
    );
    let ids: Vec<Uuid> = listed.iter().map(|o| o.id).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an order was listed twice");
    assert_eq!(ids, existing.iter().map(|o| o.id).collect::<Vec<_>>());
    assert!(listed.iter().all(|o| o.customer_id == alice));
}
