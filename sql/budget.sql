-- Budgets: block, downgrade, warn; unpriced models; budget_status.
-- (16 sessions against one budget: test/t/006_budget_concurrency.pl)
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold)
VALUES ('bmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{bmock-%}', 1, 0);
-- bmock-big: $100 / $200 per 1M tokens; bmock-small: $1 / $2
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('bmock-big', '2020-01-01', 100, 200), ('bmock-small', '2020-01-01', 1, 2);
SET maester.tenant = 'budgeted';

-- block: a call whose worst case does not fit is refused before anything
-- is sent (MB001), and leaves a blocked row
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('budgeted', 'day', 0.05, 'block');
SELECT provider, model FROM maester.llm_generate('Hello', 'bmock-big', max_tokens => 50);
SELECT spent_usd > 0 AS spent, reserved_usd, remaining_usd < 0.05 AS less_left, counters_loaded
  FROM maester.budget_status WHERE tenant = 'budgeted';
-- max_tokens 500 at $200/1M could cost $0.1 > $0.05: blocked
\set VERBOSITY default
SELECT maester.llm_generate('Hello', 'bmock-big', max_tokens => 500);
\set VERBOSITY terse
SELECT status, error_class, cost_usd, estimated_cost_usd > 0.05 AS over
  FROM maester.usage WHERE tenant = 'budgeted' AND status = 'blocked';
-- no max_tokens: 4096 output tokens are reserved
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hello', 'bmock-big') $$);
-- a cheaper model still fits
SELECT model FROM maester.llm_generate('Hello', 'bmock-small', max_tokens => 500);

-- spent matches the ledger
SELECT b.spent_usd = (SELECT sum(cost_usd) FROM maester.usage
                       WHERE tenant = 'budgeted' AND status <> 'pending') AS matches_ledger
  FROM maester.budget_status b WHERE tenant = 'budgeted';

-- other tenants are not affected (this session is a superuser, who acts as
-- any tenant; a user cannot switch: sql/tenant.sql)
SET maester.tenant = 'free';
SELECT model FROM maester.llm_generate('Hello', 'bmock-big', max_tokens => 500);
SET maester.tenant = 'budgeted';

-- a budget for one model only
INSERT INTO maester.budget (tenant, model, period, limit_usd, action)
VALUES ('scoped', 'bmock-big', 'month', 0.0001, 'block');
SET maester.tenant = 'scoped';
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hello', 'bmock-big', max_tokens => 10) $$);
SELECT model FROM maester.llm_generate('Hello', 'bmock-small', max_tokens => 10);

-- downgrade: the call goes to the cheaper model instead (as the original's
-- budget guard did)
INSERT INTO maester.budget (tenant, period, limit_usd, action, downgrade_model)
VALUES ('thrifty', 'total', 0.01, 'downgrade', 'bmock-small');
SET maester.tenant = 'thrifty';
SELECT model, requested_model, fallback_used FROM maester.llm_generate('Hello', 'bmock-big', max_tokens => 500);
SELECT model, requested_model, fallback_used FROM maester.llm_generate('Hello', 'bmock-small', max_tokens => 500);

-- warn: the call proceeds with a WARNING
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('lenient', 'day', 0.0001, 'warn');
SET maester.tenant = 'lenient';
\set VERBOSITY default
SELECT model FROM maester.llm_generate('Hello', 'bmock-big', max_tokens => 500);
\set VERBOSITY terse

-- unpriced models are blocked by budgets, unless allowed
SET maester.tenant = 'budgeted';
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hello', 'bmock-unpriced') $$);
SET maester.budget_allow_unpriced = on;
SELECT model, cost_usd FROM maester.llm_generate('Hello', 'bmock-unpriced');
RESET maester.budget_allow_unpriced;

-- bad budgets
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd) VALUES ('x', 'week', 1) $$);
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd) VALUES ('x', 'day', 0) $$);
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd) VALUES ('x', 'day', 1e12) $$);
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd) VALUES ('x', 'day', 'NaN') $$);
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('x', 'day', 1, 'downgrade') $$);
SELECT pg_temp.err($$ INSERT INTO maester.budget (tenant, period, limit_usd, action, downgrade_model) VALUES ('x', 'day', 1, 'block', 'm') $$);

SELECT tenant, period, limit_usd, action, counters_loaded,
       period_start IS NOT NULL OR period = 'total' AS windowed
  FROM maester.budget_status ORDER BY id;
RESET maester.tenant;
