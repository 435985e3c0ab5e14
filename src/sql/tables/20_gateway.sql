-- src/sql/tables/20_gateway.sql: The model gateway's configuration: providers, models, routes, and the shipped rows.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TABLE maester.provider (
    name                      text PRIMARY KEY
        CHECK (pg_catalog.octet_length(name) BETWEEN 1 AND 127),
    kind                      text NOT NULL
        CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['openai', 'anthropic', 'openai_compatible', 'azure'])),
    base_url                  text NOT NULL
        CHECK (base_url OPERATOR(pg_catalog.~) '^https?://[^/?#]+'),
    api_key_env               text
        CHECK (api_key_env OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*_(KEY|TOKEN)$'),
    api_key_file              text
        CHECK (api_key_file OPERATOR(pg_catalog.~) '^[^/]+$' AND api_key_file OPERATOR(pg_catalog.<>) ALL (ARRAY['.', '..'])),
    models                    text[] NOT NULL DEFAULT '{}',
    priority                  integer NOT NULL DEFAULT 0,
    connect_timeout_ms        integer NOT NULL DEFAULT 5000 CHECK (connect_timeout_ms OPERATOR(pg_catalog.>) 0),
    timeout_ms                integer NOT NULL DEFAULT 60000 CHECK (timeout_ms OPERATOR(pg_catalog.>) 0),
    max_attempts              integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 20),
    backoff_base_ms           integer NOT NULL DEFAULT 250 CHECK (backoff_base_ms OPERATOR(pg_catalog.>=) 0),
    backoff_max_ms            integer NOT NULL DEFAULT 8000 CHECK (backoff_max_ms OPERATOR(pg_catalog.>=) 0),
    circuit_failure_threshold integer NOT NULL DEFAULT 5 CHECK (circuit_failure_threshold OPERATOR(pg_catalog.>=) 0),
    circuit_cooldown_ms       integer NOT NULL DEFAULT 30000 CHECK (circuit_cooldown_ms OPERATOR(pg_catalog.>=) 0),
    anthropic_version         text DEFAULT '2023-06-01',
    enabled                   boolean NOT NULL DEFAULT true,
    max_connections           integer CHECK (max_connections OPERATOR(pg_catalog.>) 0),
    requests_per_minute       integer CHECK (requests_per_minute OPERATOR(pg_catalog.>) 0),
    tokens_per_minute         integer CHECK (tokens_per_minute OPERATOR(pg_catalog.>) 0),
    CHECK (api_key_env IS NULL OR api_key_file IS NULL),
    shipped                   boolean NOT NULL DEFAULT false,
    api_version               text CHECK (api_version OPERATOR(pg_catalog.~) '^[A-Za-z0-9._-]{1,64}$'),
    embedding_batch_tokens    integer CHECK (embedding_batch_tokens OPERATOR(pg_catalog.>) 0)
);

COMMENT ON TABLE maester.provider IS
    'Model providers the gateway may call (admins only). Keys are never stored: api_key_env names an environment variable of the server, api_key_file a file in maester.key_directory.';
COMMENT ON COLUMN maester.provider.kind IS 'openai (Chat Completions), anthropic (Messages API), openai_compatible (Ollama, vLLM, llama.cpp, Groq, Together, ...), or azure (Azure OpenAI: api-key header, the deployment as the model).';
COMMENT ON COLUMN maester.provider.embedding_batch_tokens IS 'Most tokens (counted at their worst, a token per UTF-8 byte) maester.embed sends in one request to this provider; NULL: 300,000, OpenAI''s limit. Requests also hold at most 2,048 inputs.';
COMMENT ON COLUMN maester.provider.api_version IS 'azure: the api-version of deployment URLs ({base_url}/openai/deployments/{model}/chat/completions?api-version=...); NULL: Azure''s v1 API ({base_url}/openai/v1/chat/completions). Other kinds: unused.';
COMMENT ON COLUMN maester.provider.base_url IS 'https://api.openai.com/v1, https://api.anthropic.com, http://127.0.0.1:11434/v1 (plain http only for hosts in maester.allow_insecure_hosts).';
COMMENT ON COLUMN maester.provider.api_key_env IS 'Name of the server environment variable holding the key (ends in _KEY or _TOKEN); NULL for keyless local servers.';
COMMENT ON COLUMN maester.provider.api_key_file IS 'Name of a file in maester.key_directory holding the key, owned by the server user, mode 0600.';
COMMENT ON COLUMN maester.provider.models IS 'LIKE patterns of the model names this provider serves, for models without a maester.model row.';
COMMENT ON COLUMN maester.provider.priority IS 'Lower first, when several providers'' patterns match a model; 0 by default, so that a provider an admin adds wins over the shipped ones (10 and 20) for the same pattern.';
COMMENT ON COLUMN maester.provider.timeout_ms IS 'Total time allowed for one attempt.';
COMMENT ON COLUMN maester.provider.max_attempts IS 'Attempts per call on this provider before falling back (options.max_attempts overrides).';
COMMENT ON COLUMN maester.provider.backoff_base_ms IS 'First retry waits about this long (exponential, with jitter), unless the provider sent Retry-After.';
COMMENT ON COLUMN maester.provider.circuit_failure_threshold IS 'Consecutive failures (5xx, 429, timeouts, connection errors) that open the circuit breaker; 0 disables it.';
COMMENT ON COLUMN maester.provider.circuit_cooldown_ms IS 'How long an open circuit skips the provider before one probe call.';
COMMENT ON COLUMN maester.provider.max_connections IS 'Most requests one session (or job worker) has in flight to this provider at once, in generate_batch; NULL: no limit beyond the batch''s concurrency.';
COMMENT ON COLUMN maester.provider.requests_per_minute IS 'Rate limit, honoured server-wide by spacing calls evenly (they wait, they do not fail); NULL: none.';
COMMENT ON COLUMN maester.provider.shipped IS 'True for a row as maester ships it; maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';
COMMENT ON COLUMN maester.provider.tokens_per_minute IS 'Token rate limit (input estimate plus reserved output tokens per call), honoured server-wide by pacing; NULL: none.';

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority, shipped) VALUES
    ('openai', 'openai', 'https://api.openai.com/v1', 'OPENAI_API_KEY',
     ARRAY['gpt-%', 'o1%', 'o3%', 'o4%', 'chatgpt-%', 'text-embedding-%'], 10, true),
    ('anthropic', 'anthropic', 'https://api.anthropic.com', 'ANTHROPIC_API_KEY',
     ARRAY['claude-%'], 20, true);

CREATE TABLE maester.model (
    name           text PRIMARY KEY,
    provider       text NOT NULL REFERENCES maester.provider (name) ON UPDATE CASCADE,
    provider_model text NOT NULL,
    aliases        text[] NOT NULL DEFAULT '{}',
    description    text,
    max_output_tokens integer CHECK (max_output_tokens OPERATOR(pg_catalog.>) 0),
    unsupported_params text[] CHECK (unsupported_params OPERATOR(pg_catalog.<@) ARRAY['temperature', 'top_p', 'stop']),
    output_limit_param text CHECK (output_limit_param OPERATOR(pg_catalog.=) ANY (ARRAY['max_tokens', 'max_completion_tokens'])),
    structured_output  text CHECK (structured_output OPERATOR(pg_catalog.=) ANY (ARRAY['native', 'tool'])),
    embedding_dimensions integer CHECK (embedding_dimensions BETWEEN 1 AND 65536),
    shipped            boolean NOT NULL DEFAULT false,
    max_input_tokens   integer CHECK (max_input_tokens OPERATOR(pg_catalog.>) 0)
);

COMMENT ON TABLE maester.model IS
    'Model names and aliases mapped to a provider and the model id it is sent as. Models without a row go to the first enabled provider whose pattern matches.';
COMMENT ON COLUMN maester.model.max_output_tokens IS 'The most output tokens the model may be asked for: a larger max_tokens skips the target (22023). NULL: maester.max_output_tokens.';
COMMENT ON COLUMN maester.model.provider_model IS 'The model id sent to the provider.';
COMMENT ON COLUMN maester.model.aliases IS 'Other names callers may use for this model.';
COMMENT ON COLUMN maester.model.unsupported_params IS 'Sampling parameters the model refuses (of temperature, top_p, stop): left out of its requests, and named on the span (maester.request.dropped_params). NULL: the rule (README, Models): OpenAI reasoning models (o1, o3, o4, gpt-5 but not -chat) refuse all three; Claude newer than 4.6 refuses temperature and top_p; Claude 4.1 to 4.6 refuses the two together (top_p is left out). ''{}'': none.';
COMMENT ON COLUMN maester.model.output_limit_param IS 'The request member the output limit is sent as: max_tokens or max_completion_tokens. NULL: the kind''s (max_completion_tokens at openai, max_tokens at openai_compatible; Anthropic always max_tokens). Set max_completion_tokens for OpenAI reasoning models behind a compatible endpoint (a proxy, Azure).';
COMMENT ON COLUMN maester.model.max_input_tokens IS 'An embedding model''s input limit in tokens (8,192 for OpenAI''s). maester.embed sends an input whose UTF-8 bytes exceed it (so that it may be over: a token is at least a byte) in a request of its own, so that the provider''s refusal of it costs the other inputs nothing; NULL: no limit known.';
COMMENT ON COLUMN maester.model.shipped IS 'True for a row as maester ships it (OpenAI''s embedding models); maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';
COMMENT ON COLUMN maester.model.embedding_dimensions IS 'An embedding model''s vector length: maester.embed refuses answers of another length unless the call asks for dimensions. NULL: a chat model, or an embedding model whose length is taken as it comes.';
COMMENT ON COLUMN maester.model.structured_output IS 'How a json_schema response format is asked of an Anthropic model: native (output_config.format) or tool (a forced tool whose input is the answer, which every Claude model has). NULL: tool. OpenAI kinds always send response_format.';

CREATE TABLE maester.route (
    name        text PRIMARY KEY,
    description text,
    shipped     boolean NOT NULL DEFAULT false,
    strategy    text NOT NULL DEFAULT 'ordered'
        CHECK (strategy OPERATOR(pg_catalog.=) ANY
               (ARRAY['ordered', 'weighted', 'lowest_latency', 'lowest_cost', 'best_evaluation'])),
    sticky      text CHECK (sticky OPERATOR(pg_catalog.=) 'tenant')
);

COMMENT ON TABLE maester.route IS
    'Named, ordered fallback chains of (provider, model) targets; llm_generate(model => NULL) uses the route default.';

CREATE TABLE maester.route_target (
    route    text NOT NULL REFERENCES maester.route (name) ON DELETE CASCADE ON UPDATE CASCADE,
    position integer NOT NULL,
    provider text NOT NULL REFERENCES maester.provider (name) ON UPDATE CASCADE,
    model    text NOT NULL,
    PRIMARY KEY (route, position),
    shipped  boolean NOT NULL DEFAULT false,
    weight   integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 0 AND 1000000)
);

COMMENT ON TABLE maester.route_target IS
    'The targets of a route, tried in position order: each target''s attempts, then the next target.';
COMMENT ON COLUMN maester.route_target.model IS 'The model id sent to the provider.';
COMMENT ON COLUMN maester.route.strategy IS 'Which target a call tries first, the others following as its fallbacks: ordered (position order), weighted (drawn by weight), lowest_latency (recent mean latency in this database), lowest_cost (the call''s worst case at each target''s prices), best_evaluation (the tenant''s recent evaluation scores of the prompt version per model). The choice and why are on the call''s ledger rows and model_route span.';
COMMENT ON COLUMN maester.route.sticky IS 'tenant: a weighted route draws by a hash of the tenant, so that a tenant always lands on the same target (options.sticky_key, when given, is hashed instead). NULL: each call draws at random unless it gives a sticky_key.';
COMMENT ON COLUMN maester.route_target.weight IS 'Its share of a weighted route''s calls (weight / the sum of the route''s weights); 0: fallback only. Other strategies ignore it.';
COMMENT ON COLUMN maester.route.shipped IS 'True for a row as maester ships it; maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';
COMMENT ON COLUMN maester.route_target.shipped IS 'True for a row as maester ships it; maester clears it when an admin edits the row, and pg_dump keeps every row where it is false.';

INSERT INTO maester.route (name, description, shipped) VALUES
    ('default', 'Used when no model is given: OpenAI first, Anthropic as fallback.', true);
INSERT INTO maester.route_target (route, position, provider, model, shipped) VALUES
    ('default', 1, 'openai', 'gpt-4.1-mini', true),
    ('default', 2, 'anthropic', 'claude-haiku-4-5', true);
INSERT INTO maester.route (name, description, shipped) VALUES
    ('default_embedding', 'Used by maester.embed when no model is given.', true);
INSERT INTO maester.model (name, provider, provider_model, description, embedding_dimensions, max_input_tokens, shipped) VALUES
    ('text-embedding-3-small', 'openai', 'text-embedding-3-small', 'OpenAI embedding model, 1,536 dimensions (fewer on request), 8,192 input tokens.', 1536, 8192, true),
    ('text-embedding-3-large', 'openai', 'text-embedding-3-large', 'OpenAI embedding model, 3,072 dimensions (fewer on request), 8,192 input tokens.', 3072, 8192, true);
INSERT INTO maester.route_target (route, position, provider, model, shipped) VALUES
    ('default_embedding', 1, 'openai', 'text-embedding-3-small', true);

-- Keys admins deleted, so that a restore deletes the shipped rows again
-- after CREATE EXTENSION has put them back (see shipped_row_guard)
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
