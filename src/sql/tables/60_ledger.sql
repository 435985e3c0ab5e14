-- src/sql/tables/60_ledger.sql: The usage ledger, written by the ledger worker.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TABLE maester.usage (
    request_id          uuid NOT NULL,
    attempt             integer NOT NULL,
    ts                  timestamptz NOT NULL,
    settled_at          timestamptz,
    tenant              text NOT NULL,
    role                name NOT NULL,
    purpose             text NOT NULL DEFAULT 'generation',
    trace_id            text NOT NULL,
    prompt_name         text,
    prompt_version      text,
    prompt_hash         text,
    provider            text NOT NULL,
    requested_model     text,
    model               text NOT NULL,
    max_tokens          bigint,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint,
    cache_write_tokens  bigint,
    usage_estimated     boolean,
    estimated_cost_usd  numeric,
    cost_usd            numeric,
    priced              boolean NOT NULL,
    latency_ms          double precision,
    status              text NOT NULL CHECK (status OPERATOR(pg_catalog.=) ANY
        ('{pending,ok,error,timeout,cancelled,orphaned,blocked,cached}'::pg_catalog.text[])),
    error_class         text,
    http_status         integer,
    fallback_used       boolean,
    tags                jsonb,
    eval_status         text,
    eval_score          double precision,
    backend_pid         integer,
    server_epoch        bigint,
    model_name          text,
    overrun_usd         numeric,
    finish_reason       text,
    provider_finish_reason text,
    provider_request_id text,
    reasoning_tokens    bigint,
    cache_write_1h_tokens bigint,
    service_tier        text,
    route_strategy      text,
    route_reason        text,
    cache               text CHECK (cache OPERATOR(pg_catalog.=) ANY ('{hit,miss,skipped}'::pg_catalog.text[])),
    saved_usd           numeric,
    PRIMARY KEY (request_id, attempt)
);

CREATE INDEX usage_ts_brin ON maester.usage USING brin (ts);
CREATE INDEX usage_tenant_day ON maester.usage (tenant, ((ts AT TIME ZONE 'UTC')::date));
CREATE INDEX usage_pending ON maester.usage (ts) WHERE status OPERATOR(pg_catalog.=) 'pending';
CREATE INDEX usage_overrun ON maester.usage (tenant, ts) WHERE overrun_usd IS NOT NULL;
CREATE INDEX usage_evaluated ON maester.usage (tenant, prompt_name, prompt_version, ts)
    INCLUDE (model_name, eval_status, eval_score) WHERE eval_status IS NOT NULL;

COMMENT ON TABLE maester.usage IS
    'The ledger: one row per attempt of every model call, written by the maester ledger worker (never by the caller''s transaction), so that no rollback, error or crash loses it. Row-level security by tenant for maester_user and maester_reader.';
COMMENT ON COLUMN maester.usage.ts IS 'When the attempt started (the row is durable before the request leaves).';
COMMENT ON COLUMN maester.usage.settled_at IS 'When the attempt''s outcome was recorded (NULL while pending).';
COMMENT ON COLUMN maester.usage.tenant IS 'maester.tenant of the calling session.';
COMMENT ON COLUMN maester.usage.role IS 'The calling role (current_user).';
COMMENT ON COLUMN maester.usage.purpose IS 'generation, evaluation for calls made by evaluators, or embedding (maester.embed).';
COMMENT ON COLUMN maester.usage.model IS 'The model as served (or, before an answer, as requested from the provider).';
COMMENT ON COLUMN maester.usage.finish_reason IS 'Why the answer ended, in one vocabulary over the providers: stop, length, tool_calls, content_filter, refusal or other.';
COMMENT ON COLUMN maester.usage.provider_finish_reason IS 'The finish reason as the provider gave it (finish_reason at OpenAI, stop_reason at Anthropic).';
COMMENT ON COLUMN maester.usage.provider_request_id IS 'The provider''s id of the request (its x-request-id or request-id header), for its support.';
COMMENT ON COLUMN maester.usage.reasoning_tokens IS 'Of output_tokens, those the model spent reasoning (OpenAI completion_tokens_details.reasoning_tokens, Anthropic output_tokens_details.thinking_tokens).';
COMMENT ON COLUMN maester.usage.cache_write_1h_tokens IS 'Of cache_write_tokens, those written for an hour (Anthropic cache_creation.ephemeral_1h_input_tokens), priced at price.cache_creation_1h_input_cost_per_million.';
COMMENT ON COLUMN maester.usage.service_tier IS 'The service tier that served the call, as the provider said it (OpenAI service_tier, Anthropic usage.service_tier).';
COMMENT ON COLUMN maester.usage.route_strategy IS 'The strategy of the route the call went through (maester.route.strategy); NULL: a model, not a route.';
COMMENT ON COLUMN maester.usage.cache IS 'The response cache (options.cache): hit (answered from the cache: status cached, cost 0), miss (sent, and its answer kept), skipped (asked for, but the call samples: a temperature that is not 0); NULL: not asked for.';
COMMENT ON COLUMN maester.usage.saved_usd IS 'A cache hit: what the answer cost when it was made, which this call did not spend.';
COMMENT ON COLUMN maester.usage.route_reason IS 'Why the route''s strategy put its first target first (weight and draw, recent latency, worst-case cost, evaluation score), e.g. "openai/gpt-4.1-mini: weight 90 of 100, drawn at random".';
COMMENT ON COLUMN maester.usage.overrun_usd IS 'How much the settled cost exceeded the worst case reserved before sending (estimated_cost_usd), when it did: the provider reported more tokens than the prompt''s bytes and max_tokens allow. NULL otherwise.';
COMMENT ON COLUMN maester.usage.model_name IS 'The model''s identity, the name prices and budgets know it by: the maester.model row''s name when a row covers the call, else the model id without a snapshot date (NULL for rows of 0.1.0).';
COMMENT ON COLUMN maester.usage.max_tokens IS 'Output tokens reserved by the estimate (the call''s max_tokens, else 4096).';
COMMENT ON COLUMN maester.usage.estimated_cost_usd IS 'Worst-case cost reserved before the request left: estimated input tokens plus max_tokens at the output price.';
COMMENT ON COLUMN maester.usage.cost_usd IS 'Exact cost in USD: at the price in force for ok calls; 0 for errors the provider answered; the estimate for timeouts, cancelled and orphaned attempts, which may have been billed; NULL when unpriced.';
COMMENT ON COLUMN maester.usage.priced IS 'False when the model had no price (cost NULL).';
COMMENT ON COLUMN maester.usage.status IS 'pending (in flight), ok, error, timeout, cancelled, orphaned (its backend died mid-call; charged at the estimate), blocked (refused by a budget), cached (the embedding cache answered: cost 0, estimated_cost_usd what they would have cost; or the response cache: cost 0, saved_usd what the answer had cost).';
COMMENT ON COLUMN maester.usage.error_class IS 'rate_limited, server_error, overloaded, auth, not_found, bad_request, redirect, timeout, connection, network, bad_response, too_large, cancelled.';
COMMENT ON COLUMN maester.usage.eval_status IS 'The evaluation of a successful attempt''s output: pass, fail, or error (a check could not run).';
COMMENT ON COLUMN maester.usage.eval_score IS 'The evaluation''s reliability score (0 to 1).';
COMMENT ON COLUMN maester.usage.server_epoch IS 'Shared memory generation of the server life that made the call (for orphan detection).';

ALTER TABLE maester.usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY usage_admin ON maester.usage FOR SELECT TO maester_admin USING (true);
CREATE POLICY usage_admin_delete ON maester.usage FOR DELETE TO maester_admin USING (true);
CREATE POLICY usage_tenant ON maester.usage FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

CREATE TABLE maester.dead_letter (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    kind        text NOT NULL CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'settle'])),
    request_id  uuid NOT NULL,
    attempt     integer NOT NULL,
    tenant      text NOT NULL,
    record      jsonb NOT NULL,
    sqlstate    text NOT NULL,
    error       text NOT NULL
);

CREATE INDEX dead_letter_request ON maester.dead_letter (request_id, attempt);

COMMENT ON TABLE maester.dead_letter IS
    'Ledger records the worker could not write to maester.usage (a constraint or trigger refused them): each with its error, so that nothing is lost and the ledger goes on. Admins only.';
COMMENT ON COLUMN maester.dead_letter.kind IS 'pending (the attempt was about to be sent) or settle (how it ended).';
COMMENT ON COLUMN maester.dead_letter.record IS 'The record as the worker had it: tokens, costs, status, identity.';
COMMENT ON COLUMN maester.dead_letter.error IS 'Why maester.usage refused it; sqlstate is its SQLSTATE.';

ALTER TABLE maester.dead_letter ENABLE ROW LEVEL SECURITY;
CREATE POLICY dead_letter_admin ON maester.dead_letter FOR ALL TO maester_admin USING (true);

-- the embedding cache (issue #16)
CREATE TABLE maester.embedding_cache (
    tenant        text NOT NULL,
    model         text NOT NULL,
    dimensions    integer NOT NULL,
    variant       text NOT NULL,
    input_sha256  bytea NOT NULL,
    embedding     real[] NOT NULL,
    input_tokens  integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant, model, dimensions, variant, input_sha256)
);

COMMENT ON TABLE maester.embedding_cache IS
    'Embeddings maester.embed(options => {"cache": true}) keeps: by tenant (one tenant''s texts are never another''s hits), the model that made them (its identity), the dimensions asked (0: the model''s) and the SHA-256 of the input. Written by maester only; admins may delete rows.';
COMMENT ON COLUMN maester.embedding_cache.variant IS 'SHA-256 hex of what else makes the vector: the provider and model id that answered, normalize, input_type and options.extra; a call hits only entries of its own.';
COMMENT ON COLUMN maester.embedding_cache.input_tokens IS 'What the input cost when it was embedded (its share of the request), counted again in the ledger at $0 on a hit.';

ALTER TABLE maester.embedding_cache ENABLE ROW LEVEL SECURITY;
CREATE POLICY embedding_cache_admin ON maester.embedding_cache FOR ALL TO maester_admin USING (true);
CREATE POLICY embedding_cache_tenant ON maester.embedding_cache FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

-- the response cache (issue #19)
CREATE TABLE maester.response_cache (
    tenant                 text NOT NULL,
    key                    bytea NOT NULL,
    requested_model        text,
    prompt_name            text,
    prompt_version         text,
    provider               text NOT NULL,
    model                  text NOT NULL,
    model_name             text NOT NULL,
    content                text,
    refusal                text,
    tool_calls             jsonb,
    parsed                 jsonb,
    finish_reason          text,
    provider_finish_reason text,
    response_id            text,
    input_tokens           bigint NOT NULL,
    output_tokens          bigint NOT NULL,
    cached_input_tokens    bigint NOT NULL,
    cache_write_tokens     bigint NOT NULL,
    reasoning_tokens       bigint NOT NULL,
    cost_usd               numeric,
    evaluation             jsonb,
    source_request_id      uuid NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at             timestamptz NOT NULL,
    PRIMARY KEY (tenant, key)
);

CREATE INDEX response_cache_expires ON maester.response_cache (expires_at);

COMMENT ON TABLE maester.response_cache IS
    'Answers the response cache keeps (options.cache, or a prompt version''s config.cache): per tenant (one tenant''s answers are never another''s hits), keyed by the SHA-256 of what makes the answer (the prompt''s hash, prompt name and version, the model or route asked for, max_tokens, the options that change the answer), until expires_at. Written by maester only; a tenant reads and deletes its own (maester.response_cache_invalidate).';
COMMENT ON COLUMN maester.response_cache.key IS 'SHA-256 of the call''s prompt hash, prompt name and version, requested model, max_tokens and its options but tags, timeout_ms, max_attempts, fallback, sticky_key, cache and cache_control, each followed by a zero byte.';
COMMENT ON COLUMN maester.response_cache.cost_usd IS 'What the answer cost when it was made: each hit''s ledger row counts it as saved_usd.';
COMMENT ON COLUMN maester.response_cache.evaluation IS 'The answer''s evaluation when it was made, returned with each hit (an answer whose evaluation failed is not kept).';
COMMENT ON COLUMN maester.response_cache.source_request_id IS 'The call that made the answer (its ledger rows).';

ALTER TABLE maester.response_cache ENABLE ROW LEVEL SECURITY;
CREATE POLICY response_cache_admin ON maester.response_cache FOR ALL TO maester_admin USING (true);
CREATE POLICY response_cache_tenant ON maester.response_cache FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
CREATE POLICY response_cache_tenant_delete ON maester.response_cache FOR DELETE TO maester_user
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
