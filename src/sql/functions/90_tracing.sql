-- src/sql/functions/90_tracing.sql: Tracing: the trace view, explain, OTLP payloads, trace_status, retention.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE VIEW maester.trace WITH (security_invoker = true) AS
SELECT s.trace_id,
       s.request_id,
       s.started_at,
       s.duration_us,
       s.status,
       s.tenant,
       s.span_id AS root_span_id,
       s.parent_span_id AS application_span_id,
       s.attributes
  FROM maester.span s
 WHERE s.name OPERATOR(pg_catalog.=) 'llm_generate';

COMMENT ON VIEW maester.trace IS
    'One row per traced call: its root span (request id, start, duration, status, the application''s parent span).';

CREATE FUNCTION maester.explain(trace_id text)
RETURNS SETOF text
LANGUAGE plpgsql
STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE tree AS (
        SELECT s.*, 0 AS depth, ARRAY[s.started_at] AS path
          FROM maester.span s
         WHERE s.trace_id OPERATOR(pg_catalog.=) $1
           -- the roots: spans whose parent is not in the trace (the
           -- application's span, or none): calls, embeddings, documents
           AND NOT EXISTS (SELECT FROM maester.span p
                            WHERE p.trace_id OPERATOR(pg_catalog.=) s.trace_id
                              AND p.span_id OPERATOR(pg_catalog.=) s.parent_span_id)
        UNION ALL
        SELECT s.*, t.depth OPERATOR(pg_catalog.+) 1, t.path OPERATOR(pg_catalog.||) s.started_at
          FROM maester.span s
          JOIN tree t ON s.trace_id OPERATOR(pg_catalog.=) t.trace_id
                     AND s.parent_span_id OPERATOR(pg_catalog.=) t.span_id
    )
    SELECT pg_catalog.repeat('  ', t.depth) OPERATOR(pg_catalog.||)
           CASE WHEN t.depth OPERATOR(pg_catalog.>) 0 THEN '->  ' ELSE '' END OPERATOR(pg_catalog.||)
           t.name OPERATOR(pg_catalog.||)
           pg_catalog.format('  (%s ms%s%s)', pg_catalog.to_char(t.duration_us OPERATOR(pg_catalog./) 1000.0, 'FM999999990.000'),
                             CASE WHEN t.status OPERATOR(pg_catalog.<>) 'ok' THEN ', ' OPERATOR(pg_catalog.||) t.status ELSE '' END,
                             CASE WHEN t.attributes OPERATOR(pg_catalog.?) 'maester.spans_dropped'
                                  THEN ', partial: ' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.spans_dropped')
                                       OPERATOR(pg_catalog.||) ' spans dropped'
                                  ELSE '' END)
           OPERATOR(pg_catalog.||)
           COALESCE('  ' OPERATOR(pg_catalog.||) NULLIF(pg_catalog.concat_ws(' ',
               'provider=' OPERATOR(pg_catalog.||) (t.attributes ->> 'gen_ai.provider.name'),
               'model=' OPERATOR(pg_catalog.||) COALESCE(t.attributes ->> 'gen_ai.response.model', t.attributes ->> 'gen_ai.request.model'),
               'http=' OPERATOR(pg_catalog.||) (t.attributes ->> 'http.response.status_code'),
               'error=' OPERATOR(pg_catalog.||) (t.attributes ->> 'error.type'),
               'tokens=' OPERATOR(pg_catalog.||) (t.attributes ->> 'gen_ai.usage.input_tokens') OPERATOR(pg_catalog.||) '/'
                   OPERATOR(pg_catalog.||) (t.attributes ->> 'gen_ai.usage.output_tokens'),
               'cost=$' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.cost_usd'),
               'evaluation=' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.evaluation.status'),
               'document=' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.document.external_id'),
               'chunks=' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.chunks'),
               'embedding_trace=' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.embed.trace_id'),
               'prompt=' OPERATOR(pg_catalog.||) (t.attributes ->> 'gen_ai.prompt.name') OPERATOR(pg_catalog.||) '@'
                   OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.prompt.version'),
               'route=' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.route.strategy') OPERATOR(pg_catalog.||) ' ('
                   OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.route.reason') OPERATOR(pg_catalog.||) ')',
               'cache=' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.cache'),
               'saved=$' OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.cache.saved_usd')), ''), '')
      FROM tree t
     ORDER BY t.path;
    -- (another tenant's trace is not found either)
    IF NOT FOUND THEN
        RAISE EXCEPTION 'trace "%" not found', $1
            USING ERRCODE = 'undefined_object',
                  HINT = 'A trace is explained once its spans are written (a fraction of a second after the call), within your tenant''s traces and the span retention.';
    END IF;
END
$$;

COMMENT ON FUNCTION maester.explain(text) IS
    'The span tree of a trace (a call, an embedding, a knowledge base document) with timings, tokens, cost and evaluation, the way EXPLAIN ANALYZE reads; a trace whose spans did not all fit in the span queue says partial.';


CREATE FUNCTION maester.otlp_payload(after_seq bigint, max_spans integer DEFAULT 512,
                                     OUT payload text, OUT spans integer, OUT last_seq bigint)
LANGUAGE sql
STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.jsonb_build_object('resourceSpans', pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
             'resource', pg_catalog.jsonb_build_object('attributes', pg_catalog.jsonb_build_array(
                 pg_catalog.jsonb_build_object('key', 'service.name',
                                               'value', pg_catalog.jsonb_build_object('stringValue', 'maester')))),
             'scopeSpans', pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
                 'scope', pg_catalog.jsonb_build_object('name', 'maester'),
                 'spans', COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                     'traceId', s.trace_id,
                     'spanId', s.span_id,
                     'parentSpanId', COALESCE(s.parent_span_id, ''),
                     'name', s.name,
                     'kind', CASE WHEN s.name OPERATOR(pg_catalog.=) 'model_generate' THEN 3 ELSE 1 END,
                     'startTimeUnixNano', ((pg_catalog.date_part('epoch', s.started_at)::numeric
                                            OPERATOR(pg_catalog.*) 1000000000)::numeric(30, 0))::text,
                     'endTimeUnixNano', (((pg_catalog.date_part('epoch', s.started_at)::numeric
                                           OPERATOR(pg_catalog.*) 1000000000)
                                          OPERATOR(pg_catalog.+) (s.duration_us OPERATOR(pg_catalog.*) 1000))::numeric(30, 0))::text,
                     'attributes', (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('key', a.key, 'value',
                          CASE pg_catalog.jsonb_typeof(a.value)
                              WHEN 'number' THEN
                                  CASE WHEN (a.value #>> '{}') OPERATOR(pg_catalog.~) '^-?[0-9]+$'
                                       THEN pg_catalog.jsonb_build_object('intValue', a.value #>> '{}')
                                       ELSE pg_catalog.jsonb_build_object('doubleValue', a.value) END
                              WHEN 'boolean' THEN pg_catalog.jsonb_build_object('boolValue', a.value)
                              WHEN 'string' THEN pg_catalog.jsonb_build_object('stringValue', a.value #>> '{}')
                              ELSE pg_catalog.jsonb_build_object('stringValue', a.value::text) END)
                          ORDER BY a.key), '[]'::jsonb)
                        FROM pg_catalog.jsonb_each(s.attributes) a),
                     'status', pg_catalog.jsonb_build_object('code',
                          CASE WHEN s.status OPERATOR(pg_catalog.=) 'ok' THEN 1 ELSE 2 END))
                   ORDER BY s.seq), '[]'::jsonb))))))::text,
           pg_catalog.count(*)::integer,
           pg_catalog.max(s.seq)
      FROM (SELECT * FROM maester.span x WHERE x.seq OPERATOR(pg_catalog.>) $1
             ORDER BY x.seq LIMIT $2) s
$$;

COMMENT ON FUNCTION maester.otlp_payload(bigint, integer) IS
    'The OTLP/HTTP JSON (ExportTraceServiceRequest) of up to max_spans spans written after after_seq: what the exporter posts to maester.otlp_endpoint.';

CREATE FUNCTION maester.trace_status(OUT spans_queued bigint, OUT spans_dropped bigint,
                                     OUT exported bigint, OUT export_dropped bigint,
                                     OUT failed_posts bigint)
AS 'MODULE_PATHNAME', 'trace_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.trace_status() IS
    'This database''s spans waiting for the span writer, spans dropped because its queue was full; spans the OTLP exporter sent to maester.otlp_endpoint, spans it dropped because the collector stayed down, and its failed posts; counters since the server started.';

CREATE FUNCTION maester.trace_retention(older_than interval)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than OPERATOR(pg_catalog.<) interval '0' THEN
        RAISE EXCEPTION 'older_than must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    DELETE FROM maester.span s
     WHERE s.started_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.trace_retention(interval) IS
    'Deletes spans older than the given age and returns how many.';
