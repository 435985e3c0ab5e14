-- src/sql/functions/50_jobs.sql: Jobs: submit, cancel_job, job_progress, job_retention.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.submit(request jsonb, callback regproc DEFAULT NULL,
                               submission text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'job_submit'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.submit(jsonb, regproc, text) IS
    'Queues a model call and returns its job id at once: request is an object with llm_generate''s argument names (as in generate_batch), run as the submitting role and tenant. callback: a procedure taking the job id (bigint), called when the job ends. The job workers are woken at commit.';

CREATE FUNCTION maester.cancel_job(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'job_cancel'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.cancel_job(bigint) IS
    'Cancels a job: a queued one at once, a running one at its worker''s next round (its call is stopped and settled in the ledger as cancelled). False when the job had already ended. Its submitter or maester_admin.';

CREATE VIEW maester.job_progress WITH (security_invoker = true) AS
SELECT p.submission, p.total, p.queued, p.running, p.done, p.failed, p.cancelled, p.review,
       p.submitted_at, p.last_finished_at,
       pg_catalog.round(p.per_second, 2) AS per_second,
       CASE WHEN p.queued OPERATOR(pg_catalog.+) p.running OPERATOR(pg_catalog.=) 0 THEN interval '0'
            WHEN p.per_second OPERATOR(pg_catalog.>) 0
            THEN pg_catalog.make_interval(secs => ((p.queued OPERATOR(pg_catalog.+) p.running)
                                                   OPERATOR(pg_catalog./) p.per_second)::double precision)
       END AS eta
  FROM (SELECT j.submission,
               pg_catalog.count(*) AS total,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'queued') AS queued,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'running') AS running,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'done') AS done,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'failed') AS failed,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'cancelled') AS cancelled,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'review') AS review,
               pg_catalog.min(j.submitted_at) AS submitted_at,
               pg_catalog.max(j.finished_at) AS last_finished_at,
               (pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) ANY (ARRAY['done', 'failed'])))::numeric
                 OPERATOR(pg_catalog./) NULLIF(EXTRACT(epoch FROM pg_catalog.max(j.finished_at)
                                                   OPERATOR(pg_catalog.-) pg_catalog.min(j.started_at)), 0)
                 AS per_second
          FROM maester.job j
         GROUP BY j.submission) p;

COMMENT ON VIEW maester.job_progress IS
    'Per submission: how many jobs are queued, running, done, failed, cancelled or in review; the rate so far (jobs finished per second since the first started) and the estimated time left.';

CREATE FUNCTION maester.job_retention(older_than interval)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'older_than must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- queued, running and review jobs are kept whatever their age
    DELETE FROM maester.job j
     WHERE j.finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than)
       AND j.status OPERATOR(pg_catalog.=) ANY (ARRAY['done', 'failed', 'cancelled']);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.job_retention(interval) IS
    'Deletes jobs that ended (done, failed, cancelled) longer ago than the given age and returns how many; jobs in review are kept.';
