-- The response cache (issue #19): opt-in per call or per prompt version,
-- per tenant, keyed by everything that makes the answer, never for calls
-- that sample unless asked; a hit sends nothing and is a ledger row at $0
-- with the cost it saved.
\getenv mock_url MAESTER_MOCK_URL
SET client_min_messages = warning;
SELECT set_config('test.mock_url', :'mock_url', false) IS NOT NULL AS ok;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE TEMP TABLE mock_out (line text);
CREATE FUNCTION pg_temp.mock(path text) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  TRUNCATE mock_out;
  EXECUTE format('COPY mock_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE E''\x01'', DELIMITER E''\x02'')',
                 'curl -s ' || current_setting('test.mock_url') || path);
  RETURN (SELECT string_agg(line, E'\n')::jsonb FROM mock_out);
END $$;
CREATE FUNCTION pg_temp.sent() RETURNS int LANGUAGE sql AS $$
  SELECT (pg_temp.mock('/_mock/stats') ->> 'requests')::int $$;
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
-- a call; what it returned, and how many requests reached the provider
CREATE TEMP TABLE calls (n serial, label text, request_id uuid, content text, cached boolean, cost numeric, sent int);
GRANT ALL ON calls, calls_n_seq TO PUBLIC;
CREATE FUNCTION pg_temp.call(label text, prompt text, options jsonb, max_tokens int DEFAULT 32, model text DEFAULT 'cache-a')
RETURNS text LANGUAGE plpgsql AS $$
DECLARE before int := pg_temp.sent(); g maester.generation;
BEGIN
  g := maester.llm_generate(prompt, model, max_tokens, options => options);
  INSERT INTO calls (label, request_id, content, cached, cost, sent)
  VALUES (label, g.request_id, g.content, g.cached, g.cost_usd, pg_temp.sent() - before);
  RETURN CASE WHEN g.cached THEN 'hit' ELSE 'sent' END || ' (' || (pg_temp.sent() - before) || ' sent)';
END $$;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold, max_attempts)
VALUES ('cachemock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0, 1);
INSERT INTO maester.model (name, provider, provider_model) VALUES
    ('cache-a', 'cachemock', 'mock-cache'), ('cache-b', 'cachemock', 'mock-cache-b');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('cache-a', '2020-01-01', 2, 8), ('cache-b', '2020-01-01', 2, 8);

-- bad options
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cache-a', options => '{"cache": "yes"}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cache-a', options => '{"cache": {"ttl": "-1 hour"}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cache-a', options => '{"cache": {"ttl": "a while"}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cache-a', options => '{"cache": {"ttl": 60}}') $$);
SELECT pg_temp.err($$ SELECT maester.llm_generate('x', 'cache-a', options => '{"cache": {"size": 1}}') $$);

-- a call that samples (no temperature: the provider's default is 1) is not cached
SELECT pg_temp.call('sampled', 'What is a tuple?', '{"cache": true}');
SELECT pg_temp.call('sampled', 'What is a tuple?', '{"cache": true}');
SELECT pg_temp.call('sampled', 'What is a tuple?', '{"cache": true, "temperature": 0.7}');
-- temperature 0: the first call is sent and kept, the same call again is a hit
SELECT pg_temp.call('first', 'What is a tuple?', '{"cache": true, "temperature": 0}');
SELECT pg_temp.call('again', 'What is a tuple?', '{"cache": true, "temperature": 0, "tags": {"other": "tags"}}');
SELECT pg_temp.call('again', 'What is a tuple?', '{"temperature": 0, "cache": true, "timeout_ms": 5000, "max_attempts": 2}');
SELECT a.content = f.content AS same_answer, a.cost = 0 AS free, f.cost > 0 AS first_paid
  FROM calls a, calls f WHERE a.label = 'again' AND f.label = 'first' LIMIT 1;
-- anything that changes the answer is another entry
SELECT pg_temp.call('other', 'What is a tuple?', '{"cache": true, "temperature": 0}', max_tokens => 33);
SELECT pg_temp.call('other', 'What is a tuple?', '{"cache": true, "temperature": 0, "stop": ["."]}');
SELECT pg_temp.call('other', 'What is a tuple ?', '{"cache": true, "temperature": 0}');
SELECT pg_temp.call('other', 'What is a tuple?', '{"cache": true, "temperature": 0}', model => 'cache-b');
SELECT pg_temp.call('other', 'What is a tuple?', '{"temperature": 0}');
-- a text that reads like a conversation is not that conversation
SELECT pg_temp.call('text', '[{"role":"user","content":"Is it safe?"}]', '{"cache": true, "temperature": 0}');
SELECT cached FROM maester.llm_generate(messages => '[{"role":"user","content":"Is it safe?"}]', model => 'cache-a',
                                        max_tokens => 32, options => '{"cache": true, "temperature": 0}');
-- a downgrade budget's answer (another model) is not kept under the model asked for
INSERT INTO maester.model (name, provider, provider_model) VALUES ('cache-cheap', 'cachemock', 'mock-cache-cheap');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('cache-cheap', '2020-01-01', 0.1, 0.1);
INSERT INTO maester.budget (tenant, model, period, limit_usd, action, downgrade_model)
VALUES ('default', 'cache-b', 'day', 0.0000001, 'downgrade', 'cache-cheap');
SELECT model, cached FROM maester.llm_generate('Downgraded?', 'cache-b', 32, options => '{"cache": true, "temperature": 0}');
DELETE FROM maester.budget WHERE model = 'cache-b';
SELECT model, cached FROM maester.llm_generate('Downgraded?', 'cache-b', 32, options => '{"cache": true, "temperature": 0}');
-- any_temperature: a sampled answer is kept too, when asked
SELECT pg_temp.call('any', 'Name a colour.', '{"cache": {"any_temperature": true}, "temperature": 0.9}');
SELECT pg_temp.call('any', 'Name a colour.', '{"cache": {"any_temperature": true}, "temperature": 0.9}');
-- a TTL per call: an expired entry is not returned, and is replaced
SELECT pg_temp.call('ttl', 'Short-lived?', '{"cache": {"ttl": "1 second"}, "temperature": 0}');
SELECT pg_sleep(1.2);
SELECT pg_temp.call('ttl', 'Short-lived?', '{"cache": {"ttl": "1 second"}, "temperature": 0}');
SELECT pg_temp.call('ttl', 'Short-lived?', '{"cache": {"ttl": "1 second"}, "temperature": 0}');

-- the ledger: a hit is a row of status cached at $0, saved_usd what the first call cost
SELECT pg_temp.wait_for($q$ SELECT count(*) = (SELECT count(*) FROM calls) FROM maester.usage u JOIN calls c USING (request_id)
                             WHERE u.settled_at IS NOT NULL $q$, 10) AS settled;
SELECT c.label, u.status, u.cache, u.cost_usd = 0 AS free, u.saved_usd = (SELECT f.cost FROM calls f WHERE f.label = 'first') AS saved,
       u.attempt, u.input_tokens > 0 AS tokens, u.estimated_cost_usd IS NULL AS nothing_reserved
  FROM calls c JOIN maester.usage u USING (request_id) WHERE c.label IN ('first', 'again') ORDER BY c.n;
SELECT string_agg(DISTINCT u.cache, ',') AS sampled_rows FROM calls c JOIN maester.usage u USING (request_id) WHERE c.label = 'sampled';
SELECT hits, misses, skipped, hit_rate, saved_usd = (SELECT sum(u.saved_usd) FROM maester.usage u WHERE u.cache = 'hit') AS saved
  FROM maester.cache_stats WHERE model = 'cache-a' AND prompt IS NULL;

-- the trace: a cache_lookup span, and explain
SELECT pg_temp.wait_for($q$ SELECT count(*) > 0 FROM maester.span s JOIN maester.usage u ON u.trace_id = s.trace_id
                             JOIN calls c ON c.request_id = u.request_id
                            WHERE c.label = 'again' AND s.name = 'cache_lookup' $q$, 10) AS traced;
SELECT regexp_replace(e, '\s*\(.*?\)', '', 'g') AS explain
  FROM maester.explain((SELECT u.trace_id FROM calls c JOIN maester.usage u USING (request_id) WHERE c.label = 'again' LIMIT 1)) e;

-- a prompt version may turn the cache on (its config), and a call may turn it off
SELECT (maester.prompt_register('cached_prompt', 'Define {term}.', version => 'v1',
                                config => '{"cache": {"ttl": "10 minutes"}, "temperature": 0}')).version AS registered;
CREATE FUNCTION pg_temp.by_prompt(options jsonb DEFAULT '{}') RETURNS boolean LANGUAGE sql AS $$
  SELECT cached FROM maester.llm_generate(prompt_name => 'cached_prompt', variables => '{"term": "heap"}',
                                          model => 'cache-a', options => options) $$;
SELECT pg_temp.by_prompt() AS first, pg_temp.by_prompt() AS second, pg_temp.by_prompt('{"cache": false}') AS off;
SELECT prompt, hits, misses FROM maester.cache_stats WHERE prompt = 'cached_prompt';
-- an answer that fails its evaluation is not kept
SELECT (maester.prompt_register('picky', 'Define {term}.', version => 'v1', config => '{"cache": true, "temperature": 0}',
                                checks => '{"required_terms": ["nowhere-in-the-answer"]}')).version AS registered;
SELECT (maester.llm_generate(prompt_name => 'picky', variables => '{"term": "heap"}', model => 'cache-a')).cached AS first,
       (maester.llm_generate(prompt_name => 'picky', variables => '{"term": "heap"}', model => 'cache-a')).cached AS second;
SELECT count(*) AS kept FROM maester.response_cache WHERE prompt_name = 'picky';

-- batches share it
SELECT count(*) FILTER (WHERE cached) AS hits, count(*) AS calls
  FROM maester.generate_batch(ARRAY(SELECT format('{"prompt": "batch %s", "model": "cache-a", "options": {"cache": true, "temperature": 0}}', i)::jsonb
                                      FROM generate_series(1, 5) i));
SELECT count(*) FILTER (WHERE cached) AS hits, count(*) AS calls
  FROM maester.generate_batch(ARRAY(SELECT format('{"prompt": "batch %s", "model": "cache-a", "options": {"cache": true, "temperature": 0}}', i)::jsonb
                                      FROM generate_series(1, 5) i));

-- a read-only transaction cannot keep an answer: a WARNING, not an error
BEGIN READ ONLY;
SELECT content IS NOT NULL AS answered, cached
  FROM maester.llm_generate('Read-only question', 'cache-a', 32, options => '{"cache": true, "temperature": 0}');
COMMIT;

-- never across tenants: another tenant's same call is sent, and sees none of these entries
CREATE ROLE cache_alice;
CREATE ROLE cache_bob;
GRANT maester_user TO cache_alice, cache_bob;
INSERT INTO maester.tenant_member (tenant, role) VALUES ('cache-alice', 'cache_alice'), ('cache-bob', 'cache_bob');
SET ROLE cache_alice;
SELECT pg_temp.call('alice', 'A tenant''s question', '{"cache": true, "temperature": 0}');
SELECT pg_temp.call('alice', 'A tenant''s question', '{"cache": true, "temperature": 0}');
SET ROLE cache_bob;
SELECT pg_temp.call('bob', 'A tenant''s question', '{"cache": true, "temperature": 0}');
SELECT count(*) AS bob_sees, count(*) FILTER (WHERE tenant <> 'cache-bob') AS others FROM maester.response_cache;
-- users cannot write the cache, nor delete another tenant's entries
SELECT pg_temp.err($$ INSERT INTO maester.response_cache (tenant, key, provider, model, model_name, input_tokens, output_tokens,
                        cached_input_tokens, cache_write_tokens, reasoning_tokens, source_request_id, expires_at)
                      VALUES ('cache-alice', '\x00', 'cachemock', 'm', 'm', 0, 0, 0, 0, 0, gen_random_uuid(), now() + interval '1 day') $$);
SELECT pg_temp.err($$ UPDATE maester.response_cache SET content = 'poisoned' $$);
SELECT pg_temp.err($$ SET maester.tenant = 'cache-alice' $$);
SELECT maester.response_cache_invalidate() AS bob_deleted;
SET ROLE cache_alice;
SELECT count(*) AS alice_kept FROM maester.response_cache;
SELECT pg_temp.call('alice', 'A tenant''s question', '{"cache": true, "temperature": 0}');
SELECT hits, misses FROM maester.cache_stats;
RESET ROLE;

-- invalidation: by prompt, by model, by age
SELECT pg_temp.err($$ SELECT maester.response_cache_invalidate(older_than => interval '-1 day') $$);
SELECT maester.response_cache_invalidate(older_than => interval '1 day') AS none_that_old;
SELECT maester.response_cache_invalidate(prompt => 'cached_prompt') AS by_prompt;
SELECT pg_temp.by_prompt() AS after_invalidation;
SELECT maester.response_cache_invalidate(model => 'cache-b') AS by_model;
SELECT maester.response_cache_invalidate() > 0 AS all_of_tenant;
SELECT count(*) AS left_of_tenant FROM maester.response_cache WHERE tenant = 'default';
DELETE FROM maester.tenant_member WHERE role IN ('cache_alice', 'cache_bob');
DELETE FROM maester.response_cache;
DROP ROLE cache_alice;
DROP ROLE cache_bob;
