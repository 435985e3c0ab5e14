-- Background jobs: what submit and cancel_job check, who sees and may
-- cancel which job, retention.  (Running them, interruptions and the
-- wakeups: test/t/010_jobs.pl.)
SET client_min_messages = error;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-- no worker runs the jobs of this suite
ALTER SYSTEM SET maester.job_workers = 0;
SELECT pg_reload_conf();
DO $$
BEGIN
  FOR i IN 1..200 LOOP
    EXIT WHEN NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'maester job worker');
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
CREATE ROLE job_a LOGIN IN ROLE maester_user;
CREATE ROLE job_b LOGIN IN ROLE maester_user;
INSERT INTO maester.tenant_member (role, tenant) VALUES ('job_a', 'tenant_a'), ('job_b', 'tenant_b');
CREATE PROCEDURE public.job_cb(job_id bigint) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION public.not_a_procedure(job_id bigint) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE PROCEDURE public.wrong_args(job_id text) LANGUAGE sql AS $$ SELECT 1 $$;

-- what submit refuses, before anything is queued
SELECT pg_temp.err($$ SELECT maester.submit(NULL) $$);
SELECT pg_temp.err($$ SELECT maester.submit('[]') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"model": "m"}') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x", "prompt_name": "y"}') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x", "max_tokens": -1}') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x", "options": {"colour": 1}}') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": 42}') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x", "variables": {"a": 1}}') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x"}', callback => 'not_a_procedure') $$);
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt": "x"}', callback => 'wrong_args') $$);
SELECT count(*) AS nothing_queued FROM maester.job;

-- jobs belong to their role and tenant
SET ROLE job_a;
SET maester.tenant = 'tenant_a';
SELECT maester.submit('{"prompt": "a1", "model": "mock-1"}', callback => 'public.job_cb', submission => 'batch-a') AS a1 \gset
SELECT maester.submit('{"prompt": "a2", "model": "mock-1"}', submission => 'batch-a') AS a2 \gset
SELECT request, callback, tenant, role, status, attempts, request_id IS NULL AS not_taken
  FROM maester.job ORDER BY id;
SELECT submission, total, queued, running, done, eta IS NULL AS no_eta_yet FROM maester.job_progress;
-- jobs submitted in one transaction share a default submission
BEGIN;
SELECT maester.submit('{"prompt": "t1"}') IS NOT NULL AS t1, maester.submit('{"prompt": "t2"}') IS NOT NULL AS t2;
COMMIT;
SELECT count(DISTINCT submission) AS groups, bool_and(submission LIKE 'txn-%') AS txn_named
  FROM maester.job WHERE submission <> 'batch-a';
RESET ROLE;

SET ROLE job_b;
SET maester.tenant = 'tenant_b';
SELECT count(*) AS jobs_of_others_seen FROM maester.job;
SELECT pg_temp.err(format('SELECT maester.cancel_job(%s)', :a1));
SELECT pg_temp.err($$ UPDATE maester.job SET status = 'done' $$);
SELECT pg_temp.err($$ INSERT INTO maester.job (submission, request, tenant, role) VALUES ('x', '{}', 'x', 'x') $$);
RESET ROLE;

SET ROLE job_a;
SET maester.tenant = 'tenant_a';
SELECT maester.cancel_job(:a1) AS cancelled, maester.cancel_job(:a1) AS again;
SELECT id = :a1 AS is_a1, status, error_code, error_class, finished_at IS NOT NULL AS ended
  FROM maester.job WHERE status = 'cancelled';
SELECT pg_temp.err($$ SELECT maester.cancel_job(-1) $$);
SELECT pg_temp.err($$ SELECT maester.job_retention('1 day') $$);
RESET ROLE;

-- retention (admins): ended jobs older than the age go, queued ones stay
SELECT pg_temp.err($$ SELECT maester.job_retention('-1 day') $$);
SELECT maester.job_retention('1 day') AS too_young;
SELECT maester.job_retention('0') AS deleted;
SELECT status, count(*) FROM maester.job GROUP BY status ORDER BY status;

-- every object is documented
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'maester'::regnamespace
   AND p.proname IN ('submit', 'cancel_job', 'job_retention', 'generate_batch')
   AND obj_description(p.oid, 'pg_proc') IS NULL;
SELECT c.relname FROM pg_class c
 WHERE c.relnamespace = 'maester'::regnamespace AND c.relname IN ('job', 'job_progress')
   AND obj_description(c.oid, 'pg_class') IS NULL;

-- a tool_choice whose tools come from the prompt version's config is
-- checked when the job runs, with the config (issue #15)
SELECT version FROM maester.prompt_register('job_wx', 'Weather in {city}?',
    config => '{"tools": [{"name": "get_weather", "parameters": {"type": "object"}}]}');
SELECT pg_temp.err($$ SELECT maester.submit('{"prompt_name": "job_wx", "variables": {"city": "Paris"}, "options": {"tool_choice": {"name": "get_weather"}}}') $$) ~ '^ok' AS submitted;

DELETE FROM maester.job;
DROP PROCEDURE public.job_cb(bigint), public.wrong_args(text);
DROP FUNCTION public.not_a_procedure(bigint);
DELETE FROM maester.tenant_member WHERE role IN ('job_a', 'job_b');
DROP ROLE job_a, job_b;
ALTER SYSTEM RESET maester.job_workers;
SELECT pg_reload_conf();
