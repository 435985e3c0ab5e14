-- Answers the providers' SDK types allow (npm openai ChatCompletion,
-- @anthropic-ai/sdk Message; see the mock's _shape), each billed 1000 input
-- and 200 output tokens: none may be recorded as a $0 error, and none may
-- make the call fall back and bill a second provider
\getenv mock_url MAESTER_MOCK_URL
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold)
VALUES ('shmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0),
       ('shanth', 'anthropic', :'mock_url', 'MAESTER_TEST_API_KEY', '{}', 0);
INSERT INTO maester.model (name, provider, provider_model)
SELECT 'sh-' || s, 'shmock', 'fault-shape-' || s
  FROM unnest(ARRAY['toolcalls', 'length', 'filter', 'parts', 'refusal', 'nochoices']) s
UNION ALL
SELECT 'sha-' || s, 'shanth', 'fault-shape-' || s
  FROM unnest(ARRAY['tooluse', 'anthrefusal', 'nochoices']) s
UNION ALL SELECT 'sh-plain', 'shmock', 'shape-plain';
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
SELECT name, '2020-01-01', 1, 10 FROM maester.model WHERE name LIKE 'sh%';
-- a route whose first target answers with tool calls and null content
-- (the issue's reproduction: 0.1.0 recorded bad_response at $0 and billed
-- the second target)
INSERT INTO maester.route (name) VALUES ('sh-route');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('sh-route', 1, 'shmock', 'fault-shape-toolcalls'), ('sh-route', 2, 'shmock', 'shape-plain');
SET maester.tenant = 'shapes';
SELECT model, content, finish_reason, tool_calls, input_tokens, output_tokens, cost_usd, attempts, fallback_used
  FROM maester.llm_generate('What is the weather in Paris?', 'sh-route');
-- null content with finish_reason length or content_filter: an empty answer
SELECT content, finish_reason, cost_usd FROM maester.llm_generate('hi', 'sh-length');
SELECT content, finish_reason, cost_usd FROM maester.llm_generate('hi', 'sh-filter');
-- content as an array of parts: concatenated
SELECT content FROM maester.llm_generate('hi', 'sh-parts');
-- a refusal: its text apart from the (empty) content, and finish_reason
-- refusal (not stop); the evaluation fails it
SELECT content, refusal, finish_reason, evaluation ->> 'status' AS evaluation
  FROM maester.llm_generate('hi', 'sh-refusal');
-- Anthropic: only a tool_use block; a refusal with no content
SELECT content, finish_reason, tool_calls, input_tokens, output_tokens FROM maester.llm_generate('hi', 'sha-tooluse');
-- (the refusal's text is then stop_details.explanation)
SELECT content, refusal, finish_reason FROM maester.llm_generate('hi', 'sha-anthrefusal');
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('shapes', 'day', 1, 'block');
-- an answer that cannot be used but reports usage: an error, charged as
-- billed, and the route does not go on to bill another provider
UPDATE maester.route_target SET model = 'fault-shape-nochoices' WHERE route = 'sh-route' AND position = 1;
\set VERBOSITY default
SELECT maester.llm_generate('hi', 'sh-route');
SELECT maester.llm_generate('hi', 'sha-nochoices');
-- billed above its reservation (max_tokens 10): flagged like any overrun
SELECT maester.llm_generate('hi', 'sh-nochoices', max_tokens => 10);
\set VERBOSITY terse
SELECT model, status, error_class, http_status, input_tokens, output_tokens, cost_usd, overrun_usd IS NOT NULL AS overrun
  FROM maester.usage WHERE tenant = 'shapes' ORDER BY ts, attempt;
-- and the budget counted it when it settled (0.021 before, 0.027 after)
SELECT spent_usd, counters_loaded FROM maester.budget_status WHERE tenant = 'shapes';
DELETE FROM maester.budget WHERE tenant = 'shapes';
RESET maester.tenant;
DELETE FROM maester.route WHERE name = 'sh-route';

-- finish reasons in one vocabulary; the provider's own and its request id
-- (x-request-id at OpenAI, request-id at Anthropic) on the ledger row
SELECT model, finish_reason, provider_finish_reason, provider_request_id ~ '^req_[0-9a-f]{16}$' AS has_request_id
  FROM maester.usage WHERE tenant = 'shapes' ORDER BY ts, attempt;

-- impossible usage (found by test/fuzz): more cached tokens than prompt
-- tokens is cut to the prompt, a negative count is no usage (estimated):
-- neither prices a call below nothing
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('sh-overcached', 'shmock', 'fault-shape-overcached'), ('sh-negative', 'shmock', 'fault-shape-negative');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million,
                           cache_read_input_cost_per_million)
VALUES ('sh-overcached', '2020-01-01', 1, 10, 0.1), ('sh-negative', '2020-01-01', 1, 10, 0.1);
SELECT input_tokens, cached_input_tokens, cost_usd >= 0 AS nonnegative
  FROM maester.llm_generate('hi', 'sh-overcached');
SELECT input_tokens > 0 AS estimated_input, usage_estimated, cost_usd >= 0 AS nonnegative
  FROM maester.llm_generate('hi', 'sh-negative');

-- Retries as the SDKs do them (test/mock/SDK_TYPES.md: both SDKs retry 408,
-- 409, 429 and every 5xx; x-should-retry overrides; retry-after-ms wins)
UPDATE maester.provider SET max_attempts = 3, backoff_base_ms = 1, backoff_max_ms = 5 WHERE name = 'shmock';
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('sh-408', 'shmock', 'fault-flaky-1-408'), ('sh-409', 'shmock', 'fault-flaky-1-409'),
    ('sh-507', 'shmock', 'fault-flaky-1-507'), ('sh-noretry', 'shmock', 'fault-xretry-false-503'),
    ('sh-forceretry', 'shmock', 'fault-xretry-true-400'), ('sh-raorder', 'shmock', 'fault-raorder-1'),
    ('sh-quota', 'shmock', 'fault-quota');
SET maester.tenant = 'retries';
SET client_min_messages = error;   -- (the fault models have no price)
SELECT attempts FROM maester.llm_generate('hi', 'sh-408');
SELECT attempts FROM maester.llm_generate('hi', 'sh-409');
SELECT attempts FROM maester.llm_generate('hi', 'sh-507');
-- retry-after-ms (5 ms) is taken, not the hour of retry-after before it
SELECT attempts FROM maester.llm_generate('hi', 'sh-raorder');
\set VERBOSITY default
SELECT maester.llm_generate('hi', 'sh-noretry');
SELECT maester.llm_generate('hi', 'sh-forceretry');
-- an exhausted quota is not retried (it goes on to the next target)
SELECT maester.llm_generate('hi', 'sh-quota');
\set VERBOSITY terse
SELECT model, attempt, error_class, http_status FROM maester.usage
 WHERE tenant = 'retries' AND status <> 'ok' ORDER BY ts, attempt;
RESET maester.tenant;
RESET client_min_messages;
