//! SQL of the orders database, next to the functions that run it.

use deadpool_postgres::Pool;
use plumbing::db::StoreError;
use time::OffsetDateTime;
use tracing::Instrument as _;
use uuid::Uuid;

use contracts::CustomerId;

use crate::{
    domain::{Amount, NewOrder, Order},
    outbox::{OutboxEvent, RequestContext},
};

/// Stores the order and its `OrderCreated` outbox row and notifies the relay, all in
/// ONE statement, hence one transaction and one round trip: either both rows exist
/// or neither does, and the notification is delivered only if they commit.
const INSERT_ORDER_AND_EVENT: &str = "
WITH new_order AS (
    INSERT INTO orders (id, amount_cents, currency, created_at, customer_id)
    VALUES ($1, $2, $3, $4, $12)
    RETURNING id
)
INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version,
                    payload, headers, created_at)
SELECT $5, $6, new_order.id, $7, $8, $9, $10, $4 FROM new_order
RETURNING pg_notify($11, '')";

/// The same, once per customer and `Idempotency-Key`: the key row (with the
/// response) is inserted first; if the customer used the key before, nothing else
/// is written. A concurrent request with the same key waits on the key's unique
/// index until the first commits.
const INSERT_ORDER_AND_EVENT_ONCE: &str = "
WITH idem AS (
    INSERT INTO idempotency_keys (customer_id, key, fingerprint, order_id, response_status,
                                  response_body)
    VALUES ($12, $13, $14, $1, 201, $15)
    ON CONFLICT (customer_id, key) DO NOTHING
    RETURNING key
), new_order AS (
    INSERT INTO orders (id, amount_cents, currency, created_at, customer_id)
    SELECT $1, $2, $3, $4, $12 FROM idem
    RETURNING id
)
INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version,
                    payload, headers, created_at)
SELECT $5, $6, new_order.id, $7, $8, $9, $10, $4 FROM new_order
RETURNING pg_notify($11, '')";

/// A client's `Idempotency-Key` and what its request asked for. The key is the
/// customer's own: another customer's identical key is another key.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The key, 1–255 visible ASCII characters.
    pub key: String,
    /// What the request asked for; a retry must ask for the same.
    pub fingerprint: String,
}

/// What a keyed creation did.
#[derive(Debug)]
pub enum Keyed {
    /// The order was created now.
    Created(Order),
    /// The key was used before for the same request: its stored response.
    Replayed {
        /// The stored status.
        status: u16,
        /// The stored body.
        body: serde_json::Value,
    },
    /// The key was used before for a different request.
    Mismatch,
}

/// Creates an order with its event.
///
/// # Errors
/// [`StoreError`]: transient when the database cannot be reached (see
/// [`StoreError::is_transient`]).
pub async fn create_order(
    pool: &Pool,
    customer: &CustomerId,
    new: &NewOrder,
    context: &RequestContext,
) -> Result<Order, StoreError> {
    let (order, event) = prepare(customer, new, context);
    let written = insert(pool, &order, &event, None).await?;
    if written != 1 {
        return Err(StoreError::invariant(format!(
            "order insert wrote {written} outbox rows instead of 1"
        )));
    }
    Ok(order)
}

/// The deliberately broken creation of `ORDERS_UNSAFE_REPLY_BEFORE_COMMIT`: the
/// order is returned at once and written 200 ms later in the background (a
/// write-behind buffer); a failed write is only logged, and a process that stops
/// meanwhile never writes it. For the fault suite's checker, never for use.
#[cfg(feature = "fault-injection")]
#[must_use]
pub fn create_order_unsafely(
    pool: &Pool,
    customer: &CustomerId,
    new: &NewOrder,
    context: &RequestContext,
) -> Order {
    let (order, event) = prepare(customer, new, context);
    let (pool, written) = (pool.clone(), order.clone());
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if let Err(e) = insert(&pool, &written, &event, None).await {
            tracing::error!(order_id = %written.id, error = %e, "order answered 201 but not stored");
        }
    });
    order
}

/// Creates an order with its event once per customer and idempotency key.
///
/// # Errors
/// As [`create_order`].
pub async fn create_order_once(
    pool: &Pool,
    customer: &CustomerId,
    new: &NewOrder,
    context: &RequestContext,
    key: &IdempotencyKey,
) -> Result<Keyed, StoreError> {
    let (order, event) = prepare(customer, new, context);
    if insert(pool, &order, &event, Some(key)).await? == 1 {
        return Ok(Keyed::Created(order));
    }
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(
            "SELECT fingerprint, response_status, response_body FROM idempotency_keys
             WHERE customer_id = $1 AND key = $2",
        )
        .await?;
    let Some(row) = client
        .query_opt(&statement, &[&customer.as_str(), &key.key])
        .await?
    else {
        return Err(StoreError::invariant(format!(
            "idempotency key {:?} neither inserted nor found",
            key.key
        )));
    };
    let fingerprint: String = row.try_get(0)?;
    if fingerprint != key.fingerprint {
        return Ok(Keyed::Mismatch);
    }
    let status: i16 = row.try_get(1)?;
    Ok(Keyed::Replayed {
        status: u16::try_from(status).unwrap_or(500),
        body: row.try_get(2)?,
    })
}

fn prepare(
    customer: &CustomerId,
    new: &NewOrder,
    context: &RequestContext,
) -> (Order, OutboxEvent) {
    let order = Order {
        id: new.id,
        customer_id: customer.clone(),
        amount: new.amount,
        currency: new.currency,
        created_at: now_micros(),
    };
    // The key row makes sure a key yields one order and one event; the event keeps
    // a fresh, time-ordered message id. (One derived from the key alone would be
    // reused if the key were used again after it expired, and the worker would
    // skip that second order's event as a duplicate.)
    let event = OutboxEvent::order_created(&order, context);
    (order, event)
}

/// Runs the insert; returns the number of outbox rows written (0 when the key
/// existed).
async fn insert(
    pool: &Pool,
    order: &Order,
    event: &OutboxEvent,
    key: Option<&IdempotencyKey>,
) -> Result<u64, StoreError> {
    let span = plumbing::db::client_span("INSERT", "orders");
    let result = insert_statement(pool, order, event, key)
        .instrument(span.clone())
        .await;
    if let Err(e) = &result {
        // The problem code the client gets for it.
        let code = if e.is_transient() {
            "unavailable"
        } else {
            "internal"
        };
        plumbing::db::failed_span(&span, code);
    }
    result
}

/// The statement of [`insert`]: order, outbox row, key (if any) and `NOTIFY` in
/// one transaction.
async fn insert_statement(
    pool: &Pool,
    order: &Order,
    event: &OutboxEvent,
    key: Option<&IdempotencyKey>,
) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let base: [&(dyn tokio_postgres::types::ToSql + Sync); 12] = [
        &order.id,
        &order.amount.cents(),
        &order.currency.as_str(),
        &order.created_at,
        &event.message_id,
        &event.aggregate_type,
        &event.event_type,
        &event.schema_version,
        &event.payload,
        &event.headers,
        &plumbing::db::OUTBOX_CHANNEL,
        &order.customer_id.as_str(),
    ];
    let written = match key {
        None => {
            let statement = client.prepare_cached(INSERT_ORDER_AND_EVENT).await?;
            client.execute(&statement, &base).await?
        }
        Some(key) => {
            let body = order
                .to_body()
                .and_then(serde_json::to_value)
                .map_err(|e| StoreError::invariant_from("cannot encode the order's response", e))?;
            let statement = client.prepare_cached(INSERT_ORDER_AND_EVENT_ONCE).await?;
            let mut params = base.to_vec();
            params.extend([
                &key.key as &(dyn tokio_postgres::types::ToSql + Sync),
                &key.fingerprint,
                &body,
            ]);
            client.execute(&statement, &params).await?
        }
    };
    if written == 1 {
        tracing::debug!(order_id = %order.id, message_id = %event.message_id, amount_cents = order.amount.cents(), "order created");
    }
    Ok(written)
}

/// Deletes up to `$2` idempotency keys older than `$1` seconds, oldest first.
const PURGE_KEYS: &str = "
DELETE FROM idempotency_keys WHERE ctid IN (
    SELECT ctid FROM idempotency_keys
    WHERE created_at < now() - $1 * interval '1 second'
    ORDER BY created_at LIMIT $2)";

/// Deletes idempotency keys older than `older_than`, in batches; returns how many.
///
/// # Errors
/// As [`create_order`].
pub async fn purge_keys(pool: &Pool, older_than: std::time::Duration) -> Result<u64, StoreError> {
    plumbing::db::purge_in_batches(&*pool.get().await?, PURGE_KEYS, older_than, 1_000).await
}

/// The columns [`order_from_row`] reads.
const ORDER_COLUMNS: &str = "id, customer_id, amount_cents, currency, created_at";

/// Looks up one of a customer's orders by id: another customer's order is as
/// absent as one that does not exist.
///
/// # Errors
/// As [`create_order`].
pub async fn find_order(
    pool: &Pool,
    customer: &CustomerId,
    id: Uuid,
) -> Result<Option<Order>, StoreError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached(&format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1 AND customer_id = $2"
        ))
        .await?;
    client
        .query_opt(&statement, &[&id, &customer.as_str()])
        .await?
        .map(|row| order_from_row(&row))
        .transpose()
}

/// Where a page of [`list_orders`] starts: after this order, in the list's order
/// (newest first, by creation time, then id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    /// The creation time of the last order of the previous page.
    pub created_at: OffsetDateTime,
    /// Its id.
    pub id: Uuid,
}

/// A customer's orders, newest first, at most `limit`, starting after `after`.
/// Keyset pagination: a page starts strictly after the last row of the previous
/// one, so orders created meanwhile (newer, hence before the cursor) neither
/// shift nor repeat the pages that follow.
///
/// # Errors
/// As [`create_order`].
pub async fn list_orders(
    pool: &Pool,
    customer: &CustomerId,
    limit: i64,
    after: Option<After>,
) -> Result<Vec<Order>, StoreError> {
    let client = pool.get().await?;
    let rows = match after {
        None => {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE customer_id = $1
                     ORDER BY created_at DESC, id DESC LIMIT $2"
                ))
                .await?;
            client
                .query(&statement, &[&customer.as_str(), &limit])
                .await?
        }
        Some(after) => {
            let statement = client
                .prepare_cached(&format!(
                    "SELECT {ORDER_COLUMNS} FROM orders
                     WHERE customer_id = $1 AND (created_at, id) < ($2, $3)
                     ORDER BY created_at DESC, id DESC LIMIT $4"
                ))
                .await?;
            client
                .query(
                    &statement,
                    &[&customer.as_str(), &after.created_at, &after.id, &limit],
                )
                .await?
        }
    };
    rows.iter().map(order_from_row).collect()
}

/// An order read with [`ORDER_COLUMNS`]; a stored value the domain refuses is an
/// invariant violation (the table's checks should have stopped it).
fn order_from_row(row: &tokio_postgres::Row) -> Result<Order, StoreError> {
    let id: Uuid = row.try_get("id")?;
    let invalid = |what: &str| format!("stored order {id} has an invalid {what}");
    let customer_id = row
        .try_get::<_, Option<String>>("customer_id")?
        .ok_or_else(|| StoreError::invariant(invalid("customer (none)")))
        .and_then(|c| {
            CustomerId::try_from(c).map_err(|e| StoreError::invariant_from(invalid("customer"), e))
        })?;
    let amount = Amount::from_cents(row.try_get("amount_cents")?)
        .map_err(|e| StoreError::invariant_from(invalid("amount"), e))?;
    let currency = contracts::Currency::try_from(row.try_get::<_, &str>("currency")?)
        .map_err(|e| StoreError::invariant_from(invalid("currency"), e))?;
    Ok(Order {
        id,
        customer_id,
        amount,
        currency,
        created_at: row.try_get("created_at")?,
    })
}

/// The current time at PostgreSQL's precision (microseconds), so that what the API
/// returns equals what a later read returns.
fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
