//! The dead-letter queue, for operators: list what is there and why, and send
//! messages back after the cause was fixed. Requeued messages keep their message
//! ids, so whatever was already invoiced is skipped.

use std::time::Duration;

use contracts::{Topology, headers};
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use plumbing::{
    broker::{self, BrokerError, header_str, short_string},
    publish::{self, Message, Unconfirmed},
};
use uuid::Uuid;

/// A dead-lettered message, as `dlq list` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    /// Its message id, if it has one.
    pub message_id: Option<String>,
    /// Its type property.
    pub event_type: Option<String>,
    /// Why the worker dead-lettered it (`x-dead-letter-reason`), or why the broker
    /// did (`x-death`: `delivery_limit`, `rejected`, …).
    pub reason: String,
    /// Size of the body in bytes.
    pub size: usize,
    /// The start of the body, as text.
    pub body: String,
}

/// Why a DLQ command failed.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Connecting failed.
    #[error(transparent)]
    Connect(#[from] BrokerError),
    /// The broker failed.
    #[error("broker error: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker did not confirm a requeued message; it stays in the DLQ.
    #[error("the broker did not confirm message {message_id:?}; it stays in the dead-letter queue")]
    NotConfirmed {
        /// The message's id, if it has one.
        message_id: Option<String>,
        /// Why it was not confirmed.
        #[source]
        reason: Unconfirmed,
    },
}

/// Longest wait for each step of requeueing one message (its publish, its
/// confirm): a broker that stops answering fails the command instead of hanging it.
const REQUEUE_TIMEOUT: Duration = Duration::from_secs(30);

/// Which dead-lettered messages to requeue.
#[derive(Debug, Clone)]
pub enum Selection {
    /// All of them.
    All,
    /// Those with these message ids.
    Messages(Vec<Uuid>),
}

/// Lists up to `limit` dead-lettered messages without removing them.
///
/// # Errors
/// [`DlqError`] when the broker cannot be used.
pub async fn list(
    url: &str,
    topology: &Topology,
    limit: usize,
) -> Result<Vec<DeadLetter>, DlqError> {
    let connection = broker::connect(url, "invoices-worker dlq").await?;
    let channel = connection.create_channel().await?;
    broker::declare_topology(&channel, topology).await?;
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(message) = get(&channel, topology).await? else {
            break;
        };
        out.push(describe(&message));
    }
    // Nothing was acked: closing the channel puts every message back.
    let _ = channel.close(200, "listed".into()).await;
    let _ = connection.close(200, "listed".into()).await;
    Ok(out)
}

/// Publishes the selected messages back to the invoices queue (with confirms,
/// without their dead-letter headers) and removes them from the DLQ. Returns how
/// many.
///
/// # Errors
/// [`DlqError`]; a message not confirmed stays in the DLQ.
pub async fn requeue(
    url: &str,
    topology: &Topology,
    selection: &Selection,
) -> Result<usize, DlqError> {
    let connection = broker::connect(url, "invoices-worker dlq").await?;
    let channel = connection.create_channel().await?;
    broker::declare_topology(&channel, topology).await?;
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let requeue_key = topology.requeue_routing_key();
    let mut requeued = 0;
    while let Some(message) = get(&channel, topology).await? {
        let id = message
            .properties
            .message_id()
            .as_ref()
            .map(ToString::to_string);
        let selected = match selection {
            Selection::All => true,
            Selection::Messages(ids) => id
                .as_deref()
                .and_then(|m| Uuid::try_parse(m).ok())
                .is_some_and(|m| ids.contains(&m)),
        };
        if !selected {
            continue;
        }
        // Straight back to the invoices queue, through the dead-letter exchange
        // (the worker's broker user may not publish to the events' exchange).
        let requeued_message = Message {
            exchange: &topology.dead_letter_exchange,
            routing_key: &requeue_key,
            body: &message.data,
            properties: without_dead_letter_headers(&message.properties),
        };
        publish::publish_confirmed(&publisher, requeued_message, REQUEUE_TIMEOUT)
            .await
            .into_result()
            .map_err(|reason| DlqError::NotConfirmed {
                message_id: id,
                reason,
            })?;
        message.ack(BasicAckOptions::default()).await?;
        requeued += 1;
    }
    let _ = channel.close(200, "requeued".into()).await;
    let _ = connection.close(200, "requeued".into()).await;
    Ok(requeued)
}

async fn get(channel: &Channel, topology: &Topology) -> Result<Option<Delivery>, lapin::Error> {
    Ok(channel
        .basic_get(
            short_string(&topology.dead_letter_queue),
            BasicGetOptions { no_ack: false },
        )
        .await?
        .map(|m| m.delivery))
}

/// `text` with every control character (C0, DEL, C1: escape sequences among
/// them) written as a visible `\u{..}` escape: dead-lettered messages come from
/// anywhere, and what `dlq list` prints must not drive the operator's terminal.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// A dead-lettered delivery as `dlq list` shows it: every text taken from the
/// message is made [`printable`].
fn describe(d: &Delivery) -> DeadLetter {
    let reason = header_str(&d.properties, headers::DEAD_LETTER_REASON)
        .map(str::to_owned)
        .or_else(|| {
            death_reason(&d.properties).map(|r| format!("dead-lettered by the broker: {r}"))
        })
        .unwrap_or_else(|| "unknown".into());
    let text = String::from_utf8_lossy(&d.data);
    DeadLetter {
        message_id: d
            .properties
            .message_id()
            .as_ref()
            .map(|id| printable(id.as_str())),
        event_type: d
            .properties
            .kind()
            .as_ref()
            .map(|kind| printable(kind.as_str())),
        reason: printable(&reason),
        size: d.data.len(),
        body: printable(&text.chars().take(200).collect::<String>()),
    }
}

/// The `reason` of the first `x-death` entry the broker added.
fn death_reason(p: &BasicProperties) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = p.headers().as_ref()?.inner().get("x-death")? else {
        return None;
    };
    deaths.as_slice().iter().find_map(|d| match d {
        AMQPValue::FieldTable(t) => match t.inner().get("reason")? {
            AMQPValue::LongString(s) => Some(s.to_string()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    })
}

fn without_dead_letter_headers(p: &BasicProperties) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(h) = p.headers() {
        for (k, v) in h {
            if k.as_str() != headers::DEAD_LETTER_REASON
                && !k.as_str().starts_with("x-death")
                && !k.as_str().starts_with("x-first-death")
                && !k.as_str().starts_with("x-last-death")
            {
                table.insert(k.clone(), v.clone());
            }
        }
    }
    p.clone().with_headers(table)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_shown_escaped_not_sent_to_the_terminal() {
        // Clear screen (ESC), a C1 CSI, a bell, DEL and a newline.
        let hostile = "a\u{1b}[2J\u{9b}31mb\u{7}\u{7f}\nc";

        let shown = printable(hostile);

        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert_eq!(shown, "a\\u{1b}[2J\\u{9b}31mb\\u{7}\\u{7f}\\u{a}c");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        let text = r#"{"amount": "29.99", "note": "café ✓"}"#;

        assert_eq!(printable(text), text);
    }
}
