//! The wire format shared by `orders-api`, `outbox-relay` and `invoices-worker`.
//!
//! One place defines what travels between the services: the names of the exchange,
//! queues and routing keys, the AMQP header names, the events and their decoding.
//! This crate does no I/O; the services translate to and from AMQP with these types.

pub mod currency;
pub mod customer;
pub mod event;
pub mod headers;
pub mod topology;

pub use currency::{Currency, CurrencyError};
pub use customer::{CustomerId, CustomerIdError};
pub use event::{DecodeError, Event, EventType, InboundMessage, OrderCreatedV1};
pub use topology::Topology;

/// `content_type` of every message the pipeline publishes.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Aggregate type of order events, as stored in the outbox.
pub const AGGREGATE_ORDER: &str = "order";
