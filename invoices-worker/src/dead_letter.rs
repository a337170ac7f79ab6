//! What can never succeed (a malformed message, one the store rejects for good)
//! goes to the dead-letter queue with its reason in a header, and is acked only
//! once the broker confirmed that copy; if it cannot be, the broker dead-letters
//! the original itself.

use std::time::Duration;

use contracts::headers;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicRejectOptions},
    types::{AMQPValue, LongString},
};
use plumbing::publish::{self, Message};

use crate::{store::StoreError, worker::Worker};

impl Worker {
    /// Sends a message that can never succeed to the dead-letter exchange with the
    /// reason in a header, waits for the confirm, then acks the original. If that
    /// publish fails, the original is rejected without requeue so that the broker
    /// dead-letters it itself (with its own `x-death` reason).
    pub(crate) async fn dead_letter(
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

pub(crate) fn reason_of(e: &StoreError) -> String {
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
