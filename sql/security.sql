-- Attacks by unprivileged users, each of which must fail (issue #14).
-- Every statement that matters runs as a maester_user or maester_reader
-- mapped to one tenant, against another tenant's rows.
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
GRANT EXECUTE ON FUNCTION pg_temp.err(text) TO PUBLIC;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('secmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{secmock-%}', 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('secmock-1', '2020-01-01', 1, 1);
SELECT version FROM maester.prompt_register('sec_p', 'Say {x}');
INSERT INTO maester.eval_suite (name, prompt) VALUES ('sec_suite', 'sec_p');
INSERT INTO maester.eval_case (suite, case_name, variables) VALUES ('sec_suite', 'one', '{"x": "hi"}');
CREATE ROLE s_acme IN ROLE maester_user;
CREATE ROLE s_globex IN ROLE maester_user;
CREATE ROLE s_globex_reader IN ROLE maester_reader;
INSERT INTO maester.tenant_member (role, tenant) VALUES
    ('s_acme', 'sec-acme'), ('s_globex', 'sec-globex'), ('s_globex_reader', 'sec-globex');

-- acme runs an evaluation; the run and its results are acme's
SET ROLE s_acme;
SELECT cases, passed, tenant FROM maester.eval_run('sec_suite', model => 'secmock-1');
SELECT r.case_name, r.passed, r.tenant FROM maester.eval_result r
  JOIN maester.eval_run e ON e.id = r.run_id WHERE e.suite = 'sec_suite';
-- attack: rewrite one's own results (a failing model made to pass)
SELECT pg_temp.err($$ UPDATE maester.eval_result SET passed = true, content = 'tampered' $$);
SELECT pg_temp.err($$ UPDATE maester.eval_run SET pass_rate = 1 $$);
-- attack: forge a run, or a result of someone's run
SELECT pg_temp.err($$ INSERT INTO maester.eval_run (suite, prompt, tenant) VALUES ('sec_suite', 'sec_p', 'sec-acme') $$);
SELECT pg_temp.err($$ INSERT INTO maester.eval_result (run_id, case_name, passed, tenant)
                      SELECT max(id), 'forged', true, 'sec-acme' FROM maester.eval_run $$);
SELECT pg_temp.err($$ DELETE FROM maester.eval_result $$);
-- calling the unrecorded half records nothing
SELECT (maester.eval_run_calls('sec_suite', model => 'secmock-1') -> 'results' -> 0 ->> 'passed') AS passed;
SELECT count(*) FROM maester.eval_run WHERE suite = 'sec_suite';
RESET ROLE;

-- attack: read another tenant's model outputs through the eval tables
SELECT max(id) AS acme_run FROM maester.eval_run \gset
SET ROLE s_globex;
SELECT count(*) AS acme_runs_seen FROM maester.eval_run WHERE suite = 'sec_suite';
SELECT count(*) AS acme_results_seen FROM maester.eval_result;
SELECT count(*) FILTER (WHERE score_a IS NOT NULL OR passed_a IS NOT NULL) AS acme_scores_seen
  FROM maester.eval_compare(:acme_run, :acme_run);
RESET ROLE;
SET ROLE s_globex_reader;
SELECT count(*) AS acme_results_seen FROM maester.eval_result;
RESET ROLE;
-- admins see every tenant's
SELECT count(*) FROM maester.eval_result r JOIN maester.eval_run e ON e.id = r.run_id
 WHERE e.suite = 'sec_suite';

-- attack: forge a capture (with capture_content off) for replay() to run
SET ROLE s_acme;
SELECT pg_temp.err($$ INSERT INTO maester.capture (request_id, tenant, prompt, model, provider)
                      VALUES (gen_random_uuid(), 'sec-acme', 'anything I like', 'secmock-1', 'secmock') $$);
RESET ROLE;
-- captures still work: maester writes them
SET maester.capture_content = on;
SET ROLE s_acme;
SELECT count(*) FROM maester.llm_generate('captured for acme', 'secmock-1');
SELECT prompt, tenant FROM maester.capture WHERE prompt = 'captured for acme';
RESET ROLE;
RESET maester.capture_content;

-- attack: crash the server (or hog a backend) with a template of many
-- variables; 0.1.0 grew the backend until the kernel killed it at 50,000
SET ROLE s_acme;
SELECT array_length(maester.template_variables(
    (SELECT string_agg('{v' || g || '}', '') FROM generate_series(1, 50000) g)), 1);
RESET ROLE;
SELECT version FROM maester.prompt_register('sec_many',
    (SELECT string_agg('{v' || g || '}', ' ') FROM generate_series(1, 50000) g),
    system_template => (SELECT string_agg('{v' || g || '} {w' || g || '}', ' ') FROM generate_series(1, 50000) g));
SELECT array_length(variables, 1) FROM maester.prompt_version WHERE name = 'sec_many';
-- rendering it with nothing names the first missing ones, not all 100,000
SELECT pg_temp.err($$ SELECT maester.prompt_render('sec_many', '{}') $$) ~ '^22023: missing variables .*"v1", "v2", .*, \.\.\.$' AS short_error,
       length(pg_temp.err($$ SELECT maester.prompt_render('sec_many', '{}') $$)) < 1200 AS bounded;
-- and it can be cancelled: statement_timeout stops a template of
-- 2,000,000 variables (the compiler checks for interrupts)
CREATE TEMP TABLE big_template AS
    SELECT string_agg('{v' || g || '}', '') AS t FROM generate_series(1, 2000000) g;
SET statement_timeout = '50ms';
SELECT maester.template_variables(t) IS NOT NULL FROM big_template;
RESET statement_timeout;
-- a hostile variable name is not echoed whole
SELECT pg_temp.err($$ SELECT maester.template_variables('{' || repeat('x', 100000) || '-}') $$);

-- attack: poison the ledger and every budget of a tenant with a NaN or
-- infinite price (0.1.0 accepted both: CHECK (x >= 0) passes for NaN)
SELECT pg_temp.err($$ INSERT INTO maester.price (model, input_cost_per_million, output_cost_per_million)
                      VALUES ('secmock-1', 'NaN', 1) $$);
SELECT pg_temp.err($$ INSERT INTO maester.price (model, input_cost_per_million, output_cost_per_million)
                      VALUES ('secmock-1', 1, 'Infinity') $$);
SELECT pg_temp.err($$ INSERT INTO maester.price (model, input_cost_per_million, output_cost_per_million,
                                                 cache_read_input_cost_per_million)
                      VALUES ('secmock-1', 1, 1, 'NaN') $$);
SELECT pg_temp.err($$ INSERT INTO maester.price (model, input_cost_per_million, output_cost_per_million)
                      VALUES ('secmock-1', 1e7, 1) $$);
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd) VALUES ('sec-acme', 'day', 'NaN') $$);
-- huge token counts: cost_of says what overflows, cost_exact prices them
SELECT pg_temp.err($$ SELECT maester.cost_of('gpt-4.1', 9223372036854775807, 9223372036854775807) $$);
SELECT * FROM maester.cost_exact('gpt-4.1', 9223372036854775807, 9223372036854775807);
SELECT pg_temp.err($$ SELECT maester.cost_of('gpt-4.1', 10, 1, 9223372036854775807, now(), 9223372036854775807) $$);

DELETE FROM maester.eval_suite WHERE name = 'sec_suite';
DELETE FROM maester.capture WHERE tenant = 'sec-acme';
DELETE FROM maester.tenant_member WHERE tenant IN ('sec-acme', 'sec-globex');
DROP ROLE s_acme, s_globex, s_globex_reader;
