-- Knowledge bases (issue #17), on real documents: pages of the PostgreSQL
-- 15 manual (Debian's postgresql-doc-15) go through parse -> chunk ->
-- embed -> index in the knowledge worker, against the mock's embeddings
\getenv mock_url MAESTER_MOCK_URL
SELECT set_config('test.mock_url', :'mock_url', false) IS NOT NULL AS ok;
CREATE TEMP TABLE mock_out (line text);
CREATE FUNCTION pg_temp.mock(path text) RETURNS jsonb LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
  TRUNCATE mock_out;
  EXECUTE format('COPY mock_out FROM PROGRAM %L WITH (FORMAT csv, QUOTE E''\x01'', DELIMITER E''\x02'')',
                 'curl -s ' || current_setting('test.mock_url') || path);
  RETURN (SELECT string_agg(line, E'\n')::jsonb FROM mock_out);
END $$;
-- inputs the mock has been sent for embedding so far
CREATE FUNCTION pg_temp.inputs_sent() RETURNS bigint LANGUAGE sql AS $$
  SELECT (pg_temp.mock('/_mock/stats') ->> 'embedding_inputs')::bigint $$;
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
CREATE FUNCTION pg_temp.page(f text) RETURNS text LANGUAGE sql SECURITY DEFINER AS $$
  SELECT pg_read_file('/usr/share/doc/postgresql-doc-15/html/' || f) $$;
CREATE TEMP TABLE pages AS
  SELECT f FROM pg_ls_dir('/usr/share/doc/postgresql-doc-15/html') f
   WHERE f LIKE 'sql-create%.html' ORDER BY f LIMIT 24;
GRANT SELECT ON pages TO PUBLIC;

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, circuit_failure_threshold, backoff_base_ms)
VALUES ('kbmock', 'openai_compatible', :'mock_url' || '/v1', 'MAESTER_TEST_API_KEY', '{}', 0, 1);
INSERT INTO maester.model (name, provider, provider_model, embedding_dimensions) VALUES
    ('kb-emb', 'kbmock', 'text-embedding-3-small', 1536),
    ('kb-emb-large', 'kbmock', 'text-embedding-3-large', 3072),
    ('kb-emb-down', 'kbmock', 'fault-status-503', 256),
    ('kb-emb-refuse', 'kbmock', 'emb-ctx-40', NULL),
    ('kb-answer', 'kbmock', 'mock-cite', NULL),
    ('kb-answer-invent', 'kbmock', 'mock-cite-invent', NULL);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
SELECT name, '2020-01-01'::timestamptz, 0.02, 0 FROM maester.model WHERE name LIKE 'kb-emb%'
UNION ALL SELECT provider_model, '2020-01-01', 1, 2 FROM maester.model WHERE name LIKE 'kb-answer%'
UNION ALL SELECT name, '2020-01-01', 1, 2 FROM maester.model WHERE name LIKE 'kb-answer%';

-- two tenants, each a role mapped to it
CREATE ROLE kb_acme LOGIN IN ROLE maester_user;
CREATE ROLE kb_globex LOGIN IN ROLE maester_user;
INSERT INTO maester.tenant_member (role, tenant) VALUES ('kb_acme', 'kb-acme'), ('kb_globex', 'kb-globex');
SET ROLE kb_acme;

-- kb_create: bad inputs are refused with their SQLSTATE
SELECT pg_temp.err($$ SELECT maester.kb_create('', 'kb-emb') $$);
SELECT pg_temp.err($$ SELECT maester.kb_create(NULL, 'kb-emb') $$);
SELECT pg_temp.err($$ SELECT maester.kb_create('x', 'no-such-model') $$);
SELECT pg_temp.err($$ SELECT maester.kb_create('x', 'kb-emb', '{"max_tokens": 5}') $$);
SELECT pg_temp.err($$ SELECT maester.kb_create('x', 'kb-emb', '{"chunk_size": 100}') $$);
SELECT pg_temp.err($$ SELECT maester.kb_create('x', 'kb-emb-large') $$);
SELECT pg_temp.err($$ SELECT maester.kb_create('x', 'kb-emb', dimensions => 0) $$);
SELECT maester.kb_create('manual', 'kb-emb', '{"max_tokens": 256, "overlap_tokens": 32}') > 0 AS created;
SELECT pg_temp.err($$ SELECT maester.kb_create('manual', 'kb-emb') $$);
SELECT name, tenant, owner, chunking, fts_config FROM maester.kb;

-- ingest: bad inputs
SELECT pg_temp.err($$ SELECT maester.ingest('nope', 'a', 'text') $$);
SELECT pg_temp.err($$ SELECT maester.ingest('manual', '', 'text') $$);
SELECT pg_temp.err($$ SELECT maester.ingest('manual', 'a', NULL::text) $$);
SELECT pg_temp.err($$ SELECT maester.ingest('manual', 'a', 'text', metadata => '[1]') $$);

-- 24 pages of the manual, and one document of a type nothing parses: it
-- fails alone
SELECT count(maester.ingest('manual', f, pg_temp.page(f), 'text/html', metadata => jsonb_build_object('file', f)))
  FROM pages;
SELECT maester.ingest('manual', 'odd.bin', 'whatever', 'application/x-unknown') > 0 AS queued;
SELECT pg_temp.inputs_sent() AS sent_before \gset
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT documents, queued, parsed, chunked, embedded, indexed, failed, chunks > 100 AS many_chunks,
       embedded_share, tokens_pending, embedding_model, served_model, paused_reason
  FROM maester.kb_status;
SELECT external_id, stage, error_class, error_message FROM maester.document WHERE stage = 'failed';
-- every chunk is its passage of the parsed text, within the token bound,
-- under its section's headings, and has one vector of 1536 dimensions
SELECT count(*) AS chunks,
       count(*) FILTER (WHERE c.content = substr(d.parsed, c.start_offset + 1, c.end_offset - c.start_offset)) AS exact_passages,
       max(c.token_estimate) <= 256 AS within_bound,
       count(*) FILTER (WHERE cardinality(c.heading_path) > 0) > 0 AS under_headings,
       count(*) FILTER (WHERE c.tsv @@ websearch_to_tsquery('english', 'aggregate')) > 0 AS searchable
  FROM maester.chunk c JOIN maester.document d ON d.id = c.document_id;
SELECT count(*) AS vectors, min(array_length(e.embedding, 1)) AS dims, max(array_length(e.embedding, 1)) AS dims_max
  FROM maester.chunk_embedding e JOIN maester.kb k ON k.id = e.kb_id AND e.profile_id = k.profile_id;
-- what was sent is what was embedded; the ledger holds it under the
-- kb's tenant and owner, tagged with the kb and its documents
SELECT pg_temp.inputs_sent() - :sent_before = (SELECT count(*) FROM maester.chunk) AS sent_each_chunk_once;
RESET ROLE;
SELECT tenant, role, purpose, status, count(*) > 0 AS calls, bool_and(tags ->> 'kb' = 'manual') AS tagged,
       bool_and(tags ->> 'documents' ~ '^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$') AS documents_tagged,
       sum(cost_usd) > 0 AS billed
  FROM maester.usage WHERE purpose = 'embedding' AND tenant = 'kb-acme' GROUP BY 1, 2, 3, 4;
SET ROLE kb_acme;

-- a trace per document: kb_ingest (the root), kb_parse, kb_chunk,
-- kb_embed (naming the embedding call's trace), kb_index
RESET ROLE;
SELECT string_agg(s.name, ' ' ORDER BY s.started_at, s.name = 'kb_ingest' DESC) AS spans,
       bool_and(s.parent_span_id = d.span_id OR s.span_id = d.span_id) AS one_tree,
       bool_and(s.tenant = 'kb-acme') AS tenant
  FROM maester.document d JOIN maester.span s ON s.trace_id = d.trace_id
 WHERE d.external_id = (SELECT min(f) FROM pages);
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
-- the embedding call's spans are children of the batch's root
SELECT pg_temp.wait_for($q$
  SELECT count(*) > 0 FROM maester.span b JOIN maester.span c ON c.trace_id = b.trace_id AND c.parent_span_id = b.span_id
   WHERE b.name = 'kb_embed_batch' AND b.trace_id = (
         SELECT s.attributes ->> 'maester.embed.trace_id' FROM maester.document d JOIN maester.span s
             ON s.trace_id = d.trace_id AND s.name = 'kb_embed' WHERE d.external_id = (SELECT min(f) FROM pages))
$q$, 10) AS batch_trace;
-- explain() reads both
SELECT regexp_replace(regexp_replace(e, '\(\d+\.\d+ ms', '(N ms'), 'embedding_trace=[0-9a-f]{32}', 'embedding_trace=T') AS explain
  FROM maester.explain((SELECT trace_id FROM maester.document WHERE external_id = (SELECT min(f) FROM pages) AND current)) e;
SET ROLE kb_acme;
-- an ingest joins the application's trace
SET maester.traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
SELECT maester.ingest('manual', 'traced', 'A traced document about checkpoints.') > 0 AS queued;
RESET maester.traceparent;
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT d.trace_id, s.parent_span_id AS parent, s.status
  FROM maester.document d JOIN maester.span s ON s.trace_id = d.trace_id AND s.span_id = d.span_id
 WHERE d.external_id = 'traced';
SELECT maester.kb_delete_document('manual', 'traced');

-- the same content again: nothing is sent, nothing billed, no version
SELECT pg_temp.inputs_sent() AS sent_before \gset
SELECT count(DISTINCT maester.ingest('manual', f, pg_temp.page(f), 'text/html', metadata => jsonb_build_object('file', f)))
  FROM pages;
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT pg_temp.inputs_sent() - :sent_before AS sent, count(*) AS versions FROM maester.document;

-- a new title or metadata with the same content: kept, nothing sent
SELECT maester.ingest('manual', f, pg_temp.page(f), 'text/html', 'A new title', '{"file": "renamed"}') > 0
  FROM pages ORDER BY f LIMIT 1;
SELECT title, metadata, version FROM maester.document WHERE external_id = (SELECT min(f) FROM pages);

-- a changed page is a new version; only its changed chunks are sent (the
-- others take the vectors the kb has), and it replaces the old at index
SELECT pg_temp.inputs_sent() AS sent_before \gset
SELECT maester.ingest('manual', f, replace(pg_temp.page(f), '</body>',
                      '<p>An added paragraph on heptree access methods.</p></body>'), 'text/html') > 0
  FROM pages ORDER BY f LIMIT 1;
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT version, stage, current, superseded_at IS NOT NULL AS superseded,
       (SELECT count(*) FROM maester.chunk c WHERE c.document_id = d.id) > 0 AS has_chunks,
       (SELECT count(*) FROM maester.chunk_embedding e JOIN maester.chunk c ON c.id = e.chunk_id
         WHERE c.document_id = d.id) > 0 AS has_vectors
  FROM maester.document d WHERE external_id = (SELECT min(f) FROM pages) ORDER BY version;
SELECT pg_temp.inputs_sent() - :sent_before BETWEEN 1 AND 2 AS sent_only_changed_chunks;

-- a provider failure pauses the queue (the document is not charged);
-- meanwhile the current version keeps answering
SELECT pg_temp.err($$ SELECT maester.kb_create('down', 'kb-emb-down') $$);
SELECT maester.ingest('down', 'p1', pg_temp.page('sql-createrole.html'), 'text/html') > 0 AS queued;
SELECT maester.kb_wait('down', '3 s') AS done;
SELECT kb, chunked, failed, paused_reason LIKE 'embedding failed%' AS paused, paused_until > now() AS backing_off
  FROM maester.kb_status WHERE kb = 'down';
SELECT attempts, stage, error_class FROM maester.document d JOIN maester.kb k ON k.id = d.kb_id WHERE k.name = 'down';
SELECT maester.kb_drop('down');

-- an input the provider refuses fails its document, the others go on
SELECT maester.kb_create('refusing', 'kb-emb-refuse', '{"max_tokens": 64, "overlap_tokens": 0}') > 0 AS created;
SELECT maester.ingest('refusing', 'short', 'Vacuum reclaims storage.', 'text/plain') > 0,
       maester.ingest('refusing', 'long', pg_temp.page('sql-vacuum.html'), 'text/html') > 0;
SELECT maester.kb_wait('refusing', '60 s') AS done;
SELECT external_id, stage, error_class, error_message LIKE 'the provider refused chunk%' AS refused
  FROM maester.document d JOIN maester.kb k ON k.id = d.kb_id WHERE k.name = 'refusing' ORDER BY 1;
SELECT paused_reason FROM maester.kb_status WHERE kb = 'refusing';
SELECT maester.kb_drop('refusing');

-- kb_retry queues failed documents again
SELECT maester.kb_retry('manual') AS requeued;
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT external_id, stage FROM maester.document WHERE external_id = 'odd.bin';

-- search: bad inputs
SELECT pg_temp.err($$ SELECT * FROM maester.search('manual', 'x', 0) $$);
SELECT pg_temp.err($$ SELECT * FROM maester.search('manual', 'x', mode => 'semantic') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.search('manual', 'x', filter => '[1]') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.search('manual', '   ') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.search('manual', 'x', options => '{"rrf": 1}') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.search('manual', 'x', options => '{"candidates": 5}') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.search('nope', 'x') $$);
-- full text (AND semantics), vector (exact, over the active profile), hybrid
SELECT rank, external_id, fts_rank, vector_rank FROM maester.search('manual', 'aggregate state transition function', 3, 'fts');
SELECT count(*) AS embeddings_before FROM maester.usage WHERE purpose = 'embedding' \gset
SELECT rank, external_id, fts_rank IS NULL AS no_fts, vector_similarity > 0 AS similar
  FROM maester.search('manual', 'aggregate state transition function', 3, 'vector');
SELECT count(*) - :embeddings_before AS query_embeddings FROM maester.usage WHERE purpose = 'embedding';
SELECT rank, external_id, vector_rank, fts_rank,
       round((coalesce(1.0 / (60 + vector_rank), 0) + coalesce(1.0 / (60 + fts_rank), 0))::numeric, 6)
         = round(score::numeric, 6) AS rrf
  FROM maester.search('manual', 'aggregate state transition function', 5);
-- every hit is its passage of the current version, with a snippet
SELECT count(*) AS hits, bool_and(h.content = substr(d.parsed, h.start_offset + 1, h.end_offset - h.start_offset)) AS exact,
       bool_and(d.current AND d.version = h.document_version) AS current, bool_and(h.snippet <> '') AS snippets
  FROM maester.search('manual', 'role password valid until', 10) h JOIN maester.document d ON d.id = h.document_id;
-- a filter on the documents' metadata: exact search after the filter finds k hits
SELECT count(*) AS hits, bool_and(external_id = 'sql-createrole.html') AS only_filtered
  FROM maester.search('manual', 'aggregate state transition function', 5, filter => '{"file": "sql-createrole.html"}');
-- AND finds nothing: the same words with OR
SELECT count(*) > 0 AS found_with_or FROM maester.search('manual', 'aggregate zzqxjv', 3, 'fts');
-- another tenant's kb is not found
SET ROLE kb_globex;
SELECT pg_temp.err($$ SELECT * FROM maester.search('manual', 'aggregate') $$);
SET ROLE kb_acme;

-- ask: search, numbered sources, the registered answer prompt, citations
SELECT pg_temp.err($$ SELECT maester.ask('manual', '  ', 'kb-answer') $$);
SELECT pg_temp.err($$ SELECT maester.ask('manual', 'x', 'kb-answer', 0) $$);
SELECT pg_temp.err($$ SELECT maester.ask('manual', 'x', 'kb-answer', options => '{"temperature": 1}') $$);
CREATE TEMP TABLE asked AS
SELECT maester.ask('manual', 'How does CREATE ROLE define a role that can log in?', 'kb-answer', 4) AS r;
SELECT r ->> 'answer' IS NOT NULL AS answered, jsonb_array_length(r -> 'citations') AS citations,
       r -> 'evaluation' ->> 'status' AS status, r -> 'evaluation' -> 'citations_valid' AS valid,
       r -> 'evaluation' -> 'citation_coverage' AS coverage,
       (r -> 'evaluation' ->> 'citation_support')::numeric >= 0.5 AS supported,
       r ->> 'prompt_name' AS prompt, r ->> 'prompt_version' AS version,
       (r -> 'cost' ->> 'embedding_usd')::numeric > 0 AS embedding_cost,
       (r -> 'cost' ->> 'generation_usd')::numeric > 0 AS generation_cost,
       jsonb_array_length(r -> 'request_ids') AS requests, r -> 'sources' AS sources
  FROM asked;
-- the ask reserved both calls as one amount before sending: what each
-- call reserved for itself fits in it, and nothing stays reserved
RESET ROLE;
SELECT count(*) AS calls,
       sum(u.estimated_cost_usd) <= (SELECT (r -> 'cost' ->> 'reserved_usd')::numeric FROM asked) AS within_reserved,
       (SELECT (r -> 'cost' ->> 'reserved_usd')::numeric >= (r -> 'cost' ->> 'total_usd')::numeric FROM asked) AS covers_cost,
       (SELECT max(k.max_source_bytes) > 0 FROM maester.kb k WHERE k.tenant = 'kb-acme') AS source_bound
  FROM maester.usage u WHERE u.trace_id = (SELECT r ->> 'trace_id' FROM asked) AND u.status = 'ok';
SELECT count(*) FILTER (WHERE reserved_usd <> 0) AS still_reserved FROM maester.budget_counters();
-- the largest source ask may send is within the kb's bound
SELECT max(octet_length(coalesce(d.title, d.external_id)) + octet_length(c.content)
           + CASE WHEN cardinality(c.heading_path) > 0 THEN 3 + octet_length(array_to_string(c.heading_path, ' > ')) ELSE 0 END + 8)
       = (SELECT k.max_source_bytes FROM maester.kb k WHERE k.tenant = 'kb-acme' AND k.name = 'manual') AS bound_is_max
  FROM maester.chunk c JOIN maester.document d ON d.id = c.document_id JOIN maester.kb k ON k.id = c.kb_id
 WHERE k.tenant = 'kb-acme' AND k.name = 'manual';
SET ROLE kb_acme;
-- the same content with a longer title: its chunks weigh more as sources, and the bound follows
CREATE TEMP TABLE bound_before AS SELECT max_source_bytes FROM maester.kb WHERE name = 'manual';
SELECT maester.ingest('manual', d.external_id, d.content, d.mime, repeat('T', 5000), d.metadata) = d.id AS same_document
  FROM maester.document d JOIN maester.kb k ON k.id = d.kb_id
 WHERE k.name = 'manual' AND d.current ORDER BY d.id LIMIT 1;
SELECT k.max_source_bytes >= b.max_source_bytes + 4000 AS bound_grew
  FROM maester.kb k, bound_before b WHERE k.name = 'manual';
DROP TABLE bound_before;
SELECT pg_temp.err($$ SELECT maester.ask('manual', 'x', 'kb-answer', options => '{"max_tokens": 0}') $$);
SELECT pg_temp.err($$ SELECT maester.ask('manual', 'x', 'kb-answer', options => '{"max_tokens": "ten"}') $$);
SELECT pg_temp.err($$ SELECT maester.ask('manual', 'x', 'kb-answer', options => '{"generate": [1]}') $$);
-- every citation is its passage of the document version it names
SELECT count(*) AS cited,
       bool_and(starts_with(substr(d.parsed, (c ->> 'char_start')::int + 1,
                                   (c ->> 'char_end')::int - (c ->> 'char_start')::int), c ->> 'quote')) AS exact,
       bool_and(d.version = (c ->> 'document_version')::int) AS versions
  FROM asked, jsonb_array_elements(r -> 'citations') c JOIN maester.document d ON d.id = (c ->> 'document_id')::bigint;
-- the generation's ledger row carries the answer prompt's version and hash
RESET ROLE;
SELECT u.prompt_name, u.prompt_version, u.prompt_hash = (SELECT r ->> 'prompt_hash' FROM asked) AS hash,
       u.tags ->> 'kb' AS kb, u.trace_id = (SELECT r ->> 'trace_id' FROM asked) AS same_trace
  FROM maester.usage u WHERE u.request_id = (SELECT (r -> 'request_ids' ->> -1)::uuid FROM asked);
-- one trace: ask, then retrieve, the query's embedding and the generation under it
SELECT pg_temp.wait_for($q$ SELECT count(*) >= 4 FROM maester.span WHERE trace_id = (SELECT r ->> 'trace_id' FROM asked)
                              AND name IN ('ask', 'retrieve', 'embed', 'llm_generate') $q$, 10) AS traced;
SELECT string_agg(regexp_replace(e, '\s*\(.*$', ''), ' | ') AS explain
  FROM maester.explain((SELECT r ->> 'trace_id' FROM asked)) e WHERE e !~ '^\s+->\s+(model_route|budget_check|cost_metering|prompt_render)';
SET ROLE kb_acme;
-- a citation of a source that was not given is reported, and the answer fails
SELECT r -> 'invalid_citations' AS invented, r -> 'evaluation' ->> 'status' AS status
  FROM maester.ask('manual', 'How does CREATE ROLE define a role that can log in?', 'kb-answer-invent', 4) r;
SELECT maester.citation_checks('Roles log in [1]. They are global [3]. Nothing here.',
                               ARRAY['A role that can log in is a user.', 'Roles are global objects.']);
-- the same checks in evaluate(), for registered checks and eval suites
SELECT m ->> 'name' AS check, m -> 'score' AS score, m -> 'passed' AS passed, m ->> 'reason' AS reason
  FROM jsonb_array_elements(maester.evaluate('Roles log in [1]. They are global [3]. Nothing here.',
         '{"citations_valid": true, "citation_coverage": 0.5, "citation_support": 0.6}',
         '{"sources": ["A role that can log in is a user.", "Roles are global objects."]}') -> 'metrics') m;
SELECT pg_temp.err($$ SELECT maester.evaluate('x [1]', '{"citation_support": 2}', '{"sources": []}') $$);
SELECT pg_temp.err($$ SELECT maester.evaluate('x [1]', '{"citations_valid": true}') $$);
SELECT maester.validate_checks('{"citation_coverage": 0.8, "citations_valid": true}') IS NOT NULL AS valid_checks;
-- a budget that cannot fit the ask stops it before anything is sent
SELECT pg_temp.inputs_sent() AS sent_before, (pg_temp.mock('/_mock/stats') ->> 'requests')::int AS requests_before \gset
RESET ROLE;
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('kb-acme', 'total', 0.000001, 'block');
SET ROLE kb_acme;
SELECT pg_temp.err($$ SELECT maester.ask('manual', 'How does CREATE ROLE work?', 'kb-answer') $$) LIKE 'MB001%' AS blocked;
SELECT (pg_temp.mock('/_mock/stats') ->> 'requests')::int - :requests_before AS requests_sent;
RESET ROLE;
DELETE FROM maester.budget WHERE tenant = 'kb-acme';
-- a budget with room for the query's embedding but not for the answer's
-- worst case: refused before anything is sent either
INSERT INTO maester.budget (tenant, period, limit_usd, action)
SELECT 'kb-acme', 'total', sum(cost_usd) + 0.0001, 'block' FROM maester.usage WHERE tenant = 'kb-acme';
SET ROLE kb_acme;
SELECT regexp_replace(pg_temp.err($$ SELECT maester.ask('manual', 'How does CREATE ROLE work?', 'kb-answer') $$),
                      'budget \d+ (.*) by [0-9.]+', 'budget N \1 by X') AS err;
SELECT (pg_temp.mock('/_mock/stats') ->> 'requests')::int - :requests_before AS requests_sent;
RESET ROLE;
DELETE FROM maester.budget WHERE tenant = 'kb-acme';
SET ROLE kb_globex;
SELECT pg_temp.err($$ SELECT maester.ask('manual', 'How does CREATE ROLE work?', 'kb-answer') $$);
SET ROLE kb_acme;

-- kb_eval: recall@k, MRR and nDCG per mode, stored per run
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', '[]') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', '[{"query": "x"}]') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', '[{"query": "x", "relevant": ["a"]}]', modes => '{bm25}') $$);
SELECT mode, cases, round(recall::numeric, 3) AS recall, round(mrr::numeric, 3) AS mrr, round(ndcg::numeric, 3) AS ndcg
  FROM maester.kb_eval('manual', '[{"query": "aggregate state transition function", "relevant": ["sql-createaggregate.html"]},
                                   {"query": "role password valid until", "relevant": ["sql-createrole.html"]},
                                   {"query": "create a new cast between two types", "relevant": ["sql-createcast.html"]},
                                   {"query": "no such words zzqx", "relevant": ["sql-createtable.html"]}]', 3, '{fts}');
SELECT count(*) AS runs, min(details -> 3 ->> 'first_relevant_rank') IS NULL AS missed FROM maester.kb_eval_run;
-- the cases in a table of the caller's (relevant as text[], jsonb or text), read under its row-level security
CREATE TEMP TABLE eval_cases (query text, relevant text[], visible boolean DEFAULT true);
INSERT INTO eval_cases VALUES ('aggregate state transition function', '{sql-createaggregate.html}'),
                              ('role password valid until', '{sql-createrole.html,sql-alterrole.html}'),
                              ('create a new cast between two types', '{sql-createcast.html}');
SELECT mode, cases, round(recall::numeric, 3) AS recall, round(mrr::numeric, 3) AS mrr
  FROM maester.kb_eval('manual', 'eval_cases'::regclass, 3, '{fts}');
SELECT mode, cases, round(recall::numeric, 3) AS recall FROM maester.kb_eval('manual', 'eval_cases', 3, '{fts}');
CREATE TEMP VIEW eval_one AS SELECT query, relevant[1] AS relevant FROM eval_cases;
CREATE TEMP VIEW eval_json AS SELECT query, to_jsonb(relevant) AS relevant FROM eval_cases;
SELECT (SELECT details FROM maester.kb_eval('manual', 'eval_one', 3, '{fts}'))
       = (SELECT details FROM maester.kb_eval('manual', '[{"query": "aggregate state transition function", "relevant": ["sql-createaggregate.html"]},
                                                          {"query": "role password valid until", "relevant": ["sql-createrole.html"]},
                                                          {"query": "create a new cast between two types", "relevant": ["sql-createcast.html"]}]', 3, '{fts}'))
       AS text_form_same,
       (SELECT recall FROM maester.kb_eval('manual', 'eval_json', 3, '{fts}'))
       = (SELECT recall FROM maester.kb_eval('manual', 'eval_cases', 3, '{fts}')) AS jsonb_form_same;
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', 'no_such_cases') $$);
CREATE TEMP TABLE bad_cases (question text, relevant text[]);
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', 'bad_cases') $$);
CREATE TEMP TABLE bad_types (query text, relevant int);
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', 'bad_types') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', NULL::regclass) $$);
CREATE TEMP TABLE empty_cases (query text, relevant text[]);
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', 'empty_cases') $$);
-- a table the caller may not read is refused; row-level security decides which cases it sees
RESET ROLE;
CREATE TABLE public.kb_eval_secret (query text, relevant text[], owner_ok boolean);
INSERT INTO public.kb_eval_secret VALUES ('aggregate state transition function', '{sql-createaggregate.html}', true),
                                         ('role password valid until', '{sql-createrole.html}', false);
SET ROLE kb_acme;
SELECT pg_temp.err($$ SELECT * FROM maester.kb_eval('manual', 'public.kb_eval_secret') $$);
RESET ROLE;
GRANT SELECT ON public.kb_eval_secret TO kb_acme;
ALTER TABLE public.kb_eval_secret ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_ok ON public.kb_eval_secret USING (owner_ok);
SET ROLE kb_acme;
SELECT cases FROM maester.kb_eval('manual', 'kb_eval_secret', 3, '{fts}');
RESET ROLE;
DROP TABLE public.kb_eval_secret;
DROP VIEW eval_one, eval_json;
DROP TABLE eval_cases, bad_cases, bad_types, empty_cases;
SET ROLE kb_acme;

-- kb_retention: superseded versions older than the interval go
SELECT pg_temp.err($$ SELECT maester.kb_retention('manual', interval '-1 day') $$);
SELECT maester.kb_retention('manual', interval '1 day') AS kept_recent,
       maester.kb_retention('manual', interval '0') AS deleted;
SELECT count(*) AS superseded_left FROM maester.document WHERE superseded_at IS NOT NULL;

-- kb_delete_document
SELECT maester.kb_delete_document('manual', 'odd.bin') AS deleted,
       maester.kb_delete_document('manual', 'odd.bin') AS again;

-- tenants: globex sees none of acme's rows, and reaches none of its kbs by name
SET ROLE kb_globex;
SELECT (SELECT count(*) FROM maester.kb) AS kbs, (SELECT count(*) FROM maester.document) AS documents,
       (SELECT count(*) FROM maester.chunk) AS chunks, (SELECT count(*) FROM maester.chunk_embedding) AS vectors,
       (SELECT count(*) FROM maester.kb_status) AS status, (SELECT count(*) FROM maester.embedding_profile) AS profiles;
SELECT pg_temp.err($$ SELECT maester.ingest('manual', 'x', 'forged') $$);
SELECT pg_temp.err($$ SELECT maester.kb_delete_document('manual', (SELECT min(f) FROM pages)) $$);
SELECT pg_temp.err($$ SELECT maester.kb_drop('manual') $$);
SELECT pg_temp.err($$ SELECT maester.kb_reindex('manual', 'kb-emb', dimensions => 64) $$);
SELECT pg_temp.err($$ SET maester.tenant = 'kb-acme' $$);
-- nor can it write the tables, or call the internal functions
SELECT pg_temp.err($$ INSERT INTO maester.kb (tenant, name, owner, profile_id, chunking, fts_config) VALUES ('kb-acme', 'x', 'kb_globex', 1, '{}', 'english') $$);
SELECT pg_temp.err($$ UPDATE maester.document SET stage = 'queued' $$);
SELECT pg_temp.err($$ SELECT maester.ingest_as('kb-acme', 'kb_acme', 'manual', 'x', 'forged', 'text/plain', NULL, '{}') $$);
SELECT pg_temp.err($$ SELECT maester.kb_put(k, 'x', 'forged', NULL, 'text/plain', NULL, '{}', NULL) FROM maester.kb k $$);
-- its own kb of the same name is another one
SELECT maester.kb_create('manual', 'kb-emb') > 0 AS created;
SELECT name, tenant FROM maester.kb;
SELECT maester.kb_drop('manual');
SET ROLE kb_acme;

-- kb_sync: a table kept in the kb by statement-level triggers
RESET ROLE;
CREATE TABLE kb_pages (id int PRIMARY KEY, body text, title text, section text, views int DEFAULT 0);
ALTER TABLE kb_pages OWNER TO kb_acme;
SET ROLE kb_acme;
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_pages', 'id', 'nope') $$);
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'maester.usage', 'request_id', 'model') $$);
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_pages', 'id', 'views') $$);
RESET ROLE;
CREATE TABLE kb_other (id int PRIMARY KEY, body text);
SET ROLE kb_acme;
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_other', 'id', 'body') $$);
INSERT INTO kb_pages (id, body, title, section)
SELECT row_number() OVER (ORDER BY f), regexp_replace(pg_temp.page(f), '<[^>]*>', ' ', 'g'), f, 'reference'
  FROM pages ORDER BY f LIMIT 5;
SELECT maester.kb_sync('manual', 'kb_pages', 'id', 'body', 'title', '{section}') AS ingested_now;
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_pages', 'id', 'body') $$);
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT count(*) AS synced, bool_and(stage = 'indexed') AS indexed, min(metadata ->> 'section') AS section
  FROM maester.document WHERE source IS NOT NULL;
-- an update of a column that is not synced sends nothing and makes no version
SELECT pg_temp.inputs_sent() AS sent_before, (SELECT count(*) FROM maester.document) AS docs_before \gset
UPDATE kb_pages SET views = views + 1;
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT pg_temp.inputs_sent() - :sent_before AS sent, (SELECT count(*) FROM maester.document) - :docs_before AS new_versions;
-- a synced column: metadata changes in place, content makes a version
UPDATE kb_pages SET section = 'changed' WHERE id = 1;
UPDATE kb_pages SET body = body || ' An appended sentence about replication slots.' WHERE id = 2;
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT external_id, version, current, metadata ->> 'section' AS section FROM maester.document
 WHERE source IS NOT NULL AND external_id IN ('1', '2') ORDER BY 1, 2;
-- an id that changes, a delete, a NULL content, a truncate
UPDATE kb_pages SET id = 50 WHERE id = 5;
DELETE FROM kb_pages WHERE id = 4;
UPDATE kb_pages SET body = NULL WHERE id = 3;
SELECT string_agg(external_id, ',' ORDER BY external_id) AS synced_ids FROM maester.document
 WHERE source IS NOT NULL AND (current OR superseded_at IS NULL);
TRUNCATE kb_pages;
SELECT count(*) AS after_truncate FROM maester.document WHERE source IS NOT NULL;
-- a synced column whose type changes after kb_sync: the trigger refuses
-- the write (it reads columns with maester's privileges: no user-defined
-- cast may run there)
RESET ROLE;
CREATE TYPE kb_evil AS (x text);
ALTER TYPE kb_evil OWNER TO kb_acme;
SET ROLE kb_acme;
ALTER TABLE kb_pages ALTER COLUMN title TYPE kb_evil USING row(title)::kb_evil;
SELECT pg_temp.err($$ INSERT INTO kb_pages (id, body, title) VALUES (90, 'x', '(y)') $$);
ALTER TABLE kb_pages ALTER COLUMN title TYPE text USING (title).x;
-- a bulk insert keeps no lock per row
INSERT INTO kb_pages (id, body) SELECT 1000 + i, 'Row ' || i || ' of a bulk load.' FROM generate_series(1, 10000) i;
SELECT count(*) AS bulk_documents FROM maester.document WHERE source = 'kb_pages'::regclass AND external_id::int > 1000;
DELETE FROM kb_pages WHERE id > 1000;
SELECT maester.kb_unsync('manual', 'kb_pages') AS unsynced, maester.kb_unsync('manual', 'kb_pages') AS again;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgname LIKE 'maester_kb_%';
-- tables that cannot be kept: partitioned, with inheritance, another
-- role's (even with TRIGGER: the first read is maester's), an id whose
-- text depends on settings
RESET ROLE;
CREATE TABLE kb_parted (id int, body text) PARTITION BY RANGE (id);
CREATE TABLE kb_parent (id int PRIMARY KEY, body text);
CREATE TABLE kb_child () INHERITS (kb_parent);
CREATE TABLE kb_ts (id timestamptz PRIMARY KEY, body text);
ALTER TABLE kb_parted OWNER TO kb_acme;
ALTER TABLE kb_parent OWNER TO kb_acme;
ALTER TABLE kb_ts OWNER TO kb_acme;
GRANT SELECT, TRIGGER ON kb_other TO kb_acme;
SET ROLE kb_acme;
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_parted', 'id', 'body') $$);
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_parent', 'id', 'body') $$);
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_other', 'id', 'body') $$);
SELECT pg_temp.err($$ SELECT maester.kb_sync('manual', 'kb_ts', 'id', 'body') $$);
-- a kept table that is dropped: kb_unsync and kb_drop still work
RESET ROLE;
CREATE TABLE kb_gone (id int PRIMARY KEY, body text);
ALTER TABLE kb_gone OWNER TO kb_acme;
SET ROLE kb_acme;
SELECT maester.kb_create('doomed', 'kb-emb') > 0 AS created;
SELECT maester.kb_sync('doomed', 'kb_gone', 'id', 'body') AS ingested;
DROP TABLE kb_gone;
SELECT maester.kb_drop('doomed') AS dropped;
SELECT pg_temp.err($$ SELECT maester.kb_create(E'bad\nname', 'kb-emb') $$);
RESET ROLE;
DROP TABLE kb_parted, kb_parent, kb_child, kb_ts;
DROP TYPE kb_evil;
SET ROLE kb_acme;


-- kb_reindex: the estimate first; the new profile is built beside the
-- active one, then switched to at once; vector spaces never mix
SELECT pg_temp.err($$ SELECT * FROM maester.kb_reindex('manual', 'kb-emb') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.kb_reindex('manual', 'kb-emb-large') $$);
SELECT chunks = (SELECT count(*) FROM maester.chunk c JOIN maester.document d ON d.id = c.document_id
                  WHERE d.superseded_at IS NULL) AS all_chunks, tokens > 0 AS tokens, estimated_cost_usd > 0 AS priced
  FROM maester.kb_reindex('manual', 'kb-emb-large', dimensions => 512, dry_run => true);
SELECT next_profile_id IS NULL AS dry_run_changed_nothing FROM maester.kb;
-- a blocking budget the estimate does not fit refuses it before anything is sent
RESET ROLE;
INSERT INTO maester.budget (tenant, period, limit_usd, action) VALUES ('kb-acme', 'total', 0.000001, 'block');
SET ROLE kb_acme;
SELECT regexp_replace(pg_temp.err($$ SELECT * FROM maester.kb_reindex('manual', 'kb-emb-large', dimensions => 512) $$),
                      'budget \d+ by [0-9.]+', 'budget N by X') AS err;
SELECT next_profile_id IS NULL AS refused FROM maester.kb;
RESET ROLE;
DELETE FROM maester.budget WHERE tenant = 'kb-acme';
SET ROLE kb_acme;
-- a reindex is cancelled by asking for the active profile again
SELECT profile_id > 0 AS started FROM maester.kb_reindex('manual', 'kb-emb-down', dimensions => 64);
SELECT chunks, tokens FROM maester.kb_reindex('manual', 'kb-emb');
SELECT next_profile_id IS NULL AS cancelled, paused_reason IS NULL AS running FROM maester.kb;
SELECT profile_id > 0 AS started FROM maester.kb_reindex('manual', 'kb-emb-large', dimensions => 512);
SELECT maester.kb_wait('manual', '60 s') AS done;
SELECT p.model, p.dimensions, p.served_dimensions, k.next_profile_id IS NULL AS switched
  FROM maester.kb k JOIN maester.embedding_profile p ON p.id = k.profile_id;
SELECT count(DISTINCT e.profile_id) AS profiles, min(array_length(e.embedding, 1)) AS dims,
       max(array_length(e.embedding, 1)) AS dims_max,
       count(*) = (SELECT count(*) FROM maester.chunk c JOIN maester.document d ON d.id = c.document_id
                    WHERE d.current) AS every_current_chunk
  FROM maester.chunk_embedding e;

-- a rollout of the answer prompt: each ask reserves the version it sends
RESET ROLE;
SELECT (maester.prompt_register('maester_answer',
          'Sources, at length: {sources}' || repeat(' Read them all.', 2000) || ' Question: {question}',
          version => 'long')).version AS registered;
SELECT label, weights FROM maester.prompt_set_rollout('maester_answer', 'production', '{"v1": 1, "long": 1}');
SET ROLE kb_acme;
CREATE TEMP TABLE rolled AS
SELECT maester.ask('manual', 'How does CREATE ROLE define a role that can log in?', 'kb-answer', 4,
                   '{"prompt_version": "production"}') AS r
  FROM generate_series(1, 16);
RESET ROLE;
SELECT count(DISTINCT r ->> 'prompt_version') AS versions_used,
       bool_and((SELECT sum(u.estimated_cost_usd) FROM maester.usage u
                  WHERE u.trace_id = r ->> 'trace_id' AND u.status = 'ok')
                <= (r -> 'cost' ->> 'reserved_usd')::numeric) AS each_within_reserved
  FROM rolled;
DROP TABLE rolled;

-- the functions say what they do
SELECT p.proname, obj_description(p.oid, 'pg_proc') IS NOT NULL AS commented
  FROM pg_proc p WHERE p.pronamespace = 'maester'::regnamespace
   AND (p.proname LIKE 'kb%' OR p.proname IN ('ingest', 'ingest_as', 'estimate_tokens'))
   AND obj_description(p.oid, 'pg_proc') IS NULL;
SELECT maester.kb_drop('manual') AS dropped FROM (SELECT set_config('maester.tenant', 'kb-acme', false)) s;
RESET maester.tenant;
DROP TABLE kb_other, kb_pages;
DELETE FROM maester.tenant_member WHERE role IN ('kb_acme', 'kb_globex');
DROP ROLE kb_acme;
DROP ROLE kb_globex;
