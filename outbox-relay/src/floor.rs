//! Where a claim starts scanning the unpublished-rows index.
//!
//! Marking a row published leaves its entry in the partial index of unpublished
//! rows until VACUUM removes it. A claim scans that index in id order, so without
//! a starting point it walks every such entry, oldest first, on every claim: in
//! steady traffic that grows by thousands of entries a second between vacuums
//! (and autovacuum of a large outbox often skips index cleanup altogether). The
//! floor is an id below which no row is unpublished, so claims start there.
//!
//! No snapshot can say which ids transactions still in progress hold (an id is
//! handed out at insert, the row becomes visible at commit), so the floor is
//! proven in two steps, a settle period apart: the lowest unpublished id seen at
//! one probe ([`crate::store::lowest_unpublished`]) and the lowest seen at the
//! next. A row below the lower of the two would have been in progress through
//! the whole period: orders commit within milliseconds of taking their id. For
//! the rare transaction that takes longer, one claim every full-scan interval
//! starts at 0, so a late commit is never skipped, only published up to that
//! interval later.

use std::time::{Duration, Instant};

/// The relay's floor and its schedule.
#[derive(Debug, Clone)]
pub struct Floor {
    settle: Duration,
    full_scan_every: Duration,
    /// Claims start here (0 until two probes have been made).
    id: i64,
    /// The last probe: when, and what it saw.
    probed: Option<(Instant, i64)>,
    last_full_scan: Option<Instant>,
}

/// What the next claim should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The id the claim starts at.
    pub from_id: i64,
    /// Whether to probe the lowest unpublished id (from [`Floor::id`]) after it.
    pub probe: bool,
}

impl Floor {
    /// A floor at 0 that advances through probes a `settle` period apart; every
    /// `full_scan_every` a claim starts at 0 anyway.
    #[must_use]
    pub fn new(settle: Duration, full_scan_every: Duration) -> Self {
        Self {
            settle,
            full_scan_every,
            id: 0,
            probed: None,
            last_full_scan: None,
        }
    }

    /// The current floor.
    #[must_use]
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Plans the claim about to start at `now`.
    pub fn plan(&mut self, now: Instant) -> Plan {
        let full_scan = self
            .last_full_scan
            .is_none_or(|at| now.duration_since(at) >= self.full_scan_every);
        if full_scan {
            self.last_full_scan = Some(now);
        }
        let probe = self
            .probed
            .is_none_or(|(at, _)| now.duration_since(at) >= self.settle);
        Plan {
            from_id: if full_scan { 0 } else { self.id },
            probe,
        }
    }

    /// Records a probe made at `now` that saw `lowest` as the lowest unpublished
    /// id (or the next id): with the previous probe, at least a settle period
    /// old, it moves the floor up.
    pub fn probed(&mut self, now: Instant, lowest: i64) {
        if let Some((at, previous)) = self.probed
            && now.duration_since(at) >= self.settle
        {
            self.id = self.id.max(previous.min(lowest));
        }
        self.probed = Some((now, lowest));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(1);
    const FULL: Duration = Duration::from_secs(5);

    #[test]
    fn the_floor_takes_the_lower_of_two_probes_a_settle_period_apart() {
        let t0 = Instant::now();
        let mut floor = Floor::new(SETTLE, FULL);
        // The first claim scans everything and probes.
        assert_eq!(
            floor.plan(t0),
            Plan {
                from_id: 0,
                probe: true
            }
        );
        floor.probed(t0, 100);
        assert_eq!(floor.id(), 0, "one probe proves nothing");
        // Within the settle period: no probe, still from 0.
        assert_eq!(
            floor.plan(t0 + Duration::from_millis(500)),
            Plan {
                from_id: 0,
                probe: false
            }
        );
        // A row with id 90 committed late: the second probe sees it.
        let t1 = t0 + SETTLE;
        assert!(floor.plan(t1).probe);
        floor.probed(t1, 90);
        assert_eq!(floor.id(), 90);
        // Later probes move it up, never down, and only a settle period apart.
        let t2 = t1 + SETTLE;
        floor.probed(t2, 500);
        assert_eq!(floor.id(), 90, "the lower of 90 and 500");
        floor.probed(t2 + Duration::from_millis(10), 900);
        assert_eq!(floor.id(), 90, "probes less than a settle period apart");
        let t3 = t2 + Duration::from_millis(10) + SETTLE;
        floor.probed(t3, 950);
        assert_eq!(floor.id(), 900);
        floor.probed(t3 + SETTLE, 10);
        assert_eq!(floor.id(), 900, "never down");
    }

    #[test]
    fn a_claim_starts_at_zero_every_full_scan_interval() {
        let t0 = Instant::now();
        let mut floor = Floor::new(SETTLE, FULL);
        floor.plan(t0);
        floor.probed(t0, 100);
        floor.probed(t0 + SETTLE, 100);
        assert_eq!(floor.plan(t0 + SETTLE).from_id, 100);
        assert_eq!(floor.plan(t0 + FULL).from_id, 0);
        assert_eq!(floor.plan(t0 + FULL + SETTLE).from_id, 100);
        assert_eq!(floor.plan(t0 + FULL + FULL).from_id, 0);
    }
}
