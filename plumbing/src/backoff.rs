//! Retry delays: exponential with jitter, never a busy loop.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Delays for reconnecting to the database or broker: 100 ms doubling up to 5 s,
/// plus up to as much again of jitter (so at most 10 s) so that many replicas do
/// not reconnect in lock-step, forever. The cap bounds how long a service stays
/// away after its dependency is back.
#[must_use]
pub fn reconnect() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
}

/// An endless iterator of reconnect delays (see [`reconnect`]).
pub fn reconnect_delays() -> impl Iterator<Item = Duration> + Send {
    // `without_max_times` makes the iterator endless; the fallback is never used.
    reconnect()
        .build()
        .chain(std::iter::repeat(Duration::from_secs(10)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        let delays: Vec<_> = reconnect_delays().take(20).collect();
        assert!(delays[0] >= Duration::from_millis(100));
        assert!(delays[0] < Duration::from_millis(250));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(delays[19] >= Duration::from_secs(5));
    }
}
