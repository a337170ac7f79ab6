//! Authentication's cost: the API's CPU per order with bearer tokens checked,
//! beside the same API with authentication turned off, in one run; and the
//! validation alone, in-process, for a token the API has not seen (the
//! signature checked) and for one it remembers (a client's next requests).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use devkit::{
    auth::{Issuer, SigningKey, TEST_CUSTOMER},
    db::TestDatabase,
    process::Service,
};
use orders_api::auth::{AuthMetrics, Authenticator};
use plumbing::db::Database;

use crate::{Row, Scale, Section, api::wrk, process_cpu, verdict};

/// The share of the API's CPU per order that authentication may take.
const TARGET: f64 = 0.05;

/// Runs the authentication benchmark.
pub async fn run(scale: Scale) -> Section {
    let seconds: u64 = scale.pick(10, 2);
    let rounds: usize = scale.pick(3, 1);
    let connections = 4;
    let issuer = Issuer::new();
    let token = issuer.long_lived_token(TEST_CUSTOMER);

    // Two APIs on two databases, one checking tokens, one not; measured in
    // turns, so that both see the same machine.
    let db_on = TestDatabase::migrated("bench_auth_on", Database::Orders).await;
    let db_off = TestDatabase::migrated("bench_auth_off", Database::Orders).await;
    let env = |db: &TestDatabase| {
        vec![
            ("DATABASE_URL", db.url.clone()),
            ("PORT", "0".into()),
            ("MIGRATE_ON_START", "false".into()),
        ]
    };
    let mut on_env = env(&db_on);
    on_env.extend(issuer.env());
    let mut off_env = env(&db_off);
    off_env.push(("AUTH_DISABLED", "true".into()));
    let on = Service::spawn("orders-api", &on_env, false).await;
    let off = Service::spawn("orders-api", &off_env, false).await;
    let (on_url, off_url) = (
        format!("{}/orders", on.base_url()),
        format!("{}/orders", off.base_url()),
    );
    let _ = wrk(&on_url, connections, 1, true, Some(&token));
    let _ = wrk(&off_url, connections, 1, true, None);

    // CPU seconds and orders of each, over all rounds.
    let (mut on_cpu, mut on_orders, mut off_cpu, mut off_orders) = (0.0, 0.0, 0.0, 0.0);
    let mut failures = 0;
    #[allow(clippy::cast_precision_loss)]
    for _ in 0..rounds {
        let before = process_cpu(on.pid());
        let run = wrk(&on_url, connections, seconds, true, Some(&token));
        on_cpu += process_cpu(on.pid()) - before;
        on_orders += run.rate * seconds as f64;
        failures += run.failures;
        let before = process_cpu(off.pid());
        let run = wrk(&off_url, connections, seconds, true, None);
        off_cpu += process_cpu(off.pid()) - before;
        off_orders += run.rate * seconds as f64;
        failures += run.failures;
    }
    let per_order_on = 1e6 * on_cpu / on_orders.max(1.0);
    let per_order_off = 1e6 * off_cpu / off_orders.max(1.0);
    let cost = per_order_on - per_order_off;
    let share = cost / per_order_on.max(1.0);

    // The validation alone.
    let samples: usize = scale.pick(500, 100);
    let es256 = validation_cost(&issuer, issuer.es256(), samples).await;
    let rs256 = validation_cost(&issuer, issuer.rs256(), samples).await;

    let rows = vec![
        Row::new(
            format!(
                "API CPU per order, {connections} connections, {rounds}×{seconds} s each (wrk), one ES256 token per client"
            ),
            format!("with authentication {per_order_on:.0} µs"),
            format!("AUTH_DISABLED=true: {per_order_off:.0} µs"),
            format!("{:+.0} µs ({:+.1} %)", cost, 100.0 * share),
            verdict(
                "authentication < 5 % of the API's CPU per order",
                share < TARGET,
            ),
        ),
        Row::new(
            "one validation in-process: a token seen before (remembered by its SHA-256)",
            format!(
                "ES256 {:.1} µs, RS256 {:.1} µs",
                es256.remembered, rs256.remembered
            ),
            format!("the API's CPU per order: {per_order_on:.0} µs"),
            format!("{:.1} %", 100.0 * es256.remembered / per_order_on.max(1.0)),
            "",
        ),
        Row::new(
            "one validation in-process: a token not seen before (its signature checked)",
            format!("ES256 {:.0} µs, RS256 {:.0} µs", es256.first, rs256.first),
            format!("the API's CPU per order: {per_order_on:.0} µs"),
            format!("{:.0} %", 100.0 * es256.first / per_order_on.max(1.0)),
            "once per token, not per request",
        ),
    ];
    let json = serde_json::json!({
        "api_cpu_us_per_order": {"auth": per_order_on.round(), "no_auth": per_order_off.round()},
        "auth_share": (share * 1000.0).round() / 1000.0,
        "failures": failures,
        "validation_us": {
            "es256_first": es256.first.round(), "es256_remembered": (es256.remembered * 10.0).round() / 10.0,
            "rs256_first": rs256.first.round(), "rs256_remembered": (rs256.remembered * 10.0).round() / 10.0,
        },
    });
    drop((on, off));
    Section {
        name: "auth",
        rows,
        json,
    }
}

/// Microseconds per validation by an [`Authenticator`] of `issuer`'s keys.
struct ValidationCost {
    /// A token the authenticator has not seen: every check, the signature too.
    first: f64,
    /// The same token again.
    remembered: f64,
}

async fn validation_cost(issuer: &Issuer, key: &SigningKey, samples: usize) -> ValidationCost {
    let auth = Authenticator::new(&issuer.config(), AuthMetrics::default()).unwrap();
    let bearer = |token: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        headers
    };
    // Distinct tokens (by `jti`), signed before the clock starts.
    let tokens: Vec<HeaderMap> = (0..samples)
        .map(|i| {
            let mut claims = issuer.claims(TEST_CUSTOMER, Duration::from_secs(3_600));
            claims["jti"] = i.into();
            bearer(&key.sign(&claims))
        })
        .collect();
    let started = Instant::now();
    for headers in &tokens {
        auth.authenticate(headers).await.unwrap();
    }
    let first = started.elapsed();
    let started = Instant::now();
    for _ in 0..samples {
        auth.authenticate(&tokens[0]).await.unwrap();
    }
    let remembered = started.elapsed();
    #[allow(clippy::cast_precision_loss)]
    let per = |d: Duration| 1e6 * d.as_secs_f64() / samples as f64;
    ValidationCost {
        first: per(first),
        remembered: per(remembered),
    }
}
