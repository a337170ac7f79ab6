//! The load driver: orders posted at a fixed rate the way a client that must
//! not lose orders posts them.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Semaphore, task::JoinSet};
use uuid::Uuid;

/// A client request that takes longer than this counts as hung.
pub const HANG: Duration = Duration::from_secs(15);

/// Attempts per order: with the backoff below, about 15 s of retrying.
const ATTEMPTS: usize = 12;

/// What the load driver saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Orders attempted (each with its own key, however often retried).
    pub sent: u64,
    /// Orders answered 201: id → amount in cents.
    pub created: HashMap<Uuid, i64>,
    /// 201s that were replays of an earlier attempt (the client's retry after a
    /// lost answer; the API created nothing the second time).
    pub replayed: u64,
    /// Final answers by status (201, or what the last attempt got).
    pub statuses: BTreeMap<u16, u64>,
    /// 503 answers seen over all attempts (each was retried).
    pub unavailable: u64,
    /// Requests with no answer within [`HANG`].
    pub hung: u64,
}

/// Posts orders with the bearer `token` at `rate` per second (open loop, at
/// most 256 in flight) for `duration`, as a careful client does: an
/// `Idempotency-Key` per order, 503s and connection failures retried with
/// backoff for up to ~15 s.
pub fn drive(
    url: String,
    token: String,
    rate: f64,
    duration: Duration,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let http = crate::auth::bearer_client(
            &token,
            reqwest::Client::builder()
                .timeout(HANG)
                .pool_max_idle_per_host(256),
        );
        let hung = Arc::new(AtomicU64::new(0));
        let unavailable = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(Semaphore::new(256));
        let mut tasks = JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let deadline = tokio::time::Instant::now() + duration;
        let mut sent: u64 = 0;
        while tokio::time::Instant::now() < deadline {
            ticker.tick().await;
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            sent += 1;
            // Amounts spread over the whole range, deterministic per order.
            let cents = 1 + (sent * 7_919 + sent * sent * 104_729) % 99_999_999;
            let (http, url) = (http.clone(), format!("{url}/orders"));
            let (hung, unavailable) = (hung.clone(), unavailable.clone());
            tasks.spawn(async move {
                let outcome = post_order(&http, &url, cents, &hung, &unavailable).await;
                drop(permit);
                outcome
            });
        }
        let mut report = LoadReport {
            sent,
            ..LoadReport::default()
        };
        for outcome in tasks.join_all().await {
            match outcome {
                Answer::Created {
                    id,
                    cents,
                    replayed,
                } => {
                    report.created.insert(id, cents);
                    report.replayed += u64::from(replayed);
                    *report.statuses.entry(201).or_default() += 1;
                }
                Answer::Status(status) => *report.statuses.entry(status).or_default() += 1,
                Answer::Unreachable => {}
            }
        }
        report.hung = hung.load(Ordering::SeqCst);
        report.unavailable = unavailable.load(Ordering::SeqCst);
        report
    })
}

/// The final answer to one order.
enum Answer {
    Created {
        id: Uuid,
        cents: i64,
        replayed: bool,
    },
    Status(u16),
    Unreachable,
}

async fn post_order(
    http: &reqwest::Client,
    url: &str,
    cents: u64,
    hung: &AtomicU64,
    unavailable: &AtomicU64,
) -> Answer {
    let key = Uuid::new_v4().to_string();
    let body = format!(r#"{{"amount": {}.{:02}}}"#, cents / 100, cents % 100);
    let mut last = Answer::Unreachable;
    let mut delay = Duration::from_millis(50);
    for _ in 0..ATTEMPTS {
        let result = http
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", &key)
            .body(body.clone())
            .send()
            .await;
        match result {
            Ok(response) if response.status() == 201 => {
                let replayed = response.headers().contains_key("idempotent-replayed");
                let Ok(value) = response.json::<serde_json::Value>().await else {
                    last = Answer::Unreachable;
                    continue;
                };
                let id = value["id"].as_str().and_then(|s| s.parse().ok());
                let stored_cents = value["amount_cents"].as_i64();
                if let (Some(id), Some(stored_cents)) = (id, stored_cents) {
                    assert_eq!(
                        u64::try_from(stored_cents).ok(),
                        Some(cents),
                        "the API answered another amount"
                    );
                    return Answer::Created {
                        id,
                        cents: stored_cents,
                        replayed,
                    };
                }
                return Answer::Status(201);
            }
            Ok(response) if response.status() == 503 => {
                unavailable.fetch_add(1, Ordering::SeqCst);
                last = Answer::Status(503);
            }
            Ok(response) => return Answer::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => {
                hung.fetch_add(1, Ordering::SeqCst);
                last = Answer::Unreachable;
            }
            Err(_) => last = Answer::Unreachable,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    last
}
