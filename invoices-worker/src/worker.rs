//! The consumer loop: decode a batch of deliveries, record and invoice them all in
//! one transaction, ack after commit; dead-letter what can never succeed; retry
//! what may, then hand it back to the queue (its delivery limit ends any loop).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use contracts::{Event, Topology, event::Decoded, headers};
use deadpool_postgres::Pool;
use futures::{FutureExt as _, StreamExt as _};
use lapin::{
    BasicProperties, Channel, Consumer,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    },
    types::{AMQPValue, FieldTable, LongString},
};
use plumbing::{
    broker::{self, BrokerError, short_string},
    publish::{self, Message},
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    metrics::WorkerMetrics,
    store::{self, Handled, StoreError},
};

/// Beyond the drain timeout, how long stopping may wait for the broker.
const STOP_MARGIN: Duration = Duration::from_secs(5);

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
    pub unsafe_ack_before_commit: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            prefetch: 200,
            batch_size: 100,
            max_attempts: 20,
            drain_timeout: Duration::from_secs(10),
            unsafe_ack_before_commit: false,
        }
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
    settings: WorkerSettings,
    metrics: Arc<WorkerMetrics>,
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

    /// Consumes until `shutdown`, reconnecting with backoff whenever the broker
    /// connection fails.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.settings.unsafe_ack_before_commit {
            tracing::error!(
                "WORKER_UNSAFE_ACK_BEFORE_COMMIT is set: messages are acknowledged before their \
                 invoices are stored and CAN BE LOST; this mode exists for the fault suite only"
            );
        }
        let mut delays = plumbing::backoff::reconnect_delays();
        while !shutdown.is_cancelled() {
            let mut connected = false;
            // Once shutdown starts, a session gets the drain timeout plus a margin
            // to finish: a broker that stops answering (a half-open connection)
            // must not keep the process alive. Whatever it still held unacked is
            // redelivered by the broker.
            let give_up = async {
                shutdown.cancelled().await;
                tokio::time::sleep(self.settings.drain_timeout + STOP_MARGIN).await;
            };
            let result = tokio::select! {
                result = self.session(&shutdown, &mut connected) => result,
                () = give_up => {
                    tracing::warn!("the broker did not let the session end in time; stopping without it");
                    Ok(())
                }
            };
            self.metrics.broker_connected.set(0);
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

    /// One connection's life: declare, consume, handle batches; on shutdown cancel
    /// the consumer and finish the deliveries already received.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> Result<(), SessionError> {
        let connection = broker::connect(&self.broker_url, "invoices-worker").await?;
        let lost = broker::lost(&connection);
        let channel = connection.create_channel().await?;
        broker::declare_topology(&channel, &self.topology).await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
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
                BasicConsumeOptions {
                    // The broken mode consumes in auto-ack mode: the broker
                    // forgets each message as soon as it has sent it.
                    no_ack: self.settings.unsafe_ack_before_commit,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        *connected = true;
        self.metrics.broker_connected.set(1);
        let _depth = QueueDepth::watch(
            connection.create_channel().await?,
            self.topology.clone(),
            self.metrics.clone(),
        );
        tracing::info!(queue = %self.topology.order_created_queue, prefetch = self.settings.prefetch, batch = self.settings.batch_size, "consuming");

        // The consuming ends when the connection does, whatever it was waiting
        // for: what it held unacknowledged is redelivered, and the store is
        // idempotent.
        tokio::select! {
            result = self.consume(&channel, &mut consumer, &tag, &dead_letters, shutdown) => result?,
            error = lost => return Err(error.into()),
        }
        let _ = channel.close(200, "worker stopping".into()).await;
        let _ = dead_letters.close(200, "worker stopping".into()).await;
        let _ = connection.close(200, "worker stopping".into()).await;
        Ok(())
    }

    /// Handles batches until `shutdown`, then cancels the consumer and finishes
    /// the deliveries already received (within the drain timeout).
    async fn consume(
        &self,
        channel: &Channel,
        consumer: &mut Consumer,
        tag: &str,
        dead_letters: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        // Whether every delivery so far was acked or rejected. Once a batch is left
        // unsettled (shutdown during a database outage), no later batch may be
        // acked: its `multiple` ack would cover the unsettled deliveries too.
        let mut all_settled = true;
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(e)) => return Err(e.into()),
                    None => return Err(SessionError::Cancelled),
                },
            };
            let batch = self.take_ready(consumer, first)?;
            if !self.handle_batch(batch, dead_letters, shutdown).await? {
                all_settled = false;
                break;
            }
        }

        // Stop the flow, then finish what the broker already handed us, so that a
        // rolling restart does not bounce prefetched messages back to the queue.
        channel
            .basic_cancel(short_string(tag), BasicCancelOptions::default())
            .await?;
        let drain = async {
            if !all_settled {
                return;
            }
            loop {
                let Some(Ok(first)) = consumer.next().await else {
                    break;
                };
                let Ok(batch) = self.take_ready(consumer, first) else {
                    break;
                };
                match self.handle_batch(batch, dead_letters, shutdown).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not finish deliveries during shutdown");
                        break;
                    }
                }
            }
        };
        if tokio::time::timeout(self.settings.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!("drain timed out; unacknowledged deliveries return to the queue");
        }
        Ok(())
    }

    /// `first` plus the deliveries already waiting, up to the batch size: under
    /// load batches fill from the prefetch buffer; when idle a batch is one message
    /// and waits for nothing.
    fn take_ready(
        &self,
        consumer: &mut Consumer,
        first: Delivery,
    ) -> Result<Vec<Delivery>, SessionError> {
        let mut batch = vec![first];
        while batch.len() < self.settings.batch_size {
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                Some(Some(Err(e))) => return Err(e.into()),
                Some(None) | None => break,
            }
        }
        Ok(batch)
    }

    /// Handles a batch: malformed deliveries are dead-lettered, the rest are stored
    /// in one transaction and acknowledged (one `multiple` ack) only after it
    /// committed. Returns whether every delivery of the batch was settled (acked,
    /// rejected or handed back); `false` only when shutdown interrupted a retry.
    /// Errors are channel failures: unacknowledged deliveries stay with the
    /// broker, which redelivers them.
    async fn handle_batch(
        &self,
        deliveries: Vec<Delivery>,
        dead_letters: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<bool, lapin::Error> {
        let started = Instant::now();
        self.metrics.consumed.inc_by(deliveries.len() as u64);
        self.metrics.batch_size.observe(deliveries.len() as f64);
        let mut good: Vec<(Delivery, Decoded)> = Vec::with_capacity(deliveries.len());
        let mut spans: Vec<tracing::Span> = Vec::with_capacity(deliveries.len());
        let mut repeated: Vec<Delivery> = Vec::new();
        let mut seen = HashSet::with_capacity(deliveries.len());
        for delivery in deliveries {
            let span = self.process_span(&delivery);
            match broker::inbound(&delivery).decode() {
                Ok(decoded) if seen.insert(decoded.message_id) => {
                    good.push((delivery, decoded));
                    spans.push(span);
                }
                // The same message twice in one batch: the first one decides.
                Ok(_) => {
                    span.record("invoice.outcome", "duplicate");
                    repeated.push(delivery);
                }
                Err(e) => {
                    span.record("invoice.outcome", "dead-lettered");
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", e.code());
                    self.dead_letter(&delivery, dead_letters, e.code(), &e.reason())
                        .instrument(span)
                        .await?;
                }
            }
        }
        if good.is_empty() {
            return Ok(true);
        }
        if self.settings.unsafe_ack_before_commit {
            return self.store_acked_first(&good).await;
        }
        // One statement stores the whole batch: each message's trace gets its
        // database span, covering that statement.
        let inserts: Vec<tracing::Span> = spans
            .iter()
            .map(|span| span.in_scope(|| plumbing::db::client_span("INSERT", "invoices")))
            .collect();
        let stored = self.store_with_retries(&good, dead_letters, shutdown).await;
        if !matches!(stored, Ok(Stored::Done(_))) {
            for span in &inserts {
                plumbing::db::failed_span(span, "not-stored");
            }
        }
        drop(inserts);
        let outcomes = match stored? {
            Stored::Done(outcomes) => outcomes,
            Stored::Settled => return Ok(true),
            Stored::Interrupted => return Ok(false),
        };
        let now = OffsetDateTime::now_utc();
        for (((_, decoded), handled), span) in good.iter().zip(&outcomes).zip(&spans) {
            let Event::OrderCreatedV1(event) = &decoded.event;
            span.record("order.id", tracing::field::display(event.order_id));
            match handled {
                Handled::Invoiced { .. } => {
                    self.metrics.invoiced.inc();
                    self.metrics
                        .order_to_invoice_seconds
                        .observe((now - event.created_at).as_seconds_f64().max(0.0));
                    span.record("invoice.outcome", "invoiced");
                    span.in_scope(|| tracing::debug!(message_id = %decoded.message_id, order_id = %event.order_id, "invoice stored"));
                }
                Handled::Duplicate | Handled::AlreadyInvoiced => {
                    self.metrics.duplicates.inc();
                    span.record("invoice.outcome", "duplicate");
                    span.in_scope(|| tracing::info!(message_id = %decoded.message_id, order_id = %event.order_id, outcome = ?handled, "duplicate skipped"));
                }
            }
        }
        self.metrics.duplicates.inc_by(repeated.len() as u64);
        // Everything up to the batch's last tag is settled now (dead-lettered ones
        // were acked or rejected one by one): one ack covers the rest.
        ack_all(&good, &repeated).await?;
        self.metrics
            .handle_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(true)
    }

    /// The deliberately broken handling of `WORKER_UNSAFE_ACK_BEFORE_COMMIT`: the
    /// deliveries were acknowledged on receipt (auto-ack); store the batch once.
    /// Whatever a crash or an error catches in hand is gone. The fault suite uses
    /// it to prove its checker sees losses.
    async fn store_acked_first(&self, good: &[(Delivery, Decoded)]) -> Result<bool, lapin::Error> {
        let events = events_of(good);
        match store::record_invoices(&self.pool, &events).await {
            Ok(outcomes) => {
                for handled in outcomes {
                    let counter = match handled {
                        Handled::Invoiced { .. } => &self.metrics.invoiced,
                        Handled::Duplicate | Handled::AlreadyInvoiced => &self.metrics.duplicates,
                    };
                    counter.inc();
                }
            }
            Err(e) => {
                tracing::error!(batch = good.len(), error = %e, "invoices not stored; the batch was acknowledged already and is dropped");
            }
        }
        Ok(true)
    }

    /// The consumer span of one delivery (OpenTelemetry messaging conventions),
    /// continuing the trace of the order's HTTP request from the message headers.
    fn process_span(&self, delivery: &Delivery) -> tracing::Span {
        let queue = &self.topology.order_created_queue;
        let properties = &delivery.properties;
        let span = tracing::info_span!(
            "messaging.process",
            otel.name = %format!("process {queue}"),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "rabbitmq",
            messaging.operation.type = "process",
            messaging.destination.name = %queue,
            messaging.message.id = properties.message_id().as_ref().map(|m| m.as_str()),
            messaging.rabbitmq.destination.routing_key = %delivery.routing_key,
            order.id = tracing::field::Empty,
            invoice.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        plumbing::telemetry::continue_trace(
            &span,
            broker::header_str(properties, headers::TRACEPARENT),
            broker::header_str(properties, headers::TRACESTATE),
        );
        span
    }

    /// Stores the batch, retrying transient errors with backoff (in place: a
    /// database outage must not use up the messages' delivery limits at once).
    async fn store_with_retries(
        &self,
        good: &[(Delivery, Decoded)],
        dead_letters: &Channel,
        shutdown: &CancellationToken,
    ) -> Result<Stored, lapin::Error> {
        let events = events_of(good);
        let mut delays = plumbing::backoff::reconnect_delays();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match store::record_invoices(&self.pool, &events).await {
                Ok(outcomes) => return Ok(Stored::Done(outcomes)),
                Err(e) if e.is_transient() && attempt < self.settings.max_attempts => {
                    self.metrics.retries.inc();
                    let delay = delays.next().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(batch = good.len(), attempt, error = %e, cause = %plumbing::telemetry::error_chain(&e), retry_in = ?delay, "invoices not stored; retrying");
                    tokio::select! {
                        // Not acked: the broker redelivers them after we disconnect.
                        () = shutdown.cancelled() => return Ok(Stored::Interrupted),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) if e.is_transient() => {
                    tracing::error!(batch = good.len(), attempt, error = %e, "invoices not stored after every retry; handing the messages back to the queue");
                    self.metrics.requeued.inc_by(good.len() as u64);
                    for (delivery, _) in good {
                        delivery
                            .nack(BasicNackOptions {
                                multiple: false,
                                requeue: true,
                            })
                            .await?;
                    }
                    return Ok(Stored::Settled);
                }
                Err(e) if good.len() > 1 => {
                    // A permanent error: find the message that causes it by storing
                    // them one by one.
                    tracing::warn!(error = %e, "batch failed permanently; storing its messages one by one");
                    return self
                        .store_one_by_one(good, dead_letters)
                        .await
                        .map(|()| Stored::Settled);
                }
                Err(e) => {
                    self.dead_letter(
                        &good[0].0,
                        dead_letters,
                        crate::metrics::PROCESSING_FAILED,
                        &reason_of(&e),
                    )
                    .await?;
                    return Ok(Stored::Settled);
                }
            }
        }
    }

    /// Stores each message alone; the ones that fail permanently are dead-lettered.
    async fn store_one_by_one(
        &self,
        good: &[(Delivery, Decoded)],
        dead_letters: &Channel,
    ) -> Result<(), lapin::Error> {
        for (delivery, decoded) in good {
            let Event::OrderCreatedV1(event) = &decoded.event;
            match store::record_invoices(&self.pool, &[(decoded.message_id, event)]).await {
                Ok(outcomes) => {
                    if matches!(outcomes.first(), Some(Handled::Invoiced { .. })) {
                        self.metrics.invoiced.inc();
                    } else {
                        self.metrics.duplicates.inc();
                    }
                    delivery.ack(BasicAckOptions::default()).await?;
                }
                Err(e) if e.is_transient() => {
                    delivery
                        .nack(BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        })
                        .await?;
                }
                Err(e) => {
                    let reason = reason_of(&e);
                    self.dead_letter(
                        delivery,
                        dead_letters,
                        crate::metrics::PROCESSING_FAILED,
                        &reason,
                    )
                    .await?;
                }
            }
        }
        Ok(())
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
        let message = Message {
            exchange: &self.topology.dead_letter_exchange,
            routing_key: self.topology.dead_letter_routing_key(),
            body: &delivery.data,
            properties: with_reason(&delivery.properties, reason),
        };
        // Bounded: a dead-letter queue without quorum must not hang the worker.
        let outcome = publish::publish_confirmed(channel, message, Duration::from_secs(10)).await;
        self.metrics.dead_letter(code);
        match outcome.into_result() {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(e) => {
                tracing::warn!(
                    message_id,
                    error = %e,
                    "dead-letter publish not confirmed; rejecting to the queue's dead-letter exchange"
                );
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        Ok(())
    }
}

/// What storing a batch came to.
enum Stored {
    /// Committed: the outcomes, one per message, still to be acked.
    Done(Vec<Handled>),
    /// Every delivery was settled another way (dead-lettered, handed back).
    Settled,
    /// Shutdown interrupted the retries: nothing settled.
    Interrupted,
}

fn reason_of(e: &StoreError) -> String {
    format!(
        "processing-failed: {e}: {}",
        plumbing::telemetry::error_chain(e)
    )
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

/// Reads the depth of the invoices queue and its dead-letter queue every few
/// seconds into the metrics (queue backlog and dead-letter growth alerts); stops
/// when dropped or when its channel fails.
struct QueueDepth(tokio::task::JoinHandle<()>);

impl QueueDepth {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

    fn watch(channel: lapin::Channel, topology: Topology, metrics: Arc<WorkerMetrics>) -> Self {
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

/// The events of decoded deliveries, with their message ids.
fn events_of(good: &[(Delivery, Decoded)]) -> Vec<(uuid::Uuid, &contracts::OrderCreatedV1)> {
    good.iter()
        .map(|(_, d)| {
            let Event::OrderCreatedV1(e) = &d.event;
            (d.message_id, e)
        })
        .collect()
}

/// One `multiple` ack up to the highest delivery tag among `good` and `repeated`.
async fn ack_all(good: &[(Delivery, Decoded)], repeated: &[Delivery]) -> Result<(), lapin::Error> {
    let last = good
        .iter()
        .map(|(d, _)| d)
        .chain(repeated)
        .max_by_key(|d| d.delivery_tag);
    if let Some(last) = last {
        last.ack(BasicAckOptions { multiple: true }).await?;
    }
    Ok(())
}
