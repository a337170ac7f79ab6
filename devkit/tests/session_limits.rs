//! Session limits: every session a service opens carries its statement and
//! idle-in-transaction timeouts from its first statement, and a request whose
//! query waits on a lock ends with a clear 503 once the statement timeout runs
//! out, instead of hanging until the request timeout while the query goes on.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use devkit::{db::TestDatabase, eventually, process::Service};
use plumbing::db::{Database, ServiceRole, SessionLimits};

/// `SHOW <setting>` on a session.
async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_session_of_a_service_has_its_limits_and_keeps_the_urls_own_options() {
    let db = TestDatabase::migrated("limits_show", Database::Orders).await;
    let limits = SessionLimits {
        statement_timeout: Duration::from_millis(300),
        idle_in_transaction_timeout: Duration::from_millis(2_500),
    };
    let mut service = devkit::service_config(format!(
        "{}?options=-c%20lock_timeout%3D7s",
        db.role_url(ServiceRole::OutboxRelay)
    ));
    service.pool.limits = limits;
    service.migrate_on_start = false;
    let shutdown = tokio_util::sync::CancellationToken::new();

    let (config, pool) = plumbing::db::prepare(&service, Database::Orders, "limits", &shutdown)
        .await
        .unwrap();

    let pooled = pool.get().await.unwrap();
    let dedicated = plumbing::db::connect(&config).await.unwrap();
    let listening = plumbing::db::listen(&config, "limits", |_| {})
        .await
        .unwrap();
    for (what, client) in [
        ("pooled", &**pooled),
        ("dedicated", &dedicated),
        ("listening", &listening),
    ] {
        assert_eq!(show(client, "statement_timeout").await, "300ms", "{what}");
        assert_eq!(
            show(client, "idle_in_transaction_session_timeout").await,
            "2500ms",
            "{what}"
        );
        assert_eq!(
            show(client, "lock_timeout").await,
            "7s",
            "{what}: the URL's own"
        );
    }
}

/// Whether a session of `role` is waiting for a lock.
async fn waits_on_a_lock(admin: &tokio_postgres::Client, role: ServiceRole) -> bool {
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND usename = $1 AND wait_event_type = 'Lock'",
            &[&role.name()],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
        > 0
}

#[tokio::test]
async fn a_query_which_blocks_on_a_lock_ends_with_a_clear_error_and_a_503_not_a_hang() {
    let statement_timeout = Duration::from_millis(300);
    let request_timeout = Duration::from_secs(10);
    let db = TestDatabase::migrated("limits_lock", Database::Orders).await;
    let issuer = devkit::auth::Issuer::new();
    let mut env = vec![
        ("DATABASE_URL", db.role_url(ServiceRole::OrdersApi)),
        ("MIGRATE_ON_START", "false".into()),
        ("PORT", "0".into()),
        ("DB_STATEMENT_TIMEOUT", "300ms".into()),
        ("REQUEST_TIMEOUT", "10s".into()),
    ];
    env.extend(issuer.env());
    let api = Service::spawn("orders-api", &env, false).await;
    let http = issuer.client();
    let post = || {
        http.post(format!("{}/orders", api.base_url()))
            .json(&serde_json::json!({"amount": 29.99}))
            .timeout(request_timeout * 2)
            .send()
    };
    assert_eq!(
        post().await.unwrap().status(),
        201,
        "the premise: orders work"
    );

    // Another transaction holds what the API's insert needs.
    let locker = db.client().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let admin = db.client().await;
    let started = Instant::now();
    let request = tokio::spawn(post());
    // The premise: the request's statement really waits on that lock.
    eventually(
        statement_timeout,
        "the API's insert to wait on the lock",
        || async {
            waits_on_a_lock(&admin, ServiceRole::OrdersApi)
                .await
                .then_some(())
        },
    )
    .await;
    let response = request.await.unwrap().unwrap();
    let elapsed = started.elapsed();

    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(
        elapsed >= statement_timeout && elapsed < statement_timeout + Duration::from_millis(1_500),
        "answered after {elapsed:?}: the database should give up after {statement_timeout:?}, \
         long before the request timeout ({request_timeout:?})"
    );
    // The query did not outlive its request: nothing of the API waits any more,
    // although the lock is still held.
    assert!(
        !waits_on_a_lock(&admin, ServiceRole::OrdersApi).await,
        "the API's query still waits on the lock after its request was answered"
    );

    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(post().await.unwrap().status(), 201, "orders work again");
}
