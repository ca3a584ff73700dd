-- Runs once, when the postgres container initialises an empty data volume
-- (/docker-entrypoint-initdb.d), as POSTGRES_USER connected to POSTGRES_DB.
--
-- The schema, the `vsm_app` role and its grants are NOT created here: `vsm migrate` owns them
-- (it runs as the one-shot `migrate` service before any app or worker starts). This file only
-- prepares the database server for operations.

-- Query statistics (the library is preloaded by postgresql.conf).
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;

-- Store and show times in UTC whatever a client asks for by default.
DO $$
BEGIN
  EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), 'UTC');
END
$$;
