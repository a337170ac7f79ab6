//! An in-process invoices worker for tests.

use std::{sync::Arc, time::Duration};

use invoices_worker::{
    metrics::WorkerMetrics,
    worker::{Worker, WorkerSettings},
};
use plumbing::db::PoolOptions;
use tokio_util::sync::CancellationToken;

use crate::broker::TestBroker;

/// A worker running on a task, stopped by [`RunningWorker::stop`].
pub struct RunningWorker {
    /// Its metrics.
    pub metrics: Arc<WorkerMetrics>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    /// Starts a worker on `db_url` (small pool, short pool wait) consuming from
    /// `broker`'s namespace, and waits until it consumes.
    pub async fn start(db_url: &str, broker: &TestBroker, settings: WorkerSettings) -> Self {
        Self::start_via(db_url, &broker.url, broker, settings).await
    }

    /// [`Self::start`], reaching the broker at `broker_url` (e.g. through a
    /// fault proxy) instead of `broker.url`.
    pub async fn start_via(
        db_url: &str,
        broker_url: &str,
        broker: &TestBroker,
        settings: WorkerSettings,
    ) -> Self {
        let pool = plumbing::db::pool(
            plumbing::db::parse_url(db_url).unwrap(),
            PoolOptions {
                max_size: 2,
                wait_timeout: Duration::from_millis(500),
                ..PoolOptions::DEFAULT
            },
        )
        .unwrap();
        let worker = Worker::new(
            pool,
            broker_url.to_owned(),
            broker.topology.clone(),
            settings,
        );
        let metrics = worker.metrics();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        crate::eventually(Duration::from_secs(10), "the worker to consume", || async {
            (metrics.broker_connected.get() == 1).then_some(())
        })
        .await;
        Self {
            metrics,
            shutdown,
            task,
        }
    }

    /// Stops it gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("worker did not stop")
            .unwrap();
    }
}
