//! Valid `OrderCreated` messages, as a test or a benchmark publishes them.

use contracts::{OrderCreatedV1, headers};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};

/// The test customer ([`crate::auth::TEST_CUSTOMER`], whose tokens tests
/// send) as a customer id: the customer of the events [`order_created`] makes,
/// and of orders tests write without naming one.
#[must_use]
pub fn customer() -> contracts::CustomerId {
    contracts::CustomerId::try_from(crate::auth::TEST_CUSTOMER).unwrap()
}

/// A new order's event with a fresh order id, as an API of today writes it
/// (revision 1.1: with its customer).
#[must_use]
pub fn order_created(cents: i64) -> OrderCreatedV1 {
    OrderCreatedV1 {
        customer_id: Some(customer()),
        ..order_created_v1_0(cents)
    }
}

/// A new order's event as an API from before customers wrote it (revision 1.0:
/// no `customer_id` on the wire).
#[must_use]
pub fn order_created_v1_0(cents: i64) -> OrderCreatedV1 {
    OrderCreatedV1 {
        order_id: uuid::Uuid::now_v7(),
        amount_cents: cents,
        currency: contracts::Currency::BRL,
        created_at: time::OffsetDateTime::now_utc(),
        customer_id: None,
    }
}

/// The AMQP properties the relay sends with an `OrderCreated` v1 event.
#[must_use]
pub fn properties(message_id: &str) -> BasicProperties {
    let mut table = FieldTable::default();
    table.insert(headers::SCHEMA_VERSION.into(), AMQPValue::LongLongInt(1));
    BasicProperties::default()
        .with_message_id(message_id.into())
        .with_type("OrderCreated".into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(table)
}

/// The JSON body of an event.
#[must_use]
pub fn body(event: &OrderCreatedV1) -> Vec<u8> {
    serde_json::to_vec(event).unwrap_or_default()
}
