//! The worker's SQL: record the message and insert its invoice, atomically.

use contracts::OrderCreatedV1;
use deadpool_postgres::{Pool, PoolError};
use uuid::Uuid;

/// What handling one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// A new invoice was written.
    Invoiced {
        /// Its id.
        invoice_id: Uuid,
    },
    /// The message id was seen before: nothing written (a relay retry or a replay).
    Duplicate,
    /// A new message id, but the order already has an invoice (e.g. an event written
    /// twice under two ids): recorded, no second invoice.
    AlreadyInvoiced,
}

/// A database failure of the worker.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection could be had.
    #[error("no database connection")]
    Pool(#[from] PoolError),
    /// A statement failed.
    #[error("invoice query failed")]
    Query(#[from] tokio_postgres::Error),
}

impl StoreError {
    /// Whether retrying may succeed (the database is down, a deadlock, …).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(e) => plumbing::db::is_transient_pool(e),
            StoreError::Query(e) => plumbing::db::is_transient(e),
        }
    }
}

/// Records the message id and inserts the invoice in ONE statement (one
/// transaction, one round trip). The `processed_messages` insert decides: if the id
/// was there already nothing else happens; the unique order id on `invoices` is a
/// second guard.
const RECORD_AND_INVOICE: &str = "
WITH seen AS (
    INSERT INTO processed_messages (message_id) VALUES ($1)
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
), invoice AS (
    INSERT INTO invoices (id, order_id, message_id, amount_cents, currency, order_created_at)
    SELECT $2, $3, seen.message_id, $4, $5, $6 FROM seen
    ON CONFLICT (order_id) DO NOTHING
    RETURNING id
)
SELECT EXISTS (SELECT 1 FROM seen) AS new_message, (SELECT id FROM invoice) AS invoice_id";

/// Handles one `OrderCreated` event idempotently.
///
/// # Errors
/// [`StoreError`]; see [`StoreError::is_transient`].
pub async fn record_invoice(
    pool: &Pool,
    message_id: Uuid,
    event: &OrderCreatedV1,
) -> Result<Handled, StoreError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(RECORD_AND_INVOICE).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &message_id,
                &Uuid::now_v7(),
                &event.order_id,
                &event.amount_cents,
                &event.currency,
                &event.created_at,
            ],
        )
        .await?;
    let new_message: bool = row.try_get(0)?;
    let invoice_id: Option<Uuid> = row.try_get(1)?;
    Ok(match (new_message, invoice_id) {
        (false, _) => Handled::Duplicate,
        (true, Some(invoice_id)) => Handled::Invoiced { invoice_id },
        (true, None) => Handled::AlreadyInvoiced,
    })
}

/// Checks that the database answers.
///
/// # Errors
/// [`StoreError`] when it does not.
pub async fn ping(pool: &Pool) -> Result<(), StoreError> {
    pool.get().await?.simple_query("SELECT 1").await?;
    Ok(())
}
