-- Least privilege: each service logs in as its own role, which holds only the
-- grants that service needs. The schema stays owned by whoever runs the
-- migrations (the migration role); nobody else may CREATE, ALTER or DROP.
--
-- The roles are created NOLOGIN; `<binary> migrate` gives them LOGIN and a
-- password when ORDERS_API_DB_PASSWORD / OUTBOX_RELAY_DB_PASSWORD are set.
-- A later migration that adds a table or column grants on it explicitly.

-- Roles are cluster-wide and the migration lock is per database, so another
-- database's migration may create the same role at the same moment: the loser
-- of that race sees unique_violation (or duplicate_object) and moves on.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['orders_api', 'outbox_relay'] LOOP
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN', name);
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END LOOP;
END $$;

-- Only the services' roles (and the owner) may connect; no temporary tables.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO orders_api, outbox_relay', current_database());
END $$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO orders_api, outbox_relay;

-- The API: writes an order with its event (and its idempotency key), reads
-- orders and keys back, purges expired keys. It may add outbox rows but never
-- change or delete one: publishing them is the relay's business.
GRANT SELECT, INSERT ON orders TO orders_api;
GRANT INSERT (message_id, aggregate_type, aggregate_id, event_type, schema_version,
              payload, headers, created_at)
    ON outbox TO orders_api;
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO orders_api;

-- The relay (its operator commands included): claims, marks and purges outbox
-- rows and records replays. It writes only the columns that track publishing,
-- and has no privilege at all on orders or idempotency keys.
GRANT SELECT, DELETE ON outbox TO outbox_relay;
GRANT UPDATE (published_at, last_error, attempts, next_attempt_at, blocked_at, skipped_at)
    ON outbox TO outbox_relay;
GRANT SELECT ON outbox_replays TO outbox_relay;
GRANT INSERT (replay_id, filter, dry_run, operator) ON outbox_replays TO outbox_relay;
GRANT UPDATE (matched, published, finished_at) ON outbox_replays TO outbox_relay;
