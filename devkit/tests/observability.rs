//! Observability of the running pipeline (the three binaries as processes):
//! one trace from the HTTP request to the invoice, received by an OTLP/HTTP
//! collector in this test; the `/metrics` of each process after some orders; and
//! the committed alert rules and dashboards naming only exported metrics.

#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use devkit::{
    auth::Issuer, broker::TestBroker, db::TestDatabase, eventually, process::Service, sample,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .map(text)
}

/// Collected spans.
type Spans = Arc<Mutex<Vec<Received>>>;

/// A function for [`eventually`] that finds the span `name` of `service`.
fn finder(
    received: &Spans,
    service: &'static str,
    name: String,
) -> impl Fn() -> std::future::Ready<Option<Received>> {
    let received = received.clone();
    move || {
        let found = received
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.service == service && s.span.name == name)
            .cloned();
        std::future::ready(found)
    }
}

/// An OTLP/HTTP trace receiver (protobuf) on a free port.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    async fn receive(State(spans): State<Arc<Mutex<Vec<Received>>>>, body: Bytes) -> &'static str {
        let request = ExportTraceServiceRequest::decode(body).unwrap();
        let mut spans = spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .and_then(|r| attribute(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        ""
    }
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    (serve_on_loopback(app).await, spans)
}

/// Serves `app` on a free loopback port for the rest of the test; its base URL.
async fn serve_on_loopback(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

struct Pipeline {
    api: Service,
    /// The issuer of the API's tokens.
    issuer: Issuer,
    relay: Service,
    worker: Service,
    orders: TestDatabase,
    invoices: TestDatabase,
    _broker: TestBroker,
}

impl Pipeline {
    async fn start(label: &str, extra: &[(&str, String)], worker_log: Option<&str>) -> Self {
        let orders = TestDatabase::reserve(&format!("{label}_orders"));
        let invoices = TestDatabase::reserve(&format!("{label}_invoices"));
        let broker = TestBroker::new();
        // The worker's queue exists before the relay publishes, as after
        // provision-broker (the relay declares only its exchange).
        broker.declare().await;
        let env = |db: &TestDatabase, with_broker: bool| {
            let mut env = vec![("DATABASE_URL", db.url.clone()), ("PORT", "0".to_owned())];
            if with_broker {
                env.push(("BROKER_URL", broker.url.clone()));
                env.push(("BROKER_NAMESPACE", broker.namespace.clone()));
            }
            env.extend(extra.iter().cloned());
            env
        };
        let issuer = Issuer::new();
        let mut api_env = env(&orders, false);
        api_env.extend(issuer.env());
        let api = Service::spawn("orders-api", &api_env, false).await;
        let relay = Service::spawn("outbox-relay", &env(&orders, true), false).await;
        let mut worker_env = env(&invoices, true);
        if let Some(filter) = worker_log {
            worker_env.push(("RUST_LOG", filter.to_owned()));
        }
        let worker = Service::spawn("invoices-worker", &worker_env, false).await;
        Self {
            api,
            issuer,
            relay,
            worker,
            orders,
            invoices,
            _broker: broker,
        }
    }

    async fn post(&self, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut request = self
            .issuer
            .client()
            .post(format!("{}/orders", self.api.base_url()))
            .header("content-type", "application/json")
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    async fn wait_for_invoices(&self, n: i64) {
        eventually(Duration::from_secs(30), "the invoices", || async {
            (self.invoices.count("invoices").await == n).then_some(())
        })
        .await;
    }

    async fn stop(self) {
        for service in [&self.api, &self.relay, &self.worker] {
            service.terminate();
        }
        for mut service in [self.api, self.relay, self.worker] {
            assert!(service.wait(Duration::from_secs(20)).await.success());
        }
    }
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Starts the pipeline exporting to a collector of the test's own (with `extra`
/// variables), posts one order carrying the client's trace context, waits for
/// its invoice, and returns the pipeline, the spans received and the request's
/// server span.
async fn one_traced_order(label: &str, extra: &[(&str, String)]) -> (Pipeline, Spans, Received) {
    let (endpoint, received) = collector().await;
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    let pipeline = Pipeline::start(label, &env, None).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let res = pipeline
        .post(
            r#"{"amount": 29.99}"#,
            &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
        )
        .await;
    assert_eq!(res.status(), 201);
    pipeline.wait_for_invoices(1).await;
    let http = eventually(
        Duration::from_secs(20),
        "the HTTP span",
        finder(&received, "orders-api", "POST /orders".into()),
    )
    .await;
    (pipeline, received, http)
}

#[tokio::test]
async fn one_trace_runs_from_the_http_request_to_the_invoice() {
    // The caller's trace is continued only when it is trusted.
    let trusted = [("HTTP_TRUST_TRACEPARENT", "true".to_owned())];
    let (pipeline, received, http) = one_traced_order("otel", &trusted).await;
    let find = |service, name| finder(&received, service, name);
    let wait = Duration::from_secs(20);
    // The API continues the caller's trace.
    assert_eq!(http.trace_id(), CLIENT_TRACE);
    assert_eq!(hex(&http.span.parent_span_id), CLIENT_SPAN);
    assert_eq!(http.span.kind, SpanKind::Server as i32);
    assert_eq!(
        http.attribute("http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(http.attribute("http.route").as_deref(), Some("/orders"));
    assert_eq!(
        http.attribute("http.response.status_code").as_deref(),
        Some("201")
    );
    let http_span = hex(&http.span.span_id);
    let insert_order = eventually(
        wait,
        "the order's insert span",
        find("orders-api", "INSERT orders".into()),
    )
    .await;
    assert_eq!(insert_order.trace_id(), CLIENT_TRACE);
    assert_eq!(hex(&insert_order.span.parent_span_id), http_span);
    assert_eq!(insert_order.span.kind, SpanKind::Client as i32);
    assert_eq!(
        insert_order.attribute("db.system.name").as_deref(),
        Some("postgresql")
    );
    assert_eq!(
        insert_order.attribute("db.collection.name").as_deref(),
        Some("orders")
    );

    // The relay's publish span, in its own trace, links to the request.
    let exchange = pipeline._broker.topology.exchange.clone();
    let publish = eventually(
        wait,
        "the publish span",
        find("outbox-relay", format!("send {exchange}")),
    )
    .await;
    assert_eq!(publish.span.kind, SpanKind::Producer as i32);
    assert_eq!(
        publish.attribute("messaging.system").as_deref(),
        Some("rabbitmq")
    );
    assert_eq!(
        publish.attribute("messaging.destination.name"),
        Some(exchange)
    );
    assert_eq!(publish.attribute("outbox.confirmed").as_deref(), Some("1"));
    assert!(
        publish
            .span
            .links
            .iter()
            .any(|l| hex(&l.trace_id) == CLIENT_TRACE && hex(&l.span_id) == http_span),
        "the publish span links to the request: {:?}",
        publish.span.links
    );

    // The worker continues the request's trace from the message headers.
    let queue = pipeline._broker.topology.order_created_queue.clone();
    let process = eventually(
        wait,
        "the consume span",
        find("invoices-worker", format!("process {queue}")),
    )
    .await;
    assert_eq!(process.trace_id(), CLIENT_TRACE);
    assert_eq!(hex(&process.span.parent_span_id), http_span);
    assert_eq!(process.span.kind, SpanKind::Consumer as i32);
    assert_eq!(
        process.attribute("invoice.outcome").as_deref(),
        Some("invoiced")
    );
    assert_eq!(
        process.attribute("messaging.operation.type").as_deref(),
        Some("process")
    );
    assert!(process.attribute("messaging.message.id").is_some());
    let invoice = eventually(
        wait,
        "the invoice's insert span",
        find("invoices-worker", "INSERT invoices".into()),
    )
    .await;
    assert_eq!(invoice.trace_id(), CLIENT_TRACE);
    assert_eq!(
        hex(&invoice.span.parent_span_id),
        hex(&process.span.span_id)
    );
    assert_eq!(
        invoice.attribute("db.collection.name").as_deref(),
        Some("invoices")
    );

    pipeline.stop().await;
}

/// Every series name a scrape can have: each family's declared name with the
/// suffixes of its type.
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The metric names in a PromQL text: the tokens with one of the services'
/// metric prefixes.
fn metric_names(promql: &str) -> BTreeSet<String> {
    const PREFIXES: [&str; 5] = [
        "http_server_",
        "db_pool_",
        "orders_",
        "outbox_",
        "invoices_",
    ];
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| PREFIXES.iter().any(|p| t.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// Asserts that the file at `path` (from the root) names at least `at_least`
/// metrics, all of them in `known` (what the processes export or write).
fn assert_names_only(path: &str, at_least: usize, known: &BTreeSet<String>) {
    let text = devkit::read_workspace_file(path);
    let used = metric_names(&text);
    assert!(used.len() >= at_least, "{path} names the metrics: {used:?}");
    let unknown: Vec<_> = used.difference(known).collect();
    assert!(
        unknown.is_empty(),
        "{path} names metrics no process exports: {unknown:?}"
    );
}

#[tokio::test]
async fn a_public_clients_trace_context_is_not_continued_by_default() {
    let (pipeline, received, http) = one_traced_order("untrusted", &[]).await;
    let find = |service, name| finder(&received, service, name);
    let wait = Duration::from_secs(20);
    // The request starts a trace of its own: a root span, not the client's id.
    let (trace, http_span) = (http.trace_id(), hex(&http.span.span_id));
    assert_ne!(trace, CLIENT_TRACE);
    assert!(http.span.parent_span_id.is_empty(), "{:?}", http.span);
    assert!(http.span.trace_state.is_empty(), "{:?}", http.span);
    // That trace is stored with the event and continued by the worker.
    let stored: String = pipeline
        .orders
        .client()
        .await
        .query_one("SELECT headers->>'traceparent' FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, format!("00-{trace}-{http_span}-01"));
    let queue = pipeline._broker.topology.order_created_queue.clone();
    let process = eventually(
        wait,
        "the consume span",
        find("invoices-worker", format!("process {queue}")),
    )
    .await;
    assert_eq!(process.trace_id(), trace);
    assert_eq!(hex(&process.span.parent_span_id), http_span);
    // No span of any process names the client's trace, as its own or a link.
    pipeline.stop().await;
    let spans = received.lock().unwrap();
    let client_trace = CLIENT_TRACE.to_owned();
    assert!(
        spans.iter().all(|s| s.trace_id() != client_trace
            && s.span
                .links
                .iter()
                .all(|l| hex(&l.trace_id) != client_trace)),
        "spans naming the client's trace: {:?}",
        spans
            .iter()
            .filter(|s| s
                .span
                .links
                .iter()
                .any(|l| hex(&l.trace_id) == client_trace)
                || s.trace_id() == client_trace)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn every_process_serves_metrics_that_the_alerts_and_dashboards_use() {
    // No exporter: the (trusted) trace context must travel anyway.
    let pipeline = Pipeline::start(
        "metrics",
        &[("HTTP_TRUST_TRACEPARENT", "true".to_owned())],
        Some("info,invoices_worker=debug"),
    )
    .await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    for i in 1..=4 {
        let res = pipeline
            .post(
                &format!(r#"{{"amount": {i}.25}}"#),
                &[("traceparent", &traceparent)],
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    for _ in 0..2 {
        let res = pipeline
            .post(r#"{"amount": 5}"#, &[("idempotency-key", "metrics-retry")])
            .await;
        assert_eq!(res.status(), 201);
    }
    let res = pipeline.post(r#"{"amount": -1}"#, &[]).await;
    assert_eq!(res.status(), 422);
    pipeline.wait_for_invoices(5).await;

    let scrape = Service::scrape;
    // The relay counts a batch after marking it; the worker after acking. A
    // scrape reads the backlog before it encodes the counters, so a mark that
    // commits in between shows 5 published next to a backlog of 1: wait for both.
    let relay = eventually(Duration::from_secs(10), "the relay's counts", || async {
        let s = scrape(&pipeline.relay).await;
        (sample(&s, "outbox_published_total") == Some(5.0)
            && sample(&s, "outbox_backlog") == Some(0.0))
        .then_some(s)
    })
    .await;
    let api = scrape(&pipeline.api).await;
    let worker = eventually(Duration::from_secs(10), "the worker's counts", || async {
        let s = scrape(&pipeline.worker).await;
        (sample(&s, "invoices_invoiced_total") == Some(5.0)).then_some(s)
    })
    .await;

    assert_eq!(sample(&api, "orders_created_total"), Some(5.0));
    assert_eq!(sample(&api, "orders_idempotent_replays_total"), Some(1.0));
    let posts = |status: u16| {
        sample(
            &api,
            &format!(
                r#"http_server_requests_total{{route="/orders",method="POST",status="{status}"}}"#
            ),
        )
    };
    assert_eq!(posts(201), Some(6.0));
    assert_eq!(posts(422), Some(1.0));
    assert_eq!(
        sample(
            &api,
            r#"http_server_request_duration_seconds_count{route="/orders",method="POST"}"#
        ),
        Some(7.0)
    );
    assert_eq!(sample(&api, "db_pool_max_connections"), Some(16.0));
    assert!(sample(&api, r#"db_pool_connections{state="idle"}"#).unwrap() >= 1.0);

    assert_eq!(sample(&relay, "outbox_backlog"), Some(0.0));
    assert_eq!(sample(&relay, "outbox_broker_connected"), Some(1.0));
    assert_eq!(
        sample(&relay, "outbox_commit_to_confirm_seconds_count"),
        Some(5.0)
    );
    assert!(sample(&relay, "outbox_confirm_seconds_count").unwrap() >= 1.0);

    assert_eq!(sample(&worker, "invoices_consumed_total"), Some(5.0));
    assert_eq!(sample(&worker, "invoices_duplicates_total"), Some(0.0));
    assert_eq!(
        sample(&worker, "invoices_order_to_invoice_seconds_count"),
        Some(5.0)
    );
    assert_eq!(sample(&worker, "invoices_broker_connected"), Some(1.0));
    let queue = &pipeline._broker.topology.order_created_queue;
    assert!(
        sample(
            &worker,
            &format!(r#"invoices_queue_messages{{queue="{queue}"}}"#)
        )
        .is_some(),
        "queue depth exported"
    );

    // Without an exporter the request's trace still reached the worker: its log
    // lines for these orders carry the caller's trace id.
    let traced = pipeline
        .worker
        .logs()
        .iter()
        .filter(|l| l.contains("invoice stored") && l.contains(CLIENT_TRACE))
        .count();
    assert_eq!(traced, 4, "worker log lines carrying the trace id");
    let stored: i64 = pipeline
        .orders
        .scalar(&format!(
            "SELECT count(*) FROM outbox WHERE headers->>'traceparent' LIKE '00-{CLIENT_TRACE}-%'"
        ))
        .await;
    assert_eq!(stored, 4);

    // The alert rules and dashboards name only what the services export.
    let exported: BTreeSet<String> = [&api, &relay, &worker]
        .iter()
        .flat_map(|s| exported_names(s))
        .collect();
    assert_names_only("docker/prometheus/alerts.yml", 8, &exported);
    let gauges: BTreeSet<String> = [&api, &relay, &worker]
        .iter()
        .flat_map(|s| s.lines())
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" gauge"))
        .map(str::to_owned)
        .collect();
    check_dashboards(&devkit::workspace_root(), &exported, &gauges);
    pipeline.stop().await;
}

/// One OTLP metrics request as received: who sent it, with which
/// `authorization` header, and its series as Prometheus would name them (the
/// OTLP-to-Prometheus translation: `_total` for a monotonic sum,
/// `_bucket`/`_sum`/`_count` for a histogram), keyed by their canonical text.
#[derive(Debug, Clone)]
struct Push {
    service: String,
    instance: String,
    authorization: String,
    series: std::collections::BTreeMap<String, f64>,
}

/// `name{a="1",b="2"}` with the labels sorted, `le` written as a number.
fn series_key(name: &str, labels: &[(String, String)]) -> String {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| {
            let v = match (k.as_str(), v.parse::<f64>()) {
                ("le", Ok(bound)) if bound.is_finite() => format!("{bound}"),
                ("le", _) => "+Inf".to_owned(),
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    labels.sort();
    let text: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", text.join(","))
}

/// The series of a `/metrics` scrape, keyed as [`series_key`] (no `_created`).
fn scraped_series(scrape: &str) -> std::collections::BTreeMap<String, f64> {
    let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)""#).unwrap();
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            if name.ends_with("_created") {
                return None;
            }
            let labels: Vec<(String, String)> = label
                .captures_iter(labels)
                .map(|c| (c[1].to_owned(), c[2].replace("\\\"", "\"")))
                .collect();
            Some((series_key(name, &labels), value.parse().ok()?))
        })
        .collect()
}

fn number(
    value: Option<&opentelemetry_proto::tonic::metrics::v1::number_data_point::Value>,
) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match value {
        Some(Value::AsInt(i)) => *i as f64,
        Some(Value::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}

fn labels(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(text).unwrap_or_default(),
            )
        })
        .collect()
}

/// An OTLP/HTTP metrics receiver (protobuf) on a free port.
async fn metrics_collector() -> (String, Arc<Mutex<Vec<Push>>>) {
    use axum::http::HeaderMap;
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::ExportMetricsServiceRequest, metrics::v1::metric::Data,
    };
    type Pushes = Arc<Mutex<Vec<Push>>>;
    async fn receive(
        State(pushes): State<Pushes>,
        headers: HeaderMap,
        body: Bytes,
    ) -> &'static str {
        assert_eq!(headers["content-type"], "application/x-protobuf");
        let request = ExportMetricsServiceRequest::decode(body).unwrap();
        for resource in request.resource_metrics {
            let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
            let mut series = std::collections::BTreeMap::new();
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                match metric.data {
                    Some(Data::Sum(sum)) => {
                        assert!(sum.is_monotonic, "{}", metric.name);
                        for p in sum.data_points {
                            let key = series_key(
                                &format!("{}_total", metric.name),
                                &labels(&p.attributes),
                            );
                            series.insert(key, number(p.value.as_ref()));
                        }
                    }
                    Some(Data::Gauge(gauge)) => {
                        for p in gauge.data_points {
                            series.insert(
                                series_key(&metric.name, &labels(&p.attributes)),
                                number(p.value.as_ref()),
                            );
                        }
                    }
                    Some(Data::Histogram(histogram)) => {
                        for p in histogram.data_points {
                            let base = labels(&p.attributes);
                            let mut cumulative = 0;
                            for (i, count) in p.bucket_counts.iter().enumerate() {
                                cumulative += count;
                                let le = p
                                    .explicit_bounds
                                    .get(i)
                                    .map_or("+Inf".to_owned(), |b| format!("{b}"));
                                let mut with_le = base.clone();
                                with_le.push(("le".to_owned(), le));
                                series.insert(
                                    series_key(&format!("{}_bucket", metric.name), &with_le),
                                    cumulative as f64,
                                );
                            }
                            series.insert(
                                series_key(&format!("{}_sum", metric.name), &base),
                                p.sum.unwrap_or(f64::NAN),
                            );
                            series.insert(
                                series_key(&format!("{}_count", metric.name), &base),
                                p.count as f64,
                            );
                        }
                    }
                    other => panic!("{}: unexpected data {other:?}", metric.name),
                }
            }
            pushes.lock().unwrap().push(Push {
                service: attribute(&attributes, "service.name").unwrap_or_default(),
                instance: attribute(&attributes, "service.instance.id").unwrap_or_default(),
                authorization: headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                series,
            });
        }
        ""
    }
    let pushes = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/v1/metrics", post(receive))
        .with_state(pushes.clone());
    (serve_on_loopback(app).await, pushes)
}

#[tokio::test]
async fn every_process_pushes_the_series_of_its_metrics_endpoint_over_otlp() {
    let (collector, pushes) = metrics_collector().await;
    let pipeline = Pipeline::start(
        "otlp_metrics",
        &[
            ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                format!("{collector}/v1/metrics"),
            ),
            (
                "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
                "authorization=Basic%20bWV0cmljczprZXk=".to_owned(),
            ),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250".to_owned()),
            ("METRICS_EMF_NAMESPACE", "orders-pipeline-test".to_owned()),
            ("METRICS_EMF_INTERVAL", "1s".to_owned()),
        ],
        None,
    )
    .await;
    for i in 1..=3 {
        let res = pipeline.post(&format!(r#"{{"amount": {i}.5}}"#), &[]).await;
        assert_eq!(res.status(), 201);
    }
    assert_eq!(pipeline.post(r#"{"amount": -1}"#, &[]).await.status(), 422);
    // One message the worker cannot read: it ends in the dead-letter queue.
    pipeline
        ._broker
        .publish_raw(b"not an event", lapin::BasicProperties::default())
        .await;
    pipeline.wait_for_invoices(3).await;

    let topology = &pipeline._broker.topology;
    let dlq = format!(
        r#"invoices_queue_messages{{queue={:?}}}"#,
        topology.dead_letter_queue
    );
    let wait = Duration::from_secs(30);
    // A push is a snapshot taken while requests and refreshes go on, so an early
    // one may hold some of the counts and not yet others: wait for the push that
    // holds them all, and fail naming the series if none ever does.
    let pushed_with = |service: &'static str, expected: Vec<(String, f64)>| {
        let pushes = pushes.clone();
        let what = format!("a push from {service} with {expected:?}");
        async move {
            eventually(wait, &what, || {
                let pushes = pushes.lock().unwrap();
                let push = pushes.iter().rev().find(|p| p.service == service).cloned();
                std::future::ready(push.filter(|push| {
                    expected
                        .iter()
                        .all(|(key, value)| push.series.get(key) == Some(value))
                }))
            })
            .await
        }
    };
    let series = |pairs: &[(&str, f64)]| -> Vec<(String, f64)> {
        pairs.iter().map(|(k, v)| (series_key_of(k), *v)).collect()
    };
    // What the issue names arrives: HTTP rate and latency, the outbox backlog and
    // its oldest event's age, the DLQ depth, the order-to-invoice time.
    let api = pushed_with(
        "orders-api",
        series(&[
            (
                r#"http_server_requests_total{method="POST",route="/orders",status="201"}"#,
                3.0,
            ),
            (
                r#"http_server_requests_total{method="POST",route="/orders",status="422"}"#,
                1.0,
            ),
            (
                r#"http_server_request_duration_seconds_count{method="POST",route="/orders"}"#,
                4.0,
            ),
            (
                r#"http_server_request_duration_seconds_bucket{le="+Inf",method="POST",route="/orders"}"#,
                4.0,
            ),
            ("orders_created_total", 3.0),
        ]),
    )
    .await;
    assert_eq!(api.authorization, "Basic bWV0cmljczprZXk=");
    let relay = pushed_with(
        "outbox-relay",
        series(&[
            ("outbox_published_total", 3.0),
            ("outbox_backlog", 0.0),
            ("outbox_oldest_unpublished_age_seconds", 0.0),
            ("outbox_notification_session", 1.0),
        ]),
    )
    .await;
    let worker = pushed_with(
        "invoices-worker",
        series(&[
            (&dlq, 1.0),
            ("invoices_order_to_invoice_seconds_count", 3.0),
            ("invoices_invoiced_total", 3.0),
        ]),
    )
    .await;
    // One instance id per process.
    let instances: BTreeSet<&str> = [&api, &relay, &worker]
        .iter()
        .map(|p| p.instance.as_str())
        .collect();
    assert_eq!(instances.len(), 3, "{instances:?}");
    assert!(!instances.contains(""));

    // The gauges as CloudWatch EMF lines on stdout, every gauge the stack's
    // alarms read among them, with the dimensions they name.
    let emf = |process: &Service| -> Vec<serde_json::Value> {
        process
            .logs()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|l| l.get("_aws").is_some())
            .collect()
    };
    let written = |process: &Service, service: &str, dimensions: serde_json::Value| {
        let mut names = BTreeSet::new();
        for line in emf(process) {
            let directive = &line["_aws"]["CloudWatchMetrics"][0];
            assert_eq!(directive["Namespace"], "orders-pipeline-test", "{line}");
            assert_eq!(line["Service"], service, "{line}");
            if directive["Dimensions"] == dimensions {
                for metric in directive["Metrics"].as_array().unwrap() {
                    let name = metric["Name"].as_str().unwrap().to_owned();
                    assert!(line[&name].is_number(), "{line}");
                    names.insert(name);
                }
            }
        }
        names
    };
    let relay_gauges = eventually(wait, "the relay's EMF lines", || {
        let names = written(
            &pipeline.relay,
            "outbox-relay",
            serde_json::json!([["Service"]]),
        );
        std::future::ready(
            names
                .contains("outbox_notification_session")
                .then_some(names),
        )
    })
    .await;
    let worker_queues = eventually(wait, "the worker's EMF queue lines", || {
        let names = written(
            &pipeline.worker,
            "invoices-worker",
            serde_json::json!([["Service", "queue"]]),
        );
        std::future::ready(names.contains("invoices_queue_messages").then_some(names))
    })
    .await;
    let worker_gauges = written(
        &pipeline.worker,
        "invoices-worker",
        serde_json::json!([["Service"]]),
    );
    assert!(
        emf(&pipeline.worker)
            .iter()
            .any(|l| l["queue"] == topology.dead_letter_queue.as_str()),
        "the DLQ's depth has a line of its own"
    );
    let emitted: BTreeSet<String> = relay_gauges
        .into_iter()
        .chain(worker_queues)
        .chain(worker_gauges)
        .collect();
    assert!(
        !emitted.contains("outbox_published"),
        "counters are no EMF metrics"
    );
    assert_names_only("infra/src/alarms.ts", 5, &emitted);

    // The same series as /metrics, label for label: a scrape, then the next push.
    for (service, process) in [
        ("orders-api", &pipeline.api),
        ("outbox-relay", &pipeline.relay),
        ("invoices-worker", &pipeline.worker),
    ] {
        let before = pushes.lock().unwrap().len();
        let scrape = process.scrape().await;
        let push = eventually(wait, "a push after the scrape", || {
            let pushes = pushes.lock().unwrap();
            std::future::ready(
                pushes[before..]
                    .iter()
                    .find(|p| p.service == service)
                    .cloned(),
            )
        })
        .await;
        // The scrape itself adds the /metrics route's series after it is answered.
        let keys = |series: &std::collections::BTreeMap<String, f64>| -> BTreeSet<String> {
            series
                .keys()
                .filter(|k| !k.contains(r#"route="/metrics""#))
                .cloned()
                .collect()
        };
        let scraped = keys(&scraped_series(&scrape));
        let pushed = keys(&push.series);
        assert!(scraped.len() > 20, "{service}: {scraped:?}");
        assert_eq!(
            scraped.difference(&pushed).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{service}: series on /metrics that were not pushed"
        );
        assert_eq!(
            pushed.difference(&scraped).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{service}: series pushed that /metrics does not serve"
        );
    }
    pipeline.stop().await;
}

/// The canonical key of a series written as on `/metrics`.
fn series_key_of(series: &str) -> String {
    scraped_series(&format!("{series} 0\n"))
        .into_keys()
        .next()
        .unwrap()
}

/// The CloudWatch metrics of the AWS resources the Pulumi program creates that
/// a dashboard may read: namespace, the constructor that makes the resource,
/// and the metric names (AWS's documented ones that the dashboards use).
const CLOUDWATCH: [(&str, &str, &[&str]); 5] = [
    (
        "AWS/ECS",
        "new aws.ecs.Service(",
        &["CPUUtilization", "MemoryUtilization"],
    ),
    (
        "ECS/ContainerInsights",
        r#"name: "containerInsights", value: "enabled""#,
        &[
            "RunningTaskCount",
            "DesiredTaskCount",
            "NetworkRxBytes",
            "NetworkTxBytes",
        ],
    ),
    (
        "AWS/ApplicationELB",
        "new aws.lb.LoadBalancer(",
        &[
            "RequestCount",
            "HTTPCode_Target_5XX_Count",
            "HTTPCode_ELB_5XX_Count",
            "TargetResponseTime",
            "HealthyHostCount",
            "UnHealthyHostCount",
        ],
    ),
    (
        "AWS/RDS",
        "new aws.rds.Instance(",
        &[
            "DatabaseConnections",
            "CPUUtilization",
            "FreeStorageSpace",
            "FreeableMemory",
        ],
    ),
    (
        "AWS/AmazonMQ",
        "new aws.mq.Broker(",
        &["MessageCount", "SystemCpuUtilization", "RabbitMQMemUsed"],
    ),
];

/// The seed's four dashboards (and the Grafana Cloud variants) read only what
/// exists: PromQL names series the services export, CloudWatch queries name a
/// metric of a resource the program creates or a gauge the services write as
/// EMF in the namespace the program sets, trace queries name the services.
fn check_dashboards(
    root: &std::path::Path,
    exported: &BTreeSet<String>,
    gauges: &BTreeSet<String>,
) {
    let infra: String = [
        "alarms.ts",
        "services.ts",
        "data.ts",
        "edge.ts",
        "metrics.ts",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(root.join("infra/src").join(f)).unwrap())
    .collect();
    assert!(
        infra.contains("METRICS_EMF_NAMESPACE: s.prefix"),
        "the program sets the EMF namespace"
    );
    let binaries = ["orders-api", "outbox-relay", "invoices-worker"];
    let mut titles = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    let mut files = 0;
    for folder in ["docker/grafana/dashboards", "docker/grafana/cloud"] {
        for entry in std::fs::read_dir(root.join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.display().to_string();
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            files += 1;
            titles.insert(json["title"].as_str().unwrap().to_owned());
            let variables: BTreeSet<String> = json["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| format!("${{{}}}", v["name"].as_str().unwrap()))
                .collect();
            let panels: Vec<&serde_json::Value> = json["panels"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["type"] != "row")
                .collect();
            assert!(panels.len() >= 3, "{name}: {} panels", panels.len());
            for panel in panels {
                let targets = panel["targets"].as_array().unwrap();
                assert!(!targets.is_empty(), "{name}: {}", panel["title"]);
                for target in targets {
                    let source = &target["datasource"];
                    let uid = source["uid"].as_str().unwrap();
                    assert!(
                        variables.contains(uid),
                        "{name}: datasource {uid} is no variable of the dashboard (import picks it)"
                    );
                    match source["type"].as_str().unwrap() {
                        "prometheus" => {
                            let expr = target["expr"].as_str().unwrap();
                            let used = metric_names(expr);
                            assert!(!used.is_empty(), "{name}: {expr}");
                            let unknown: Vec<_> = used.difference(exported).collect();
                            assert!(
                                unknown.is_empty(),
                                "{name} names unexported metrics: {unknown:?}"
                            );
                        }
                        "cloudwatch" => {
                            let namespace = target["namespace"].as_str().unwrap();
                            let metric = target["metricName"].as_str().unwrap();
                            namespaces.insert(namespace.to_owned());
                            if namespace == "$namespace" {
                                assert!(
                                    gauges.contains(metric),
                                    "{name}: {metric} is no gauge the services write as EMF"
                                );
                                let service = target["dimensions"]["Service"].as_str().unwrap();
                                assert!(binaries.contains(&service), "{name}: Service {service}");
                            } else {
                                let (_, made_by, metrics) = CLOUDWATCH
                                    .iter()
                                    .find(|(ns, _, _)| *ns == namespace)
                                    .unwrap_or_else(|| panic!("{name}: namespace {namespace} of no resource the program creates"));
                                assert!(
                                    infra.contains(made_by),
                                    "{name}: the program makes no {made_by}"
                                );
                                assert!(metrics.contains(&metric), "{name}: {namespace} {metric}");
                            }
                        }
                        "jaeger" => {
                            let service = target["service"].as_str().unwrap();
                            assert!(binaries.contains(&service), "{name}: {service}");
                        }
                        "tempo" => {
                            let query = target["query"].as_str().unwrap();
                            assert!(
                                binaries
                                    .iter()
                                    .any(|b| query
                                        .contains(&format!("resource.service.name=\"{b}\""))),
                                "{name}: {query}"
                            );
                        }
                        other => panic!("{name}: datasource type {other}"),
                    }
                }
            }
        }
    }
    assert_eq!(
        files, 5,
        "four dashboards, and the tracing one for Grafana Cloud's Tempo"
    );
    for title in [
        "Application Overview",
        "Infrastructure",
        "Business KPIs",
        "Distributed Tracing",
    ] {
        assert!(titles.contains(title), "no dashboard {title}: {titles:?}");
    }
    for namespace in CLOUDWATCH
        .iter()
        .map(|(ns, _, _)| *ns)
        .chain(["$namespace"])
    {
        assert!(
            namespaces.contains(namespace),
            "Infrastructure reads nothing of {namespace}"
        );
    }
}

#[tokio::test]
async fn the_last_counts_are_pushed_at_shutdown() {
    // An interval no test waits for: whatever arrives comes from the stop.
    let (collector, pushes) = metrics_collector().await;
    let orders = TestDatabase::reserve("otlp_last_push");
    let issuer = Issuer::new();
    let mut env = vec![
        ("DATABASE_URL", orders.url.clone()),
        ("PORT", "0".to_owned()),
        ("OTEL_METRICS_EXPORTER", "otlp".to_owned()),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("{collector}/v1/metrics"),
        ),
        ("OTEL_METRIC_EXPORT_INTERVAL", "3600000".to_owned()),
    ];
    env.extend(issuer.env());
    let mut api = Service::spawn("orders-api", &env, false).await;
    let res = issuer
        .client()
        .post(format!("{}/orders", api.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"amount": 7.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(pushes.lock().unwrap().is_empty(), "no push before the stop");
    api.terminate();
    assert!(api.wait(Duration::from_secs(20)).await.success());
    let pushes = pushes.lock().unwrap();
    assert_eq!(pushes.len(), 1, "one push, at the stop");
    assert_eq!(pushes[0].series.get("orders_created_total{}"), Some(&1.0));
    assert_eq!(
        pushes[0]
            .series
            .get(r#"http_server_requests_total{method="POST",route="/orders",status="201"}"#),
        Some(&1.0)
    );
}
