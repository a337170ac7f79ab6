//! The invoices worker: an idempotent consumer of `OrderCreated` events that writes
//! exactly one invoice per order, acking only after its transaction committed.

pub mod batch;
pub mod config;
pub mod dead_letter;
pub mod dlq;
pub mod metrics;
pub mod queue_depth;
pub mod session;
pub mod startup;
pub mod store;
pub mod worker;
