-- src/sql/tables/40_call.sql: The results of a call: maester.generation and maester.batch_result.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TYPE maester.generation AS (
    request_id          uuid,
    trace_id            text,
    provider            text,
    model               text,
    content             text,
    finish_reason       text,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint,
    cache_write_tokens  bigint,
    usage_estimated     boolean,
    latency_ms          double precision,
    attempts            integer,
    fallback_used       boolean,
    prompt_name         text,
    prompt_version      text,
    prompt_hash         text,
    requested_model     text,
    response_id         text,
    cost_usd            numeric,
    priced              boolean,
    evaluation          jsonb,
    tool_calls          jsonb,
    parsed              jsonb,
    refusal             text,
    cached              boolean
);

COMMENT ON TYPE maester.generation IS
    'The normalized result of a model call: identity (request_id, trace_id, prompt name/version/hash), who served it (provider, model), the output, usage and timing.';
COMMENT ON COLUMN maester.generation.model IS 'The model as the provider reports it served the call.';
COMMENT ON COLUMN maester.generation.input_tokens IS 'All prompt tokens, cached ones included (Anthropic''s cache reads and writes are added in).';
COMMENT ON COLUMN maester.generation.cached_input_tokens IS 'Prompt tokens read from the provider''s prompt cache.';
COMMENT ON COLUMN maester.generation.cache_write_tokens IS 'Prompt tokens written to the provider''s prompt cache (Anthropic).';
COMMENT ON COLUMN maester.generation.usage_estimated IS 'True when the provider reported no usage and tokens were estimated (4 characters a token).';
COMMENT ON COLUMN maester.generation.latency_ms IS 'Wall time of the whole call, retries and fallbacks included.';
COMMENT ON COLUMN maester.generation.attempts IS 'HTTP attempts made, across all targets.';
COMMENT ON COLUMN maester.generation.fallback_used IS 'True when a target other than the first one served the call.';
COMMENT ON COLUMN maester.generation.prompt_hash IS 'SHA-256 hex of what was sent (see maester.rendered_prompt.hash).';
COMMENT ON COLUMN maester.generation.cost_usd IS 'Exact, unrounded cost in USD at the price in force at the call (NULL when the model has no price).';
COMMENT ON COLUMN maester.generation.priced IS 'False when the served model has no price.';
COMMENT ON COLUMN maester.generation.evaluation IS 'maester.evaluate of the output with the prompt version''s checks (else non_empty and max_length 500): {status, reliability_score, metrics}.';

CREATE TYPE maester.batch_result AS (
    ordinal             integer,
    request_id          uuid,
    trace_id            text,
    provider            text,
    model               text,
    content             text,
    finish_reason       text,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint,
    cache_write_tokens  bigint,
    usage_estimated     boolean,
    latency_ms          double precision,
    attempts            integer,
    fallback_used       boolean,
    prompt_name         text,
    prompt_version      text,
    prompt_hash         text,
    requested_model     text,
    response_id         text,
    cost_usd            numeric,
    priced              boolean,
    evaluation          jsonb,
    error_code          text,
    error_class         text,
    error_message       text,
    error_detail        text,
    tool_calls          jsonb,
    parsed              jsonb,
    refusal             text,
    cached              boolean
);

COMMENT ON COLUMN maester.generation.tool_calls IS 'The tools the model called (options.tools): [{id, name, arguments}], arguments as JSON, for OpenAI and Anthropic alike; NULL when it called none. Append it to messages as an assistant message''s tool_calls to continue a tool loop.';
COMMENT ON COLUMN maester.generation.parsed IS 'With response_format json_schema or json_object: the answer parsed as JSON (NULL when it is not JSON); the schema is checked by the evaluation''s json_schema check.';
COMMENT ON COLUMN maester.generation.refusal IS 'A refusal''s text (OpenAI message.refusal; Anthropic stop_reason refusal), kept apart from content, which is then empty; finish_reason is refusal.';
COMMENT ON COLUMN maester.generation.cached IS 'True when the response cache answered (options.cache): nothing was sent, cost_usd is 0, and evaluation is the one the answer had when it was made.';

CREATE TYPE maester.embedding_result AS (
    ordinal       integer,
    embedding     real[],
    input_tokens  integer,
    model         text,
    error_code    text,
    error_class   text,
    error_message text,
    error_detail  text
);

COMMENT ON TYPE maester.embedding_result IS
    'One input of maester.embed: its ordinal (1-based), its vector (L2-normalized unless options.normalize is false), its share of the request''s input tokens (by bytes), the model that made it (its identity: a route whose targets are other models would give vectors of another space), or, when it failed, the SQLSTATE, class and message.';

COMMENT ON TYPE maester.batch_result IS
    'One request of maester.generate_batch: its ordinal (1-based position in the requests array), the maester.generation fields, and, when it failed, the SQLSTATE, class and message the same call would have raised.';
COMMENT ON COLUMN maester.batch_result.error_class IS 'NULL on success; else invalid_request, budget, egress_denied, ledger_unavailable, error, or the last attempt''s class (rate_limited, server_error, timeout, connection, auth, bad_response, circuit_open, no_api_key, ...).';
