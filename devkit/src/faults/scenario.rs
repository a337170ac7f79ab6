//! The scenarios: the faults each injects while the load runs, their sizes, and
//! the tally of their outcomes.

use std::{fmt::Write as _, time::Duration};

use super::{Break, Cluster, Role, drive};
use crate::Jitter;

#[derive(Debug, Clone)]
pub struct Tally {
    /// Scenario name (with the break, if any).
    pub scenario: String,
    /// What was done to the pipeline.
    pub faults: String,
    /// Orders the driver attempted.
    pub sent: u64,
    /// Orders answered 201.
    pub created: u64,
    /// 503 answers the clients saw (and retried).
    pub unavailable: u64,
    /// Orders with an invoice.
    pub invoices: u64,
    /// Redelivered messages the workers recognised and skipped.
    pub redeliveries_skipped: u64,
    /// Client retries the API answered from the idempotency record.
    pub retries_replayed: u64,
    /// Messages in the dead-letter queue.
    pub dead_lettered: u64,
    /// Orders (answered 201 or stored) without an invoice.
    pub lost: u64,
    /// Second invoices for one order.
    pub doubled: u64,
    /// From the end of the load until the pipeline was quiet.
    pub quiesce: Duration,
    /// Every invariant that did not hold.
    pub violations: Vec<String>,
}

impl Tally {
    /// Whether every invariant held.
    #[must_use]
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// The tally as a Markdown table.
#[must_use]
pub fn table(tallies: &[Tally]) -> String {
    let mut out = String::from(
        "| scenario | faults | orders sent | 201s | 503s seen | invoices | duplicates prevented (worker / API) | dead-lettered | lost | doubled | quiesce | result |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for t in tallies {
        let result = if t.passed() {
            "pass".to_owned()
        } else {
            format!("FAIL: {}", t.violations.join("; "))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {:.1} s | {} |",
            t.scenario,
            t.faults,
            t.sent,
            t.created,
            t.unavailable,
            t.invoices,
            t.redeliveries_skipped,
            t.retries_replayed,
            t.dead_lettered,
            t.lost,
            t.doubled,
            t.quiesce.as_secs_f64(),
            result
        );
    }
    out
}

/// Load and fault sizes.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// Orders per second posted.
    pub rate: f64,
    /// Load duration for most scenarios.
    pub load: Duration,
    /// How long outages last.
    pub outage: Duration,
    /// Longest wait for the pipeline to be quiet afterwards.
    pub quiesce_limit: Duration,
}

impl Size {
    /// The CI variant: a few thousand orders per scenario, a few minutes in all.
    #[must_use]
    pub fn ci() -> Self {
        Self {
            rate: 200.0,
            load: Duration::from_secs(10),
            outage: Duration::from_secs(20),
            quiesce_limit: Duration::from_secs(90),
        }
    }

    /// The soak variant: more load for longer, with more faults.
    #[must_use]
    pub fn soak() -> Self {
        Self {
            rate: 400.0,
            load: Duration::from_secs(60),
            outage: Duration::from_secs(20),
            quiesce_limit: Duration::from_secs(300),
        }
    }
}

/// The scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// RabbitMQ unreachable for the relay and the worker for `outage`.
    BrokerOutage,
    /// The relay SIGKILLed again and again mid-drain, restarted each time.
    RelayKilled,
    /// Two relays; one SIGKILLed mid-drain again and again (each time dead for
    /// half a second), the other running throughout.
    TwoRelaysOneKilled,
    /// The worker SIGKILLed again and again mid-batch, restarted each time.
    WorkerKilled,
    /// The invoices database hangs, then is cut, mid-transaction.
    InvoicesDatabaseCut,
    /// The orders database hangs, then is cut, during POSTs.
    OrdersDatabaseCut,
    /// The broker closes the relay's channel with confirms outstanding.
    ChannelClosed,
    /// The broker loses queued messages; the whole outbox is replayed during load.
    ReplayDuringLoad,
    /// SIGTERM and restart of every process in turn during load.
    RollingRestart,
}

impl Scenario {
    /// All of them, in the tally's order.
    pub const ALL: [Scenario; 9] = [
        Scenario::BrokerOutage,
        Scenario::RelayKilled,
        Scenario::TwoRelaysOneKilled,
        Scenario::WorkerKilled,
        Scenario::InvoicesDatabaseCut,
        Scenario::OrdersDatabaseCut,
        Scenario::ChannelClosed,
        Scenario::ReplayDuringLoad,
        Scenario::RollingRestart,
    ];

    /// Its name on the command line and in the tally.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Scenario::BrokerOutage => "broker-outage",
            Scenario::RelayKilled => "relay-killed",
            Scenario::TwoRelaysOneKilled => "two-relays-one-killed",
            Scenario::WorkerKilled => "worker-killed",
            Scenario::InvoicesDatabaseCut => "invoices-db-cut",
            Scenario::OrdersDatabaseCut => "orders-db-cut",
            Scenario::ChannelClosed => "channel-closed",
            Scenario::ReplayDuringLoad => "replay-during-load",
            Scenario::RollingRestart => "rolling-restart",
        }
    }

    /// The scenario called `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The break that makes this scenario lose orders: the guarantee it tests.
    #[must_use]
    pub fn breaker(self) -> Break {
        match self {
            Scenario::BrokerOutage
            | Scenario::RelayKilled
            | Scenario::TwoRelaysOneKilled
            | Scenario::ChannelClosed => Break::RelayMarksBeforePublish,
            Scenario::WorkerKilled | Scenario::InvoicesDatabaseCut => Break::WorkerAcksBeforeCommit,
            Scenario::OrdersDatabaseCut | Scenario::RollingRestart => Break::ApiRepliesBeforeCommit,
            Scenario::ReplayDuringLoad => Break::NoReplay,
        }
    }

    fn relays(self) -> usize {
        if self == Scenario::TwoRelaysOneKilled {
            2
        } else {
            1
        }
    }

    fn load_time(self, size: Size) -> Duration {
        match self {
            Scenario::BrokerOutage => size.load.max(size.outage + Duration::from_secs(8)),
            _ => size.load,
        }
    }

    /// Runs the scenario (with `broken`'s guarantee switched off, if any) and
    /// checks the invariants.
    pub async fn run(self, size: Size, broken: bool) -> Tally {
        let broken = if broken { self.breaker() } else { Break::None };
        let mut cluster = Cluster::start(self.relays(), broken).await;
        let load_time = self.load_time(size);
        let load = drive(cluster.api_url(), cluster.token(), size.rate, load_time);
        let started = tokio::time::Instant::now();
        let faults = self.inject(&mut cluster, size, load_time, broken).await;
        let report = load.await.unwrap();
        // Faults end with the load at the latest.
        tokio::time::sleep_until(started + load_time).await;
        let name = if broken == Break::None {
            self.name().to_owned()
        } else {
            format!("{} (broken: {broken:?})", self.name())
        };
        let mut tally = cluster.settle(&name, report, size.quiesce_limit).await;
        tally.faults = faults;
        tally
    }

    /// The fault timeline, run while the load runs.
    async fn inject(
        self,
        c: &mut Cluster,
        size: Size,
        load_time: Duration,
        broken: Break,
    ) -> String {
        let sleep = tokio::time::sleep;
        let started = tokio::time::Instant::now();
        let before_end = |margin: u64| started.elapsed() + Duration::from_secs(margin) < load_time;
        let mut jitter = Jitter::new(0x5eed);
        match self {
            Scenario::BrokerOutage => {
                sleep(Duration::from_secs(3)).await;
                c.relay_broker.cut();
                c.worker_broker.cut();
                sleep(size.outage).await;
                c.relay_broker.restore();
                c.worker_broker.restore();
                format!("broker cut {:?}", size.outage)
            }
            Scenario::RelayKilled => {
                // Slow database round trips widen the window between publish
                // and mark, and inside the claim, where the kills land.
                c.relay_db.set_latency(Duration::from_millis(2));
                let mut kills = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(300 + jitter.below(900))).await;
                    c.kill(Role::Relay, 0).await;
                    c.restart(Role::Relay, 0).await;
                    kills += 1;
                }
                format!("{kills} SIGKILLs")
            }
            Scenario::TwoRelaysOneKilled => {
                // Relay 0 runs throughout; relay 1 dies mid-drain again and
                // again, and stays dead for a while each time.
                c.relay_db.set_latency(Duration::from_millis(5));
                c.relay_broker.set_latency(Duration::from_millis(5));
                let mut kills = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(200 + jitter.below(300))).await;
                    c.kill(Role::Relay, 1).await;
                    kills += 1;
                    sleep(Duration::from_millis(300)).await;
                    c.restart(Role::Relay, 1).await;
                }
                format!("{kills} SIGKILLs of one of two")
            }
            Scenario::WorkerKilled => {
                c.worker_db.set_latency(Duration::from_millis(10));
                let mut kills = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(500 + jitter.below(1000))).await;
                    c.kill(Role::Worker, 0).await;
                    c.restart(Role::Worker, 0).await;
                    kills += 1;
                }
                format!("{kills} SIGKILLs")
            }
            Scenario::InvoicesDatabaseCut => {
                sleep(Duration::from_secs(2)).await;
                c.worker_db.stall();
                sleep(Duration::from_secs(2)).await;
                // Transactions hanging mid-flight are reset; new connections work.
                c.worker_db.restore();
                c.worker_db.reset();
                sleep(Duration::from_secs(1)).await;
                c.worker_db.cut();
                sleep(Duration::from_secs(4)).await;
                c.worker_db.restore();
                "stall 2 s, reset, cut 4 s".to_owned()
            }
            Scenario::OrdersDatabaseCut => {
                sleep(Duration::from_secs(2)).await;
                c.api_db.stall();
                c.relay_db.stall();
                sleep(Duration::from_secs(2)).await;
                c.api_db.cut();
                c.relay_db.cut();
                sleep(Duration::from_secs(4)).await;
                c.api_db.restore();
                c.relay_db.restore();
                "stall 2 s, cut 4 s".to_owned()
            }
            Scenario::ChannelClosed => {
                let mut closes = 0;
                while before_end(2) {
                    sleep(Duration::from_millis(1500 + jitter.below(1000))).await;
                    c.delete_exchange().await;
                    closes += 1;
                }
                format!("{closes} channel closes")
            }
            Scenario::ReplayDuringLoad => {
                // The broker loses what it held: the worker is away while
                // messages pile up, then the queue is purged.
                sleep(Duration::from_secs(2)).await;
                c.worker_broker.cut();
                sleep(Duration::from_secs(3)).await;
                let queue = c.broker.topology.order_created_queue.clone();
                let purged = c.broker.ready_count(&queue).await;
                c.broker.purge(&queue).await;
                c.worker_broker.restore();
                if broken == Break::NoReplay {
                    return format!("{purged} purged, no replay");
                }
                c.replay_everything().await;
                format!("{purged} purged, outbox replayed")
            }
            Scenario::RollingRestart => {
                for role in [Role::Api, Role::Relay, Role::Worker] {
                    sleep(load_time / 4).await;
                    c.terminate(role, 0).await;
                    c.restart(role, 0).await;
                }
                "3 SIGTERMs".to_owned()
            }
        }
    }
}
