//! Blocking after the attempt limit, retry and skip, retention, metrics.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use devkit::{broker::TestBroker, db::TestDatabase};
use outbox_relay::{
    config::RelaySettings,
    ops,
    relay::Relay,
    store::{self, Selection},
};
use plumbing::db::Database;
use uuid::Uuid;

async fn insert_event(db: &TestDatabase, aggregate: Uuid, event_type: &str) -> Uuid {
    let id = Uuid::now_v7();
    db.client()
        .await
        .execute(
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload)
             VALUES ($1, 'order', $2, $3, 1, '{}')",
            &[&id, &aggregate, &event_type],
        )
        .await
        .unwrap();
    id
}

async fn published(db: &TestDatabase, message_id: Uuid) -> bool {
    db.client()
        .await
        .query_one(
            "SELECT published_at IS NOT NULL FROM outbox WHERE message_id = $1",
            &[&message_id],
        )
        .await
        .unwrap()
        .get(0)
}

/// Lets rows waiting for their retry delay be tried at once.
async fn skip_retry_delays(db: &TestDatabase) {
    db.client()
        .await
        .execute(
            "UPDATE outbox SET next_attempt_at = now() WHERE next_attempt_at IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_row_failing_too_often_blocks_its_aggregate_until_an_operator_acts() {
    let db = TestDatabase::migrated("relay_block", Database::Orders).await;
    let broker = TestBroker::new();
    broker.declare().await;
    let mut relay = Relay::new(
        db.pool(),
        plumbing::db::parse_url(&db.url).unwrap(),
        broker.url.clone(),
        broker.topology.clone(),
        RelaySettings {
            max_attempts: 3,
            ..RelaySettings::default()
        },
    );
    let (stuck, healthy) = (Uuid::now_v7(), Uuid::now_v7());
    // `OrderShipped` has no route: the broker returns it every time.
    let bad = insert_event(&db, stuck, "OrderShipped").await;
    let behind = insert_event(&db, stuck, "OrderCreated").await;

    for attempt in 1..=3 {
        let report = relay.run_once().await.unwrap();
        assert_eq!(report.rejected, 1, "attempt {attempt}");
        skip_retry_delays(&db).await;
    }
    // Blocked now: not tried again, and the event behind it waits.
    let other = insert_event(&db, healthy, "OrderCreated").await;
    let report = relay.run_once().await.unwrap();
    assert_eq!(
        (report.claimed, report.published),
        (1, 1),
        "only the healthy aggregate moves"
    );
    assert!(published(&db, other).await);
    assert!(!published(&db, behind).await);

    let pool = db.pool();
    let status = ops::status(&pool).await.unwrap();
    assert_eq!(status.outbox.blocked_rows, 1);
    assert_eq!(status.outbox.blocked_aggregates, 1);
    assert_eq!(status.blocked[0].message_id, bad);
    assert_eq!(status.blocked[0].attempts, 3);
    assert_eq!(status.blocked[0].waiting_behind, 1);
    assert!(
        status.blocked[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("unknown event type")
    );
    let text = ops::render_status(&status);
    assert!(text.contains(&bad.to_string()), "{text}");
    assert_eq!(relay.metrics().blocked.get(), 1);

    // Retry: another round of attempts (still failing here: blocked again at once
    // after max_attempts more).
    assert_eq!(
        store::retry_blocked(&pool, &Selection::Message(bad))
            .await
            .unwrap(),
        1
    );
    assert_eq!(relay.run_once().await.unwrap().rejected, 1);

    // Skip: the operator gives up on it; the event behind it goes out.
    skip_retry_delays(&db).await;
    db.client()
        .await
        .execute(
            "UPDATE outbox SET blocked_at = now() WHERE message_id = $1",
            &[&bad],
        )
        .await
        .unwrap();
    assert_eq!(
        store::skip_blocked(&pool, &Selection::Aggregate(stuck), "event type retired")
            .await
            .unwrap(),
        1
    );
    let report = relay.run_once().await.unwrap();
    assert_eq!(report.published, 1);
    assert!(published(&db, behind).await);
    let skipped: (bool, String) = {
        let row = db
            .client()
            .await
            .query_one(
                "SELECT skipped_at IS NOT NULL, last_error FROM outbox WHERE message_id = $1",
                &[&bad],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(skipped.0);
    assert!(skipped.1.contains("skipped: event type retired"));
}

#[tokio::test]
async fn purge_deletes_only_published_rows_older_than_the_window() {
    let db = TestDatabase::migrated("relay_purge", Database::Orders).await;
    let old_published = insert_event(&db, Uuid::now_v7(), "OrderCreated").await;
    let recent_published = insert_event(&db, Uuid::now_v7(), "OrderCreated").await;
    let old_unpublished = insert_event(&db, Uuid::now_v7(), "OrderCreated").await;
    let client = db.client().await;
    client
        .execute(
            "UPDATE outbox SET published_at = now() - interval '8 days', created_at = now() - interval '8 days' WHERE message_id = $1",
            &[&old_published],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE outbox SET published_at = now() - interval '6 days' WHERE message_id = $1",
            &[&recent_published],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE outbox SET created_at = now() - interval '30 days' WHERE message_id = $1",
            &[&old_unpublished],
        )
        .await
        .unwrap();
    // More old rows than one purge batch, to exercise the batching.
    client
        .execute(
            "INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version, payload, published_at)
             SELECT gen_random_uuid(), 'order', gen_random_uuid(), 'OrderCreated', 1, '{}', now() - interval '10 days'
             FROM generate_series(1, 25)",
            &[],
        )
        .await
        .unwrap();

    let deleted = store::purge_published(&client, Duration::from_secs(7 * 86_400), 10)
        .await
        .unwrap();

    assert_eq!(deleted, 26);
    let left: Vec<Uuid> = client
        .query("SELECT message_id FROM outbox ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![recent_published, old_unpublished]);
}

#[tokio::test]
async fn metrics_describe_the_relay_and_the_outbox() {
    use outbox_relay::{config::Config, startup::Application};
    use plumbing::{
        config::{BrokerConfig, Secret},
        service::Service as _,
    };

    let db = TestDatabase::migrated("relay_metrics", Database::Orders).await;
    let broker = TestBroker::new();
    // The worker's queue exists, as after provision-broker (the relay declares
    // only its exchange).
    broker.declare().await;
    let config = Config {
        service: devkit::service_config(db.url.clone()),
        broker: BrokerConfig {
            url: Secret::url(broker.url.clone()),
            namespace: broker.namespace.clone(),
        },
        // The refused event's retry is due a second after its attempt and only a
        // poll claims it: no poll while the counts below are read (the event's
        // first attempt follows its NOTIFY, as an order's does).
        relay: RelaySettings {
            poll_interval: Duration::from_secs(600),
            ..RelaySettings::default()
        },
    };
    for _ in 0..3 {
        insert_event(&db, Uuid::now_v7(), "OrderCreated").await;
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = Application::build(&config, &shutdown).await.unwrap();
    let port = app.port().unwrap();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    devkit::eventually(Duration::from_secs(10), "the backlog to drain", || async {
        (db.unpublished().await == 0).then_some(())
    })
    .await;
    insert_event(&db, Uuid::now_v7(), "OrderShipped").await;
    db.client()
        .await
        .execute(&format!("NOTIFY {}", plumbing::db::OUTBOX_CHANNEL), &[])
        .await
        .unwrap();
    devkit::eventually(
        Duration::from_secs(10),
        "the unroutable event to be tried",
        || async {
            let attempts: i32 = db
                .client()
                .await
                .query_one("SELECT max(attempts) FROM outbox", &[])
                .await
                .unwrap()
                .get(0);
            (attempts > 0).then_some(())
        },
    )
    .await;

    let scrape = || async {
        devkit::http_client()
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let body = scrape().await;

    for expected in [
        "outbox_published_total 3",
        "outbox_claimed_total 4",
        "outbox_publish_failures_total{reason=\"invalid\"} 1",
        "outbox_backlog 1",
        "outbox_blocked_rows 0",
        "outbox_broker_connected 1",
        "outbox_commit_to_confirm_seconds_count 3",
        "outbox_oldest_unpublished_age_seconds",
        "outbox_in_flight_rows 0",
        "outbox_retrying_rows 1",
        "outbox_notification_session 1",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in\n{body}");
    }

    // `status` lists the relay with its notification session.
    let pool = db.pool();
    let status = ops::status(&pool).await.unwrap();
    assert_eq!(status.relays.len(), 1, "{status:?}");
    assert!(status.relays[0].notification_session, "{status:?}");
    assert!(status.relays[0].sessions >= 1, "{status:?}");
    let text = ops::render_status(&status);
    assert!(text.contains("relays: 1 connected\n"), "{text}");
    assert!(text.contains("notification session open"), "{text}");

    // The session dies: the relay opens a new one by itself.
    let listening_pid = || async {
        db.client()
            .await
            .query_opt(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name LIKE 'outbox-relay/%/notifications'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get::<_, i32>(0))
    };
    let first = listening_pid().await.unwrap();
    db.client()
        .await
        .execute("SELECT pg_terminate_backend($1)", &[&first])
        .await
        .unwrap();
    devkit::eventually(
        Duration::from_secs(5),
        "a new notification session",
        || async { listening_pid().await.filter(|pid| *pid != first) },
    )
    .await;
    devkit::eventually(Duration::from_secs(5), "the gauge back at 1", || async {
        scrape()
            .await
            .contains("outbox_notification_session 1")
            .then_some(())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn ready_only_while_the_database_and_the_broker_answer() {
    use devkit::proxy::TcpProxy;
    use outbox_relay::{config::Config, startup::Application};
    use plumbing::{
        config::{BrokerConfig, Secret},
        service::Service as _,
    };

    let db = TestDatabase::migrated("relay_ready", Database::Orders).await;
    let broker = TestBroker::new();
    let db_proxy = TcpProxy::start(&devkit::db::server_addr()).await;
    let broker_proxy = TcpProxy::start(&devkit::broker::server_addr()).await;
    let config = Config {
        service: devkit::service_config(db.url_via(db_proxy.addr)),
        broker: BrokerConfig {
            url: Secret::url(devkit::swap_host(&broker.url, broker_proxy.addr)),
            namespace: broker.namespace.clone(),
        },
        relay: RelaySettings {
            poll_interval: Duration::from_millis(100),
            ..RelaySettings::default()
        },
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = Application::build(&config, &shutdown).await.unwrap();
    let port = app.port().unwrap();
    let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    devkit::assert_ready_follows(port, &db_proxy, &broker_proxy).await;

    shutdown.cancel();
    task.await.unwrap().unwrap();
}
