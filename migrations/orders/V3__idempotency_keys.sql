-- Idempotency-Key of POST /orders: stored in the order's transaction, with the
-- response, so that a client's retry gets the same answer and creates nothing.

CREATE TABLE idempotency_keys (
    key           text        PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
    -- What the request asked for (amount in cents and currency): a retry must ask
    -- for the same thing.
    fingerprint   text        NOT NULL,
    order_id      uuid        NOT NULL,
    response_status smallint  NOT NULL,
    response_body jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Expired keys are purged by age.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
