DROP FUNCTION IF EXISTS vsm_resolve_api_key(bytea);
DROP TABLE IF EXISTS task_log;
DROP TABLE IF EXISTS artifacts;
DROP TABLE IF EXISTS policies;
DROP TABLE IF EXISTS episodes;
DROP TABLE IF EXISTS system_states;
DROP TABLE IF EXISTS api_keys;
DROP TABLE IF EXISTS tenants;
DROP FUNCTION IF EXISTS vsm_current_tenant();
DROP FUNCTION IF EXISTS vsm_uuid_v7();
-- The roles are cluster-wide and may serve other databases: only this database's
-- privileges go.
REVOKE USAGE ON SCHEMA public FROM vsm_app, vsm_system;
