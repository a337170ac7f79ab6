//! The invoices worker: an idempotent consumer of `OrderCreated` events that writes
//! exactly one invoice per order, acking only after its transaction committed.

pub mod config;
pub mod dlq;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod worker;
