-- Dashboard sign-in sessions (CONTRACT §11). The cookie holds a random token; only its sha256 is
-- stored, so a database reader cannot sign in. A session is either a tenant's (bound to the API
-- key it was opened with: revoking the key ends it) or the operator's (bound to the sha256 of the
-- admin token it was opened with: changing VSM_ADMIN_TOKEN ends it).
CREATE TABLE dashboard_sessions (
  token_hash       bytea PRIMARY KEY,
  api_key_id       uuid REFERENCES api_keys (id) ON DELETE CASCADE,
  tenant_id        uuid REFERENCES tenants (id) ON DELETE CASCADE,
  admin_token_hash bytea,
  -- sent back by the page on every state-changing request (double submit bound to the session)
  csrf_token       text NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  expires_at       timestamptz NOT NULL,
  CONSTRAINT dashboard_sessions_token_hash_length CHECK (octet_length(token_hash) = 32),
  CONSTRAINT dashboard_sessions_one_kind CHECK (
    (api_key_id IS NOT NULL AND tenant_id IS NOT NULL AND admin_token_hash IS NULL)
    OR (api_key_id IS NULL AND tenant_id IS NULL AND octet_length(admin_token_hash) = 32))
);
CREATE INDEX dashboard_sessions_api_key_idx ON dashboard_sessions (api_key_id, created_at);
CREATE INDEX dashboard_sessions_expires_at_idx ON dashboard_sessions (expires_at);

-- Like every table holding tenant ids: row-level security, forced, on the transaction's tenant.
-- Neither role is granted the table; the three functions below are the only way in, and a
-- session is found only by the hash of its token (the cookie).
ALTER TABLE dashboard_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE dashboard_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON dashboard_sessions
  USING (tenant_id = vsm_current_tenant()) WITH CHECK (tenant_id = vsm_current_tenant());

-- Opens a session. A key's sessions are capped (the oldest beyond p_keep go), as are the
-- operator's, so signing in in a loop cannot grow the table; expired sessions are removed too.
-- A revoked or unknown key opens nothing (returns false).
CREATE FUNCTION vsm_open_dashboard_session(
  p_token_hash bytea, p_api_key_id uuid, p_admin_token_hash bytea, p_csrf_token text,
  p_ttl_secs integer, p_keep integer)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE v_tenant uuid;
BEGIN
  DELETE FROM dashboard_sessions WHERE expires_at <= now();
  IF p_api_key_id IS NOT NULL THEN
    SELECT k.tenant_id INTO v_tenant FROM api_keys k
      WHERE k.id = p_api_key_id AND k.revoked_at IS NULL;
    IF v_tenant IS NULL THEN
      RETURN false;
    END IF;
  END IF;
  INSERT INTO dashboard_sessions (token_hash, api_key_id, tenant_id, admin_token_hash, csrf_token, expires_at)
    VALUES (p_token_hash, p_api_key_id, v_tenant, p_admin_token_hash, p_csrf_token,
            now() + make_interval(secs => p_ttl_secs));
  DELETE FROM dashboard_sessions WHERE token_hash IN (
    SELECT s.token_hash FROM dashboard_sessions s
    WHERE s.api_key_id IS NOT DISTINCT FROM p_api_key_id
      AND (p_api_key_id IS NOT NULL OR s.admin_token_hash IS NOT NULL)
    ORDER BY s.created_at DESC, s.token_hash OFFSET p_keep);
  RETURN true;
END
$$;

-- The live session of a cookie: not expired, and for a tenant's session its key not revoked.
CREATE FUNCTION vsm_resolve_dashboard_session(p_token_hash bytea)
RETURNS TABLE (api_key_id uuid, tenant_id uuid, admin_token_hash bytea, csrf_token text, expires_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT s.api_key_id, s.tenant_id, s.admin_token_hash, s.csrf_token, s.expires_at
  FROM dashboard_sessions s
  LEFT JOIN api_keys k ON k.id = s.api_key_id
  WHERE s.token_hash = p_token_hash AND s.expires_at > now()
    AND (s.api_key_id IS NULL OR k.revoked_at IS NULL)
$$;

-- Sign-out.
CREATE FUNCTION vsm_close_dashboard_session(p_token_hash bytea)
RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  DELETE FROM dashboard_sessions WHERE token_hash = p_token_hash
$$;

REVOKE ALL ON FUNCTION vsm_open_dashboard_session(bytea, uuid, bytea, text, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION vsm_resolve_dashboard_session(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION vsm_close_dashboard_session(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vsm_open_dashboard_session(bytea, uuid, bytea, text, integer, integer) TO vsm_app;
GRANT EXECUTE ON FUNCTION vsm_resolve_dashboard_session(bytea) TO vsm_app;
GRANT EXECUTE ON FUNCTION vsm_close_dashboard_session(bytea) TO vsm_app;
