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

-- attack: an admin (not a superuser) repoints a keyed provider at a host
-- of their own to receive its key.  maester.key_hosts (superuser, here
-- MAESTER_TEST_API_KEY=127.0.0.1) binds keys to hosts; anything else is
-- refused before a connection is opened (even before DNS)
CREATE ROLE s_admin IN ROLE maester_admin;
SET maester.allow_insecure_hosts = '127.0.0.1, 127.0.0.2';
SET ROLE s_admin;
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('exfil', 'openai_compatible', 'http://127.0.0.2:8080/v1', 'MAESTER_TEST_API_KEY', '{exfil-%}', 0);
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'exfil-1') $$);
-- the userinfo trick: the host is what follows the @
UPDATE maester.provider SET base_url = 'http://127.0.0.1@127.0.0.2:8080/v1' WHERE name = 'exfil';
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'exfil-1') $$);
-- a public name that starts like the bound host
UPDATE maester.provider SET base_url = 'https://127.0.0.1.nip.io/v1' WHERE name = 'exfil';
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'exfil-1') $$);
-- the binding itself is the superuser's: an admin can neither set nor read it
SELECT pg_temp.err($$ SET maester.key_hosts = 'MAESTER_TEST_API_KEY=127.0.0.2' $$);
SELECT pg_temp.err($$ SHOW maester.key_hosts $$);
SELECT pg_temp.err($$ SET maester.allow_insecure_hosts = '127.0.0.2' $$);
RESET ROLE;
SELECT count(*) AS exfil_rows FROM maester.usage WHERE provider = 'exfil';
DELETE FROM maester.provider WHERE name = 'exfil';

-- attack: a provider at another port of an allowed host (PostgreSQL's own,
-- say).  An entry host:port allows that port only
SELECT set_config('maester.allow_insecure_hosts', '127.0.0.1:' || split_part(:'mock_url', ':', 3), false) IS NOT NULL AS set;
SELECT provider FROM maester.llm_generate('hi', 'secmock-1');
SET ROLE s_admin;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('pgport', 'openai_compatible', 'http://127.0.0.1:5432/v1', '{pgport-%}', 0);
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'pgport-1') $$);
DELETE FROM maester.provider WHERE name = 'pgport';
RESET ROLE;
SELECT pg_temp.err($$ SET maester.allow_insecure_hosts = '127.0.0.1:99999' $$);
SELECT pg_temp.err($$ SET maester.allow_insecure_hosts = 'a*b.example' $$);
RESET maester.allow_insecure_hosts;
DROP ROLE s_admin;

-- attack: starve every tenant of a provider's tokens_per_minute with a
-- huge max_tokens (0.1.0 accepted 2,147,483,647).  max_tokens is bounded by
-- the model's output limit (maester.model.max_output_tokens, else the
-- superuser's maester.max_output_tokens, 131072 by default) ...
SET ROLE s_acme;
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'secmock-1', max_tokens => 2147483647) $$);
RESET ROLE;
INSERT INTO maester.model (name, provider, provider_model, max_output_tokens) VALUES ('small', 'secmock', 'secmock-small', 100);
SET ROLE s_acme;
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'small', max_tokens => 101) $$);
SELECT provider FROM maester.llm_generate('hi', 'small', max_tokens => 100);
SELECT pg_temp.err($$ SET maester.max_output_tokens = 1000000000 $$);
-- ... and each tenant's calls are paced by its own limits
-- (maester.tenant_limit), which a user can read but not change
SELECT pg_temp.err($$ INSERT INTO maester.tenant_limit VALUES ('sec-acme', 1000000, 1000000000) $$);
RESET ROLE;
INSERT INTO maester.tenant_limit (tenant, requests_per_minute) VALUES ('sec-acme', 1);
INSERT INTO maester.tenant_limit (tenant, tokens_per_minute) VALUES ('sec-globex', 1000);
SET ROLE s_acme;
SELECT tenant, requests_per_minute FROM maester.tenant_limit;
SELECT provider FROM maester.llm_generate('hi', 'secmock-1');
-- the next request of the minute would wait more than its timeout: it fails
-- at once, sending nothing
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'secmock-1', options => '{"timeout_ms": 2000}') $$);
RESET ROLE;
-- globex: one call of max_tokens 5000 takes its whole minute of 1,000 tokens
SET ROLE s_globex;
SELECT provider FROM maester.llm_generate('hi', 'secmock-1', max_tokens => 5000);
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'secmock-1', options => '{"timeout_ms": 2000}') $$);
RESET ROLE;
-- a tenant without limits is not held up by the others' waits
SELECT provider FROM maester.llm_generate('hi', 'secmock-1', options => '{"timeout_ms": 2000}');
DELETE FROM maester.tenant_limit;
DELETE FROM maester.model WHERE name = 'small';

-- a dishonest provider: it answers 10,000,000 output tokens for a call of
-- max_tokens 16, charging a $1 budget $10.  The ledger records what was
-- billed, flags the overrun, warns the caller, and budget_status shows it
INSERT INTO maester.model (name, provider, provider_model) VALUES ('liar', 'secmock', 'fault-usage-10000000');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('liar', '2020-01-01', 1, 1);
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('sec-acme', 'day', 1, 'block');
SET ROLE s_acme;
SELECT provider FROM maester.llm_generate('Say hi', 'liar', max_tokens => 16);
SELECT cost_usd, estimated_cost_usd, overrun_usd FROM maester.usage WHERE model_name = 'liar';
SELECT limit_usd, spent_usd, overruns, overrun_usd FROM maester.budget_status WHERE tenant = 'sec-acme';
SELECT regexp_replace(pg_temp.err($$ SELECT maester.llm_generate('Say hi', 'liar', max_tokens => 16) $$),
                      'budget \d+', 'budget N') AS err;
RESET ROLE;
-- honest calls are never flagged
SELECT count(*) AS flagged_honest FROM maester.usage
 WHERE overrun_usd IS NOT NULL AND model_name <> 'liar' AND tenant LIKE 'sec-%';
DELETE FROM maester.budget WHERE tenant = 'sec-acme';

-- a provider answering with a response header over libcurl's limit: a bad
-- response (0.1.0 said "Out of memory", class internal)
UPDATE maester.provider SET models = '{secmock-%,fault-%}' WHERE name = 'secmock';
SET client_min_messages = error;
SELECT pg_temp.err($$ SELECT maester.llm_generate('hi', 'fault-bigheader-200000') $$);
SELECT error_class FROM maester.usage WHERE model = 'fault-bigheader-200000';
SELECT provider FROM maester.llm_generate('hi', 'fault-bigheader-50000');
RESET client_min_messages;
UPDATE maester.provider SET models = '{secmock-%}' WHERE name = 'secmock';

DELETE FROM maester.eval_suite WHERE name = 'sec_suite';
DELETE FROM maester.capture WHERE tenant = 'sec-acme';
DELETE FROM maester.tenant_member WHERE tenant IN ('sec-acme', 'sec-globex');
DROP ROLE s_acme, s_globex, s_globex_reader;
