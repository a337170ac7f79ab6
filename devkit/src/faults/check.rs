//! The checker: what the clients were told against what the databases and the
//! queues hold once the pipeline is quiet. A pure function of the two, so that
//! each verdict is unit-tested without a pipeline.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::load::{HANG, LoadReport};

/// What the pipeline holds once it is quiet and stopped.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Orders stored: id → amount in cents.
    pub stored: HashMap<Uuid, i64>,
    /// Invoices by order: id → (the lowest invoiced amount in cents, how many
    /// invoices).
    pub invoiced: HashMap<Uuid, (i64, i64)>,
    /// Outbox rows never published.
    pub unpublished: i64,
    /// Messages left in the work queue.
    pub stuck: u32,
    /// Messages in the dead-letter queue (every order in the suite is valid).
    pub dead_lettered: u32,
}

/// The checker's findings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Orders with at least one invoice.
    pub invoices: u64,
    /// Orders (answered 201 or stored) without an invoice.
    pub lost: u64,
    /// Second invoices for one order.
    pub doubled: u64,
    /// Every invariant that did not hold.
    pub violations: Vec<String>,
}

/// Checks every invariant: each order answered 201 is stored; each stored or
/// answered order has exactly one invoice of its amount; nothing is invoiced
/// that was not ordered; the outbox and the queues are empty; no request hung;
/// every final answer is a 201 or a 503.
#[must_use]
pub fn check(load: &LoadReport, observed: &Observed) -> Verdict {
    let Observed {
        stored,
        invoiced,
        unpublished,
        stuck,
        dead_lettered,
    } = observed;
    let mut violations = Vec::new();
    let mut lost: HashSet<Uuid> = HashSet::new();
    let mut invoiced_as =
        |id: &Uuid, cents: i64, told: &str, lost: &mut HashSet<Uuid>| match invoiced.get(id) {
            None => {
                lost.insert(*id);
            }
            Some((amount, _)) if *amount != cents => violations.push(format!(
                "order {id}: invoice of {amount} cents for {told} of {cents}"
            )),
            Some(_) => {}
        };
    let mut not_stored = 0;
    for (id, cents) in &load.created {
        if !stored.contains_key(id) {
            not_stored += 1;
            lost.insert(*id);
        }
        invoiced_as(id, *cents, "a 201", &mut lost);
    }
    for (id, cents) in stored {
        invoiced_as(id, *cents, "an order", &mut lost);
    }
    let orphans = invoiced
        .keys()
        .filter(|id| !stored.contains_key(id))
        .count();
    let doubled: i64 = invoiced.values().map(|(_, n)| n - 1).sum();
    let counted = [
        (
            not_stored,
            "orders answered 201 were never stored".to_owned(),
        ),
        (lost.len(), "orders have no invoice".to_owned()),
        (
            usize::try_from(doubled).unwrap_or(0),
            "second invoices".to_owned(),
        ),
        (orphans, "invoices without an order".to_owned()),
        (
            usize::try_from(*unpublished).unwrap_or(0),
            "outbox rows never published".to_owned(),
        ),
        (*stuck as usize, "messages left in the queue".to_owned()),
        (
            *dead_lettered as usize,
            "good messages dead-lettered".to_owned(),
        ),
        (
            usize::try_from(load.hung).unwrap_or(usize::MAX),
            format!("requests hung for {HANG:?}"),
        ),
    ];
    for (n, what) in counted {
        if n > 0 {
            violations.push(format!("{n} {what}"));
        }
    }
    for (status, n) in &load.statuses {
        if *status != 201 && *status != 503 {
            violations.push(format!("{n} answers with status {status}"));
        }
    }
    Verdict {
        invoices: invoiced.len() as u64,
        lost: lost.len() as u64,
        doubled: u64::try_from(doubled).unwrap_or(0),
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three orders answered 201, stored and invoiced once each, everything
    /// drained: the clean outcome.
    fn clean() -> (LoadReport, Observed) {
        let ids: Vec<(Uuid, i64)> = (1..=3).map(|n| (Uuid::new_v4(), n * 100)).collect();
        let mut load = LoadReport {
            sent: 3,
            created: ids.iter().copied().collect(),
            ..LoadReport::default()
        };
        load.statuses.insert(201, 3);
        let observed = Observed {
            stored: ids.iter().copied().collect(),
            invoiced: ids.iter().map(|(id, c)| (*id, (*c, 1))).collect(),
            ..Observed::default()
        };
        (load, observed)
    }

    fn first(map: &HashMap<Uuid, i64>) -> Uuid {
        *map.keys().next().unwrap()
    }

    #[test]
    fn a_clean_run_passes_with_every_order_counted() {
        let (load, observed) = clean();

        let verdict = check(&load, &observed);

        assert_eq!(
            verdict,
            Verdict {
                invoices: 3,
                ..Verdict::default()
            }
        );
    }

    #[test]
    fn a_201_that_was_never_stored_is_lost() {
        let (load, mut observed) = clean();
        let id = first(&load.created);
        observed.stored.remove(&id);
        observed.invoiced.remove(&id);

        let verdict = check(&load, &observed);

        assert_eq!(verdict.lost, 1);
        assert!(
            verdict
                .violations
                .contains(&"1 orders answered 201 were never stored".into())
        );
        assert!(
            verdict
                .violations
                .contains(&"1 orders have no invoice".into())
        );
    }

    #[test]
    fn a_stored_order_without_an_invoice_is_lost() {
        let (mut load, mut observed) = clean();
        // Stored though its client never heard back (a lost answer).
        let id = first(&observed.stored);
        load.created.remove(&id);
        observed.invoiced.remove(&id);

        let verdict = check(&load, &observed);

        assert_eq!(verdict.lost, 1);
        assert_eq!(verdict.violations, ["1 orders have no invoice"]);
    }

    #[test]
    fn a_second_invoice_is_doubled() {
        let (load, mut observed) = clean();
        let id = first(&observed.stored);
        observed.invoiced.get_mut(&id).unwrap().1 = 3;

        let verdict = check(&load, &observed);

        assert_eq!((verdict.lost, verdict.doubled), (0, 2));
        assert_eq!(verdict.violations, ["2 second invoices"]);
    }

    #[test]
    fn a_wrong_amount_or_an_orphan_invoice_is_a_violation() {
        let (load, mut observed) = clean();
        let id = first(&observed.stored);
        observed.invoiced.get_mut(&id).unwrap().0 += 1;
        observed.invoiced.insert(Uuid::new_v4(), (5, 1));

        let verdict = check(&load, &observed);

        assert_eq!(verdict.lost, 0);
        let amount = observed.stored[&id];
        assert!(verdict.violations.contains(&format!(
            "order {id}: invoice of {} cents for a 201 of {amount}",
            amount + 1
        )));
        assert!(
            verdict
                .violations
                .contains(&"1 invoices without an order".into())
        );
    }

    #[test]
    fn leftovers_hangs_and_odd_answers_are_violations() {
        let (mut load, mut observed) = clean();
        observed.unpublished = 2;
        observed.stuck = 3;
        observed.dead_lettered = 4;
        load.hung = 5;
        load.statuses.insert(503, 6);
        load.statuses.insert(500, 7);

        let verdict = check(&load, &observed);

        assert_eq!(
            verdict.violations,
            [
                "2 outbox rows never published".to_owned(),
                "3 messages left in the queue".into(),
                "4 good messages dead-lettered".into(),
                format!("5 requests hung for {HANG:?}"),
                "7 answers with status 500".into(),
            ]
        );
    }
}
