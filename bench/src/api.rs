//! API: `POST /orders` under wrk (closed loop, keep-alive connections) at several
//! concurrencies, beside pgbench running the API's own transaction (order row,
//! outbox row, `NOTIFY`, one statement, prepared) at the same concurrency on the
//! same database; and `GET /health` under wrk as the HTTP-only ceiling.

use std::{process::Command, time::Duration};

use devkit::{
    auth::{Issuer, TEST_CUSTOMER},
    db::TestDatabase,
    process::Service,
};
use plumbing::db::Database;

use crate::{Cpu, Row, Scale, Section, load::open_loop, ms, percentile, process_cpu, verdict};

/// wrk's request hook for `POST /orders`: a unique amount per request.
const WRK_POST: &str = r#"
local counter = 0
local threads = 0
function setup(thread)
  thread:set("thread_id", threads)
  threads = threads + 1
end
function request()
  counter = counter + 1
  local cents = (counter * 7919 + thread_id * 104729) % 99999999 + 1
  local body = string.format('{"amount": %d.%02d}', math.floor(cents / 100), cents % 100)
  -- wrk.format uses wrk.headers (the -H options: Authorization) only when given
  -- no headers of its own: they are copied in.
  local headers = {["Content-Type"] = "application/json"}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  return wrk.format("POST", "/orders", headers, body)
end
"#;

/// wrk's report hook: the summary as one JSON line (microseconds).
const WRK_REPORT: &str = r#"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
pub struct Wrk {
    /// Requests per second.
    pub rate: f64,
    /// Latency percentiles, ms.
    pub p50: f64,
    /// p99, ms.
    pub p99: f64,
    /// p99.9, ms.
    pub p999: f64,
    /// Answers other than 2xx, and socket errors.
    pub failures: u64,
}

/// Runs wrk against `url` with `connections` for `seconds`; `post` uses the
/// order-posting script, otherwise plain GETs; every request carries the bearer
/// `token`, if any.
///
/// # Panics
/// When wrk is missing or its report cannot be read.
#[must_use]
pub fn wrk(url: &str, connections: usize, seconds: u64, post: bool, token: Option<&str>) -> Wrk {
    let script = std::env::temp_dir().join(format!("wrk-{}.lua", uuid::Uuid::new_v4().simple()));
    let hooks = if post {
        format!("{WRK_POST}{WRK_REPORT}")
    } else {
        WRK_REPORT.to_owned()
    };
    std::fs::write(&script, hooks).unwrap();
    let mut command = Command::new("wrk");
    command
        .args(["-t", &connections.min(2).to_string()])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(url);
    // Into wrk.headers, which the POST script copies into each request.
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command
        .output()
        .expect("wrk is not installed (Debian: apt-get install wrk)");
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "wrk failed: {text}");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRK "))
        .unwrap_or_else(|| panic!("no report in wrk's output: {text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let number = |k: &str| v[k].as_f64().unwrap_or_default();
    Wrk {
        rate: number("requests") / (number("duration_us") / 1e6),
        p50: number("p50_us") / 1e3,
        p99: number("p99_us") / 1e3,
        p999: number("p999_us") / 1e3,
        failures: v["non2xx"].as_u64().unwrap_or_default()
            + v["socket_errors"].as_u64().unwrap_or_default(),
    }
}

/// The API's transaction as a pgbench script: the payload and headers of a real
/// order's event, fresh ids, a random amount.
fn transaction_script(payload: &serde_json::Value, headers: &serde_json::Value) -> String {
    let literal = |v: &serde_json::Value| v.to_string().replace('\'', "''");
    format!(
        "\\set cents random(1, 99999999)
WITH new_order AS (
    INSERT INTO orders (id, amount_cents, currency, created_at)
    VALUES (gen_random_uuid(), :cents, 'BRL', now())
    RETURNING id
)
INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version,
                    payload, headers, created_at)
SELECT gen_random_uuid(), 'order', new_order.id, 'OrderCreated', 1, '{}'::jsonb, '{}'::jsonb, now()
FROM new_order
RETURNING pg_notify('{}', '');
",
        literal(payload),
        literal(headers),
        plumbing::db::OUTBOX_CHANNEL
    )
}

/// CPU µs per order or transaction, and the machine's busy share.
#[derive(Debug, Clone, Copy, Default)]
struct Costs {
    api: f64,
    machine: f64,
    busy: f64,
    pgbench_machine: f64,
    pgbench_busy: f64,
}

/// Runs the API benchmark.
pub async fn run(scale: Scale) -> Section {
    let concurrencies: Vec<usize> = scale.pick(vec![1, 4, 16, 64], vec![4]);
    let seconds: u64 = scale.pick(10, 2);
    let db = TestDatabase::migrated("bench_api", Database::Orders).await;
    let (payload, headers) = crate::relay::sample_event(&db).await;
    let script = transaction_script(&payload, &headers);
    // Authentication on, as shipped: every order carries an ES256 token.
    let issuer = Issuer::new();
    let token = issuer.long_lived_token(TEST_CUSTOMER);
    let mut env = vec![
        ("DATABASE_URL", db.url.clone()),
        ("PORT", "0".into()),
        ("MIGRATE_ON_START", "false".into()),
    ];
    env.extend(issuer.env());
    let api = Service::spawn("orders-api", &env, false).await;
    let orders = format!("{}/orders", api.base_url());

    // Warm-up: connections, prepared statements, the first pages of the tables.
    let _ = wrk(&orders, 4, 1, true, Some(&token));
    let _ = crate::pgbench(&db.url, &script, 4, 1);

    let mut rows = Vec::new();
    let mut runs = Vec::new();
    let mut best = (0.0_f64, 0.0_f64, 0_usize);
    // CPU µs per order at the best concurrency: the API's own, the whole
    // machine's; the whole machine's per pgbench transaction.
    let mut best_cpu = Costs::default();
    for &c in &concurrencies {
        let (machine, own) = (Cpu::now(), process_cpu(api.pid()));
        let http = wrk(&orders, c, seconds, true, Some(&token));
        let (http_machine, http_busy) = machine.since();
        let api_cpu = process_cpu(api.pid()) - own;
        let machine = Cpu::now();
        let pg = crate::pgbench(&db.url, &script, c, seconds);
        let (pg_machine, pg_busy) = machine.since();
        let ratio = http.rate / pg;
        let per = |cpu: f64, rate: f64| 1e6 * cpu / (rate * seconds as f64).max(1.0);
        let costs = Costs {
            api: per(api_cpu, http.rate),
            machine: per(http_machine, http.rate),
            busy: http_busy,
            pgbench_machine: per(pg_machine, pg),
            pgbench_busy: pg_busy,
        };
        if http.rate > best.0 {
            best = (http.rate, pg, c);
            best_cpu = costs;
        }
        rows.push(Row::new(
            format!("POST /orders, {c} connections, {seconds} s (wrk)"),
            format!(
                "{:.0} orders/s; p50 {:.2} / p99 {:.2} / p99.9 {:.2} ms{}",
                http.rate,
                http.p50,
                http.p99,
                http.p999,
                if http.failures > 0 {
                    format!("; {} failed", http.failures)
                } else {
                    String::new()
                }
            ),
            format!("pgbench, same transaction, {c} clients: {pg:.0} tps"),
            format!("{:.1} %", 100.0 * ratio),
            "",
        ));
        runs.push(serde_json::json!({
            "connections": c,
            "orders_per_s": http.rate.round(),
            "p50_ms": http.p50,
            "p99_ms": http.p99,
            "p999_ms": http.p999,
            "failures": http.failures,
            "pgbench_tps": pg.round(),
            "ratio": (ratio * 1000.0).round() / 1000.0,
            "cpu_us_per_order": {
                "api": costs.api.round(),
                "machine": costs.machine.round(),
                "machine_busy": (costs.busy * 100.0).round() / 100.0,
                "pgbench_machine": costs.pgbench_machine.round(),
                "pgbench_machine_busy": (costs.pgbench_busy * 100.0).round() / 100.0,
            },
        }));
    }
    let (best_rate, best_pg, best_c) = best;
    // The best against pgbench's best (at any of the concurrencies).
    let best_pgbench = runs
        .iter()
        .filter_map(|r| r["pgbench_tps"].as_f64())
        .fold(0.0, f64::max);
    let best_ratio = best_rate / best_pgbench;
    rows.push(Row::new(
        format!("best POST /orders rate ({best_c} connections)"),
        format!("{best_rate:.0} orders/s"),
        format!("best pgbench rate: {best_pgbench:.0} tps"),
        format!("{:.1} %", 100.0 * best_ratio),
        verdict("≥ 75 % of pgbench", best_ratio >= 0.75),
    ));
    rows.push(Row::new(
        format!("CPU per order at {best_c} connections: the API's own, the whole machine's (busy)"),
        format!(
            "API {:.0} µs, machine {:.0} µs ({:.0} % busy)",
            best_cpu.api,
            best_cpu.machine,
            100.0 * best_cpu.busy
        ),
        format!(
            "pgbench: machine {:.0} µs per transaction ({:.0} % busy)",
            best_cpu.pgbench_machine,
            100.0 * best_cpu.pgbench_busy
        ),
        format!(
            "{:.2}× the CPU",
            best_cpu.machine / best_cpu.pgbench_machine.max(1.0)
        ),
        "",
    ));
    // Latency at half of pgbench's best rate, open loop (a fixed rate, as real
    // clients arrive, unlike wrk's closed loop).
    let half = (best_pgbench / 2.0).round();
    // As many connections as pgbench's clients below have, four times over: a
    // request waits for one only when the API is that far behind.
    let pooled = plumbing::db::PoolOptions::default().max_size;
    let (machine, own, generator) = (Cpu::now(), process_cpu(api.pid()), process_cpu(None));
    let mut open = open_loop(
        &api.base_url(),
        &token,
        half,
        Duration::from_secs(seconds),
        4 * pooled,
    )
    .await
    .unwrap();
    let answered = open.latencies.len();
    let (open_machine, open_busy) = machine.since();
    let open_api = process_cpu(api.pid()) - own;
    let open_generator = process_cpu(None) - generator;
    #[allow(clippy::cast_precision_loss)]
    let per_answer = |cpu: f64| 1e6 * cpu / (answered.max(1) as f64);
    let (p50, p99) = (
        percentile(&mut open.latencies, 50.0),
        percentile(&mut open.latencies, 99.0),
    );
    let open_rate = crate::rate(answered, Duration::from_secs(seconds));
    // The database's own latency for the same transaction at the same rate,
    // with as many clients as the API has pooled connections: what the API's
    // p99 cannot beat on this machine.
    let mut pg_open = crate::pgbench_latencies(&db.url, &script, pooled, seconds, half);
    let (pg_p50, pg_p99) = (
        percentile(&mut pg_open, 50.0),
        percentile(&mut pg_open, 99.0),
    );
    rows.push(Row::new(
        format!("POST /orders, open loop at half of pgbench's best ({half:.0}/s), {seconds} s"),
        format!(
            "{open_rate:.0} orders/s answered{}; p50 {:.2} / p99 {:.2} ms",
            if open.failures > 0 {
                format!(" ({} failed)", open.failures)
            } else {
                String::new()
            },
            ms(p50),
            ms(p99)
        ),
        format!(
            "pgbench, same transaction at {half:.0}/s ({pooled} clients): p50 {:.2} / p99 {:.2} ms",
            ms(pg_p50),
            ms(pg_p99)
        ),
        format!("p99 {:.1}×", ms(p99) / ms(pg_p99).max(0.001)),
        verdict("p99 ≤ 20 ms", p99 <= Duration::from_millis(20)),
    ));
    rows.push(Row::new(
        "CPU per order in the open loop: the load generator's (in this process), the API's, the whole machine's (busy)",
        format!(
            "generator {:.0} µs, API {:.0} µs, machine {:.0} µs ({:.0} % busy)",
            per_answer(open_generator),
            per_answer(open_api),
            per_answer(open_machine),
            100.0 * open_busy
        ),
        "",
        "",
        "",
    ));
    let health = wrk(
        &format!("{}/health", api.base_url()),
        64,
        seconds,
        false,
        None,
    );
    rows.push(Row::new(
        format!("GET /health, 64 connections, {seconds} s (wrk): the HTTP-only ceiling"),
        format!(
            "{:.0} req/s; p50 {:.2} / p99 {:.2} ms",
            health.rate, health.p50, health.p99
        ),
        "",
        format!("POST at {:.1} % of it", 100.0 * best_rate / health.rate),
        "",
    ));
    drop(api);
    Section {
        name: "api",
        rows,
        json: serde_json::json!({
            "seconds": seconds,
            "runs": runs,
            "best": {
                "connections": best_c,
                "orders_per_s": best_rate.round(),
                "pgbench_same_concurrency_tps": best_pg.round(),
                "pgbench_best_tps": best_pgbench.round(),
                "ratio": (best_ratio * 1000.0).round() / 1000.0,
            },
            "open_loop_half": {
                "target_per_s": half,
                "answered_per_s": open_rate.round(),
                "failures": open.failures,
                "p50_ms": ms(p50),
                "p99_ms": ms(p99),
                "pgbench_p50_ms": ms(pg_p50),
                "pgbench_p99_ms": ms(pg_p99),
                "cpu_us_per_order": {
                    "generator": per_answer(open_generator).round(),
                    "api": per_answer(open_api).round(),
                    "machine": per_answer(open_machine).round(),
                    "machine_busy": (open_busy * 100.0).round() / 100.0,
                },
            },
            "health_req_per_s": health.rate.round(),
            "health_p99_ms": health.p99,
        }),
    }
}
