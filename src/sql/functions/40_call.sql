-- src/sql/functions/40_call.sql: The call: llm_generate, generate_batch, complete.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.llm_generate(
    prompt         text DEFAULT NULL,
    model          text DEFAULT NULL,
    max_tokens     integer DEFAULT NULL,
    system         text DEFAULT NULL,
    prompt_name    text DEFAULT NULL,
    variables      jsonb DEFAULT NULL,
    prompt_version text DEFAULT NULL,
    options        jsonb DEFAULT '{}')
RETURNS maester.generation
AS 'MODULE_PATHNAME', 'llm_generate'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.llm_generate(text, text, integer, text, text, jsonb, text, jsonb) IS
    'Calls a model through the gateway: exactly one of prompt (raw text) and prompt_name (rendered from the registry with variables and prompt_version). model is a model, alias or route; NULL uses the route default. options: temperature, top_p, stop, response_format, timeout_ms, max_attempts, fallback, tags.';

CREATE FUNCTION maester.generate_batch(
    requests    jsonb[],
    concurrency integer DEFAULT 16,
    model       text DEFAULT NULL,
    prompt_name text DEFAULT NULL,
    options     jsonb DEFAULT NULL,
    fail_fast   boolean DEFAULT false)
RETURNS SETOF maester.batch_result
AS 'MODULE_PATHNAME', 'generate_batch'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE ROWS 100;

COMMENT ON FUNCTION maester.generate_batch(jsonb[], integer, text, text, jsonb, boolean) IS
    'Runs many model calls concurrently from one statement (at most concurrency, 1 to 256, in flight on one connection pool): each request is an object with llm_generate''s argument names; model, prompt_name and options are defaults for requests that do not give them (options merge, the request''s win). One row per request, in the order they finish; a failed request is a row with its error, the others go on, unless fail_fast. Every attempt is metered, evaluated and traced as for llm_generate.';

CREATE FUNCTION maester.complete(request jsonb)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k   text;
    g   maester.generation;
BEGIN
    IF jsonb_typeof(request) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'request must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR k IN SELECT jsonb_object_keys(request) LOOP
        IF k OPERATOR(pg_catalog.<>) ALL (ARRAY['prompt', 'prompt_name', 'prompt_version', 'variables',
                                                'model', 'max_tokens', 'system', 'options']) THEN
            RAISE EXCEPTION 'unknown request field "%"', k
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Fields: prompt or prompt_name, prompt_version, variables, model, max_tokens, system, options.';
        END IF;
    END LOOP;
    FOREACH k IN ARRAY ARRAY['prompt', 'prompt_name', 'prompt_version', 'model', 'system'] LOOP
        IF request ? k AND jsonb_typeof(request -> k) OPERATOR(pg_catalog.<>) ALL (ARRAY['string', 'null']) THEN
            RAISE EXCEPTION 'request field "%" must be a string', k
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    IF request ? 'max_tokens' AND jsonb_typeof(request -> 'max_tokens') OPERATOR(pg_catalog.<>) ALL (ARRAY['number', 'null']) THEN
        RAISE EXCEPTION 'request field "max_tokens" must be an integer'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF request ? 'max_tokens' AND jsonb_typeof(request -> 'max_tokens') OPERATOR(pg_catalog.=) 'number'
       AND (request ->> 'max_tokens')::numeric OPERATOR(pg_catalog.<>) trunc((request ->> 'max_tokens')::numeric) THEN
        RAISE EXCEPTION 'request field "max_tokens" must be an integer'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    g := maester.llm_generate(
        prompt         => request ->> 'prompt',
        model          => request ->> 'model',
        max_tokens     => (request ->> 'max_tokens')::integer,
        system         => request ->> 'system',
        prompt_name    => request ->> 'prompt_name',
        variables      => CASE WHEN jsonb_typeof(request -> 'variables') OPERATOR(pg_catalog.=) 'null'
                               THEN NULL ELSE request -> 'variables' END,
        prompt_version => request ->> 'prompt_version',
        options        => COALESCE(NULLIF(request -> 'options', 'null'::jsonb), '{}'::jsonb));

    RETURN jsonb_build_object(
        'provider', g.provider,
        'model', g.model,
        'trace_id', g.trace_id,
        'prompt_name', g.prompt_name,
        'prompt_version', g.prompt_version,
        'prompt_hash', g.prompt_hash,
        'content', g.content,
        'cost', CASE WHEN g.priced THEN
                    (SELECT pg_catalog.jsonb_build_object(
                         'model', c.model, 'input_tokens', c.input_tokens,
                         'output_tokens', c.output_tokens, 'total_tokens', c.total_tokens,
                         'input_cost_usd', pg_catalog.to_char(c.input_cost_usd, 'FM0.000000'),
                         'output_cost_usd', pg_catalog.to_char(c.output_cost_usd, 'FM0.000000'),
                         'total_cost_usd', pg_catalog.to_char(c.total_cost_usd, 'FM0.000000'),
                         'unit', c.unit)
                       FROM maester.cost_of(g.model, g.input_tokens, g.output_tokens,
                                            g.cached_input_tokens, pg_catalog.now(),
                                            g.cache_write_tokens) c)
                END,
        'evaluation', g.evaluation);
END
$$;

COMMENT ON FUNCTION maester.complete(jsonb) IS
    'The articles'' API in one call: takes {prompt_name, prompt_version, variables, model, max_tokens} (or prompt) and returns {provider, model, trace_id, prompt_name, prompt_version, prompt_hash, content, cost, evaluation}.';
