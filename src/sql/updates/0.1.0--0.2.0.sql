-- src/sql/updates/0.1.0--0.2.0.sql: what changes in the written-once objects
-- (tables, types, seeds, policies) from 0.1.0 to 0.2.0.
--
-- Runs before the re-created files (src/sql/functions/), in the catalog of
-- 0.1.0: it may use built-in functions only, never maester's own (those of
-- this version do not exist yet, and a chained update never creates those
-- of the versions in between).  See src/sql/README for the rules.

-- jobs: callbacks are run by the callback worker, after the job is recorded
ALTER TABLE maester.job ADD COLUMN callback_done_at timestamptz;
-- (0.1.0 ran them when it recorded the job's end)
UPDATE maester.job SET callback_done_at = finished_at
 WHERE callback IS NOT NULL AND finished_at IS NOT NULL;
CREATE INDEX job_callback_waiting ON maester.job (id)
    WHERE callback IS NOT NULL AND callback_done_at IS NULL;
COMMENT ON COLUMN maester.job.callback IS 'A procedure called with the job id after the job ended (done, failed or cancelled while running), as the submitter, by the database''s callback worker in a transaction of its own, within maester.callback_timeout; its error is kept in callback_error.';
COMMENT ON COLUMN maester.job.callback_done_at IS 'When the callback ran (NULL: it waits, or there is none).';

-- the ledger's dead letters
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

-- budgets: a bounded limit (one of 1e12 made every call fail in 0.1.0)
DO $$
DECLARE
    b record;
BEGIN
    FOR b IN SELECT id, limit_usd FROM maester.budget WHERE NOT (limit_usd OPERATOR(pg_catalog.<=) 1000000000) LOOP
        RAISE EXCEPTION 'budget % has limit_usd %, above the bound of 1000000000 that 0.2.0 enforces', b.id, b.limit_usd
            USING HINT = 'Lower it (in 0.1.0 every call failed with "bigint out of range" while it existed), then update again.',
                  ERRCODE = 'check_violation';
    END LOOP;
END
$$;
ALTER TABLE maester.budget ADD CONSTRAINT budget_limit_usd_max CHECK (limit_usd OPERATOR(pg_catalog.<=) 1000000000);
COMMENT ON COLUMN maester.budget.limit_usd IS 'The limit in USD per period: more than 0, at most 1,000,000,000 (budget_limit_usd_max).';

-- circuits per database, provider and model: circuit_status gains a model
-- column, circuit_reset a model argument (their views are re-created)
DROP VIEW maester.stat;
DROP VIEW maester.circuit;
DROP FUNCTION maester.circuit_status();
DROP FUNCTION maester.circuit_reset(text);

-- tenants bound to roles (maester.tenant is checked against tenant_member)
CREATE TABLE maester.tenant_member (
    role    regrole NOT NULL,
    tenant  text NOT NULL
        CHECK (pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.>=) 1
               AND pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.<) 64),
    PRIMARY KEY (role, tenant)
);

COMMENT ON TABLE maester.tenant_member IS
    'Which tenants each role may act as (maester.tenant): a role acts as the tenants mapped to it or to a role it is a member of; admins act as any tenant. Maintained by admins.';
COMMENT ON COLUMN maester.tenant_member.role IS 'The role (its members too, as for SET ROLE).';
COMMENT ON COLUMN maester.tenant_member.tenant IS 'A tenant it may act as; with only one, maester.tenant = ''default'' means this one.';

ALTER TABLE maester.tenant_member ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_member_admin ON maester.tenant_member FOR ALL TO maester_admin USING (true);
CREATE POLICY tenant_member_own ON maester.tenant_member FOR SELECT TO maester_user, maester_reader
    USING (pg_catalog.pg_has_role(role, 'MEMBER'));

-- (created here, not with the re-created functions: the policies need it;
-- this is the 0.2.0 library's function, which the update runs under)
CREATE FUNCTION maester.current_tenant() RETURNS text
AS 'MODULE_PATHNAME', 'current_tenant'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION maester.current_tenant() IS
    'The tenant this session acts as: maester.tenant, checked against maester.tenant_member (''default'' is the role''s only tenant). Raises 42501 when the role may not act as it. Every tenant policy compares with it.';

-- every tenant policy compares with the checked tenant, not the setting
ALTER POLICY usage_tenant ON maester.usage
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER POLICY job_tenant ON maester.job
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER POLICY capture_tenant ON maester.capture
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
-- maester writes captures as the table's owner: users cannot forge one
-- for replay() to run
DROP POLICY capture_insert ON maester.capture;
REVOKE INSERT ON maester.capture FROM maester_user;
COMMENT ON TABLE maester.capture IS
    'Prompts, variables and outputs of calls, kept only while maester.capture_content is on (off by default); what maester.replay needs. Written by maester in the caller''s transaction (users cannot insert). Row-level security by tenant.';
ALTER POLICY span_tenant ON maester.span
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

-- users and readers see their own tenant's budgets (budget_status too)
ALTER TABLE maester.budget ENABLE ROW LEVEL SECURITY;
CREATE POLICY budget_admin ON maester.budget FOR ALL TO maester_admin USING (true);
CREATE POLICY budget_tenant ON maester.budget FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

-- one model identity for prices and budgets (router.c)
ALTER TABLE maester.usage ADD COLUMN model_name text;
COMMENT ON COLUMN maester.usage.model_name IS 'The model''s identity, the name prices and budgets know it by: the maester.model row''s name when a row covers the call, else the model id without a snapshot date (NULL for rows of 0.1.0).';

-- a price inserted without valid_from applies from now (the unpriced
-- model's hint suggests INSERT INTO maester.price)
ALTER TABLE maester.price ALTER COLUMN valid_from SET DEFAULT pg_catalog.now();

-- a provider an admin adds wins over the shipped ones (10, 20) for the
-- same pattern (0.1.0's default of 100 lost to them)
ALTER TABLE maester.provider ALTER COLUMN priority SET DEFAULT 0;
COMMENT ON COLUMN maester.provider.priority IS 'Lower first, when several providers'' patterns match a model; 0 by default, so that a provider an admin adds wins over the shipped ones (10 and 20) for the same pattern.';

-- shipped rows are marked, so that pg_dump keeps admins' edits of them
-- (0.1.0 dumped by name and lost the edits): a row is marked when it is
-- still exactly as 0.1.0 shipped it
ALTER TABLE maester.provider ADD COLUMN shipped boolean NOT NULL DEFAULT false;
ALTER TABLE maester.route ADD COLUMN shipped boolean NOT NULL DEFAULT false;
ALTER TABLE maester.route_target ADD COLUMN shipped boolean NOT NULL DEFAULT false;
ALTER TABLE maester.price ADD COLUMN shipped boolean NOT NULL DEFAULT false;
UPDATE maester.provider p SET shipped = true
 WHERE (pg_catalog.to_jsonb(p) OPERATOR(pg_catalog.-) 'shipped') OPERATOR(pg_catalog.=) ANY (ARRAY[
    '{"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1",
      "api_key_env": "OPENAI_API_KEY", "api_key_file": null,
      "models": ["gpt-%", "o1%", "o3%", "o4%", "chatgpt-%"], "priority": 10,
      "connect_timeout_ms": 5000, "timeout_ms": 60000, "max_attempts": 3,
      "backoff_base_ms": 250, "backoff_max_ms": 8000, "circuit_failure_threshold": 5,
      "circuit_cooldown_ms": 30000, "anthropic_version": "2023-06-01", "enabled": true,
      "max_connections": null, "requests_per_minute": null, "tokens_per_minute": null}'::jsonb,
    '{"name": "anthropic", "kind": "anthropic", "base_url": "https://api.anthropic.com",
      "api_key_env": "ANTHROPIC_API_KEY", "api_key_file": null,
      "models": ["claude-%"], "priority": 20,
      "connect_timeout_ms": 5000, "timeout_ms": 60000, "max_attempts": 3,
      "backoff_base_ms": 250, "backoff_max_ms": 8000, "circuit_failure_threshold": 5,
      "circuit_cooldown_ms": 30000, "anthropic_version": "2023-06-01", "enabled": true,
      "max_connections": null, "requests_per_minute": null, "tokens_per_minute": null}'::jsonb]);
UPDATE maester.route SET shipped = true
 WHERE name OPERATOR(pg_catalog.=) 'default'
   AND description OPERATOR(pg_catalog.=) 'Used when no model is given: OpenAI first, Anthropic as fallback.';
UPDATE maester.route_target SET shipped = true
 WHERE (route, position, provider, model) IN (('default', 1, 'openai', 'gpt-4.1-mini'),
                                              ('default', 2, 'anthropic', 'claude-haiku-4-5'));
-- prices are immutable (price_guard): the shipped ones are those 0.1.0
-- inserted, by key and source
ALTER TABLE maester.price DISABLE TRIGGER price_guard;
UPDATE maester.price SET shipped = true
 WHERE (model, valid_from, source) IN (
    ('gpt-4.1',           '2025-04-14', 'openai.com/api/pricing'),
    ('gpt-4.1-mini',      '2025-04-14', 'openai.com/api/pricing'),
    ('gpt-4.1-nano',      '2025-04-14', 'openai.com/api/pricing'),
    ('gpt-4o',            '2024-05-13', 'openai.com/api/pricing'),
    ('gpt-4o-mini',       '2024-07-18', 'openai.com/api/pricing'),
    ('claude-sonnet-4-5', '2025-09-29', 'anthropic.com/pricing'),
    ('claude-haiku-4-5',  '2025-10-15', 'anthropic.com/pricing'),
    ('claude-opus-4-1',   '2025-08-05', 'anthropic.com/pricing'));
ALTER TABLE maester.price ENABLE TRIGGER price_guard;
COMMENT ON COLUMN maester.provider.shipped IS 'True for a row as maester ships it; maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';
COMMENT ON COLUMN maester.route.shipped IS 'True for a row as maester ships it; maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';
COMMENT ON COLUMN maester.route_target.shipped IS 'True for a row as maester ships it; maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';
COMMENT ON COLUMN maester.price.shipped IS 'True for the list prices maester ships; pg_dump keeps every row where it is false.';

CREATE TABLE maester.shipped_removed (
    table_name text NOT NULL
        CHECK (table_name OPERATOR(pg_catalog.=) ANY (ARRAY['provider', 'route', 'route_target', 'model'])),
    key        text[] NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (table_name, key)
);
COMMENT ON TABLE maester.shipped_removed IS
    'Keys of providers, routes, route targets and models that admins deleted or renamed: pg_dump keeps this table, and restoring a row of it deletes the shipped row with that key again (CREATE EXTENSION ships it before the dumped rows are restored). Delete a row here to keep the shipped row at the next restore.';
COMMENT ON COLUMN maester.shipped_removed.key IS 'The deleted row''s primary key, as text: {name} for providers and routes, {route,position} for route targets.';

-- evaluation runs and results belong to a tenant and are written only by
-- eval_run (as the tables' owner): users can no longer insert or rewrite
-- them, and see their own tenant's
ALTER TABLE maester.eval_run ADD COLUMN tenant text NOT NULL DEFAULT 'default';
ALTER TABLE maester.eval_result ADD COLUMN tenant text NOT NULL DEFAULT 'default';
REVOKE INSERT, UPDATE ON maester.eval_run, maester.eval_result FROM maester_user;
COMMENT ON TABLE maester.eval_run IS
    'One run of a suite against a prompt version and model, with its summary: pass rate, mean score, total cost, p50/p95 latency. Written only by maester.eval_run; row-level security by tenant.';
COMMENT ON COLUMN maester.eval_run.tenant IS 'The tenant the run was made as (runs of 0.1.0, and runs restored from its dumps: default).';
COMMENT ON TABLE maester.eval_result IS
    'The result of one case in one run: the output, its evaluation, cost, latency and trace id (or the error). Written only by maester.eval_run; row-level security by tenant.';
COMMENT ON COLUMN maester.eval_result.tenant IS 'The tenant of the run (results of 0.1.0, and results restored from its dumps: default).';
ALTER TABLE maester.eval_run ENABLE ROW LEVEL SECURITY;
CREATE POLICY eval_run_admin ON maester.eval_run FOR ALL TO maester_admin USING (true);
CREATE POLICY eval_run_tenant ON maester.eval_run FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.eval_result ENABLE ROW LEVEL SECURITY;
CREATE POLICY eval_result_admin ON maester.eval_result FOR ALL TO maester_admin USING (true);
CREATE POLICY eval_result_tenant ON maester.eval_result FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

-- prices are finite and bounded: 0.1.0's CHECK (x >= 0) let NaN and
-- Infinity through (numeric orders them above every number), and one such
-- price poisoned the ledger and the tenant's budgets
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT model, valid_from FROM maester.price
              WHERE NOT (input_cost_per_million OPERATOR(pg_catalog.<=) 1000000
                         AND output_cost_per_million OPERATOR(pg_catalog.<=) 1000000
                         AND COALESCE(cache_read_input_cost_per_million, 0) OPERATOR(pg_catalog.<=) 1000000
                         AND COALESCE(cache_creation_input_cost_per_million, 0) OPERATOR(pg_catalog.<=) 1000000) LOOP
        RAISE EXCEPTION 'the price of "%" from % is NaN, Infinity or above 1000000 USD per million tokens, which 0.2.0 refuses',
                p.model, p.valid_from
            USING HINT = 'Prices are immutable: as the owner of maester.price, ALTER TABLE maester.price DISABLE TRIGGER price_guard, delete the row, ENABLE TRIGGER price_guard, then update again.',
                  ERRCODE = 'check_violation';
    END LOOP;
END
$$;
ALTER TABLE maester.price
    DROP CONSTRAINT price_input_cost_per_million_check,
    ADD CONSTRAINT price_input_cost_per_million_check
        CHECK (input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND input_cost_per_million OPERATOR(pg_catalog.<=) 1000000),
    DROP CONSTRAINT price_output_cost_per_million_check,
    ADD CONSTRAINT price_output_cost_per_million_check
        CHECK (output_cost_per_million OPERATOR(pg_catalog.>=) 0 AND output_cost_per_million OPERATOR(pg_catalog.<=) 1000000),
    DROP CONSTRAINT price_cache_read_input_cost_per_million_check,
    ADD CONSTRAINT price_cache_read_input_cost_per_million_check
        CHECK (cache_read_input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND cache_read_input_cost_per_million OPERATOR(pg_catalog.<=) 1000000),
    DROP CONSTRAINT price_cache_creation_input_cost_per_million_check,
    ADD CONSTRAINT price_cache_creation_input_cost_per_million_check
        CHECK (cache_creation_input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND cache_creation_input_cost_per_million OPERATOR(pg_catalog.<=) 1000000);
COMMENT ON COLUMN maester.price.input_cost_per_million IS 'USD per 1M input tokens: from 0 to 1,000,000 (NaN and Infinity are refused, like the other prices).';

-- settlements above their reservation are flagged (issue #14)
ALTER TABLE maester.usage ADD COLUMN overrun_usd numeric;
CREATE INDEX usage_overrun ON maester.usage (tenant, ts) WHERE overrun_usd IS NOT NULL;
COMMENT ON COLUMN maester.usage.overrun_usd IS 'How much the settled cost exceeded the worst case reserved before sending (estimated_cost_usd), when it did: the provider reported more tokens than the prompt''s bytes and max_tokens allow. NULL otherwise.';

-- output limits per model and rate limits per tenant (issue #14)
ALTER TABLE maester.model ADD COLUMN max_output_tokens integer CHECK (max_output_tokens OPERATOR(pg_catalog.>) 0);
COMMENT ON COLUMN maester.model.max_output_tokens IS 'The most output tokens the model may be asked for: a larger max_tokens skips the target (22023). NULL: maester.max_output_tokens.';

CREATE TABLE maester.tenant_limit (
    tenant              text PRIMARY KEY
        CHECK (pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.>=) 1
               AND pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.<) 64)
        CONSTRAINT tenant_limit_tenant_printable
            CHECK (tenant OPERATOR(pg_catalog.!~) '[\x01-\x1f\x7f\u0080-\u009f]'),
    requests_per_minute integer CHECK (requests_per_minute OPERATOR(pg_catalog.>) 0),
    tokens_per_minute   integer CHECK (tokens_per_minute OPERATOR(pg_catalog.>) 0)
);

COMMENT ON TABLE maester.tenant_limit IS
    'Per-tenant rate limits, paced like a provider''s (calls wait their turn, never beyond their timeout): one tenant''s calls cannot take more of the providers'' capacity than this, whatever its max_tokens. Admins write; users and readers see their own tenant''s row.';
COMMENT ON COLUMN maester.tenant_limit.tenant IS 'The tenant (maester.tenant).';
COMMENT ON COLUMN maester.tenant_limit.requests_per_minute IS 'Attempts per minute across all providers; NULL: no limit.';
COMMENT ON COLUMN maester.tenant_limit.tokens_per_minute IS 'Input estimate plus max_tokens per minute across all providers; NULL: no limit.';

ALTER TABLE maester.tenant_limit ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_limit_admin ON maester.tenant_limit FOR ALL TO maester_admin USING (true);
CREATE POLICY tenant_limit_own ON maester.tenant_limit FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

-- tenant names without control characters (the setting refuses them too)
DO $$
DECLARE
    t text;
BEGIN
    SELECT tenant INTO t FROM maester.tenant_member
     WHERE tenant OPERATOR(pg_catalog.~) '[\x01-\x1f\x7f\u0080-\u009f]' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'tenant name % contains a control character, which 0.2.0 refuses', pg_catalog.quote_literal(t)
            USING HINT = 'Rename the tenant in maester.tenant_member (and its rows elsewhere), then update again.',
                  ERRCODE = 'check_violation';
    END IF;
END
$$;
ALTER TABLE maester.tenant_member ADD CONSTRAINT tenant_member_tenant_printable
    CHECK (tenant OPERATOR(pg_catalog.!~) '[\x01-\x1f\x7f\u0080-\u009f]');

-- finish reasons in one vocabulary, the provider's own and its request id (issue #15)
ALTER TABLE maester.usage ADD COLUMN finish_reason text,
    ADD COLUMN provider_finish_reason text,
    ADD COLUMN provider_request_id text;
COMMENT ON COLUMN maester.usage.finish_reason IS 'Why the answer ended, in one vocabulary over the providers: stop, length, tool_calls, content_filter, refusal or other.';
COMMENT ON COLUMN maester.usage.provider_finish_reason IS 'The finish reason as the provider gave it (finish_reason at OpenAI, stop_reason at Anthropic).';
COMMENT ON COLUMN maester.usage.provider_request_id IS 'The provider''s id of the request (its x-request-id or request-id header), for its support.';

-- a job's result is 0.1.0's generation, frozen: a stored composite value
-- must have every attribute of its type, so a job.result of type
-- generation would make every older dump fail to restore once generation
-- gains an attribute; fields added since are job columns
CREATE TYPE maester.job_result AS (
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
    evaluation          jsonb
);
COMMENT ON TYPE maester.job_result IS
    'A job''s result: the maester.generation fields of 0.1.0, frozen, so that dumps of any version restore (a stored composite value must have every attribute of its type). Fields the generation gained since are columns of maester.job (tool_calls, parsed, refusal).';
ALTER TABLE maester.job ALTER COLUMN result TYPE maester.job_result
    USING result::text::maester.job_result;
ALTER TABLE maester.job ADD COLUMN tool_calls jsonb, ADD COLUMN parsed jsonb,
    ADD COLUMN refusal text;
COMMENT ON COLUMN maester.job.result IS 'The call''s result when it is done: maester.generation''s fields of 0.1.0 (maester.job_result).';
COMMENT ON COLUMN maester.job.tool_calls IS 'The result''s maester.generation.tool_calls.';
COMMENT ON COLUMN maester.job.parsed IS 'The result''s maester.generation.parsed.';
COMMENT ON COLUMN maester.job.refusal IS 'The result''s maester.generation.refusal.';

-- conversations, tools and structured output (issue #15): the generation's
-- tool calls, parsed answer and refusal (appended), llm_generate's
-- messages argument, captured conversations
ALTER TYPE maester.generation ADD ATTRIBUTE tool_calls jsonb,
    ADD ATTRIBUTE parsed jsonb, ADD ATTRIBUTE refusal text;
ALTER TYPE maester.batch_result ADD ATTRIBUTE tool_calls jsonb,
    ADD ATTRIBUTE parsed jsonb, ADD ATTRIBUTE refusal text;
COMMENT ON COLUMN maester.generation.tool_calls IS 'The tools the model called (options.tools): [{id, name, arguments}], arguments as JSON, for OpenAI and Anthropic alike; NULL when it called none. Append it to messages as an assistant message''s tool_calls to continue a tool loop.';
COMMENT ON COLUMN maester.generation.parsed IS 'With response_format json_schema or json_object: the answer parsed as JSON (NULL when it is not JSON); the schema is checked by the evaluation''s json_schema check.';
COMMENT ON COLUMN maester.generation.refusal IS 'A refusal''s text (OpenAI message.refusal; Anthropic stop_reason refusal), kept apart from content, which is then empty; finish_reason is refusal.';
DROP FUNCTION maester.llm_generate(text, text, integer, text, text, jsonb, text, jsonb);
ALTER TABLE maester.capture ADD COLUMN messages jsonb;

-- what each model accepts (issue #15): sampling parameters it refuses, the
-- name of its output limit, how it is asked for structured output
ALTER TABLE maester.model
    ADD COLUMN unsupported_params text[] CHECK (unsupported_params OPERATOR(pg_catalog.<@) ARRAY['temperature', 'top_p', 'stop']),
    ADD COLUMN output_limit_param text CHECK (output_limit_param OPERATOR(pg_catalog.=) ANY (ARRAY['max_tokens', 'max_completion_tokens'])),
    ADD COLUMN structured_output  text CHECK (structured_output OPERATOR(pg_catalog.=) ANY (ARRAY['native', 'tool']));
COMMENT ON COLUMN maester.model.unsupported_params IS 'Sampling parameters the model refuses (of temperature, top_p, stop): left out of its requests, and named on the span (maester.request.dropped_params). NULL: the rule (README, Models): OpenAI reasoning models (o1, o3, o4, gpt-5 but not -chat) refuse all three; Claude newer than 4.6 refuses temperature and top_p; Claude 4.1 to 4.6 refuses the two together (top_p is left out). ''{}'': none.';
COMMENT ON COLUMN maester.model.output_limit_param IS 'The request member the output limit is sent as: max_tokens or max_completion_tokens. NULL: the kind''s (max_completion_tokens at openai, max_tokens at openai_compatible; Anthropic always max_tokens). Set max_completion_tokens for OpenAI reasoning models behind a compatible endpoint (a proxy, Azure).';
COMMENT ON COLUMN maester.model.structured_output IS 'How a json_schema response format is asked of an Anthropic model: native (output_config.format) or tool (a forced tool whose input is the answer, which every Claude model has). NULL: tool. OpenAI kinds always send response_format.';

-- chat prompts (issue #15): a version may be a list of role messages
-- instead of a template (and a system template)
ALTER TABLE maester.prompt_version ALTER COLUMN template DROP NOT NULL,
    ADD COLUMN messages jsonb,
    ADD CONSTRAINT prompt_version_template_or_messages
        CHECK ((template IS NULL) OPERATOR(pg_catalog.<>) (messages IS NULL)
               AND (messages IS NULL OR system_template IS NULL));
COMMENT ON COLUMN maester.prompt_version.template IS 'User prompt template: {name} is replaced, {{ and }} are literal braces. NULL for a chat prompt (messages).';
COMMENT ON COLUMN maester.prompt_version.messages IS 'A chat prompt: [{role, content}] with roles system, user and assistant, each content a template of the same syntax; instead of template and system_template.';
COMMENT ON COLUMN maester.prompt_version.template_hash IS 'SHA-256 hex of the version''s content: the jsonb text of {template, system_template, config, checks}, and messages for a chat prompt (computed at registration).';
ALTER TYPE maester.rendered_prompt ADD ATTRIBUTE messages jsonb;
COMMENT ON COLUMN maester.rendered_prompt.messages IS
    'A chat prompt''s rendered conversation ([{role, content}]); content and system are then NULL, and hash is over the conversation''s canonical form.';
DROP FUNCTION maester.prompt_register(text, text, text, text, jsonb, jsonb, text);

-- usage details (issue #15): reasoning tokens, hour-long cache writes and
-- their price, the service tier
ALTER TABLE maester.usage ADD COLUMN reasoning_tokens bigint,
    ADD COLUMN cache_write_1h_tokens bigint, ADD COLUMN service_tier text;
COMMENT ON COLUMN maester.usage.reasoning_tokens IS 'Of output_tokens, those the model spent reasoning (OpenAI completion_tokens_details.reasoning_tokens, Anthropic output_tokens_details.thinking_tokens).';
COMMENT ON COLUMN maester.usage.cache_write_1h_tokens IS 'Of cache_write_tokens, those written for an hour (Anthropic cache_creation.ephemeral_1h_input_tokens), priced at price.cache_creation_1h_input_cost_per_million.';
COMMENT ON COLUMN maester.usage.service_tier IS 'The service tier that served the call, as the provider said it (OpenAI service_tier, Anthropic usage.service_tier).';
ALTER TABLE maester.price ADD COLUMN cache_creation_1h_input_cost_per_million numeric
    CHECK (cache_creation_1h_input_cost_per_million OPERATOR(pg_catalog.>=) 0 AND cache_creation_1h_input_cost_per_million OPERATOR(pg_catalog.<=) 1000000);
COMMENT ON COLUMN maester.price.cache_creation_1h_input_cost_per_million IS 'Price of prompt tokens written to the cache for an hour (Anthropic''s ttl 1h); NULL: twice the input price, Anthropic''s published rate (5-minute writes are cache_creation_input_cost_per_million).';

-- Azure OpenAI as a provider kind (issue #15), with its api-version
ALTER TABLE maester.provider DROP CONSTRAINT provider_kind_check,
    ADD CONSTRAINT provider_kind_check CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['openai', 'anthropic', 'openai_compatible', 'azure'])),
    ADD COLUMN api_version text CHECK (api_version OPERATOR(pg_catalog.~) '^[A-Za-z0-9._-]{1,64}$');
COMMENT ON COLUMN maester.provider.kind IS 'openai (Chat Completions), anthropic (Messages API), openai_compatible (Ollama, vLLM, llama.cpp, Groq, Together, ...), or azure (Azure OpenAI: api-key header, the deployment as the model).';
COMMENT ON COLUMN maester.provider.api_version IS 'azure: the api-version of deployment URLs ({base_url}/openai/deployments/{model}/chat/completions?api-version=...); NULL: Azure''s v1 API ({base_url}/openai/v1/chat/completions). Other kinds: unused.';

-- embeddings through the gateway (issue #16): embedding models, a route
-- for embed() without a model, OpenAI's embedding models and list prices
ALTER TABLE maester.provider ADD COLUMN embedding_batch_tokens integer
    CHECK (embedding_batch_tokens OPERATOR(pg_catalog.>) 0);
COMMENT ON COLUMN maester.provider.embedding_batch_tokens IS 'Most tokens (counted at their worst, a token per UTF-8 byte) maester.embed sends in one request to this provider; NULL: 300,000, OpenAI''s limit. Requests also hold at most 2,048 inputs.';
ALTER TABLE maester.model ADD COLUMN embedding_dimensions integer
    CHECK (embedding_dimensions BETWEEN 1 AND 65536);
COMMENT ON COLUMN maester.model.embedding_dimensions IS 'An embedding model''s vector length: maester.embed refuses answers of another length unless the call asks for dimensions. NULL: a chat model, or an embedding model whose length is taken as it comes.';
UPDATE maester.provider SET models = models OPERATOR(pg_catalog.||) 'text-embedding-%'::text
 WHERE name OPERATOR(pg_catalog.=) 'openai' AND shipped;
INSERT INTO maester.route (name, description, shipped)
VALUES ('default_embedding', 'Used by maester.embed when no model is given.', true)
ON CONFLICT DO NOTHING;
INSERT INTO maester.route_target (route, position, provider, model, shipped)
SELECT 'default_embedding', 1, 'openai', 'text-embedding-3-small', true
 WHERE EXISTS (SELECT FROM maester.route r WHERE r.name OPERATOR(pg_catalog.=) 'default_embedding' AND r.shipped)
   AND EXISTS (SELECT FROM maester.provider p WHERE p.name OPERATOR(pg_catalog.=) 'openai')
ON CONFLICT DO NOTHING;
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million,
                           cache_read_input_cost_per_million, cache_creation_input_cost_per_million, source, shipped)
VALUES ('text-embedding-3-small', '2024-01-25', 0.02, 0, NULL, NULL, 'openai.com/api/pricing', true),
       ('text-embedding-3-large', '2024-01-25', 0.13, 0, NULL, NULL, 'openai.com/api/pricing', true)
ON CONFLICT DO NOTHING;
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
COMMENT ON COLUMN maester.usage.purpose IS 'generation, evaluation for calls made by evaluators, or embedding (maester.embed).';

-- the embedding cache (issue #16): hits are ledger rows of status cached
ALTER TABLE maester.usage DROP CONSTRAINT usage_status_check,
    ADD CONSTRAINT usage_status_check CHECK (status OPERATOR(pg_catalog.=) ANY
        ('{pending,ok,error,timeout,cancelled,orphaned,blocked,cached}'::pg_catalog.text[]));
COMMENT ON COLUMN maester.usage.status IS 'pending (in flight), ok, error, timeout, cancelled, orphaned (its backend died mid-call; charged at the estimate), blocked (refused by a budget), cached (embeddings the cache answered: cost 0, estimated_cost_usd what they would have cost).';
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

-- OpenAI's embedding models shipped as rows (with their dimensions), under
-- the shipped-row rules of providers and routes (an admin's row of the
-- same name wins)
ALTER TABLE maester.model ADD COLUMN shipped boolean NOT NULL DEFAULT false,
    ADD COLUMN max_input_tokens integer CHECK (max_input_tokens OPERATOR(pg_catalog.>) 0);
COMMENT ON COLUMN maester.model.max_input_tokens IS 'An embedding model''s input limit in tokens (8,192 for OpenAI''s). maester.embed sends an input whose UTF-8 bytes exceed it (so that it may be over: a token is at least a byte) in a request of its own, so that the provider''s refusal of it costs the other inputs nothing; NULL: no limit known.';
COMMENT ON COLUMN maester.model.shipped IS 'True for a row as maester ships it (OpenAI''s embedding models); maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';
INSERT INTO maester.model (name, provider, provider_model, description, embedding_dimensions, max_input_tokens, shipped)
SELECT m.name, 'openai', m.name, m.description, m.dims, 8192, true
  FROM (VALUES ('text-embedding-3-small', 'OpenAI embedding model, 1,536 dimensions (fewer on request), 8,192 input tokens.', 1536),
               ('text-embedding-3-large', 'OpenAI embedding model, 3,072 dimensions (fewer on request), 8,192 input tokens.', 3072))
       AS m(name, description, dims)
 WHERE EXISTS (SELECT FROM maester.provider p WHERE p.name OPERATOR(pg_catalog.=) 'openai')
ON CONFLICT DO NOTHING;

-- route strategies (issue #19): which target a call tries first, by
-- weight, latency, cost or evaluation; the choice is on the ledger row
ALTER TABLE maester.route
    ADD COLUMN strategy text NOT NULL DEFAULT 'ordered'
        CHECK (strategy OPERATOR(pg_catalog.=) ANY
               (ARRAY['ordered', 'weighted', 'lowest_latency', 'lowest_cost', 'best_evaluation'])),
    ADD COLUMN sticky text CHECK (sticky OPERATOR(pg_catalog.=) 'tenant');
ALTER TABLE maester.route_target
    ADD COLUMN weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 0 AND 1000000);
COMMENT ON COLUMN maester.route.strategy IS 'Which target a call tries first, the others following as its fallbacks: ordered (position order), weighted (drawn by weight), lowest_latency (recent mean latency in this database), lowest_cost (the call''s worst case at each target''s prices), best_evaluation (the tenant''s recent evaluation scores of the prompt version per model). The choice and why are on the call''s ledger rows and model_route span.';
COMMENT ON COLUMN maester.route.sticky IS 'tenant: a weighted route draws by a hash of the tenant, so that a tenant always lands on the same target (options.sticky_key, when given, is hashed instead). NULL: each call draws at random unless it gives a sticky_key.';
COMMENT ON COLUMN maester.route_target.weight IS 'Its share of a weighted route''s calls (weight / the sum of the route''s weights); 0: fallback only. Other strategies ignore it.';
ALTER TABLE maester.usage ADD COLUMN route_strategy text, ADD COLUMN route_reason text;
COMMENT ON COLUMN maester.usage.route_strategy IS 'The strategy of the route the call went through (maester.route.strategy); NULL: a model, not a route.';
COMMENT ON COLUMN maester.usage.route_reason IS 'Why the route''s strategy put its first target first (weight and draw, recent latency, worst-case cost, evaluation score), e.g. "openai/gpt-4.1-mini: weight 90 of 100, drawn at random".';
CREATE INDEX usage_evaluated ON maester.usage (tenant, prompt_name, prompt_version, ts)
    INCLUDE (model_name, eval_status, eval_score) WHERE eval_status IS NOT NULL;

-- the response cache (issue #19): hits and misses on the ledger rows, and
-- the generation says whether the cache answered
ALTER TYPE maester.generation ADD ATTRIBUTE cached boolean;
ALTER TYPE maester.batch_result ADD ATTRIBUTE cached boolean;
ALTER TABLE maester.job ADD COLUMN cached boolean;
COMMENT ON COLUMN maester.job.cached IS 'The result''s maester.generation.cached: the response cache answered.';
COMMENT ON TYPE maester.job_result IS
    'A job''s result: the maester.generation fields of 0.1.0, frozen, so that dumps of any version restore (a stored composite value must have every attribute of its type). Fields the generation gained since are columns of maester.job (tool_calls, parsed, refusal, cached).';
COMMENT ON COLUMN maester.generation.cached IS 'True when the response cache answered (options.cache): nothing was sent, cost_usd is 0, and evaluation is the one the answer had when it was made.';
ALTER TABLE maester.usage
    ADD COLUMN cache text CHECK (cache OPERATOR(pg_catalog.=) ANY ('{hit,miss,skipped}'::pg_catalog.text[])),
    ADD COLUMN saved_usd numeric;
COMMENT ON COLUMN maester.usage.cache IS 'The response cache (options.cache): hit (answered from the cache: status cached, cost 0), miss (sent, and its answer kept), skipped (asked for, but the call samples: a temperature that is not 0); NULL: not asked for.';
COMMENT ON COLUMN maester.usage.saved_usd IS 'A cache hit: what the answer cost when it was made, which this call did not spend.';
COMMENT ON COLUMN maester.usage.status IS 'pending (in flight), ok, error, timeout, cancelled, orphaned (its backend died mid-call; charged at the estimate), blocked (refused by a budget), cached (the embedding cache answered: cost 0, estimated_cost_usd what they would have cost; or the response cache: cost 0, saved_usd what the answer had cost).';
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

-- prompt rollouts (issue #19): a label may split its renders over several
-- versions by weight (prompt_label.weights), and its history records every
-- change of the weights; prompt_render takes a sticky key (a fourth
-- argument: the three-argument function is dropped, the re-created file
-- makes the new one)
ALTER TABLE maester.prompt_label ADD COLUMN weights jsonb;
ALTER TABLE maester.prompt_label_history ADD COLUMN weights jsonb;
COMMENT ON COLUMN maester.prompt_label.version IS 'The version the label points at; during a rollout, its main arm (the heaviest weight, on a tie the earliest registered).';
COMMENT ON COLUMN maester.prompt_label.weights IS 'A rollout: {"version": weight, ...} with positive integer weights over two or more versions; renders by the label pick one by weight (sticky by a key, else at random). NULL: a plain label, always version. Set by maester.prompt_set_rollout(), cleared by maester.prompt_set_label().';
COMMENT ON TABLE maester.prompt_label_history IS
    'Every move of a label: who, when, from which version to which (from_version NULL: label created; to_version NULL: label removed), and every change of a rollout''s weights. Append-only, written by the registry.';
COMMENT ON COLUMN maester.prompt_label_history.weights IS 'The label''s rollout weights after the change ({"version": weight, ...}); NULL: a plain label (or removed). to_version is then the rollout''s main arm.';
DROP FUNCTION maester.prompt_render(text, jsonb, text);

-- Knowledge bases (src/sql/tables/95_knowledge.sql)
-- What makes a vector: immutable, like a prompt version.  "Which embedding
-- version was used?" is a column of every embedding, never a guess.
CREATE TABLE maester.embedding_profile (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model            text NOT NULL CHECK (model OPERATOR(pg_catalog.<>) ''),
    dimensions       integer CHECK (dimensions OPERATOR(pg_catalog.>) 0),
    normalize        boolean NOT NULL DEFAULT true,
    document_prefix  text NOT NULL DEFAULT '',
    query_prefix     text NOT NULL DEFAULT '',
    profile_hash     text NOT NULL UNIQUE,
    served_model     text,
    served_dimensions integer,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE maester.embedding_profile IS
    'How a knowledge base''s vectors are made: the model asked for, the dimensions, normalisation and the prefixes put before documents and queries; profile_hash is the SHA-256 of these. Immutable, except that served_model and served_dimensions are set once, by the first embedding: vectors of one profile never come from two models.';
COMMENT ON COLUMN maester.embedding_profile.served_model IS 'The model id the provider said made the profile''s first vectors; an answer from another model (a fallback) is refused, so one profile never mixes vector spaces.';
COMMENT ON COLUMN maester.embedding_profile.served_dimensions IS 'The length of the profile''s vectors, from its first embedding.';

CREATE TABLE maester.kb (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant           text NOT NULL,
    name             text NOT NULL CHECK (name OPERATOR(pg_catalog.<>) '' AND
                                          pg_catalog.length(name) OPERATOR(pg_catalog.<=) 200 AND
                                          name OPERATOR(pg_catalog.!~) '[[:cntrl:]]'),
    owner            name NOT NULL,
    profile_id       bigint NOT NULL REFERENCES maester.embedding_profile (id),
    next_profile_id  bigint REFERENCES maester.embedding_profile (id),
    chunking         jsonb NOT NULL,
    fts_config       regconfig NOT NULL,
    paused_reason    text,
    paused_until     timestamptz,
    pauses           integer NOT NULL DEFAULT 0,
    max_source_bytes integer NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    UNIQUE (tenant, name)
);

COMMENT ON TABLE maester.kb IS
    'Knowledge bases (maester.kb_create): a tenant''s documents, chunked and embedded in the background under one active embedding profile. Row-level security by tenant.';
COMMENT ON COLUMN maester.kb.owner IS 'The role that created it: the embedding calls run as this role and the kb''s tenant (its budgets, its ledger rows).';
COMMENT ON COLUMN maester.kb.profile_id IS 'The active embedding profile: the one retrieval uses.';
COMMENT ON COLUMN maester.kb.next_profile_id IS 'The profile kb_reindex builds in the background; it becomes profile_id at once when every current document has its vectors.';
COMMENT ON COLUMN maester.kb.paused_reason IS 'Why the queue waits (a failure that belongs to no document: unknown model, missing key, open circuit, budget); NULL when it runs. No document''s retries are charged for it.';
COMMENT ON COLUMN maester.kb.max_source_bytes IS 'The most UTF-8 bytes one of its chunks takes as a numbered source of maester.ask (title, section path and text), over every chunk it ever had: what ask reserves per source against budgets before anything is sent.';
COMMENT ON COLUMN maester.kb.paused_until IS 'When the paused queue is tried again (backing off, up to 10 minutes); kb_retry tries at once.';

CREATE TABLE maester.document (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kb_id            bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    tenant           text NOT NULL,
    external_id      text NOT NULL CHECK (external_id OPERATOR(pg_catalog.<>) ''),
    version          integer NOT NULL,
    content_hash     text NOT NULL,
    mime             text NOT NULL,
    title            text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    content          text,
    content_binary   bytea,
    parsed           text,
    stage            text NOT NULL DEFAULT 'queued'
        CHECK (stage OPERATOR(pg_catalog.=) ANY
               (ARRAY['queued', 'parsed', 'chunked', 'embedded', 'indexed', 'failed'])),
    current          boolean NOT NULL DEFAULT false,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    error_class      text,
    error_message    text,
    source           regclass,
    trace_id         text NOT NULL,
    span_id          text NOT NULL,
    parent_span_id   text,
    created_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at       timestamptz NOT NULL DEFAULT pg_catalog.now(),
    indexed_at       timestamptz,
    superseded_at    timestamptz,
    CHECK ((content IS NULL) OPERATOR(pg_catalog.<>) (content_binary IS NULL)),
    UNIQUE (kb_id, external_id, version)
);

CREATE INDEX document_work ON maester.document (kb_id, id)
    WHERE stage OPERATOR(pg_catalog.<>) ALL (ARRAY['indexed', 'failed']);
CREATE UNIQUE INDEX document_current ON maester.document (kb_id, external_id) WHERE current;

COMMENT ON TABLE maester.document IS
    'Documents of the knowledge bases, one row per version (maester.ingest, maester.kb_sync): the source, its parsed text (what citations point into) and the stage it reached. The current version answers; a new version becomes current when it is indexed. Row-level security by tenant.';
COMMENT ON COLUMN maester.document.content_hash IS 'SHA-256 (hex) of the source as given (text in UTF-8, or the bytes): the same content again is no new version.';
COMMENT ON COLUMN maester.document.parsed IS 'The text the parser made of the source (Markdown-like: headings, paragraphs, lists, fenced code): chunk offsets are characters into it.';
COMMENT ON COLUMN maester.document.stage IS 'queued, parsed, chunked, embedded (every chunk has its vector), indexed (current and searchable), failed (see error_class and error_message; maester.kb_retry queues it again).';
COMMENT ON COLUMN maester.document.current IS 'True for the version that answers (at most one per external id); false for a version still in the pipeline and for superseded ones.';
COMMENT ON COLUMN maester.document.trace_id IS 'The document''s trace: the ingesting transaction''s maester.traceparent, or a new one. Its spans (kb_ingest, its root, then kb_parse, kb_chunk, kb_embed, kb_index) are in maester.span; kb_embed names the trace of the embedding call that made its vectors.';
COMMENT ON COLUMN maester.document.source IS 'The table kb_sync keeps this document in sync with (NULL: maester.ingest).';

CREATE TABLE maester.chunk (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    document_id      bigint NOT NULL REFERENCES maester.document (id) ON DELETE CASCADE,
    kb_id            bigint NOT NULL,
    tenant           text NOT NULL,
    seq              integer NOT NULL,
    heading_path     text[] NOT NULL DEFAULT '{}',
    heading          text NOT NULL DEFAULT '',
    start_offset     integer NOT NULL,
    end_offset       integer NOT NULL,
    token_estimate   integer NOT NULL,
    content          text NOT NULL,
    content_hash     bytea NOT NULL,
    fts_config       regconfig NOT NULL,
    tsv              tsvector GENERATED ALWAYS AS
        (pg_catalog.setweight(pg_catalog.to_tsvector(fts_config, heading), 'A') OPERATOR(pg_catalog.||)
         pg_catalog.setweight(pg_catalog.to_tsvector(fts_config, content), 'B')) STORED,
    UNIQUE (document_id, seq)
);

CREATE INDEX chunk_tsv ON maester.chunk USING gin (tsv);
CREATE INDEX chunk_reuse ON maester.chunk (kb_id, content_hash);

COMMENT ON TABLE maester.chunk IS
    'Passages of the documents'' parsed text, cut by structure (sections, paragraphs, sentences) within the kb''s token bound: what is embedded and searched, and what a citation points at. Row-level security by tenant.';
COMMENT ON COLUMN maester.chunk.heading_path IS 'The headings the passage is under, outermost first.';
COMMENT ON COLUMN maester.chunk.start_offset IS 'Where the passage starts in document.parsed: characters, from 0 (content = substr(parsed, start_offset + 1, end_offset - start_offset)).';
COMMENT ON COLUMN maester.chunk.token_estimate IS 'maester.estimate_tokens(content): a conservative estimate of OpenAI''s token count.';
COMMENT ON COLUMN maester.chunk.content_hash IS 'SHA-256 of content: a chunk of a new version with the text of an embedded one takes its vector instead of being embedded again.';
COMMENT ON COLUMN maester.chunk.tsv IS 'Full-text vector in the kb''s configuration: headings weighted A, text B.';

CREATE TABLE maester.chunk_embedding (
    profile_id       bigint NOT NULL REFERENCES maester.embedding_profile (id),
    chunk_id         bigint NOT NULL REFERENCES maester.chunk (id) ON DELETE CASCADE,
    kb_id            bigint NOT NULL,
    document_id      bigint NOT NULL,
    live             boolean NOT NULL DEFAULT false,
    tenant           text NOT NULL,
    embedding        real[] NOT NULL,
    PRIMARY KEY (profile_id, chunk_id)
);
-- vectors are scanned, never compressed or moved out of line (TOASTed
-- vectors are 3-6x slower to scan)
ALTER TABLE maester.chunk_embedding ALTER COLUMN embedding SET STORAGE PLAIN;
CREATE INDEX chunk_embedding_chunk ON maester.chunk_embedding (chunk_id);
CREATE INDEX chunk_embedding_kb ON maester.chunk_embedding (kb_id, profile_id) WHERE live;
CREATE INDEX chunk_embedding_document ON maester.chunk_embedding (document_id);

COMMENT ON TABLE maester.chunk_embedding IS
    'A chunk''s vector under one embedding profile (real[], stored PLAIN: in line, uncompressed). A chunk may have vectors of two profiles while kb_reindex runs. Row-level security by tenant.';
COMMENT ON COLUMN maester.chunk_embedding.live IS 'Its document is the current version: what search scans (a version still in the pipeline has vectors that do not answer yet).';

CREATE TABLE maester.kb_source (
    kb_id            bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    source           regclass NOT NULL,
    id_column        name NOT NULL,
    content_column   name NOT NULL,
    title_column     name,
    metadata_columns name[],
    mime             text NOT NULL DEFAULT 'text/plain',
    content_is_bytea boolean NOT NULL DEFAULT false,
    synced_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (kb_id, source)
);

COMMENT ON TABLE maester.kb_source IS
    'Tables maester.kb_sync keeps in knowledge bases: their rows are documents (external id: the id column''s text), kept current by statement-level triggers.';

ALTER TABLE maester.kb ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_admin ON maester.kb FOR ALL TO maester_admin USING (true);
CREATE POLICY kb_tenant ON maester.kb FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.document ENABLE ROW LEVEL SECURITY;
CREATE POLICY document_admin ON maester.document FOR ALL TO maester_admin USING (true);
CREATE POLICY document_tenant ON maester.document FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.chunk ENABLE ROW LEVEL SECURITY;
CREATE POLICY chunk_admin ON maester.chunk FOR ALL TO maester_admin USING (true);
CREATE POLICY chunk_tenant ON maester.chunk FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.chunk_embedding ENABLE ROW LEVEL SECURITY;
CREATE POLICY chunk_embedding_admin ON maester.chunk_embedding FOR ALL TO maester_admin USING (true);
CREATE POLICY chunk_embedding_tenant ON maester.chunk_embedding FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
ALTER TABLE maester.kb_source ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_source_admin ON maester.kb_source FOR ALL TO maester_admin USING (true);
ALTER TABLE maester.embedding_profile ENABLE ROW LEVEL SECURITY;
CREATE POLICY embedding_profile_admin ON maester.embedding_profile FOR ALL TO maester_admin USING (true);
CREATE POLICY embedding_profile_tenant ON maester.embedding_profile FOR SELECT TO maester_user, maester_reader
    USING (EXISTS (SELECT FROM maester.kb k WHERE embedding_profile.id OPERATOR(pg_catalog.=) ANY (ARRAY[k.profile_id, k.next_profile_id])));
CREATE POLICY kb_source_tenant ON maester.kb_source FOR SELECT TO maester_user, maester_reader
    USING (EXISTS (SELECT FROM maester.kb k WHERE k.id OPERATOR(pg_catalog.=) kb_id));

-- A hit of maester.search
CREATE TYPE maester.search_hit AS (
    rank              integer,
    chunk_id          bigint,
    document_id       bigint,
    document_version  integer,
    external_id       text,
    title             text,
    heading_path      text[],
    start_offset      integer,
    end_offset        integer,
    snippet           text,
    score             double precision,
    vector_rank       integer,
    vector_similarity double precision,
    fts_rank          integer,
    fts_score         double precision,
    metadata          jsonb,
    content           text
);

COMMENT ON TYPE maester.search_hit IS
    'A hit of maester.search: the passage (chunk, its document version, section path, character offsets into the parsed text, a snippet), the fused score, and each branch''s rank and raw score (NULL when the branch did not find it).';

-- Retrieval evaluations (maester.kb_eval): one row per mode of a run
CREATE TABLE maester.kb_eval_run (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run         uuid NOT NULL,
    tenant      text NOT NULL,
    kb_id       bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    profile_id  bigint NOT NULL REFERENCES maester.embedding_profile (id),
    mode        text NOT NULL,
    k           integer NOT NULL,
    cases       integer NOT NULL,
    recall      double precision,
    mrr         double precision,
    ndcg        double precision,
    details     jsonb NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name NOT NULL
);

COMMENT ON TABLE maester.kb_eval_run IS
    'Retrieval evaluations (maester.kb_eval): per run and search mode, recall@k, MRR and nDCG@k over the cases, with the profile the kb had, so that profiles and modes can be compared. Row-level security by tenant.';
COMMENT ON COLUMN maester.kb_eval_run.details IS 'Per case: the query, the relevant external ids, the documents found in rank order, and the rank of the first relevant one.';

ALTER TABLE maester.kb_eval_run ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_eval_run_admin ON maester.kb_eval_run FOR ALL TO maester_admin USING (true);
CREATE POLICY kb_eval_run_tenant ON maester.kb_eval_run FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));

-- Embedding batches in flight (the knowledge worker's)
CREATE TABLE maester.kb_batch (
    trace_id    text PRIMARY KEY,
    kb_id       bigint NOT NULL REFERENCES maester.kb (id) ON DELETE CASCADE,
    profile_id  bigint NOT NULL,
    documents   bigint[] NOT NULL,
    chunks      integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE maester.kb_batch IS
    'Embedding batches in flight: made durable before the knowledge worker sends one, deleted in the transaction that stores its vectors. One left after a crash was sent and may have been billed: it is not sent again by itself (its documents fail with error_class interrupted, or a reindex pauses); maester.kb_retry sends it again. Admins only.';

ALTER TABLE maester.kb_batch ENABLE ROW LEVEL SECURITY;
CREATE POLICY kb_batch_admin ON maester.kb_batch FOR ALL TO maester_admin USING (true);
