-- Transactional outbox for events (CONTRACT §6). A row is written in the same transaction as the
-- change it describes; the relay (one active across all instances) later gives it its public id
-- `seq` in the order it observes commits, so ids increase in an order every reader can rely on,
-- and replay from any id is gapless. (A serial assigned at insert would not be: transactions
-- commit in a different order than they insert.)
CREATE SEQUENCE event_seq AS bigint;

CREATE TABLE events (
  id            uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  -- the public event id (SSE `id:`), NULL until the relay sequences the row
  seq           bigint,
  -- NULL: a system-wide event every tenant receives (e.g. system.health)
  tenant_id     uuid REFERENCES tenants (id) ON DELETE CASCADE,
  topic         text NOT NULL,
  payload       jsonb NOT NULL,
  inserted_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  sequenced_at  timestamptz,
  published_at  timestamptz,
  CONSTRAINT events_topic_format CHECK (topic ~ '^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$')
);
CREATE UNIQUE INDEX events_seq_key ON events (seq);
-- the relay's two work lists
CREATE INDEX events_unsequenced_idx ON events (id) WHERE seq IS NULL;
CREATE INDEX events_unpublished_idx ON events (seq) WHERE seq IS NOT NULL AND published_at IS NULL;
-- replay: a tenant's events after an id
CREATE INDEX events_tenant_seq_idx ON events (tenant_id, seq) WHERE seq IS NOT NULL;
-- retention pruning
CREATE INDEX events_inserted_at_idx ON events (inserted_at);

-- The highest seq ever pruned: a replay from below it has lost history and gets `event: gap`.
CREATE TABLE event_retention (
  id              smallint PRIMARY KEY DEFAULT 1,
  pruned_through  bigint NOT NULL DEFAULT 0,
  CONSTRAINT event_retention_single_row CHECK (id = 1)
);
INSERT INTO event_retention DEFAULT VALUES;

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
-- Tenants read their own events and the system-wide ones, and record only their own.
CREATE POLICY tenant_isolation ON events FOR SELECT TO vsm_app
  USING (tenant_id = vsm_current_tenant() OR tenant_id IS NULL);
CREATE POLICY tenant_record ON events FOR INSERT TO vsm_app
  WITH CHECK (tenant_id = vsm_current_tenant());
-- The relay sequences, publishes and prunes every tenant's events.
CREATE POLICY system_relay ON events TO vsm_system USING (true) WITH CHECK (true);

GRANT SELECT, INSERT ON events TO vsm_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON events TO vsm_system;
GRANT USAGE, SELECT ON SEQUENCE event_seq TO vsm_system;
GRANT SELECT ON event_retention TO vsm_app, vsm_system;
GRANT UPDATE ON event_retention TO vsm_system;
