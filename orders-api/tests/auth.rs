//! Authentication of the real orders-api process, against a real PostgreSQL
//! database of its own: bearer JWTs (RS256, ES256) checked against a JWKS (a
//! file, or an HTTPS server the test stops and starts), every hostile token
//! refused with a 401 that writes nothing, the key cache's single, rate-limited
//! refresh, the JWKS host down, authentication turned off by name, and missing
//! settings refused at start.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use devkit::{
    auth::{
        Issuer, JwksServer, SigningKey, TEST_CUSTOMER, TEST_RSA_PUBLIC_KEY, assemble_token, now,
    },
    db::TestDatabase,
    process::Service,
    sample,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The API on a fresh database with `env` on top of loopback and a free port.
async fn api(db: &TestDatabase, env: Vec<(&'static str, String)>) -> Service {
    let mut all = vec![
        ("DATABASE_URL", db.url.clone()),
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("OTEL_SDK_DISABLED", "true".to_owned()),
        // What a refusal logs is checked too: nothing of the token.
        ("RUST_LOG", "info,orders_api=debug".to_owned()),
    ];
    all.extend(env);
    Service::spawn("orders-api", &all, false).await
}

/// `POST /orders` with `authorization` (none when `None`): status, headers, body.
async fn post(
    api: &Service,
    authorization: Option<&str>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = devkit::http_client()
        .post(format!("{}/orders", api.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"amount": 29.99}"#);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

async fn rows(db: &TestDatabase) -> (i64, i64) {
    (db.count("orders").await, db.count("outbox").await)
}

/// Asserts a 401 `invalid_token` problem with its RFC 6750 challenge, showing
/// nothing of `token`.
fn assert_refused(
    case: &str,
    token: &str,
    answer: &(StatusCode, reqwest::header::HeaderMap, Value),
) {
    let (status, headers, problem) = answer;
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{case}: {problem}");
    assert_eq!(
        headers["content-type"], "application/problem+json",
        "{case}"
    );
    assert_eq!(problem["code"], "invalid_token", "{case}: {problem}");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge
            .starts_with(r#"Bearer realm="orders", error="invalid_token", error_description=""#),
        "{case}: {challenge}"
    );
    // Nothing of the token comes back (its parts are long random-looking text).
    let shown = format!("{challenge} {problem}");
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(
            !shown.contains(part),
            "{case}: the answer echoes the token: {shown}"
        );
    }
}

#[tokio::test]
async fn every_hostile_token_gets_a_401_and_writes_nothing() {
    let issuer = Issuer::new();
    let db = TestDatabase::create("auth_hostile").await;
    let api = api(&db, issuer.env()).await;
    let key = issuer.es256();
    let valid = |sub: &str| issuer.claims(sub, Duration::from_secs(600));
    let with = |changes: Value| {
        let mut claims = valid(TEST_CUSTOMER);
        for (name, value) in changes.as_object().unwrap() {
            if value.is_null() {
                claims.as_object_mut().unwrap().remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        claims
    };
    let t = now();
    // Another key, naming the issuer's: a signature that does not verify.
    let impostor = SigningKey::es256(key.kid());
    let hs256_with_public_key = jsonwebtoken::encode(
        &Header {
            kid: Some(issuer.rs256().kid().to_owned()),
            ..Header::new(Algorithm::HS256)
        },
        &valid(TEST_CUSTOMER),
        &EncodingKey::from_secret(TEST_RSA_PUBLIC_KEY.as_bytes()),
    )
    .unwrap();
    let alg_none = assemble_token(
        &json!({"alg": "none", "typ": "JWT", "kid": key.kid()}),
        &valid(TEST_CUSTOMER),
        b"",
    );
    // A header of 3 KiB (a certificate chain, say), the token under 8 KiB.
    let big_header = key.sign_with_header(
        &Header {
            kid: Some(key.kid().to_owned()),
            x5c: Some(vec!["A".repeat(3 * 1024)]),
            ..Header::new(Algorithm::ES256)
        },
        &valid(TEST_CUSTOMER),
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            key.sign(&with(json!({"exp": t - 120, "nbf": t - 600}))),
            "expired",
        ),
        (
            "not yet valid",
            key.sign(&with(json!({"nbf": t + 120}))),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            key.sign(&with(json!({"iss": "https://evil.test/"}))),
            "wrong_issuer",
        ),
        (
            "wrong audience",
            key.sign(&with(json!({"aud": "another-api"}))),
            "wrong_audience",
        ),
        ("alg none", alg_none, "unsupported_algorithm"),
        (
            "HS256 signed with the RSA public key",
            hs256_with_public_key,
            "unsupported_algorithm",
        ),
        (
            "bad signature",
            impostor.sign(&valid(TEST_CUSTOMER)),
            "bad_signature",
        ),
        (
            "RS256 token naming the ES256 key",
            issuer.rs256().sign_as(key.kid(), &valid(TEST_CUSTOMER)),
            "key_mismatch",
        ),
        ("malformed", "not-a-jwt".to_owned(), "malformed"),
        (
            "malformed JSON header",
            format!("{}.e30.c2ln", devkit::auth::base64url(b"{\"alg\":")),
            "malformed",
        ),
        ("oversized header", big_header, "oversized_header"),
        (
            "oversized token",
            key.sign(&with(json!({"pad": "x".repeat(9 * 1024)}))),
            "oversized",
        ),
        (
            "no exp",
            key.sign(&with(json!({"exp": null}))),
            "missing_claim",
        ),
        (
            "no sub",
            key.sign(&with(json!({"sub": null}))),
            "missing_claim",
        ),
        (
            "sub not a customer id",
            key.sign(&valid("line\nbreak")),
            "bad_subject",
        ),
        (
            "sub of the unauthenticated mode",
            key.sign(&valid("anonymous")),
            "bad_subject",
        ),
    ];

    for (case, token, reason) in &cases {
        let answer = post(&api, Some(&format!("Bearer {token}"))).await;

        assert_refused(case, token, &answer);
        let series = format!(r#"orders_auth_refused_total{{reason="{reason}"}}"#);
        assert!(
            sample(&api.scrape().await, &series).is_some_and(|n| n >= 1.0),
            "{case}: not counted as {reason}"
        );
    }

    assert_eq!(rows(&db).await, (0, 0), "a refused request wrote rows");
    // The same hostile tokens cannot read an order either.
    let (status, _, order) = post(&api, Some(&issuer.bearer())).await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let url = format!(
        "{}/orders/{}",
        api.base_url(),
        order["id"].as_str().unwrap()
    );
    for (case, token, _) in &cases {
        let res = devkit::http_client()
            .get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "GET with {case}");
    }
    // Nothing of any token in the logs (refusals are logged at debug here).
    let logs = api.logs().join("\n");
    for (case, token, _) in &cases {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(
            signature.len() < 8 || !logs.contains(signature),
            "{case}: the logs show the token"
        );
    }
}

#[tokio::test]
async fn valid_rs256_and_es256_tokens_are_accepted_and_read_their_orders() {
    let issuer = Issuer::new();
    let db = TestDatabase::create("auth_valid").await;
    let api = api(&db, issuer.env()).await;
    let claims = issuer.claims(TEST_CUSTOMER, Duration::from_secs(600));

    for key in [issuer.rs256(), issuer.es256()] {
        let token = key.sign(&claims);
        let (status, _, order) = post(&api, Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, StatusCode::CREATED, "{:?}: {order}", key.alg());

        let res = devkit::http_client()
            .get(format!(
                "{}/orders/{}",
                api.base_url(),
                order["id"].as_str().unwrap()
            ))
            .header("authorization", format!("bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{:?}", key.alg());
    }
    assert_eq!(rows(&db).await, (2, 2));
    // The caller is the token's subject.
    let customer = format!(r#""customer":"{TEST_CUSTOMER}""#);
    devkit::eventually(
        Duration::from_secs(5),
        "four authenticated requests",
        || async {
            let logs = api.logs();
            let callers = logs
                .iter()
                .filter(|line| line.contains("request authenticated") && line.contains(&customer));
            (callers.count() == 4).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_token_accepted_before_is_refused_once_expired_or_once_its_key_is_gone() {
    let issuer = Issuer::new();
    let db = TestDatabase::create("auth_remembered").await;
    let mut env = issuer.env();
    env.push(("AUTH_CLOCK_SKEW", "0s".into()));
    let api = api(&db, env).await;
    let bearer = |token: &str| format!("Bearer {token}");

    // Valid for two more seconds: accepted, then refused once expired, however
    // often it was accepted before.
    let mut claims = issuer.claims(TEST_CUSTOMER, Duration::ZERO);
    claims["exp"] = json!(now() + 2);
    let short = issuer.es256().sign(&claims);
    let (status, _, body) = post(&api, Some(&bearer(&short))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    devkit::eventually(Duration::from_secs(6), "the token to expire", || async {
        let (status, _, _) = post(&api, Some(&bearer(&short))).await;
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    let expired = r#"orders_auth_refused_total{reason="expired"}"#;
    assert_eq!(sample(&api.scrape().await, expired), Some(1.0));

    // Accepted with the RS256 key; the provider then drops that key, and the
    // API learns it at its next fetch (here caused by an unknown kid).
    let rs256 = issuer
        .rs256()
        .sign(&issuer.claims(TEST_CUSTOMER, Duration::from_secs(600)));
    let (status, _, body) = post(&api, Some(&bearer(&rs256))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    issuer.write_jwks(&devkit::auth::jwks(&[issuer.es256()]));
    let made_up = issuer.es256().sign_as(
        "made-up",
        &issuer.claims(TEST_CUSTOMER, Duration::from_secs(600)),
    );
    let (status, _, _) = post(&api, Some(&bearer(&made_up))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let answer = post(&api, Some(&bearer(&rs256))).await;

    assert_refused("a token of a dropped key", &rs256, &answer);
}

#[tokio::test]
async fn clocks_may_differ_by_the_allowance_and_no_more() {
    let issuer = Issuer::new();
    let db = TestDatabase::create("auth_skew").await;
    let mut env = issuer.env();
    env.push(("AUTH_CLOCK_SKEW", "60s".into()));
    let api = api(&db, env).await;
    let key = issuer.es256();
    let claims = |iat_offset: i64, exp_offset: i64| {
        let mut claims = issuer.claims(TEST_CUSTOMER, Duration::ZERO);
        let t = now();
        claims["nbf"] = json!(t + iat_offset);
        claims["iat"] = json!(t + iat_offset);
        claims["exp"] = json!(t + exp_offset);
        claims
    };

    // Expired 30 s ago, or issued by a clock 30 s ahead: within 60 s.
    for (case, claims) in [
        ("expired 30 s ago", claims(-600, -30)),
        ("valid from 30 s on", claims(30, 600)),
    ] {
        let (status, _, body) = post(&api, Some(&format!("Bearer {}", key.sign(&claims)))).await;
        assert_eq!(status, StatusCode::CREATED, "{case}: {body}");
    }
    // Beyond the allowance.
    for (case, claims) in [
        ("expired 90 s ago", claims(-600, -90)),
        ("valid from 90 s on", claims(90, 600)),
    ] {
        let token = key.sign(&claims);
        let answer = post(&api, Some(&format!("Bearer {token}"))).await;
        assert_refused(case, &token, &answer);
    }
    assert_eq!(rows(&db).await, (2, 2));
}

#[tokio::test]
async fn a_request_without_a_bearer_token_gets_the_bare_challenge() {
    let issuer = Issuer::new();
    let db = TestDatabase::create("auth_missing").await;
    let api = api(&db, issuer.env()).await;

    for authorization in [None, Some("Basic dXNlcjpwYXNz"), Some("Token abc")] {
        let (status, headers, problem) = post(&api, authorization).await;

        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}");
        assert_eq!(headers["www-authenticate"], r#"Bearer realm="orders""#);
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(problem["code"], "missing_token", "{problem}");
    }
    let res = devkit::http_client()
        .get(format!(
            "{}/orders/{}",
            api.base_url(),
            uuid::Uuid::now_v7()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(rows(&db).await, (0, 0));
    // The operational endpoints need no token.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        let res = devkit::http_client()
            .get(format!("{}{path}", api.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
}

/// The API reading its keys from `server` (trusting its CA), with `min_interval`
/// between fetches for unknown kids and no periodic refresh within the test.
async fn api_with_jwks_server(
    db: &TestDatabase,
    issuer: &Issuer,
    server: &JwksServer,
    min_interval: &str,
) -> Service {
    let api = api(
        db,
        vec![
            ("AUTH_JWKS_URL", server.url()),
            ("AUTH_ISSUER", issuer.issuer.clone()),
            ("AUTH_AUDIENCE", issuer.audience.clone()),
            ("AUTH_JWKS_MIN_REFRESH_INTERVAL", min_interval.to_owned()),
            ("AUTH_JWKS_REFRESH", "1h".to_owned()),
            ("SSL_CERT_FILE", server.ca_file().display().to_string()),
        ],
    )
    .await;
    // The start-up fetch: ready once the keys are loaded.
    devkit::ready_becomes(api.addr.port(), 200, "the API to load its keys").await;
    assert_eq!(server.requests(), 1, "one fetch at start-up");
    api
}

/// Posts with each token at once; the statuses.
async fn post_all(api: &Service, tokens: &[String]) -> Vec<StatusCode> {
    let posts = tokens
        .iter()
        .map(|token| async move { post(api, Some(&format!("Bearer {token}"))).await.0 });
    futures::future::join_all(posts).await
}

#[tokio::test]
async fn an_unknown_kid_causes_one_fetch_for_all_waiting_requests_and_at_most_one_per_interval() {
    let issuer = Issuer::new();
    let server = JwksServer::start(&issuer.jwks()).await;
    let db = TestDatabase::create("auth_rotation").await;
    let api = api_with_jwks_server(&db, &issuer, &server, "5s").await;
    let claims = issuer.claims(TEST_CUSTOMER, Duration::from_secs(600));

    // A rotation: the provider publishes a new key, and tokens signed with it
    // arrive at once. They share one fetch.
    let rotated = SigningKey::es256("rotated");
    server.set_jwks(&devkit::auth::jwks(&[issuer.es256(), &rotated]));
    let tokens: Vec<String> = (0..16).map(|_| rotated.sign(&claims)).collect();
    let statuses = post_all(&api, &tokens).await;

    assert!(
        statuses.iter().all(|s| *s == StatusCode::CREATED),
        "{statuses:?}"
    );
    assert_eq!(server.requests(), 2, "one fetch for 16 requests");

    // A flood of made-up kids within the interval: refused, no fetch.
    let made_up: Vec<String> = (0..16)
        .map(|i| rotated.sign_as(&format!("made-up-{i}"), &claims))
        .collect();
    let statuses = post_all(&api, &made_up).await;

    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert_eq!(server.requests(), 2, "no fetch within the interval");

    // After the interval, one fetch again, however many requests keep coming.
    devkit::eventually(
        Duration::from_secs(15),
        "a fetch after the interval",
        || async {
            let _ = post_all(&api, &made_up[..4]).await;
            (server.requests() > 2).then_some(())
        },
    )
    .await;
    assert_eq!(server.requests(), 3, "one fetch per interval");
    let scrape = api.scrape().await;
    assert_eq!(
        sample(
            &scrape,
            r#"orders_auth_jwks_refreshes_total{trigger="unknown_kid",outcome="ok"}"#
        ),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(rows(&db).await, (16, 16));
}

#[tokio::test]
async fn while_the_jwks_host_is_down_cached_keys_work_and_an_unknown_kid_gets_503() {
    let issuer = Issuer::new();
    let mut server = JwksServer::start(&issuer.jwks()).await;
    let db = TestDatabase::create("auth_jwks_down").await;
    let api = api_with_jwks_server(&db, &issuer, &server, "1s").await;
    let claims = issuer.claims(TEST_CUSTOMER, Duration::from_secs(600));
    let rotated = SigningKey::es256("rotated");
    let new_token = format!("Bearer {}", rotated.sign(&claims));

    server.stop().await;

    // A key that is not cached: the fetch fails, try again later.
    let (status, headers, problem) = post(&api, Some(&new_token)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "auth_unavailable");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        retry_after, 1,
        "the next fetch is allowed within the 1 s interval"
    );
    let scrape = api.scrape().await;
    let failed = r#"orders_auth_jwks_refreshes_total{trigger="unknown_kid",outcome="failed"}"#;
    assert_eq!(sample(&scrape, failed), Some(1.0), "{scrape}");
    // After that failed fetch, the cached keys still work.
    let (status, _, body) = post(&api, Some(&issuer.bearer())).await;
    assert_eq!(status, StatusCode::CREATED, "a cached key: {body}");

    // The provider is back with the new key: it is fetched and accepted.
    server.set_jwks(&devkit::auth::jwks(&[issuer.es256(), &rotated]));
    server.resume().await;
    devkit::eventually(
        Duration::from_secs(10),
        "the new key to be accepted",
        || async {
            let (status, _, _) = post(&api, Some(&new_token)).await;
            (status == StatusCode::CREATED).then_some(())
        },
    )
    .await;
    assert_eq!(rows(&db).await, (2, 2), "only the accepted requests wrote");
}

#[tokio::test]
async fn with_authentication_off_every_caller_is_anonymous_and_every_start_says_so() {
    let db = TestDatabase::create("auth_off").await;
    let env = || vec![("AUTH_DISABLED", "true".to_owned())];

    for start in 1..=2 {
        let mut api = api(&db, env()).await;
        let logs = api.logs();
        let warnings: Vec<&String> = logs
            .iter()
            .filter(|line| line.contains("authentication is OFF"))
            .collect();

        assert_eq!(warnings.len(), 1, "start {start}: {:?}", api.logs());
        assert!(warnings[0].contains(r#""level":"WARN""#), "{}", warnings[0]);
        assert!(warnings[0].contains("`anonymous`"), "{}", warnings[0]);
        let (status, _, body) = post(&api, None).await;
        assert_eq!(status, StatusCode::CREATED, "no token needed: {body}");
        // Whatever is sent is ignored: everyone is the one customer.
        let (status, _, _) = post(&api, Some("Bearer not-a-jwt")).await;
        assert_eq!(status, StatusCode::CREATED);
        let callers = devkit::eventually(Duration::from_secs(5), "two callers", || async {
            let logs = api.logs();
            let callers: Vec<String> = logs
                .into_iter()
                .filter(|line| line.contains("request authenticated"))
                .collect();
            (callers.len() == 2).then_some(callers)
        })
        .await;
        assert!(
            callers
                .iter()
                .all(|line| line.contains(r#""customer":"anonymous""#)),
            "{callers:?}"
        );
        api.terminate();
        api.wait(Duration::from_secs(10)).await;
    }
    assert_eq!(rows(&db).await, (4, 4));
}

#[tokio::test]
async fn missing_or_bad_auth_settings_stop_the_start_with_exit_78_naming_the_variable() {
    let binary = env!("CARGO_BIN_EXE_orders-api");
    let jwks = ("AUTH_JWKS_URL", "file:///etc/orders/jwks.json");
    let iss = ("AUTH_ISSUER", "https://issuer.test/");
    let aud = ("AUTH_AUDIENCE", "orders-api");
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![], "AUTH_JWKS_URL"),
        (vec![jwks], "AUTH_ISSUER"),
        (vec![jwks, iss], "AUTH_AUDIENCE"),
        (
            vec![iss, aud, ("AUTH_JWKS_URL", "http://idp.test/jwks.json")],
            "AUTH_JWKS_URL",
        ),
        (
            vec![jwks, iss, aud, ("AUTH_CLOCK_SKEW", "1h")],
            "AUTH_CLOCK_SKEW",
        ),
        (
            vec![jwks, iss, aud, ("AUTH_DISABLED", "maybe")],
            "AUTH_DISABLED",
        ),
    ];
    for (env, variable) in cases {
        let output = tokio::process::Command::new(binary)
            .envs(devkit::process::isolated_env())
            .env_remove("AUTH_JWKS_URL")
            .env_remove("AUTH_ISSUER")
            .env_remove("AUTH_AUDIENCE")
            .envs(env.iter().copied())
            .env("LOG_FORMAT", "json")
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(3), output)
            .await
            .expect("a configuration error stops the start at once")
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );

        assert_eq!(output.status.code(), Some(78), "{env:?}: {text}");
        assert!(
            text.contains(variable),
            "{env:?} must name {variable}: {text}"
        );
    }
}
