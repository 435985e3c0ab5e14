-- Evaluation suites: run a prompt's cases against versions, compare runs;
-- replay a captured call.
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold)
VALUES ('smock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{smock-%}', 1, 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('smock-1', '2020-01-01', 1, 2);

-- two versions of a prompt: v2 asks for the operational impact
SELECT version FROM maester.prompt_register('suite_p', 'Summarize: {event}');
SELECT version FROM maester.prompt_register('suite_p', 'Summarize, with the operational impact: {event}');
INSERT INTO maester.eval_suite (name, prompt) VALUES ('incidents', 'suite_p');
INSERT INTO maester.eval_case (suite, case_name, variables, checks, expected) VALUES
    ('incidents', 'disk', '{"event": "Disk full on db-3."}', '{"required_terms": ["impact", "disk"]}', NULL),
    ('incidents', 'latency', '{"event": "Latency above 300ms."}', '{"required_terms": ["impact"], "max_length": 200}', NULL),
    ('incidents', 'exact', '{"event": "x"}', NULL, '[Mock:smock-1] Generated response for prompt: Summarize: x'),
    ('incidents', 'broken', '{"wrong": "variable"}', NULL, NULL);

SELECT suite, prompt, prompt_version, model, cases, passed, errors, pass_rate, mean_score,
       total_cost_usd > 0 AS cost, p50_latency_ms > 0 AS p50, p95_latency_ms >= p50_latency_ms AS p95
  FROM maester.eval_run('incidents', 'v1', 'smock-1');
SELECT suite, prompt_version, cases, passed, errors, pass_rate, mean_score
  FROM maester.eval_run('incidents', model => 'smock-1');
SELECT r.case_name, r.passed, r.score, r.error IS NOT NULL AS failed_to_run,
       r.trace_id ~ '^[0-9a-f]{32}$' AS traced, u.status AS ledger
  FROM maester.eval_result r LEFT JOIN maester.usage u USING (request_id)
 WHERE r.run_id = 1 ORDER BY r.case_name;
SELECT error FROM maester.eval_result WHERE run_id = 1 AND case_name = 'broken';

-- compare: per case and overall, which version did better, at what cost
SELECT case_name, score_a, score_b, passed_a, passed_b, cost_a > 0 AS cost_a, cost_b > 0 AS cost_b, better
  FROM maester.eval_compare(1, 2);

SELECT pg_temp.err($$ SELECT maester.eval_run('no_such_suite') $$);

-- replay: with maester.capture_content off (the default), nothing to replay
SHOW maester.capture_content;
CREATE TEMP TABLE ids AS SELECT request_id FROM maester.llm_generate('Replay me', 'smock-1');
SELECT regexp_replace(pg_temp.err(format('SELECT maester.replay(%L)', (SELECT request_id FROM ids))),
                      '[0-9a-f-]{36}', '<request id>') AS err;
SELECT count(*) FROM maester.capture;
-- with it on, the call is kept and replays the same
SET maester.capture_content = on;
TRUNCATE ids;
INSERT INTO ids SELECT request_id FROM maester.llm_generate(prompt_name => 'suite_p',
    variables => '{"event": "Disk full."}', prompt_version => 'v1', model => 'smock-1');
RESET maester.capture_content;
SELECT prompt_name, prompt_version, variables, prompt, model, output IS NOT NULL AS has_output
  FROM maester.capture;
SELECT r -> 'original' ->> 'prompt_version' AS original_version, r -> 'replay' ->> 'prompt_version' AS replay_version,
       r -> 'content_match' AS content_match, r -> 'length_delta' AS length_delta,
       r -> 'same_provider' AS same_provider, r -> 'same_model' AS same_model, r -> 'score_delta' AS score_delta
  FROM (SELECT maester.replay(request_id) AS r FROM ids) s;
