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
    options        jsonb DEFAULT '{}',
    messages       jsonb DEFAULT NULL)
RETURNS maester.generation
AS 'MODULE_PATHNAME', 'llm_generate'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.llm_generate(text, text, integer, text, text, jsonb, text, jsonb, jsonb) IS
    'Calls a model through the gateway: exactly one of prompt (raw text), messages (a conversation: [{role, content}], roles system, user, assistant, tool) and prompt_name (rendered from the registry with variables and prompt_version). model is a model, alias or route; NULL uses the route default. options: temperature, top_p, stop, response_format (json, json_object, json_schema), tools, tool_choice, timeout_ms, max_attempts, fallback, tags, extra, sticky_key (the same key lands on the same target of a weighted route and the same arm of a prompt rollout), cache (true, or {ttl, any_temperature}: the response cache; a call that samples is not cached unless any_temperature).';

CREATE FUNCTION maester.embed(
    input   text[],
    model   text DEFAULT NULL,
    options jsonb DEFAULT '{}')
RETURNS SETOF maester.embedding_result
AS 'MODULE_PATHNAME', 'embed_many'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE ROWS 1000;

COMMENT ON FUNCTION maester.embed(text[], text, jsonb) IS
    'Embeds the inputs through the gateway, one row per input in input order: requests of at most 2,048 inputs and the provider''s embedding_batch_tokens, several in flight, each metered (purpose embedding), budgeted and traced; an input the model refuses fails alone. model NULL: the route default_embedding. options: dimensions, input_type (query, document), normalize (default true), concurrency (default 4), timeout_ms, max_attempts, fallback, tags, extra.';

CREATE FUNCTION maester.embed(
    input   text,
    model   text DEFAULT NULL,
    options jsonb DEFAULT '{}')
RETURNS real[]
AS 'MODULE_PATHNAME', 'embed_one'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.embed(text, text, jsonb) IS
    'Embeds one text through the gateway and returns its vector; raises the call''s error. See maester.embed(text[], ...).';

CREATE FUNCTION maester.inner_product(a real[], b real[])
RETURNS double precision
AS 'MODULE_PATHNAME', 'vector_inner_product'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.inner_product(real[], real[]) IS
    'The dot product of two vectors of one length (SIMD: AVX-512, AVX2 with FMA or NEON, chosen at run time); a NULL element, an empty or multidimensional array, or lengths that differ are errors.';

CREATE FUNCTION maester.cosine_similarity(a real[], b real[])
RETURNS double precision
AS 'MODULE_PATHNAME', 'vector_cosine_similarity'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.cosine_similarity(real[], real[]) IS
    'a.b / (|a| |b|), between -1 and 1; NULL when a vector has norm 0. Same rules as inner_product.';

CREATE FUNCTION maester.l2_distance(a real[], b real[])
RETURNS double precision
AS 'MODULE_PATHNAME', 'vector_l2_distance'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.l2_distance(real[], real[]) IS
    'The Euclidean distance |a - b|. Same rules as inner_product.';

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
AS 'MODULE_PATHNAME', 'complete'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION maester.complete(jsonb) IS
    'The articles'' API in one call: takes {prompt_name, prompt_version, variables, model, max_tokens} (or prompt) and returns {provider, model, trace_id, prompt_name, prompt_version, prompt_hash, content, cost, evaluation}.';
