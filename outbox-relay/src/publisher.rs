//! Publishing claimed rows with publisher confirms.
//!
//! A batch is pipelined: every row is published, then all confirms are awaited
//! together, bounded by a timeout. Each row gets one of three outcomes:
//! confirmed (ack without a returned message), rejected (the broker refused this
//! message: nack, or returned as unroutable — an ack that carries a returned message
//! is a failure, not a success), or lost (the channel failed, so the broker may or
//! may not have it; it is published again under the same message id).

use std::time::{Duration, Instant};

use contracts::{EventType, Topology};
use lapin::{Channel, Connection, options::ConfirmSelectOptions};
use plumbing::{
    broker::{BrokerError, Outbound},
    publish::{Lost, Message, Pending, Rejection},
};
use prometheus_client::metrics::histogram::Histogram;

use crate::store::OutboxRow;

/// What happened to one published row: confirmed (safe to mark published),
/// rejected (record an attempt against the row) or lost (unlock the row so it
/// is published again after reconnecting).
pub use plumbing::publish::Outcome;

/// A confirm-mode channel to the broker, with the exchange declared.
pub struct Publisher {
    connection: Connection,
    channel: Channel,
    topology: Topology,
    confirm_seconds: Option<Histogram>,
}

impl Publisher {
    /// Connects, declares the exchange and enables publisher confirms.
    ///
    /// # Errors
    /// [`BrokerError`] when the broker cannot be reached or refuses a declaration.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self, BrokerError> {
        let connection = plumbing::broker::connect(url, "outbox-relay").await?;
        let channel = connection.create_channel().await?;
        plumbing::broker::declare_exchange(&channel, &topology).await?;
        if let Err(e) = plumbing::broker::restore_binding(&connection, &topology).await {
            // Publishing works without it; events are returned unroutable (and
            // retried) until the worker binds its queue.
            tracing::warn!(error = %e, "cannot bind the invoices queue to the exchange");
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            connection,
            channel,
            topology,
            confirm_seconds: None,
        })
    }

    /// Records each batch's time from its first publish to its last confirm.
    #[must_use]
    pub fn observe_confirms(mut self, histogram: Histogram) -> Self {
        self.confirm_seconds = Some(histogram);
        self
    }

    /// Whether the channel is still usable.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Publishes `rows` and waits for their confirms; returns one outcome per row,
    /// in order. `extra_headers` are added to every message (e.g. a replay marker).
    pub async fn publish_batch(
        &self,
        rows: &[OutboxRow],
        confirm_timeout: Duration,
        extra_headers: &[(&'static str, String)],
    ) -> Vec<Outcome> {
        self.start(rows, extra_headers, confirm_timeout)
            .await
            .settle(confirm_timeout)
            .await
    }

    /// Publishes `rows` without waiting for the confirms: the broker works on them
    /// while the caller does something else (records the previous batch, claims the
    /// next one). [`InFlight::settle`] collects the outcomes. Writing the batch may
    /// take at most `write_timeout` (a broker that blocks publishers, a stalled
    /// connection); rows not written by then are lost.
    pub async fn start(
        &self,
        rows: &[OutboxRow],
        extra_headers: &[(&'static str, String)],
        write_timeout: Duration,
    ) -> InFlight {
        let started = Instant::now();
        let span = self.batch_span(rows);
        let messages = rows.iter().map(|row| {
            let event_type = EventType::from_name(&row.event_type).ok_or_else(|| {
                Rejection::Invalid(format!(
                    "unknown event type {:?}: no routing key",
                    row.event_type
                ))
            })?;
            Ok(Message {
                exchange: &self.topology.exchange,
                routing_key: event_type.routing_key(),
                body: row.payload.as_bytes(),
                properties: outbound(row, extra_headers).properties(),
            })
        });
        InFlight {
            pending: plumbing::publish::start(&self.channel, messages, write_timeout).await,
            span,
            started,
            confirm_seconds: self.confirm_seconds.clone(),
        }
    }

    /// The producer span of a batch (OpenTelemetry messaging conventions): the
    /// relay's own trace, linked to the trace of each event's HTTP request, whose
    /// context travels on in the message headers.
    fn batch_span(&self, rows: &[OutboxRow]) -> tracing::Span {
        let exchange = &self.topology.exchange;
        let span = tracing::info_span!(
            "messaging.publish",
            messaging.system = "rabbitmq",
            messaging.operation.type = "send",
            messaging.operation.name = "publish",
            messaging.destination.name = %exchange,
            messaging.batch.message_count = rows.len(),
            otel.name = %format!("send {exchange}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            outbox.confirmed = tracing::field::Empty,
            outbox.not_confirmed = tracing::field::Empty,
        );
        for row in rows {
            let header = |name: &str| row.headers.get(name).and_then(serde_json::Value::as_str);
            plumbing::telemetry::link(
                &span,
                header(contracts::headers::TRACEPARENT),
                header(contracts::headers::TRACESTATE),
            );
        }
        span
    }

    /// Closes the channel and connection politely (after the last confirms).
    pub async fn close(self) {
        let _ = self.channel.close(200, "relay stopping".into()).await;
        let _ = self.connection.close(200, "relay stopping".into()).await;
    }
}

/// A published batch whose confirms have not been collected yet.
pub struct InFlight {
    pending: Pending,
    /// The batch's span, ended when the confirms are in.
    span: tracing::Span,
    started: Instant,
    confirm_seconds: Option<Histogram>,
}

impl InFlight {
    /// Waits (at most `confirm_timeout`) for the confirms; one outcome per row, in
    /// order. Rows without a confirm in time are [`Outcome::Lost`].
    pub async fn settle(self, confirm_timeout: Duration) -> Vec<Outcome> {
        let Self {
            pending,
            span,
            started,
            confirm_seconds,
        } = self;
        let outcomes = pending.settle(confirm_timeout).await;
        let confirmed = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Confirmed))
            .count();
        span.record("outbox.confirmed", confirmed);
        span.record("outbox.not_confirmed", outcomes.len() - confirmed);
        if confirmed < outcomes.len() {
            span.record("otel.status_code", "ERROR");
        }
        // A batch that could not even be written has no confirm time.
        let written = !outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Lost(Lost::WriteTimeout(_))));
        if let Some(histogram) = confirm_seconds.filter(|_| written && !outcomes.is_empty()) {
            histogram.observe(started.elapsed().as_secs_f64());
        }
        outcomes
    }
}

/// The AMQP envelope of a row.
fn outbound<'a>(row: &'a OutboxRow, extra: &[(&'static str, String)]) -> Outbound<'a> {
    let mut headers: Vec<(&str, String)> = row
        .headers
        .as_object()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    headers.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    Outbound {
        message_id: row.message_id,
        event_type: &row.event_type,
        schema_version: i64::from(row.schema_version),
        timestamp: u64::try_from(row.created_at.unix_timestamp()).unwrap_or(0),
        headers,
    }
}
