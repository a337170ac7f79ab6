//! The outbox relay: publishes the orders database's outbox to RabbitMQ.
//!
//! Runs alone or as a sidecar next to each orders API task; several relays share
//! one outbox safely (claims are row locks held for one batch). A row is marked published
//! only after the broker confirmed it without returning it.

pub mod config;
pub mod floor;
pub mod listener;
pub mod metrics;
pub mod ops;
pub mod provision;
pub mod publisher;
pub mod relay;
pub mod replay;
pub mod startup;
pub mod store;
