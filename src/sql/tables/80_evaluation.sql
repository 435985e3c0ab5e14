-- src/sql/tables/80_evaluation.sql: Evaluation suites, their runs and results; captured calls for replay.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TABLE maester.eval_suite (
    name        text PRIMARY KEY,
    prompt      text NOT NULL REFERENCES maester.prompt (name),
    description text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE maester.eval_suite IS
    'A set of test cases for one prompt: run it against versions and models with maester.eval_run, compare runs with maester.eval_compare.';

CREATE TABLE maester.eval_case (
    suite     text NOT NULL REFERENCES maester.eval_suite (name) ON DELETE CASCADE,
    case_name text NOT NULL,
    variables jsonb NOT NULL DEFAULT '{}',
    checks    jsonb,
    expected  text,
    PRIMARY KEY (suite, case_name),
    CHECK (pg_catalog.jsonb_typeof(variables) OPERATOR(pg_catalog.=) 'object')
);

COMMENT ON TABLE maester.eval_case IS
    'One test case: the variables to render the prompt with, the checks its output must pass (NULL: the prompt version''s checks, else the default), and optionally the expected output.';
COMMENT ON COLUMN maester.eval_case.expected IS 'Expected output: adds a levenshtein check allowing 20% of its length as edit distance.';

CREATE TABLE maester.eval_run (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    suite          text NOT NULL REFERENCES maester.eval_suite (name) ON DELETE CASCADE,
    prompt         text NOT NULL,
    prompt_version text,
    model          text,
    started_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at    timestamptz,
    cases          integer,
    passed         integer,
    errors         integer,
    pass_rate      numeric,
    mean_score     numeric,
    total_cost_usd numeric,
    p50_latency_ms double precision,
    p95_latency_ms double precision,
    tenant         text NOT NULL DEFAULT 'default'
);

COMMENT ON TABLE maester.eval_run IS
    'One run of a suite against a prompt version and model, with its summary: pass rate, mean score, total cost, p50/p95 latency. Written only by maester.eval_run; row-level security by tenant.';
COMMENT ON COLUMN maester.eval_run.tenant IS 'The tenant the run was made as (runs of 0.1.0, and runs restored from its dumps: default).';

CREATE TABLE maester.eval_result (
    run_id     bigint NOT NULL REFERENCES maester.eval_run (id) ON DELETE CASCADE,
    case_name  text NOT NULL,
    content    text,
    score      numeric,
    passed     boolean NOT NULL,
    evaluation jsonb,
    cost_usd   numeric,
    latency_ms double precision,
    trace_id   text,
    request_id uuid,
    error      text,
    PRIMARY KEY (run_id, case_name),
    tenant     text NOT NULL DEFAULT 'default'
);

COMMENT ON TABLE maester.eval_result IS
    'The result of one case in one run: the output, its evaluation, cost, latency and trace id (or the error). Written only by maester.eval_run; row-level security by tenant.';
COMMENT ON COLUMN maester.eval_result.tenant IS 'The tenant of the run (results of 0.1.0, and results restored from its dumps: default).';

ALTER TABLE maester.eval_run ENABLE ROW LEVEL SECURITY;
CREATE POLICY eval_run_admin ON maester.eval_run FOR ALL TO maester_admin USING (true);
CREATE POLICY eval_run_tenant ON maester.eval_run FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.eval_result ENABLE ROW LEVEL SECURITY;
CREATE POLICY eval_result_admin ON maester.eval_result FOR ALL TO maester_admin USING (true);
CREATE POLICY eval_result_tenant ON maester.eval_result FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

CREATE TABLE maester.capture (
    request_id      uuid PRIMARY KEY,
    ts              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    tenant          text NOT NULL,
    prompt_name     text,
    prompt_version  text,
    variables       jsonb,
    prompt          text,
    system          text,
    requested_model text,
    model           text NOT NULL,
    provider        text NOT NULL,
    max_tokens      integer,
    options         jsonb,
    output          text,
    eval_score      double precision,
    messages        jsonb
);

COMMENT ON TABLE maester.capture IS
    'Prompts, variables and outputs of calls, kept only while maester.capture_content is on (off by default); what maester.replay needs. Written by maester in the caller''s transaction (users cannot insert). Row-level security by tenant.';

ALTER TABLE maester.capture ENABLE ROW LEVEL SECURITY;
CREATE POLICY capture_admin ON maester.capture FOR ALL TO maester_admin USING (true);
CREATE POLICY capture_tenant ON maester.capture FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
