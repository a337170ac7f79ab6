//! The relay's SQL on the outbox, by caller: the claim (the relay's hot path),
//! the operator commands, and replays. Every statement sits next to the function
//! that runs it; the row type and the error are shared.

use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

pub use claim::{Blocked, Claim, claim_batch, lowest_unpublished};
pub use operator::*;
pub use replay::*;

/// A claimed outbox row, ready to publish.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Outbox id.
    pub id: i64,
    /// Message id (the consumer's deduplication key).
    pub message_id: Uuid,
    /// Aggregate id.
    pub aggregate_id: Uuid,
    /// Event type name.
    pub event_type: String,
    /// Schema version.
    pub schema_version: i32,
    /// Event body: the JSON text as stored, sent as it is.
    pub payload: String,
    /// Extra headers (trace context, correlation id).
    pub headers: Value,
    /// When the event was written.
    pub created_at: OffsetDateTime,
    /// Failed publish attempts so far.
    pub attempts: i32,
}

/// The columns [`OutboxRow::from_row`] reads, in its order, of `outbox o`.
macro_rules! row_columns {
    () => {
        "o.id, o.message_id, o.aggregate_id, o.event_type, o.schema_version, \
         o.payload::text, o.headers, o.created_at, o.attempts"
    };
}

// After the macro: modules see only the macros defined above them.
mod claim;
mod operator;
mod replay;

impl OutboxRow {
    /// Reads a row selected with `row_columns!()`.
    fn from_row(r: &tokio_postgres::Row) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            id: r.try_get(0)?,
            message_id: r.try_get(1)?,
            aggregate_id: r.try_get(2)?,
            event_type: r.try_get(3)?,
            schema_version: r.try_get(4)?,
            payload: r.try_get(5)?,
            headers: r.try_get(6)?,
            created_at: r.try_get(7)?,
            attempts: r.try_get(8)?,
        })
    }
}

/// A database failure of the relay: the store error every service has.
pub use plumbing::db::StoreError;
