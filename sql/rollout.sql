-- Prompt rollouts (issue #19): a label split over versions by weight,
-- sticky by a key; the picked version on every ledger row and span; the
-- arms compared from the ledger; every change in the label history.
\getenv mock_url MAESTER_MOCK_URL
SELECT set_config('test.mock_url', :'mock_url', false) IS NOT NULL AS mock_url_set;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
GRANT EXECUTE ON FUNCTION pg_temp.err(text) TO PUBLIC;
-- spans are written by the worker: wait for a trace's prompt_render span
CREATE FUNCTION pg_temp.wait_span(t text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..500 LOOP
    IF EXISTS (SELECT FROM maester.span WHERE trace_id = t AND name = 'prompt_render') THEN RETURN true; END IF;
    PERFORM pg_sleep(0.01);
  END LOOP;
  RETURN false;
END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority,
                              circuit_failure_threshold, backoff_base_ms, backoff_max_ms)
VALUES ('romock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY',
        '{romock-%}', 1, 0, 10, 20);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('romock-a', '2020-01-01', 1, 2), ('romock-b', '2020-01-01', 10, 20);

-- three versions; each answer is evaluated: the mock echoes the prompt,
-- so v1's answers pass (they contain "one") and v2's fail
SELECT version FROM maester.prompt_register('ro', 'one {x}', config => '{"model": "romock-a"}',
                                            checks => '{"contains": "one"}');
SELECT version FROM maester.prompt_register('ro', 'two {x}', config => '{"model": "romock-b"}',
                                            checks => '{"contains": "one"}');
SELECT version FROM maester.prompt_register('ro', 'three {x}', config => '{"model": "romock-a"}');
SELECT label, version, weights FROM maester.prompt_set_label('ro', 'production', 'v1');

-- a rollout: production = v1 90%, v2 10%; its version is the main arm
SELECT label, version, weights, moved_by = current_user AS by_me
  FROM maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": 10}');
SELECT version, labels FROM maester.prompt_versions WHERE name = 'ro' ORDER BY seq;
-- setting the same weights again changes (and records) nothing
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v2": 10, "v1": 90}');

-- 2,000 renders without a key land near 90/10 (the bounds are over ten
-- standard deviations wide; each call's variables name its row, so that
-- the function scan is run for every row, not once)
SELECT count(*) FILTER (WHERE r.version = 'v1') BETWEEN 1600 AND 1940 AS v1_near_90,
       count(*) FILTER (WHERE r.version = 'v2') BETWEEN 60 AND 400 AS v2_near_10,
       count(*) FILTER (WHERE r.version NOT IN ('v1', 'v2')) AS other
  FROM generate_series(1, 2000) g, LATERAL maester.prompt_render('ro', jsonb_build_object('x', g % 1), 'production') r;
-- each render is its version's own content and hash
SELECT r.version, r.content, r.hash = encode(sha256(convert_to(r.content, 'UTF8')), 'hex') AS hash_ok
  FROM generate_series(1, 300) g, LATERAL maester.prompt_render('ro', jsonb_build_object('x', g % 1), 'production') r
 GROUP BY 1, 2, 3 ORDER BY 1;

-- sticky: the same key always gets the same version ...
SELECT count(DISTINCT r.version) AS versions_for_one_key
  FROM generate_series(1, 200) g, LATERAL maester.prompt_render('ro', jsonb_build_object('x', g % 1), 'production', 'user-42') r;
SELECT count(*) AS keys_with_two_versions FROM (
    SELECT k FROM generate_series(1, 300) k, generate_series(1, 5) n,
           LATERAL maester.prompt_render('ro', jsonb_build_object('x', n), 'production', 'user-' || k) r
     GROUP BY k HAVING count(DISTINCT r.version) > 1) s;
-- ... and different keys spread over both arms near 90/10
CREATE TEMP TABLE pick_90 AS
SELECT k, r.version FROM generate_series(1, 2000) k,
       LATERAL maester.prompt_render('ro', '{"x": 1}', 'production', 'user-' || k) r;
SELECT count(*) FILTER (WHERE version = 'v1') BETWEEN 1600 AND 1940 AS v1_near_90,
       count(*) FILTER (WHERE version = 'v2') BETWEEN 60 AND 400 AS v2_near_10
  FROM pick_90;
-- the key is hashed with the prompt and label: another label with the same
-- weights puts the same keys elsewhere
SELECT version FROM maester.prompt_set_rollout('ro', 'canary', '{"v1": 90, "v2": 10}');
SELECT count(*) FILTER (WHERE p.version <> r.version) > 0 AS some_keys_differ
  FROM pick_90 p, LATERAL maester.prompt_render('ro', '{"x": 1}', 'canary', 'user-' || p.k) r;
-- ramping the newer arm up moves keys to it, never away from it
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v1": 50, "v2": 50}');
SELECT count(*) FILTER (WHERE p.version = 'v2' AND r.version = 'v1') AS left_v2,
       count(*) FILTER (WHERE p.version = 'v1' AND r.version = 'v2') > 400 AS moved_to_v2
  FROM pick_90 p, LATERAL maester.prompt_render('ro', '{"x": 1}', 'production', 'user-' || p.k) r;
-- a sticky key on a version or a plain label changes nothing
SELECT version FROM maester.prompt_render('ro', '{"x": 1}', 'v3', 'user-1');
SELECT version FROM maester.prompt_render('ro', '{"x": 1}', NULL, 'user-1');
-- bad keys: 22023
SELECT pg_temp.err($$ SELECT maester.prompt_render('ro', '{"x": 1}', 'production', '') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_render('ro', '{"x": 1}', 'production', repeat('k', 257)) $$);

-- llm_generate by the label: the picked version is on the result, on its
-- ledger row, and it is the version prompt_render picks for the same key
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": 10}');
CREATE TEMP TABLE calls AS
SELECT k, g.* FROM generate_series(1, 60) k,
       LATERAL maester.llm_generate(prompt_name => 'ro', variables => '{"x": 1}',
                                    prompt_version => 'production',
                                    options => jsonb_build_object('sticky_key', 'user-' || k)) g;
SELECT count(*) AS calls,
       count(*) FILTER (WHERE c.prompt_version = p.version) AS same_as_render,
       count(DISTINCT c.prompt_version) AS versions,
       count(*) FILTER (WHERE c.model = CASE c.prompt_version WHEN 'v1' THEN 'romock-a' ELSE 'romock-b' END)
           AS model_of_version
  FROM calls c JOIN pick_90 p USING (k);
SELECT count(*) AS rows, count(*) FILTER (WHERE u.prompt_version = c.prompt_version) AS same_version,
       count(*) FILTER (WHERE u.prompt_hash = c.prompt_hash) AS same_hash
  FROM maester.usage u JOIN calls c USING (request_id);
-- the same key again: the same version
SELECT count(*) FILTER (WHERE g.prompt_version = c.prompt_version) AS same_again
  FROM calls c, LATERAL maester.llm_generate(prompt_name => 'ro', variables => '{"x": 1}',
                                             prompt_version => 'production',
                                             options => jsonb_build_object('sticky_key', 'user-' || c.k)) g
 WHERE c.k <= 20;
-- calls without a key: both arms over 200 calls
SELECT count(DISTINCT g.prompt_version) AS versions
  FROM generate_series(1, 200) k,
       LATERAL maester.llm_generate(prompt_name => 'ro', variables => jsonb_build_object('x', k % 1),
                                    prompt_version => 'production') g;
-- the prompt_render span names the version picked and the rollout
SELECT pg_temp.wait_span(trace_id) FROM calls WHERE k = 1;
SELECT s.attributes ->> 'maester.prompt.version' = c.prompt_version AS version_ok,
       s.attributes ->> 'maester.prompt.rollout' AS rollout,
       s.attributes ->> 'maester.prompt.rollout.weights' AS weights,
       s.attributes ->> 'maester.prompt.rollout.pick' AS pick
  FROM maester.span s JOIN calls c USING (trace_id) WHERE c.k = 1 AND s.name = 'prompt_render';

-- rollout_compare: the arms' figures are the ledger's
SELECT version, weight, share, calls > 0 AS has_calls, errors, evaluated = calls AS all_evaluated,
       pass_rate, mean_score IS NOT NULL AS scored, p50_latency_ms > 0 AS timed,
       cost_usd > 0 AS priced
  FROM maester.rollout_compare('ro', 'production');
SELECT count(*) AS arms_matching FROM maester.rollout_compare('ro', 'production') r
  JOIN (SELECT u.prompt_version AS version, count(DISTINCT u.request_id) AS calls, count(*) AS attempts,
               sum(u.cost_usd) AS cost_usd,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY u.latency_ms) AS p50,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY u.latency_ms) AS p95,
               avg(u.eval_score) AS mean_score,
               count(*) FILTER (WHERE u.status IN ('error', 'timeout', 'cancelled', 'orphaned', 'blocked')) AS errors,
               count(*) FILTER (WHERE u.eval_status IS NOT NULL) AS evaluated,
               avg(CASE u.eval_status WHEN 'pass' THEN 1.0 ELSE 0.0 END) FILTER (WHERE u.eval_status IS NOT NULL) AS pass_rate
          FROM maester.usage u WHERE u.prompt_name = 'ro' GROUP BY 1) l USING (version)
 WHERE r.calls = l.calls AND r.attempts = l.attempts AND r.cost_usd = l.cost_usd
   AND r.avg_cost_usd = l.cost_usd / l.calls AND r.p50_latency_ms = l.p50
   AND r.p95_latency_ms = l.p95 AND r.mean_score = l.mean_score AND r.errors = l.errors
   AND r.evaluated = l.evaluated AND r.pass_rate = l.pass_rate;
-- the calls agree with cost_by_prompt_version
SELECT count(*) AS agree FROM maester.rollout_compare('ro', 'production') r
  JOIN (SELECT version, sum(calls) AS attempts, sum(total_cost_usd) AS cost
          FROM maester.cost_by_prompt_version WHERE prompt = 'ro' GROUP BY 1) v USING (version)
 WHERE r.attempts = v.attempts AND r.cost_usd = v.cost;
-- a window after the calls: the arms, with nothing in them
SELECT version, weight, calls, cost_usd, pass_rate FROM maester.rollout_compare('ro', 'production', now() + interval '1 hour');
-- a plain label: its one version
SELECT version FROM maester.prompt_set_label('ro', 'staging', 'v3');
SELECT version, weight, share, calls, pass_rate FROM maester.rollout_compare('ro', 'staging');
SELECT pg_temp.err($$ SELECT * FROM maester.rollout_compare('ro', 'nope') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.rollout_compare(NULL, 'production') $$);

-- an evaluation run evaluates one version: not a label in a rollout (run
-- each arm, then eval_compare the runs)
INSERT INTO maester.eval_suite (name, prompt) VALUES ('ro_suite', 'ro');
INSERT INTO maester.eval_case (suite, case_name, variables) VALUES ('ro_suite', 'one', '{"x": 1}');
SELECT pg_temp.err($$ SELECT maester.eval_run('ro_suite', 'production') $$);
SELECT id AS run_v1, prompt_version FROM maester.eval_run('ro_suite', 'v1') \gset
SELECT id AS run_v2, prompt_version FROM maester.eval_run('ro_suite', 'v2') \gset
SELECT case_name, passed_a, passed_b, better FROM maester.eval_compare(:run_v1, :run_v2) ORDER BY case_name;

-- bad rollouts: unknown prompt or version 42704; weights not positive
-- integers, not an object, empty or too large 22023; nulls 22004
\set VERBOSITY default
SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v9": 10}');
SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": 0}');
\set VERBOSITY terse
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('nope', 'production', '{"v1": 1}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "canary": 10}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": -10}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": 1.5}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": "10"}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": null}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '["v1", "v2"]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '90') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 900000, "v2": 100001}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', NULL) $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'latest', '{"v1": 1, "v2": 1}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'pro duction', '{"v1": 1, "v2": 1}') $$);
-- a direct write is checked the same way
SELECT pg_temp.err($$ UPDATE maester.prompt_label SET weights = '{"v1": 1, "v2": 0}' WHERE name = 'ro' AND label = 'production' $$);
SELECT pg_temp.err($$ INSERT INTO maester.prompt_label (name, label, version, weights) VALUES ('ro', 'beta', 'v1', '{"v7": 1, "v1": 1}') $$);
-- nothing changed
SELECT label, version, weights FROM maester.prompt_label WHERE name = 'ro' ORDER BY label;

-- the main arm: the heaviest weight, on a tie the earliest registered;
-- a direct UPDATE of the weights sets it too
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v3": 1, "v2": 1, "v1": 1}');
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v3": 5, "v2": 1, "v1": 1}');
UPDATE maester.prompt_label SET weights = '{"v2": 7, "v3": 3}' WHERE name = 'ro' AND label = 'production';
SELECT version, weights FROM maester.prompt_label WHERE name = 'ro' AND label = 'production';
SELECT count(*) FILTER (WHERE r.version = 'v1') AS v1, count(DISTINCT r.version) AS versions
  FROM generate_series(1, 500) g, LATERAL maester.prompt_render('ro', jsonb_build_object('x', g % 1), 'production') r;

-- ending a rollout: a rollout of one version, prompt_set_label, or a
-- direct UPDATE of the version
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v3": 100}');
SELECT count(DISTINCT r.version) AS versions, min(r.version) AS version
  FROM generate_series(1, 200) g, LATERAL maester.prompt_render('ro', jsonb_build_object('x', g % 1), 'production') r;
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v1": 90, "v2": 10}');
SELECT version, weights FROM maester.prompt_set_label('ro', 'production', 'v2');
SELECT count(DISTINCT r.version) AS versions, min(r.version) AS version
  FROM generate_series(1, 200) g, LATERAL maester.prompt_render('ro', jsonb_build_object('x', g % 1), 'production') r;
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'canary', '{"v1": 90, "v2": 10}');
UPDATE maester.prompt_label SET version = 'v3' WHERE name = 'ro' AND label = 'canary';
SELECT version, weights FROM maester.prompt_label WHERE name = 'ro' AND label = 'canary';
SELECT maester.prompt_unset_label('ro', 'canary');

-- the history: every move and every change of weights, in order
SELECT label, from_version, to_version, weights, moved_by = current_user AS by_me
  FROM maester.prompt_label_history WHERE name = 'ro' ORDER BY id;

-- privileges: a user renders and compares but cannot change a rollout;
-- an admin can
CREATE ROLE ro_user LOGIN IN ROLE maester_user;
CREATE ROLE ro_admin LOGIN IN ROLE maester_admin;
SET ROLE ro_user;
SELECT pg_temp.err($$ SELECT maester.prompt_set_rollout('ro', 'production', '{"v1": 1, "v3": 1}') $$);
SELECT pg_temp.err($$ UPDATE maester.prompt_label SET weights = '{"v1": 1, "v3": 1}' WHERE name = 'ro' $$);
SELECT pg_temp.err($$ INSERT INTO maester.prompt_label (name, label, version, weights) VALUES ('ro', 'beta', 'v1', '{"v1": 1, "v3": 1}') $$);
SELECT version FROM maester.prompt_render('ro', '{"x": 1}', 'production', 'user-1');
RESET ROLE;
SET ROLE ro_admin;
SELECT version, weights FROM maester.prompt_set_rollout('ro', 'production', '{"v1": 1, "v3": 1}');
RESET ROLE;
SELECT label, to_version, weights, moved_by FROM maester.prompt_label_history
 WHERE name = 'ro' ORDER BY id DESC LIMIT 1;

-- tenants: each compares its own calls; another tenant's arms are empty
CREATE ROLE ro_acme LOGIN IN ROLE maester_user;
CREATE ROLE ro_globex LOGIN IN ROLE maester_user;
INSERT INTO maester.tenant_member (role, tenant) VALUES ('ro_acme', 'ro-acme'), ('ro_globex', 'ro-globex');
SELECT version FROM maester.prompt_register('rt', 'tenant one {x}', config => '{"model": "romock-a"}');
SELECT version FROM maester.prompt_register('rt', 'tenant two {x}', config => '{"model": "romock-a"}');
SELECT version, weights FROM maester.prompt_set_rollout('rt', 'production', '{"v1": 50, "v2": 50}');
SET ROLE ro_acme;
SELECT count(*) AS acme_calls FROM generate_series(1, 20) k,
       LATERAL maester.llm_generate(prompt_name => 'rt', variables => '{"x": 1}', prompt_version => 'production',
                                    options => jsonb_build_object('sticky_key', 'acme-' || k)) g;
SELECT sum(calls) AS acme_sees FROM maester.rollout_compare('rt', 'production');
RESET ROLE;
SET ROLE ro_globex;
SELECT version, calls, attempts, cost_usd, p50_latency_ms FROM maester.rollout_compare('rt', 'production');
SELECT count(*) AS globex_rows FROM maester.usage WHERE prompt_name = 'rt';
RESET ROLE;
SELECT tenant, count(*) FROM maester.usage WHERE prompt_name = 'rt' GROUP BY 1 ORDER BY 1;
