-- Prices and cost_of: the articles' vectors, rounding, cached tokens,
-- effective dates, dated snapshots, errors.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-- the articles: gpt-4.1-mini at 0.0004 / 0.0016 per 1K tokens
SELECT * FROM maester.cost_of('gpt-4.1-mini', 40, 48);
SELECT * FROM maester.cost_of('gpt-4.1-mini', 66, 46);
-- the total is the sum of the shown (rounded) parts, not the rounded sum
SELECT input_cost_usd, output_cost_usd, total_cost_usd,
       round((c.input_cost + c.output_cost), 6) AS rounded_exact_total
  FROM maester.cost_of('gpt-4.1-mini', 66, 46),
       maester.cost_exact('gpt-4.1-mini', 66, 46) c;
-- exact, unrounded
SELECT * FROM maester.cost_exact('gpt-4.1-mini', 40, 48);
-- half-up rounding at the 7th decimal
SELECT input_cost_usd FROM maester.cost_of('gpt-4.1-nano', 5, 0);
SELECT input_cost_usd FROM maester.cost_of('gpt-4.1-nano', 15, 0);
-- the shipped models
SELECT model, input_cost_per_million, output_cost_per_million,
       cache_read_input_cost_per_million, cache_creation_input_cost_per_million
  FROM maester.price WHERE source IS NOT NULL ORDER BY model;
SELECT c.* FROM unnest(ARRAY['gpt-4.1', 'gpt-4.1-mini', 'gpt-4.1-nano', 'gpt-4o', 'gpt-4o-mini',
                             'claude-sonnet-4-5', 'claude-haiku-4-5', 'claude-opus-4-1']) m,
               maester.cost_of(m, 1000000, 1000000) c ORDER BY 1;

-- cached input tokens are part of input_tokens, priced at the cached rate
-- (OpenAI: 1,000 prompt tokens of which 800 cached)
SELECT input_cost_usd FROM maester.cost_of('gpt-4.1', 1000, 0, 800);
SELECT input_cost_usd FROM maester.cost_of('gpt-4.1', 1000, 0);
-- Anthropic: reads and writes at their own rates
SELECT input_cost_usd FROM maester.cost_of('claude-sonnet-4-5', 1000, 0, 600, now(), 300);

-- dated snapshots are priced as their model; other suffixes are not
SELECT model, total_cost_usd FROM maester.cost_of('gpt-4.1-mini-2025-04-14', 40, 48);
SELECT model, total_cost_usd FROM maester.cost_of('claude-haiku-4-5-20251001', 1000, 1000);
SELECT pg_temp.err($$ SELECT maester.cost_of('gpt-4.1-mini-turbo', 1, 1) $$);

-- a price without valid_from applies from now
INSERT INTO maester.price (model, input_cost_per_million, output_cost_per_million)
VALUES ('cost-default-from', 1, 2);
SELECT valid_from <= now() AND valid_from > now() - interval '1 minute' AS from_now FROM maester.price WHERE model = 'cost-default-from';

-- effective dates: a new price applies from its valid_from on, never before
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('test-model', '2026-01-01', 1, 2), ('test-model', '2026-06-01', 10, 20);
SELECT total_cost_usd FROM maester.cost_of('test-model', 1000, 1000, 0, '2026-03-01');
SELECT total_cost_usd FROM maester.cost_of('test-model', 1000, 1000, 0, '2026-06-01');
SELECT pg_temp.err($$ SELECT maester.cost_of('test-model', 1000, 1000, 0, '2025-12-31') $$);
-- prices are immutable
SELECT pg_temp.err($$ UPDATE maester.price SET input_cost_per_million = 0 WHERE model = 'test-model' $$);
SELECT pg_temp.err($$ DELETE FROM maester.price WHERE model = 'test-model' $$);
SELECT pg_temp.err($$ INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million) VALUES ('x', now(), -1, 1) $$);
SELECT pg_temp.err($$ INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million, currency) VALUES ('x', now(), 1, 1, 'EUR') $$);

-- the gateway computes costs in C from its cached prices: the same as SQL
\getenv mock_url MAESTER_MOCK_URL
INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, circuit_failure_threshold)
VALUES ('cmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 1, 0);
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('c-mini', 'cmock', 'gpt-4.1-mini-2025-04-14'), ('c-cached', 'cmock', 'fault-cached-30-10'),
    ('c-test', 'cmock', 'test-model');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million,
                           cache_read_input_cost_per_million, cache_creation_input_cost_per_million)
VALUES ('fault-cached-30-10', '2020-01-01', 3, 15, 0.3, 3.75);
SELECT g.model, g.cost_usd, g.cost_usd = (SELECT c.input_cost + c.output_cost
                                            FROM maester.cost_exact(g.model, g.input_tokens, g.output_tokens,
                                                                    g.cached_input_tokens, g.cache_write_tokens) c) AS same_as_sql
  FROM unnest(ARRAY['c-mini', 'c-cached', 'c-test']) m, maester.llm_generate('Compute my cost, please', m) g
 ORDER BY 1;

-- errors
SELECT pg_temp.err($$ SELECT maester.cost_of('no-such-model', 1, 1) $$);
SELECT pg_temp.err($$ SELECT maester.cost_of('gpt-4.1-mini', -1, 1) $$);
SELECT pg_temp.err($$ SELECT maester.cost_of('gpt-4.1-mini', 1, -1) $$);
SELECT pg_temp.err($$ SELECT maester.cost_of('gpt-4.1-mini', 10, 1, 11) $$);
SELECT pg_temp.err($$ SELECT maester.cost_of(NULL, 1, 1) $$);
\set VERBOSITY default
SET timezone = 'UTC';
SELECT maester.cost_of('no-such-model', 1, 1, 0, '2026-01-01');
