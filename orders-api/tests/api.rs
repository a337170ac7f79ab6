//! The orders API over HTTP, against a real PostgreSQL database of its own.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use devkit::{auth::Issuer, db::TestDatabase, proxy::TcpProxy};
use orders_api::{config::Config, startup::Application};
use plumbing::{
    config::ServiceConfig,
    db::{PoolOptions, SessionLimits},
    service::Service as _,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct TestApp {
    base: String,
    /// Sends a valid token with every request.
    http: reqwest::Client,
    db: TestDatabase,
    issuer: Issuer,
    shutdown: CancellationToken,
}

impl TestApp {
    /// Starts the API on a free port over a fresh database (optionally reached
    /// through `via`, a proxy), trusting clients' trace context or not, with
    /// authentication by a test issuer of its own.
    async fn spawn_with(db: TestDatabase, via: Option<&TcpProxy>, trust_traceparent: bool) -> Self {
        let issuer = Issuer::new();
        let config = Config {
            service: ServiceConfig {
                pool: PoolOptions {
                    max_size: 4,
                    wait_timeout: Duration::from_secs(1),
                    // Below the request timeout, as the API requires.
                    limits: SessionLimits {
                        statement_timeout: Duration::from_secs(2),
                        ..SessionLimits::DEFAULT
                    },
                },
                ..devkit::service_config(via.map_or_else(|| db.url.clone(), |p| db.url_via(p.addr)))
            },
            request_timeout: Duration::from_secs(5),
            max_body_bytes: 64 * 1024,
            default_currency: "BRL".into(),
            idempotency_key_ttl: Duration::from_secs(86_400),
            trust_traceparent,
            auth: issuer.config(),
            #[cfg(feature = "fault-injection")]
            unsafe_reply_before_commit: false,
        };
        let shutdown = CancellationToken::new();
        let app = Application::build(&config, &shutdown).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port().unwrap());
        tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            base,
            http: issuer.client(),
            db,
            issuer,
            shutdown,
        }
    }

    async fn spawn() -> Self {
        Self::spawn_with(TestDatabase::create("api").await, None, false).await
    }

    async fn post_raw(
        &self,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.post(format!("{}/orders", self.base)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    async fn post(&self, body: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.post_raw(Some("application/json"), body.to_owned())
            .await
    }

    async fn rows(&self) -> (i64, i64) {
        (self.db.count("orders").await, self.db.count("outbox").await)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[tokio::test]
async fn order_and_event_are_stored_together() {
    let app = TestApp::spawn().await;

    let (status, headers, body) = app.post(r#"{"amount": 29.99}"#).await;

    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["amount"], json!(29.99));
    assert_eq!(body["amount_cents"], 2999);
    assert_eq!(body["currency"], "BRL");
    assert!(body["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(headers["location"], format!("/orders/{id}").as_str());
    assert!(headers.contains_key("x-request-id"));

    let client = app.db.client().await;
    let order = client
        .query_one(
            "SELECT amount_cents, currency FROM orders WHERE id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(order.get::<_, i64>(0), 2999);
    let event = client
        .query_one(
            "SELECT aggregate_type, aggregate_id::text, event_type, schema_version, payload,
                    headers, published_at IS NULL, attempts
             FROM outbox",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(event.get::<_, &str>(0), "order");
    assert_eq!(event.get::<_, &str>(1), id);
    assert_eq!(event.get::<_, &str>(2), "OrderCreated");
    assert_eq!(event.get::<_, i32>(3), 1);
    let payload: Value = event.get(4);
    assert_eq!(payload["order_id"], id);
    assert_eq!(payload["amount_cents"], 2999);
    assert_eq!(payload["created_at"], body["created_at"]);
    let event_headers: Value = event.get(5);
    assert_eq!(
        event_headers["x-correlation-id"],
        headers["x-request-id"].to_str().unwrap()
    );
    assert!(event.get::<_, bool>(6), "a new event is unpublished");
    assert_eq!(event.get::<_, i32>(7), 0);

    let fetched: Value = app
        .http
        .get(format!("{}/orders/{id}", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, body);
}

#[tokio::test]
async fn an_untrusted_request_id_is_replaced_by_a_generated_one() {
    let app = TestApp::spawn().await;
    let long = "r".repeat(65);
    let at_limit = "r".repeat(64);

    for (sent, kept) in [
        ("", false),
        (long.as_str(), false),
        ("two words", false),
        ("<script>", false),
        ("tab\tand é", false),
        (at_limit.as_str(), true),
        ("req-42_a.b:c", true),
    ] {
        let res = app
            .http
            .get(format!("{}/health", app.base))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();

        let returned = res.headers()["x-request-id"].to_str().unwrap();
        if kept {
            assert_eq!(returned, sent);
        } else {
            assert!(
                uuid::Uuid::parse_str(returned).is_ok(),
                "{sent:?} was answered with {returned:?}, not a generated id"
            );
        }
    }
}

#[tokio::test]
async fn request_id_and_trace_context_travel_with_the_event() {
    // Behind a gateway that sets them: HTTP_TRUST_TRACEPARENT=true.
    let app = TestApp::spawn_with(TestDatabase::create("api").await, None, true).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    let res = app
        .http
        .post(format!("{}/orders", app.base))
        .header("content-type", "application/json")
        .header("x-request-id", "req-42")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .body(r#"{"amount": "10", "currency": "EUR"}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["x-request-id"], "req-42");
    let headers: Value = app
        .db
        .client()
        .await
        .query_one("SELECT headers FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        headers,
        json!({"x-correlation-id": "req-42", "traceparent": traceparent, "tracestate": "vendor=1"})
    );
}

#[tokio::test]
async fn an_untrusted_trace_context_is_not_stored_with_the_event() {
    // The default: a public client's traceparent and tracestate are dropped.
    let app = TestApp::spawn().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    let res = app
        .http
        .post(format!("{}/orders", app.base))
        .header("content-type", "application/json")
        .header("x-request-id", "req-43")
        .header("traceparent", traceparent)
        .header("tracestate", "vendor=1")
        .body(r#"{"amount": "10"}"#)
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), StatusCode::CREATED);
    let headers: Value = app
        .db
        .client()
        .await
        .query_one("SELECT headers FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    // Tracing is not set up in this process: the request's own trace has no id
    // to store, and the client's must not take its place.
    assert_eq!(headers, json!({"x-correlation-id": "req-43"}));
}

#[tokio::test]
async fn bad_input_gets_a_problem_body_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let deep_amount = format!(
        "{{\"amount\": {}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_body = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(Option<&str>, String, u16, &str)> = vec![
        (
            None,
            r#"{"amount": 1}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (
            Some("text/plain"),
            r#"{"amount": 1}"#.into(),
            415,
            "unsupported_media_type",
        ),
        (Some("application/json"), "".into(), 400, "malformed_json"),
        (Some("application/json"), "{".into(), 400, "malformed_json"),
        (
            Some("application/json"),
            "not json".into(),
            400,
            "malformed_json",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1} trailing"#.into(),
            400,
            "malformed_json",
        ),
        (Some("application/json"), deep_body, 422, "invalid_body"),
        (
            Some("application/json"),
            "[".repeat(10_000),
            400,
            "malformed_json",
        ),
        (Some("application/json"), deep_amount, 422, "invalid_amount"),
        (Some("application/json"), "{}".into(), 422, "invalid_body"),
        (Some("application/json"), "[]".into(), 422, "invalid_body"),
        (
            Some("application/json"),
            "29.99".into(),
            422,
            "invalid_body",
        ),
        (
            Some("application/json"),
            "[29.99]".into(),
            422,
            "invalid_body",
        ),
        (
            Some("application/json"),
            r#"["29.99", "BRL"]"#.into(),
            422,
            "invalid_body",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1, "extra": true}"#.into(),
            422,
            "invalid_body",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1, "amount": 2}"#.into(),
            422,
            "invalid_body",
        ),
        (
            Some("application/json"),
            r#"{"amount": null}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": true}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": "abc"}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": "NaN"}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": {"value": 1}}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": [29.99]}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": 0}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": -5}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": 29.999}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": "29.999"}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1e-3}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1e400}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1000000.01}"#.into(),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            format!(r#"{{"amount": {}}}"#, "9".repeat(5000)),
            422,
            "invalid_amount",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1, "currency": "usd"}"#.into(),
            422,
            "invalid_currency",
        ),
        (
            Some("application/json"),
            r#"{"amount": 1, "currency": 978}"#.into(),
            422,
            "invalid_body",
        ),
        (
            Some("application/json"),
            format!(r#"{{"amount": "{}"}}"#, "x".repeat(70_000)),
            413,
            "payload_too_large",
        ),
    ];
    for (content_type, body, status, code) in cases {
        let shown: String = body.chars().take(60).collect();
        let (got, headers, problem) = app.post_raw(content_type, body).await;
        assert_eq!(got.as_u16(), status, "{shown}: {problem}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{shown}"
        );
        assert_eq!(problem["status"], status, "{shown}");
        assert_eq!(problem["code"], code, "{shown}: {problem}");
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    assert_eq!(app.rows().await, (0, 0), "a rejected request wrote rows");
}

#[tokio::test]
async fn exact_amounts_are_stored_exactly() {
    let app = TestApp::spawn().await;
    for (amount, cents) in [
        ("0.1", 10),
        ("0.30", 30),
        ("1e2", 10_000),
        ("\"2.50\"", 250),
        ("1000000", 100_000_000),
    ] {
        let (status, _, body) = app.post(&format!(r#"{{"amount": {amount}}}"#)).await;
        assert_eq!(status, StatusCode::CREATED, "{amount}: {body}");
        assert_eq!(body["amount_cents"], cents, "{amount}");
    }
    assert_eq!(app.rows().await, (5, 5));
}

#[tokio::test]
async fn unknown_routes_ids_and_methods() {
    let app = TestApp::spawn().await;
    let get = |path: String| app.http.get(format!("{}{path}", app.base)).send();

    let res = get(format!("/orders/{}", uuid::Uuid::now_v7()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let res = get("/orders/not-a-uuid".into()).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = get("/nowhere".into()).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .http
        .delete(format!("{}/orders", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn health_is_plain_ok_and_ready_checks_the_database() {
    let app = TestApp::spawn().await;
    let res = app
        .http
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(res.text().await.unwrap(), "OK");
    let res = app
        .http
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn database_outage_is_a_quick_503_then_recovers() {
    let db = TestDatabase::create("api_outage").await;
    let proxy = TcpProxy::start(&devkit::db::server_addr()).await;
    let app = TestApp::spawn_with(db, Some(&proxy), false).await;
    let (status, _, _) = app.post(r#"{"amount": 1}"#).await;
    assert_eq!(status, StatusCode::CREATED);

    proxy.cut();
    let started = Instant::now();
    let (status, headers, problem) = app.post(r#"{"amount": 2}"#).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "unavailable");
    assert_eq!(headers["retry-after"], "1");
    assert!(
        !problem["detail"].as_str().unwrap().contains("SQL"),
        "no internals in the body"
    );
    assert!(took < Duration::from_secs(5), "503 took {took:?}");
    let ready = app
        .http
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    proxy.restore();
    devkit::eventually(Duration::from_secs(10), "the API to recover", || async {
        let (status, _, _) = app.post(r#"{"amount": 3}"#).await;
        (status == StatusCode::CREATED).then_some(())
    })
    .await;
    // Exactly the orders that got a 201 exist: the one refused during the outage does not.
    let client = app.db.client().await;
    let amounts: Vec<i64> = client
        .query("SELECT amount_cents FROM orders ORDER BY created_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(amounts.first(), Some(&100));
    assert!(!amounts.contains(&200), "{amounts:?}");
    assert_eq!(app.rows().await.0, app.rows().await.1);
}

async fn post_with_key(app: &TestApp, key: &str, body: &str) -> reqwest::Response {
    app.http
        .post(format!("{}/orders", app.base))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_same_answer_and_creates_nothing() {
    let app = TestApp::spawn().await;

    let first = post_with_key(&app, "retry-1", r#"{"amount": 29.99}"#).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    // The same request, written differently: still the same order.
    let retry = post_with_key(&app, "retry-1", r#"{"amount":"29.990"}"#).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["location"], location);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: Value = retry.json().await.unwrap();

    assert_eq!(retry, first);
    assert_eq!(app.rows().await, (1, 1));
    // One key row, pointing at the one order.
    let key_order: uuid::Uuid = app
        .db
        .client()
        .await
        .query_one(
            "SELECT order_id FROM idempotency_keys WHERE key = 'retry-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key_order.to_string(), first["id"].as_str().unwrap());
    // Requests without a key still work, each creating an order.
    app.post(r#"{"amount": 1}"#).await;
    app.post(r#"{"amount": 1}"#).await;
    assert_eq!(app.rows().await, (3, 3));
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let app = TestApp::spawn().await;
    assert_eq!(
        post_with_key(&app, "k", r#"{"amount": 10}"#).await.status(),
        StatusCode::CREATED
    );

    let res = post_with_key(&app, "k", r#"{"amount": 11}"#).await;

    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "idempotency_key_reused");
    assert_eq!(app.rows().await, (1, 1));
    for bad in ["", &"x".repeat(256), "tab\there"] {
        let res = app
            .http
            .post(format!("{}/orders", app.base))
            .header("content-type", "application/json")
            .header("idempotency-key", bad)
            .body(r#"{"amount": 1}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad:?}");
    }
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_order() {
    let app = TestApp::spawn().await;

    let responses = futures::future::join_all(
        (0..8).map(|_| post_with_key(&app, "concurrent", r#"{"amount": 5}"#)),
    )
    .await;

    let mut bodies = Vec::new();
    for r in responses {
        assert_eq!(r.status(), StatusCode::CREATED);
        bodies.push(r.json::<Value>().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(app.rows().await, (1, 1));
}

#[tokio::test]
async fn the_committed_openapi_document_is_what_the_server_serves() {
    let app = TestApp::spawn().await;
    let res = app
        .http
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/json");
    let served = res.text().await.unwrap();
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(committed_path, &served).unwrap();
    }
    let committed = std::fs::read_to_string(committed_path)
        .expect("orders-api/openapi.json is missing; write it with UPDATE_OPENAPI=1");

    assert_eq!(
        served, committed,
        "orders-api/openapi.json is out of date: UPDATE_OPENAPI=1 cargo test -p orders-api --test api openapi"
    );
    let doc: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/orders",
        "/orders/{id}",
        "/health",
        "/ready",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not described");
    }
    for status in ["201", "400", "413", "415", "422", "503"] {
        assert!(
            doc["paths"]["/orders"]["post"]["responses"]
                .get(status)
                .is_some(),
            "POST /orders {status} is not described"
        );
    }
    // Every order operation requires the bearer scheme and describes its 401;
    // the operational endpoints require nothing.
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    for (path, method) in [
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{id}", "get"),
    ] {
        let operation = &doc["paths"][path][method];
        assert_eq!(
            operation["security"],
            json!([{"bearer": []}]),
            "{method} {path}"
        );
        assert!(
            operation["responses"].get("401").is_some(),
            "{method} {path}"
        );
    }
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert!(
            doc["paths"][path]["get"].get("security").is_none(),
            "{path}"
        );
    }
    assert!(doc.get("security").is_none(), "no global requirement");
}

/// What a slow client got.
struct Trickled {
    /// The status line.
    status: String,
    /// The body.
    body: String,
    /// When the first byte of the answer arrived.
    answered_at: Instant,
}

/// Sends `head` and then `body` byte by byte, `gap` apart, on a raw connection,
/// while reading the answer. `started` is signalled once the head and the first
/// byte of the body are sent.
async fn trickle(
    addr: &str,
    head: &str,
    body: &[u8],
    gap: Duration,
    started: tokio::sync::mpsc::UnboundedSender<()>,
) -> Trickled {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let write = async {
        writer.write_all(head.as_bytes()).await.unwrap();
        for (i, byte) in body.iter().enumerate() {
            if writer.write_all(&[*byte]).await.is_err() {
                break; // the server answered and closed: fine
            }
            if i == 0 {
                let _ = started.send(());
            }
            tokio::time::sleep(gap).await;
        }
    };
    let read = async {
        let mut answer = vec![0_u8; 1];
        let first = tokio::time::timeout(Duration::from_secs(20), reader.read_exact(&mut answer))
            .await
            .expect("no answer within 20 s");
        let answered_at = Instant::now();
        if first.is_err() {
            answer.clear();
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut answer)).await;
        (answer, answered_at)
    };
    let ((), (answer, answered_at)) = tokio::join!(write, read);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    Trickled {
        status: answer.lines().next().unwrap_or_default().to_owned(),
        body: answer
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned(),
        answered_at,
    }
}

#[tokio::test]
async fn hostile_clients_get_4xx_write_nothing_and_the_server_stays_healthy() {
    let app = TestApp::spawn().await;
    // Unicode where ASCII is expected, invalid UTF-8, a byte-order mark.
    let unicode: Vec<(Vec<u8>, u16, &str)> = vec![
        (r#"{"amount": "２９.９９"}"#.into(), 422, "invalid_amount"),
        (r#"{"amount": "٢٩"}"#.into(), 422, "invalid_amount"),
        (
            r#"{"amount": 1, "currency": "BRŁ"}"#.into(),
            422,
            "invalid_currency",
        ),
        (r#"{"amöunt": 1}"#.into(), 422, "invalid_body"),
        (r#"{"amount": "1\u0000"}"#.into(), 422, "invalid_amount"),
        (
            b"{\"amount\": \"\xff\xfe\"}".to_vec(),
            400,
            "malformed_json",
        ),
        ("\u{feff}{\"amount\": 1}".into(), 400, "malformed_json"),
        (r#"{"amount": 1e308}"#.into(), 422, "invalid_amount"),
        (r#"{"amount": -0}"#.into(), 422, "invalid_amount"),
        (
            r#"{"amount": 18446744073709551616}"#.into(),
            422,
            "invalid_amount",
        ),
    ];
    for (body, status, code) in unicode {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (got, _, problem) = app.post_raw(Some("application/json"), body).await;
        assert_eq!(got.as_u16(), status, "{shown}: {problem}");
        assert_eq!(problem["code"], code, "{shown}: {problem}");
    }

    // Slow clients: a body trickling in slower than the request timeout (5 s
    // here) gets 408, while other clients are served meanwhile.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let body = br#"{"amount": 12.34}"#;
    let head = format!(
        "POST /orders HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.issuer.bearer(),
        body.len()
    );
    let (started, mut trickling) = tokio::sync::mpsc::unbounded_channel();
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let (addr, head, started) = (addr.clone(), head.clone(), started.clone());
            tokio::spawn(async move {
                trickle(&addr, &head, body, Duration::from_millis(400), started).await
            })
        })
        .collect();
    // The premise: all twenty are sending their bodies when health is asked.
    for _ in 0..20 {
        tokio::time::timeout(Duration::from_secs(5), trickling.recv())
            .await
            .expect("a slow client did not get its request going within 5 s");
    }
    let health = app
        .http
        .get(format!("{}/health", app.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    let health_answered = Instant::now();
    assert_eq!(
        health.status(),
        200,
        "health while slow clients hold connections"
    );
    for task in slow {
        let Trickled {
            status,
            body,
            answered_at,
        } = task.await.unwrap();
        assert!(status.contains(" 408 "), "{status}: {body}");
        assert!(body.contains("request_timeout"), "{body}");
        // The premise: this client still held its request while health was served.
        assert!(
            answered_at > health_answered,
            "a slow client was answered before health was"
        );
    }
    assert_eq!(app.rows().await, (0, 0), "a rejected request wrote rows");
    let (status, _, order) = app.post(r#"{"amount": 12.34}"#).await;
    assert_eq!(status, 201, "the server still creates orders: {order}");
    assert_eq!(app.rows().await, (1, 1));
}

/// Two customers over HTTP, each with their own token: the customer of an
/// order is the token's `sub`, in the answer and in the event; a customer
/// reads, lists and re-sends (by `Idempotency-Key`) only their own orders.
#[tokio::test]
async fn customers_see_only_their_own_orders() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.issuer.client_for("alice"), app.issuer.client_for("bob"));
    let post = |client: &reqwest::Client, body: &'static str, key: &'static str| {
        client
            .post(format!("{}/orders", app.base))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let created: Value = post(&alice, r#"{"amount": 10}"#, "k1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["customer_id"], "alice");
    let id = created["id"].as_str().unwrap();
    let event_customer: String = app
        .db
        .client()
        .await
        .query_one("SELECT payload->>'customer_id' FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(event_customer, "alice");

    // Bob cannot read Alice's order: a 404 like any unknown order.
    let get = |client: &reqwest::Client| client.get(format!("{}/orders/{id}", app.base)).send();
    assert_eq!(get(&alice).await.unwrap().status(), StatusCode::OK);
    let refused = get(&bob).await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "not_found");

    // Bob may use the same key for an order of his own, with another amount:
    // no 422, no replay of Alice's order.
    let response = post(&bob, r#"{"amount": 20}"#, "k1").await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let bobs: Value = response.json().await.unwrap();
    assert_ne!(bobs["id"], created["id"]);
    assert_eq!(bobs["customer_id"], "bob");
    // Alice's retry still replays hers.
    let replay = post(&alice, r#"{"amount": 10}"#, "k1").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], created["id"]);

    // Each lists their own.
    for (client, who, order) in [(&alice, "alice", &created), (&bob, "bob", &bobs)] {
        let page: Value = client
            .get(format!("{}/orders", app.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["orders"].as_array().unwrap().len(), 1, "{who}: {page}");
        assert_eq!(page["orders"][0]["id"], order["id"]);
        assert_eq!(page["next_cursor"], Value::Null);
    }
    assert_eq!(app.rows().await, (2, 2));
}

/// `GET /orders` over HTTP: pages by `next_cursor` while orders are being
/// created, and refuses a bad `limit` or `cursor` with a 400 problem.
#[tokio::test]
async fn orders_are_listed_newest_first_by_cursor() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for cents in 1..=5 {
        let (status, _, body) = app.post(&format!(r#"{{"amount": "0.0{cents}"}}"#)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        created.push(body["id"].as_str().unwrap().to_owned());
    }
    created.reverse();
    let list = |query: String| {
        let request = app.http.get(format!("{}/orders{query}", app.base)).send();
        async move {
            let response = request.await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    let mut listed = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let (status, page) = list(query.clone()).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        listed.extend(
            page["orders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        // A newer order between pages does not disturb the next ones.
        assert_eq!(app.post(r#"{"amount": 1}"#).await.0, StatusCode::CREATED);
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(listed, created);
    let (status, page) = list(String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page["orders"].as_array().unwrap().len(),
        8,
        "default limit 20"
    );

    for (query, code) in [
        ("?limit=0", "invalid_limit"),
        ("?limit=101", "invalid_limit"),
        ("?limit=ten", "invalid_limit"),
        ("?cursor=nonsense", "invalid_cursor"),
        (
            "?cursor=1-00000000000000000000000000000000x",
            "invalid_cursor",
        ),
    ] {
        let (status, problem) = list(query.to_owned()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {problem}");
        assert_eq!(problem["code"], code, "{query}");
    }
    // Without a token: 401, like every order route.
    let anonymous = devkit::http_client()
        .get(format!("{}/orders", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}
