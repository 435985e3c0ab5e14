-- Traces: spans present and parented, traceparent joined and propagated,
-- rollback keeps spans, sampling, no content in spans, explain, retention.
\getenv mock_url MAESTER_MOCK_URL
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE TEMP TABLE mock_out (line text);
CREATE FUNCTION pg_temp.last_request() RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE mock_out;
  EXECUTE format('COPY mock_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE E''\x01'', DELIMITER E''\x02'')',
                 'curl -s ' || current_setting('test.mock_url') || '/_mock/requests');
  RETURN (SELECT string_agg(line, E'\n')::jsonb FROM mock_out) -> -1;
END $$;
SELECT set_config('test.mock_url', :'mock_url', false) IS NOT NULL AS ok;
-- spans are not waited for: wait until a trace's root span is written
CREATE FUNCTION pg_temp.wait_trace(t text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..500 LOOP
    IF EXISTS (SELECT FROM maester.span WHERE trace_id = t AND name = 'llm_generate') THEN RETURN true; END IF;
    PERFORM pg_sleep(0.01);
  END LOOP;
  RETURN false;
END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold,
                              backoff_base_ms, backoff_max_ms)
VALUES ('tmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{tmock-%}', 1, 0, 5, 10);
INSERT INTO maester.model (name, provider, provider_model) VALUES ('tmock-flaky', 'tmock', 'fault-flaky-1-503');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('tmock-1', '2020-01-01', 1, 2), ('fault-flaky-1-503', '2020-01-01', 1, 2)
ON CONFLICT DO NOTHING;
SELECT version FROM maester.prompt_register('trace_p', 'Summarize: {event}');

-- every call a trace: the spans, parented to the call's root span
CREATE TEMP TABLE t1 AS SELECT trace_id, request_id FROM maester.llm_generate(
    prompt_name => 'trace_p', variables => '{"event": "disk full"}', model => 'tmock-flaky');
SELECT pg_temp.wait_trace(trace_id) FROM t1;
SELECT s.name, s.status, s.parent_span_id IS NULL AS is_root,
       s.parent_span_id = (SELECT span_id FROM maester.span r WHERE r.trace_id = s.trace_id AND r.name = 'llm_generate') AS child_of_root,
       s.span_id ~ '^[0-9a-f]{16}$' AS span_id_ok, s.duration_us >= 0 AS timed,
       s.attributes ->> 'error.type' AS error_type, s.attributes ->> 'maester.retry_reason' AS retry_reason,
       s.attributes ->> 'http.response.status_code' AS http
  FROM maester.span s JOIN t1 USING (trace_id) ORDER BY s.started_at, s.name;
-- the GenAI attributes
SELECT jsonb_object_keys(attributes) AS key FROM maester.span JOIN t1 USING (trace_id)
 WHERE name = 'model_generate' AND status = 'ok' ORDER BY 1;
SELECT attributes ->> 'gen_ai.prompt.name' AS prompt, attributes ->> 'maester.prompt.version' AS version,
       attributes ->> 'maester.prompt.hash' = encode(sha256('Summarize: disk full'), 'hex') AS hash_ok,
       attributes ->> 'gen_ai.provider.name' AS provider, (attributes ->> 'maester.cost_usd')::numeric > 0 AS cost,
       attributes ->> 'maester.evaluation.status' AS evaluation
  FROM maester.span JOIN t1 USING (trace_id) WHERE name = 'llm_generate';
SELECT t.request_id = t1.request_id AS same_request, t.status, t.application_span_id
  FROM maester.trace t JOIN t1 USING (trace_id);
-- explain: the span tree, as EXPLAIN ANALYZE reads (times masked)
SELECT regexp_replace(regexp_replace(e, '[0-9]+\.[0-9]{3} ms', 'N ms'), 'cost=\$[0-9.e-]+', 'cost=$X') AS plan
  FROM t1, maester.explain(t1.trace_id) e;
-- an unknown trace says so
SELECT maester.explain('00000000000000000000000000000000');

-- the application's traceparent: joined, and propagated to the provider
BEGIN;
SET LOCAL maester.traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
SELECT trace_id FROM maester.llm_generate('with a parent', 'tmock-1');
SELECT r -> 'headers' ->> 'traceparent' ~ '^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01$' AS propagated
  FROM pg_temp.last_request() r;
COMMIT;
SELECT pg_temp.wait_trace('0af7651916cd43dd8448eb211c80319c');
SELECT application_span_id FROM maester.trace WHERE trace_id = '0af7651916cd43dd8448eb211c80319c';
-- the provider saw the model_generate span as its parent
SELECT (SELECT split_part(pg_temp.last_request() -> 'headers' ->> 'traceparent', '-', 3)) =
       (SELECT span_id FROM maester.span WHERE trace_id = '0af7651916cd43dd8448eb211c80319c'
         AND name = 'model_generate') AS parent_is_model_generate;
-- an invalid traceparent is ignored with a WARNING
SET maester.traceparent = '00-00000000000000000000000000000000-b7ad6b7169203331-01';
SELECT trace_id <> '00000000000000000000000000000000' AS new_trace FROM maester.llm_generate('x', 'tmock-1');
SET maester.traceparent = 'garbage';
SELECT length(trace_id) FROM maester.llm_generate('x', 'tmock-1');
RESET maester.traceparent;

-- ROLLBACK keeps the spans (the worker writes them, like the ledger)
BEGIN;
SELECT trace_id AS t2 FROM maester.llm_generate('rolled back', 'tmock-1') \gset
ROLLBACK;
SELECT pg_temp.wait_trace(:'t2');

-- a failed call is traced too
INSERT INTO maester.model (name, provider, provider_model) VALUES ('tmock-bad', 'tmock', 'fault-status-400');
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'tmock-bad') $$);
DO $$ BEGIN
  FOR i IN 1..500 LOOP
    EXIT WHEN EXISTS (SELECT FROM maester.span WHERE name = 'llm_generate'
                       AND attributes ->> 'gen_ai.request.model' = 'tmock-bad');
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$;
SELECT s.name, s.status, s.attributes ->> 'error.type' AS error_type
  FROM maester.span s
 WHERE s.trace_id = (SELECT trace_id FROM maester.span WHERE name = 'llm_generate'
                      AND attributes ->> 'gen_ai.request.model' = 'tmock-bad')
 ORDER BY s.started_at, s.name;

-- sampling: no spans, but the ledger row and the trace id are there
SET maester.trace_sample_rate = 0;
CREATE TEMP TABLE t3 AS SELECT trace_id, request_id FROM maester.llm_generate('unsampled', 'tmock-1');
RESET maester.trace_sample_rate;
SELECT pg_temp.wait_trace(c.trace_id) FROM maester.llm_generate('a later one', 'tmock-1') c;
SELECT count(*) AS spans FROM maester.span JOIN t3 USING (trace_id);
SELECT count(*) AS ledger_rows FROM maester.usage JOIN t3 USING (request_id);
SELECT pg_temp.err($$ SET maester.trace_sample_rate = 2 $$);

-- content is not in spans (maester.capture_content is off by default)
SELECT count(*) FROM maester.span WHERE attributes::text LIKE '%disk full%' OR attributes::text LIKE '%rolled back%';

-- retention
UPDATE maester.span SET started_at = started_at - interval '100 days' FROM t1 WHERE span.trace_id = t1.trace_id;
SELECT maester.trace_retention('30 days') > 0 AS removed;
SELECT count(*) FROM maester.span JOIN t1 USING (trace_id);
