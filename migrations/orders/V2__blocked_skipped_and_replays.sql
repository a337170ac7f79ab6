-- A row that failed too often is blocked (its aggregate waits for an operator);
-- an operator may skip it. Replays of published events are recorded.

ALTER TABLE outbox
    ADD COLUMN blocked_at timestamptz,
    ADD COLUMN skipped_at timestamptz,
    -- Claims are row locks held by the relay's transaction, not a lease column.
    DROP COLUMN locked_until;

CREATE TABLE outbox_replays (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Sent in the x-replay header of every replayed message.
    replay_id   uuid        NOT NULL UNIQUE,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- The selection, as given on the command line.
    filter      jsonb       NOT NULL,
    dry_run     boolean     NOT NULL,
    matched     bigint      NOT NULL DEFAULT 0,
    published   bigint      NOT NULL DEFAULT 0,
    -- Who ran it (the operating system user, if known).
    operator    text
);

-- Relay throughput: leave room in each page for updated row versions, and index
-- published rows by creation time (for replays) instead of by publication time,
-- so that marking a row published adds no index entry of its own. Retention walks
-- the primary key instead.
ALTER TABLE outbox SET (fillfactor = 70);
DROP INDEX outbox_published_at;
CREATE INDEX outbox_created_at ON outbox (created_at);
