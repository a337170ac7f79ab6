//! Least privilege: each service's role may run every statement its service
//! runs (through the services' own store functions) and is refused the rest
//! with SQLSTATE 42501, and `migrate` lets the roles log in with their
//! passwords. The fault suite and the pipeline tests run the services as these
//! roles too.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use devkit::db::TestDatabase;
use orders_api::{
    domain::{Amount, NewOrder},
    outbox::RequestContext,
    store::IdempotencyKey,
};
use outbox_relay::store::{self as relay_store, ReplayFilter, Selection};
use plumbing::db::{Database, ServiceRole};
use tokio_postgres::error::SqlState;

/// Asserts that each statement, and every statement only the owner may run
/// (DDL on `table`, see [`ddl`]), is refused to the session's role for lack of
/// privilege (not for another reason, such as a syntax error).
async fn assert_refused(
    client: &tokio_postgres::Client,
    role: ServiceRole,
    table: &str,
    statements: &[&str],
) {
    let owners = ddl(table);
    for sql in statements
        .iter()
        .copied()
        .chain(owners.iter().map(String::as_str))
    {
        let err = client
            .batch_execute(sql)
            .await
            .expect_err(&format!("{} may run: {sql}", role.name()));
        assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{} running {sql}: {err:?}",
            role.name()
        );
    }
}

fn new_order() -> NewOrder {
    NewOrder {
        id: uuid::Uuid::now_v7(),
        amount: Amount::from_cents(2_999).unwrap(),
        currency: contracts::Currency::BRL,
    }
}

/// Statements nobody but the schema's owner may run, on `table`.
fn ddl(table: &str) -> Vec<String> {
    vec![
        "CREATE TABLE intruder (id int)".to_owned(),
        "CREATE TEMPORARY TABLE intruder (id int)".to_owned(),
        format!("ALTER TABLE {table} ADD COLUMN intruder int"),
        format!("DROP TABLE {table}"),
        format!("TRUNCATE {table}"),
        "SELECT count(*) FROM refinery_schema_history".to_owned(),
    ]
}

#[tokio::test]
async fn the_api_may_write_orders_with_their_events_but_never_change_an_event() {
    let db = TestDatabase::migrated("roles_api", Database::Orders).await;
    let api = db.pool_as(ServiceRole::OrdersApi);
    let context = RequestContext::default();

    // Everything the API does.
    let order = orders_api::store::create_order(
        &api,
        &devkit::messages::customer(),
        &new_order(),
        &context,
    )
    .await
    .unwrap();
    let key = IdempotencyKey {
        key: "roles-test".into(),
        fingerprint: "2999 BRL".into(),
    };
    // Created, then replayed.
    for _ in 0..2 {
        orders_api::store::create_order_once(
            &api,
            &devkit::messages::customer(),
            &new_order(),
            &context,
            &key,
        )
        .await
        .unwrap();
    }
    let listed = orders_api::store::list_orders(&api, &devkit::messages::customer(), 10, None)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        orders_api::store::find_order(&api, &devkit::messages::customer(), order.id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        orders_api::store::purge_keys(&api, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(db.count("outbox").await, 2, "the premise: events written");

    // Nothing else.
    let client = db.client_as(ServiceRole::OrdersApi).await;
    assert_refused(
        &client,
        ServiceRole::OrdersApi,
        "outbox",
        &[
            "UPDATE outbox SET published_at = now()",
            "UPDATE outbox SET payload = '{}'",
            "DELETE FROM outbox",
            "SELECT count(*) FROM outbox",
            "UPDATE orders SET amount_cents = 1",
            "DELETE FROM orders",
            "UPDATE idempotency_keys SET response_status = 500",
            "SELECT count(*) FROM outbox_replays",
        ],
    )
    .await;
}

#[tokio::test]
async fn the_relay_may_publish_block_skip_replay_and_purge_events_but_never_read_orders() {
    let db = TestDatabase::migrated("roles_relay", Database::Orders).await;
    let admin = db.pool();
    for _ in 0..3 {
        orders_api::store::create_order(
            &admin,
            &devkit::messages::customer(),
            &new_order(),
            &RequestContext::default(),
        )
        .await
        .unwrap();
    }
    let relay = db.pool_as(ServiceRole::OutboxRelay);

    // Everything the relay and its operator commands do: claim, mark one
    // published and block the others (attempt limit 1), show the status,
    // retry one and skip the rest, purge, replay.
    let floor = relay_store::lowest_unpublished(&relay, 0).await.unwrap();
    let claim = relay_store::claim_batch(&relay, 10, Duration::from_secs(30), floor)
        .await
        .unwrap();
    let ids: Vec<i64> = claim.rows.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 3, "the premise: three rows claimed");
    let failures = vec![
        (ids[1], "refused".to_owned()),
        (ids[2], "refused".to_owned()),
    ];
    let blocked = claim.finish(&ids[..1], &failures, 1).await.unwrap();
    assert_eq!(blocked.len(), 2);
    let status = outbox_relay::ops::status(&relay).await.unwrap();
    assert_eq!(status.outbox.blocked_rows, 2);
    let retried = relay_store::retry_blocked(&relay, &Selection::Message(blocked[0].message_id))
        .await
        .unwrap();
    assert_eq!(retried, 1);
    let claim = relay_store::claim_batch(&relay, 10, Duration::from_secs(30), 0)
        .await
        .unwrap();
    let id = claim.rows[0].id;
    claim
        .finish(&[], &[(id, "refused".into())], 1)
        .await
        .unwrap();
    let skipped = relay_store::skip_blocked(&relay, &Selection::All, "test")
        .await
        .unwrap();
    assert_eq!(skipped, 2);
    let filter = ReplayFilter::default();
    let replay = relay_store::start_replay(&relay, &filter, true)
        .await
        .unwrap();
    let published = relay_store::select_published(&relay, &filter, 0, 10)
        .await
        .unwrap();
    assert_eq!(
        published.len(),
        1,
        "the published row, not the skipped ones"
    );
    relay_store::update_replay(&relay, replay, 1, 0, true)
        .await
        .unwrap();
    let purged = relay_store::purge_published(&relay.get().await.unwrap(), Duration::ZERO, 10)
        .await
        .unwrap();
    assert_eq!(purged, 3);

    // Nothing else.
    let client = db.client_as(ServiceRole::OutboxRelay).await;
    assert_refused(
        &client,
        ServiceRole::OutboxRelay,
        "outbox",
        &[
            "SELECT count(*) FROM orders",
            "INSERT INTO orders VALUES (gen_random_uuid(), 100, 'BRL', now())",
            "DELETE FROM orders",
            "SELECT count(*) FROM idempotency_keys",
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, \
         schema_version, payload) VALUES (gen_random_uuid(), 'Order', gen_random_uuid(), \
         'OrderCreated', 1, '{}')",
            "UPDATE outbox SET payload = '{}'",
            "UPDATE outbox SET message_id = gen_random_uuid()",
            "DELETE FROM outbox_replays",
        ],
    )
    .await;
}

#[tokio::test]
async fn the_worker_may_record_invoices_but_never_change_one() {
    let db = TestDatabase::migrated("roles_worker", Database::Invoices).await;
    let worker = db.pool_as(ServiceRole::InvoicesWorker);
    let event = devkit::messages::order_created(2_999);
    let message_id = uuid::Uuid::now_v7();

    // Everything the worker does (a duplicate included).
    for _ in 0..2 {
        invoices_worker::store::record_invoices(&worker, &[(message_id, &event)])
            .await
            .unwrap();
    }
    assert!(
        invoices_worker::store::find_invoice(&worker, event.order_id)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(
        invoices_worker::store::purge_processed(&worker, Duration::ZERO, 10)
            .await
            .unwrap(),
        1
    );

    // Nothing else.
    let client = db.client_as(ServiceRole::InvoicesWorker).await;
    assert_refused(
        &client,
        ServiceRole::InvoicesWorker,
        "invoices",
        &[
            "UPDATE invoices SET amount_cents = 1",
            "DELETE FROM invoices",
            "UPDATE processed_messages SET processed_at = now()",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_role_cannot_connect_to_the_other_database() {
    let (orders, invoices) = tokio::join!(
        TestDatabase::migrated("roles_connect_orders", Database::Orders),
        TestDatabase::migrated("roles_connect_invoices", Database::Invoices),
    );
    for (db, role) in [
        (&orders, ServiceRole::InvoicesWorker),
        (&invoices, ServiceRole::OrdersApi),
        (&invoices, ServiceRole::OutboxRelay),
    ] {
        let url = db.role_url(role);
        let err = plumbing::db::connect(&plumbing::db::parse_url(&url).unwrap())
            .await
            .expect_err(&format!("{} connects to {}", role.name(), db.name));
        let plumbing::db::DbError::Connect { source, .. } = err else {
            panic!("{err:?}");
        };
        assert_eq!(
            source.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{source:?}"
        );
    }
}

/// The SCRAM verifier stored for `role`, if any.
async fn stored_password(admin: &tokio_postgres::Client, role: &str) -> Option<String> {
    admin
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn migrate_lets_a_role_log_in_with_its_password_however_it_is_written() {
    // Created and migrated by the command itself, as the migration role would.
    let db = TestDatabase::reserve("roles_migrate");
    // The roles exist (another database's migrations made them).
    let other = TestDatabase::migrated("roles_migrate_admin", Database::Orders).await;
    let admin = other.client().await;
    let relay_before = stored_password(&admin, "outbox_relay").await;
    let api_before = stored_password(&admin, "orders_api").await;
    // Quotes, dollar quotes and backslashes: a statement built by pasting it in
    // would break (or do something else).
    let password = format!("it's $$ a \\'{}'; DROP ROLE x; --", uuid::Uuid::new_v4());

    let output = tokio::process::Command::new(devkit::process::binary_path("orders-api"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .env("ORDERS_API_DB_PASSWORD", &password)
        .env_remove("OUTBOX_RELAY_DB_PASSWORD")
        .env("RUST_LOG", "debug")
        .output()
        .await
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(
        !printed.contains(&password),
        "the password was printed:\n{printed}"
    );

    let api_after = stored_password(&admin, "orders_api").await;
    assert_ne!(api_after, api_before, "orders_api got a new password");
    assert!(
        api_after
            .as_deref()
            .is_some_and(|p| p.starts_with("SCRAM-SHA-256$")),
        "{api_after:?}"
    );
    let can_login: bool = admin
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'orders_api'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(can_login);
    assert_eq!(
        stored_password(&admin, "outbox_relay").await,
        relay_before,
        "a role whose password variable is unset is left as it is"
    );
}
