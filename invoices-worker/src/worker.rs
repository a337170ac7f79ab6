//! The invoices worker and how it consumes. Each guarantee lives in its own
//! module: [`crate::session`] (a connection's life, reconnecting, shutdown),
//! [`crate::batch`] (one transaction and one ack after commit per batch; retries
//! and bisecting), [`crate::dead_letter`] (what can never succeed, with its
//! reason) and [`crate::queue_depth`] (backlog metrics).

use std::{sync::Arc, time::Duration};

use contracts::Topology;
use deadpool_postgres::Pool;

use crate::metrics::WorkerMetrics;

/// How the worker consumes.
#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    /// Unacknowledged deliveries the broker may send ahead.
    pub prefetch: u16,
    /// Most deliveries handled in one transaction.
    pub batch_size: usize,
    /// Attempts at storing a batch through transient database errors before its
    /// deliveries go back to the queue (each return uses one of the message's
    /// deliveries; the queue's delivery limit then dead-letters it).
    pub max_attempts: u32,
    /// On shutdown, how long to keep handling deliveries already received.
    pub drain_timeout: Duration,
    /// BREAKS THE GUARANTEE, for the fault suite only: consume in auto-ack mode
    /// (acknowledged on receipt), store each batch once, drop it on error (the
    /// naive at-most-once consumer).
    /// The fault suite runs with it to show that its checker reports the loss.
    /// Exists only with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    pub unsafe_ack_before_commit: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            prefetch: 200,
            batch_size: 100,
            max_attempts: 20,
            drain_timeout: Duration::from_secs(10),
            #[cfg(feature = "fault-injection")]
            unsafe_ack_before_commit: false,
        }
    }
}

/// The invoices worker.
pub struct Worker {
    pub(crate) pool: Pool,
    pub(crate) broker_url: String,
    pub(crate) topology: Topology,
    pub(crate) settings: WorkerSettings,
    pub(crate) metrics: Arc<WorkerMetrics>,
}

impl Worker {
    /// A worker writing to `pool` (the invoices database), consuming from `broker_url`.
    #[must_use]
    pub fn new(
        pool: Pool,
        broker_url: String,
        topology: Topology,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            pool,
            broker_url,
            topology,
            settings,
            metrics: Arc::default(),
        }
    }

    /// The worker's metrics (shared with the HTTP endpoint).
    #[must_use]
    pub fn metrics(&self) -> Arc<WorkerMetrics> {
        self.metrics.clone()
    }
}
