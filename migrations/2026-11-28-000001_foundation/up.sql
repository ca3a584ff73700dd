-- Foundation schema (CONTRACT §3): tenants and the tenant-scoped tables, with the field rules as
-- named CHECK constraints (the names are how src/repo.rs maps a violation to a field) and
-- forced row-level security for the application role `vsm_app`.

-- UUIDv7 (time-ordered) keys: PostgreSQL 15 has no built-in generator. The application also
-- generates v7 ids itself; this default covers rows inserted by hand.
CREATE FUNCTION vsm_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
  SELECT encode(
    set_bit(set_bit(
      overlay(uuid_send(gen_random_uuid())
              PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
              FROM 1 FOR 6),
      52, 1), 53, 1),
    'hex')::uuid
$$;

-- The tenant of the current transaction, or NULL when none is set. `true` (missing_ok) makes an
-- unset setting NULL instead of an error; NULLIF turns the empty string PostgreSQL leaves behind
-- after a transaction-local set_config into NULL too. A malformed value fails the uuid cast: an
-- error, never a wider view.
CREATE FUNCTION vsm_current_tenant() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT NULLIF(current_setting('app.current_tenant', true), '')::uuid
$$;

CREATE TABLE tenants (
  id          uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  slug        text NOT NULL,
  name        text NOT NULL,
  settings    jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT tenants_slug_format CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,61}[a-z0-9]$'),
  CONSTRAINT tenants_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
  CONSTRAINT tenants_settings_object CHECK (jsonb_typeof(settings) = 'object')
);
CREATE UNIQUE INDEX tenants_slug_key ON tenants (slug);

CREATE TABLE api_keys (
  id           uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  name         text NOT NULL DEFAULT 'default',
  -- sha256 of the whole key; the key itself is shown once and never stored.
  key_hash     bytea NOT NULL,
  -- the first characters of the key, so an operator can tell keys apart
  key_prefix   text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at   timestamptz,
  CONSTRAINT api_keys_key_hash_length CHECK (octet_length(key_hash) = 32),
  CONSTRAINT api_keys_name_length CHECK (char_length(name) BETWEEN 1 AND 200)
);
CREATE UNIQUE INDEX api_keys_key_hash_key ON api_keys (key_hash);
CREATE INDEX api_keys_tenant_id_idx ON api_keys (tenant_id);

CREATE TABLE system_states (
  id          uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  system      smallint NOT NULL,
  state       jsonb NOT NULL DEFAULT '{}'::jsonb,
  version     integer NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT system_states_system_range CHECK (system BETWEEN 1 AND 5),
  CONSTRAINT system_states_version_positive CHECK (version >= 1),
  CONSTRAINT system_states_state_object CHECK (jsonb_typeof(state) = 'object')
);
-- History is append-only; this also serves "latest state of system n" (ORDER BY version DESC).
CREATE UNIQUE INDEX system_states_tenant_system_version_key
  ON system_states (tenant_id, system, version);

CREATE TABLE episodes (
  id          uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  title       text NOT NULL,
  content     text NOT NULL DEFAULT '',
  source      text,
  kind        text,
  tags        text[] NOT NULL DEFAULT '{}',
  status      text NOT NULL DEFAULT 'pending',
  analysis    jsonb,
  error       text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT episodes_title_length CHECK (char_length(title) BETWEEN 1 AND 500),
  CONSTRAINT episodes_status_valid CHECK (status IN ('pending', 'analyzing', 'complete', 'error'))
);
-- Keyset pagination walks (tenant_id, id); v7 ids are time-ordered.
CREATE INDEX episodes_tenant_id_id_idx ON episodes (tenant_id, id);
CREATE INDEX episodes_tenant_status_idx ON episodes (tenant_id, status, id);
CREATE INDEX episodes_tags_idx ON episodes USING gin (tags);

CREATE TABLE policies (
  id               uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  name             text NOT NULL,
  description      text,
  rules            jsonb NOT NULL,
  active           boolean NOT NULL DEFAULT true,
  priority         integer NOT NULL DEFAULT 0,
  effective_from   timestamptz,
  effective_until  timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT policies_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
  CONSTRAINT policies_priority_nonnegative CHECK (priority >= 0),
  CONSTRAINT policies_effective_window CHECK (effective_from <= effective_until)
);
CREATE UNIQUE INDEX policies_tenant_name_key ON policies (tenant_id, name);
-- The evaluator reads a tenant's active policies, highest priority first.
CREATE INDEX policies_tenant_active_priority_idx ON policies (tenant_id, priority DESC) WHERE active;

CREATE TABLE artifacts (
  id               uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  path             text NOT NULL,
  size             bigint NOT NULL,
  sha256           text NOT NULL,
  content_type     text NOT NULL,
  storage_backend  text NOT NULL,
  metadata         jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT artifacts_path_length CHECK (octet_length(path) BETWEEN 1 AND 1024),
  CONSTRAINT artifacts_size_nonnegative CHECK (size >= 0),
  CONSTRAINT artifacts_sha256_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  CONSTRAINT artifacts_storage_backend_valid CHECK (storage_backend IN ('local', 's3', 'memory'))
);
-- (tenant_id, path) is unique and is also the index for prefix listing.
CREATE UNIQUE INDEX artifacts_tenant_path_key ON artifacts (tenant_id, path text_pattern_ops);

CREATE TABLE task_log (
  id           uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  job_id       uuid NOT NULL,
  worker       text NOT NULL,
  queue        text NOT NULL,
  attempt      integer NOT NULL,
  state        text NOT NULL,
  duration_ms  bigint NOT NULL,
  error        text,
  inserted_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT task_log_attempt_positive CHECK (attempt >= 1),
  CONSTRAINT task_log_duration_nonnegative CHECK (duration_ms >= 0),
  CONSTRAINT task_log_state_valid CHECK (state IN ('completed', 'retryable', 'discarded', 'cancelled', 'snoozed'))
);
CREATE INDEX task_log_tenant_inserted_idx ON task_log (tenant_id, inserted_at DESC);
CREATE INDEX task_log_job_id_idx ON task_log (job_id);

-- Row-level security, forced so that even the tables' owner is subject to it. Every policy has
-- USING (what is visible) and WITH CHECK (what may be written) on the transaction's tenant.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
  USING (id = vsm_current_tenant()) WITH CHECK (id = vsm_current_tenant());

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['api_keys', 'system_states', 'episodes', 'policies', 'artifacts', 'task_log'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = vsm_current_tenant())'
                   ' WITH CHECK (tenant_id = vsm_current_tenant())', t);
  END LOOP;
END
$$;

-- The roles connections run as; neither can log in or bypass row-level security.
--   vsm_app     serves tenants: sees exactly the rows of the transaction's tenant.
--   vsm_system  runs cross-tenant machinery (event relay, job engine): it is granted only the
--               infrastructure tables those need, never tenant data tables.
-- Roles are cluster-wide, so they may already exist (another database, or a concurrent
-- migration of one); either is fine.
DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['vsm_app', 'vsm_system'] LOOP
    BEGIN
      EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', r);
    EXCEPTION WHEN duplicate_object OR unique_violation THEN
      NULL;
    END;
    -- Let the migrating (login) role SET ROLE to it; superusers may already.
    BEGIN
      EXECUTE format('GRANT %I TO %I', r, current_user);
    EXCEPTION WHEN others THEN
      NULL;
    END;
  END LOOP;
END
$$;
GRANT USAGE ON SCHEMA public TO vsm_app, vsm_system;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, api_keys, system_states, episodes, policies, artifacts, task_log TO vsm_app;
GRANT EXECUTE ON FUNCTION vsm_uuid_v7(), vsm_current_tenant() TO vsm_app;

-- API keys are looked up before any tenant is known. This function is the only way vsm_app
-- reads api_keys across tenants: it takes the key's hash and returns at most that key's tenant.
-- SECURITY DEFINER runs it as the migrating role (the owner, normally a superuser, which
-- row-level security does not apply to).
CREATE FUNCTION vsm_resolve_api_key(p_key_hash bytea)
RETURNS TABLE (api_key_id uuid, tenant_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT k.id, k.tenant_id FROM api_keys k
  WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL
$$;
REVOKE ALL ON FUNCTION vsm_resolve_api_key(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vsm_resolve_api_key(bytea) TO vsm_app;
