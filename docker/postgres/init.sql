-- Both databases of the pipeline, created on the PostgreSQL container's first start.
-- (The services also create their database when it is missing; this makes the
-- stack independent of the start order.)
CREATE DATABASE orders;
CREATE DATABASE invoices;
