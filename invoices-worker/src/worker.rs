//! The consumer loop: decode, record-and-invoice in one transaction, ack after
//! commit; dead-letter what can never succeed; retry what may.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use contracts::{Event, Topology, headers};
use deadpool_postgres::Pool;
use futures::StreamExt as _;
use lapin::{
    BasicProperties, Channel, Confirmation, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use plumbing::broker::{self, BrokerError, short_string};
use tokio_util::sync::CancellationToken;

use crate::store::{self, Handled};

/// Counters and state shared with the HTTP endpoint.
#[derive(Debug, Default)]
pub struct WorkerStats {
    broker_connected: AtomicBool,
    /// New invoices written.
    pub invoiced: AtomicU64,
    /// Messages skipped because their id was seen before.
    pub duplicates: AtomicU64,
    /// Messages sent to the dead-letter queue.
    pub dead_lettered: AtomicU64,
}

impl WorkerStats {
    /// Whether the worker currently consumes.
    #[must_use]
    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }
}

/// Why a consuming session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting or declaring failed.
    #[error(transparent)]
    Connect(#[from] BrokerError),
    /// The channel or connection failed.
    #[error("broker channel failed: {0}")]
    Channel(#[from] lapin::Error),
    /// The broker cancelled the consumer (e.g. the queue was deleted).
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

/// The invoices worker.
pub struct Worker {
    pool: Pool,
    broker_url: String,
    topology: Topology,
    prefetch: u16,
    drain_timeout: Duration,
    stats: Arc<WorkerStats>,
}

impl Worker {
    /// A worker writing to `pool` (the invoices database), consuming from `broker_url`.
    #[must_use]
    pub fn new(
        pool: Pool,
        broker_url: String,
        topology: Topology,
        prefetch: u16,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            broker_url,
            topology,
            prefetch,
            drain_timeout,
            stats: Arc::default(),
        }
    }

    /// Counters for the HTTP endpoint.
    #[must_use]
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker
    /// connection fails.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut delays = plumbing::backoff::reconnect_delays();
        while !shutdown.is_cancelled() {
            let mut connected = false;
            let result = self.session(&shutdown, &mut connected).await;
            self.stats.broker_connected.store(false, Ordering::Relaxed);
            match result {
                Ok(()) => break,
                Err(e) => {
                    if connected {
                        delays = plumbing::backoff::reconnect_delays();
                    }
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in = ?delay, "consuming failed; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!("worker stopped");
    }

    /// One connection's life: declare, consume, handle; on shutdown cancel the
    /// consumer and finish the deliveries already received.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> Result<(), SessionError> {
        let connection = broker::connect(&self.broker_url, "invoices-worker").await?;
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel, &self.topology).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let dead_letters = connection.create_channel().await?;
        dead_letters
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tag = format!("invoices-worker-{}", uuid::Uuid::new_v4().simple());
        let mut consumer: Consumer = channel
            .basic_consume(
                short_string(&self.topology.order_created_queue),
                short_string(&tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        *connected = true;
        self.stats.broker_connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %self.topology.order_created_queue, prefetch = self.prefetch, "consuming");

        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => self.handle(delivery, &dead_letters, shutdown).await?,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(SessionError::Cancelled),
                },
            }
        }

        // Stop the flow, then finish what the broker already handed us, so that a
        // rolling restart does not bounce prefetched messages back to the queue.
        channel
            .basic_cancel(short_string(&tag), BasicCancelOptions::default())
            .await?;
        let drain = async {
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Err(e) = self.handle(delivery, &dead_letters, shutdown).await {
                    tracing::warn!(error = %e, "could not finish a delivery during shutdown");
                    break;
                }
            }
        };
        if tokio::time::timeout(self.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!("drain timed out; unacknowledged deliveries return to the queue");
        }
        let _ = channel.close(200, "worker stopping".into()).await;
        let _ = dead_letters.close(200, "worker stopping".into()).await;
        let _ = connection.close(200, "worker stopping".into()).await;
        Ok(())
    }

    /// Handles one delivery and acknowledges it only after its effect is committed
    /// (or it was dead-lettered). Errors are channel failures: the delivery stays
    /// unacknowledged and the broker redelivers it.
    async fn handle(
        &self,
        delivery: Delivery,
        dead_letters: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), lapin::Error> {
        let decoded = match broker::inbound(&delivery).decode() {
            Ok(d) => d,
            Err(e) => {
                return self
                    .dead_letter(&delivery, dead_letters, e.code(), &e.reason())
                    .await;
            }
        };
        let Event::OrderCreatedV1(event) = &decoded.event;
        let mut delays = plumbing::backoff::reconnect_delays();
        loop {
            match store::record_invoice(&self.pool, decoded.message_id, event).await {
                Ok(handled) => {
                    match handled {
                        Handled::Invoiced { invoice_id } => {
                            self.stats.invoiced.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(message_id = %decoded.message_id, order_id = %event.order_id, %invoice_id, "invoice created");
                        }
                        Handled::Duplicate | Handled::AlreadyInvoiced => {
                            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(message_id = %decoded.message_id, order_id = %event.order_id, outcome = ?handled, "duplicate skipped");
                        }
                    }
                    delivery.ack(BasicAckOptions::default()).await?;
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    // Retried here rather than requeued: a database outage must not
                    // use up the message's delivery limit.
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(message_id = %decoded.message_id, error = %e, cause = %plumbing::telemetry::error_chain(&e), retry_in = ?delay, "invoice not stored; retrying");
                    tokio::select! {
                        // Not acked: the broker redelivers it after we disconnect.
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => {
                    let reason = format!(
                        "processing-failed: {e}: {}",
                        plumbing::telemetry::error_chain(&e)
                    );
                    return self
                        .dead_letter(&delivery, dead_letters, "processing-failed", &reason)
                        .await;
                }
            }
        }
    }

    /// Sends a message that can never succeed to the dead-letter exchange with the
    /// reason in a header, waits for the confirm, then acks the original. If that
    /// publish fails, the original is rejected without requeue so that the broker
    /// dead-letters it itself (with its own `x-death` reason).
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        channel: &Channel,
        code: &str,
        reason: &str,
    ) -> Result<(), lapin::Error> {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string());
        tracing::warn!(message_id, code, reason, "dead-lettering message");
        let properties = with_reason(&delivery.properties, reason);
        let published = channel
            .basic_publish(
                short_string(&self.topology.dead_letter_exchange),
                short_string(self.topology.dead_letter_routing_key()),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await;
        let confirmed = match published {
            Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(None))),
            Err(_) => false,
        };
        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if confirmed {
            delivery.ack(BasicAckOptions::default()).await?;
        } else {
            tracing::warn!(
                message_id,
                "dead-letter publish not confirmed; rejecting to the queue's dead-letter exchange"
            );
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await?;
        }
        Ok(())
    }
}

/// The original properties with the dead-letter reason header added.
fn with_reason(original: &BasicProperties, reason: &str) -> BasicProperties {
    let mut table = original.headers().clone().unwrap_or_default();
    table.insert(
        headers::DEAD_LETTER_REASON.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    original.clone().with_headers(table)
}
