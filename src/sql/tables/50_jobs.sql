-- src/sql/tables/50_jobs.sql: Asynchronous jobs.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

-- A job's result: 0.1.0's maester.generation, frozen (see the comment)
CREATE TYPE maester.job_result AS (
    request_id          uuid,
    trace_id            text,
    provider            text,
    model               text,
    content             text,
    finish_reason       text,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint,
    cache_write_tokens  bigint,
    usage_estimated     boolean,
    latency_ms          double precision,
    attempts            integer,
    fallback_used       boolean,
    prompt_name         text,
    prompt_version      text,
    prompt_hash         text,
    requested_model     text,
    response_id         text,
    cost_usd            numeric,
    priced              boolean,
    evaluation          jsonb
);

COMMENT ON TYPE maester.job_result IS
    'A job''s result: the maester.generation fields of 0.1.0, frozen, so that dumps of any version restore (a stored composite value must have every attribute of its type). Fields the generation gained since are columns of maester.job (tool_calls, parsed, refusal, cached).';

-- Asynchronous jobs: requests queued with maester.submit and run by the
-- database's resident worker (and job workers) through the same gateway.
CREATE TABLE maester.job (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submission       text NOT NULL,
    request          jsonb NOT NULL,
    callback         regproc,
    tenant           text NOT NULL,
    role             name NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status OPERATOR(pg_catalog.=) ANY
               (ARRAY['queued', 'running', 'done', 'failed', 'cancelled', 'review'])),
    cancel_requested boolean NOT NULL DEFAULT false,
    attempts         integer NOT NULL DEFAULT 0,
    request_id       uuid,
    trace_id         text,
    result           maester.job_result,
    error_code       text,
    error_class      text,
    error_message    text,
    callback_error   text,
    submitted_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    started_at       timestamptz,
    finished_at      timestamptz,
    worker           integer,
    worker_pid       integer,
    callback_done_at timestamptz,
    tool_calls       jsonb,
    parsed           jsonb,
    refusal          text,
    cached           boolean
);

CREATE INDEX job_queued ON maester.job (id) WHERE status OPERATOR(pg_catalog.=) 'queued';
CREATE INDEX job_running ON maester.job (worker) WHERE status OPERATOR(pg_catalog.=) 'running';
CREATE INDEX job_submission ON maester.job (submission);
CREATE INDEX job_request ON maester.job (request_id);
CREATE INDEX job_callback_waiting ON maester.job (id)
    WHERE callback IS NOT NULL AND callback_done_at IS NULL;

COMMENT ON TABLE maester.job IS
    'Asynchronous model calls (maester.submit), run by the job workers; each has its ledger rows (usage.request_id = job.request_id) and its trace (trace_id). Row-level security by tenant.';
COMMENT ON COLUMN maester.job.submission IS 'Groups jobs for maester.job_progress: given to submit, else one per submitting transaction.';
COMMENT ON COLUMN maester.job.status IS 'queued, running, done, failed, cancelled; review: its worker stopped while the call was in flight (it may have been answered and billed: see its ledger rows), so it was not run again (maester.job_retry_interrupted).';
COMMENT ON COLUMN maester.job.attempts IS 'Times a worker took the job (more than 1 only after an interruption, with maester.job_retry_interrupted on).';
COMMENT ON COLUMN maester.job.request_id IS 'The call''s request id, set when a worker takes the job, before anything is sent: its ledger rows.';
COMMENT ON COLUMN maester.job.callback IS 'A procedure called with the job id after the job ended (done, failed or cancelled while running), as the submitter, by the database''s callback worker in a transaction of its own, within maester.callback_timeout; its error is kept in callback_error.';
COMMENT ON COLUMN maester.job.callback_done_at IS 'When the callback ran (NULL: it waits, or there is none).';
COMMENT ON COLUMN maester.job.result IS 'The call''s result when it is done: maester.generation''s fields of 0.1.0 (maester.job_result).';
COMMENT ON COLUMN maester.job.tool_calls IS 'The result''s maester.generation.tool_calls.';
COMMENT ON COLUMN maester.job.parsed IS 'The result''s maester.generation.parsed.';
COMMENT ON COLUMN maester.job.refusal IS 'The result''s maester.generation.refusal.';
COMMENT ON COLUMN maester.job.cached IS 'The result''s maester.generation.cached: the response cache answered.';

ALTER TABLE maester.job ENABLE ROW LEVEL SECURITY;
CREATE POLICY job_admin ON maester.job FOR ALL TO maester_admin USING (true);
CREATE POLICY job_tenant ON maester.job FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
