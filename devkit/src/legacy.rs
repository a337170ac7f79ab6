//! The decoder of `OrderCreated` 1.0, frozen as the invoices worker shipped it
//! before the event gained `customer_id` (1.1): the "previous worker" of a
//! rolling upgrade. It is a copy on purpose and must never be updated with the
//! contract: tests check that what today's producers publish still decodes here.

use contracts::InboundMessage;
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

/// What the 1.0 worker read from an `OrderCreated` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderCreatedV1_0 {
    pub message_id: Uuid,
    pub order_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    pub created_at: OffsetDateTime,
}

/// The 1.0 body, as its decoder declared it (unknown fields ignored, as serde does
/// unless told otherwise).
#[derive(Deserialize)]
struct Body {
    order_id: Uuid,
    amount_cents: i64,
    currency: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
}

/// Decodes as the 1.0 worker did; `Err` is the dead-letter reason code it gave.
///
/// # Errors
/// The reason code the 1.0 worker would have dead-lettered the message with.
pub fn decode(m: &InboundMessage<'_>) -> Result<OrderCreatedV1_0, &'static str> {
    let message_id = m
        .message_id
        .and_then(|id| Uuid::try_parse(id).ok())
        .ok_or("invalid-message-id")?;
    if m.event_type != Some("OrderCreated") {
        return Err("unknown-type");
    }
    match m.schema_version {
        Some(Ok(1)) => {}
        Some(Ok(_)) => return Err("unsupported-version"),
        _ => return Err("invalid-schema-version"),
    }
    if let Some(ct) = m.content_type {
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err("wrong-content-type");
        }
    }
    if m.body.len() > 64 * 1024 {
        return Err("oversized");
    }
    let body: Body = serde_json::from_slice(m.body).map_err(|_| "malformed-body")?;
    let currency_ok =
        body.currency.len() == 3 && body.currency.bytes().all(|b| b.is_ascii_uppercase());
    if !currency_ok || body.amount_cents <= 0 || body.amount_cents > 100_000_000 {
        return Err("invalid-event");
    }
    Ok(OrderCreatedV1_0 {
        message_id,
        order_id: body.order_id,
        amount_cents: body.amount_cents,
        currency: body.currency,
        created_at: body.created_at,
    })
}
