//! A batch's guarantee: its deliveries are stored in one transaction and acked
//! with one `multiple` ack only after that transaction committed. Transient
//! errors are retried in place, then the batch is handed back to the queue (its
//! delivery limit ends any loop); a batch that fails permanently is bisected into
//! single messages so that only the one at fault is dead-lettered. Each delivery
//! gets its consumer span, continuing the order's trace.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use contracts::{Event, event::Decoded, headers};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};
use plumbing::broker;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    dead_letter::reason_of,
    store::{self, Handled},
    worker::Worker,
};

impl Worker {
    /// Handles a batch: malformed deliveries are dead-lettered, the rest are stored
    /// in one transaction and acknowledged (one `multiple` ack) only after it
    /// committed. Returns whether every delivery of the batch was settled (acked,
    /// rejected or handed back); `false` only when shutdown interrupted a retry.
    /// Errors are channel failures: unacknowledged deliveries stay with the
    /// broker, which redelivers them.
    pub(crate) async fn handle_batch(
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
        #[cfg(feature = "fault-injection")]
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
    #[cfg(feature = "fault-injection")]
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
