-- Telegram (CONTRACT §9): chats linked to tenants, and the dedupe of inbound updates.

-- A chat is linked to at most one tenant (chat_id is the primary key across tenants), so the
-- bot always knows whose data a chat may see. Tenant-scoped like every tenant table.
CREATE TABLE telegram_chats (
  chat_id     bigint PRIMARY KEY,
  tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  label       text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT telegram_chats_label_length CHECK (label IS NULL OR char_length(label) BETWEEN 1 AND 200)
);
CREATE INDEX telegram_chats_tenant_idx ON telegram_chats (tenant_id, chat_id);

ALTER TABLE telegram_chats ENABLE ROW LEVEL SECURITY;
ALTER TABLE telegram_chats FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON telegram_chats
  USING (tenant_id = vsm_current_tenant()) WITH CHECK (tenant_id = vsm_current_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON telegram_chats TO vsm_app;

-- An inbound update names a chat, not a tenant. This function is the only way to read the link
-- across tenants: it takes one chat id and returns at most that chat's tenant. SECURITY DEFINER
-- runs it as the migrating role (the owner), which row-level security does not apply to.
CREATE FUNCTION vsm_resolve_telegram_chat(p_chat_id bigint)
RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
  SELECT c.tenant_id FROM telegram_chats c WHERE c.chat_id = p_chat_id
$$;
REVOKE ALL ON FUNCTION vsm_resolve_telegram_chat(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION vsm_resolve_telegram_chat(bigint) TO vsm_app, vsm_system;

-- Every update_id the webhook accepted, inserted in the same transaction as the update's job,
-- so a repeated delivery (Telegram retries, or two instances behind a load balancer) is seen
-- exactly once. Pruned after the retention (Telegram keeps undelivered updates for 24 h).
CREATE TABLE telegram_updates (
  update_id    bigint PRIMARY KEY,
  received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX telegram_updates_received_at_idx ON telegram_updates (received_at);
GRANT SELECT, INSERT, DELETE ON telegram_updates TO vsm_system;
