-- The notification delivery log (CONTRACT §4, §7 notification_sender): one row per message a
-- tenant (or the platform) asked to send, and one row per delivery attempt made.
--
-- tenant_id NULL marks a reply to a Telegram chat linked to no tenant (the refusal line of §9):
-- it is sent the same way but belongs to nobody, so the tenant policy (tenant_id = current
-- tenant) never shows it to any tenant; only the system role reaches those rows.

CREATE TABLE notifications (
  id            uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  tenant_id     uuid REFERENCES tenants (id) ON DELETE CASCADE,
  channel       text NOT NULL,
  -- who receives it (chat id, webhook endpoint id); shown masked in logs and events
  recipient     text NOT NULL,
  -- the message as the channel needs it (Message, serialised)
  message       jsonb NOT NULL,
  state         text NOT NULL DEFAULT 'pending',
  -- delivery attempts made (requests sent), not counting throttled waits
  attempts      integer NOT NULL DEFAULT 0,
  -- channel-owned progress across attempts (e.g. how many parts of a split message went out)
  progress      jsonb NOT NULL DEFAULT '{}'::jsonb,
  -- the job currently delivering it; a late hook of an older job leaves the row alone
  job_id        uuid,
  -- a peer's Retry-After: no attempt before this time
  not_before    timestamptz,
  last_error    text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  sent_at       timestamptz,
  CONSTRAINT notifications_channel_valid CHECK (channel IN ('telegram', 'webhook')),
  CONSTRAINT notifications_state_valid CHECK (state IN ('pending', 'sent', 'failed')),
  CONSTRAINT notifications_attempts_nonnegative CHECK (attempts >= 0),
  CONSTRAINT notifications_message_object CHECK (jsonb_typeof(message) = 'object'),
  CONSTRAINT notifications_progress_object CHECK (jsonb_typeof(progress) = 'object')
);
-- Keyset pagination over a tenant's log, optionally by channel and state.
CREATE INDEX notifications_tenant_id_idx ON notifications (tenant_id, id);
CREATE INDEX notifications_tenant_state_idx ON notifications (tenant_id, state, id);
CREATE INDEX notifications_tenant_channel_idx ON notifications (tenant_id, channel, id);

CREATE TABLE notification_attempts (
  id               uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  notification_id  uuid NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
  tenant_id        uuid REFERENCES tenants (id) ON DELETE CASCADE,
  attempt          integer NOT NULL,
  result           text NOT NULL,
  status_code      integer,
  latency_ms       bigint NOT NULL,
  error            text,
  next_retry_at    timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT notification_attempts_attempt_positive CHECK (attempt >= 1),
  CONSTRAINT notification_attempts_result_valid
    CHECK (result IN ('sent', 'retry', 'failed', 'gone', 'throttled')),
  CONSTRAINT notification_attempts_latency_nonnegative CHECK (latency_ms >= 0)
);
CREATE INDEX notification_attempts_notification_idx ON notification_attempts (notification_id, attempt);

DO $$
DECLARE t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['notifications', 'notification_attempts'] LOOP
    EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON %I TO vsm_app USING (tenant_id = vsm_current_tenant())'
                   ' WITH CHECK (tenant_id = vsm_current_tenant())', t);
    -- The system role sends the replies that belong to no tenant, and sees nothing else.
    EXECUTE format('CREATE POLICY unlinked_replies ON %I TO vsm_system USING (tenant_id IS NULL)'
                   ' WITH CHECK (tenant_id IS NULL)', t);
  END LOOP;
END
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON notifications, notification_attempts TO vsm_app;
GRANT SELECT, INSERT, UPDATE ON notifications, notification_attempts TO vsm_system;
