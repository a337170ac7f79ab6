//! Shared pieces of the benchmarks: timing, percentiles, the printed table and
//! the JSON summary.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

/// The `p`-th percentile (0–100) of `samples` (sorted in place).
#[must_use]
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[index.min(samples.len() - 1)]
}

/// Events per second.
#[must_use]
pub fn rate(count: usize, elapsed: Duration) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let count = count as f64;
    count / elapsed.as_secs_f64()
}

/// A value of `--name` from the command line, or `default`.
#[must_use]
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether `--name` is on the command line.
#[must_use]
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// Publishes `n` persistent messages made by `message` (body, properties) to
/// `broker`'s exchange with routing key `order.created` and `mandatory`, at most
/// `window` unconfirmed, the publishes of a window driven together (as the relay
/// does). Panics unless every message is acked and routed.
pub async fn publish_confirmed(
    broker: &devkit::broker::TestBroker,
    n: usize,
    window: usize,
    mut message: impl FnMut() -> (Vec<u8>, lapin::BasicProperties),
) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let channel = broker.channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = plumbing::broker::short_string(&broker.topology.exchange);
    let mut sent = 0;
    while sent < n {
        let chunk = window.min(n - sent);
        let messages: Vec<_> = (0..chunk).map(|_| message()).collect();
        let publishes = messages.into_iter().map(|(body, properties)| {
            let (channel, exchange) = (&channel, exchange.clone());
            async move {
                channel
                    .basic_publish(
                        exchange,
                        "order.created".into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..Default::default()
                        },
                        &body,
                        properties,
                    )
                    .await
            }
        });
        let confirms: Vec<_> = futures::future::join_all(publishes)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for c in futures::future::join_all(confirms).await {
            assert_eq!(c.unwrap(), lapin::Confirmation::Ack(None));
        }
        sent += chunk;
    }
}
