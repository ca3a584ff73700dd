DROP TABLE IF EXISTS health_checks;
REVOKE INSERT ON task_log FROM vsm_system;
DROP POLICY IF EXISTS system_log ON task_log;
DROP TABLE IF EXISTS job_cron_slots;
DROP TABLE IF EXISTS job_nodes;
DROP TABLE IF EXISTS job_queues;
DROP TABLE IF EXISTS jobs;
REVOKE EXECUTE ON FUNCTION vsm_uuid_v7() FROM vsm_system;
