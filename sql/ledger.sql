-- The usage ledger: one row per attempt, written by the ledger worker;
-- tenants, row-level security, views, retention.  (Durability across
-- rollback, crashes and worker restarts is tested in test/t/005_ledger.pl.)
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority,
                              circuit_failure_threshold, backoff_base_ms, backoff_max_ms)
VALUES ('lmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY',
        '{lmock-%,fault-%}', 1, 0, 10, 20);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('lmock-a', '2020-01-01', 1, 2), ('fault-hang', '2020-01-01', 3, 4),
       ('fault-flaky-1-503', '2020-01-01', 1, 1);
CREATE TEMP TABLE calls AS SELECT * FROM maester.llm_generate('Hello ledger', 'lmock-a', 10) WHERE false;

-- a successful call: one settled row, its cost exactly what the call returned
INSERT INTO calls SELECT * FROM maester.llm_generate('Hello ledger', 'lmock-a', 10,
    options => '{"tags": {"feature": "search", "team": "core"}}');
SELECT u.attempt, u.status, u.tenant, u.role = current_user AS by_me, u.provider, u.model,
       u.input_tokens = c.input_tokens AND u.output_tokens = c.output_tokens AS tokens_match,
       u.cost_usd = c.cost_usd AS cost_matches, u.cost_usd, u.priced,
       u.estimated_cost_usd >= u.cost_usd AS estimate_is_worst_case,
       u.max_tokens, u.tags, u.trace_id = c.trace_id AS same_trace,
       u.prompt_hash = c.prompt_hash AS same_hash, u.latency_ms > 0 AS has_latency,
       u.settled_at >= u.ts AS settled_after_start, u.http_status, u.usage_estimated
  FROM maester.usage u JOIN calls c USING (request_id);

-- every attempt is a row: a retried call leaves its failed attempt too
TRUNCATE calls;
INSERT INTO calls SELECT * FROM maester.llm_generate('retry me', 'fault-flaky-1-503');
SELECT u.attempt, u.status, u.error_class, u.http_status, u.cost_usd
  FROM maester.usage u JOIN calls c USING (request_id) ORDER BY u.attempt;

-- failures: an HTTP error costs nothing; a timeout keeps its estimate
-- (the provider may have billed it)
SELECT pg_temp.err($$ SELECT maester.llm_generate('bad', 'fault-status-400') $$);
SELECT status, error_class, http_status, cost_usd FROM maester.usage
 WHERE model = 'fault-status-400' AND provider = 'lmock';
SELECT pg_temp.err($$ SELECT maester.llm_generate('slow', 'fault-hang', 5, options => '{"timeout_ms": 200}') $$);
SELECT status, error_class, cost_usd = estimated_cost_usd AS charged_estimate, cost_usd > 0 AS positive
  FROM maester.usage WHERE model = 'fault-hang' AND provider = 'lmock';
-- a cancelled call (statement_timeout) is settled as cancelled
SET statement_timeout = '200ms';
\set SHOW_CONTEXT never
SELECT pg_temp.err($$ SELECT maester.llm_generate('slower', 'fault-hang', 5) $$);
\set SHOW_CONTEXT errors
RESET statement_timeout;
-- (the cancelled call does not wait for its settle record: wait here)
DO $$ BEGIN
  FOR i IN 1..500 LOOP
    EXIT WHEN NOT EXISTS (SELECT FROM maester.usage WHERE status = 'pending' AND provider = 'lmock');
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
SELECT status, error_class, cost_usd = estimated_cost_usd AS charged_estimate
  FROM maester.usage WHERE model = 'fault-hang' AND provider = 'lmock' AND prompt_hash = encode(sha256('slower'), 'hex');

-- a model without a price: the call proceeds, cost NULL, priced false,
-- and a WARNING once per backend and model
SELECT content IS NOT NULL AS answered, cost_usd, priced FROM maester.llm_generate('x', 'lmock-unpriced');
SELECT content IS NOT NULL AS answered, cost_usd, priced FROM maester.llm_generate('y', 'lmock-unpriced');
SELECT status, cost_usd, priced, estimated_cost_usd FROM maester.usage WHERE model = 'lmock-unpriced';

-- tenants: the session setting travels with every row
SET maester.tenant = 'acme';
SELECT provider FROM maester.llm_generate('for acme', 'lmock-a');
BEGIN;
SET LOCAL maester.tenant = 'globex';
SELECT provider FROM maester.llm_generate('for globex', 'lmock-a');
COMMIT;
RESET maester.tenant;
SELECT tenant, count(*) FROM maester.usage WHERE model = 'lmock-a' GROUP BY 1 ORDER BY 1;
SELECT pg_temp.err($$ SET maester.tenant = '' $$);

-- row-level security: users and readers see their tenant only; admins all
CREATE ROLE l_user LOGIN IN ROLE maester_user;
CREATE ROLE l_reader LOGIN IN ROLE maester_reader;
CREATE ROLE l_admin LOGIN IN ROLE maester_admin;
INSERT INTO maester.tenant_member (role, tenant) VALUES ('l_user', 'acme'), ('l_reader', 'globex');
SET ROLE l_user;
SET maester.tenant = 'acme';
SELECT DISTINCT tenant FROM maester.usage ORDER BY 1;
SELECT tenant, sum(calls) FROM maester.cost_daily GROUP BY 1 ORDER BY 1;
SELECT pg_temp.err($$ DELETE FROM maester.usage $$);
SELECT pg_temp.err($$ UPDATE maester.usage SET cost_usd = 0 $$);
SELECT pg_temp.err($$ INSERT INTO maester.usage (request_id, attempt, ts, tenant, role, trace_id, provider, model, priced, status) VALUES (gen_random_uuid(), 1, now(), 'acme', 'x', 'x', 'x', 'x', true, 'ok') $$);
RESET ROLE;
SET ROLE l_reader;
SET maester.tenant = 'globex';
SELECT DISTINCT tenant FROM maester.usage ORDER BY 1;
RESET ROLE;
SET ROLE l_admin;
SELECT DISTINCT tenant FROM maester.usage WHERE model = 'lmock-a' ORDER BY 1;
RESET ROLE;
RESET maester.tenant;

-- the views for BI
SELECT tenant, provider, model, calls, errors, input_tokens > 0 AS has_tokens,
       cost_usd > 0 AS has_cost, all_priced
  FROM maester.cost_daily WHERE model IN ('lmock-a', 'lmock-unpriced', 'fault-status-400') AND provider = 'lmock'
 ORDER BY model, tenant;
SELECT version FROM maester.prompt_register('ledger_p', 'Tell me about {x}');
SELECT provider FROM maester.llm_generate(prompt_name => 'ledger_p', variables => '{"x": 1}', model => 'lmock-a');
SELECT provider FROM maester.llm_generate(prompt_name => 'ledger_p', variables => '{"x": 2}', model => 'lmock-a');
SELECT prompt, version, count(*) AS hashes, sum(calls) AS calls, sum(errors) AS errors,
       bool_and(p50_latency_ms > 0 AND p95_latency_ms >= p50_latency_ms) AS latencies,
       sum(total_cost_usd) > 0 AS cost
  FROM maester.cost_by_prompt_version WHERE prompt = 'ledger_p' GROUP BY 1, 2;

-- retention: old rows go, pending ones never
UPDATE maester.usage SET ts = ts - interval '400 days' WHERE model = 'lmock-unpriced';
SELECT maester.usage_retention('365 days');
SELECT count(*) FROM maester.usage WHERE model = 'lmock-unpriced';
SELECT pg_temp.err($$ SELECT maester.usage_retention('-1 day') $$);

DELETE FROM maester.tenant_member WHERE role IN ('l_user', 'l_reader');
DROP ROLE l_user, l_reader, l_admin;
