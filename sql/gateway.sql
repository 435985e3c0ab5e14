-- The model gateway against the mock provider (test/mock/mock_llm.py),
-- which scripts/test.sh starts and names in MAESTER_MOCK_URL; the servers
-- see the mock's key in MAESTER_TEST_API_KEY.
\getenv mock_url MAESTER_MOCK_URL
-- (the mock's models have no price: their once-per-model WARNINGs are
-- tested in ledger.sql, not shown here)
SET client_min_messages = error;
SELECT set_config('test.mock_url', :'mock_url', false) IS NOT NULL AS mock_url_set;

CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
-- the same, with the error detail (which lists the attempts)
CREATE FUNCTION pg_temp.errd(q text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
  RETURN SQLSTATE || ': ' || SQLERRM || ' | ' || d; END $$;
-- what the mock saw: GET a /_mock/ path
CREATE TEMP TABLE mock_out (line text);
CREATE FUNCTION pg_temp.mock(path text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE mock_out;
  EXECUTE format('COPY mock_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE E''\x01'', DELIMITER E''\x02'')',
                 'curl -s ' || current_setting('test.mock_url') || path);
  RETURN (SELECT string_agg(line, E'\n')::jsonb FROM mock_out);
END $$;
CREATE FUNCTION pg_temp.last_request() RETURNS jsonb LANGUAGE sql AS $$
  SELECT pg_temp.mock('/_mock/requests') -> -1 $$;
CREATE FUNCTION pg_temp.request_count() RETURNS int LANGUAGE sql AS $$
  SELECT (pg_temp.mock('/_mock/stats') ->> 'requests')::int $$;
SELECT pg_temp.mock('/_mock/reset');

-- providers of the tests: the mock speaking OpenAI (circuit breaker off,
-- short backoff), speaking Anthropic, and a keyless mount
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority,
                              circuit_failure_threshold, backoff_base_ms, backoff_max_ms)
VALUES ('mock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY',
        '{mock-%,fault-%}', 1, 0, 10, 40),
       ('mockanth', 'anthropic', :'mock_url', 'MAESTER_TEST_API_KEY', '{}', 2, 0, 10, 40),
       ('mockopen', 'openai_compatible', :'mock_url' || '/open/v1', NULL, '{}', 3, 0, 10, 40);
INSERT INTO maester.model (name, provider, provider_model, aliases)
VALUES ('claude-test', 'mockanth', 'claude-mock-1', '{anth}'),
       ('local-llama', 'mockopen', 'llama3', '{}'),
       ('cached-anth', 'mockanth', 'fault-cached-30-10', '{}');

-- a call: the normalized result
SELECT provider, model, content, finish_reason, input_tokens, output_tokens,
       cached_input_tokens, usage_estimated, attempts, fallback_used,
       prompt_name, prompt_version, requested_model,
       prompt_hash = encode(sha256('Hello there'), 'hex') AS hash_ok,
       trace_id ~ '^[0-9a-f]{32}$' AS trace_id_ok,
       request_id IS NOT NULL AS has_request_id,
       latency_ms > 0 AS has_latency,
       response_id LIKE 'chatcmpl-%' AS has_response_id
  FROM maester.llm_generate('Hello there', 'mock-1', 20);
-- what was sent: Chat Completions, key as a bearer token, the request id
SELECT r -> 'path' AS path,
       r -> 'body' AS body,
       r -> 'headers' ->> 'authorization' LIKE 'Bearer sk-test-%' AS bearer_key,
       r -> 'headers' ->> 'x-request-id' ~ '^[0-9a-f-]{36}$' AS request_id_sent,
       r -> 'headers' ->> 'content-type' AS content_type
  FROM pg_temp.last_request() r;
-- max_tokens limits the output
SELECT finish_reason, length(content), output_tokens
  FROM maester.llm_generate('Hello there, a longer prompt', 'mock-1', 5);
-- a system prompt and options travel to the provider
SELECT prompt_hash = encode(sha256(convert_to('Be brief.', 'UTF8') || '\x00'::bytea
                                   || convert_to('Hi', 'UTF8')), 'hex') AS hash_ok
  FROM maester.llm_generate('Hi', 'mock-1', system => 'Be brief.',
       options => '{"temperature": 0.2, "top_p": 0.9, "stop": ["\n\n", "END"], "tags": {"team": "a"}}');
SELECT pg_temp.last_request() -> 'body' AS body;
-- numbers as written: shortest round-trip form (not 0.20000000000000001)
SELECT substring(pg_temp.last_request() ->> 'raw' from '"temperature":[^,]*') AS raw_temperature;
-- provider parameters maester does not model pass through options.extra
SELECT content IS NOT NULL AS answered FROM maester.llm_generate('Hi', 'mock-1',
       options => '{"extra": {"seed": 7, "user": "u-1", "reasoning_effort": "low", "logit_bias": {"50256": -100}}}');
SELECT b -> 'seed' AS seed, b -> 'user' AS "user", b -> 'reasoning_effort' AS effort, b -> 'logit_bias' AS bias
  FROM (SELECT pg_temp.last_request() -> 'body' AS b) r;
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hi', 'mock-1', options => '{"extra": {"temperature": 1.5}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hi', 'mock-1', options => '{"extra": {"stream": true}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hi', 'mock-1', options => '{"extra": ["seed", 7]}') $$);
-- n answers are billed but one is read and reserved; names are identifiers
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hi', 'mock-1', options => '{"extra": {"n": 100}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('Hi', 'mock-1', options => '{"extra": {"max_tokens ": 99999}}') $$);
-- a call without max_tokens is sent what it reserves: the kind's default
-- (4,096; Anthropic 1,024), or the model's output limit when lower
SELECT content IS NOT NULL AS answered FROM maester.llm_generate('Hi', 'mock-1');
SELECT pg_temp.last_request() -> 'body' -> 'max_tokens' AS max_tokens;
INSERT INTO maester.model (name, provider, provider_model, max_output_tokens) VALUES ('mock-capped', 'mock', 'mock-1', 50);
SELECT content IS NOT NULL AS answered FROM maester.llm_generate('Hi', 'mock-capped');
SELECT pg_temp.last_request() -> 'body' -> 'max_tokens' AS max_tokens;
DELETE FROM maester.model WHERE name = 'mock-capped';
SELECT content FROM maester.llm_generate('Summarize this', 'mock-1',
       options => '{"response_format": "json"}');
SELECT pg_temp.last_request() -> 'body' -> 'response_format' AS response_format;

-- Anthropic Messages API, through a model row and its alias
SELECT provider, model, content, finish_reason, input_tokens, output_tokens,
       response_id LIKE 'msg_%' AS has_response_id
  FROM maester.llm_generate('Hello', 'claude-test', 50, system => 'Be brief.');
SELECT r -> 'path' AS path, r -> 'body' AS body,
       r -> 'headers' ->> 'x-api-key' LIKE 'sk-test-%' AS api_key_sent,
       r -> 'headers' ? 'authorization' AS has_authorization,
       r -> 'headers' ->> 'anthropic-version' AS anthropic_version
  FROM pg_temp.last_request() r;
SELECT provider, requested_model, finish_reason FROM maester.llm_generate('Hello', 'anth', 3);
-- options.extra reaches Anthropic's body too
SELECT content IS NOT NULL AS answered FROM maester.llm_generate('Hi', 'anth',
       options => '{"extra": {"metadata": {"user_id": "u-1"}, "top_k": 5}}');
SELECT pg_temp.last_request() -> 'body' -> 'metadata' AS metadata, pg_temp.last_request() -> 'body' -> 'top_k' AS top_k;
-- Anthropic's max_tokens is required: 1024 when none is given
SELECT pg_temp.last_request() -> 'body' -> 'max_tokens' AS max_tokens
  FROM maester.llm_generate('Hello', 'anth');
-- cached tokens: Anthropic reports cache reads and writes apart from
-- input_tokens; we add them in, as OpenAI does
SELECT input_tokens, cached_input_tokens, cache_write_tokens
  FROM maester.llm_generate('Hello', 'cached-anth');
SELECT pg_temp.last_request() -> 'fault' AS fault;
SELECT input_tokens, cached_input_tokens, cache_write_tokens
  FROM maester.llm_generate('Hello', 'fault-cached-30-10');

-- a keyless local server (Ollama, vLLM, llama.cpp): no Authorization sent
SELECT provider, model FROM maester.llm_generate('Hi', 'local-llama');
SELECT pg_temp.last_request() -> 'headers' ? 'authorization' AS has_authorization;

-- no usage in the answer: estimated, and marked so
SELECT usage_estimated, input_tokens, output_tokens
  FROM maester.llm_generate('Hello there', 'fault-nousage');

-- retries: 5xx, 429 and resets are retried, with backoff or Retry-After
SELECT attempts, provider FROM maester.llm_generate('x', 'fault-flaky-2-503');
SELECT attempts FROM maester.llm_generate('x', 'fault-flaky-1-429');
SELECT attempts FROM maester.llm_generate('x', 'fault-flaky-1-500');
SELECT attempts FROM maester.llm_generate('x', 'fault-flaky-1-502');
SELECT attempts FROM maester.llm_generate('x', 'fault-flaky-1-504');
SELECT attempts FROM maester.llm_generate('x', 'fault-flaky-1-529');
-- max_attempts bounds them
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-flaky-2-503', options => '{"max_attempts": 2}') $$);
SELECT attempts FROM maester.llm_generate('x', 'fault-flaky-2-503', options => '{"max_attempts": 3}');
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-reset') $$);
-- never retried: 400, 401, 403, 404, 422 (one request each reaches the mock)
SELECT pg_temp.mock('/_mock/reset');
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-status-400') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-status-401') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-status-403') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-status-404') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-status-422') $$);
SELECT pg_temp.request_count();
-- a Retry-After longer than maester.retry_after_max_ms: no waiting, give up
SET maester.retry_after_max_ms = 100;
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-429-ra-30') $$);
RESET maester.retry_after_max_ms;

-- broken answers: clear errors (MG004), never a crash
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-malformed') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-missingfields') $$);
UPDATE maester.model SET provider_model = 'fault-missingfields' WHERE name = 'cached-anth';
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'cached-anth') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-wrongtype') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-badutf8') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-redirect') $$);
SET maester.max_response_bytes = '1MB';
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-huge-2000000') $$);
RESET maester.max_response_bytes;
-- timeouts: a silent upstream, and one that drips its answer (MG002)
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-hang', options => '{"timeout_ms": 300}') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'fault-drip-200', options => '{"timeout_ms": 300}') $$);

-- an error body that echoes the request headers: the key is masked
SELECT position('sk-test-' IN e) = 0 AS key_not_in_error,
       e ~* 'authorization: Bearer \*{24}' AS masked
  FROM pg_temp.err($$ SELECT maester.llm_generate('x', 'fault-echo-headers') $$) e;

-- a provider whose key variable is not set: nothing is sent (MG007)
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('nokey', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_MISSING_API_KEY', '{nokey-%}', 0);
SELECT pg_temp.mock('/_mock/reset');
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'nokey-1') $$);
SELECT pg_temp.request_count();
-- key variables must look like keys
SELECT pg_temp.err($$ UPDATE maester.provider SET api_key_env = 'PGPASSWORD' WHERE name = 'nokey' $$);

-- routing: unknown models are errors, never a silent substitution
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'no-such-model') $$);
-- the default route (shipped: OpenAI, then Anthropic) when no model is given
SELECT route, position, provider, model FROM maester.route_target ORDER BY 1, 2;
-- with no key for either (a local-only setup), the error says what to change
SELECT count(*) FROM maester.llm_generate('x');
UPDATE maester.route_target SET provider = 'mock', model = 'mock-default' WHERE route = 'default' AND position = 1;
SELECT provider, model, requested_model FROM maester.llm_generate('x');
DELETE FROM maester.route_target WHERE route = 'default';
SELECT pg_temp.err($$ SELECT maester.llm_generate('x') $$);
DELETE FROM maester.route WHERE name = 'default';
SELECT pg_temp.err($$ SELECT maester.llm_generate('x') $$);

-- fallback: a route's next target after the first one's attempts
INSERT INTO maester.route (name) VALUES ('chain');
INSERT INTO maester.route_target (route, position, provider, model)
VALUES ('chain', 1, 'mock', 'fault-status-503'), ('chain', 2, 'mockanth', 'claude-mock-2');
SELECT provider, model, attempts, fallback_used FROM maester.llm_generate('x', 'chain');
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'chain', options => '{"fallback": false}') $$);
-- disabled providers and providers without a key are skipped
UPDATE maester.route_target SET provider = 'nokey', model = 'nokey-1' WHERE route = 'chain' AND position = 1;
SELECT provider, attempts, fallback_used FROM maester.llm_generate('x', 'chain');
UPDATE maester.provider SET enabled = false WHERE name = 'mockanth';
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'chain') $$);
UPDATE maester.provider SET enabled = true WHERE name = 'mockanth';

-- circuit breaker, per provider and model: opens after 2 failures, skips
-- that model (not the provider's others), then lets one probe through
-- after the cooldown
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models,
                              circuit_failure_threshold, circuit_cooldown_ms, max_attempts)
VALUES ('cb', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{cb-%}', 2, 1000, 1);
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('cb-bad', 'cb', 'fault-status-503'), ('cb-good', 'cb', 'mock-cb');
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cb-bad') $$);
SELECT provider, model, state, consecutive_failures FROM maester.circuit WHERE provider = 'cb';
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cb-bad') $$);
SELECT provider, model, state, consecutive_failures, opens FROM maester.circuit WHERE provider = 'cb';
SELECT pg_temp.mock('/_mock/reset');
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'cb-bad') $$);
SELECT pg_temp.request_count();
-- the provider's other model still goes through
SELECT provider, attempts FROM maester.llm_generate('x', 'cb-good');
SELECT pg_temp.request_count();
SELECT model, state FROM maester.circuit WHERE provider = 'cb' ORDER BY model;
-- a model that recovers: opened by two failures, closed by its probe
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models,
                              circuit_failure_threshold, circuit_cooldown_ms, max_attempts)
VALUES ('cb2', 'openai_compatible', 'http://127.0.0.1:1/v1', 'MAESTER_TEST_API_KEY', '{cb2-%}', 2, 1000, 1);
INSERT INTO maester.model (name, provider, provider_model) VALUES ('cb2-m', 'cb2', 'mock-cb2');
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cb2-m') $$) ~ 'Couldn''t connect' AS refused;
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cb2-m') $$) ~ 'Couldn''t connect' AS refused;
UPDATE maester.provider SET base_url = :'mock_url' || '/v1' WHERE name = 'cb2';
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cb2-m') $$);
SELECT pg_sleep(1.1);
SELECT provider, attempts FROM maester.llm_generate('x', 'cb2-m');
SELECT provider, model, state, consecutive_failures, opens FROM maester.circuit WHERE provider = 'cb2';
-- a failed probe opens it again; circuit_reset closes it
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cb-bad') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cb-bad') $$);
SELECT model, state FROM maester.circuit WHERE provider = 'cb' ORDER BY model;
SELECT maester.circuit_reset('cb', 'fault-status-503');
SELECT maester.circuit_reset('cb');
SELECT model, state FROM maester.circuit WHERE provider = 'cb' ORDER BY model;

-- prompts from the registry: name, version and hash travel with the result
SELECT version FROM maester.prompt_register('gw_summary', 'Summarize: {event}');
SELECT version FROM maester.prompt_register('gw_summary', 'Summarize briefly: {event}');
SELECT g.prompt_name, g.prompt_version, g.content,
       g.prompt_hash = r.hash AS hash_matches_render
  FROM maester.llm_generate(prompt_name => 'gw_summary', variables => '{"event": "disk full"}',
                            prompt_version => 'v1', model => 'mock-1') g,
       maester.prompt_render('gw_summary', '{"event": "disk full"}', 'v1') r;
SELECT prompt_version FROM maester.llm_generate(prompt_name => 'gw_summary',
       variables => '{"event": "disk full"}', model => 'mock-1');
SELECT version FROM maester.prompt_register('gw_sys', 'Q: {q}', system_template => 'You are {role}.');
SELECT pg_temp.last_request() IS NOT NULL AS ok,
       g.prompt_hash = r.hash AS hash_matches_render
  FROM maester.llm_generate(prompt_name => 'gw_sys', variables => '{"q": "why", "role": "an SRE"}',
                            model => 'mock-1') g,
       maester.prompt_render('gw_sys', '{"q": "why", "role": "an SRE"}') r;
SELECT pg_temp.last_request() -> 'body' -> 'messages' AS messages;
SELECT pg_temp.err($$ SELECT maester.llm_generate(prompt_name => 'gw_sys', variables => '{"q": "x", "role": "y"}', system => 'other', model => 'mock-1') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(prompt_name => 'gw_summary', model => 'mock-1') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(prompt_name => 'nope', model => 'mock-1') $$);

-- argument errors (22023)
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', prompt_name => 'gw_summary') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate(model => 'mock-1') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', variables => '{}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', 0) $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"colour": 1}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"temperature": 3}') $$);
-- an empty prompt is refused here, not sent for a provider's 400
SELECT pg_temp.err($$ SELECT maester.llm_generate('', 'mock-1') $$);
SELECT version FROM maester.prompt_register('empty_p', '{x}');
SELECT pg_temp.err($$ SELECT maester.llm_generate(prompt_name => 'empty_p', variables => '{"x": ""}', model => 'mock-1') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"top_p": "high"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"stop": 5}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"response_format": "xml"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"max_attempts": 0}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"timeout_ms": 1.5}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"fallback": "yes"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '{"tags": [1]}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'mock-1', options => '[]') $$);

-- egress: https only unless listed; private and loopback addresses refused
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold) VALUES
    ('plainhttp', 'openai_compatible', 'http://example.invalid/v1', '{plain-%}', 0),
    ('loopback', 'openai_compatible', 'https://localhost:9/v1', '{loop-%}', 0),
    ('loopback2', 'openai_compatible', 'https://127.0.0.2:9/v1', '{loop2-%}', 0),
    ('privnet', 'openai_compatible', 'https://10.255.255.1:9/v1', '{priv-%}', 0);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'plain-1') $$);
SELECT regexp_replace(pg_temp.errd($$ SELECT maester.llm_generate('x', 'loop-1') $$),
                      'resolved to \S+,', 'resolved to (127.0.0.1 or ::1),') AS errd;
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'loop2-1') $$);
SELECT pg_temp.errd($$ SELECT maester.llm_generate('x', 'priv-1') $$);
SELECT pg_temp.err($$ INSERT INTO maester.provider (name, kind, base_url) VALUES ('ftp', 'openai', 'ftp://x') $$);

-- provider names fit the circuit breaker's shared memory
SELECT pg_temp.err($$ INSERT INTO maester.provider (name, kind, base_url) VALUES (repeat('p', 128), 'openai', 'https://x') $$);

-- the configuration is read as its owner with a fixed search_path: an
-- object a user puts first on the path is never run with those rights
CREATE ROLE gw_user LOGIN IN ROLE maester_user;
CREATE SCHEMA gw_evil AUTHORIZATION gw_user;
SET ROLE gw_user;
CREATE FUNCTION gw_evil.sfunc(s text[], v text) RETURNS text[] LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'hijacked as %', current_user; END $$;
CREATE AGGREGATE gw_evil.array_agg(text) (sfunc = gw_evil.sfunc, stype = text[]);
SET search_path = gw_evil, pg_catalog;
RESET ROLE;
UPDATE maester.provider SET enabled = true WHERE name = 'mock';  -- reload the cache
SET ROLE gw_user;
SELECT provider FROM maester.llm_generate('x', 'mock-1');
RESET ROLE;
RESET search_path;
DROP SCHEMA gw_evil CASCADE;
DROP ROLE gw_user;

-- the routing decision, as the articles' structured line
SET maester.log_routing = notice;
SET client_min_messages = notice;
SELECT provider FROM maester.llm_generate('x', 'chain');
SET client_min_messages = error;
RESET maester.log_routing;

-- complete(): the articles' request and response shapes
SELECT (maester.prompt_register('system_summary',
    E'You are a production AI assistant.\nSummarize the following system event clearly:\n\n{event_text}',
    version => 'v1')).version AS registered;
SELECT (maester.prompt_register('system_summary',
    E'You are a production AI assistant focused on reliability.\nSummarize the following system event.\nBe concise, mention operational impact, and keep the tone factual.\n\n{event_text}',
    version => 'v2')).version AS registered;
INSERT INTO maester.model (name, provider, provider_model) VALUES ('gpt-4.1-mini', 'mock', 'gpt-4.1-mini');
SELECT jsonb_pretty(r - 'trace_id') AS response, r ->> 'trace_id' ~ '^[0-9a-f]{32}$' AS trace_id_ok
  FROM maester.complete('{"prompt_name": "system_summary", "prompt_version": "v1",
                          "variables": {"event_text": "Admin revoked API key for user account 742."},
                          "model": "gpt-4.1-mini", "max_tokens": 120}') r;
SELECT r ->> 'prompt_version' AS version, r ->> 'prompt_hash' AS hash, r -> 'cost' AS cost
  FROM maester.complete('{"prompt_name": "system_summary",
                          "variables": {"event_text": "System latency increased above 300ms for the inference service."},
                          "model": "gpt-4.1-mini"}') r;
-- an unpriced model: cost null
SELECT r ->> 'content' AS content, r -> 'cost' AS cost
  FROM maester.complete('{"prompt": "Hi", "model": "mock-1"}') r;
SELECT cost_usd, priced FROM maester.llm_generate('Hi', 'mock-1');
SELECT pg_temp.err($$ SELECT maester.complete('{"prompt": "Hi", "modle": "mock-1"}') $$);
SELECT pg_temp.err($$ SELECT maester.complete('[1]') $$);
SELECT pg_temp.err($$ SELECT maester.complete('{"prompt": "Hi", "max_tokens": "ten"}') $$);
SELECT pg_temp.err($$ SELECT maester.complete('{"prompt": "Hi", "max_tokens": 1.5}') $$);
SELECT pg_temp.err($$ SELECT maester.complete('{"prompt": 5}') $$);

-- one connection serves a sequence of calls (keep-alive reuse): between
-- two looks at the mock's counters, only the second look's own connection
SELECT count(*) FROM maester.llm_generate('warm', 'mock-1');
CREATE TEMP TABLE conns AS SELECT (pg_temp.mock('/_mock/stats') ->> 'connections_total')::int AS n;
SELECT count(*) FROM generate_series(1, 20) i, maester.llm_generate('x' || i, 'mock-1') g;
SELECT (pg_temp.mock('/_mock/stats') ->> 'connections_total')::int - n AS new_connections FROM conns;

-- the ledger reserves the output limit actually sent: Anthropic's 1,024
-- when the call gives none (not the 4,096 assumed for other providers)
SELECT count(*) FROM maester.llm_generate('how long', 'anth');
SELECT max_tokens FROM maester.usage WHERE requested_model = 'anth' ORDER BY ts DESC LIMIT 1;
-- a provider an admin adds wins over a shipped one for the same pattern
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('gpt_proxy', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{gpt-%}', 0);
SELECT provider FROM maester.llm_generate('via proxy', 'gpt-4.1-nano', max_tokens => 5);
-- a disabled provider reached through a pattern: MG005, as on the other paths
UPDATE maester.provider SET enabled = false WHERE name IN ('gpt_proxy', 'openai');
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'gpt-4.1-nano') $$);
UPDATE maester.provider SET enabled = true WHERE name = 'openai';
DELETE FROM maester.provider WHERE name = 'gpt_proxy';

-- a prompt version's config supplies the model, max_tokens and options
-- the call does not give; the call's own arguments win
SELECT version FROM maester.prompt_register('gw_configured', 'Configured: {x}',
    config => '{"model": "mock-cfg", "max_tokens": 33, "temperature": 0.25, "description": "not an option"}');
SELECT g.model, r -> 'body' ->> 'model' AS sent_model, r -> 'body' -> 'max_tokens' AS max_tokens,
       r -> 'body' -> 'temperature' AS temperature
  FROM maester.llm_generate(prompt_name => 'gw_configured', variables => '{"x": 1}') g,
       pg_temp.last_request() r;
SELECT g.model, r -> 'body' -> 'max_tokens' AS max_tokens, r -> 'body' -> 'temperature' AS temperature
  FROM maester.llm_generate(prompt_name => 'gw_configured', variables => '{"x": 2}', model => 'mock-own',
                            max_tokens => 5, options => '{"temperature": 0.9}') g,
       pg_temp.last_request() r;
SELECT (maester.complete('{"prompt_name": "gw_configured", "variables": {"x": 3}}') ->> 'model') AS complete_model,
       pg_temp.last_request() -> 'body' -> 'max_tokens' AS max_tokens;
SELECT b.model, b.error_code FROM maester.generate_batch(ARRAY['{"prompt_name": "gw_configured", "variables": {"x": 4}}'::jsonb]) b;
SELECT max_tokens, requested_model FROM maester.usage WHERE prompt_name = 'gw_configured' ORDER BY ts;
-- eval_run without a model uses the version's
INSERT INTO maester.eval_suite (name, prompt) VALUES ('gw_configured_suite', 'gw_configured');
INSERT INTO maester.eval_case (suite, case_name, variables) VALUES ('gw_configured_suite', 'one', '{"x": 5}');
SELECT model FROM maester.eval_run('gw_configured_suite');
