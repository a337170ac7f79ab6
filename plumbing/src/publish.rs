//! Publishing with publisher confirms, the one way every component sends a
//! message it must not lose: each message is `mandatory`, its confirm is awaited
//! (bounded), and it comes out as an [`Outcome`] that names every case. An ack
//! that carries a returned message (no queue bound for the routing key) is a
//! failure, not a success: the broker confirmed that it dropped the message.
//!
//! Publishing is split in two steps so that a batch can be pipelined: [`start`]
//! writes every message and returns the [`Pending`] confirms, and
//! [`Pending::settle`] waits for them while the caller does other work in
//! between. [`publish_confirmed`] does both for one message.

use std::time::Duration;

use lapin::{
    BasicProperties, Channel, Confirmation, PublisherConfirm, options::BasicPublishOptions,
};

use crate::broker::short_string;

/// A message to publish on a channel in confirm mode.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The exchange (`""`: the default exchange, routing by queue name).
    pub exchange: &'a str,
    /// The routing key.
    pub routing_key: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// Its properties and headers.
    pub properties: BasicProperties,
}

/// What became of one message.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The broker acknowledged it and did not return it: it is in a queue.
    Confirmed,
    /// The broker refused it, or it could not be sent as it is: sending the
    /// same message again will fail the same way until something changes.
    Rejected(Rejection),
    /// The channel failed or the confirm did not come in time: the broker may
    /// or may not have it, so it must be sent again (under the same message id).
    Lost(Lost),
}

impl Outcome {
    /// `Ok` when confirmed, otherwise why not.
    ///
    /// # Errors
    /// [`Unconfirmed`]: the rejection or the loss.
    pub fn into_result(self) -> Result<(), Unconfirmed> {
        match self {
            Outcome::Confirmed => Ok(()),
            Outcome::Rejected(rejection) => Err(Unconfirmed::Rejected(rejection)),
            Outcome::Lost(lost) => Err(Unconfirmed::Lost(lost)),
        }
    }
}

/// Why the broker did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Acknowledged, but returned as unroutable: no queue is bound for its
    /// routing key.
    #[error(
        "returned by the broker: {reply_code} {reply_text} (no queue bound for routing key {routing_key})"
    )]
    Returned {
        /// The broker's reply code (312 `NO_ROUTE`).
        reply_code: u16,
        /// The broker's reply text.
        reply_text: String,
        /// The routing key nothing is bound for.
        routing_key: String,
    },
    /// Negatively acknowledged: the broker could not store it.
    #[error("nacked by the broker{}", reply_suffix(.reply))]
    Nacked {
        /// The broker's reply code and text, when it sent the message back.
        reply: Option<(u16, String)>,
    },
    /// Never sent: the caller could not make a message of it (the reason).
    #[error("{0}")]
    Invalid(String),
}

fn reply_suffix(reply: &Option<(u16, String)>) -> String {
    reply
        .as_ref()
        .map(|(code, text)| format!(": {code} {text}"))
        .unwrap_or_default()
}

/// Why a message's fate is unknown.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Lost {
    /// Writing the messages took longer than allowed (a broker that blocks
    /// publishers, a stalled connection).
    #[error("publishing took longer than {0:?}")]
    WriteTimeout(Duration),
    /// Writing this message or an earlier one of the batch failed: the channel
    /// is gone.
    #[error("publish failed")]
    Publish(#[source] lapin::Error),
    /// No confirm came in time.
    #[error("no confirm within {0:?}")]
    ConfirmTimeout(Duration),
    /// The channel failed before the confirm came.
    #[error("channel failed before the confirm")]
    Channel(#[source] lapin::Error),
    /// The channel is not in confirm mode (a bug: nothing can be known).
    #[error("publisher confirms not enabled")]
    ConfirmsOff,
}

/// Why a message was not confirmed (see [`Outcome::into_result`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unconfirmed {
    /// The broker refused it.
    #[error(transparent)]
    Rejected(Rejection),
    /// Its fate is unknown.
    #[error(transparent)]
    Lost(Lost),
}

/// Published messages whose confirms have not been collected yet.
#[must_use = "the confirms decide what became of the messages"]
pub struct Pending {
    /// One per message; a placeholder where a confirm is awaited.
    outcomes: Vec<Outcome>,
    /// The awaited confirms, by position.
    waiting: Vec<(usize, PublisherConfirm)>,
}

/// Publishes `messages` (`mandatory`, in order) on `channel`, which must be in
/// confirm mode, and returns their pending confirms, one per item. An `Err` item
/// is not sent: it comes out [`Outcome::Rejected`]. Writing may take at most
/// `write_timeout`; messages not written by then are [`Lost::WriteTimeout`], and
/// once a write fails the channel is gone, so that message and every later one
/// are [`Lost::Publish`].
pub async fn start<'a>(
    channel: &Channel,
    messages: impl IntoIterator<Item = Result<Message<'a>, Rejection>>,
    write_timeout: Duration,
) -> Pending {
    let mut outcomes = Vec::new();
    let mut indices = Vec::new();
    let mut publishes = Vec::new();
    for message in messages {
        match message {
            Err(rejection) => outcomes.push(Outcome::Rejected(rejection)),
            Ok(message) => {
                indices.push(outcomes.len());
                outcomes.push(Outcome::Lost(Lost::WriteTimeout(write_timeout)));
                publishes.push(channel.basic_publish(
                    short_string(message.exchange),
                    short_string(message.routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    message.body,
                    message.properties,
                ));
            }
        }
    }
    // Each publish waits until the I/O thread has written its frames. Driving
    // them together (polled in order, so frames and delivery tags keep the
    // messages' order) lets a batch go out in a few writes instead of one
    // cross-thread round trip per message.
    let Ok(results) =
        tokio::time::timeout(write_timeout, futures::future::join_all(publishes)).await
    else {
        return Pending {
            outcomes,
            waiting: Vec::new(),
        };
    };
    let mut waiting = Vec::with_capacity(results.len());
    let mut failed: Option<lapin::Error> = None;
    for (i, result) in indices.into_iter().zip(results) {
        match (result, &failed) {
            (Ok(confirm), None) => waiting.push((i, confirm)),
            (Ok(_), Some(error)) => outcomes[i] = Outcome::Lost(Lost::Publish(error.clone())),
            (Err(error), _) => {
                outcomes[i] = Outcome::Lost(Lost::Publish(error.clone()));
                failed.get_or_insert(error);
            }
        }
    }
    Pending { outcomes, waiting }
}

impl Pending {
    /// Waits (at most `confirm_timeout`) for the confirms; one outcome per
    /// message, in order. Messages without a confirm by then are
    /// [`Lost::ConfirmTimeout`].
    pub async fn settle(self, confirm_timeout: Duration) -> Vec<Outcome> {
        let Self {
            mut outcomes,
            waiting,
        } = self;
        let (indices, confirms): (Vec<usize>, Vec<_>) = waiting.into_iter().unzip();
        for &i in &indices {
            outcomes[i] = Outcome::Lost(Lost::ConfirmTimeout(confirm_timeout));
        }
        if let Ok(results) =
            tokio::time::timeout(confirm_timeout, futures::future::join_all(confirms)).await
        {
            for (i, result) in indices.into_iter().zip(results) {
                outcomes[i] = outcome_of(result);
            }
        }
        outcomes
    }
}

/// Publishes one message and waits for its confirm, each step bounded by
/// `timeout` (see [`start`]).
pub async fn publish_confirmed(
    channel: &Channel,
    message: Message<'_>,
    timeout: Duration,
) -> Outcome {
    let mut outcomes = start(channel, [Ok(message)], timeout)
        .await
        .settle(timeout)
        .await;
    outcomes
        .pop()
        .unwrap_or(Outcome::Lost(Lost::WriteTimeout(timeout)))
}

/// The outcome a confirm stands for.
fn outcome_of(result: lapin::Result<Confirmation>) -> Outcome {
    match result {
        Ok(Confirmation::Ack(None)) => Outcome::Confirmed,
        Ok(Confirmation::Ack(Some(returned))) => Outcome::Rejected(Rejection::Returned {
            reply_code: returned.reply_code,
            reply_text: returned.reply_text.to_string(),
            routing_key: returned.delivery.routing_key.to_string(),
        }),
        Ok(Confirmation::Nack(returned)) => Outcome::Rejected(Rejection::Nacked {
            reply: returned.map(|r| (r.reply_code, r.reply_text.to_string())),
        }),
        Ok(Confirmation::NotRequested) => Outcome::Lost(Lost::ConfirmsOff),
        Err(e) => Outcome::Lost(Lost::Channel(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_read_as_before() {
        let returned = Rejection::Returned {
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
            routing_key: "order.created".into(),
        };
        assert_eq!(
            returned.to_string(),
            "returned by the broker: 312 NO_ROUTE (no queue bound for routing key order.created)"
        );
        let nacked = Rejection::Nacked { reply: None };
        assert_eq!(nacked.to_string(), "nacked by the broker");
        let nacked = Rejection::Nacked {
            reply: Some((406, "PRECONDITION_FAILED".into())),
        };
        assert_eq!(
            nacked.to_string(),
            "nacked by the broker: 406 PRECONDITION_FAILED"
        );
    }

    #[test]
    fn an_ack_with_a_returned_message_is_a_rejection() {
        assert!(matches!(
            outcome_of(Ok(Confirmation::Ack(None))),
            Outcome::Confirmed
        ));
        assert!(matches!(
            outcome_of(Ok(Confirmation::Nack(None))),
            Outcome::Rejected(Rejection::Nacked { reply: None })
        ));
        assert!(matches!(
            outcome_of(Ok(Confirmation::NotRequested)),
            Outcome::Lost(Lost::ConfirmsOff)
        ));
    }
}
