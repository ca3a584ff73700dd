DROP FUNCTION vsm_close_dashboard_session(bytea);
DROP FUNCTION vsm_resolve_dashboard_session(bytea);
DROP FUNCTION vsm_open_dashboard_session(bytea, uuid, bytea, text, integer, integer);
DROP TABLE dashboard_sessions;
