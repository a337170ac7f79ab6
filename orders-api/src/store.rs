//! SQL of the orders database, next to the functions that run it.

use deadpool_postgres::Pool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    domain::{Amount, NewOrder, Order},
    error::ApiError,
    outbox::{OutboxEvent, RequestContext},
};

/// Stores the order and its `OrderCreated` outbox row and notifies the relay, all in
/// ONE statement, hence one transaction and one round trip: either both rows exist
/// or neither does, and the notification is delivered only if they commit.
const INSERT_ORDER_AND_EVENT: &str = "
WITH new_order AS (
    INSERT INTO orders (id, amount_cents, currency, created_at)
    VALUES ($1, $2, $3, $4)
    RETURNING id
)
INSERT INTO outbox (message_id, aggregate_type, aggregate_id, event_type, schema_version,
                    payload, headers, created_at)
SELECT $5, $6, new_order.id, $7, $8, $9, $10, $4 FROM new_order
RETURNING pg_notify($11, '')";

/// Creates an order with its event.
///
/// # Errors
/// [`ApiError::Unavailable`] when the database cannot be reached,
/// [`ApiError::Internal`] on any other database failure.
pub async fn create_order(
    pool: &Pool,
    new: &NewOrder,
    context: &RequestContext,
) -> Result<Order, ApiError> {
    let order = Order {
        id: new.id,
        amount: new.amount,
        currency: new.currency.clone(),
        created_at: now_micros(),
    };
    let event = OutboxEvent::order_created(&order, context);
    let client = pool.get().await?;
    let statement = client.prepare_cached(INSERT_ORDER_AND_EVENT).await?;
    let inserted = client
        .execute(
            &statement,
            &[
                &order.id,
                &order.amount.cents(),
                &order.currency,
                &order.created_at,
                &event.message_id,
                &event.aggregate_type,
                &event.event_type,
                &event.schema_version,
                &event.payload,
                &event.headers,
                &plumbing::db::OUTBOX_CHANNEL,
            ],
        )
        .await?;
    if inserted != 1 {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "order insert wrote {inserted} outbox rows instead of 1"
        )));
    }
    tracing::info!(order_id = %order.id, message_id = %event.message_id, amount_cents = order.amount.cents(), "order created");
    Ok(order)
}

/// Looks an order up by id.
///
/// # Errors
/// As [`create_order`].
pub async fn find_order(pool: &Pool, id: Uuid) -> Result<Option<Order>, ApiError> {
    let client = pool.get().await?;
    let statement = client
        .prepare_cached("SELECT id, amount_cents, currency, created_at FROM orders WHERE id = $1")
        .await?;
    let Some(row) = client.query_opt(&statement, &[&id]).await? else {
        return Ok(None);
    };
    let amount = Amount::from_cents(row.try_get("amount_cents")?).map_err(|e| {
        ApiError::Internal(anyhow::anyhow!(
            "stored order {id} has an invalid amount: {e}"
        ))
    })?;
    Ok(Some(Order {
        id: row.try_get("id")?,
        amount,
        currency: row.try_get("currency")?,
        created_at: row.try_get("created_at")?,
    }))
}

/// Checks that the database answers (readiness).
///
/// # Errors
/// As [`create_order`].
pub async fn ping(pool: &Pool) -> Result<(), ApiError> {
    let client = pool.get().await?;
    client.simple_query("SELECT 1").await?;
    Ok(())
}

/// The current time at PostgreSQL's precision (microseconds), so that what the API
/// returns equals what a later read returns.
fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .unwrap_or(now)
}
