-- src/sql/functions/97_answers.sql: Answers with citations: maester.ask.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.
--
-- ask runs as the caller (its search, its call, its budgets and ledger
-- rows are the caller's); what it writes as maester (the answer prompt
-- when it is missing, the ask's spans) goes through kb_dispatch (src/kb.c),
-- which takes the caller's tenant itself.

-- The answer prompt, registered when missing (first ask)
CREATE FUNCTION maester.kb_answer_prompt()
RETURNS text
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_answer_prompt() IS
    'Internal: registers maester.ask''s answer prompt (maester_answer, version v1) when the registry has none, and returns its name.';

CREATE FUNCTION maester.kb_answer_prompt_as(tenant text, role name)
RETURNS text
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM maester.prompt p WHERE p.name = 'maester_answer') THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('maester.kb_answer_prompt', 0));
        IF NOT EXISTS (SELECT FROM maester.prompt p WHERE p.name = 'maester_answer') THEN
            PERFORM maester.prompt_register('maester_answer',
                template => E'Sources:\n\n{sources}\n\nQuestion: {question}',
                version => 'v1',
                system_template => 'You answer questions from the numbered sources you are given, and from nothing else. '
                    'After every sentence that uses a source, cite it with its number in square brackets, like [2] or [1][3]. '
                    'Cite only numbers that are in the sources. If the sources do not answer the question, say so in one sentence '
                    'and cite nothing.',
                description => 'maester.ask''s answer prompt: numbered sources, then the question; the model cites sources as [n]. Register a new version (and point the label production at it) to change it.');
        END IF;
    END IF;
    RETURN 'maester_answer';
END
$$;

COMMENT ON FUNCTION maester.kb_answer_prompt_as(text, name) IS
    'Internal: maester.kb_answer_prompt as the owner.';

-- A span of an ask's trace, in the caller's tenant
CREATE FUNCTION maester.kb_ask_span(trace_id text, span_id text, parent_span_id text, name text,
                                    started timestamptz, status text, attributes jsonb)
RETURNS void
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_ask_span(text, text, text, text, timestamptz, text, jsonb) IS
    'Internal: writes a span of maester.ask''s trace in the caller''s tenant.';

CREATE FUNCTION maester.kb_ask_span_as(tenant text, role name, trace_id text, span_id text, parent_span_id text,
                                       name text, started timestamptz, status text, attributes jsonb)
RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO maester.span (trace_id, span_id, parent_span_id, name, started_at, duration_us, status,
                              attributes, tenant)
    SELECT trace_id, span_id, parent_span_id, name, started,
           greatest(0, (extract(epoch FROM clock_timestamp() - started) * 1000000)::bigint),
           coalesce(status, 'ok'), coalesce(attributes, '{}'), tenant
     WHERE trace_id ~ '^[0-9a-f]{32}$' AND span_id ~ '^[0-9a-f]{16}$'
       AND name = ANY (ARRAY['ask', 'retrieve'])
    ON CONFLICT DO NOTHING
$$;

COMMENT ON FUNCTION maester.kb_ask_span_as(text, name, text, text, text, text, timestamptz, text, jsonb) IS
    'Internal: maester.kb_ask_span as the owner.';

-- The checks of an answer against its sources, without a model
CREATE FUNCTION maester.citation_checks(answer text, sources text[], fts_config regconfig DEFAULT 'english')
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cited int[];
    invalid int[];
    sentences int := 0;
    with_citation int := 0;
    support float8 := 0;
    supported int := 0;
    s text;
    nums int[];
    words text[];
    src text[];
    found int;
BEGIN
    IF answer IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(DISTINCT m[1]::int) INTO cited
      FROM regexp_matches(answer, '\[(\d{1,6})\]', 'g') m;
    SELECT array_agg(c ORDER BY c) INTO invalid
      FROM unnest(coalesce(cited, '{}')) c WHERE c < 1 OR c > coalesce(cardinality(sources), 0);
    FOR s IN SELECT x FROM regexp_split_to_table(answer, '(?<=[.!?])\s+|\n+') x WHERE x ~ '\w' LOOP
        sentences := sentences + 1;
        SELECT array_agg(DISTINCT m[1]::int) INTO nums FROM regexp_matches(s, '\[(\d{1,6})\]', 'g') m;
        CONTINUE WHEN nums IS NULL;
        with_citation := with_citation + 1;
        -- the share of the sentence's content words (lexemes) found in the sources it cites
        words := tsvector_to_array(to_tsvector(fts_config, regexp_replace(s, '\[\d+\]', ' ', 'g')));
        CONTINUE WHEN cardinality(words) = 0;
        SELECT array_agg(DISTINCT l) INTO src
          FROM unnest(nums) n, unnest(tsvector_to_array(to_tsvector(fts_config, sources[n]))) l
         WHERE n BETWEEN 1 AND cardinality(sources);
        SELECT count(*) INTO found FROM unnest(words) w WHERE w = ANY (coalesce(src, '{}'));
        support := support + found::float8 / cardinality(words);
        supported := supported + 1;
    END LOOP;
    RETURN jsonb_build_object(
        'citations_valid', invalid IS NULL,
        'invalid_citations', coalesce(to_jsonb(invalid), '[]'),
        'citation_coverage', CASE WHEN sentences > 0 THEN round((with_citation::numeric / sentences), 4) END,
        'citation_support', CASE WHEN supported > 0 THEN round((support / supported)::numeric, 4) END);
END
$$;

COMMENT ON FUNCTION maester.citation_checks(text, text[], regconfig) IS
    'Checks an answer''s [n] citations against its numbered sources, without a model: citations_valid (every [n] names a source; the others are listed in invalid_citations), citation_coverage (the share of sentences with a citation), citation_support (over cited sentences, the share of their content words -- lexemes of fts_config -- found in the sources they cite).';

-- The ask's joint reservation (askbudget.c)
CREATE FUNCTION maester.ask_budget_open(embedding_model text, embedding_input text, prompt_name text,
                                        prompt_version text, variables jsonb, model text, max_tokens integer,
                                        options jsonb)
RETURNS numeric
AS 'MODULE_PATHNAME', 'ask_budget_open'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.ask_budget_open(text, text, text, text, jsonb, text, integer, jsonb) IS
    'Internal (maester.ask): reserves in each blocking budget of the caller''s tenant, as one amount, what the ask''s two calls may cost at worst -- the embedding of embedding_input (NULL: none) with embedding_model, and llm_generate of the prompt with these variables, model, max_tokens and options, each prepared as it will be sent and priced at its dearest target -- or raises MB001 and sends nothing. Returns the amount in USD (NULL: a part has no price). The two calls then reserve out of it; maester.ask_budget_close or the end of the statement that opened it gives back the rest.';

CREATE FUNCTION maester.ask_budget_close()
RETURNS void
AS 'MODULE_PATHNAME', 'ask_budget_close'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.ask_budget_close() IS
    'Internal (maester.ask): gives back what the ask''s reservation still holds.';

CREATE FUNCTION maester.ask(kb text, question text, model text DEFAULT NULL, k integer DEFAULT 8,
                            options jsonb DEFAULT '{}')
RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
    t1 timestamptz;
    tp text[];
    trace text;
    root text := left(md5(random()::text || clock_timestamp()::text), 16);
    saved_tp text := current_setting('maester.traceparent', true);
    hits maester.search_hit[];
    n int;
    sources text;
    texts text[];
    g maester.generation;
    cites jsonb;
    checks jsonb;
    emb_cost numeric;
    emb_ids jsonb;
    prof record;
    key text;
    mode text := coalesce(options ->> 'mode', 'hybrid');
    status text;
    cfg regconfig;
    evaluation jsonb;
    worst numeric;
    gen_options jsonb;
    prompt text;
    answer_version text;
    retrieve_span text;
    result jsonb;
BEGIN
    IF question IS NULL OR btrim(question) = '' THEN
        RAISE EXCEPTION 'ask needs a question' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k IS NULL OR k < 1 OR k > 50 THEN
        RAISE EXCEPTION 'k must be between 1 and 50, not %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF options IS NULL OR jsonb_typeof(options) <> 'object' THEN
        RAISE EXCEPTION 'ask options must be a JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR key IN SELECT jsonb_object_keys(options) LOOP
        IF key <> ALL (ARRAY['mode', 'filter', 'search', 'prompt_version', 'max_tokens', 'generate', 'min_coverage', 'min_support']) THEN
            RAISE EXCEPTION 'unknown ask option "%"', key
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'ask options are mode, filter, search (search''s options), prompt_version, max_tokens, generate (llm_generate''s options), min_coverage and min_support.';
        END IF;
    END LOOP;
    IF options ? 'max_tokens' AND NOT coalesce(CASE WHEN jsonb_typeof(options -> 'max_tokens') = 'number'
                                                    THEN (options ->> 'max_tokens')::numeric BETWEEN 1 AND 2147483647
                                                         AND (options ->> 'max_tokens')::numeric % 1 = 0 END, false) THEN
        RAISE EXCEPTION 'ask option max_tokens must be a positive integer, not %', options -> 'max_tokens'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    gen_options := coalesce(options -> 'generate', '{}');
    IF jsonb_typeof(gen_options) <> 'object' THEN
        RAISE EXCEPTION 'ask option generate must be a JSON object (llm_generate''s options)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    gen_options := gen_options || jsonb_build_object('tags', coalesce(gen_options -> 'tags', '{}')
                                                             || jsonb_build_object('kb', kb));
    SELECT p.id, p.model, p.served_model, p.dimensions, p.query_prefix, x.tenant, x.max_source_bytes
      INTO prof
      FROM maester.kb x JOIN maester.embedding_profile p ON p.id = x.profile_id
     WHERE x.tenant = maester.current_tenant() AND x.name = kb;
    prompt := maester.kb_answer_prompt();
    -- the version (a label in a rollout picks one): the same for the
    -- reservation and for the call
    answer_version := (maester.prompt_render(prompt, jsonb_build_object('question', question, 'sources', ''),
                                             options ->> 'prompt_version', gen_options ->> 'sticky_key')).version;
    -- the whole ask reserved as one amount before anything is sent
    -- (askbudget.c): the question's embedding, and the answer over k
    -- sources of the kb's largest with the output limit, each at its
    -- dearest target; the two calls then take their reservations from it
    IF prof.id IS NOT NULL THEN
        worst := maester.ask_budget_open(
            prof.model,
            CASE WHEN mode <> 'fts' THEN coalesce(prof.query_prefix, '') || question END,
            prompt, answer_version,
            jsonb_build_object('question', question, 'sources', repeat('x', k * prof.max_source_bytes)),
            model, (options ->> 'max_tokens')::int, gen_options);
    END IF;
    -- one trace: the application's, else a new one; every step is under the ask's root span
    tp := regexp_match(coalesce(saved_tp, ''), '^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$');
    trace := coalesce(tp[1], md5(random()::text || clock_timestamp()::text));
    PERFORM set_config('maester.traceparent', format('00-%s-%s-01', trace, root), true);

    -- retrieve (the query's embedding is a child of its span)
    t1 := clock_timestamp();
    retrieve_span := left(md5(random()::text || clock_timestamp()::text), 16);
    PERFORM set_config('maester.traceparent', format('00-%s-%s-01', trace, retrieve_span), true);
    SELECT array_agg(s ORDER BY s.rank) INTO hits
      FROM maester.search(kb, question, k, mode, options -> 'filter', coalesce(options -> 'search', '{}')) s;
    PERFORM set_config('maester.traceparent', format('00-%s-%s-01', trace, root), true);
    n := coalesce(cardinality(hits), 0);
    PERFORM maester.kb_ask_span(trace, retrieve_span, root, 'retrieve', t1, 'ok',
        jsonb_build_object('maester.kb', kb, 'maester.search.mode', mode, 'maester.search.k', k, 'maester.search.hits', n,
                           'maester.embedding_profile_id', prof.id,
                           'maester.search.ranks', (SELECT jsonb_agg(jsonb_build_object('chunk', h.chunk_id,
                                                          'vector', h.vector_rank, 'fts', h.fts_rank) ORDER BY h.rank)
                                                      FROM unnest(hits) h)));
    IF n = 0 THEN
        PERFORM maester.ask_budget_close();
        PERFORM maester.kb_ask_span(trace, root, coalesce(tp[2], NULL), 'ask', t0, 'ok',
            jsonb_build_object('maester.kb', kb, 'maester.ask.sources', 0));
        PERFORM set_config('maester.traceparent', coalesce(saved_tp, ''), true);
        RETURN jsonb_build_object('answer', NULL, 'reason', 'no source matched the question', 'citations', '[]'::jsonb,
                                  'trace_id', trace, 'embedding_profile', prof.id);
    END IF;

    -- numbered sources, then the registered answer prompt through the gateway
    SELECT string_agg(format('[%s] %s%s%s', h.rank, coalesce(h.title, h.external_id),
                             CASE WHEN cardinality(h.heading_path) > 0
                                  THEN ' > ' || array_to_string(h.heading_path, ' > ') ELSE '' END,
                             E'\n' || h.content), E'\n\n' ORDER BY h.rank),
           array_agg(h.content ORDER BY h.rank)
      INTO sources, texts
      FROM unnest(hits) h;
    g := maester.llm_generate(prompt_name => prompt,
                              prompt_version => answer_version,
                              variables => jsonb_build_object('question', question, 'sources', sources),
                              model => model,
                              max_tokens => (options ->> 'max_tokens')::int,
                              options => jsonb_set(gen_options, '{tags,ask}', to_jsonb(trace)));
    PERFORM maester.ask_budget_close();

    -- citations: every [n] of the answer, with its passage
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'n', c.n, 'chunk_id', h.chunk_id, 'document_id', h.document_id,
               'document_version', h.document_version, 'external_id', h.external_id, 'title', h.title,
               'section', h.heading_path, 'char_start', h.start_offset, 'char_end', h.end_offset,
               'quote', left(h.content, 300)) ORDER BY c.n), '[]')
      INTO cites
      FROM (SELECT DISTINCT m[1]::int AS n FROM regexp_matches(coalesce(g.content, ''), '\[(\d{1,6})\]', 'g') m) c
      JOIN unnest(hits) h ON h.rank = c.n;
    cfg := (SELECT x.fts_config FROM maester.kb x WHERE x.tenant = maester.current_tenant() AND x.name = kb);
    checks := maester.citation_checks(g.content, texts, cfg);
    -- evaluate()'s citation checks (citecheck.c), with the figures
    evaluation := maester.evaluate(coalesce(g.content, ''),
                      jsonb_build_object('citations_valid', true,
                                         'citation_coverage', coalesce((options ->> 'min_coverage')::numeric, 0.5),
                                         'citation_support', coalesce((options ->> 'min_support')::numeric, 0.5)),
                      jsonb_build_object('sources', to_jsonb(texts), 'fts_config', cfg::text)) || checks;
    status := evaluation ->> 'status';
    -- what the query's embedding cost (its ledger rows are in this trace)
    SELECT sum(u.cost_usd), jsonb_agg(u.request_id) INTO emb_cost, emb_ids
      FROM maester.usage u WHERE u.trace_id = trace AND u.purpose = 'embedding';

    result := jsonb_build_object(
        'answer', g.content,
        'citations', cites,
        'invalid_citations', checks -> 'invalid_citations',
        'trace_id', trace,
        'request_ids', coalesce(emb_ids, '[]') || to_jsonb(g.request_id),
        'embedding_profile', jsonb_build_object('id', prof.id, 'model', prof.model, 'served_model', prof.served_model,
                                                'dimensions', prof.dimensions),
        'model', g.model,
        'prompt_name', g.prompt_name, 'prompt_version', g.prompt_version, 'prompt_hash', g.prompt_hash,
        'cost', jsonb_build_object('embedding_usd', coalesce(emb_cost, 0), 'generation_usd', g.cost_usd,
                                   'total_usd', coalesce(emb_cost, 0) + coalesce(g.cost_usd, 0),
                                   'reserved_usd', worst),
        'evaluation', evaluation,
        'sources', n);
    PERFORM maester.kb_ask_span(trace, root, tp[2], 'ask', t0, 'ok',
        jsonb_build_object('maester.kb', kb, 'maester.ask.sources', n, 'maester.ask.citations', jsonb_array_length(cites),
                           'maester.evaluation.status', status, 'maester.cost_usd', result -> 'cost' -> 'total_usd',
                           'maester.reserved_usd', worst,
                           'gen_ai.request.model', model, 'gen_ai.response.model', g.model));
    PERFORM set_config('maester.traceparent', coalesce(saved_tp, ''), true);
    RETURN result;
END
$$;

COMMENT ON FUNCTION maester.ask(text, text, text, integer, jsonb) IS
    'Answers a question from a knowledge base of the current tenant, with citations: maester.search (k sources), the registered answer prompt maester_answer over the numbered sources, llm_generate (routing, fallback, budgets), and the answer''s [n] markers as citations down to the passage (chunk, document version, section, character offsets). Returns {answer, citations, invalid_citations, trace_id, request_ids, embedding_profile, model, prompt_name, prompt_version, prompt_hash, cost, evaluation, sources}; evaluation holds citation_checks and passes when every citation is valid and coverage and support are at least min_coverage and min_support (0.5); cost.reserved_usd is what the whole ask reserved against the tenant''s blocking budgets before anything was sent (MB001 when it does not fit). options: mode, filter, search, prompt_version, max_tokens, generate (llm_generate''s options), min_coverage, min_support.';

GRANT EXECUTE ON FUNCTION maester.ask(text, text, text, integer, jsonb),
    maester.citation_checks(text, text[], regconfig),
    maester.kb_answer_prompt(), maester.kb_ask_span(text, text, text, text, timestamptz, text, jsonb),
    maester.ask_budget_open(text, text, text, text, jsonb, text, integer, jsonb), maester.ask_budget_close()
    TO maester_user;

-- Retrieval evaluation
CREATE FUNCTION maester.kb_eval_record(kb text, run uuid, mode text, k integer, cases integer,
                                       recall double precision, mrr double precision, ndcg double precision,
                                       details jsonb)
RETURNS bigint
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_eval_record(text, uuid, text, integer, integer, double precision, double precision, double precision, jsonb) IS
    'Internal: records a mode of a kb_eval run for the caller''s tenant.';

CREATE FUNCTION maester.kb_eval_record_as(tenant text, role name, kb text, run uuid, mode text, k integer, cases integer,
                                          recall double precision, mrr double precision, ndcg double precision,
                                          details jsonb)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO maester.kb_eval_run (run, tenant, kb_id, profile_id, mode, k, cases, recall, mrr, ndcg, details, created_by)
    SELECT run, k.tenant, k.id, k.profile_id, mode, kb_eval_record_as.k, cases, recall, mrr, ndcg, details, role
      FROM maester.kb_find(tenant, kb) k
    RETURNING id
$$;

COMMENT ON FUNCTION maester.kb_eval_record_as(text, name, text, uuid, text, integer, integer, double precision, double precision, double precision, jsonb) IS
    'Internal: maester.kb_eval_record as the owner.';

CREATE FUNCTION maester.kb_eval(kb text, cases jsonb, k integer DEFAULT 10,
                                modes text[] DEFAULT '{fts,vector,hybrid}')
RETURNS SETOF maester.kb_eval_run
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    run uuid := md5(random()::text || clock_timestamp()::text)::uuid;
    m text;
    c jsonb;
    found_docs text[];
    rel text[];
    first_rank int;
    n int;
    sum_recall float8;
    sum_rr float8;
    sum_ndcg float8;
    dcg float8;
    idcg float8;
    details jsonb;
    rid bigint;
BEGIN
    IF cases IS NULL OR jsonb_typeof(cases) <> 'array' OR jsonb_array_length(cases) = 0 THEN
        RAISE EXCEPTION 'kb_eval needs a non-empty JSON array of cases {"query": ..., "relevant": [external ids]}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF k IS NULL OR k < 1 OR k > 100 THEN
        RAISE EXCEPTION 'k must be between 1 and 100, not %', k USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR c IN SELECT x FROM jsonb_array_elements(cases) x LOOP
        IF jsonb_typeof(c -> 'query') IS DISTINCT FROM 'string' OR jsonb_typeof(c -> 'relevant') IS DISTINCT FROM 'array'
           OR jsonb_array_length(c -> 'relevant') = 0 THEN
            RAISE EXCEPTION 'a kb_eval case must be {"query": "...", "relevant": ["external id", ...]}, not %', left(c::text, 200)
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    FOREACH m IN ARRAY coalesce(modes, '{}') LOOP
        IF m <> ALL (ARRAY['fts', 'vector', 'hybrid']) THEN
            RAISE EXCEPTION 'kb_eval modes are fts, vector and hybrid, not "%"', m USING ERRCODE = 'invalid_parameter_value';
        END IF;
        n := 0; sum_recall := 0; sum_rr := 0; sum_ndcg := 0; details := '[]';
        FOR c IN SELECT x FROM jsonb_array_elements(cases) x LOOP
            rel := ARRAY(SELECT jsonb_array_elements_text(c -> 'relevant'));
            -- the documents found, each at the rank of its best passage
            SELECT array_agg(e ORDER BY r) INTO found_docs
              FROM (SELECT h.external_id AS e, min(h.rank) AS r
                      FROM maester.search(kb, c ->> 'query', k, m) h GROUP BY h.external_id) f;
            found_docs := coalesce(found_docs, '{}');
            SELECT min(i) INTO first_rank FROM generate_subscripts(found_docs, 1) i WHERE found_docs[i] = ANY (rel);
            SELECT coalesce(sum(1.0 / log(2, i + 1)), 0) INTO dcg
              FROM generate_subscripts(found_docs, 1) i WHERE found_docs[i] = ANY (rel);
            SELECT sum(1.0 / log(2, i + 1)) INTO idcg FROM generate_series(1, least(cardinality(rel), k)) i;
            n := n + 1;
            sum_recall := sum_recall + (SELECT count(DISTINCT x) FROM unnest(rel) x WHERE x = ANY (found_docs))::float8
                                       / (SELECT count(DISTINCT x) FROM unnest(rel) x);
            sum_rr := sum_rr + coalesce(1.0 / first_rank, 0);
            sum_ndcg := sum_ndcg + dcg / idcg;
            details := details || jsonb_build_array(jsonb_build_object('query', c ->> 'query', 'relevant', to_jsonb(rel),
                                                   'found', to_jsonb(found_docs), 'first_relevant_rank', first_rank));
        END LOOP;
        rid := maester.kb_eval_record(kb, run, m, k, n, sum_recall / n, sum_rr / n, sum_ndcg / n, details);
        RETURN QUERY SELECT * FROM maester.kb_eval_run r WHERE r.id = rid;
    END LOOP;
END
$$;

COMMENT ON FUNCTION maester.kb_eval(text, jsonb, integer, text[]) IS
    'Measures retrieval on a knowledge base of the current tenant: for each mode (fts, vector, hybrid), each case {"query", "relevant": [external ids]} is searched with maester.search (top k passages, counted per document at its best passage''s rank), and recall@k, MRR and nDCG@k (binary relevance) are averaged over the cases; each mode is a row of maester.kb_eval_run (with the active profile), returned.';

-- The cases in a table (or view) of the caller's: read as the caller, so
-- its privileges and row-level security apply
CREATE FUNCTION maester.kb_eval(kb text, cases regclass, k integer DEFAULT 10,
                                modes text[] DEFAULT '{fts,vector,hybrid}')
RETURNS SETOF maester.kb_eval_run
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    qtype regtype;
    rtype regtype;
    j jsonb;
BEGIN
    IF cases IS NULL THEN
        RAISE EXCEPTION 'kb_eval needs its cases' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT a.atttypid INTO qtype FROM pg_attribute a
     WHERE a.attrelid = cases AND a.attname = 'query' AND a.attnum > 0 AND NOT a.attisdropped;
    SELECT a.atttypid INTO rtype FROM pg_attribute a
     WHERE a.attrelid = cases AND a.attname = 'relevant' AND a.attnum > 0 AND NOT a.attisdropped;
    IF qtype IS NULL OR rtype IS NULL THEN
        RAISE EXCEPTION 'relation % has no column %', cases, CASE WHEN qtype IS NULL THEN 'query' ELSE 'relevant' END
            USING ERRCODE = 'undefined_column',
                  HINT = 'kb_eval''s cases table has a column query (text) and a column relevant (text[], jsonb array, or text: the external ids of the documents that answer it).';
    END IF;
    IF qtype NOT IN ('text'::regtype, 'character varying'::regtype)
       OR rtype NOT IN ('text[]'::regtype, 'character varying[]'::regtype, 'jsonb'::regtype,
                        'text'::regtype, 'character varying'::regtype) THEN
        RAISE EXCEPTION 'columns query % and relevant % of relation % have the wrong types', qtype, rtype, cases
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'query is text; relevant is text[], a jsonb array, or text (one external id).';
    END IF;
    EXECUTE format('SELECT jsonb_agg(jsonb_build_object(''query'', c.query, ''relevant'','
                   '  CASE WHEN c.relevant IS NULL OR jsonb_typeof(to_jsonb(c.relevant)) = ''array'' THEN to_jsonb(c.relevant)'
                   '       ELSE jsonb_build_array(c.relevant) END)) FROM %s c', cases)
       INTO j;
    RETURN QUERY SELECT * FROM maester.kb_eval(kb, coalesce(j, '[]'), k, modes);
END
$$;

COMMENT ON FUNCTION maester.kb_eval(text, regclass, integer, text[]) IS
    'maester.kb_eval over the rows of a table or view of the caller''s (read with the caller''s privileges and row-level security): column query (text) and column relevant (text[], jsonb array, or text: the external ids of the documents that answer it).';

-- A literal: JSON cases when it is a JSON array, else the name of a table
-- (no SET search_path: a table's name resolves in the caller's)
CREATE FUNCTION maester.kb_eval(kb text, cases text, k integer DEFAULT 10,
                                modes text[] DEFAULT '{fts,vector,hybrid}')
RETURNS SETOF maester.kb_eval_run
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    IF cases OPERATOR(pg_catalog.~) '^\s*\[' THEN
        RETURN QUERY SELECT * FROM maester.kb_eval(kb, cases::pg_catalog.jsonb, k, modes);
    ELSE
        RETURN QUERY SELECT * FROM maester.kb_eval(kb, cases::pg_catalog.regclass, k, modes);
    END IF;
END
$$;

COMMENT ON FUNCTION maester.kb_eval(text, text, integer, text[]) IS
    'maester.kb_eval with its cases as text: a JSON array of cases, or else the name of a table or view of cases (see the regclass form).';

GRANT EXECUTE ON FUNCTION maester.kb_eval(text, jsonb, integer, text[]),
    maester.kb_eval(text, regclass, integer, text[]), maester.kb_eval(text, text, integer, text[]),
    maester.kb_eval_record(text, uuid, text, integer, integer, double precision, double precision, double precision, jsonb)
    TO maester_user;
GRANT SELECT ON maester.kb_eval_run TO maester_user, maester_reader, maester_admin;
