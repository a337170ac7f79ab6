//! The worker's Prometheus metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Dead-letter reason of a message that fails permanently while being stored.
pub const PROCESSING_FAILED: &str = "processing-failed";

/// Label set of the queue depth gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueueLabels {
    /// The queue's name.
    pub queue: String,
}

/// Label set of dead-letter counters: the reason code (`malformed-body`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason code.
    pub reason: String,
}

/// Everything the worker counts and measures.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    /// Deliveries received.
    pub consumed: Counter,
    /// Invoices written.
    pub invoiced: Counter,
    /// Messages skipped because their id (or their order) was seen before.
    pub duplicates: Counter,
    /// Messages sent to the dead-letter queue, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    dead_lettered_sum: Counter,
    /// Batches retried after a transient database error.
    pub retries: Counter,
    /// Deliveries handed back to the queue after the retries ran out.
    pub requeued: Counter,
    /// Time to handle one batch (decode, store, ack).
    pub handle_seconds: Histogram,
    /// Deliveries per batch.
    pub batch_size: Histogram,
    /// Order creation → invoice committed.
    pub order_to_invoice_seconds: Histogram,
    /// Dedupe records deleted by retention.
    pub purged: Counter,
    /// 1 while the worker consumes.
    pub broker_connected: Gauge,
    /// Messages ready in the invoices queue and the dead-letter queue.
    pub queue_messages: Family<QueueLabels, Gauge>,
}

impl Default for WorkerMetrics {
    /// Creates the metrics and registers them.
    fn default() -> Self {
        let m = Self {
            registry: Registry::default(),
            consumed: Counter::default(),
            invoiced: Counter::default(),
            duplicates: Counter::default(),
            dead_lettered: Family::default(),
            dead_lettered_sum: Counter::default(),
            retries: Counter::default(),
            requeued: Counter::default(),
            handle_seconds: plumbing::metrics::latency_histogram(),
            batch_size: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1.0, 2.0, 10,
            )),
            order_to_invoice_seconds: plumbing::metrics::latency_histogram(),
            purged: Counter::default(),
            broker_connected: Gauge::default(),
            queue_messages: Family::default(),
        };
        let mut registry = Registry::with_prefix("invoices");
        registry.register("consumed", "Deliveries received", m.consumed.clone());
        registry.register("invoiced", "Invoices written", m.invoiced.clone());
        registry.register(
            "duplicates",
            "Messages skipped because their id or order was seen before",
            m.duplicates.clone(),
        );
        registry.register(
            "dead_lettered",
            "Messages sent to the dead-letter queue, by reason",
            m.dead_lettered.clone(),
        );
        registry.register(
            "retries",
            "Batches retried after a transient database error",
            m.retries.clone(),
        );
        registry.register(
            "requeued",
            "Deliveries handed back to the queue after the retries ran out",
            m.requeued.clone(),
        );
        registry.register(
            "handle_seconds",
            "Time to handle one batch of deliveries",
            m.handle_seconds.clone(),
        );
        registry.register("batch_size", "Deliveries per batch", m.batch_size.clone());
        registry.register(
            "order_to_invoice_seconds",
            "Time from the order's creation to its invoice's commit",
            m.order_to_invoice_seconds.clone(),
        );
        registry.register(
            "purged",
            "Dedupe records deleted by retention",
            m.purged.clone(),
        );
        registry.register(
            "broker_connected",
            "1 while the worker consumes",
            m.broker_connected.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages ready in the invoices queue and its dead-letter queue (read every 5 s)",
            m.queue_messages.clone(),
        );
        // Every reason starts at 0, so that the series exist before the first one.
        for reason in contracts::event::DecodeError::CODES
            .into_iter()
            .chain([PROCESSING_FAILED])
        {
            let _ = m.dead_lettered.get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            });
        }
        Self { registry, ..m }
    }
}

impl WorkerMetrics {
    /// Counts a dead-lettered message.
    pub fn dead_letter(&self, reason: &str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
        self.dead_lettered_sum.inc();
    }

    /// Records a queue's depth.
    pub fn set_queue_depth(&self, queue: &str, messages: u32) {
        self.queue_messages
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .set(i64::from(messages));
    }

    /// Dead-lettered messages of all reasons.
    #[must_use]
    pub fn dead_lettered_total(&self) -> u64 {
        self.dead_lettered_sum.get()
    }
}

/// `/ready` needs the consumer running.
impl plumbing::endpoints::Vitals for WorkerMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn unready(&self) -> Option<String> {
        (self.broker_connected.get() != 1).then(|| "broker: not consuming".to_owned())
    }
}
