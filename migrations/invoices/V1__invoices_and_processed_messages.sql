-- Invoices and the idempotent consumer's record of handled messages. The worker
-- records a message id and inserts its invoice in one transaction.

CREATE TABLE processed_messages (
    message_id   uuid        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Retention purges old rows by age.
CREATE INDEX processed_messages_processed_at ON processed_messages (processed_at);

CREATE TABLE invoices (
    id           uuid        PRIMARY KEY,
    -- A second guard: one invoice per order even if two messages named the same order.
    order_id     uuid        NOT NULL UNIQUE,
    message_id   uuid        NOT NULL,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    order_created_at timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
