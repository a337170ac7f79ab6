//! The fault suite's harness: the three real binaries as child processes, each
//! reaching PostgreSQL and RabbitMQ through its own fault-injecting proxy
//! ([`Cluster`]); a load driver posting orders the way a careful client does (an
//! `Idempotency-Key` per order, retried on 503 or a broken connection,
//! [`drive`]); scenarios that crash, cut and stall while the load runs
//! ([`Scenario`]); and a checker that compares the orders database, the outbox,
//! the invoices database and the queues once everything is quiet ([`check`], a
//! pure function).
//!
//! `Break` switches on one of the services' `*_UNSAFE_*` modes (or leaves out the
//! recovery a scenario relies on): run a scenario with it and the checker must
//! report losses, which shows that the scenario can fail.

mod check;
mod cluster;
mod load;
mod scenario;

pub use check::{Observed, Verdict, check};
pub use cluster::{Cluster, metric};
pub use load::{HANG, LoadReport, drive};
pub use scenario::{Scenario, Size, Tally, table};

/// One of the pipeline's processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// orders-api.
    Api,
    /// outbox-relay.
    Relay,
    /// invoices-worker.
    Worker,
}

impl Role {
    fn binary(self) -> &'static str {
        match self {
            Role::Api => "orders-api",
            Role::Relay => "outbox-relay",
            Role::Worker => "invoices-worker",
        }
    }
}

/// A way to break a guarantee, to show that a scenario can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// Nothing broken: the real pipeline.
    None,
    /// `ORDERS_UNSAFE_REPLY_BEFORE_COMMIT` on the API.
    ApiRepliesBeforeCommit,
    /// `RELAY_UNSAFE_MARK_BEFORE_PUBLISH` on the relays.
    RelayMarksBeforePublish,
    /// `WORKER_UNSAFE_ACK_BEFORE_COMMIT` on the worker.
    WorkerAcksBeforeCommit,
    /// The operator never replays the outbox after the broker lost messages.
    NoReplay,
}

impl Break {
    /// The service variable that switches it on, if it is one.
    fn variable(self, role: Role) -> Option<&'static str> {
        match (self, role) {
            (Break::ApiRepliesBeforeCommit, Role::Api) => Some("ORDERS_UNSAFE_REPLY_BEFORE_COMMIT"),
            (Break::RelayMarksBeforePublish, Role::Relay) => {
                Some("RELAY_UNSAFE_MARK_BEFORE_PUBLISH")
            }
            (Break::WorkerAcksBeforeCommit, Role::Worker) => {
                Some("WORKER_UNSAFE_ACK_BEFORE_COMMIT")
            }
            _ => None,
        }
    }
}
