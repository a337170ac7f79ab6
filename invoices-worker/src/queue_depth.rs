//! The queue's backlog and the dead-letter queue's growth stay visible: their
//! depths are read into the metrics while a session is connected.

use std::sync::Arc;

use contracts::Topology;
use lapin::types::FieldTable;
use plumbing::broker::short_string;

use crate::metrics::WorkerMetrics;

/// Reads the depth of the invoices queue and its dead-letter queue every few
/// seconds into the metrics (queue backlog and dead-letter growth alerts); stops
/// when dropped or when its channel fails.
pub(crate) struct QueueDepth(tokio::task::JoinHandle<()>);

impl QueueDepth {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

    pub(crate) fn watch(
        channel: lapin::Channel,
        topology: Topology,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        Self(tokio::spawn(async move {
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            loop {
                for queue in [&topology.order_created_queue, &topology.dead_letter_queue] {
                    match channel
                        .queue_declare(short_string(queue), passive, FieldTable::default())
                        .await
                    {
                        Ok(q) => metrics.set_queue_depth(queue, q.message_count()),
                        Err(e) => {
                            tracing::debug!(error = %e, queue, "cannot read the queue's depth");
                            return;
                        }
                    }
                }
                tokio::time::sleep(Self::INTERVAL).await;
            }
        }))
    }
}

impl Drop for QueueDepth {
    fn drop(&mut self) {
        self.0.abort();
    }
}
