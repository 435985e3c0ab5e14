-- Route strategies (issue #19): which target of a route a call tries
-- first -- by weight, recent latency, worst-case cost, or the ledger's
-- evaluations of the prompt version -- the others following as its
-- fallbacks; the choice and why are on the ledger rows and the trace.
\getenv mock_url MAESTER_MOCK_URL
SET client_min_messages = error;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE FUNCTION pg_temp.wait_for(q text, secs int) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE ok boolean;
BEGIN
  FOR i IN 1 .. secs * 20 LOOP
    EXECUTE q INTO ok;
    IF ok THEN RETURN true; END IF;
    PERFORM pg_sleep(0.05);
  END LOOP;
  RETURN false;
END $$;
-- n calls of a route; the models that answered, in order
CREATE FUNCTION pg_temp.calls(route text, n int, options jsonb DEFAULT '{}', prompt text DEFAULT 'route me')
RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1 .. n LOOP
    RETURN NEXT (maester.llm_generate(prompt, route, 16, options => options)).model;
  END LOOP;
END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold, backoff_base_ms, max_attempts)
VALUES ('routemock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0, 1, 1);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million) VALUES
    ('mock-dear', '2020-01-01', 10, 30),
    ('mock-cheap', '2020-01-01', 0.1, 0.4),
    ('mock-mid', '2020-01-01', 1, 4);

-- the column's values and the weights are checked
SELECT pg_temp.err($$ INSERT INTO maester.route (name, strategy) VALUES ('bad', 'fastest') $$);
SELECT pg_temp.err($$ INSERT INTO maester.route (name, sticky) VALUES ('bad', 'role') $$);
INSERT INTO maester.route (name, strategy) VALUES ('canary', 'weighted');
SELECT pg_temp.err($$ INSERT INTO maester.route_target (route, position, provider, model, weight)
                      VALUES ('canary', 9, 'routemock', 'mock-x', -1) $$);
INSERT INTO maester.route_target (route, position, provider, model, weight) VALUES
    ('canary', 1, 'routemock', 'mock-stable', 90),
    ('canary', 2, 'routemock', 'mock-canary', 10);

-- weighted: a 90/10 canary, drawn at random per call
CREATE TEMP TABLE drawn AS SELECT m FROM pg_temp.calls('canary', 400) m;
SELECT count(*) AS calls, count(*) FILTER (WHERE m = 'mock-stable') BETWEEN 320 AND 388 AS near_90,
       count(*) FILTER (WHERE m = 'mock-canary') > 0 AS canary_served
  FROM drawn;
-- the ledger rows say which strategy chose, and why
SELECT route_strategy, regexp_replace(route_reason, 'weight \d+', 'weight W') AS reason, count(*) > 0 AS some
  FROM maester.usage WHERE requested_model = 'canary' GROUP BY 1, 2 ORDER BY 2;
-- a sticky key lands on one target; other keys spread over both
SELECT count(DISTINCT m) AS targets FROM pg_temp.calls('canary', 20, '{"sticky_key": "user-7"}') m;
SELECT count(DISTINCT m) AS targets
  FROM generate_series(1, 60) k, LATERAL pg_temp.calls('canary', 1, jsonb_build_object('sticky_key', 'user-' || k)) m;
SELECT DISTINCT route_reason LIKE '%by sticky key' AS sticky FROM maester.usage
 WHERE requested_model = 'canary' AND route_reason LIKE '%sticky%';
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'canary', options => '{"sticky_key": ""}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'canary', options => '{"sticky_key": 7}') $$);
-- route.sticky = tenant: a tenant always lands on the same target
UPDATE maester.route SET sticky = 'tenant' WHERE name = 'canary';
SELECT count(DISTINCT m) AS targets FROM pg_temp.calls('canary', 20) m;
SELECT DISTINCT regexp_replace(route_reason, '^.*, ', '') AS how FROM maester.usage
 WHERE requested_model = 'canary' AND route_reason LIKE '%tenant';
UPDATE maester.route SET sticky = NULL WHERE name = 'canary';

-- the chosen target fails: the others follow; weight 0 is fallback only
INSERT INTO maester.route (name, strategy) VALUES ('fragile', 'weighted');
INSERT INTO maester.route_target (route, position, provider, model, weight) VALUES
    ('fragile', 1, 'routemock', 'mock-spare', 0),
    ('fragile', 2, 'routemock', 'fault-status-503', 1);
SELECT model, attempts, fallback_used FROM maester.llm_generate('fall back', 'fragile', 16);
SELECT attempt, model, status, route_strategy, route_reason FROM maester.usage
 WHERE requested_model = 'fragile' ORDER BY attempt;
UPDATE maester.route_target SET weight = 0 WHERE route = 'fragile';
CREATE TEMP TABLE unweighted AS SELECT request_id FROM maester.llm_generate('x', 'fragile', 16);
SELECT DISTINCT route_reason FROM unweighted JOIN maester.usage u USING (request_id);

-- lowest_cost: the call's worst case at each target's prices; unpriced last
INSERT INTO maester.route (name, strategy) VALUES ('thrift', 'lowest_cost');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('thrift', 1, 'routemock', 'mock-unpriced'), ('thrift', 2, 'routemock', 'mock-dear'),
    ('thrift', 3, 'routemock', 'mock-cheap'), ('thrift', 4, 'routemock', 'mock-mid');
SELECT DISTINCT m FROM pg_temp.calls('thrift', 3) m;
SELECT DISTINCT route_reason FROM maester.usage WHERE requested_model = 'thrift';
-- its fallbacks are in cost order too: the cheapest fails, the next cheapest answers
UPDATE maester.route_target SET model = 'fault-status-503' WHERE route = 'thrift' AND position = 3;
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('fault-status-503', '2020-01-01', 0.01, 0.01);
SELECT model, attempts FROM maester.llm_generate('x', 'thrift', 16);
-- a target whose recent attempts mostly fail goes last, whatever its price
SELECT string_agg(g.model || ':' || g.attempts, ' ') AS calls
  FROM generate_series(1, 6) i, LATERAL maester.llm_generate('x' || i, 'thrift', 16) g;

-- lowest_latency: each target is measured first (5 calls), then the fastest wins
INSERT INTO maester.route (name, strategy) VALUES ('quick', 'lowest_latency');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('quick', 1, 'routemock', 'fault-latency-80'), ('quick', 2, 'routemock', 'mock-fast');
SELECT string_agg(m, ' ') AS order_of_calls FROM pg_temp.calls('quick', 14) m;
SELECT regexp_replace(route_reason, '[0-9.]+ ms', 'N ms') AS reason, count(*) FROM maester.usage
 WHERE requested_model = 'quick' GROUP BY 1 ORDER BY 2 DESC, 1;

-- best_evaluation: the ledger's evaluations of the prompt version per model
SELECT (maester.prompt_register('judged', 'Say something about {x}', version => 'v1',
                                checks => '{"required_terms": ["mock-good"]}')).version AS registered;
INSERT INTO maester.route (name, strategy) VALUES ('judge', 'best_evaluation');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('judge', 1, 'routemock', 'mock-bad'), ('judge', 2, 'routemock', 'mock-good');
CREATE FUNCTION pg_temp.judged(n int) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text := '';
BEGIN
  FOR i IN 1 .. n LOOP
    s := s || ' ' || (maester.llm_generate(prompt_name => 'judged', variables => '{"x": 1}', model => 'judge')).model;
  END LOOP;
  RETURN ltrim(s);
END $$;
CREATE FUNCTION pg_temp.evaluated(m text, n int) RETURNS boolean LANGUAGE sql AS $$
  SELECT pg_temp.wait_for(format($q$ SELECT count(*) >= %s FROM maester.usage
                                      WHERE prompt_name = 'judged' AND model = %L AND eval_status IS NOT NULL $q$, n, m), 10) $$;
-- no evaluations yet: position order, 5 calls measure mock-bad
SELECT pg_temp.judged(5) AS first;
SELECT pg_temp.evaluated('mock-bad', 5);
-- mock-bad is judged (it fails its checks); mock-good is measured next
SELECT pg_temp.judged(5) AS second;
SELECT pg_temp.evaluated('mock-good', 5);
-- both judged: mock-good, whose answers pass
SELECT pg_temp.judged(3) AS third;
SELECT DISTINCT regexp_replace(route_reason, 'over \d+', 'over N') AS reason FROM maester.usage
 WHERE prompt_name = 'judged' AND route_reason LIKE '%the best of%';
-- a call without a prompt version cannot be judged: position order
CREATE TEMP TABLE unjudged AS SELECT request_id, model FROM maester.llm_generate('plain text', 'judge', 16);
SELECT g.model, u.route_reason FROM unjudged g JOIN maester.usage u USING (request_id);
-- another tenant's evaluations do not count for this one
SET maester.tenant = 'other-judge';
SELECT pg_temp.judged(1) AS other_tenant_measures_first;
RESET maester.tenant;

-- ordered (the default): position order; a model (not a route) has no strategy
INSERT INTO maester.route (name) VALUES ('plain-chain');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('plain-chain', 1, 'routemock', 'mock-first'), ('plain-chain', 2, 'routemock', 'mock-second');
SELECT model FROM maester.llm_generate('x', 'plain-chain', 16);
SELECT route_strategy, route_reason FROM maester.usage WHERE requested_model = 'plain-chain';
INSERT INTO maester.model (name, provider, provider_model) VALUES ('route-solo', 'routemock', 'mock-solo');
CREATE TEMP TABLE solo AS SELECT request_id FROM maester.llm_generate('x', 'route-solo', 16);
SELECT route_strategy IS NULL AS no_strategy FROM solo JOIN maester.usage USING (request_id);

-- the trace says it too: the model_route span, and explain
CREATE TEMP TABLE traced AS SELECT trace_id FROM maester.llm_generate('trace me', 'thrift', 16);
SELECT pg_temp.wait_for($q$ SELECT count(*) > 0 FROM maester.span s JOIN traced t USING (trace_id)
                             WHERE s.name = 'model_route' $q$, 10) AS span_written;
SELECT s.attributes ->> 'maester.route.strategy' AS strategy, s.attributes ->> 'maester.route.order' AS route_order
  FROM maester.span s JOIN traced t USING (trace_id) WHERE s.name = 'model_route';
SELECT regexp_replace(e, '^.*(route=.*)$', '\1') AS explain_route
  FROM traced, maester.explain(traced.trace_id) e WHERE e LIKE '%route=%';

-- a target that cannot be tried (its provider disabled) is never first,
-- even unmeasured: with fallback false the call still has one to try
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold, enabled)
VALUES ('routeoff', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0, false);
INSERT INTO maester.route (name, strategy) VALUES ('half-off', 'lowest_latency');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('half-off', 1, 'routeoff', 'mock-off'), ('half-off', 2, 'routemock', 'mock-on');
SELECT model FROM maester.llm_generate('x', 'half-off', 16, options => '{"fallback": false}');
SELECT DISTINCT route_reason FROM maester.usage WHERE requested_model = 'half-off';
UPDATE maester.route SET strategy = 'weighted' WHERE name = 'half-off';
UPDATE maester.route_target SET weight = 1000 WHERE route = 'half-off' AND position = 1;
SELECT count(*) FILTER (WHERE m = 'mock-on') AS on_target, count(*) AS calls
  FROM pg_temp.calls('half-off', 10, '{"fallback": false}') m;
-- a budget that downgrades a call to a route: the route's strategy orders it
INSERT INTO maester.model (name, provider, provider_model) VALUES ('route-premium', 'routemock', 'mock-premium');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('route-premium', '2020-01-01', 100, 100);
INSERT INTO maester.budget (tenant, model, period, limit_usd, action, downgrade_model)
VALUES ('default', 'route-premium', 'total', 0.0000001, 'downgrade', 'canary');
CREATE TEMP TABLE downgraded AS SELECT request_id, model FROM maester.llm_generate('x', 'route-premium', 16);
SELECT d.model LIKE 'mock-%' AS served, u.route_strategy, u.route_reason LIKE '%weight%' AS drawn
  FROM downgraded d JOIN maester.usage u USING (request_id) WHERE u.status = 'ok';
DELETE FROM maester.budget WHERE model = 'route-premium';

-- an embedding route is never reordered: vectors of two models do not mix
INSERT INTO maester.route (name, strategy) VALUES ('route-emb', 'weighted');
INSERT INTO maester.route_target (route, position, provider, model, weight) VALUES
    ('route-emb', 1, 'routemock', 'text-embedding-3-small', 0), ('route-emb', 2, 'routemock', 'text-embedding-3-large', 1);
SELECT DISTINCT e.model FROM generate_series(1, 3) i, LATERAL maester.embed(ARRAY['a' || i, 'b'], 'route-emb') e;
SELECT DISTINCT route_strategy IS NULL AS not_reordered FROM maester.usage WHERE requested_model = 'route-emb';

-- leave the shared regression database's routes as they were
DELETE FROM maester.route WHERE name IN ('canary', 'fragile', 'thrift', 'quick', 'judge', 'plain-chain', 'route-emb', 'half-off');
