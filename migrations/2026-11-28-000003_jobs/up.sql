-- The job engine (CONTRACT §7): Oban's oban_jobs, plus the small tables the engine needs to be
-- crash safe and cluster-wide (queue pause state, node heartbeats, cron slots).

CREATE TABLE jobs (
  id            uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  -- NULL: a system job (cron health check, test workers); otherwise the tenant it acts for.
  tenant_id     uuid REFERENCES tenants (id) ON DELETE CASCADE,
  state         text NOT NULL DEFAULT 'available',
  queue         text NOT NULL DEFAULT 'default',
  worker        text NOT NULL,
  args          jsonb NOT NULL DEFAULT '{}'::jsonb,
  -- one object per failed attempt: {"attempt","at","error"}
  errors        jsonb NOT NULL DEFAULT '[]'::jsonb,
  -- attempts used so far (incremented when fetched; a snooze or a shutdown hand-back refunds it)
  attempt       integer NOT NULL DEFAULT 0,
  max_attempts  integer NOT NULL DEFAULT 20,
  priority      smallint NOT NULL DEFAULT 0,
  tags          text[] NOT NULL DEFAULT '{}',
  meta          jsonb NOT NULL DEFAULT '{}'::jsonb,
  -- worker + args digest (plus the tenant) for unique jobs; NULL for ordinary ones
  unique_key    text,
  inserted_at   timestamptz NOT NULL DEFAULT now(),
  scheduled_at  timestamptz NOT NULL DEFAULT now(),
  attempted_at  timestamptz,
  -- the node (job_nodes.id) running or last running the job
  attempted_by  text,
  completed_at  timestamptz,
  cancelled_at  timestamptz,
  discarded_at  timestamptz,
  CONSTRAINT jobs_state_valid CHECK (state IN
    ('available', 'scheduled', 'executing', 'retryable', 'completed', 'discarded', 'cancelled')),
  CONSTRAINT jobs_priority_range CHECK (priority BETWEEN 0 AND 9),
  CONSTRAINT jobs_max_attempts_positive CHECK (max_attempts >= 1),
  CONSTRAINT jobs_attempt_range CHECK (attempt >= 0),
  CONSTRAINT jobs_queue_length CHECK (char_length(queue) BETWEEN 1 AND 128),
  CONSTRAINT jobs_worker_length CHECK (char_length(worker) BETWEEN 1 AND 128),
  CONSTRAINT jobs_args_object CHECK (jsonb_typeof(args) = 'object')
);
-- A queue table turns over constantly: every job leaves dead row versions behind, and until
-- they are vacuumed (or their index entries marked dead, which an open snapshot such as a
-- running ANALYZE prevents) each fetch walks past them. Vacuum and analyze it early and without
-- the cost-based throttling, so that window stays short.
ALTER TABLE jobs SET (
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_analyze_scale_factor = 0.05,
  autovacuum_vacuum_cost_delay = 0
);
-- Every state change moves a row between these partial indexes, so they are kept few and narrow.
-- Fetch: the next available jobs of a queue in priority order.
CREATE INDEX jobs_fetch_idx ON jobs (queue, priority, scheduled_at, id) WHERE state = 'available';
-- Stager: scheduled and retryable jobs whose time has come.
CREATE INDEX jobs_stage_idx ON jobs (scheduled_at) WHERE state IN ('scheduled', 'retryable');
-- Rescuer and shutdown hand-back: executing jobs by node.
CREATE INDEX jobs_executing_idx ON jobs (attempted_by) WHERE state = 'executing';
-- Unique inserts look for a live job with the same key.
CREATE INDEX jobs_unique_key_idx ON jobs (unique_key, inserted_at) WHERE unique_key IS NOT NULL;
-- A tenant's jobs (GET /v1/jobs, and the tenant foreign key's cascade).
CREATE INDEX jobs_tenant_id_idx ON jobs (tenant_id, id) WHERE tenant_id IS NOT NULL;
-- Pruner: final jobs by the time they became final.
CREATE INDEX jobs_prune_idx ON jobs ((coalesce(completed_at, cancelled_at, discarded_at)))
  WHERE state IN ('completed', 'cancelled', 'discarded');

-- Queues as the cluster knows them: pausing is a row here, so it holds across restarts and for
-- every node. A queue without a row is running.
CREATE TABLE job_queues (
  name        text PRIMARY KEY,
  paused      boolean NOT NULL DEFAULT false,
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Worker nodes (`vsm work` / `vsm all` processes). Each refreshes heartbeat_at; the rescuer
-- hands back the executing jobs of nodes whose heartbeat stopped.
CREATE TABLE job_nodes (
  id            text PRIMARY KEY,
  queues        text[] NOT NULL DEFAULT '{}',
  started_at    timestamptz NOT NULL DEFAULT now(),
  heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per cron entry and slot: the primary key is what makes a slot fire once cluster-wide.
CREATE TABLE job_cron_slots (
  name         text NOT NULL,
  slot         timestamptz NOT NULL,
  job_id       uuid,
  inserted_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (name, slot)
);

-- Row-level security: tenants see and insert only their own jobs (the episode and its analysis
-- job commit together in a tenant transaction); the engine, as vsm_system, works on all of them.
ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON jobs TO vsm_app
  USING (tenant_id = vsm_current_tenant()) WITH CHECK (tenant_id = vsm_current_tenant());
CREATE POLICY system_engine ON jobs TO vsm_system USING (true) WITH CHECK (true);

-- The engine writes each attempt of a tenant job to task_log as it acknowledges it. It may only
-- insert there: vsm_system still cannot read any tenant's history.
CREATE POLICY system_log ON task_log FOR INSERT TO vsm_system WITH CHECK (true);
GRANT INSERT ON task_log TO vsm_system;

GRANT SELECT, INSERT, UPDATE ON jobs TO vsm_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON jobs, job_queues, job_nodes, job_cron_slots TO vsm_system;
GRANT SELECT ON job_queues TO vsm_app;
GRANT EXECUTE ON FUNCTION vsm_uuid_v7() TO vsm_system;

-- Results of the health_check worker (cron, hourly): what each dependency answered.
CREATE TABLE health_checks (
  id          uuid PRIMARY KEY DEFAULT vsm_uuid_v7(),
  -- ok | degraded
  status      text NOT NULL,
  -- {"database": {"status","latency_ms","error"?}, ...}
  checks      jsonb NOT NULL,
  checked_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT health_checks_status_valid CHECK (status IN ('ok', 'degraded'))
);
CREATE INDEX health_checks_checked_at_idx ON health_checks (checked_at DESC);
GRANT SELECT, INSERT, DELETE ON health_checks TO vsm_system;
GRANT SELECT ON health_checks TO vsm_app;
