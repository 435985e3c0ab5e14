-- src/sql/functions/95_knowledge.sql: Knowledge bases: kb_create, ingest,
-- kb_sync/kb_unsync, kb_delete_document, kb_drop, kb_retry, kb_reindex,
-- kb_wait, the kb_status view, and the steps the knowledge worker runs.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.
--
-- The user-facing functions are SECURITY DEFINER: they find the knowledge
-- base by name among the caller's tenant's own (maester.current_tenant(),
-- which only lets a session act as a tenant its role is mapped to), so a
-- caller never reaches another tenant's knowledge base, whatever name it
-- gives.  The kb_work_* functions are the knowledge worker's (src/kb.c) and
-- are granted to no one.

CREATE FUNCTION maester.kb_wake()
RETURNS void
AS 'MODULE_PATHNAME', 'kb_wake'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_wake() IS
    'Internal: asks for the database''s knowledge worker when the transaction commits.';

CREATE FUNCTION maester.kb_check_model(model text)
RETURNS void
AS 'MODULE_PATHNAME', 'kb_check_model'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.kb_check_model(text) IS
    'Internal: raises the gateway''s error (MG005) when no provider, model or route serves the name.';


-- The tenant's knowledge base of that name (42704 otherwise), locked
-- against concurrent changes when lock is true
CREATE FUNCTION maester.kb_find(tenant text, kb text, lock boolean DEFAULT false)
RETURNS maester.kb
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb;
BEGIN
    IF kb IS NULL THEN
        RAISE EXCEPTION 'the knowledge base name must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF lock THEN
        SELECT * INTO k FROM maester.kb x WHERE x.tenant = kb_find.tenant AND x.name = kb FOR NO KEY UPDATE;
    ELSE
        SELECT * INTO k FROM maester.kb x WHERE x.tenant = kb_find.tenant AND x.name = kb;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'knowledge base "%" does not exist', kb
            USING ERRCODE = 'undefined_object',
                  HINT = 'Knowledge bases are per tenant: see maester.kb, or create one with maester.kb_create.';
    END IF;
    RETURN k;
END
$$;

COMMENT ON FUNCTION maester.kb_find(text, text, boolean) IS
    'Internal: the tenant''s knowledge base of that name (42704 when it has none).';

-- The profile of these settings, created when new
CREATE FUNCTION maester.kb_profile(model text, dimensions integer, normalized boolean,
                                   document_prefix text, query_prefix text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h text;
    pid bigint;
BEGIN
    IF dimensions IS NOT NULL AND (dimensions < 1 OR dimensions > 16000) THEN
        RAISE EXCEPTION 'dimensions must be between 1 and 16000, not %', dimensions
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM maester.kb_check_model(model);
    -- vectors are stored in line (STORAGE PLAIN), in one 8 kB page
    IF dimensions > 2000 THEN
        RAISE EXCEPTION 'a knowledge base keeps vectors of at most 2000 dimensions, not %', dimensions
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Vectors are stored in line, uncompressed, for fast exact scans.';
    END IF;
    IF dimensions IS NULL AND (SELECT m.embedding_dimensions FROM maester.model m WHERE m.name = model) > 2000 THEN
        RAISE EXCEPTION 'model "%" makes vectors of % dimensions; a knowledge base keeps at most 2000', model,
                        (SELECT m.embedding_dimensions FROM maester.model m WHERE m.name = model)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Ask for fewer with dimensions => 2000 (or less): vectors are stored in line, uncompressed, for fast exact scans.';
    END IF;
    IF length(document_prefix) > 1000 OR length(query_prefix) > 1000 THEN
        RAISE EXCEPTION 'document and query prefixes have at most 1000 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    h := encode(sha256(convert_to(jsonb_build_object(
            'model', model, 'dimensions', dimensions, 'normalize', normalized,
            'document_prefix', document_prefix, 'query_prefix', query_prefix)::text, 'UTF8')), 'hex');
    INSERT INTO maester.embedding_profile AS p (model, dimensions, normalize, document_prefix,
                                                query_prefix, profile_hash)
    VALUES (model, dimensions, normalized, document_prefix, query_prefix, h)
    ON CONFLICT (profile_hash) DO NOTHING
    RETURNING p.id INTO pid;
    IF pid IS NULL THEN
        SELECT p.id INTO pid FROM maester.embedding_profile p WHERE p.profile_hash = h;
    END IF;
    RETURN pid;
END
$$;

COMMENT ON FUNCTION maester.kb_profile(text, integer, boolean, text, text) IS
    'Internal: the embedding profile of these settings (created when new; profiles are immutable and shared by hash).';

CREATE FUNCTION maester.kb_create(
    name            text,
    embedding_model text DEFAULT NULL,
    chunking        jsonb DEFAULT NULL,
    fts_config      regconfig DEFAULT 'english',
    dimensions      integer DEFAULT NULL,
    document_prefix text DEFAULT '',
    query_prefix    text DEFAULT '')
RETURNS bigint
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_create(text, text, jsonb, regconfig, integer, text, text) IS
    'Creates a knowledge base of the current tenant and returns its id. embedding_model: a model or route (NULL: the route default_embedding), checked now; chunking: {"max_tokens": 512, "overlap_tokens": 64} (maester.kb_chunking); fts_config: the text search configuration of its full-text vectors; dimensions, document_prefix, query_prefix: the rest of its embedding profile. Its embedding calls run as the creating role.';

CREATE FUNCTION maester.kb_create_as(
    tenant text, role name, name text, embedding_model text, chunking jsonb,
    fts_config regconfig, dimensions integer, document_prefix text, query_prefix text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    kid bigint;
    pid bigint;
BEGIN
    IF name IS NULL OR name = '' OR length(name) > 200 OR name ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION 'a knowledge base needs a name of 1 to 200 characters, without control characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF fts_config IS NULL THEN
        RAISE EXCEPTION 'fts_config must not be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    pid := maester.kb_profile(coalesce(embedding_model, 'default_embedding'), dimensions, true,
                              coalesce(document_prefix, ''), coalesce(query_prefix, ''));
    INSERT INTO maester.kb AS k (tenant, name, owner, profile_id, chunking, fts_config)
    VALUES (tenant, name, role, pid, maester.kb_chunking(chunking), fts_config)
    ON CONFLICT ON CONSTRAINT kb_tenant_name_key DO NOTHING
    RETURNING k.id INTO kid;
    IF kid IS NULL THEN
        RAISE EXCEPTION 'knowledge base "%" already exists', name
            USING ERRCODE = 'duplicate_object';
    END IF;
    RETURN kid;
END
$$;

COMMENT ON FUNCTION maester.kb_create_as(text, name, text, text, jsonb, regconfig, integer, text, text) IS
    'Internal: maester.kb_create for a tenant and role.';

-- One document version in: see maester.ingest
-- The largest source maester.ask may send of a document's chunks (its
-- format: "[n] title > path\ncontent\n\n"): the kb's bound only grows
CREATE FUNCTION maester.kb_note_source_bytes(doc bigint)
RETURNS void
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE maester.kb x SET max_source_bytes = m.bytes
      FROM (SELECT d.kb_id,
                   max(octet_length(coalesce(d.title, d.external_id)) + octet_length(c.content)
                       + CASE WHEN cardinality(c.heading_path) > 0
                              THEN 3 + octet_length(array_to_string(c.heading_path, ' > ')) ELSE 0 END
                       + 8) AS bytes
              FROM maester.document d JOIN maester.chunk c ON c.document_id = d.id
             WHERE d.id = doc GROUP BY d.kb_id) m
     WHERE x.id = m.kb_id AND m.bytes > x.max_source_bytes
$$;

COMMENT ON FUNCTION maester.kb_note_source_bytes(bigint) IS
    'Internal: raises the document''s knowledge base''s max_source_bytes to the largest of its chunks as a source of maester.ask (title, section path and text).';

CREATE FUNCTION maester.kb_put(k maester.kb, external_id text, content text, content_binary bytea,
                               mime text, title text, metadata jsonb, source regclass)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    h text;
    last maester.document;
    did bigint;
    tp text[];
    attempt int;
BEGIN
    IF external_id IS NULL OR external_id = '' THEN
        RAISE EXCEPTION 'a document needs a non-empty external id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(external_id) > 1000 THEN
        RAISE EXCEPTION 'an external id has at most 1000 characters'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF content IS NULL AND content_binary IS NULL THEN
        RAISE EXCEPTION 'the content of document "%" is NULL', external_id
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF mime IS NULL OR mime = '' THEN
        RAISE EXCEPTION 'the mime type of document "%" is missing', external_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF metadata IS NULL THEN
        metadata := '{}';
    ELSIF jsonb_typeof(metadata) <> 'object' THEN
        RAISE EXCEPTION 'the metadata of document "%" must be a JSON object', external_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    h := encode(sha256(coalesce(content_binary, convert_to(content, 'UTF8'))), 'hex');
    -- its trace: the caller's (maester.traceparent), else a new one
    tp := regexp_match(coalesce(current_setting('maester.traceparent', true), ''),
                       '^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$');
    -- the next version; an ingest of the same external id that commits
    -- meanwhile takes it first (the unique key says so, and this one reads
    -- again): no lock is held per document
    FOR attempt IN 1 .. 3 LOOP
    SELECT * INTO last FROM maester.document d
     WHERE d.kb_id = k.id AND d.external_id = kb_put.external_id
     ORDER BY d.version DESC LIMIT 1;
    IF FOUND AND last.content_hash = h AND last.mime = kb_put.mime THEN
        -- the same content: nothing to send; a new title or metadata is kept
        IF last.title IS DISTINCT FROM coalesce(kb_put.title, last.title)
           OR last.metadata IS DISTINCT FROM kb_put.metadata THEN
            UPDATE maester.document d
               SET title = coalesce(kb_put.title, d.title), metadata = kb_put.metadata,
                   updated_at = now()
             WHERE d.id = last.id;
            -- a longer title makes its chunks weigh more as ask's sources
            PERFORM maester.kb_note_source_bytes(last.id);
        END IF;
        RETURN last.id;
    END IF;
    -- a version still in the pipeline is overtaken by this one
    DELETE FROM maester.document d
     WHERE d.kb_id = k.id AND d.external_id = kb_put.external_id
       AND NOT d.current AND d.superseded_at IS NULL;
    INSERT INTO maester.document AS d (kb_id, tenant, external_id, version, content_hash, mime,
                                       title, metadata, content, content_binary, source,
                                       trace_id, span_id, parent_span_id)
    VALUES (k.id, k.tenant, external_id, coalesce(last.version, 0) + 1, h, mime,
            title, metadata, content, content_binary, source,
            coalesce(tp[1], md5(random()::text || clock_timestamp()::text)),
            left(md5(random()::text || clock_timestamp()::text), 16), tp[2])
    ON CONFLICT ON CONSTRAINT document_kb_id_external_id_version_key DO NOTHING
    RETURNING d.id INTO did;
    IF did IS NOT NULL THEN
        PERFORM maester.kb_wake();
        RETURN did;
    END IF;
    last := NULL;
    END LOOP;
    RAISE EXCEPTION 'document "%" is being ingested by another transaction', external_id
        USING ERRCODE = 'serialization_failure',
              HINT = 'Retry the transaction (under REPEATABLE READ or SERIALIZABLE the version it read is old).';
END
$$;

COMMENT ON FUNCTION maester.kb_put(maester.kb, text, text, bytea, text, text, jsonb, regclass) IS
    'Internal: one document version into a knowledge base (maester.ingest, kb_sync''s triggers).';

CREATE FUNCTION maester.ingest(kb text, external_id text, content text,
                               mime text DEFAULT 'text/plain', title text DEFAULT NULL,
                               metadata jsonb DEFAULT '{}')
RETURNS bigint
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.ingest(text, text, text, text, text, jsonb) IS
    'Puts a document into a knowledge base of the current tenant and returns its id at once; the knowledge worker parses, chunks, embeds and indexes it after commit. The same external id with the same content (SHA-256) and mime type is a no-op that sends and bills nothing (a new title or metadata is kept); changed content is a new version, and the previous one answers until it is indexed. mime: text/plain, text/markdown, text/html (application/pdf: the bytea form).';

CREATE FUNCTION maester.ingest(kb text, external_id text, content bytea,
                               mime text DEFAULT 'text/plain', title text DEFAULT NULL,
                               metadata jsonb DEFAULT '{}')
RETURNS bigint
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.ingest(text, text, bytea, text, text, jsonb) IS
    'maester.ingest for bytes: PDF (parsed by poppler''s pdftotext in a subprocess, under a time and memory limit), or text in the charset of the mime type''s parameter (UTF-8 by default), or HTML in the encoding it declares.';

CREATE FUNCTION maester.ingest_as(tenant text, role name, kb text, external_id text, content text,
                                  mime text, title text, metadata jsonb)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT maester.kb_put(maester.kb_find(tenant, kb), external_id, content, NULL, mime, title, metadata, NULL)
$$;

CREATE FUNCTION maester.ingest_as(tenant text, role name, kb text, external_id text, content bytea,
                                  mime text, title text, metadata jsonb)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT maester.kb_put(maester.kb_find(tenant, kb), external_id, NULL, content, mime, title, metadata, NULL)
$$;

COMMENT ON FUNCTION maester.ingest_as(text, name, text, text, text, text, text, jsonb) IS
    'Internal: maester.ingest for a tenant.';
COMMENT ON FUNCTION maester.ingest_as(text, name, text, text, bytea, text, text, jsonb) IS
    'Internal: maester.ingest (bytea) for a tenant.';

CREATE FUNCTION maester.kb_delete_document(kb text, external_id text)
RETURNS integer
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_delete_document(text, text) IS
    'Deletes every version of a document, with its chunks and vectors, and returns how many versions went.';

CREATE FUNCTION maester.kb_delete_document_as(tenant text, role name, kb text, external_id text)
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb);
    n integer;
BEGIN
    DELETE FROM maester.document d
     WHERE d.kb_id = k.id AND d.external_id = kb_delete_document_as.external_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.kb_delete_document_as(text, name, text, text) IS
    'Internal: maester.kb_delete_document for a tenant.';

CREATE FUNCTION maester.kb_retry(kb text)
RETURNS integer
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_retry(text) IS
    'Queues the knowledge base''s failed documents again (their retries start over) and resumes a paused queue at once; returns how many documents were queued.';

CREATE FUNCTION maester.kb_retry_as(tenant text, role name, kb text)
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb, true);
    n integer;
BEGIN
    -- (an interrupted batch's documents keep their chunks and vectors: only
    -- what was in flight is sent again)
    DELETE FROM maester.chunk c USING maester.document d
     WHERE c.document_id = d.id AND d.kb_id = k.id AND d.stage = 'failed'
       AND d.error_class IS DISTINCT FROM 'interrupted';
    UPDATE maester.document d
       SET stage = CASE WHEN d.error_class = 'interrupted' THEN 'chunked' ELSE 'queued' END,
           attempts = 0, next_attempt_at = NULL, error_class = NULL,
           error_message = NULL, parsed = CASE WHEN d.error_class = 'interrupted' THEN d.parsed END,
           updated_at = now(),
           span_id = left(md5(random()::text || clock_timestamp()::text), 16)
     WHERE d.kb_id = k.id AND d.stage = 'failed';
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE maester.kb x SET paused_reason = NULL, paused_until = NULL, pauses = 0 WHERE x.id = k.id;
    PERFORM maester.kb_wake();
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.kb_retry_as(text, name, text) IS
    'Internal: maester.kb_retry for a tenant.';

-- The price row of an embedding model (NULL when it has none)
CREATE FUNCTION maester.kb_price(model text)
RETURNS maester.price
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN maester.price_at(model);
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION maester.kb_price(text) IS
    'Internal: maester.price_at(model), or NULL when it has no price.';

CREATE FUNCTION maester.kb_reindex(kb text, embedding_model text, dimensions integer DEFAULT NULL,
                                   document_prefix text DEFAULT NULL, query_prefix text DEFAULT NULL,
                                   dry_run boolean DEFAULT false,
                                   OUT profile_id bigint, OUT chunks bigint, OUT tokens bigint,
                                   OUT estimated_cost_usd numeric)
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_reindex(text, text, integer, text, text, boolean) IS
    'Moves a knowledge base to another embedding profile, blue/green (the active profile again cancels a reindex that runs): the new vectors are made in the background while retrieval keeps the active profile, which is switched at once when every current document has its new vectors (the old ones are then deleted). Returns the new profile, the chunks and estimated tokens to embed and their estimated cost (NULL: no price known); dry_run only estimates. Budgets apply to its calls: a refusal pauses the queue with the reason.';

CREATE FUNCTION maester.kb_reindex_as(tenant text, role name, kb text, embedding_model text,
                                      dimensions integer, document_prefix text, query_prefix text,
                                      dry_run boolean,
                                      OUT profile_id bigint, OUT chunks bigint, OUT tokens bigint,
                                      OUT estimated_cost_usd numeric)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb, true);
    cur maester.embedding_profile;
    bs record;
BEGIN
    IF embedding_model IS NULL THEN
        RAISE EXCEPTION 'kb_reindex needs the embedding model to move to'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO cur FROM maester.embedding_profile p WHERE p.id = k.profile_id;
    profile_id := maester.kb_profile(embedding_model, dimensions, cur.normalize,
                                     coalesce(document_prefix, cur.document_prefix),
                                     coalesce(query_prefix, cur.query_prefix));
    IF profile_id = k.profile_id THEN
        IF k.next_profile_id IS NULL OR coalesce(dry_run, false) THEN
            RAISE EXCEPTION 'knowledge base "%" already uses this embedding profile', kb
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        -- back to the active profile: the reindex running is cancelled
        DELETE FROM maester.chunk_embedding e WHERE e.kb_id = k.id AND e.profile_id = k.next_profile_id;
        UPDATE maester.kb x SET next_profile_id = NULL, paused_reason = NULL, paused_until = NULL, pauses = 0
         WHERE x.id = k.id;
        chunks := 0;
        tokens := 0;
        estimated_cost_usd := 0;
        RETURN;
    END IF;
    SELECT count(*), coalesce(sum(c.token_estimate), 0) INTO chunks, tokens
      FROM maester.chunk c JOIN maester.document d ON d.id = c.document_id
     WHERE d.kb_id = k.id AND d.superseded_at IS NULL
       AND NOT EXISTS (SELECT FROM maester.chunk_embedding e
                        WHERE e.chunk_id = c.id AND e.profile_id = kb_reindex_as.profile_id);
    estimated_cost_usd := round(tokens * (maester.kb_price(embedding_model)).input_cost_per_million
                                / 1000000, 6);
    IF NOT coalesce(dry_run, false) THEN
        -- a blocking budget of the tenant that the estimate does not fit refuses it now
        SELECT b.* INTO bs FROM maester.budget_status b
         WHERE b.tenant = k.tenant AND b.action = 'block' AND b.prompt IS NULL
           AND (b.model IS NULL OR maester.model_identity(b.model) = maester.model_identity(embedding_model))
           AND b.remaining_usd < estimated_cost_usd
         ORDER BY b.remaining_usd LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'reindexing knowledge base "%" would exceed budget % by % USD', kb, bs.id,
                            estimated_cost_usd - bs.remaining_usd
                USING ERRCODE = 'MB001',
                      DETAIL = format('%s chunks, about %s tokens, estimated %s USD; the budget has %s USD left this %s.',
                                      chunks, tokens, estimated_cost_usd, bs.remaining_usd, bs.period),
                      HINT = 'kb_reindex(..., dry_run => true) estimates without starting.';
        END IF;
        UPDATE maester.kb x SET next_profile_id = kb_reindex_as.profile_id, paused_reason = NULL,
               paused_until = NULL, pauses = 0
         WHERE x.id = k.id;
        PERFORM maester.kb_wake();
    END IF;
END
$$;

COMMENT ON FUNCTION maester.kb_reindex_as(text, name, text, text, integer, text, text, boolean) IS
    'Internal: maester.kb_reindex for a tenant.';

CREATE FUNCTION maester.kb_wait(kb text, timeout interval DEFAULT '10 minutes')
RETURNS boolean
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_wait(text, interval) IS
    'Waits until the knowledge base has nothing left to do (every document indexed or failed, no reindex running): true, or false when the timeout came first (a paused queue keeps it waiting: see kb_status). Sees committed work only: call it after the ingesting transaction committed.';

CREATE FUNCTION maester.kb_wait_as(tenant text, role name, kb text, timeout interval)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb);
    deadline timestamptz := clock_timestamp() + coalesce(timeout, interval '10 minutes');
    busy boolean;
BEGIN
    LOOP
        SELECT EXISTS (SELECT FROM maester.document d
                        WHERE d.kb_id = k.id AND d.stage <> ALL (ARRAY['indexed', 'failed']))
               OR x.next_profile_id IS NOT NULL
          INTO busy
          FROM maester.kb x WHERE x.id = k.id;
        IF NOT coalesce(busy, false) THEN
            RETURN true;
        END IF;
        IF clock_timestamp() >= deadline THEN
            RETURN false;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
END
$$;

COMMENT ON FUNCTION maester.kb_wait_as(text, name, text, interval) IS
    'Internal: maester.kb_wait for a tenant.';

-- kb_sync: the columns a kb_source names, checked against the table as it
-- is now: NULL when they are fine, else what is wrong.  The triggers read
-- these columns with maester's privileges, so each must be of a built-in
-- base type (no user-defined cast, output function or operator may run
-- there), the content text-like or bytea, and the id of a type whose text
-- form depends on no setting (the external id must not change with
-- TimeZone or DateStyle).  Checked at kb_sync and at every trigger run
-- (a column's type may change after kb_sync).
CREATE FUNCTION maester.kb_sync_check(source regclass, id_column name, content_column name,
                                      title_column name, metadata_columns name[])
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col name;
    typ oid;
BEGIN
    FOREACH col IN ARRAY ARRAY[id_column, content_column, title_column] || coalesce(metadata_columns, '{}') LOOP
        CONTINUE WHEN col IS NULL;
        SELECT a.atttypid INTO typ FROM pg_attribute a
         WHERE a.attrelid = source AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
        IF NOT FOUND THEN
            RETURN format('column "%s" of %s does not exist', col, source);
        END IF;
        IF typ >= 16384 OR (SELECT t.typtype FROM pg_type t WHERE t.oid = typ) <> 'b' THEN
            RETURN format('column "%s" of %s is of type %s, not a built-in type', col, source, format_type(typ, NULL));
        END IF;
        IF col = content_column AND typ NOT IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'bytea'::regtype) THEN
            RETURN format('the content column "%s" must be text, varchar, char or bytea, not %s', col, format_type(typ, NULL));
        END IF;
        IF col = id_column AND typ NOT IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'numeric'::regtype,
                                           'text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'uuid'::regtype) THEN
            RETURN format('the id column "%s" must be an integer, numeric, text or uuid (whose text does not depend on settings), not %s',
                          col, format_type(typ, NULL));
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION maester.kb_sync_check(regclass, name, name, name, name[]) IS
    'Internal: NULL when the columns kb_sync keeps are fine as the table is now (built-in base types; content text-like or bytea; id an integer, numeric, text or uuid), else what is wrong.';

-- kb_sync: the SELECT of (ext, content, title, metadata) from a relation
-- (a transition table of the source, or the source), per its kb_source row;
-- changed: only rows whose synced columns differ from maester_old's
CREATE FUNCTION maester.kb_sync_select(s maester.kb_source, rel text, changed boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    meta text := 'NULL::pg_catalog.jsonb';
    same text;
    c name;
BEGIN
    IF s.metadata_columns IS NOT NULL AND cardinality(s.metadata_columns) > 0 THEN
        SELECT 'pg_catalog.jsonb_build_object(' ||
               string_agg(format('%L, t.%I', m, m), ', ' ORDER BY o) || ')'
          INTO meta FROM unnest(s.metadata_columns) WITH ORDINALITY AS u(m, o);
    END IF;
    same := format('o.%1$I IS NOT DISTINCT FROM t.%1$I', s.content_column);
    IF s.title_column IS NOT NULL THEN
        same := same || format(' AND (o.%1$I)::pg_catalog.text IS NOT DISTINCT FROM (t.%1$I)::pg_catalog.text',
                               s.title_column);
    END IF;
    FOREACH c IN ARRAY coalesce(s.metadata_columns, '{}') LOOP
        same := same || format(' AND (o.%1$I)::pg_catalog.text IS NOT DISTINCT FROM (t.%1$I)::pg_catalog.text', c);
    END LOOP;
    RETURN format('SELECT (t.%I)::pg_catalog.text AS ext, t.%I AS content, %s AS title, %s AS metadata FROM %s t',
                  s.id_column, s.content_column,
                  CASE WHEN s.title_column IS NULL THEN 'NULL::pg_catalog.text'
                       ELSE format('(t.%I)::pg_catalog.text', s.title_column) END,
                  meta, rel)
        || CASE WHEN changed THEN
               format(' WHERE NOT EXISTS (SELECT FROM maester_old o WHERE (o.%1$I)::pg_catalog.text '
                      'OPERATOR(pg_catalog.=) (t.%1$I)::pg_catalog.text AND %2$s)', s.id_column, same)
           ELSE '' END;
END
$$;

COMMENT ON FUNCTION maester.kb_sync_select(maester.kb_source, text, boolean) IS
    'Internal: the query kb_sync and its triggers read rows with.';

-- The triggers kb_sync puts on a source table (statement-level, with
-- transition tables): SECURITY DEFINER, because whoever writes the table
-- keeps the knowledge base current; it acts only for (kb, table) pairs
-- kb_sync registered in maester.kb_source, and is granted to no one (only
-- maester creates triggers with it).
CREATE FUNCTION maester.kb_sync_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb;
    s maester.kb_source;
    r record;
    problem text;
BEGIN
    SELECT * INTO s FROM maester.kb_source x
     WHERE x.kb_id = TG_ARGV[0]::bigint AND x.source = TG_RELID;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO k FROM maester.kb x WHERE x.id = s.kb_id;
    -- the columns as they are now (a type may have changed since kb_sync)
    problem := maester.kb_sync_check(TG_RELID, s.id_column, s.content_column, s.title_column, s.metadata_columns);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'table % can no longer be kept in knowledge base "%": %', TG_RELID::regclass, k.name, problem
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Change the column back, or maester.kb_unsync the table.';
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM maester.document d WHERE d.kb_id = k.id AND d.source = TG_RELID;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        EXECUTE format('DELETE FROM maester.document d USING (SELECT (o.%I)::pg_catalog.text AS ext FROM maester_old o) g '
                       'WHERE d.kb_id OPERATOR(pg_catalog.=) $1 AND d.source OPERATOR(pg_catalog.=) $2 '
                       'AND d.external_id OPERATOR(pg_catalog.=) g.ext', s.id_column)
            USING k.id, TG_RELID;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- rows whose id changed: the old id's document goes
        EXECUTE format('DELETE FROM maester.document d USING (SELECT (o.%1$I)::pg_catalog.text AS ext FROM maester_old o '
                       'WHERE NOT EXISTS (SELECT FROM maester_new n WHERE (n.%1$I)::pg_catalog.text '
                       'OPERATOR(pg_catalog.=) (o.%1$I)::pg_catalog.text)) g '
                       'WHERE d.kb_id OPERATOR(pg_catalog.=) $1 AND d.source OPERATOR(pg_catalog.=) $2 '
                       'AND d.external_id OPERATOR(pg_catalog.=) g.ext', s.id_column)
            USING k.id, TG_RELID;
    END IF;
    -- inserted rows, and updated rows whose synced columns changed (an
    -- update of other columns costs this query and nothing else)
    FOR r IN EXECUTE maester.kb_sync_select(s, 'maester_new', TG_OP = 'UPDATE') LOOP
        IF r.ext IS NULL THEN
            CONTINUE;
        ELSIF r.content IS NULL THEN
            DELETE FROM maester.document d
             WHERE d.kb_id = k.id AND d.source = TG_RELID AND d.external_id = r.ext;
        ELSIF s.content_is_bytea THEN
            PERFORM maester.kb_put(k, r.ext, NULL, r.content::bytea, s.mime, r.title, r.metadata, TG_RELID);
        ELSE
            PERFORM maester.kb_put(k, r.ext, r.content::text, NULL, s.mime, r.title, r.metadata, TG_RELID);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION maester.kb_sync_trigger() IS
    'Internal: the statement-level trigger of the tables maester.kb_sync keeps in knowledge bases.';

CREATE FUNCTION maester.kb_sync(kb text, source regclass, id_column name, content_column name,
                                title_column name DEFAULT NULL, metadata_columns name[] DEFAULT NULL,
                                mime text DEFAULT 'text/plain')
RETURNS bigint
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_sync(text, regclass, name, name, name, name[], text) IS
    'Keeps a table in a knowledge base of the current tenant: every row is a document (external id: id_column as text; content: content_column, text or bytea; title and metadata from the other columns), ingested now and kept current by statement-level triggers on INSERT, UPDATE, DELETE and TRUNCATE. An update that changes none of these columns sends nothing; a NULL content removes the document. The caller must own the table (a plain table, without inheritance or forced row-level security); the columns must be of built-in types, the id an integer, numeric, text or uuid. Returns how many rows were ingested now.';

CREATE FUNCTION maester.kb_sync_as(tenant text, role name, kb text, source regclass, id_column name,
                                   content_column name, title_column name, metadata_columns name[],
                                   mime text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb, true);
    s maester.kb_source;
    problem text;
    n bigint := 0;
    r record;
BEGIN
    IF source IS NULL OR id_column IS NULL OR content_column IS NULL THEN
        RAISE EXCEPTION 'kb_sync needs the table, its id column and its content column'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- locked first, so that nothing changes between the checks and the first read
    IF (SELECT c.relkind FROM pg_class c WHERE c.oid = source) IS DISTINCT FROM 'r' THEN
        RAISE EXCEPTION '"%" is not a table (partitioned tables, views and foreign tables cannot be kept)', source
            USING ERRCODE = 'wrong_object_type';
    END IF;
    IF source::oid < 16384 OR (SELECT c.relnamespace FROM pg_class c WHERE c.oid = source)
                              = 'maester'::regnamespace THEN
        RAISE EXCEPTION 'table % cannot be kept in a knowledge base', source
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- the first read is maester's: only the table's owner may ask for it
    -- (row-level security does not apply to an owner, unless forced)
    IF NOT pg_has_role(role, (SELECT c.relowner FROM pg_class c WHERE c.oid = source), 'USAGE')
       OR NOT has_schema_privilege(role, (SELECT c.relnamespace FROM pg_class c WHERE c.oid = source), 'USAGE') THEN
        RAISE EXCEPTION 'permission denied for table %', source
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'kb_sync needs a table the caller owns, in a schema it may use.';
    END IF;
    EXECUTE format('LOCK TABLE %s IN SHARE MODE', source);
    IF (SELECT c.relforcerowsecurity FROM pg_class c WHERE c.oid = source) THEN
        RAISE EXCEPTION 'table % forces row-level security on its owner: it cannot be kept in a knowledge base', source
            USING ERRCODE = 'feature_not_supported';
    END IF;
    IF EXISTS (SELECT FROM pg_inherits i WHERE i.inhparent = source OR i.inhrelid = source) THEN
        RAISE EXCEPTION 'table % has inheritance parents or children: it cannot be kept in a knowledge base', source
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Statement-level triggers do not fire for the rows of other tables of the hierarchy.';
    END IF;
    IF EXISTS (SELECT FROM maester.kb_source x WHERE x.kb_id = k.id AND x.source = kb_sync_as.source) THEN
        RAISE EXCEPTION 'table % is already kept in knowledge base "%"', source, kb
            USING ERRCODE = 'duplicate_object', HINT = 'maester.kb_unsync it first.';
    END IF;
    problem := maester.kb_sync_check(source, id_column, content_column, title_column, metadata_columns);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem
            USING ERRCODE = CASE WHEN problem LIKE '%does not exist' THEN 'undefined_column' ELSE 'datatype_mismatch' END;
    END IF;
    INSERT INTO maester.kb_source AS x (kb_id, source, id_column, content_column, title_column,
                                        metadata_columns, mime, content_is_bytea)
    VALUES (k.id, source, id_column, content_column, title_column, metadata_columns,
            coalesce(mime, 'text/plain'),
            (SELECT a.atttypid = 'bytea'::regtype FROM pg_attribute a
              WHERE a.attrelid = source AND a.attname = content_column))
    RETURNING * INTO s;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS maester_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION maester.kb_sync_trigger(%L)',
                   'maester_kb_' || k.id || '_insert', source, k.id);
    EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS maester_old NEW TABLE AS maester_new '
                   'FOR EACH STATEMENT EXECUTE FUNCTION maester.kb_sync_trigger(%L)',
                   'maester_kb_' || k.id || '_update', source, k.id);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS maester_old '
                   'FOR EACH STATEMENT EXECUTE FUNCTION maester.kb_sync_trigger(%L)',
                   'maester_kb_' || k.id || '_delete', source, k.id);
    EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s '
                   'FOR EACH STATEMENT EXECUTE FUNCTION maester.kb_sync_trigger(%L)',
                   'maester_kb_' || k.id || '_truncate', source, k.id);
    -- the rows already there
    FOR r IN EXECUTE maester.kb_sync_select(s, source::text, false) LOOP
        CONTINUE WHEN r.ext IS NULL OR r.content IS NULL;
        IF s.content_is_bytea THEN
            PERFORM maester.kb_put(k, r.ext, NULL, r.content::bytea, s.mime, r.title, r.metadata, source);
        ELSE
            PERFORM maester.kb_put(k, r.ext, r.content::text, NULL, s.mime, r.title, r.metadata, source);
        END IF;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.kb_sync_as(text, name, text, regclass, name, name, name, name[], text) IS
    'Internal: maester.kb_sync for a tenant and role.';

CREATE FUNCTION maester.kb_unsync(kb text, source regclass, keep_documents boolean DEFAULT true)
RETURNS boolean
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_unsync(text, regclass, boolean) IS
    'Stops keeping a table in a knowledge base (drops kb_sync''s triggers); its documents stay unless keep_documents is false. False when the table was not kept there.';

CREATE FUNCTION maester.kb_unsync_as(tenant text, role name, kb text, source regclass, keep_documents boolean)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb, true);
    op text;
BEGIN
    DELETE FROM maester.kb_source x WHERE x.kb_id = k.id AND x.source = kb_unsync_as.source;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- (a table dropped since has no triggers left to drop)
    IF EXISTS (SELECT FROM pg_class c WHERE c.oid = source) THEN
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'maester_kb_' || k.id || '_' || op, source);
        END LOOP;
    END IF;
    IF NOT coalesce(keep_documents, true) THEN
        DELETE FROM maester.document d WHERE d.kb_id = k.id AND d.source = kb_unsync_as.source;
    ELSE
        UPDATE maester.document d SET source = NULL WHERE d.kb_id = k.id AND d.source = kb_unsync_as.source;
    END IF;
    RETURN true;
END
$$;

COMMENT ON FUNCTION maester.kb_unsync_as(text, name, text, regclass, boolean) IS
    'Internal: maester.kb_unsync for a tenant.';

CREATE FUNCTION maester.kb_drop(kb text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_drop(text) IS
    'Drops a knowledge base of the current tenant with its documents, chunks and vectors, and the triggers of the tables kept in it.';

CREATE FUNCTION maester.kb_drop_as(tenant text, role name, kb text)
RETURNS boolean
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb, true);
    s regclass;
BEGIN
    FOR s IN SELECT x.source FROM maester.kb_source x WHERE x.kb_id = k.id LOOP
        PERFORM maester.kb_unsync_as(tenant, role, kb, s, false);
    END LOOP;
    DELETE FROM maester.kb x WHERE x.id = k.id;
    RETURN true;
END
$$;

COMMENT ON FUNCTION maester.kb_drop_as(text, name, text) IS
    'Internal: maester.kb_drop for a tenant.';

-- What the knowledge bases are doing
CREATE VIEW maester.kb_status WITH (security_invoker = true) AS
SELECT k.tenant, k.name AS kb, k.id AS kb_id,
       coalesce(d.documents, 0) AS documents, coalesce(d.queued, 0) AS queued,
       coalesce(d.parsed, 0) AS parsed, coalesce(d.chunked, 0) AS chunked,
       coalesce(d.embedded, 0) AS embedded, coalesce(d.indexed, 0) AS indexed,
       coalesce(d.failed, 0) AS failed,
       coalesce(c.chunks, 0) AS chunks,
       p.model AS embedding_model, p.served_model, k.profile_id,
       CASE WHEN c.chunks > 0 THEN round(c.embedded::numeric / c.chunks, 4) END AS embedded_share,
       k.next_profile_id,
       CASE WHEN k.next_profile_id IS NOT NULL AND c.chunks > 0
            THEN round(c.embedded_next::numeric / c.chunks, 4) END AS reindex_share,
       coalesce(c.tokens_pending, 0) + coalesce(d.queued_tokens, 0) AS tokens_pending,
       round((coalesce(c.tokens_pending, 0) + coalesce(d.queued_tokens, 0))
             * (maester.kb_price(coalesce(p.served_model, p.model))).input_cost_per_million / 1000000, 6)
           AS estimated_cost_usd,
       k.paused_reason, CASE WHEN k.paused_reason IS NOT NULL THEN k.paused_until END AS paused_until,
       e.last_errors,
       d.last_indexed_at
  FROM maester.kb k
  JOIN maester.embedding_profile p ON p.id = k.profile_id
  LEFT JOIN LATERAL (
      SELECT count(DISTINCT x.external_id) FILTER (WHERE x.superseded_at IS NULL) AS documents,
             count(*) FILTER (WHERE x.stage = 'queued') AS queued,
             count(*) FILTER (WHERE x.stage = 'parsed') AS parsed,
             count(*) FILTER (WHERE x.stage = 'chunked') AS chunked,
             count(*) FILTER (WHERE x.stage = 'embedded') AS embedded,
             count(*) FILTER (WHERE x.stage = 'indexed' AND x.superseded_at IS NULL) AS indexed,
             count(*) FILTER (WHERE x.stage = 'failed') AS failed,
             -- a queued document's tokens, roughly: its characters / 3
             sum(coalesce(length(x.content), octet_length(x.content_binary) / 2) / 3)
                 FILTER (WHERE x.stage = 'queued') AS queued_tokens,
             max(x.indexed_at) AS last_indexed_at
        FROM maester.document x WHERE x.kb_id = k.id) d ON true
  LEFT JOIN LATERAL (
      SELECT count(*) AS chunks,
             count(*) FILTER (WHERE EXISTS (SELECT FROM maester.chunk_embedding ce
                                             WHERE ce.chunk_id = y.id AND ce.profile_id = k.profile_id)) AS embedded,
             count(*) FILTER (WHERE EXISTS (SELECT FROM maester.chunk_embedding ce
                                             WHERE ce.chunk_id = y.id AND ce.profile_id = k.next_profile_id)) AS embedded_next,
             sum(y.token_estimate) FILTER (WHERE NOT EXISTS (
                 SELECT FROM maester.chunk_embedding ce
                  WHERE ce.chunk_id = y.id AND ce.profile_id = coalesce(k.next_profile_id, k.profile_id))) AS tokens_pending
        FROM maester.chunk y JOIN maester.document x ON x.id = y.document_id
       WHERE x.kb_id = k.id AND x.superseded_at IS NULL) c ON true
  LEFT JOIN LATERAL (
      SELECT jsonb_agg(jsonb_build_object('external_id', z.external_id, 'error_class', z.error_class,
                                          'error_message', z.error_message, 'at', z.updated_at)
                       ORDER BY z.updated_at DESC) AS last_errors
        FROM (SELECT * FROM maester.document x
               WHERE x.kb_id = k.id AND x.stage = 'failed'
               ORDER BY x.updated_at DESC LIMIT 5) z) e ON true;

COMMENT ON VIEW maester.kb_status IS
    'Per knowledge base of the current tenant: documents by stage (queued, parsed, chunked, embedded, indexed, failed), chunks, the share embedded under the active profile (and under the reindex target), estimated tokens left to embed and their estimated cost, why the queue is paused, and the last five failures.';

-- The knowledge worker's steps (src/kb.c): run as maester's owner, granted
-- to no one.

-- A span of a document's trace (the knowledge worker's steps)
CREATE FUNCTION maester.kb_span(d maester.document, name text, started timestamptz,
                                status text DEFAULT 'ok', attributes jsonb DEFAULT '{}', root boolean DEFAULT false)
RETURNS text
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO maester.span (trace_id, span_id, parent_span_id, name, started_at, duration_us, status,
                              attributes, tenant)
    VALUES (d.trace_id,
            CASE WHEN root THEN d.span_id ELSE left(md5(random()::text || clock_timestamp()::text), 16) END,
            CASE WHEN root THEN d.parent_span_id ELSE d.span_id END,
            name, started,
            greatest(0, (extract(epoch FROM clock_timestamp() - started) * 1000000)::bigint), status,
            jsonb_build_object('maester.kb_id', d.kb_id, 'maester.document.id', d.id,
                               'maester.document.external_id', d.external_id,
                               'maester.document.version', d.version) || attributes,
            d.tenant)
    ON CONFLICT DO NOTHING
    RETURNING span_id
$$;

COMMENT ON FUNCTION maester.kb_span(maester.document, text, timestamptz, text, jsonb, boolean) IS
    'Internal (knowledge worker): writes a span of a document''s trace, from started to now.';

CREATE FUNCTION maester.kb_work_parse(doc bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d maester.document;
    p record;
    t0 timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO d FROM maester.document x WHERE x.id = doc;
    IF NOT FOUND OR d.stage <> 'queued' THEN
        RETURN;
    END IF;
    IF d.content IS NOT NULL THEN
        SELECT * INTO p FROM maester.kb_parse(d.content, d.mime);
    ELSE
        SELECT * INTO p FROM maester.kb_parse(d.content_binary, d.mime);
    END IF;
    UPDATE maester.document x
       SET parsed = p.body, title = coalesce(x.title, p.title), stage = 'parsed', updated_at = now()
     WHERE x.id = doc;
    PERFORM maester.kb_span(d, 'kb_parse', t0, 'ok',
                            jsonb_build_object('maester.document.mime', d.mime,
                                               'maester.document.bytes', coalesce(octet_length(d.content), octet_length(d.content_binary)),
                                               'maester.document.parsed_characters', length(p.body)));
END
$$;

COMMENT ON FUNCTION maester.kb_work_parse(bigint) IS
    'Internal (knowledge worker): parses a queued document into document.parsed.';

CREATE FUNCTION maester.kb_work_chunk(doc bigint)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d maester.document;
    k maester.kb;
    n integer;
    t0 timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO d FROM maester.document x WHERE x.id = doc;
    IF NOT FOUND OR d.stage <> 'parsed' THEN
        RETURN;
    END IF;
    SELECT * INTO k FROM maester.kb x WHERE x.id = d.kb_id;
    DELETE FROM maester.chunk c WHERE c.document_id = doc;
    INSERT INTO maester.chunk (document_id, kb_id, tenant, seq, heading_path, heading, start_offset,
                               end_offset, token_estimate, content, content_hash, fts_config)
    SELECT doc, d.kb_id, d.tenant, c.seq, c.heading_path, array_to_string(c.heading_path, ' / '),
           c.start_offset, c.end_offset, c.token_estimate, c.content,
           sha256(convert_to(c.content, 'UTF8')), k.fts_config
      FROM maester.kb_chunk(d.parsed, k.chunking) c;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM maester.kb_note_source_bytes(doc);
    UPDATE maester.document x
       SET stage = CASE WHEN n = 0 THEN 'embedded' ELSE 'chunked' END, updated_at = now()
     WHERE x.id = doc;
    PERFORM maester.kb_span(d, 'kb_chunk', t0, 'ok',
                            jsonb_build_object('maester.chunks', n, 'maester.chunking', k.chunking,
                                               'maester.tokens_estimated',
                                               (SELECT coalesce(sum(c.token_estimate), 0) FROM maester.chunk c
                                                 WHERE c.document_id = doc)));
END
$$;

COMMENT ON FUNCTION maester.kb_work_chunk(bigint) IS
    'Internal (knowledge worker): cuts a parsed document into chunks (a document with no text has none and goes on to indexing).';

CREATE FUNCTION maester.kb_work_fail(doc bigint, error_class text, message text, retry boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE maester.document x
       SET attempts = x.attempts + 1,
           stage = CASE WHEN retry AND x.attempts < 2 THEN x.stage ELSE 'failed' END,
           next_attempt_at = CASE WHEN retry AND x.attempts < 2
                                  THEN now() + interval '10 seconds' * power(3, x.attempts) END,
           error_class = kb_work_fail.error_class, error_message = left(message, 2000),
           updated_at = now()
     WHERE x.id = doc;
    -- failed for good: the trace ends with its root span, in error
    PERFORM maester.kb_span(x, 'kb_ingest', x.created_at, 'error',
                            jsonb_build_object('maester.error_class', x.error_class,
                                               'maester.error_message', x.error_message), true)
       FROM maester.document x WHERE x.id = doc AND x.stage = 'failed';
END
$$;

COMMENT ON FUNCTION maester.kb_work_fail(bigint, text, text, boolean) IS
    'Internal (knowledge worker): a document''s failure; retry (an external cause): tried again after 10 s, then 30 s, failed at the third.';

CREATE FUNCTION maester.kb_work_pause(kb_id bigint, reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE maester.kb x
       SET paused_reason = left(reason, 2000),
           paused_until = now() + least(interval '10 minutes', interval '5 seconds' * power(2, least(x.pauses, 10))),
           pauses = x.pauses + 1
     WHERE x.id = kb_id;
END
$$;

COMMENT ON FUNCTION maester.kb_work_pause(bigint, text) IS
    'Internal (knowledge worker): pauses a knowledge base''s queue for a failure that belongs to no document: 5 s, doubling up to 10 minutes.';

-- The next chunks of a knowledge base to embed under a profile: the
-- vectors it already has for the same text are taken first
CREATE FUNCTION maester.kb_work_batch(kb bigint, profile bigint, max_documents integer, max_inputs integer)
RETURNS TABLE (chunk_id bigint, document_id bigint, input text)
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    active boolean := (SELECT k.profile_id = profile FROM maester.kb k WHERE k.id = kb);
    prefix text := (SELECT p.document_prefix FROM maester.embedding_profile p WHERE p.id = profile);
BEGIN
    -- documents that need this profile: those in the pipeline; for a
    -- reindex target, every version that answers or will.  (One statement:
    -- the chunks that take a vector the kb has are not returned.)
    RETURN QUERY
    WITH docs AS (
        SELECT d.id FROM maester.document d
         WHERE d.kb_id = kb AND d.superseded_at IS NULL
           AND (d.stage = 'chunked' OR (NOT active AND d.stage IN ('embedded', 'indexed')))
           AND EXISTS (SELECT FROM maester.chunk c
                        WHERE c.document_id = d.id
                          AND NOT EXISTS (SELECT FROM maester.chunk_embedding e
                                           WHERE e.chunk_id = c.id AND e.profile_id = profile))
         ORDER BY d.id LIMIT max_documents),
    unembedded AS (
        SELECT c.* FROM docs w JOIN maester.chunk c ON c.document_id = w.id
         WHERE NOT EXISTS (SELECT FROM maester.chunk_embedding x
                            WHERE x.chunk_id = c.id AND x.profile_id = profile)),
    reused AS (
        INSERT INTO maester.chunk_embedding (profile_id, chunk_id, kb_id, document_id, live, tenant, embedding)
        SELECT DISTINCT ON (c.id) profile, c.id, c.kb_id, c.document_id,
               (SELECT d.current FROM maester.document d WHERE d.id = c.document_id), c.tenant, e.embedding
          FROM unembedded c
          JOIN maester.chunk o ON o.kb_id = c.kb_id AND o.content_hash = c.content_hash AND o.id <> c.id
          JOIN maester.chunk_embedding e ON e.chunk_id = o.id AND e.profile_id = profile
         ORDER BY c.id
        ON CONFLICT DO NOTHING
        RETURNING chunk_embedding.chunk_id)
    SELECT c.id, c.document_id, prefix || c.content
      FROM unembedded c
     WHERE c.id NOT IN (SELECT r.chunk_id FROM reused r)
     ORDER BY c.document_id, c.seq
     LIMIT max_inputs;
END
$$;

COMMENT ON FUNCTION maester.kb_work_batch(bigint, bigint, integer, integer) IS
    'Internal (knowledge worker): the next chunks to embed under a profile, for at most max_documents documents; chunks whose text already has a vector of the profile in the knowledge base take it first (nothing sent).';

-- After a batch: a kb_embed span in each of its documents' traces, naming
-- the embedding call's trace
CREATE FUNCTION maester.kb_work_embedded(kb bigint, docs bigint[], call_trace text, call_span text,
                                         started timestamptz, profile bigint)
RETURNS bigint
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- the batch's own trace: its root, parent of the embedding call's spans
    INSERT INTO maester.span (trace_id, span_id, name, started_at, duration_us, status, attributes, tenant)
    SELECT call_trace, call_span, 'kb_embed_batch', started,
           greatest(0, (extract(epoch FROM clock_timestamp() - started) * 1000000)::bigint), 'ok',
           jsonb_build_object('maester.kb_id', k.id, 'maester.embedding_profile_id', profile,
                              'maester.chunks', cardinality(docs),
                              'maester.documents', (SELECT count(DISTINCT x) FROM unnest(docs) x)),
           k.tenant
      FROM maester.kb k WHERE k.id = kb
    ON CONFLICT DO NOTHING;
    SELECT count(maester.kb_span(d, 'kb_embed', started, 'ok',
                                 jsonb_build_object('maester.embed.trace_id', call_trace,
                                                    'maester.embedding_profile_id', profile,
                                                    'maester.chunks', (SELECT count(*) FROM unnest(docs) x WHERE x = d.id))))
      FROM maester.document d WHERE d.id IN (SELECT DISTINCT unnest(docs))
$$;

COMMENT ON FUNCTION maester.kb_work_embedded(bigint, bigint[], text, text, timestamptz, bigint) IS
    'Internal (knowledge worker): a batch''s trace root (parent of its embedding call''s spans) and the kb_embed spans of its documents'' traces.';

-- Documents with every vector become current; a complete reindex switches
CREATE FUNCTION maester.kb_work_index(kb bigint)
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb;
    n integer;
    t0 timestamptz := clock_timestamp();
BEGIN
    SELECT * INTO k FROM maester.kb x WHERE x.id = kb FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    UPDATE maester.document d SET stage = 'embedded', updated_at = now()
     WHERE d.kb_id = kb AND d.stage = 'chunked'
       AND NOT EXISTS (SELECT FROM maester.chunk c
                        WHERE c.document_id = d.id
                          AND NOT EXISTS (SELECT FROM maester.chunk_embedding e
                                           WHERE e.chunk_id = c.id AND e.profile_id = k.profile_id));
    -- the versions they replace stop answering (their chunks stay, for the
    -- citations of answers they gave; their vectors go)
    WITH ready AS (SELECT d.external_id FROM maester.document d WHERE d.kb_id = kb AND d.stage = 'embedded'),
         old AS (UPDATE maester.document o SET current = false, superseded_at = now()
                   FROM ready r
                  WHERE o.kb_id = kb AND o.external_id = r.external_id AND o.current
                 RETURNING o.id)
    DELETE FROM maester.chunk_embedding e USING maester.chunk c, old
     WHERE e.chunk_id = c.id AND c.document_id = old.id;
    UPDATE maester.chunk_embedding e SET live = true
      FROM maester.document d
     WHERE e.document_id = d.id AND d.kb_id = kb AND d.stage = 'embedded' AND NOT e.live;
    WITH done AS (
        UPDATE maester.document d
           SET stage = 'indexed', current = true, indexed_at = now(), updated_at = now()
         WHERE d.kb_id = kb AND d.stage = 'embedded'
        RETURNING d.*)
    SELECT count(*) INTO n
      FROM done d,
           LATERAL (SELECT maester.kb_span(d::maester.document, 'kb_index', t0),
                           maester.kb_span(d::maester.document, 'kb_ingest', d.created_at, 'ok',
                                           jsonb_build_object('maester.chunks',
                                               (SELECT count(*) FROM maester.chunk c WHERE c.document_id = d.id),
                                               'maester.embedding_profile_id', k.profile_id), true)) s;
    -- a reindex whose vectors are all there becomes the active profile
    IF k.next_profile_id IS NOT NULL AND NOT EXISTS (
           SELECT FROM maester.document d JOIN maester.chunk c ON c.document_id = d.id
            WHERE d.kb_id = kb AND d.superseded_at IS NULL AND d.stage <> 'failed'
              AND NOT EXISTS (SELECT FROM maester.chunk_embedding e
                               WHERE e.chunk_id = c.id AND e.profile_id = k.next_profile_id))
       AND NOT EXISTS (SELECT FROM maester.document d
                        WHERE d.kb_id = kb AND d.stage IN ('queued', 'parsed')) THEN
        UPDATE maester.kb x SET profile_id = k.next_profile_id, next_profile_id = NULL WHERE x.id = kb;
        DELETE FROM maester.chunk_embedding e WHERE e.kb_id = kb AND e.profile_id = k.profile_id;
        n := n + 1;
    END IF;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.kb_work_index(bigint) IS
    'Internal (knowledge worker): documents whose chunks all have vectors of the active profile become current (the version they replace stops answering); a reindex whose vectors are complete becomes the active profile, and the old vectors are deleted.';

CREATE FUNCTION maester.search(kb text, query text, k integer DEFAULT 10, mode text DEFAULT 'hybrid',
                               filter jsonb DEFAULT NULL, options jsonb DEFAULT '{}')
RETURNS SETOF maester.search_hit
AS 'MODULE_PATHNAME', 'kb_search'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE ROWS 10;

COMMENT ON FUNCTION maester.search(text, text, integer, text, jsonb, jsonb) IS
    'Searches a knowledge base of the current tenant: mode vector (exact nearest neighbours in C over the active profile''s vectors, after the filters; the query is embedded by one maester.embed call), fts (websearch_to_tsquery and ts_rank_cd, AND first, OR when AND finds fewer than k) or hybrid (weighted reciprocal rank fusion). filter: documents whose metadata contains it. options: vector_weight, fts_weight (1), rrf_k (60), candidates per branch (4 k, at least 50).';

-- Batches a crash interrupted: never sent again by themselves
CREATE FUNCTION maester.kb_work_interrupted()
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b maester.kb_batch;
    n integer := 0;
BEGIN
    FOR b IN DELETE FROM maester.kb_batch RETURNING * LOOP
        n := n + 1;
        IF b.profile_id = (SELECT k.profile_id FROM maester.kb k WHERE k.id = b.kb_id) THEN
            UPDATE maester.document d
               SET stage = 'failed', error_class = 'interrupted', updated_at = now(),
                   error_message = format('an embedding request for it was in flight when the knowledge worker stopped (trace %s): it may have been answered and billed (see maester.usage), so it is not sent again by itself; maester.kb_retry sends it again', b.trace_id)
             WHERE d.id = ANY (b.documents) AND d.stage = 'chunked';
        ELSE
            UPDATE maester.kb k
               SET paused_reason = format('a reindex batch was in flight when the knowledge worker stopped (trace %s): it may have been billed, so it is not sent again by itself; maester.kb_retry goes on', b.trace_id),
                   paused_until = 'infinity'
             WHERE k.id = b.kb_id;
        END IF;
    END LOOP;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.kb_work_interrupted() IS
    'Internal (knowledge worker): batches left in maester.kb_batch by a crash: their documents fail (interrupted), or the kb''s reindex pauses, until kb_retry.';

CREATE FUNCTION maester.kb_retention(kb text, older_than interval)
RETURNS integer
AS 'MODULE_PATHNAME', 'kb_dispatch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.kb_retention(text, interval) IS
    'Deletes the versions of a knowledge base''s documents that were superseded longer ago than older_than (with their chunks: answers given from them can no longer cite their passages), and returns how many went.';

CREATE FUNCTION maester.kb_retention_as(tenant text, role name, kb text, older_than interval)
RETURNS integer
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k maester.kb := maester.kb_find(tenant, kb);
    n integer;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a positive interval' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM maester.document d
     WHERE d.kb_id = k.id AND NOT d.current AND d.superseded_at < now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.kb_retention_as(text, name, text, interval) IS
    'Internal: maester.kb_retention for a tenant.';
