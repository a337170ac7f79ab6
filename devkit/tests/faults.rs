//! The fault suite: every scenario of `devkit::faults` at CI size, then one with
//! its guarantee switched off, which the checker must catch. Prints the tally.

#![allow(clippy::unwrap_used)]

use std::io::Write as _;

use devkit::faults::{Scenario, Size, table};

#[tokio::test(flavor = "multi_thread")]
async fn no_order_is_lost_or_invoiced_twice_under_faults() {
    let size = Size::ci();
    let mut tallies = Vec::new();
    for scenario in Scenario::ALL {
        tallies.push(scenario.run(size, false).await);
    }
    // The same checker on a worker that acknowledges before committing.
    let broken = Scenario::WorkerKilled.run(size, true).await;
    tallies.push(broken.clone());
    // Straight to stderr, past the test harness's capture: the tally is the point.
    let _ = writeln!(std::io::stderr(), "\n{}", table(&tallies));

    let failed: Vec<_> = tallies[..Scenario::ALL.len()]
        .iter()
        .filter(|t| !t.passed())
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(
        broken.lost > 0,
        "the checker missed the losses of a worker that acks before committing: {broken:#?}"
    );
}
