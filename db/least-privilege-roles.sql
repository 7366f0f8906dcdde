-- Least-privilege PostgreSQL roles for QueueFlow (README "Least-privilege database roles").
-- Run once as an administrator, connected to QueueFlow's database, then give each role a
-- password (ALTER ROLE ... PASSWORD '...') or your cloud's IAM login. On managed services
-- whose administrator is not a superuser (RDS, Cloud SQL), first: GRANT queueflow_owner TO <you>;
--
--   queueflow_owner      `queueflow migrate` (the chart's migration Job): owns the schema.
--   queueflow_worker     the workers: insert events, upsert aggregates. No DDL.
--   queueflow_reporting  reporting: reads the aggregates. Nothing else.
-- Ingest never connects to PostgreSQL.

CREATE ROLE queueflow_owner LOGIN;
CREATE ROLE queueflow_worker LOGIN;
CREATE ROLE queueflow_reporting LOGIN;

-- PostgreSQL 15 and newer no longer let every role create objects in schema public.
GRANT USAGE, CREATE ON SCHEMA public TO queueflow_owner;
GRANT USAGE ON SCHEMA public TO queueflow_worker, queueflow_reporting;

-- Privileges on the tables the owner's migrations create, now and in later releases.
ALTER DEFAULT PRIVILEGES FOR ROLE queueflow_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE ON TABLES TO queueflow_worker;
ALTER DEFAULT PRIVILEGES FOR ROLE queueflow_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO queueflow_worker;
ALTER DEFAULT PRIVILEGES FOR ROLE queueflow_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO queueflow_reporting;
-- Days of raw events are added and expired by the workers through the owner's functions.
ALTER DEFAULT PRIVILEGES FOR ROLE queueflow_owner IN SCHEMA public
    GRANT EXECUTE ON FUNCTIONS TO queueflow_worker;
