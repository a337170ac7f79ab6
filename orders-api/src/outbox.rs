//! The outbox row that goes with each new order: the `OrderCreated` event, its
//! message id, and the headers of the request that caused it.

use contracts::{AGGREGATE_ORDER, Event, OrderCreatedV1, headers};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::domain::Order;

/// The request context copied into the event's headers, so that the trace and the
/// correlation id survive the trip through the outbox and the broker.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// `x-request-id` of the request.
    pub request_id: Option<String>,
    /// W3C `traceparent` of the request, if it carried a valid one.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that goes with it.
    pub tracestate: Option<String>,
}

/// An outbox row ready to insert.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Message id: the consumer's deduplication key.
    pub message_id: Uuid,
    /// Aggregate type (`order`).
    pub aggregate_type: &'static str,
    /// Event type name.
    pub event_type: &'static str,
    /// Schema version.
    pub schema_version: i32,
    /// JSON body of the event.
    pub payload: Value,
    /// Headers to send with it.
    pub headers: Value,
}

impl OutboxEvent {
    /// The `OrderCreated` event of a new order.
    #[must_use]
    pub fn order_created(order: &Order, context: &RequestContext) -> Self {
        let event = Event::OrderCreatedV1(OrderCreatedV1 {
            order_id: order.id,
            amount_cents: order.amount.cents(),
            currency: order.currency,
            created_at: order.created_at,
            customer_id: Some(order.customer_id.clone()),
        });
        let mut headers = Map::new();
        for (name, value) in [
            (headers::CORRELATION_ID, &context.request_id),
            (headers::TRACEPARENT, &context.traceparent),
            (headers::TRACESTATE, &context.tracestate),
        ] {
            if let Some(v) = value {
                headers.insert(name.to_owned(), Value::String(v.clone()));
            }
        }
        Self {
            message_id: Uuid::now_v7(),
            aggregate_type: AGGREGATE_ORDER,
            event_type: event.event_type().as_str(),
            // Schema versions are small; the column is an integer.
            schema_version: i32::try_from(event.schema_version()).unwrap_or(i32::MAX),
            payload: event.to_json(),
            headers: Value::Object(headers),
        }
    }
}

/// Whether `value` is a syntactically valid W3C `traceparent` (version 00).
#[must_use]
pub fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    parts.len() == 4
        && hex(parts[0], 2)
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1] != "00000000000000000000000000000000"
        && parts[2] != "0000000000000000"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Amount;

    #[test]
    fn order_created_event_carries_the_order_and_context() {
        let order = Order {
            id: Uuid::nil(),
            customer_id: contracts::CustomerId::try_from("customer-7").unwrap(),
            amount: Amount::from_cents(2999).unwrap(),
            currency: contracts::Currency::BRL,
            created_at: time::macros::datetime!(2026-11-27 10:00 UTC),
        };
        let ctx = RequestContext {
            request_id: Some("req-1".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            tracestate: None,
        };
        let e = OutboxEvent::order_created(&order, &ctx);
        assert_eq!(e.event_type, "OrderCreated");
        assert_eq!(e.schema_version, 1);
        assert_eq!(e.payload["amount_cents"], 2999);
        assert_eq!(e.payload["customer_id"], "customer-7");
        assert_eq!(e.headers["x-correlation-id"], "req-1");
        assert!(e.headers.get("tracestate").is_none());
    }

    #[test]
    fn traceparent_validation() {
        assert!(is_valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_valid_traceparent("00-xyz-b7ad6b7169203331-01"));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-b7ad6b7169203331-01"
        ));
        assert!(!is_valid_traceparent(""));
    }
}
