-- Least privilege: the worker logs in as its own role, which holds only the
-- grants it needs. The schema stays owned by whoever runs the migrations (the
-- migration role); nobody else may CREATE, ALTER or DROP.
--
-- The role is created NOLOGIN; `invoices-worker migrate` gives it LOGIN and a
-- password when INVOICES_WORKER_DB_PASSWORD is set. A later migration that adds
-- a table or column grants on it explicitly.

-- Roles are cluster-wide and the migration lock is per database, so another
-- database's migration may create the role at the same moment: the loser of
-- that race sees unique_violation (or duplicate_object) and moves on.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'invoices_worker') THEN
        CREATE ROLE invoices_worker NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END $$;

-- Only the worker's role (and the owner) may connect; no temporary tables.
DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO invoices_worker', current_database());
END $$;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO invoices_worker;

-- The worker: records handled message ids and inserts invoices (never changes
-- one), reads invoices back, purges old message ids.
GRANT SELECT, INSERT, DELETE ON processed_messages TO invoices_worker;
GRANT SELECT, INSERT ON invoices TO invoices_worker;
