-- Every output is evaluated: with the prompt version's checks, else the
-- articles' default; the verdict travels with the result and the ledger
-- row; llm_rubric grades through the gateway, its cost a ledger row
-- marked as evaluation; a check that errors never loses the generation.
\getenv mock_url MAESTER_MOCK_URL
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold)
VALUES ('emock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{emock-%}', 1, 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('emock-1', '2020-01-01', 1, 2), ('emock-grader', '2020-01-01', 3, 4);

-- no registered checks: non_empty and max_length 500
SELECT evaluation FROM maester.llm_generate('Hello', 'emock-1');

-- the prompt version's checks
SELECT version FROM maester.prompt_register('eval_p', 'Summarize: {event}',
    checks => '{"required_terms": ["summarize", "disk"], "max_length": 60, "not_contains": ["sorry"]}');
SELECT evaluation ->> 'status' AS status, evaluation -> 'reliability_score' AS score,
       jsonb_path_query_array(evaluation, '$.metrics[*].name') AS checks
  FROM maester.llm_generate(prompt_name => 'eval_p', variables => '{"event": "disk full"}', model => 'emock-1');
SELECT evaluation ->> 'status' AS status, evaluation -> 'reliability_score' AS score,
       jsonb_path_query(evaluation, '$.metrics[*] ? (@.passed == false)') AS failed
  FROM maester.llm_generate(prompt_name => 'eval_p', variables => '{"event": "CPU at 99% on the primary database server"}',
                            model => 'emock-1');
-- the ledger rows carry the verdict; cost_by_prompt_version gains pass rate and mean score
SELECT eval_status, round(eval_score::numeric, 4) AS eval_score FROM maester.usage
 WHERE prompt_name = 'eval_p' ORDER BY ts;
SELECT prompt, version, calls, pass_rate, round(mean_score::numeric, 4) AS mean_score
  FROM (SELECT prompt, version, sum(calls) AS calls,
               sum(pass_rate * calls) / sum(calls) AS pass_rate,
               sum(mean_score * calls) / sum(calls) AS mean_score
          FROM maester.cost_by_prompt_version WHERE prompt = 'eval_p' GROUP BY 1, 2) s;

-- cost_max and latency_max see the generation's own cost and latency
SELECT version FROM maester.prompt_register('eval_cost', 'Hi {x}',
    checks => '{"cost_max": 0.0000001, "latency_max": 60000}');
SELECT evaluation ->> 'status' AS status,
       jsonb_path_query(evaluation, '$.metrics[*] ? (@.name == "cost_max").passed') AS cost_ok,
       jsonb_path_query(evaluation, '$.metrics[*] ? (@.name == "latency_max").passed') AS latency_ok
  FROM maester.llm_generate(prompt_name => 'eval_cost', variables => '{"x": 1}', model => 'emock-1');

-- a check that errors: the generation is kept, the evaluation says error
SELECT version FROM maester.prompt_register('eval_bad', 'Hi {x}',
    checks => '{"llm_rubric": {"rubric": "Polite.", "model": "no-such-grader"}}');
SELECT content IS NOT NULL AS generated, evaluation ->> 'status' AS status, evaluation ->> 'error' AS error
  FROM maester.llm_generate(prompt_name => 'eval_bad', variables => '{"x": 1}', model => 'emock-1');
SELECT status, eval_status FROM maester.usage WHERE prompt_name = 'eval_bad';

-- llm_rubric: a model grades the output through the gateway; its call is a
-- ledger row with purpose evaluation (the mock is no real grader, so its
-- verdict is "not a JSON verdict")
SELECT maester.evaluate('The disk is full.', '{"llm_rubric": {"rubric": "Names the resource.", "model": "emock-grader"}}');
SELECT purpose, model, status, cost_usd > 0 AS charged FROM maester.usage WHERE model = 'emock-grader';
-- a grader that answers with a verdict
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('grader-yes', 'emock', 'fault-verdict-pass'), ('grader-no', 'emock', 'fault-verdict-fail');
SELECT maester.evaluate('The disk is full.', '{"llm_rubric": {"rubric": "Names the resource.", "model": "grader-yes"}}');
SELECT maester.evaluate('It is fine.', '[{"type": "llm_rubric", "value": "Names the resource.", "model": "grader-no"}]');
SELECT count(*) FROM maester.usage WHERE purpose = 'evaluation' AND requested_model IN ('grader-yes', 'grader-no');

-- the grading call of a call's llm_rubric check is a step of that call:
-- in its trace, under its evaluation span, a ledger row of purpose
-- evaluation; its verdict is the check's
SELECT version FROM maester.prompt_register('eval_graded', 'Report: {x}',
    checks => '[{"type": "llm_rubric", "value": "Reports.", "model": "grader-yes"}]');
CREATE TEMP TABLE graded AS
  SELECT * FROM maester.llm_generate(prompt_name => 'eval_graded', variables => '{"x": 1}', model => 'emock-1');
SELECT evaluation ->> 'status' AS status,
       jsonb_path_query(evaluation, '$.metrics[*] ? (@.name == "llm_rubric").score') AS rubric_score
  FROM graded;
SELECT u.purpose, u.requested_model, u.status, u.eval_status
  FROM maester.usage u JOIN graded g ON u.trace_id = g.trace_id ORDER BY u.purpose DESC;
DO $$
BEGIN
  FOR i IN 1..100 LOOP
    EXIT WHEN (SELECT count(*) FROM maester.span s JOIN graded g USING (trace_id)
                WHERE s.name = 'llm_rubric') = 1;
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
SELECT s.name, p.name AS parent
  FROM maester.span s JOIN graded g USING (trace_id)
  LEFT JOIN maester.span p ON p.trace_id = s.trace_id AND p.span_id = s.parent_span_id
 WHERE s.name IN ('llm_rubric', 'evaluation') OR p.name = 'llm_rubric'
 ORDER BY 2 NULLS FIRST, 1;
-- the graded call is the only call of the trace view
SELECT count(*) FROM maester.trace t JOIN graded g USING (trace_id);

-- a grading call that fails: the output stays a success, its evaluation
-- says error (with a WARNING), and both calls are in the ledger
INSERT INTO maester.model (name, provider, provider_model) VALUES ('grader-broken', 'emock', 'fault-status-400');
SELECT version FROM maester.prompt_register('eval_broken', 'Report: {x}',
    checks => '[{"type": "llm_rubric", "value": "Reports.", "model": "grader-broken"}]');
CREATE TEMP TABLE broken AS
  SELECT * FROM maester.llm_generate(prompt_name => 'eval_broken', variables => '{"x": 1}', model => 'emock-1');
SELECT content IS NOT NULL AS generated, evaluation ->> 'status' AS status,
       evaluation ->> 'error' LIKE 'model call failed: emock answered HTTP 400%' AS grader_error
  FROM broken;
SELECT u.purpose, u.status, u.error_class, u.eval_status
  FROM maester.usage u JOIN broken b ON u.trace_id = b.trace_id ORDER BY u.purpose DESC;

-- a grading call refused by a budget (MB001): its error is the
-- evaluation's, the answer is kept and charged
INSERT INTO maester.model (name, provider, provider_model) VALUES ('grader-pricey', 'emock', 'fault-verdict-pass');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('fault-verdict-pass', '2020-01-01', 1000, 1000);
INSERT INTO maester.budget (tenant, model, period, limit_usd, action)
VALUES ('default', 'fault-verdict-pass', 'day', 0.000001, 'block');
SELECT version FROM maester.prompt_register('eval_budget', 'Report: {x}',
    checks => '[{"type": "llm_rubric", "value": "Reports.", "model": "grader-pricey"}]');
SET client_min_messages = error;	-- (the WARNING names the budget's id)
CREATE TEMP TABLE blocked AS
  SELECT * FROM maester.llm_generate(prompt_name => 'eval_budget', variables => '{"x": 1}', model => 'emock-1');
RESET client_min_messages;
SELECT content IS NOT NULL AS generated, evaluation ->> 'status' AS status,
       evaluation ->> 'error' LIKE 'budget % would be exceeded by % USD' AS budget_error
  FROM blocked;
SELECT u.purpose, u.status, u.error_class FROM maester.usage u JOIN blocked b ON u.trace_id = b.trace_id
 ORDER BY u.purpose DESC;
DELETE FROM maester.budget WHERE model = 'fault-verdict-pass';
