-- Embeddings through the gateway (issue #16): the mock answers
-- POST /v1/embeddings as npm openai's CreateEmbeddingResponse describes,
-- with signed feature hashing of words (texts sharing words are close)
\getenv mock_url MAESTER_MOCK_URL
SELECT set_config('test.mock_url', :'mock_url', false) IS NOT NULL AS ok;
CREATE TEMP TABLE mock_out (line text);
CREATE FUNCTION pg_temp.mock(path text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
  TRUNCATE mock_out;
  EXECUTE format('COPY mock_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE E''\x01'', DELIMITER E''\x02'')',
                 'curl -s ' || current_setting('test.mock_url') || path);
  RETURN (SELECT string_agg(line, E'\n')::jsonb FROM mock_out);
END $$;
CREATE FUNCTION pg_temp.requests() RETURNS int LANGUAGE sql AS $$
  SELECT (pg_temp.mock('/_mock/stats') ->> 'requests')::int $$;
CREATE FUNCTION pg_temp.last_body() RETURNS jsonb LANGUAGE sql AS $$
  SELECT pg_temp.mock('/_mock/requests') -> -1 -> 'body' $$;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE FUNCTION pg_temp.dot(a real[], b real[]) RETURNS float8 LANGUAGE sql AS $$
  SELECT sum(x * y) FROM unnest(a, b) AS t(x, y) $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold, backoff_base_ms)
VALUES ('embmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0, 1),
       ('embanth', 'anthropic', :'mock_url', 'MAESTER_TEST_API_KEY', '{}', 0, 1);
INSERT INTO maester.model (name, provider, provider_model, embedding_dimensions) VALUES
    ('emb', 'embmock', 'text-embedding-3-small', 1536),
    ('emb-large', 'embmock', 'text-embedding-3-large', 3072),
    ('emb-ctx', 'embmock', 'emb-ctx-20', NULL),
    ('emb-wrongdim', 'embmock', 'fault-embeddim-8', 1536),
    ('emb-flaky', 'embmock', 'fault-flaky-1-429', NULL),
    ('emb-nousage', 'embmock', 'fault-nousage', NULL),
    ('emb-claude', 'embanth', 'claude-haiku-4-5', NULL);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
SELECT name, '2020-01-01', 0.02, 0 FROM maester.model WHERE name LIKE 'emb%';
SET maester.tenant = 'embeddings';

-- one text: a vector of the model's length, L2-normalized
SELECT array_length(v, 1) AS dims, round(pg_temp.dot(v, v)::numeric, 4) AS norm2
  FROM maester.embed('PostgreSQL is a relational database.', 'emb') v;
SELECT b -> 'model' AS model, b -> 'input' AS input, b -> 'encoding_format' AS encoding_format
  FROM pg_temp.last_body() b;
-- many: one row per input, in input order; texts sharing words are closer
CREATE TEMP TABLE e AS
SELECT * FROM maester.embed(ARRAY['postgres database tuning', 'tuning a postgres database',
                                  'banana smoothie recipe'], 'emb');
SELECT ordinal, array_length(embedding, 1) AS dims, input_tokens > 0 AS tokens, error_class FROM e ORDER BY ordinal;
SELECT maester.cosine_similarity(a.embedding, b.embedding) > maester.cosine_similarity(a.embedding, c.embedding) AS related_is_closer
  FROM e a, e b, e c WHERE a.ordinal = 1 AND b.ordinal = 2 AND c.ordinal = 3;
-- options.dimensions is sent and checked
SELECT array_length(maester.embed('hello', 'emb', '{"dimensions": 256}'), 1) AS dims;
SELECT pg_temp.last_body() -> 'dimensions' AS dimensions_sent;
-- the ledger: one row per request, purpose embedding, billed input tokens
SELECT purpose, model_name, status, input_tokens > 0 AS tokens, output_tokens, cost_usd > 0 AS cost,
       usage_estimated
  FROM maester.usage WHERE tenant = 'embeddings' ORDER BY ts, attempt LIMIT 3;

-- the trace of a request: embed, with the GenAI attributes of embeddings
SELECT trace_id AS etrace FROM maester.usage WHERE tenant = 'embeddings' ORDER BY ts DESC LIMIT 1 \gset
SELECT set_config('e.t', :'etrace', false) IS NOT NULL AS ok;
DO $$
BEGIN
  FOR i IN 1..500 LOOP
    EXIT WHEN EXISTS (SELECT FROM maester.span WHERE trace_id = current_setting('e.t') AND name = 'embed');
    PERFORM pg_sleep(0.01);
  END LOOP;
END $$ ;
SELECT name, attributes ->> 'gen_ai.operation.name' AS operation, attributes ->> 'gen_ai.request.model' AS model,
       (attributes ->> 'gen_ai.usage.input_tokens')::int > 0 AS tokens,
       attributes ->> 'gen_ai.embeddings.dimension.count' AS dims, attributes ->> 'maester.embedding.inputs' AS inputs
  FROM maester.span WHERE trace_id = :'etrace' AND name IN ('embed', 'model_embed') ORDER BY name;

-- batching: requests of at most 2,048 inputs, several in flight, in order
SELECT pg_temp.requests() AS before \gset
SELECT count(*) AS rows, count(*) FILTER (WHERE embedding IS NOT NULL) AS embedded,
       bool_and(ordinal = n) AS in_order
  FROM (SELECT e.*, row_number() OVER () AS n
          FROM maester.embed(ARRAY(SELECT 'document number ' || i FROM generate_series(1, 5000) i),
                             'emb', '{"dimensions": 8, "concurrency": 3}') e) x;
SELECT pg_temp.requests() - :before AS requests;
-- and of at most the provider's embedding_batch_tokens (worst case: a token a byte)
UPDATE maester.provider SET embedding_batch_tokens = 100 WHERE name = 'embmock';
SELECT pg_temp.requests() AS before \gset
SELECT count(*) FILTER (WHERE embedding IS NOT NULL) AS embedded
  FROM maester.embed(ARRAY(SELECT repeat('x', 40) || i FROM generate_series(1, 10) i), 'emb', '{"dimensions": 8}');
SELECT pg_temp.requests() - :before AS requests;
UPDATE maester.provider SET embedding_batch_tokens = NULL WHERE name = 'embmock';

-- one input over the model's context fails alone (the request is split
-- until it is alone; nothing is truncated); NULL and empty inputs too
SELECT ordinal, embedding IS NOT NULL AS embedded, error_code, error_class,
       CASE WHEN error_message ~ 'maximum context length is 20 tokens' THEN 'the provider''s limit' ELSE error_message END AS error
  FROM maester.embed(ARRAY['short one', repeat('long ', 40), NULL, '', 'short two', 'short three'], 'emb-ctx')
 ORDER BY ordinal;
-- (three refused requests at $0: the four sent, then the half holding it, then
-- it alone; two answered halves billed)
SELECT status, error_class, http_status, count(*), bool_and(cost_usd > 0) AS billed FROM maester.usage
 WHERE tenant = 'embeddings' AND model_name = 'emb-ctx' GROUP BY 1, 2, 3 ORDER BY 1;

-- with the model's input limit known, an input that may be over it goes
-- alone: one refused request, and the others are not split
UPDATE maester.model SET max_input_tokens = 20 WHERE name = 'emb-ctx';
DELETE FROM maester.usage WHERE tenant = 'embeddings' AND model_name = 'emb-ctx';
SELECT count(*) FILTER (WHERE embedding IS NOT NULL) AS embedded, count(error_code) AS failed
  FROM maester.embed(ARRAY['short one', repeat('long ', 40), 'short two', 'short three'], 'emb-ctx');
SELECT status, http_status, count(*) FROM maester.usage
 WHERE tenant = 'embeddings' AND model_name = 'emb-ctx' GROUP BY 1, 2 ORDER BY 1;
SELECT name, embedding_dimensions, max_input_tokens, shipped FROM maester.model WHERE name LIKE 'text-embedding-%' ORDER BY 1;

-- a provider that refuses every request is not sent one per input: a
-- refusal before anything was taken sends the shortest input alone first,
-- and when that is refused too, the rest fail
INSERT INTO maester.model (name, provider, provider_model) VALUES ('emb-allbad', 'embmock', 'fault-status-400');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million) VALUES ('emb-allbad', '2020-01-01', 0.02, 0);
SELECT pg_temp.requests() AS before \gset
SELECT count(*) AS inputs, count(*) FILTER (WHERE error_class = 'bad_request') AS failed
  FROM maester.embed(ARRAY(SELECT 'text ' || i FROM generate_series(1, 64) i), 'emb-allbad');
SELECT pg_temp.requests() - :before AS requests;
-- while one that refuses some inputs still has every other one embedded
-- (every 8th input here is over the model's context, and no limit is known)
UPDATE maester.model SET max_input_tokens = NULL WHERE name = 'emb-ctx';
SELECT count(*) FILTER (WHERE embedding IS NOT NULL) AS embedded, count(error_code) AS failed,
       bool_and((error_code IS NOT NULL) = (ordinal % 8 = 0)) AS the_long_ones_failed
  FROM maester.embed(ARRAY(SELECT CASE WHEN i % 8 = 0 THEN repeat('long ', 40) ELSE 'short ' || i END
                             FROM generate_series(1, 64) i), 'emb-ctx');

-- vectors of another length than the model's: an error naming both
SELECT error_class, error_message FROM maester.embed(ARRAY['a'], 'emb-wrongdim');
-- answers the types do not allow are refused, a value too small for a float is 0,
-- an impossible token count is no usage
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('emb-nested', 'embmock', 'fault-embedbad-nested'), ('emb-object', 'embmock', 'fault-embedbad-object'),
    ('emb-tiny', 'embmock', 'fault-embedbad-tiny'), ('emb-hugetokens', 'embmock', 'fault-embedbad-hugetokens');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('emb-nested', '2020-01-01', 0.02, 0), ('emb-object', '2020-01-01', 0.02, 0),
       ('emb-tiny', '2020-01-01', 0.02, 0), ('emb-hugetokens', '2020-01-01', 0.02, 0);
SELECT m, error_class, left(error_message, 90) AS error
  FROM unnest(ARRAY['emb-nested', 'emb-object']) m, maester.embed(ARRAY['a b', 'c d'], m, '{"dimensions": 4}') e
 WHERE e.ordinal = 1;
SELECT (maester.embed('a b', 'emb-tiny', '{"dimensions": 4, "normalize": false}'))[1] AS tiny;
SELECT array_length(maester.embed('a b', 'emb-hugetokens', '{"dimensions": 4}'), 1) AS dims;
SELECT usage_estimated FROM maester.usage WHERE tenant = 'embeddings' AND model_name = 'emb-hugetokens';

-- a 429 with Retry-After is retried; no usage is estimated and marked so
SELECT array_length(maester.embed('retried', 'emb-flaky', '{"dimensions": 4}'), 1) AS dims;
SELECT count(*) AS attempts FROM maester.usage WHERE tenant = 'embeddings' AND model_name = 'emb-flaky';
SELECT array_length(maester.embed('no usage', 'emb-nousage', '{"dimensions": 4}'), 1) AS dims;
SELECT usage_estimated, input_tokens FROM maester.usage WHERE tenant = 'embeddings' AND model_name = 'emb-nousage';

-- the embedding cache (options.cache): a repeated input is not sent, and
-- is a ledger row of status cached at $0 (estimated_cost_usd: what it
-- would have cost); per tenant, model and dimensions
SELECT pg_temp.requests() AS before \gset
CREATE TEMP TABLE c1 AS SELECT * FROM maester.embed(ARRAY['alpha beta', 'gamma'], 'emb', '{"cache": true, "dimensions": 8}');
SELECT pg_temp.requests() - :before AS requests, (SELECT count(*) FROM maester.embedding_cache WHERE tenant = 'embeddings') AS kept;
SELECT pg_temp.requests() AS before \gset
CREATE TEMP TABLE c2 AS SELECT * FROM maester.embed(ARRAY['alpha beta', 'delta', 'alpha beta'], 'emb', '{"cache": true, "dimensions": 8}');
SELECT pg_temp.requests() - :before AS requests, pg_temp.last_body() -> 'input' AS sent;
SELECT c2.ordinal, c2.model, c2.embedding = c1.embedding AS same_vector
  FROM c2 LEFT JOIN c1 ON c1.ordinal = 1 WHERE c2.ordinal IN (1, 3) ORDER BY 1;
SELECT status, input_tokens, cost_usd, estimated_cost_usd > 0 AS saved, purpose
  FROM maester.usage WHERE tenant = 'embeddings' AND status = 'cached';
-- another tenant, other dimensions, no option: not from this cache
SET maester.tenant = 'embeddings-other';
SELECT pg_temp.requests() AS before \gset
SELECT count(*) FROM maester.embed(ARRAY['alpha beta'], 'emb', '{"cache": true, "dimensions": 8}');
SET maester.tenant = 'embeddings';
SELECT count(*) FROM maester.embed(ARRAY['alpha beta'], 'emb', '{"cache": true, "dimensions": 16}');
SELECT count(*) FROM maester.embed(ARRAY['alpha beta'], 'emb', '{"dimensions": 8}');
SELECT pg_temp.requests() - :before AS requests;
-- what else makes the vector is part of the key: normalize, input_type,
-- and the model id the row sends
SELECT pg_temp.requests() AS before \gset
SELECT count(*) FROM maester.embed(ARRAY['alpha beta'], 'emb', '{"cache": true, "dimensions": 8, "normalize": false}');
SELECT count(*) FROM maester.embed(ARRAY['alpha beta'], 'emb', '{"cache": true, "dimensions": 8, "input_type": "query"}');
UPDATE maester.model SET provider_model = 'text-embedding-3-small-v2' WHERE name = 'emb';
SELECT count(*) FROM maester.embed(ARRAY['alpha beta'], 'emb', '{"cache": true, "dimensions": 8}');
UPDATE maester.model SET provider_model = 'text-embedding-3-small' WHERE name = 'emb';
SELECT pg_temp.requests() - :before AS requests_all_misses;
SELECT count(DISTINCT variant) AS variants FROM maester.embedding_cache WHERE tenant = 'embeddings';
DELETE FROM maester.embedding_cache;

-- a fallback to a model of other dimensions: its vector, named
INSERT INTO maester.model (name, provider, provider_model, embedding_dimensions)
VALUES ('emb-broken', 'embmock', 'fault-status-500', 1536);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('emb-broken', '2020-01-01', 0.02, 0);
INSERT INTO maester.route (name) VALUES ('emb-route');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('emb-route', 1, 'embmock', 'fault-status-500'), ('emb-route', 2, 'embmock', 'text-embedding-3-large');
SELECT model, array_length(embedding, 1) AS dims, error_class FROM maester.embed(ARRAY['x y'], 'emb-route');
DELETE FROM maester.route WHERE name = 'emb-route';

-- Anthropic has no embeddings; the default route needs OpenAI's key
SELECT pg_temp.err($$ SELECT maester.embed('x', 'emb-claude') $$);
SELECT pg_temp.err($$ SELECT maester.embed('x') $$);
SELECT route, provider, model FROM maester.route_target WHERE route = 'default_embedding';

-- a budget that blocks stops the batch before anything is sent
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('embeddings', 'day', 0.0000001, 'block');
SELECT pg_temp.requests() AS before \gset
SELECT ordinal, error_code, error_class FROM maester.embed(ARRAY['a', 'b'], 'emb') ORDER BY ordinal;
SELECT pg_temp.requests() - :before AS requests_sent;
DELETE FROM maester.budget WHERE tenant = 'embeddings';

-- bad arguments
SELECT pg_temp.err($$ SELECT maester.embed('x', 'emb', '{"dimensions": 0}') $$);
SELECT pg_temp.err($$ SELECT maester.embed('x', 'emb', '{"input_type": "passage"}') $$);
SELECT pg_temp.err($$ SELECT maester.embed('x', 'emb', '{"temperature": 1}') $$);
SELECT pg_temp.err($$ SELECT maester.embed('x', 'emb', '{"normalize": "yes"}') $$);
SELECT pg_temp.err($$ SELECT maester.embed('x', 'emb', '[]') $$);
SELECT pg_temp.err($$ SELECT maester.embed(NULL::text, 'emb') $$);
SELECT pg_temp.err($$ SELECT maester.embed('', 'emb') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.embed(ARRAY[ARRAY['a'], ARRAY['b']], 'emb') $$);
RESET maester.tenant;
DELETE FROM maester.model WHERE name LIKE 'emb%';
