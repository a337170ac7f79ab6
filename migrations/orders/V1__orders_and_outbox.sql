-- Orders and their transactional outbox. An order and its OrderCreated event are
-- written in one transaction; the relay publishes outbox rows to the broker.

CREATE TABLE orders (
    id           uuid        PRIMARY KEY,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- AMQP message_id: what the consumer deduplicates on.
    message_id      uuid        NOT NULL UNIQUE,
    aggregate_type  text        NOT NULL,
    aggregate_id    uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    -- traceparent, tracestate, correlation id of the request that wrote the row.
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    -- A failed row is not retried before this time (growing delay, set by the relay).
    next_attempt_at timestamptz,
    -- A relay's claim on the row; another relay may take it once this has passed.
    locked_until    timestamptz
);

-- The relay's claim scans only unpublished rows, in id order.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
-- Per-aggregate ordering: is there an earlier unpublished event of this aggregate?
CREATE INDEX outbox_unpublished_by_aggregate ON outbox (aggregate_id, id) WHERE published_at IS NULL;
-- Replay and retention select published rows by time.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Marking rows published leaves dead tuples in the partial index; vacuum the outbox
-- often rather than by the default 20%-of-the-table rule.
ALTER TABLE outbox SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_insert_scale_factor = 0.0,
    autovacuum_vacuum_insert_threshold = 10000,
    autovacuum_vacuum_cost_delay = 0
);
