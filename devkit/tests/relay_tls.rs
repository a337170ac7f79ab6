//! The relay where production runs it: a TLS-only PostgreSQL with `verify-full`
//! and orders trickling in. A test binary of its own, so that no other test's
//! load (the AMQPS test starts a RabbitMQ node) shares the machine while it
//! measures latency.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use devkit::{
    auth::Issuer, broker::TestBroker, eventually, process::Service, tls_postgres::TlsPostgres,
};

/// The relay on a TLS-only server with `verify-full`: it holds an encrypted
/// notification session, so an order that trickles in is published within
/// milliseconds (a relay that could only poll, as it did when its notification
/// session ignored the URL's TLS settings, takes up to its poll interval, set to
/// 10 s here).
#[tokio::test]
async fn the_relay_listens_over_verified_tls_and_publishes_a_trickle_within_milliseconds() {
    let pg = TlsPostgres::start().unwrap();
    let url = format!(
        "postgres://postgres@localhost:{}/orders?sslmode=verify-full&sslrootcert={}",
        pg.port,
        pg.file("ca.pem")
    );
    plumbing::db::migrate(
        &plumbing::db::parse_url(&url).unwrap(),
        plumbing::db::Database::Orders,
        &[],
    )
    .await
    .unwrap();
    let broker = TestBroker::new();
    broker.declare().await;
    let env = |url: &str| {
        vec![
            ("DATABASE_URL", url.to_owned()),
            ("BROKER_URL", broker.url.clone()),
            ("BROKER_NAMESPACE", broker.namespace.clone()),
            ("PORT", "0".to_owned()),
            ("MIGRATE_ON_START", "false".to_owned()),
        ]
    };
    let issuer = Issuer::new();
    let mut api_env = env(&url);
    api_env.extend(issuer.env());
    let api = Service::spawn("orders-api", &api_env, false).await;
    // A relay that could only poll would take up to this long: seconds, far
    // beyond the bound below, however slow the machine is.
    let mut relay_env = env(&url);
    relay_env.push(("RELAY_POLL_INTERVAL", "10s".to_owned()));
    let relay = Service::spawn("outbox-relay", &relay_env, false).await;
    let db = plumbing::db::connect(&plumbing::db::parse_url(&url).unwrap())
        .await
        .unwrap();

    // Premise: the relay holds its notification session, and it is encrypted.
    let encrypted: bool = eventually(
        Duration::from_secs(10),
        "the relay's notification session",
        || async {
            db.query_opt(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.application_name LIKE 'outbox-relay/%/notifications'",
                &[],
            )
            .await
            .unwrap()
            .map(|row| row.get(0))
        },
    )
    .await;
    assert!(encrypted);

    // A trickle: 200 orders one after another, the relay idle between them, so
    // each must be woken by its notification.
    let http = issuer.client();
    for i in 0..200 {
        let res = http
            .post(format!("{}/orders", api.base_url()))
            .header("content-type", "application/json")
            .body(format!(r#"{{"amount": {}.25}}"#, i + 1))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually(Duration::from_secs(10), "every event published", || async {
        let unpublished: i64 = db
            .query_one(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (unpublished == 0).then_some(())
    })
    .await;
    // published_at is written after the broker's confirm; created_at when the
    // order's transaction began: an upper bound of commit→publish.
    let row = db
        .query_one(
            "SELECT count(*),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at)),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM published_at - created_at))
             FROM outbox",
            &[],
        )
        .await
        .unwrap();
    let (count, p50, p99): (i64, f64, f64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(count, 200);
    // Woken by notifications: milliseconds (debug builds on a shared 2-core
    // machine measure p99 12-40 ms); by polling alone: up to 10 s.
    assert!(
        p99 < 0.100,
        "commit→publish over verified TLS: p50 {:.1} ms, p99 {:.1} ms (bound 100 ms)",
        p50 * 1e3,
        p99 * 1e3
    );
    for service in [&api, &relay] {
        service.terminate();
    }
    for mut service in [api, relay] {
        assert!(service.wait(Duration::from_secs(15)).await.success());
    }
}
