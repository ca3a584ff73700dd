-- Outbound webhooks (CONTRACT §4 `/v1/webhooks`, §7 notification_sender): a tenant's
-- endpoints, and which events were already handed to which endpoint.

CREATE TABLE webhook_endpoints (
  id                   uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id            uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  url                  text NOT NULL,
  -- Event filters in the SSE stream's syntax (`episode.analyzed`, `policy.*`); empty = none
  -- (the endpoint is reached only by policy `notify` actions naming it).
  topics               text[] NOT NULL DEFAULT '{}',
  enabled              boolean NOT NULL DEFAULT true,
  disabled_reason      text,
  disabled_at          timestamptz,
  -- `whsec_<base64>`: the HMAC key has to be usable as is, so it is stored as issued, behind
  -- forced row-level security, and never serialised by the API after creation or rotation.
  secret               text NOT NULL,
  -- The secret a rotation replaced keeps signing alongside until it expires.
  previous_secret      text,
  previous_expires_at  timestamptz,
  -- First failed delivery of the current run of failures; a success clears it. An endpoint
  -- failing for long enough is disabled.
  failing_since        timestamptz,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT webhook_endpoints_url_length CHECK (octet_length(url) BETWEEN 1 AND 2048),
  CONSTRAINT webhook_endpoints_url_scheme CHECK (url ~ '^https?://'),
  CONSTRAINT webhook_endpoints_topics_count CHECK (cardinality(topics) <= 64),
  CONSTRAINT webhook_endpoints_secret_format CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+=*$'),
  CONSTRAINT webhook_endpoints_previous_secret CHECK ((previous_secret IS NULL) = (previous_expires_at IS NULL)),
  CONSTRAINT webhook_endpoints_disabled CHECK (enabled OR disabled_at IS NOT NULL)
);
CREATE INDEX webhook_endpoints_tenant_id_idx ON webhook_endpoints (tenant_id, id);

-- One row per (endpoint, event) the subscriber turned into a notification (claimed in the
-- transaction that enqueues it): the event flow is
-- at least once, so a batch handed over again finds its rows and sends nothing twice.
CREATE TABLE webhook_event_deliveries (
  endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
  event_seq        bigint NOT NULL,
  tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  inserted_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (endpoint_id, event_seq)
);
CREATE INDEX webhook_event_deliveries_tenant_inserted_idx ON webhook_event_deliveries (tenant_id, inserted_at);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['webhook_endpoints', 'webhook_event_deliveries'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I USING (tenant_id = vsm_current_tenant())'
                   ' WITH CHECK (tenant_id = vsm_current_tenant())', t);
  END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints, webhook_event_deliveries TO vsm_app;
