-- maester demo: the first article's prompt registry and requests, in SQL.
\pset footer off
\set ECHO queries
CREATE EXTENSION maester;

-- Register system_summary v1 and v2 (the articles' templates).
SELECT name, version, variables, template_hash
  FROM maester.prompt_register('system_summary',
         E'You are a production AI assistant.\nSummarize the following system event clearly:\n\n{event_text}',
         version => 'v1');
SELECT name, version, variables, template_hash
  FROM maester.prompt_register('system_summary',
         E'You are a production AI assistant focused on reliability.\nSummarize the following system event.\nBe concise, mention operational impact, and keep the tone factual.\n\n{event_text}',
         version => 'v2');

-- Deploy scripts re-run: registering the same content again creates nothing.
SELECT version, seq FROM maester.prompt_register('system_summary',
         E'You are a production AI assistant focused on reliability.\nSummarize the following system event.\nBe concise, mention operational impact, and keep the tone factual.\n\n{event_text}');

-- Render v1, as in the article's first request.
SELECT name, version, hash, content
  FROM maester.prompt_render('system_summary',
         '{"event_text": "Admin revoked API key for user account 742."}', 'v1');

-- Render without a version: latest, which is v2.
SELECT name, version, hash, content
  FROM maester.prompt_render('system_summary',
         '{"event_text": "System latency increased above 300ms for the inference service."}');

-- Labels: production stays on v1 until someone moves it.
SELECT name, label, version FROM maester.prompt_set_label('system_summary', 'production', 'v1');
SELECT version, hash
  FROM maester.prompt_render('system_summary',
         '{"event_text": "Admin revoked API key for user account 742."}', 'production');

SELECT name, version, labels, variables, left(template_hash, 16) AS template_hash
  FROM maester.prompt_versions ORDER BY seq;

-- The gateway.  Without OPENAI_API_KEY, the local mock provider stands in
-- for OpenAI: gpt-4.1-mini and the default route go to it.
\set ECHO none
\getenv mock_url MAESTER_MOCK_URL
SELECT coalesce(:'mock_url', '') <> '' AS use_mock \gset
\if :use_mock
\set ECHO queries
INSERT INTO maester.provider (name, kind, base_url, models)
VALUES ('mock', 'openai_compatible', :'mock_url' || '/v1', '{mock-%}');
INSERT INTO maester.model (name, provider, provider_model)
VALUES ('gpt-4.1-mini', 'mock', 'gpt-4.1-mini');
UPDATE maester.route_target SET provider = 'mock'
 WHERE route = 'default' AND position = 1;
UPDATE maester.model SET provider = 'mock' WHERE name = 'text-embedding-3-small';
UPDATE maester.route_target SET provider = 'mock' WHERE route = 'default_embedding';
-- the mock's citing answers (maester.ask below), priced like gpt-4.1-mini
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('mock-cite', '2020-01-01', 0.40, 1.60);
\set gw_provider mock
\else
\set gw_provider openai
\endif
\set ECHO queries
SELECT name, kind, base_url, api_key_env, models, enabled FROM maester.provider ORDER BY priority, name;

-- The first article's request v1, through complete():
SELECT jsonb_pretty(maester.complete('{
    "prompt_name": "system_summary",
    "prompt_version": "v1",
    "variables": {"event_text": "Admin revoked API key for user account 742."},
    "model": "gpt-4.1-mini",
    "max_tokens": 120}')) AS response;

-- ... and request v2 (latest, no model: the route "default"):
SELECT jsonb_pretty(maester.complete('{
    "prompt_name": "system_summary",
    "variables": {"event_text": "System latency increased above 300ms for the inference service."}}')) AS response;

-- The same call from SQL, as a row:
SELECT provider, model, input_tokens, output_tokens, attempts, fallback_used,
       prompt_version, left(prompt_hash, 16) AS prompt_hash, round(latency_ms::numeric, 2) AS latency_ms
  FROM maester.llm_generate(prompt_name => 'system_summary',
                            variables => '{"event_text": "Disk usage above 90% on db-3."}',
                            model => 'gpt-4.1-mini', max_tokens => 60);

SELECT provider, state, consecutive_failures, successes, failures FROM maester.circuit;

-- Every call is a trace: its span tree, the way EXPLAIN ANALYZE reads.
-- (The ledger row is there when the call returns; the span writer writes
-- the spans within about 100 ms.)
SELECT set_config('demo.trace', trace_id, false) AS last_trace
  FROM maester.usage ORDER BY ts DESC LIMIT 1 \gset
DO $$
BEGIN
  FOR i IN 1..100 LOOP
    EXIT WHEN EXISTS (SELECT FROM maester.trace WHERE trace_id = current_setting('demo.trace'));
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
SELECT maester.explain(:'last_trace');

\if :use_mock
-- The spans also went to an OpenTelemetry collector (here the mock plays
-- one) as OTLP/HTTP JSON, by an exporter worker; give it a second.
SELECT pg_sleep(1.5);
SELECT exported > 0 AS spans_exported, export_dropped, failed_posts, spans_dropped FROM maester.trace_status();
\endif

-- Live statistics per provider and model, like pg_stat_statements:
SELECT provider, model, calls, errors, retries, input_tokens, output_tokens, cost_usd,
       round(p50_latency_ms::numeric, 2) AS p50_ms, round(p95_latency_ms::numeric, 2) AS p95_ms, circuit_state
  FROM maester.stat ORDER BY provider, model;

-- The ledger: one durable row per attempt, written by the ledger worker.
SELECT ts::time(0) AS time, tenant, provider, model, prompt_name, prompt_version,
       input_tokens, output_tokens, cost_usd, estimated_cost_usd, status
  FROM maester.usage ORDER BY ts;

-- Why did our AI bill jump?  The ledger, by day, tenant, provider and model:
SELECT day, tenant, provider, model, calls, errors, input_tokens, output_tokens, cost_usd
  FROM maester.cost_daily ORDER BY day, tenant, provider, model;

-- Which prompt version is better?  A small evaluation suite, run against
-- v1 and v2, compared case by case.
INSERT INTO maester.eval_suite (name, prompt) VALUES ('incidents', 'system_summary');
INSERT INTO maester.eval_case (suite, case_name, variables, checks) VALUES
    ('incidents', 'api key', '{"event_text": "Admin revoked API key for user account 742."}',
     '{"required_terms": ["account 742"], "max_length": 300}'),
    ('incidents', 'latency', '{"event_text": "System latency increased above 300ms for the inference service."}',
     '{"required_terms": ["reliability", "latency"], "max_length": 300}'),
    ('incidents', 'disk', '{"event_text": "Disk usage above 90% on db-3."}',
     '{"required_terms": ["operational impact"], "max_length": 300}');
SELECT id, prompt_version, cases, passed, pass_rate, mean_score, total_cost_usd
  FROM maester.eval_run('incidents', 'v1', 'gpt-4.1-mini');
SELECT id, prompt_version, cases, passed, pass_rate, mean_score, total_cost_usd
  FROM maester.eval_run('incidents', 'v2', 'gpt-4.1-mini');
SELECT * FROM maester.eval_compare(1, 2);

-- Batch work: summarise 200 events with one statement.  generate_batch
-- runs the calls concurrently on one connection pool (32 at a time here);
-- each is metered, evaluated and traced like the calls above, and a
-- request that fails is a row with its error, not the statement's.
CREATE TABLE events (id integer PRIMARY KEY, body text NOT NULL);
INSERT INTO events
SELECT i, format('%s on %s: %s', (ARRAY['Error rate above 2%', 'Latency above 300ms', 'Disk usage above 90%',
                                         'Certificate expires in 7 days'])[1 + i % 4],
                 'service-' || (i % 17), 'event ' || i)
  FROM generate_series(1, 200) i;
SELECT set_config('demo.t0', clock_timestamp()::text, false) IS NOT NULL AS started;
CREATE TABLE event_summary AS
SELECT e.id, b.content AS summary, b.cost_usd, b.evaluation ->> 'status' AS eval, b.error_class
  FROM maester.generate_batch(
         ARRAY(SELECT jsonb_build_object('variables', jsonb_build_object('event_text', body),
                                         'max_tokens', 60)
                 FROM events ORDER BY id),
         prompt_name => 'system_summary', model => 'gpt-4.1-mini', concurrency => 32,
         options => '{"tags": {"job": "enrich-events"}}') b
  JOIN events e ON e.id = b.ordinal;   -- ordinal: the request's position in the array
SELECT count(*) AS summarised, count(*) FILTER (WHERE error_class IS NULL) AS ok,
       count(*) FILTER (WHERE eval = 'pass') AS eval_pass,
       round(extract(epoch FROM clock_timestamp() - current_setting('demo.t0')::timestamptz)::numeric, 2) AS seconds
  FROM event_summary;
SELECT id, left(summary, 70) AS summary FROM event_summary ORDER BY id LIMIT 3;
-- ... and each call is in the ledger, tagged:
SELECT count(*) AS ledger_rows, count(DISTINCT request_id) AS calls, sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
  FROM maester.usage WHERE tags ->> 'job' = 'enrich-events';

-- Or asynchronously: submit returns at once with a job id; job workers run
-- the jobs in the background, with the same ledger, evaluation and traces.
SELECT count(maester.submit(jsonb_build_object('prompt_name', 'system_summary',
                                               'variables', jsonb_build_object('event_text', body),
                                               'model', 'gpt-4.1-mini', 'max_tokens', 60),
                            submission => 'nightly-digest')) AS submitted
  FROM events WHERE id <= 50;
DO $$
BEGIN
  FOR i IN 1..600 LOOP
    EXIT WHEN NOT EXISTS (SELECT FROM maester.job WHERE status IN ('queued', 'running'));
    PERFORM pg_sleep(0.05);
  END LOOP;
END $$;
SELECT submission, total, queued, running, done, failed, per_second > 0 AS has_rate, eta
  FROM maester.job_progress;
SELECT id, status, left((result).content, 60) AS content, (result).cost_usd, request_id IS NOT NULL AS in_ledger
  FROM maester.job ORDER BY id LIMIT 3;

-- Tools: the model asks for one, SQL runs it, the model answers with its
-- result.  tool_calls is one shape for OpenAI and Anthropic alike.
CREATE TEMP TABLE turn AS
SELECT * FROM maester.llm_generate(model => 'gpt-4.1-mini',
    messages => '[{"role": "user", "content": "How many jobs are queued right now?"}]',
    options => '{"tools": [{"name": "count_jobs", "description": "Count maester jobs by status",
                            "parameters": {"type": "object", "properties": {"status": {"type": "string"}},
                                           "required": ["status"]}}],
                 "tool_choice": "required"}');
SELECT finish_reason, tool_calls FROM turn;
SELECT left(g.content, 70) AS answer
  FROM turn t, maester.llm_generate(model => 'gpt-4.1-mini', messages => jsonb_build_array(
         jsonb_build_object('role', 'user', 'content', 'How many jobs are queued right now?'),
         jsonb_build_object('role', 'assistant', 'content', t.content, 'tool_calls', t.tool_calls),
         jsonb_build_object('role', 'tool', 'tool_call_id', t.tool_calls -> 0 ->> 'id',
             'content', (SELECT count(*) FROM maester.job WHERE status = 'queued')::text)),
       options => '{"tools": [{"name": "count_jobs", "parameters": {"type": "object"}}]}') g;

-- Structured output: the answer as jsonb, checked against its schema.
SELECT parsed, evaluation ->> 'status' AS schema_check
  FROM maester.llm_generate('Extract the service and the latency: inference latency rose to 340 ms.',
         'gpt-4.1-mini', options => '{"response_format": {"type": "json_schema", "json_schema": {
           "name": "incident", "strict": true, "schema": {"type": "object",
           "properties": {"service": {"type": "string"}, "latency_ms": {"type": "integer"}},
           "required": ["service", "latency_ms"], "additionalProperties": false}}}}');

-- Knowledge: embed a few runbook lines through the gateway (metered like
-- any call), then find the closest to a question with the vector helpers.
CREATE TABLE runbook (id int PRIMARY KEY, line text, embedding real[]);
INSERT INTO runbook (id, line) VALUES
    (1, 'Disk full on a database host: rotate logs and extend the volume.'),
    (2, 'Inference latency above 300 ms: scale the model servers out.'),
    (3, 'Revoked API key: rotate the key and audit the account.');
UPDATE runbook r SET embedding = e.embedding
  FROM maester.embed(ARRAY(SELECT line FROM runbook ORDER BY id)) e WHERE e.ordinal = r.id;
SELECT id, line, round(maester.cosine_similarity(embedding,
                         maester.embed('latency of the inference service is high'))::numeric, 3) AS similarity
  FROM runbook ORDER BY similarity DESC LIMIT 2;
SELECT purpose, model, count(*) AS requests, sum(input_tokens) AS tokens
  FROM maester.usage WHERE purpose = 'embedding' GROUP BY 1, 2;

-- The knowledge engine: the PostgreSQL 15 manual (Debian's
-- postgresql-doc-15: 1,169 HTML pages) into a knowledge base.  ingest()
-- returns at once; the knowledge worker parses, chunks, embeds (through
-- the gateway: metered, budgeted) and indexes in the background.  Against
-- a real provider the demo takes the first 60 pages (a few cents' worth).
SELECT maester.kb_create('postgres-manual', 'text-embedding-3-small', dimensions => 256) AS kb;
SELECT count(maester.ingest('postgres-manual', f,
                            pg_read_file('/usr/share/doc/postgresql-doc-15/html/' || f), 'text/html')) AS ingested
  FROM (SELECT f FROM pg_ls_dir('/usr/share/doc/postgresql-doc-15/html') f
         WHERE f LIKE '%.html' ORDER BY f LIMIT CASE WHEN :'use_mock' THEN NULL ELSE 60 END) pages;
-- progress while it runs: a line a second from maester.kb_status
DO $$
DECLARE
    s record;
BEGIN
    LOOP
        SELECT * INTO s FROM maester.kb_status WHERE kb = 'postgres-manual';
        RAISE NOTICE '[%] % of % documents indexed, % chunks, % embedded, % tokens to go (about $%)',
            rpad(repeat('#', (40 * s.indexed / greatest(s.documents, 1))::int), 40, '.'),
            s.indexed, s.documents, s.chunks, coalesce(round(100 * s.embedded_share) || '%', '-'),
            s.tokens_pending, coalesce(s.estimated_cost_usd, 0);
        EXIT WHEN s.indexed + s.failed = s.documents AND s.documents > 0;
        PERFORM pg_sleep(1);
    END LOOP;
END $$;
SELECT documents, indexed, failed, chunks, embedded_share, embedding_model, served_model
  FROM maester.kb_status;
-- every passage points into its document's parsed text, under its headings
SELECT d.title, c.heading_path, c.start_offset, c.end_offset, c.token_estimate,
       left(c.content, 60) AS passage
  FROM maester.chunk c JOIN maester.document d ON d.id = c.document_id
 WHERE c.tsv @@ websearch_to_tsquery('english', 'vacuum freeze wraparound')
 ORDER BY ts_rank_cd(c.tsv, websearch_to_tsquery('english', 'vacuum freeze wraparound')) DESC LIMIT 3;
-- the same pages again: the same content sends and bills nothing
SELECT count(*) AS calls_before FROM maester.usage \gset
SELECT count(maester.ingest('postgres-manual', f,
                            pg_read_file('/usr/share/doc/postgresql-doc-15/html/' || f), 'text/html')) AS ingested_again
  FROM (SELECT f FROM pg_ls_dir('/usr/share/doc/postgresql-doc-15/html') f
         WHERE f LIKE '%.html' ORDER BY f LIMIT CASE WHEN :'use_mock' THEN NULL ELSE 60 END) pages;
SELECT maester.kb_wait('postgres-manual') AS done, (SELECT count(*) FROM maester.usage) - :calls_before AS new_calls;
SELECT purpose, count(*) AS requests, sum(input_tokens) AS tokens, sum(cost_usd) AS cost_usd
  FROM maester.usage WHERE tags ->> 'kb' = 'postgres-manual' GROUP BY 1;

-- Answers with citations: search (hybrid), the numbered sources, the
-- registered answer prompt maester_answer, the [n] markers as citations down
-- to the passage, checked without a model.  (With the mock, mock-cite
-- answers with each source's first sentence; with a key, gpt-4.1-mini.)
SELECT CASE WHEN :'use_mock' THEN 'mock-cite' ELSE 'gpt-4.1-mini' END AS answer_model \gset
CREATE TEMP TABLE answers AS
SELECT q AS question, maester.ask('postgres-manual', q, :'answer_model', 4) AS r
  FROM unnest(ARRAY['How do I create a role that can log in?',
                    'What does VACUUM FREEZE do?',
                    'How do I add a column to an existing table?']) q;
SELECT question, left(r ->> 'answer', 160) AS answer,
       jsonb_path_query_array(r -> 'citations', '$[*].external_id') AS cited,
       r -> 'evaluation' ->> 'status' AS evaluation, r -> 'cost' ->> 'total_usd' AS cost_usd
  FROM answers;
-- the first answer's citations, down to the characters of the passage
SELECT c ->> 'n' AS n, c ->> 'external_id' AS page, c -> 'section' AS section,
       c ->> 'char_start' AS char_start, c ->> 'char_end' AS char_end
  FROM answers, jsonb_array_elements(r -> 'citations') c
 WHERE question = 'How do I create a role that can log in?';
-- one trace per ask: retrieve, the query's embedding, the generation
SELECT pg_sleep(0.5);
SELECT * FROM maester.explain((SELECT r ->> 'trace_id' FROM answers LIMIT 1));

-- Routing beyond a fallback chain: a 90/10 canary between two models,
-- sticky per user (the same user always lands on the same model); the
-- strategy and why are on every ledger row.
INSERT INTO maester.route (name, strategy) VALUES ('canary', 'weighted');
INSERT INTO maester.route_target (route, position, provider, model, weight) VALUES
    ('canary', 1, :'gw_provider', 'gpt-4.1-mini', 90), ('canary', 2, :'gw_provider', 'gpt-4.1-nano', 10);
SELECT g.model, count(*) AS users
  FROM generate_series(1, 40) i,
       LATERAL maester.llm_generate('Greet user ' || i || ' in three words.', 'canary', 20,
                                    options => jsonb_build_object('sticky_key', 'user-' || i)) g
 GROUP BY 1 ORDER BY 2 DESC;
SELECT route_strategy, route_reason FROM maester.usage WHERE requested_model = 'canary' LIMIT 2;

-- The response cache (opt-in, per tenant, only for calls that do not
-- sample): the same question twice; the second is answered at once, sends
-- nothing, and is a ledger row at $0 with the cost it saved.
SELECT cached, cost_usd, round(latency_ms::numeric, 1) AS ms, left(content, 60) AS content
  FROM maester.llm_generate('What is MVCC, in one sentence?', 'gpt-4.1-mini', 60,
                            options => '{"cache": true, "temperature": 0}');
SELECT cached, cost_usd, round(latency_ms::numeric, 1) AS ms, left(content, 60) AS content
  FROM maester.llm_generate('What is MVCC, in one sentence?', 'gpt-4.1-mini', 60,
                            options => '{"cache": true, "temperature": 0}');
SELECT prompt, model, hits, misses, hit_rate, saved_usd FROM maester.cache_stats;

-- A budget: the demo tenant may spend $0.0003 a day; the next call whose
-- worst case does not fit is refused before anything is sent.
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('default', 'day', 0.0003, 'block');
SELECT id, tenant, period, limit_usd, spent_usd, reserved_usd, remaining_usd FROM maester.budget_status;
\set ON_ERROR_STOP 0
SELECT content FROM maester.llm_generate('One more summary, please.', 'gpt-4.1-mini', max_tokens => 500);
\set ON_ERROR_STOP 1
SELECT status, model, estimated_cost_usd FROM maester.usage WHERE status = 'blocked';
