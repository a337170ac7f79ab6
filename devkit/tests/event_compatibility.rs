//! The `OrderCreated` contract across a rolling upgrade: every revision of
//! version 1 decodes in today's decoder, today's events decode in the 1.0
//! decoder (`devkit::legacy`, frozen), and an incompatible change is refused by
//! both instead of being misread.

use contracts::{CustomerId, Event, InboundMessage, OrderCreatedV1};

const MESSAGE_ID: &str = "0190f3a6-0000-7000-8000-000000000001";

/// An `OrderCreated` event of revision 1.0, byte for byte as the API wrote it
/// before orders had customers.
const V1_0: &str = r#"{"order_id":"0190f3a6-7c3e-7b4a-9d2e-3f1a2b3c4d5e","amount_cents":2999,"currency":"BRL","created_at":"2026-11-27T12:34:56.789Z"}"#;
/// The same order, revision 1.1 (what the API writes now).
const V1_1: &str = r#"{"order_id":"0190f3a6-7c3e-7b4a-9d2e-3f1a2b3c4d5e","amount_cents":2999,"currency":"BRL","created_at":"2026-11-27T12:34:56.789Z","customer_id":"auth0|5f7c8ec7"}"#;

fn message(body: &str, version: i64) -> InboundMessage<'_> {
    InboundMessage {
        message_id: Some(MESSAGE_ID),
        event_type: Some("OrderCreated"),
        schema_version: Some(Ok(version)),
        content_type: Some("application/json"),
        body: body.as_bytes(),
    }
}

fn decode_today(body: &str, version: i64) -> Result<OrderCreatedV1, &'static str> {
    match message(body, version).decode() {
        Ok(decoded) => {
            let Event::OrderCreatedV1(event) = decoded.event;
            Ok(event)
        }
        Err(e) => Err(e.code()),
    }
}

#[test]
fn the_wire_format_of_1_1_is_pinned() {
    let event = decode_today(V1_1, 1).unwrap();
    assert_eq!(serde_json::to_string(&event).unwrap(), V1_1);
    // An event without a customer is still written exactly as 1.0 was.
    let old = OrderCreatedV1 {
        customer_id: None,
        ..event
    };
    assert_eq!(serde_json::to_string(&old).unwrap(), V1_0);
}

/// Old events reaching the new worker: an event written before the upgrade
/// (still in the outbox, the queue, or replayed) decodes, without a customer.
#[test]
fn events_of_1_0_decode_in_todays_decoder() {
    let event = decode_today(V1_0, 1).unwrap();
    assert_eq!(event.customer_id, None);
    assert_eq!(event.amount_cents, 2999);
}

/// New events reaching the previous worker: the 1.0 decoder reads a 1.1 event
/// (it ignores `customer_id`) with the same values today's decoder reads.
#[test]
fn events_of_1_1_decode_in_the_1_0_decoder() {
    let today = decode_today(V1_1, 1).unwrap();
    assert_eq!(
        today.customer_id,
        Some(CustomerId::try_from("auth0|5f7c8ec7").unwrap())
    );
    let old = devkit::legacy::decode(&message(V1_1, 1)).unwrap();
    assert_eq!(old.message_id.to_string(), MESSAGE_ID);
    assert_eq!(old.order_id, today.order_id);
    assert_eq!(old.amount_cents, today.amount_cents);
    assert_eq!(old.currency, today.currency.as_str());
    assert_eq!(old.created_at, today.created_at);
    // And what today's producers make, with or without a customer.
    for event in [
        devkit::messages::order_created(1234),
        devkit::messages::order_created_v1_0(1234),
    ] {
        let body = serde_json::to_string(&event).unwrap();
        let old = devkit::legacy::decode(&message(&body, 1)).unwrap();
        assert_eq!(old.order_id, event.order_id);
        assert_eq!(decode_today(&body, 1).unwrap(), event);
    }
}

/// A change that is not additive is not slipped into version 1: both decoders
/// refuse a body whose field was renamed (so this suite fails on such a change),
/// and a new major version is dead-lettered as unsupported by both, loudly,
/// rather than read as something it is not.
#[test]
fn an_incompatible_change_is_refused_by_every_decoder() {
    let renamed = V1_1.replace("amount_cents", "amount");
    assert_eq!(decode_today(&renamed, 1).unwrap_err(), "malformed-body");
    assert_eq!(
        devkit::legacy::decode(&message(&renamed, 1)).unwrap_err(),
        "malformed-body"
    );
    assert_eq!(decode_today(V1_1, 2).unwrap_err(), "unsupported-version");
    assert_eq!(
        devkit::legacy::decode(&message(V1_1, 2)).unwrap_err(),
        "unsupported-version"
    );
    // A customer id that breaks the contract is refused by the decoder that
    // knows the field (the 1.0 one never looks at it).
    let blank = V1_1.replace("auth0|5f7c8ec7", "");
    assert_eq!(decode_today(&blank, 1).unwrap_err(), "invalid-event");
}
