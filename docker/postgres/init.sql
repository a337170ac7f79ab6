-- Both databases of the pipeline, created on the PostgreSQL container's first start.
-- (The services also create their database when it is missing; this makes the
-- stack independent of the start order.)
--
-- The migration role owns both databases and every object the migrations make;
-- it creates the services' own roles (orders_api, outbox_relay, invoices_worker)
-- and gives them LOGIN. Its password is for local development only.
CREATE ROLE migrator LOGIN CREATEROLE PASSWORD 'migrator-dev-only';
CREATE DATABASE orders;
ALTER DATABASE orders OWNER TO migrator;
CREATE DATABASE invoices;
ALTER DATABASE invoices OWNER TO migrator;
