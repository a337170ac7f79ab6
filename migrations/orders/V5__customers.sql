-- Orders belong to customers: the `sub` of the caller's access token.
--
-- Orders written before this migration have no customer (NULL): they stay valid,
-- and their events (already in the outbox or published) are unchanged. The API
-- shows an order only to its customer, so it shows these to no one. An API
-- replica of the previous release, still running during a rolling deploy,
-- writes orders without a customer too.
ALTER TABLE orders
    ADD COLUMN customer_id text
        CHECK (customer_id IS NULL OR char_length(customer_id) BETWEEN 1 AND 255);

-- GET /orders: a customer's orders, newest first, by keyset (created_at, id).
-- Partial: orders without a customer are never listed. A plain CREATE INDEX
-- (migrations run in a transaction, where CONCURRENTLY is not allowed) holds
-- writes to orders while it builds: seconds for millions of orders.
CREATE INDEX orders_by_customer ON orders (customer_id, created_at DESC, id DESC)
    WHERE customer_id IS NOT NULL;

-- An Idempotency-Key is scoped to its customer: two customers may pick the same
-- key. Keys written before (no customer) expire as before.
ALTER TABLE idempotency_keys ADD COLUMN customer_id text;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
CREATE UNIQUE INDEX idempotency_keys_customer_key
    ON idempotency_keys (customer_id, key) NULLS NOT DISTINCT;

-- The API's table-level grants (V4) cover the new columns.
