//! End to end with the three real binaries as processes: orders in over HTTP,
//! exactly one invoice out per order.

#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, time::Duration};

use devkit::{
    auth::{DEV_AUDIENCE, DEV_CUSTOMER, DEV_ISSUER, Issuer, curl_create_order},
    broker::TestBroker,
    db::TestDatabase,
    eventually,
    process::Service,
};
use serde_json::Value;

#[tokio::test]
async fn orders_posted_over_http_get_exactly_one_invoice_each() {
    // The services create their databases themselves (as on a first local start).
    let orders_db = TestDatabase::reserve("e2e_orders");
    let invoices_db = TestDatabase::reserve("e2e_invoices");
    let broker = TestBroker::new();
    // The worker's queue exists before the relay publishes, as after
    // provision-broker (the relay declares only its exchange).
    broker.declare().await;
    let issuer = Issuer::new();
    let mut api_env = vec![("DATABASE_URL", orders_db.url.clone())];
    api_env.extend(issuer.env());
    let relay_env = [
        ("DATABASE_URL", orders_db.url.clone()),
        ("PORT", "0".into()),
        ("BROKER_URL", broker.url.clone()),
        ("BROKER_NAMESPACE", broker.namespace.clone()),
    ];
    let worker_env = [
        ("DATABASE_URL", invoices_db.url.clone()),
        ("BROKER_URL", broker.url.clone()),
        ("BROKER_NAMESPACE", broker.namespace.clone()),
    ];

    // All three at once (API and relay race to create and migrate the same
    // database). API and worker on their default ports (3333, 3334).
    let (mut api, mut relay, mut worker) = tokio::join!(
        Service::spawn("orders-api", &api_env, false),
        Service::spawn("outbox-relay", &relay_env, false),
        Service::spawn("invoices-worker", &worker_env, false),
    );
    assert_eq!(api.addr.port(), 3333);
    assert_eq!(worker.addr.port(), 3334);
    // Every request carries a token of the API's issuer.
    let http = issuer.client();
    for port in [3333, 3334] {
        let res = http
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "OK");
    }
    // The container health check: `<binary> healthcheck` probes its own /health.
    let probe = |name: &str, port: u16| {
        std::process::Command::new(devkit::process::binary_path(name))
            .arg("healthcheck")
            .env("PORT", port.to_string())
            .output()
            .unwrap()
    };
    assert!(probe("orders-api", 3333).status.success());
    assert!(probe("invoices-worker", 3334).status.success());
    let dead = probe("outbox-relay", devkit::free_port());
    assert!(!dead.status.success());
    assert!(
        String::from_utf8_lossy(&dead.stderr).contains("unhealthy"),
        "{dead:?}"
    );

    // Post orders concurrently, with amounts that exercise the exact conversion.
    let posts = (1..=40).map(|i| {
        let http = http.clone();
        let url = format!("{}/orders", api.base_url());
        async move {
            let amount = format!("{i}.{:02}", (i * 7) % 100);
            let res = http
                .post(url)
                .header("content-type", "application/json")
                .body(format!(r#"{{"amount": {amount}}}"#))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            let body: Value = res.json().await.unwrap();
            (
                body["id"].as_str().unwrap().to_owned(),
                body["amount_cents"].as_i64().unwrap(),
            )
        }
    });
    let mut expected: BTreeMap<String, i64> =
        futures::future::join_all(posts).await.into_iter().collect();
    assert_eq!(expected.len(), 40);
    // A client retrying with an Idempotency-Key: one order, one invoice.
    let mut retried = Vec::new();
    for _ in 0..3 {
        let res = http
            .post(format!("{}/orders", api.base_url()))
            .header("content-type", "application/json")
            .header("idempotency-key", "e2e-retry")
            .body(r#"{"amount": 77.70}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let body: Value = res.json().await.unwrap();
        retried.push(body["id"].as_str().unwrap().to_owned());
    }
    assert!(retried.iter().all(|id| *id == retried[0]));
    expected.insert(retried[0].clone(), 7770);

    let invoices = invoices_db.client().await;
    let got: BTreeMap<String, i64> = eventually(Duration::from_secs(30), "41 invoices", || async {
        let rows = invoices
            .query("SELECT order_id::text, amount_cents FROM invoices", &[])
            .await
            .ok()?;
        (rows.len() >= expected.len()).then(|| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    })
    .await;
    assert_eq!(got, expected, "one invoice per order, same amount");
    let invoice_count: i64 = invoices
        .query_one("SELECT count(*) FROM invoices", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(invoice_count, 41, "no second invoice for any order");
    // Each invoice records the customer: the `sub` of the token that created
    // its order, carried by the event.
    let customers: Vec<Option<String>> = invoices
        .query("SELECT DISTINCT customer_id FROM invoices", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(customers, [Some(devkit::auth::TEST_CUSTOMER.to_owned())]);
    assert_eq!(
        broker.ready_count(&broker.topology.dead_letter_queue).await,
        0
    );

    // The worker shows an order's invoice; 404 for an order it does not know.
    let (order_id, cents) = expected.iter().next().unwrap();
    let invoice: Value = http
        .get(format!("{}/invoices/{order_id}", worker.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(invoice["amount_cents"], *cents);
    assert_eq!(invoice["customer_id"], devkit::auth::TEST_CUSTOMER);
    let missing = http
        .get(format!(
            "{}/invoices/{}",
            worker.base_url(),
            uuid::Uuid::now_v7()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    // The worker counts an invoice when its COMMIT returns, a moment after the
    // row is visible.
    eventually(
        Duration::from_secs(10),
        "the worker's count of 41",
        || async {
            worker
                .scrape()
                .await
                .contains("invoices_invoiced_total 41\n")
                .then_some(())
        },
    )
    .await;

    // SIGTERM: each drains and exits 0.
    for service in [&api, &relay, &worker] {
        service.terminate();
    }
    for service in [&mut api, &mut relay, &mut worker] {
        let status = service.wait(Duration::from_secs(20)).await;
        assert!(status.success(), "{} exited with {status}", service.name);
    }
}

/// What `cargo pipeline` prints works: the API started with the launcher's
/// local identity provider (a JWKS file, its issuer and audience) creates an
/// order for the printed `curl` line with the development token, and refuses
/// the same line without a token.
#[tokio::test]
async fn the_development_token_and_curl_line_of_cargo_pipeline_create_an_order() {
    let dir = std::env::temp_dir().join(format!("dev-auth-{}", devkit::unique_suffix()));
    let issuer = Issuer::in_dir(&dir, DEV_ISSUER, DEV_AUDIENCE).unwrap();
    let db = TestDatabase::reserve("e2e_dev_token");
    let mut env = vec![("DATABASE_URL", db.url.clone()), ("PORT", "0".to_owned())];
    env.extend(issuer.env());
    let api = Service::spawn("orders-api", &env, false).await;
    let token = issuer.long_lived_token(DEV_CUSTOMER);
    let curl = |line: &str| {
        let output = std::process::Command::new("sh")
            .args(["-c", line])
            .output()
            .expect("sh and curl are needed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let answer = curl(&curl_create_order(&api.base_url(), &token));
    let without_token = curl_create_order(&api.base_url(), &token)
        .replace(&format!(" -H 'authorization: Bearer {token}'"), "");
    let refused = curl(&without_token);

    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains(r#""amount":29.99"#), "{answer}");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    assert_eq!(db.count("orders").await, 1);
    // Valid for a working day.
    let claims = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    let lifetime = claims["exp"].as_i64().unwrap() - devkit::auth::now();
    assert!((11 * 3_600..=12 * 3_600).contains(&lifetime), "{claims}");
    assert_eq!(claims["sub"], DEV_CUSTOMER);
    let _ = std::fs::remove_dir_all(dir);
}
