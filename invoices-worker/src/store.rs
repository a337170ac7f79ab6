//! The worker's SQL: record the message and insert its invoice, atomically.

use contracts::OrderCreatedV1;
use deadpool_postgres::Pool;
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

/// A database failure of the worker: the store error every service has.
pub use plumbing::db::StoreError;

/// Records the message ids and inserts the invoices of a whole batch in ONE
/// statement (one transaction, one round trip). For each message, the
/// `processed_messages` insert decides: if its id was there already nothing else
/// happens; the unique order id on `invoices` is a second guard.
const RECORD_AND_INVOICE: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[],
                         $6::timestamptz[], $7::text[])
        AS t(message_id, invoice_id, order_id, amount_cents, currency, order_created_at,
             customer_id)
), seen AS (
    INSERT INTO processed_messages (message_id)
    SELECT message_id FROM input
    ON CONFLICT (message_id) DO NOTHING
    RETURNING message_id
), invoice AS (
    INSERT INTO invoices (id, order_id, message_id, amount_cents, currency, order_created_at,
                          customer_id)
    SELECT input.invoice_id, input.order_id, input.message_id, input.amount_cents,
           input.currency, input.order_created_at, input.customer_id
    FROM input JOIN seen USING (message_id)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING message_id, id
)
SELECT input.message_id, seen.message_id IS NOT NULL, invoice.id
FROM input
LEFT JOIN seen USING (message_id)
LEFT JOIN invoice USING (message_id)";

/// Handles `OrderCreated` events idempotently, all in one transaction; returns one
/// outcome per event, in order. Message ids must be distinct within the call.
///
/// # Errors
/// [`StoreError`]; see [`StoreError::is_transient`]. On error nothing is written.
pub async fn record_invoices(
    pool: &Pool,
    events: &[(Uuid, &OrderCreatedV1)],
) -> Result<Vec<Handled>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut message_ids = Vec::with_capacity(events.len());
    let mut invoice_ids = Vec::with_capacity(events.len());
    let mut order_ids = Vec::with_capacity(events.len());
    let mut amounts = Vec::with_capacity(events.len());
    let mut currencies = Vec::with_capacity(events.len());
    let mut created = Vec::with_capacity(events.len());
    let mut customers = Vec::with_capacity(events.len());
    for (message_id, event) in events {
        message_ids.push(*message_id);
        invoice_ids.push(Uuid::now_v7());
        order_ids.push(event.order_id);
        amounts.push(event.amount_cents);
        currencies.push(event.currency.as_str());
        created.push(event.created_at);
        // None for an event of 1.0, written before orders had customers.
        customers.push(
            event
                .customer_id
                .as_ref()
                .map(contracts::CustomerId::as_str),
        );
    }
    let client = pool.get().await?;
    let statement = client.prepare_cached(RECORD_AND_INVOICE).await?;
    let rows = client
        .query(
            &statement,
            &[
                &message_ids,
                &invoice_ids,
                &order_ids,
                &amounts,
                &currencies,
                &created,
                &customers,
            ],
        )
        .await?;
    let mut by_id = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let message_id: Uuid = row.try_get(0)?;
        let new_message: bool = row.try_get(1)?;
        let invoice_id: Option<Uuid> = row.try_get(2)?;
        by_id.insert(
            message_id,
            match (new_message, invoice_id) {
                (false, _) => Handled::Duplicate,
                (true, Some(invoice_id)) => Handled::Invoiced { invoice_id },
                (true, None) => Handled::AlreadyInvoiced,
            },
        );
    }
    Ok(message_ids
        .iter()
        .map(|id| by_id.get(id).copied().unwrap_or(Handled::Duplicate))
        .collect())
}

/// An invoice, as `GET /invoices/{order_id}` returns it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Invoice {
    /// Invoice id.
    pub id: Uuid,
    /// The order it bills.
    pub order_id: Uuid,
    /// The order's customer; `null` for an order from before orders had
    /// customers (an `OrderCreated` 1.0 event).
    pub customer_id: Option<String>,
    /// Amount in cents.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The message it was created from.
    pub message_id: Uuid,
    /// When the order was created.
    #[serde(with = "time::serde::rfc3339")]
    pub order_created_at: time::OffsetDateTime,
    /// When the invoice was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
}

/// The invoice of an order, if there is one yet.
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn find_invoice(pool: &Pool, order_id: Uuid) -> Result<Option<Invoice>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT id, order_id, amount_cents, currency, message_id, order_created_at, created_at,
                    customer_id
             FROM invoices WHERE order_id = $1",
        )
        .await?;
    let Some(r) = client.query_opt(&statement, &[&order_id]).await? else {
        return Ok(None);
    };
    Ok(Some(Invoice {
        id: r.try_get(0)?,
        order_id: r.try_get(1)?,
        amount_cents: r.try_get(2)?,
        currency: r.try_get(3)?,
        message_id: r.try_get(4)?,
        order_created_at: r.try_get(5)?,
        created_at: r.try_get(6)?,
        customer_id: r.try_get(7)?,
    }))
}

/// Deletes up to `$2` dedupe records older than `$1` seconds, oldest first.
const PURGE_PROCESSED: &str = "
DELETE FROM processed_messages WHERE message_id IN (
    SELECT message_id FROM processed_messages
    WHERE processed_at < now() - $1 * interval '1 second'
    ORDER BY processed_at LIMIT $2)";

/// Deletes dedupe records older than `older_than`, `batch` per statement. The
/// retention must cover the outbox's replay window and any redelivery: after it, a
/// replayed message would be processed again (the unique order id on invoices
/// still prevents a second invoice).
///
/// # Errors
/// [`StoreError`] when the database fails.
pub async fn purge_processed(
    pool: &Pool,
    older_than: std::time::Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    plumbing::db::purge_in_batches(&*pool.get().await?, PURGE_PROCESSED, older_than, batch).await
}
