-- maester.stat: live counters per provider and model in shared memory.
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold,
                              backoff_base_ms, backoff_max_ms)
VALUES ('stmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{stmock-%}', 1, 0, 5, 10);
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('stmock-flaky', 'stmock', 'fault-flaky-1-429'), ('stmock-bad', 'stmock', 'fault-status-400');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('stmock-1', '2020-01-01', 1000, 2000);
SELECT maester.stat_reset() >= 0 AS reset;

SELECT count(*) FROM generate_series(1, 3) i, maester.llm_generate('Count me ' || i, 'stmock-1') g;
SELECT attempts FROM maester.llm_generate('Retry me', 'stmock-flaky');
SELECT pg_temp.err($$ SELECT maester.llm_generate('Fail me', 'stmock-bad') $$);

SELECT provider, model, calls, errors, attempts, retries, fallbacks, errors_by_class,
       input_tokens > 0 AS tokens, cost_usd > 0 AS cost,
       p50_latency_ms > 0 AS p50, p95_latency_ms >= p50_latency_ms AS p95,
       p99_latency_ms >= p95_latency_ms AS p99, circuit_state
  FROM maester.stat WHERE provider = 'stmock' ORDER BY model;
-- the cost matches the ledger
SELECT s.cost_usd = (SELECT sum(cost_usd) FROM maester.usage WHERE model = 'stmock-1') AS cost_matches
  FROM maester.stat s WHERE provider = 'stmock' AND model = 'stmock-1';
SELECT maester.stat_reset() > 0 AS reset;
SELECT count(*) FROM maester.stat WHERE provider = 'stmock';
