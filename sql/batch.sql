-- maester.generate_batch: many calls from one statement, concurrently,
-- each metered, evaluated and traced like llm_generate; per-request
-- errors; fail_fast; provider max_connections and rate pacing; budgets.
-- (cancel mid-batch and throughput: test/t/009_batch.pl, test/bench/batch.sh)
\getenv mock_url MAESTER_MOCK_URL
SET client_min_messages = error;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
-- wait until the ledger worker has written every settlement
CREATE FUNCTION pg_temp.settled() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..100 LOOP
    IF NOT EXISTS (SELECT FROM maester.usage WHERE status = 'pending') THEN RETURN true; END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
  RETURN false;
END $$;
-- the most attempts of a set of requests that were on the wire at once
CREATE FUNCTION pg_temp.max_overlap(ids uuid[]) RETURNS bigint LANGUAGE sql AS $$
  SELECT max(n) FROM (
    SELECT sum(d) OVER (ORDER BY t, d) AS n FROM (
      SELECT ts AS t, 1 AS d FROM maester.usage WHERE request_id = ANY (ids)
      UNION ALL
      SELECT settled_at, -1 FROM maester.usage WHERE request_id = ANY (ids)) e) s $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority,
                              circuit_failure_threshold, backoff_base_ms, backoff_max_ms)
VALUES ('batchmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY',
        '{mock-%,fault-%}', 1, 0, 10, 40);
SELECT (maester.prompt_register('summarise_event', 'Summarise: {event}', version => '1.0.0')).version;

-- five raw prompts: one row each, in any order; ordinal says which
SELECT ordinal, provider, model, content, attempts, error_class,
       evaluation ->> 'status' AS eval, request_id IS NOT NULL AS has_id
  FROM maester.generate_batch(ARRAY(
         SELECT jsonb_build_object('prompt', 'item ' || i, 'model', 'mock-1', 'max_tokens', 30)
           FROM generate_series(1, 5) i))
 ORDER BY ordinal;

-- each call is a ledger row with its own request and trace
CREATE TEMP TABLE b1 AS
SELECT * FROM maester.generate_batch(ARRAY(
         SELECT jsonb_build_object('variables', jsonb_build_object('event', 'disk ' || i || ' full'))
           FROM generate_series(1, 4) i),
       model => 'mock-1', prompt_name => 'summarise_event',
       options => '{"tags": {"job": "enrich"}, "temperature": 0}');
SELECT ordinal, content, prompt_name, prompt_version FROM b1 ORDER BY ordinal;
SELECT count(*) AS rows, count(DISTINCT u.request_id) AS requests,
       count(DISTINCT u.trace_id) AS traces, bool_and(u.status = 'ok') AS all_ok,
       bool_and(u.tags = '{"job": "enrich"}') AS tagged,
       bool_and(u.eval_status IS NOT NULL) AS evaluated
  FROM maester.usage u JOIN b1 USING (request_id);

-- a request's options win over the batch's (merged): max_attempts 1 here
SELECT ordinal, attempts, error_class, error_code
  FROM maester.generate_batch(ARRAY['{"model": "fault-flaky-1-503", "options": {"max_attempts": 1}}',
                                    '{"model": "fault-flaky-1-503"}']::jsonb[],
                              prompt_name => 'summarise_event',
                              options => '{"max_attempts": 3}')
 ORDER BY ordinal;

-- errors stay with their request; the others go on
SELECT ordinal, provider IS NOT NULL AS served, error_code, error_class, error_message
  FROM maester.generate_batch(ARRAY[
         '{"prompt": "fine", "model": "mock-1"}',
         '{"prompt": "no such model", "model": "nobody-serves-this"}',
         '{"prompt_name": "summarise_event", "model": "mock-1"}',
         '{"prompt": "x", "model": "mock-1", "colour": "red"}',
         NULL,
         '[1, 2]',
         '{"prompt": "x", "model": "mock-1", "max_tokens": 0}',
         '{"prompt": "bad request", "model": "fault-status-400"}',
         '{"prompt": "also fine", "model": "mock-2"}']::jsonb[])
 ORDER BY ordinal;

-- a batch in which every request failed says so (NOTICE)
SET client_min_messages = notice;
SELECT count(*) AS rows, count(error_code) AS failed FROM maester.generate_batch(ARRAY[
    '{"prompt": "bad two", "model": "no-such-model-anywhere"}',
    '{"prompt": "bad one", "model": "fault-status-400"}']::jsonb[]);
SET client_min_messages = error;

-- fail_fast: the first failure is the statement's error
SELECT pg_temp.err($$
  SELECT count(*) FROM maester.generate_batch(ARRAY[
    '{"prompt": "bad", "model": "fault-status-400"}',
    '{"prompt": "ok", "model": "fault-latency-300"}']::jsonb[], fail_fast => true) $$);
-- ... and the other request was stopped: settled as cancelled if it had
-- reached the ledger (on the wire, or waiting for its PENDING row), else
-- never recorded nor sent -- which of the two depends on how far it got
-- when the first failed
SELECT pg_temp.settled();
SELECT status, error_class, count(*) FROM maester.usage
 WHERE prompt_hash = encode(sha256('bad'), 'hex')
 GROUP BY 1, 2 ORDER BY 1, 2;
SELECT count(*) FILTER (WHERE status <> 'cancelled') AS not_stopped FROM maester.usage
 WHERE prompt_hash = encode(sha256('ok'), 'hex');

-- requests whose checks need a model's verdict keep the batch's
-- concurrency: their grading calls run beside each other (six grading
-- calls of 300 ms on the wire at once), not one after the other
INSERT INTO maester.model (name, provider, provider_model)
VALUES ('batch-grader', 'batchmock', 'fault-verdict-pass-300');
SELECT (maester.prompt_register('batch_graded', 'Grade me: {i}',
    checks => '[{"type": "llm_rubric", "value": "Fine.", "model": "batch-grader"}]')).version;
CREATE TEMP TABLE graded AS
  SELECT * FROM maester.generate_batch(ARRAY(
    SELECT jsonb_build_object('prompt_name', 'batch_graded', 'variables', jsonb_build_object('i', i),
                              'model', 'mock-1')
      FROM generate_series(1, 6) i), concurrency => 6);
SELECT count(*) FILTER (WHERE evaluation -> 'metrics' @> '[{"name": "llm_rubric", "passed": true}]') AS graded,
       count(*) AS requests
  FROM graded;
SELECT pg_temp.settled();
SELECT pg_temp.max_overlap(ARRAY(SELECT u.request_id FROM maester.usage u JOIN graded g USING (trace_id)
                                  WHERE u.purpose = 'evaluation')) AS graders_at_once;

-- at most the batch's concurrency of grading calls at once: two requests
-- with three llm_rubric checks each, concurrency 2
SELECT (maester.prompt_register('batch_graded3', 'Grade me thrice: {i}',
    checks => '[{"type": "llm_rubric", "value": "One.", "model": "batch-grader"},
                {"type": "llm_rubric", "value": "Two.", "model": "batch-grader"},
                {"type": "llm_rubric", "value": "Three.", "model": "batch-grader"}]')).version;
CREATE TEMP TABLE graded3 AS
  SELECT * FROM maester.generate_batch(ARRAY(
    SELECT jsonb_build_object('prompt_name', 'batch_graded3', 'variables', jsonb_build_object('i', i),
                              'model', 'mock-1')
      FROM generate_series(1, 2) i), concurrency => 2);
SELECT count(*) FILTER (WHERE (evaluation ->> 'status') = 'pass') AS passed FROM graded3;
SELECT pg_temp.settled();
SELECT count(*) AS grading_calls,
       pg_temp.max_overlap(array_agg(u.request_id)) AS graders_at_once
  FROM maester.usage u JOIN graded3 g USING (trace_id) WHERE u.purpose = 'evaluation';

-- a call that succeeded stays a success when recording it afterwards fails
-- (here maester.capture refuses the row): a WARNING, not the batch's error
CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'capture refused'; END $$;
CREATE TRIGGER refuse BEFORE INSERT ON maester.capture FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse();
SET maester.capture_content = on;
SET client_min_messages = warning;
SELECT ordinal, error_class, content IS NOT NULL AS answered
  FROM maester.generate_batch(ARRAY['{"prompt": "c1", "model": "mock-1"}']::jsonb[]);
SET client_min_messages = error;
RESET maester.capture_content;
DROP TRIGGER refuse ON maester.capture;

-- arguments
SELECT pg_temp.err($$ SELECT * FROM maester.generate_batch('{}', concurrency => 0) $$);
SELECT pg_temp.err($$ SELECT * FROM maester.generate_batch('{}', concurrency => 257) $$);
SELECT pg_temp.err($$ SELECT * FROM maester.generate_batch('{}', options => '[]') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.generate_batch('{{"{}"},{"{}"}}') $$);
SELECT count(*) AS no_rows FROM maester.generate_batch(NULL);
SELECT count(*) AS no_rows FROM maester.generate_batch('{}');

-- concurrency really happens: 6 calls of 300 ms were all on the wire at
-- once; with concurrency 1 never two
CREATE TEMP TABLE b2 AS SELECT * FROM maester.generate_batch(ARRAY(
  SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'fault-latency-300')
    FROM generate_series(1, 6) i), concurrency => 6);
SELECT count(*) FILTER (WHERE error_class IS NULL) AS ok,
       pg_temp.max_overlap(array_agg(request_id)) AS max_in_flight FROM b2;
CREATE TEMP TABLE b3 AS SELECT * FROM maester.generate_batch(ARRAY(
  SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'fault-latency-50')
    FROM generate_series(1, 4) i), concurrency => 1);
SELECT count(*) FILTER (WHERE error_class IS NULL) AS ok,
       pg_temp.max_overlap(array_agg(request_id)) AS max_in_flight FROM b3;

-- a provider's max_connections caps what one session has in flight to it
UPDATE maester.provider SET max_connections = 2 WHERE name = 'batchmock';
CREATE TEMP TABLE b4 AS SELECT * FROM maester.generate_batch(ARRAY(
  SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'fault-latency-100')
    FROM generate_series(1, 6) i), concurrency => 6);
SELECT count(*) FILTER (WHERE error_class IS NULL) AS ok,
       pg_temp.max_overlap(array_agg(request_id)) AS max_in_flight FROM b4;
UPDATE maester.provider SET max_connections = NULL WHERE name = 'batchmock';

-- requests_per_minute: calls are paced (600/min: one every 100 ms), not failed
UPDATE maester.provider SET requests_per_minute = 600 WHERE name = 'batchmock';
CREATE TEMP TABLE b5 AS SELECT * FROM maester.generate_batch(ARRAY(
  SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'mock-1')
    FROM generate_series(1, 6) i), concurrency => 6);
SELECT count(*) FILTER (WHERE b5.error_class IS NULL) AS ok,
       min(gap) >= interval '95 ms' AS spaced
  FROM b5 JOIN (SELECT request_id, ts - lag(ts) OVER (ORDER BY ts) AS gap
                  FROM maester.usage WHERE request_id IN (SELECT request_id FROM b5)) g
       USING (request_id);
-- tokens_per_minute: 6,000/min, each call reserves its input estimate
-- plus max_tokens 97 (about 100 tokens): one call every second or so
UPDATE maester.provider SET requests_per_minute = NULL, tokens_per_minute = 6000
 WHERE name = 'batchmock';
CREATE TEMP TABLE b6 AS SELECT * FROM maester.generate_batch(ARRAY(
  SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'mock-1', 'max_tokens', 97)
    FROM generate_series(1, 3) i), concurrency => 3);
SELECT count(*) FILTER (WHERE b6.error_class IS NULL) AS ok,
       min(gap) >= interval '950 ms' AS spaced
  FROM b6 JOIN (SELECT request_id, ts - lag(ts) OVER (ORDER BY ts) AS gap
                  FROM maester.usage WHERE request_id IN (SELECT request_id FROM b6)) g
       USING (request_id);
-- a call never waits longer for its turn than its timeout: 600 tokens a
-- minute, each call reserving ~500: the first goes at once, the second's
-- turn is ~50 s away, more than its 2 s timeout, so it fails at once
UPDATE maester.provider SET tokens_per_minute = 600 WHERE name = 'batchmock';
SELECT ordinal, error_class, error_code, error_message
  FROM maester.generate_batch(ARRAY(
         SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'mock-1', 'max_tokens', 500,
                                   'options', '{"timeout_ms": 2000}'::jsonb)
           FROM generate_series(1, 2) i), concurrency => 1)
 ORDER BY ordinal;
UPDATE maester.provider SET tokens_per_minute = NULL WHERE name = 'batchmock';

-- budgets under concurrency: each request reserves its worst case; those
-- that do not fit are blocked, the others served, and the spend stays
-- within the limit
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('mock-priced', '2020-01-01', 100, 200);
SET maester.tenant = 'batch_budget';
INSERT INTO maester.budget (id, tenant, period, limit_usd, action) OVERRIDING SYSTEM VALUE
    VALUES (1000, 'batch_budget', 'day', 0.05, 'block');  -- its own id: other suites count theirs
CREATE TEMP TABLE b7 AS SELECT * FROM maester.generate_batch(ARRAY(
  SELECT jsonb_build_object('prompt', 'p' || i, 'model', 'mock-priced', 'max_tokens', 40)
    FROM generate_series(1, 20) i), concurrency => 20);
SELECT count(*) FILTER (WHERE error_class IS NULL) > 0 AS some_served,
       count(*) FILTER (WHERE error_class = 'budget') > 0 AS some_blocked,
       count(*) FILTER (WHERE error_class NOT IN ('budget')) AS other_errors,
       (SELECT error_code FROM b7 WHERE error_class = 'budget' LIMIT 1) AS blocked_code
  FROM b7;
SELECT DISTINCT regexp_replace(regexp_replace(error_message, 'budget \d+', 'budget N'), 'by [0-9.]+ USD', 'by X USD') AS error_message FROM b7 WHERE error_class = 'budget';
SELECT sum(cost_usd) <= 0.05 AS within_limit,
       count(*) FILTER (WHERE status = 'blocked') = (SELECT count(*) FROM b7 WHERE error_class = 'budget') AS blocked_rows
  FROM maester.usage WHERE tenant = 'batch_budget';
RESET maester.tenant;

-- spans: each call has its own trace, and nothing stays pending
SELECT pg_temp.settled();

-- leave nothing for the other suites (they run in the same database)
DELETE FROM maester.budget WHERE tenant = 'batch_budget';
DELETE FROM maester.model WHERE provider = 'batchmock';
DELETE FROM maester.provider WHERE name = 'batchmock';
