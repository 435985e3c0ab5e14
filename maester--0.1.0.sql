/* maester--0.1.0.sql: the prompt registry and the model gateway */

\echo Use "CREATE EXTENSION maester" to load this file. \quit

--------------------------------------------------------------------------
-- Roles (cluster-wide, so created only when absent; never dropped by us)
--------------------------------------------------------------------------
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'maester_reader') THEN
        CREATE ROLE maester_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'maester_user') THEN
        CREATE ROLE maester_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'maester_admin') THEN
        CREATE ROLE maester_admin NOLOGIN;
    END IF;
END
$roles$;

GRANT maester_user TO maester_admin;
GRANT maester_reader TO maester_admin;

REVOKE ALL ON SCHEMA maester FROM PUBLIC;
GRANT USAGE ON SCHEMA maester TO maester_reader, maester_user, maester_admin;

COMMENT ON SCHEMA maester IS
    'maester: prompt registry, LLM gateway, cost ledger, evaluation and tracing';

--------------------------------------------------------------------------
-- Validation helpers (C)
--------------------------------------------------------------------------
CREATE FUNCTION maester.check_name(kind text, value text)
RETURNS text
AS 'MODULE_PATHNAME', 'check_name_sql'
LANGUAGE C IMMUTABLE CALLED ON NULL INPUT PARALLEL SAFE;

COMMENT ON FUNCTION maester.check_name(text, text) IS
    'Returns value if it is a valid prompt, version or label name (non-empty, at most 200 characters, no whitespace or control characters); otherwise raises 22023. kind names the thing in the error.';

CREATE FUNCTION maester.template_variables(template text)
RETURNS text[]
AS 'MODULE_PATHNAME', 'template_variables'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.template_variables(text) IS
    'Validates a {name} template and returns its distinct variables in order of first use; a lone brace, {} or a non-identifier name raises 22023 naming the character position. {{ and }} are literal braces.';

--------------------------------------------------------------------------
-- Registry tables
--------------------------------------------------------------------------
CREATE TABLE maester.prompt (
    name        text PRIMARY KEY,
    description text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by  name NOT NULL DEFAULT CURRENT_USER
);

COMMENT ON TABLE maester.prompt IS
    'A named prompt; its versions are in maester.prompt_version. Rows are created by maester.prompt_register().';
COMMENT ON COLUMN maester.prompt.name IS 'Prompt name, e.g. system_summary.';
COMMENT ON COLUMN maester.prompt.description IS 'Description given when the prompt was first registered.';
COMMENT ON COLUMN maester.prompt.created_by IS 'Role that registered the first version.';

CREATE TABLE maester.prompt_version (
    name            text NOT NULL REFERENCES maester.prompt (name),
    version         text NOT NULL,
    seq             bigint NOT NULL GENERATED ALWAYS AS IDENTITY UNIQUE,
    template        text NOT NULL,
    system_template text,
    config          jsonb NOT NULL DEFAULT '{}',
    checks          jsonb,
    variables       text[] NOT NULL DEFAULT '{}',
    template_hash   text NOT NULL DEFAULT '',
    description     text,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by      name NOT NULL DEFAULT CURRENT_USER,
    PRIMARY KEY (name, version),
    CONSTRAINT prompt_version_config_is_object
        CHECK (pg_catalog.jsonb_typeof(config) OPERATOR(pg_catalog.=) 'object'),
    CONSTRAINT prompt_version_checks_is_object_or_array
        CHECK (checks IS NULL OR pg_catalog.jsonb_typeof(checks) OPERATOR(pg_catalog.=) ANY (ARRAY['object', 'array']))
);

COMMENT ON TABLE maester.prompt_version IS
    'Immutable prompt versions: UPDATE, DELETE and TRUNCATE are refused. Register with maester.prompt_register().';
COMMENT ON COLUMN maester.prompt_version.version IS 'Version name: given, or the next vN.';
COMMENT ON COLUMN maester.prompt_version.seq IS 'Registration order across the registry; the latest version of a prompt has the highest seq (so v10 is newer than v9).';
COMMENT ON COLUMN maester.prompt_version.template IS 'User prompt template: {name} is replaced, {{ and }} are literal braces.';
COMMENT ON COLUMN maester.prompt_version.system_template IS 'Optional system prompt template, same syntax.';
COMMENT ON COLUMN maester.prompt_version.config IS 'Model settings that travel with the version (model, max_tokens, temperature, ...).';
COMMENT ON COLUMN maester.prompt_version.checks IS 'Evaluation checks run on every output of this version.';
COMMENT ON COLUMN maester.prompt_version.variables IS 'Variables the templates use, in order of first use (computed at registration).';
COMMENT ON COLUMN maester.prompt_version.template_hash IS 'SHA-256 hex of the version''s content: the jsonb text of {template, system_template, config, checks} (computed at registration).';

CREATE TABLE maester.prompt_label (
    name     text NOT NULL REFERENCES maester.prompt (name),
    label    text NOT NULL,
    version  text NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    moved_by name NOT NULL DEFAULT CURRENT_USER,
    PRIMARY KEY (name, label),
    FOREIGN KEY (name, version) REFERENCES maester.prompt_version (name, version)
);

COMMENT ON TABLE maester.prompt_label IS
    'Movable pointers to versions (production, staging, ...). latest is not stored here: it is always the version with the highest seq, and cannot be set by hand.';
COMMENT ON COLUMN maester.prompt_label.moved_at IS 'When the label last moved.';
COMMENT ON COLUMN maester.prompt_label.moved_by IS 'Role that last moved the label.';

CREATE TABLE maester.prompt_label_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    label        text NOT NULL,
    from_version text,
    to_version   text,
    moved_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    moved_by     name NOT NULL DEFAULT CURRENT_USER
);

CREATE INDEX ON maester.prompt_label_history (name, label, id);

COMMENT ON TABLE maester.prompt_label_history IS
    'Every move of a label: who, when, from which version to which (from_version NULL: label created; to_version NULL: label removed). Append-only, written by the registry.';

--------------------------------------------------------------------------
-- Triggers: validation, immutability, latest, history, cache invalidation
--------------------------------------------------------------------------
CREATE FUNCTION maester.prompt_version_guard()
RETURNS trigger
AS 'MODULE_PATHNAME', 'prompt_version_guard'
LANGUAGE C;

COMMENT ON FUNCTION maester.prompt_version_guard() IS
    'Trigger: validates names and templates of a new prompt version and computes variables and template_hash; refuses UPDATE, DELETE and TRUNCATE.';

CREATE TRIGGER prompt_version_guard
    BEFORE INSERT OR UPDATE OR DELETE ON maester.prompt_version
    FOR EACH ROW EXECUTE FUNCTION maester.prompt_version_guard();
CREATE TRIGGER prompt_version_no_truncate
    BEFORE TRUNCATE ON maester.prompt_version
    FOR EACH STATEMENT EXECUTE FUNCTION maester.prompt_version_guard();

CREATE FUNCTION maester.cache_invalidate()
RETURNS trigger
AS 'MODULE_PATHNAME', 'cache_invalidate'
LANGUAGE C;

COMMENT ON FUNCTION maester.cache_invalidate() IS
    'Trigger: tells every backend''s caches (render cache, gateway configuration), at commit, that the table changed.';

CREATE TRIGGER prompt_version_invalidate
    AFTER INSERT OR UPDATE OR DELETE ON maester.prompt_version
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER prompt_label_invalidate
    AFTER INSERT OR UPDATE OR DELETE ON maester.prompt_label
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();

CREATE FUNCTION maester.prompt_label_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- latest is not a stored label: it is always the newest version
    IF (TG_OP OPERATOR(pg_catalog.<>) 'INSERT' AND OLD.label OPERATOR(pg_catalog.=) 'latest') OR
       (TG_OP OPERATOR(pg_catalog.<>) 'DELETE' AND NEW.label OPERATOR(pg_catalog.=) 'latest') THEN
        RAISE EXCEPTION 'label "latest" is maintained automatically'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It always points at the most recently registered version.',
                  HINT = 'Register a new version, or use another label such as production.';
    END IF;

    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        RETURN OLD;
    END IF;

    PERFORM maester.check_name('label', NEW.label);
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND
       (NEW.name OPERATOR(pg_catalog.<>) OLD.name OR NEW.label OPERATOR(pg_catalog.<>) OLD.label) THEN
        RAISE EXCEPTION 'a label cannot be renamed'
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Set the new label and remove the old one.';
    END IF;
    IF EXISTS (SELECT FROM maester.prompt_version v
               WHERE v.name OPERATOR(pg_catalog.=) NEW.name
                 AND v.version OPERATOR(pg_catalog.=) NEW.label) THEN
        RAISE EXCEPTION 'prompt "%" already has a version named "%"', NEW.name, NEW.label
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'A label may not share its name with a version of the same prompt.';
    END IF;

    NEW.moved_at := pg_catalog.now();
    NEW.moved_by := CURRENT_USER;
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION maester.prompt_label_guard() IS
    'Trigger: validates label names, refuses latest, and stamps who moved a label and when.';

CREATE TRIGGER prompt_label_guard
    BEFORE INSERT OR UPDATE OR DELETE ON maester.prompt_label
    FOR EACH ROW EXECUTE FUNCTION maester.prompt_label_guard();

CREATE FUNCTION maester.prompt_label_record()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- AFTER triggers: only rows really inserted, updated or deleted (an
    -- INSERT ... ON CONFLICT DO UPDATE fires BEFORE INSERT for nothing)
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        INSERT INTO maester.prompt_label_history (name, label, from_version, to_version)
        VALUES (OLD.name, OLD.label, OLD.version, NULL);
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO maester.prompt_label_history (name, label, from_version, to_version)
        VALUES (NEW.name, NEW.label, NULL, NEW.version);
    ELSIF OLD.version OPERATOR(pg_catalog.<>) NEW.version THEN
        INSERT INTO maester.prompt_label_history (name, label, from_version, to_version)
        VALUES (NEW.name, NEW.label, OLD.version, NEW.version);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION maester.prompt_label_record() IS
    'Trigger: records every label move in maester.prompt_label_history.';

CREATE TRIGGER prompt_label_record
    AFTER INSERT OR UPDATE OR DELETE ON maester.prompt_label
    FOR EACH ROW EXECUTE FUNCTION maester.prompt_label_record();

CREATE FUNCTION maester.prompt_label_history_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' AND
       pg_catalog.pg_trigger_depth() OPERATOR(pg_catalog.>=) 2 THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'maester.prompt_label_history is written only by the registry'
        USING ERRCODE = 'insufficient_privilege',
              DETAIL = pg_catalog.format('%s is not allowed.', TG_OP);
END
$$;

COMMENT ON FUNCTION maester.prompt_label_history_guard() IS
    'Trigger: keeps maester.prompt_label_history append-only and written only by label moves.';

CREATE TRIGGER prompt_label_history_guard
    BEFORE INSERT OR UPDATE OR DELETE ON maester.prompt_label_history
    FOR EACH ROW EXECUTE FUNCTION maester.prompt_label_history_guard();
CREATE TRIGGER prompt_label_history_no_truncate
    BEFORE TRUNCATE ON maester.prompt_label_history
    FOR EACH STATEMENT EXECUTE FUNCTION maester.prompt_label_history_guard();

--------------------------------------------------------------------------
-- Registration
--------------------------------------------------------------------------
CREATE FUNCTION maester.prompt_register(
    name            text,
    template        text,
    version         text DEFAULT NULL,
    system_template text DEFAULT NULL,
    config          jsonb DEFAULT '{}',
    checks          jsonb DEFAULT NULL,
    description     text DEFAULT NULL)
RETURNS maester.prompt_version
LANGUAGE plpgsql
VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_name    text := prompt_register.name;
    p_version text := prompt_register.version;
    p_config  jsonb := COALESCE(prompt_register.config, '{}');
    p_checks  jsonb := prompt_register.checks;
    p_tmpl    text := prompt_register.template;
    p_sys     text := prompt_register.system_template;
    cur       maester.prompt_version;
    next_n    numeric;
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION 'prompt name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_tmpl IS NULL THEN
        RAISE EXCEPTION 'template must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM maester.check_name('prompt', p_name);
    IF p_version IS NOT NULL THEN
        PERFORM maester.check_name('version', p_version);
        IF p_version OPERATOR(pg_catalog.=) 'latest' THEN
            RAISE EXCEPTION 'version name "latest" is reserved'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'latest is the label of the most recently registered version.';
        END IF;
    END IF;
    IF pg_catalog.jsonb_typeof(p_config) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'config must be a JSON object'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_checks IS NOT NULL AND
       pg_catalog.jsonb_typeof(p_checks) OPERATOR(pg_catalog.<>) ALL (ARRAY['object', 'array']) THEN
        RAISE EXCEPTION 'checks must be a JSON object or array'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- one registration of a prompt at a time: the prompt row is the lock
    INSERT INTO maester.prompt AS p (name, description)
    VALUES (p_name, prompt_register.description)
    ON CONFLICT (name) DO NOTHING;
    PERFORM FROM maester.prompt p WHERE p.name OPERATOR(pg_catalog.=) p_name FOR UPDATE;

    IF p_version IS NOT NULL THEN
        SELECT * INTO cur FROM maester.prompt_version v
        WHERE v.name OPERATOR(pg_catalog.=) p_name
          AND v.version OPERATOR(pg_catalog.=) p_version;
    ELSE
        SELECT * INTO cur FROM maester.prompt_version v
        WHERE v.name OPERATOR(pg_catalog.=) p_name
        ORDER BY v.seq DESC LIMIT 1;
    END IF;

    IF FOUND THEN
        IF cur.template OPERATOR(pg_catalog.=) p_tmpl
           AND cur.system_template IS NOT DISTINCT FROM p_sys
           AND cur.config OPERATOR(pg_catalog.=) p_config
           AND cur.checks IS NOT DISTINCT FROM p_checks THEN
            RETURN cur;             -- same content: nothing to do
        END IF;
        IF p_version IS NOT NULL THEN
            RAISE EXCEPTION 'version "%" of prompt "%" already exists with different content', p_version, p_name
                USING ERRCODE = 'unique_violation',
                      DETAIL = 'Prompt versions are immutable.',
                      HINT = 'Register the change as a new version (version => NULL picks the next vN).';
        END IF;
    END IF;

    IF p_version IS NULL THEN
        SELECT COALESCE(max(pg_catalog.substr(v.version, 2)::numeric), 0) OPERATOR(pg_catalog.+) 1
          INTO next_n
          FROM maester.prompt_version v
         WHERE v.name OPERATOR(pg_catalog.=) p_name
           AND v.version OPERATOR(pg_catalog.~) '^v[0-9]+$';
        p_version := 'v' OPERATOR(pg_catalog.||) next_n::text;
    END IF;

    IF EXISTS (SELECT FROM maester.prompt_label l
               WHERE l.name OPERATOR(pg_catalog.=) p_name
                 AND l.label OPERATOR(pg_catalog.=) p_version) THEN
        RAISE EXCEPTION 'prompt "%" already has a label named "%"', p_name, p_version
            USING ERRCODE = 'duplicate_object',
                  DETAIL = 'A version may not share its name with a label of the same prompt.';
    END IF;

    INSERT INTO maester.prompt_version AS v
        (name, version, template, system_template, config, checks, description)
    VALUES (p_name, p_version, p_tmpl, p_sys, p_config, p_checks, prompt_register.description)
    RETURNING * INTO cur;
    RETURN cur;
END
$$;

COMMENT ON FUNCTION maester.prompt_register(text, text, text, text, jsonb, jsonb, text) IS
    'Registers a prompt version and returns it. version NULL: the next vN, unless the content equals the latest version''s (then that one is returned). Same content under an existing version: returns it; different content: 23505.';

CREATE FUNCTION maester.prompt_set_label(name text, label text, version text)
RETURNS maester.prompt_label
LANGUAGE plpgsql
VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_name    text := prompt_set_label.name;
    p_label   text := prompt_set_label.label;
    p_version text := prompt_set_label.version;
    result    maester.prompt_label;
BEGIN
    IF p_name IS NULL OR p_label IS NULL OR p_version IS NULL THEN
        RAISE EXCEPTION 'name, label and version must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM maester.check_name('label', p_label);
    IF p_label OPERATOR(pg_catalog.=) 'latest' THEN
        RAISE EXCEPTION 'label "latest" is maintained automatically'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It always points at the most recently registered version.',
                  HINT = 'Register a new version, or use another label such as production.';
    END IF;
    IF NOT EXISTS (SELECT FROM maester.prompt p WHERE p.name OPERATOR(pg_catalog.=) p_name) THEN
        RAISE EXCEPTION 'prompt "%" does not exist', p_name
            USING ERRCODE = 'undefined_object';
    END IF;
    IF NOT EXISTS (SELECT FROM maester.prompt_version v
                   WHERE v.name OPERATOR(pg_catalog.=) p_name
                     AND v.version OPERATOR(pg_catalog.=) p_version) THEN
        RAISE EXCEPTION 'prompt "%" has no version "%"', p_name, p_version
            USING ERRCODE = 'undefined_object',
                  HINT = 'See maester.prompt_versions for its versions.';
    END IF;

    INSERT INTO maester.prompt_label AS l (name, label, version)
    VALUES (p_name, p_label, p_version)
    ON CONFLICT (name, label) DO UPDATE SET version = EXCLUDED.version
        WHERE l.version OPERATOR(pg_catalog.<>) EXCLUDED.version;

    SELECT * INTO result FROM maester.prompt_label l
    WHERE l.name OPERATOR(pg_catalog.=) p_name AND l.label OPERATOR(pg_catalog.=) p_label;
    RETURN result;
END
$$;

COMMENT ON FUNCTION maester.prompt_set_label(text, text, text) IS
    'Points a label (e.g. production) of a prompt at one of its versions; the move is recorded in maester.prompt_label_history. latest cannot be set by hand.';

CREATE FUNCTION maester.prompt_unset_label(name text, label text)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF prompt_unset_label.label OPERATOR(pg_catalog.=) 'latest' THEN
        RAISE EXCEPTION 'label "latest" is maintained automatically'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It always points at the most recently registered version.';
    END IF;
    DELETE FROM maester.prompt_label l
    WHERE l.name OPERATOR(pg_catalog.=) prompt_unset_label.name
      AND l.label OPERATOR(pg_catalog.=) prompt_unset_label.label;
    RETURN FOUND;
END
$$;

COMMENT ON FUNCTION maester.prompt_unset_label(text, text) IS
    'Removes a label from a prompt (recorded in the history); returns false if it was not set. latest cannot be removed.';

--------------------------------------------------------------------------
-- Rendering
--------------------------------------------------------------------------
CREATE TYPE maester.rendered_prompt AS (
    name          text,
    version       text,
    content       text,
    system        text,
    hash          text,
    template_hash text
);

COMMENT ON TYPE maester.rendered_prompt IS
    'A rendered prompt: its identity (name, version, template_hash), the rendered content and system prompt, and hash, the SHA-256 hex of what is sent.';
COMMENT ON COLUMN maester.rendered_prompt.hash IS
    'SHA-256 hex of the rendered content; with a system prompt, of system, one zero byte, then content.';
COMMENT ON COLUMN maester.rendered_prompt.template_hash IS
    'The version''s content identity (maester.prompt_version.template_hash).';

CREATE FUNCTION maester.prompt_render(
    name      text,
    variables jsonb DEFAULT '{}',
    version   text DEFAULT NULL)
RETURNS maester.rendered_prompt
AS 'MODULE_PATHNAME', 'prompt_render'
LANGUAGE C STABLE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.prompt_render(text, jsonb, text) IS
    'Renders a prompt version (version is a version or a label; NULL means latest) with a JSON object of variables; returns content, system prompt and SHA-256 hash. Missing variables raise 22023; unknown prompts, versions or labels 42704.';

--------------------------------------------------------------------------
-- Views
--------------------------------------------------------------------------
CREATE VIEW maester.prompt_versions AS
SELECT v.name,
       v.version,
       v.seq,
       v.created_at,
       v.created_by,
       ARRAY(SELECT 'latest'::text
              WHERE v.seq OPERATOR(pg_catalog.=)
                    (SELECT pg_catalog.max(w.seq) FROM maester.prompt_version w
                      WHERE w.name OPERATOR(pg_catalog.=) v.name)
             UNION ALL
             (SELECT l.label FROM maester.prompt_label l
               WHERE l.name OPERATOR(pg_catalog.=) v.name
                 AND l.version OPERATOR(pg_catalog.=) v.version
               ORDER BY l.label)) AS labels,
       v.template_hash,
       v.variables,
       v.description
  FROM maester.prompt_version v;

COMMENT ON VIEW maester.prompt_versions IS
    'Every prompt version with its labels, for people and BI tools.';
COMMENT ON COLUMN maester.prompt_versions.labels IS 'Labels that point at this version: latest first for the newest version, then the set labels in order.';


--------------------------------------------------------------------------
-- The model gateway: providers, models, routes
--------------------------------------------------------------------------
CREATE TABLE maester.provider (
    name                      text PRIMARY KEY
        CHECK (pg_catalog.octet_length(name) BETWEEN 1 AND 127),
    kind                      text NOT NULL
        CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['openai', 'anthropic', 'openai_compatible'])),
    base_url                  text NOT NULL
        CHECK (base_url OPERATOR(pg_catalog.~) '^https?://[^/?#]+'),
    api_key_env               text
        CHECK (api_key_env OPERATOR(pg_catalog.~) '^[A-Za-z_][A-Za-z0-9_]*_(KEY|TOKEN)$'),
    api_key_file              text
        CHECK (api_key_file OPERATOR(pg_catalog.~) '^[^/]+$' AND api_key_file OPERATOR(pg_catalog.<>) ALL (ARRAY['.', '..'])),
    models                    text[] NOT NULL DEFAULT '{}',
    priority                  integer NOT NULL DEFAULT 100,
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
    CHECK (api_key_env IS NULL OR api_key_file IS NULL)
);

COMMENT ON TABLE maester.provider IS
    'Model providers the gateway may call (admins only). Keys are never stored: api_key_env names an environment variable of the server, api_key_file a file in maester.key_directory.';
COMMENT ON COLUMN maester.provider.kind IS 'openai (Chat Completions), anthropic (Messages API), or openai_compatible (Ollama, vLLM, llama.cpp, Groq, Together, ...).';
COMMENT ON COLUMN maester.provider.base_url IS 'https://api.openai.com/v1, https://api.anthropic.com, http://127.0.0.1:11434/v1 (plain http only for hosts in maester.allow_insecure_hosts).';
COMMENT ON COLUMN maester.provider.api_key_env IS 'Name of the server environment variable holding the key (ends in _KEY or _TOKEN); NULL for keyless local servers.';
COMMENT ON COLUMN maester.provider.api_key_file IS 'Name of a file in maester.key_directory holding the key, owned by the server user, mode 0600.';
COMMENT ON COLUMN maester.provider.models IS 'LIKE patterns of the model names this provider serves, for models without a maester.model row.';
COMMENT ON COLUMN maester.provider.priority IS 'Lower first, when several providers'' patterns match a model.';
COMMENT ON COLUMN maester.provider.timeout_ms IS 'Total time allowed for one attempt.';
COMMENT ON COLUMN maester.provider.max_attempts IS 'Attempts per call on this provider before falling back (options.max_attempts overrides).';
COMMENT ON COLUMN maester.provider.backoff_base_ms IS 'First retry waits about this long (exponential, with jitter), unless the provider sent Retry-After.';
COMMENT ON COLUMN maester.provider.circuit_failure_threshold IS 'Consecutive failures (5xx, 429, timeouts, connection errors) that open the circuit breaker; 0 disables it.';
COMMENT ON COLUMN maester.provider.circuit_cooldown_ms IS 'How long an open circuit skips the provider before one probe call.';
COMMENT ON COLUMN maester.provider.max_connections IS 'Most requests one session (or job worker) has in flight to this provider at once, in generate_batch; NULL: no limit beyond the batch''s concurrency.';
COMMENT ON COLUMN maester.provider.requests_per_minute IS 'Rate limit, honoured server-wide by spacing calls evenly (they wait, they do not fail); NULL: none.';
COMMENT ON COLUMN maester.provider.tokens_per_minute IS 'Token rate limit (input estimate plus reserved output tokens per call), honoured server-wide by pacing; NULL: none.';

INSERT INTO maester.provider (name, kind, base_url, api_key_env, models, priority) VALUES
    ('openai', 'openai', 'https://api.openai.com/v1', 'OPENAI_API_KEY',
     ARRAY['gpt-%', 'o1%', 'o3%', 'o4%', 'chatgpt-%'], 10),
    ('anthropic', 'anthropic', 'https://api.anthropic.com', 'ANTHROPIC_API_KEY',
     ARRAY['claude-%'], 20);

CREATE TABLE maester.model (
    name           text PRIMARY KEY,
    provider       text NOT NULL REFERENCES maester.provider (name) ON UPDATE CASCADE,
    provider_model text NOT NULL,
    aliases        text[] NOT NULL DEFAULT '{}',
    description    text
);

COMMENT ON TABLE maester.model IS
    'Model names and aliases mapped to a provider and the model id it is sent as. Models without a row go to the first enabled provider whose pattern matches.';
COMMENT ON COLUMN maester.model.provider_model IS 'The model id sent to the provider.';
COMMENT ON COLUMN maester.model.aliases IS 'Other names callers may use for this model.';

CREATE TABLE maester.route (
    name        text PRIMARY KEY,
    description text
);

COMMENT ON TABLE maester.route IS
    'Named, ordered fallback chains of (provider, model) targets; llm_generate(model => NULL) uses the route default.';

CREATE TABLE maester.route_target (
    route    text NOT NULL REFERENCES maester.route (name) ON DELETE CASCADE ON UPDATE CASCADE,
    position integer NOT NULL,
    provider text NOT NULL REFERENCES maester.provider (name) ON UPDATE CASCADE,
    model    text NOT NULL,
    PRIMARY KEY (route, position)
);

COMMENT ON TABLE maester.route_target IS
    'The targets of a route, tried in position order: each target''s attempts, then the next target.';
COMMENT ON COLUMN maester.route_target.model IS 'The model id sent to the provider.';

INSERT INTO maester.route (name, description) VALUES
    ('default', 'Used when no model is given: OpenAI first, Anthropic as fallback.');
INSERT INTO maester.route_target (route, position, provider, model) VALUES
    ('default', 1, 'openai', 'gpt-4.1-mini'),
    ('default', 2, 'anthropic', 'claude-haiku-4-5');

CREATE TRIGGER provider_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.provider
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER model_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.model
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER route_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.route
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER route_target_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.route_target
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();


--------------------------------------------------------------------------
-- Prices and cost
--------------------------------------------------------------------------
CREATE TABLE maester.price (
    model                                 text NOT NULL,
    valid_from                            timestamptz NOT NULL,
    input_cost_per_million                numeric NOT NULL CHECK (input_cost_per_million OPERATOR(pg_catalog.>=) 0),
    output_cost_per_million               numeric NOT NULL CHECK (output_cost_per_million OPERATOR(pg_catalog.>=) 0),
    cache_read_input_cost_per_million     numeric CHECK (cache_read_input_cost_per_million OPERATOR(pg_catalog.>=) 0),
    cache_creation_input_cost_per_million numeric CHECK (cache_creation_input_cost_per_million OPERATOR(pg_catalog.>=) 0),
    currency                              text NOT NULL DEFAULT 'USD' CHECK (currency OPERATOR(pg_catalog.=) 'USD'),
    source                                text,
    PRIMARY KEY (model, valid_from)
);

COMMENT ON TABLE maester.price IS
    'Effective-dated model prices in USD per 1M tokens (field names after LiteLLM''s cost map: input, output, cache_read_input, cache_creation_input). Rows are immutable: a price change is a new row with a later valid_from, so a new price never changes what a past call cost.';
COMMENT ON COLUMN maester.price.model IS 'Model name as providers report it; also prices dated snapshots (gpt-4.1-mini-2025-04-14, claude-sonnet-4-5-20250929) of this name.';
COMMENT ON COLUMN maester.price.valid_from IS 'The price applies to calls from this time until the next row''s valid_from.';
COMMENT ON COLUMN maester.price.cache_read_input_cost_per_million IS 'Price of prompt tokens read from the provider''s cache (OpenAI cached input, Anthropic cache reads); NULL: the input price.';
COMMENT ON COLUMN maester.price.cache_creation_input_cost_per_million IS 'Price of prompt tokens written to the cache (Anthropic); NULL: the input price.';

-- List prices as published by OpenAI and Anthropic (USD per 1M tokens)
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million,
                           cache_read_input_cost_per_million, cache_creation_input_cost_per_million, source) VALUES
    ('gpt-4.1',           '2025-04-14', 2.00,  8.00,  0.50,  NULL,  'openai.com/api/pricing'),
    ('gpt-4.1-mini',      '2025-04-14', 0.40,  1.60,  0.10,  NULL,  'openai.com/api/pricing'),
    ('gpt-4.1-nano',      '2025-04-14', 0.10,  0.40,  0.025, NULL,  'openai.com/api/pricing'),
    ('gpt-4o',            '2024-05-13', 2.50,  10.00, 1.25,  NULL,  'openai.com/api/pricing'),
    ('gpt-4o-mini',       '2024-07-18', 0.15,  0.60,  0.075, NULL,  'openai.com/api/pricing'),
    ('claude-sonnet-4-5', '2025-09-29', 3.00,  15.00, 0.30,  3.75,  'anthropic.com/pricing'),
    ('claude-haiku-4-5',  '2025-10-15', 1.00,  5.00,  0.10,  1.25,  'anthropic.com/pricing'),
    ('claude-opus-4-1',   '2025-08-05', 15.00, 75.00, 1.50,  18.75, 'anthropic.com/pricing');

CREATE FUNCTION maester.price_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'prices are immutable'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('%s on maester.price is not allowed.', TG_OP),
              HINT = 'Insert a new price with a later valid_from.';
END
$$;

COMMENT ON FUNCTION maester.price_guard() IS
    'Trigger: refuses UPDATE and DELETE of prices, so that what a call cost can always be recomputed.';

CREATE TRIGGER price_guard
    BEFORE UPDATE OR DELETE ON maester.price
    FOR EACH ROW EXECUTE FUNCTION maester.price_guard();
-- a new price reaches every backend's price cache at commit
CREATE TRIGGER price_invalidate
    AFTER INSERT OR TRUNCATE ON maester.price
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();

CREATE FUNCTION maester.price_at(model text, at timestamptz DEFAULT pg_catalog.now())
RETURNS maester.price
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.*
      FROM maester.price p
     WHERE (p.model OPERATOR(pg_catalog.=) $1
            OR (pg_catalog.starts_with($1, p.model OPERATOR(pg_catalog.||) '-')
                AND pg_catalog.substr($1, pg_catalog.length(p.model) OPERATOR(pg_catalog.+) 2)
                    OPERATOR(pg_catalog.~) '^([0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{8}|latest)$'))
       AND p.valid_from OPERATOR(pg_catalog.<=) $2
     ORDER BY pg_catalog.length(p.model) DESC, p.valid_from DESC
     LIMIT 1
$$;

COMMENT ON FUNCTION maester.price_at(text, timestamptz) IS
    'The price of a model at a time: the latest row valid then, for the model or the undated name of a dated snapshot (gpt-4.1-mini-2025-04-14 is priced as gpt-4.1-mini). NULL when there is none.';

CREATE FUNCTION maester.cost_exact(
    model               text,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint DEFAULT 0,
    cache_write_tokens  bigint DEFAULT 0,
    at                  timestamptz DEFAULT pg_catalog.now(),
    OUT input_cost      numeric,
    OUT output_cost     numeric)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- (OPERATOR() syntax has no arithmetic precedence: every step is
    -- parenthesized; trim_scale drops the division's trailing zeros)
    SELECT pg_catalog.trim_scale(((((($2 OPERATOR(pg_catalog.-) $4) OPERATOR(pg_catalog.-) $5)
               OPERATOR(pg_catalog.*) p.input_cost_per_million)
             OPERATOR(pg_catalog.+) ($4 OPERATOR(pg_catalog.*) COALESCE(p.cache_read_input_cost_per_million, p.input_cost_per_million))
             OPERATOR(pg_catalog.+) ($5 OPERATOR(pg_catalog.*) COALESCE(p.cache_creation_input_cost_per_million, p.input_cost_per_million)))
            OPERATOR(pg_catalog./) 1000000)::numeric),
           pg_catalog.trim_scale((($3 OPERATOR(pg_catalog.*) p.output_cost_per_million) OPERATOR(pg_catalog./) 1000000)::numeric)
      FROM maester.price_at($1, $6) p
     WHERE p.model IS NOT NULL
$$;

COMMENT ON FUNCTION maester.cost_exact(text, bigint, bigint, bigint, bigint, timestamptz) IS
    'Exact, unrounded input and output cost in USD of a call (input_tokens include cached and cache-write tokens, priced at their own rates); NULLs when the model has no price.';

CREATE TYPE maester.cost AS (
    model           text,
    input_tokens    bigint,
    output_tokens   bigint,
    total_tokens    bigint,
    input_cost_usd  numeric,
    output_cost_usd numeric,
    total_cost_usd  numeric,
    unit            text
);

COMMENT ON TYPE maester.cost IS
    'The articles'' cost shape: each part rounded half-up to 6 decimal places, the total the sum of the shown parts.';

CREATE FUNCTION maester.cost_of(
    model               text,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint DEFAULT 0,
    at                  timestamptz DEFAULT pg_catalog.now(),
    cache_write_tokens  bigint DEFAULT 0)
RETURNS maester.cost
LANGUAGE plpgsql STABLE CALLED ON NULL INPUT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    c   record;
    r   maester.cost;
BEGIN
    IF model IS NULL OR input_tokens IS NULL OR output_tokens IS NULL THEN
        RAISE EXCEPTION 'model, input_tokens and output_tokens must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    cached_input_tokens := COALESCE(cached_input_tokens, 0);
    cache_write_tokens := COALESCE(cache_write_tokens, 0);
    IF input_tokens OPERATOR(pg_catalog.<) 0 OR output_tokens OPERATOR(pg_catalog.<) 0
       OR cached_input_tokens OPERATOR(pg_catalog.<) 0 OR cache_write_tokens OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'token counts must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (cached_input_tokens OPERATOR(pg_catalog.+) cache_write_tokens) OPERATOR(pg_catalog.>) input_tokens THEN
        RAISE EXCEPTION 'cached_input_tokens and cache_write_tokens are part of input_tokens and cannot exceed it'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO c FROM maester.cost_exact(model, input_tokens, output_tokens,
                                            cached_input_tokens, cache_write_tokens, COALESCE(at, pg_catalog.now()));
    IF c.input_cost IS NULL THEN
        RAISE EXCEPTION 'no price for model "%"', model
            USING ERRCODE = 'undefined_object',
                  DETAIL = pg_catalog.format('No price of it is valid at %s.', COALESCE(at, pg_catalog.now())),
                  HINT = 'Add one with INSERT INTO maester.price.';
    END IF;
    r.model := model;
    r.input_tokens := input_tokens;
    r.output_tokens := output_tokens;
    r.total_tokens := input_tokens OPERATOR(pg_catalog.+) output_tokens;
    r.input_cost_usd := pg_catalog.round(c.input_cost, 6);
    r.output_cost_usd := pg_catalog.round(c.output_cost, 6);
    r.total_cost_usd := r.input_cost_usd OPERATOR(pg_catalog.+) r.output_cost_usd;
    r.unit := 'USD';
    RETURN r;
END
$$;

COMMENT ON FUNCTION maester.cost_of(text, bigint, bigint, bigint, timestamptz, bigint) IS
    'The cost of a call in the articles'' shape: cost_of(''gpt-4.1-mini'', 40, 48) = 0.000016 + 0.000077 = 0.000093 USD. Cached and cache-write tokens are part of input_tokens, priced at their rates. Unknown model: 42704; negative tokens: 22023.';

--------------------------------------------------------------------------
-- The call
--------------------------------------------------------------------------
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
    evaluation          jsonb
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
    error_detail        text
);

COMMENT ON TYPE maester.batch_result IS
    'One request of maester.generate_batch: its ordinal (1-based position in the requests array), the maester.generation fields, and, when it failed, the SQLSTATE, class and message the same call would have raised.';
COMMENT ON COLUMN maester.batch_result.error_class IS 'NULL on success; else invalid_request, budget, egress_denied, ledger_unavailable, error, or the last attempt''s class (rate_limited, server_error, timeout, connection, auth, bad_response, circuit_open, no_api_key, ...).';

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

-- Asynchronous jobs: requests queued with maester.submit and run by the
-- job workers (maester.job_workers per database) through the same gateway.
CREATE TABLE maester.job (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    submission       text NOT NULL,
    request          jsonb NOT NULL,
    callback         regproc,
    tenant           text NOT NULL,
    role             name NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
        CHECK (status OPERATOR(pg_catalog.=) ANY
               (ARRAY['queued', 'running', 'done', 'failed', 'cancelled', 'review'])),
    cancel_requested boolean NOT NULL DEFAULT false,
    attempts         integer NOT NULL DEFAULT 0,
    request_id       uuid,
    trace_id         text,
    result           maester.generation,
    error_code       text,
    error_class      text,
    error_message    text,
    callback_error   text,
    submitted_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    started_at       timestamptz,
    finished_at      timestamptz,
    worker           integer,
    worker_pid       integer
);

CREATE INDEX job_queued ON maester.job (id) WHERE status OPERATOR(pg_catalog.=) 'queued';
CREATE INDEX job_running ON maester.job (worker) WHERE status OPERATOR(pg_catalog.=) 'running';
CREATE INDEX job_submission ON maester.job (submission);
CREATE INDEX job_request ON maester.job (request_id);

COMMENT ON TABLE maester.job IS
    'Asynchronous model calls (maester.submit), run by the job workers; each has its ledger rows (usage.request_id = job.request_id) and its trace (trace_id). Row-level security by tenant.';
COMMENT ON COLUMN maester.job.submission IS 'Groups jobs for maester.job_progress: given to submit, else one per submitting transaction.';
COMMENT ON COLUMN maester.job.status IS 'queued, running, done, failed, cancelled; review: its worker stopped while the call was in flight (it may have been answered and billed: see its ledger rows), so it was not run again (maester.job_retry_interrupted).';
COMMENT ON COLUMN maester.job.attempts IS 'Times a worker took the job (more than 1 only after an interruption, with maester.job_retry_interrupted on).';
COMMENT ON COLUMN maester.job.request_id IS 'The call''s request id, set when a worker takes the job, before anything is sent: its ledger rows.';
COMMENT ON COLUMN maester.job.callback IS 'A procedure called with the job id when the job ends (done, failed or cancelled while running), as the submitter, in the transaction that records the result; its error is kept in callback_error.';

ALTER TABLE maester.job ENABLE ROW LEVEL SECURITY;
CREATE POLICY job_admin ON maester.job FOR ALL TO maester_admin USING (true);
CREATE POLICY job_tenant ON maester.job FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) pg_catalog.current_setting('maester.tenant'));

CREATE FUNCTION maester.submit(request jsonb, callback regproc DEFAULT NULL,
                               submission text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'job_submit'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.submit(jsonb, regproc, text) IS
    'Queues a model call and returns its job id at once: request is an object with llm_generate''s argument names (as in generate_batch), run as the submitting role and tenant. callback: a procedure taking the job id (bigint), called when the job ends. The job workers are woken at commit.';

CREATE FUNCTION maester.cancel_job(id bigint)
RETURNS boolean
AS 'MODULE_PATHNAME', 'job_cancel'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.cancel_job(bigint) IS
    'Cancels a job: a queued one at once, a running one at its worker''s next round (its call is stopped and settled in the ledger as cancelled). False when the job had already ended. Its submitter or maester_admin.';

CREATE VIEW maester.job_progress WITH (security_invoker = true) AS
SELECT p.submission, p.total, p.queued, p.running, p.done, p.failed, p.cancelled, p.review,
       p.submitted_at, p.last_finished_at,
       pg_catalog.round(p.per_second, 2) AS per_second,
       CASE WHEN p.queued OPERATOR(pg_catalog.+) p.running OPERATOR(pg_catalog.=) 0 THEN interval '0'
            WHEN p.per_second OPERATOR(pg_catalog.>) 0
            THEN pg_catalog.make_interval(secs => ((p.queued OPERATOR(pg_catalog.+) p.running)
                                                   OPERATOR(pg_catalog./) p.per_second)::double precision)
       END AS eta
  FROM (SELECT j.submission,
               pg_catalog.count(*) AS total,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'queued') AS queued,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'running') AS running,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'done') AS done,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'failed') AS failed,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'cancelled') AS cancelled,
               pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) 'review') AS review,
               pg_catalog.min(j.submitted_at) AS submitted_at,
               pg_catalog.max(j.finished_at) AS last_finished_at,
               (pg_catalog.count(*) FILTER (WHERE j.status OPERATOR(pg_catalog.=) ANY (ARRAY['done', 'failed'])))::numeric
                 OPERATOR(pg_catalog./) NULLIF(EXTRACT(epoch FROM pg_catalog.max(j.finished_at)
                                                   OPERATOR(pg_catalog.-) pg_catalog.min(j.started_at)), 0)
                 AS per_second
          FROM maester.job j
         GROUP BY j.submission) p;

COMMENT ON VIEW maester.job_progress IS
    'Per submission: how many jobs are queued, running, done, failed, cancelled or in review; the rate so far (jobs finished per second since the first started) and the estimated time left.';

CREATE FUNCTION maester.job_retention(older_than interval)
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
    -- queued, running and review jobs are kept whatever their age
    DELETE FROM maester.job j
     WHERE j.finished_at OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than)
       AND j.status OPERATOR(pg_catalog.=) ANY (ARRAY['done', 'failed', 'cancelled']);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.job_retention(interval) IS
    'Deletes jobs that ended (done, failed, cancelled) longer ago than the given age and returns how many; jobs in review are kept.';

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


--------------------------------------------------------------------------
-- The usage ledger
--------------------------------------------------------------------------
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
        (ARRAY['pending', 'ok', 'error', 'timeout', 'cancelled', 'orphaned', 'blocked'])),
    error_class         text,
    http_status         integer,
    fallback_used       boolean,
    tags                jsonb,
    eval_status         text,
    eval_score          double precision,
    backend_pid         integer,
    server_epoch        bigint,
    PRIMARY KEY (request_id, attempt)
);

CREATE INDEX usage_ts_brin ON maester.usage USING brin (ts);
CREATE INDEX usage_tenant_day ON maester.usage (tenant, ((ts AT TIME ZONE 'UTC')::date));
CREATE INDEX usage_pending ON maester.usage (ts) WHERE status OPERATOR(pg_catalog.=) 'pending';

COMMENT ON TABLE maester.usage IS
    'The ledger: one row per attempt of every model call, written by the maester ledger worker (never by the caller''s transaction), so that no rollback, error or crash loses it. Row-level security by tenant for maester_user and maester_reader.';
COMMENT ON COLUMN maester.usage.ts IS 'When the attempt started (the row is durable before the request leaves).';
COMMENT ON COLUMN maester.usage.settled_at IS 'When the attempt''s outcome was recorded (NULL while pending).';
COMMENT ON COLUMN maester.usage.tenant IS 'maester.tenant of the calling session.';
COMMENT ON COLUMN maester.usage.role IS 'The calling role (current_user).';
COMMENT ON COLUMN maester.usage.purpose IS 'generation, or evaluation for calls made by evaluators.';
COMMENT ON COLUMN maester.usage.model IS 'The model as served (or, before an answer, as requested from the provider).';
COMMENT ON COLUMN maester.usage.max_tokens IS 'Output tokens reserved by the estimate (the call''s max_tokens, else 4096).';
COMMENT ON COLUMN maester.usage.estimated_cost_usd IS 'Worst-case cost reserved before the request left: estimated input tokens plus max_tokens at the output price.';
COMMENT ON COLUMN maester.usage.cost_usd IS 'Exact cost in USD: at the price in force for ok calls; 0 for errors the provider answered; the estimate for timeouts, cancelled and orphaned attempts, which may have been billed; NULL when unpriced.';
COMMENT ON COLUMN maester.usage.priced IS 'False when the model had no price (cost NULL).';
COMMENT ON COLUMN maester.usage.status IS 'pending (in flight), ok, error, timeout, cancelled, orphaned (its backend died mid-call; charged at the estimate), blocked (refused by a budget).';
COMMENT ON COLUMN maester.usage.error_class IS 'rate_limited, server_error, overloaded, auth, not_found, bad_request, redirect, timeout, connection, network, bad_response, too_large, cancelled.';
COMMENT ON COLUMN maester.usage.eval_status IS 'The evaluation of a successful attempt''s output: pass, fail, or error (a check could not run).';
COMMENT ON COLUMN maester.usage.eval_score IS 'The evaluation''s reliability score (0 to 1).';
COMMENT ON COLUMN maester.usage.server_epoch IS 'Shared memory generation of the server life that made the call (for orphan detection).';

ALTER TABLE maester.usage ENABLE ROW LEVEL SECURITY;
CREATE POLICY usage_admin ON maester.usage FOR SELECT TO maester_admin USING (true);
CREATE POLICY usage_admin_delete ON maester.usage FOR DELETE TO maester_admin USING (true);
CREATE POLICY usage_tenant ON maester.usage FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) pg_catalog.current_setting('maester.tenant'));


CREATE FUNCTION maester.usage_retention(older_than interval)
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
    -- pending rows are never removed: their calls may still be in flight
    DELETE FROM maester.usage u
     WHERE u.ts OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) older_than)
       AND u.status OPERATOR(pg_catalog.<>) 'pending';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

COMMENT ON FUNCTION maester.usage_retention(interval) IS
    'Deletes ledger rows older than the given age (never pending ones) and returns how many; schedule it (pg_cron) to keep the ledger bounded.';

CREATE VIEW maester.cost_daily WITH (security_invoker = true) AS
SELECT (u.ts AT TIME ZONE 'UTC')::date AS day,
       u.tenant,
       u.provider,
       u.model,
       pg_catalog.count(*) AS calls,
       pg_catalog.count(*) FILTER (WHERE u.status OPERATOR(pg_catalog.<>) 'ok') AS errors,
       COALESCE(pg_catalog.sum(u.input_tokens), 0) AS input_tokens,
       COALESCE(pg_catalog.sum(u.output_tokens), 0) AS output_tokens,
       COALESCE(pg_catalog.sum(u.cost_usd), 0) AS cost_usd,
       pg_catalog.bool_and(u.priced) AS all_priced
  FROM maester.usage u
 GROUP BY 1, 2, 3, 4;

COMMENT ON VIEW maester.cost_daily IS
    'Why did our AI bill jump yesterday? Calls, errors, tokens and cost per day, tenant, provider and model (attempts, from the ledger).';
COMMENT ON COLUMN maester.cost_daily.day IS 'The day (UTC) the attempts started; filter on it: an index on (tenant, day) serves "one tenant, one month".';
COMMENT ON COLUMN maester.cost_daily.tenant IS 'Tenant charged (maester.tenant of the calling session).';
COMMENT ON COLUMN maester.cost_daily.provider IS 'Provider called.';
COMMENT ON COLUMN maester.cost_daily.model IS 'Model as served.';
COMMENT ON COLUMN maester.cost_daily.calls IS 'Attempts recorded (one call may make several).';
COMMENT ON COLUMN maester.cost_daily.errors IS 'Attempts that did not end ok (errors, timeouts, cancelled, orphaned, blocked, pending).';
COMMENT ON COLUMN maester.cost_daily.input_tokens IS 'Prompt tokens, cached ones included.';
COMMENT ON COLUMN maester.cost_daily.output_tokens IS 'Completion tokens.';
COMMENT ON COLUMN maester.cost_daily.cost_usd IS 'Exact cost in USD (unpriced attempts count as 0; see all_priced).';
COMMENT ON COLUMN maester.cost_daily.all_priced IS 'False when some attempts had no price.';

CREATE VIEW maester.cost_by_prompt_version WITH (security_invoker = true) AS
SELECT u.prompt_name AS prompt,
       u.prompt_version AS version,
       u.prompt_hash AS hash,
       pg_catalog.count(*) AS calls,
       pg_catalog.count(*) FILTER (WHERE u.status OPERATOR(pg_catalog.<>) 'ok') AS errors,
       pg_catalog.avg(u.latency_ms) AS avg_latency_ms,
       pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY u.latency_ms) AS p50_latency_ms,
       pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY u.latency_ms) AS p95_latency_ms,
       pg_catalog.avg(u.cost_usd) AS avg_cost_usd,
       COALESCE(pg_catalog.sum(u.cost_usd), 0) AS total_cost_usd,
       pg_catalog.avg(CASE WHEN u.eval_status OPERATOR(pg_catalog.=) 'pass' THEN 1.0 ELSE 0.0 END)
           FILTER (WHERE u.eval_status IS NOT NULL) AS pass_rate,
       pg_catalog.avg(u.eval_score) AS mean_score
  FROM maester.usage u
 WHERE u.prompt_name IS NOT NULL
 GROUP BY 1, 2, 3;

COMMENT ON VIEW maester.cost_by_prompt_version IS
    'Which prompt version costs what: attempts, errors, latency (average, p50, p95) and cost per prompt name, version and rendered-prompt hash.';
COMMENT ON COLUMN maester.cost_by_prompt_version.prompt IS 'Prompt name in the registry.';
COMMENT ON COLUMN maester.cost_by_prompt_version.version IS 'Prompt version.';
COMMENT ON COLUMN maester.cost_by_prompt_version.calls IS 'Attempts recorded.';
COMMENT ON COLUMN maester.cost_by_prompt_version.errors IS 'Attempts that did not end ok.';
COMMENT ON COLUMN maester.cost_by_prompt_version.hash IS 'The rendered prompt''s hash: one row per distinct prompt text sent.';
COMMENT ON COLUMN maester.cost_by_prompt_version.avg_latency_ms IS 'Average attempt latency in ms.';
COMMENT ON COLUMN maester.cost_by_prompt_version.p50_latency_ms IS 'Median attempt latency in ms.';
COMMENT ON COLUMN maester.cost_by_prompt_version.p95_latency_ms IS '95th percentile of attempt latency in ms.';
COMMENT ON COLUMN maester.cost_by_prompt_version.avg_cost_usd IS 'Average cost of a priced attempt in USD.';
COMMENT ON COLUMN maester.cost_by_prompt_version.total_cost_usd IS 'Total cost in USD.';
COMMENT ON COLUMN maester.cost_by_prompt_version.pass_rate IS 'Share of evaluated outputs whose evaluation passed.';
COMMENT ON COLUMN maester.cost_by_prompt_version.mean_score IS 'Mean reliability score of the evaluated outputs.';


--------------------------------------------------------------------------
-- Budgets
--------------------------------------------------------------------------
CREATE TABLE maester.budget (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          text NOT NULL,
    prompt          text,
    model           text,
    period          text NOT NULL CHECK (period OPERATOR(pg_catalog.=) ANY (ARRAY['day', 'month', 'total'])),
    limit_usd       numeric NOT NULL CHECK (limit_usd OPERATOR(pg_catalog.>) 0),
    action          text NOT NULL DEFAULT 'block'
        CHECK (action OPERATOR(pg_catalog.=) ANY (ARRAY['block', 'downgrade', 'warn'])),
    downgrade_model text,
    description     text,
    CHECK ((action OPERATOR(pg_catalog.=) 'downgrade') OPERATOR(pg_catalog.=) (downgrade_model IS NOT NULL))
);

COMMENT ON TABLE maester.budget IS
    'Spending limits per tenant (optionally for one prompt or model) per day, month (UTC) or in total. Enforced before each attempt from shared-memory counters: the worst-case cost is reserved, so concurrent calls cannot overspend.';
COMMENT ON COLUMN maester.budget.prompt IS 'Only calls of this prompt (NULL: all).';
COMMENT ON COLUMN maester.budget.model IS 'Only calls to this model (NULL: all).';
COMMENT ON COLUMN maester.budget.action IS 'block: the call fails (MB001) and leaves a blocked ledger row; downgrade: the call goes to downgrade_model; warn: a WARNING, the call proceeds.';
COMMENT ON COLUMN maester.budget.downgrade_model IS 'The cheaper model (or route) used when the budget would be exceeded (action downgrade).';

CREATE TRIGGER budget_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.budget
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();

CREATE FUNCTION maester.budget_counters(
    OUT id bigint, OUT period_start timestamptz, OUT spent_usd numeric,
    OUT reserved_usd numeric, OUT loaded boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'budget_counters'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.budget_counters() IS
    'The shared-memory counters of this database''s budgets: spent and reserved in the current period.';

CREATE VIEW maester.budget_status WITH (security_invoker = true) AS
SELECT b.id,
       b.tenant,
       b.prompt,
       b.model,
       b.period,
       b.limit_usd,
       b.action,
       s.spent_usd,
       COALESCE(c.reserved_usd, 0) AS reserved_usd,
       GREATEST(b.limit_usd OPERATOR(pg_catalog.-) s.spent_usd OPERATOR(pg_catalog.-) COALESCE(c.reserved_usd, 0), 0) AS remaining_usd,
       w.period_start,
       CASE b.period
           WHEN 'day' THEN w.period_start OPERATOR(pg_catalog.+) interval '1 day'
           WHEN 'month' THEN w.period_start OPERATOR(pg_catalog.+) interval '1 month'
       END AS period_end,
       COALESCE(c.loaded, false) AS counters_loaded
  FROM maester.budget b
  LEFT JOIN maester.budget_counters() c ON c.id OPERATOR(pg_catalog.=) b.id
  CROSS JOIN LATERAL (SELECT CASE b.period
                                 WHEN 'day' THEN pg_catalog.date_trunc('day', pg_catalog.now(), 'UTC')
                                 WHEN 'month' THEN pg_catalog.date_trunc('month', pg_catalog.now(), 'UTC')
                             END AS period_start) w
  -- before a call has loaded the counters, what the ledger says
  CROSS JOIN LATERAL (SELECT CASE WHEN c.loaded THEN c.spent_usd ELSE
                          (SELECT COALESCE(pg_catalog.sum(COALESCE(u.cost_usd, u.estimated_cost_usd, 0)), 0)
                             FROM maester.usage u
                            WHERE u.tenant OPERATOR(pg_catalog.=) b.tenant
                              AND (b.prompt IS NULL OR u.prompt_name OPERATOR(pg_catalog.=) b.prompt)
                              AND (b.model IS NULL OR u.model OPERATOR(pg_catalog.=) b.model
                                   OR u.requested_model OPERATOR(pg_catalog.=) b.model)
                              AND (w.period_start IS NULL OR u.ts OPERATOR(pg_catalog.>=) w.period_start)
                              AND u.status OPERATOR(pg_catalog.<>) 'pending') END AS spent_usd) s;

COMMENT ON VIEW maester.budget_status IS
    'Each budget with its limit, what was spent and is reserved by calls in flight in the current period, what remains, and the period''s window (UTC). Counters are loaded from the ledger when a budget is first used in a period.';
COMMENT ON COLUMN maester.budget_status.id IS 'The budget (maester.budget.id).';
COMMENT ON COLUMN maester.budget_status.tenant IS 'Tenant the budget applies to.';
COMMENT ON COLUMN maester.budget_status.prompt IS 'Only this prompt''s calls (NULL: all).';
COMMENT ON COLUMN maester.budget_status.model IS 'Only this model''s calls (NULL: all).';
COMMENT ON COLUMN maester.budget_status.period IS 'day, month (UTC) or total.';
COMMENT ON COLUMN maester.budget_status.limit_usd IS 'The limit in USD per period.';
COMMENT ON COLUMN maester.budget_status.action IS 'block, downgrade or warn.';
COMMENT ON COLUMN maester.budget_status.spent_usd IS 'Spent in the current period (the shared counter, or the ledger''s sum before it is loaded).';
COMMENT ON COLUMN maester.budget_status.reserved_usd IS 'Worst-case cost reserved by calls in flight.';
COMMENT ON COLUMN maester.budget_status.period_start IS 'Start of the current period (UTC); NULL for total.';
COMMENT ON COLUMN maester.budget_status.period_end IS 'End of the current period (UTC); NULL for total.';
COMMENT ON COLUMN maester.budget_status.remaining_usd IS 'limit - spent - reserved, at least 0.';
COMMENT ON COLUMN maester.budget_status.counters_loaded IS 'False until a call used the budget in this period (spent then comes from the ledger).';


--------------------------------------------------------------------------
-- Evaluation
--------------------------------------------------------------------------
CREATE FUNCTION maester.evaluate(content text, checks jsonb DEFAULT NULL, context jsonb DEFAULT NULL)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'evaluate'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

CREATE FUNCTION maester.validate_checks(checks jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'validate_checks'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.validate_checks(jsonb) IS
    'Returns the checks if maester.evaluate would accept them, else raises its error (22023, or 2201B for a bad regex); runs no grader. prompt_register validates checks this way.';

COMMENT ON FUNCTION maester.evaluate(text, jsonb, jsonb) IS
    'Checks an output: {status, reliability_score, metrics[{name, score, passed, reason}]}. checks: an object ({"required_terms": [...], "max_length": 500, "threshold": 0.8}) or an array of assertions ({"type", "value", "weight"}); NULL: non_empty and max_length 500. context: cost_usd, latency_ms.';


--------------------------------------------------------------------------
-- Evaluation suites and replay
--------------------------------------------------------------------------
CREATE TABLE maester.eval_suite (
    name        text PRIMARY KEY,
    prompt      text NOT NULL REFERENCES maester.prompt (name),
    description text,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

COMMENT ON TABLE maester.eval_suite IS
    'A set of test cases for one prompt: run it against versions and models with maester.eval_run, compare runs with maester.eval_compare.';

CREATE TABLE maester.eval_case (
    suite     text NOT NULL REFERENCES maester.eval_suite (name) ON DELETE CASCADE,
    case_name text NOT NULL,
    variables jsonb NOT NULL DEFAULT '{}',
    checks    jsonb,
    expected  text,
    PRIMARY KEY (suite, case_name),
    CHECK (pg_catalog.jsonb_typeof(variables) OPERATOR(pg_catalog.=) 'object')
);

COMMENT ON TABLE maester.eval_case IS
    'One test case: the variables to render the prompt with, the checks its output must pass (NULL: the prompt version''s checks, else the default), and optionally the expected output.';
COMMENT ON COLUMN maester.eval_case.expected IS 'Expected output: adds a levenshtein check allowing 20% of its length as edit distance.';

CREATE TABLE maester.eval_run (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    suite          text NOT NULL REFERENCES maester.eval_suite (name) ON DELETE CASCADE,
    prompt         text NOT NULL,
    prompt_version text,
    model          text,
    started_at     timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    finished_at    timestamptz,
    cases          integer,
    passed         integer,
    errors         integer,
    pass_rate      numeric,
    mean_score     numeric,
    total_cost_usd numeric,
    p50_latency_ms double precision,
    p95_latency_ms double precision
);

COMMENT ON TABLE maester.eval_run IS
    'One run of a suite against a prompt version and model, with its summary: pass rate, mean score, total cost, p50/p95 latency.';

CREATE TABLE maester.eval_result (
    run_id     bigint NOT NULL REFERENCES maester.eval_run (id) ON DELETE CASCADE,
    case_name  text NOT NULL,
    content    text,
    score      numeric,
    passed     boolean NOT NULL,
    evaluation jsonb,
    cost_usd   numeric,
    latency_ms double precision,
    trace_id   text,
    request_id uuid,
    error      text,
    PRIMARY KEY (run_id, case_name)
);

COMMENT ON TABLE maester.eval_result IS
    'The result of one case in one run: the output, its evaluation, cost, latency and trace id (or the error).';

CREATE FUNCTION maester.eval_run(suite text, prompt_version text DEFAULT NULL, model text DEFAULT NULL,
                                 concurrency integer DEFAULT 8)
RETURNS maester.eval_run
LANGUAGE plpgsql
VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    s     maester.eval_suite;
    c     maester.eval_case;
    cases maester.eval_case[];
    g     maester.batch_result;
    run   maester.eval_run;
    chk   jsonb;
    ev    jsonb;
    msg   text;
BEGIN
    SELECT * INTO s FROM maester.eval_suite es WHERE es.name OPERATOR(pg_catalog.=) eval_run.suite;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'evaluation suite "%" does not exist', eval_run.suite
            USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO maester.eval_run AS r (suite, prompt, prompt_version, model)
    VALUES (s.name, s.prompt, eval_run.prompt_version, eval_run.model)
    RETURNING * INTO run;

    -- every case through the batch path, `concurrency` at a time
    cases := ARRAY(SELECT ec FROM maester.eval_case ec
                    WHERE ec.suite OPERATOR(pg_catalog.=) s.name ORDER BY ec.case_name);
    FOR g IN SELECT * FROM maester.generate_batch(
                 ARRAY(SELECT jsonb_build_object('prompt_name', s.prompt,
                                                 'variables', (cases[i]).variables,
                                                 'prompt_version', eval_run.prompt_version,
                                                 'model', eval_run.model)
                         FROM pg_catalog.generate_subscripts(cases, 1) i ORDER BY i),
                 concurrency => eval_run.concurrency) b
             ORDER BY b.ordinal LOOP
        c := cases[g.ordinal];
        IF g.error_class IS NOT NULL THEN
            INSERT INTO maester.eval_result (run_id, case_name, score, passed, error, trace_id, request_id)
            VALUES (run.id, c.case_name, 0, false, g.error_message, g.trace_id, g.request_id);
            CONTINUE;
        END IF;
        BEGIN
            chk := COALESCE(c.checks,
                            (SELECT v.checks FROM maester.prompt_version v
                              WHERE v.name OPERATOR(pg_catalog.=) s.prompt
                                AND v.version OPERATOR(pg_catalog.=) g.prompt_version));
            IF c.expected IS NOT NULL THEN
                chk := jsonb_build_object('assert',
                    CASE WHEN chk IS NULL THEN '[{"type": "max_length", "value": 500}]'::jsonb
                         WHEN jsonb_typeof(chk) OPERATOR(pg_catalog.=) 'array' THEN chk
                         WHEN chk ? 'assert' THEN chk -> 'assert'
                         ELSE (SELECT COALESCE(jsonb_agg(jsonb_build_object('type', e.key, 'value', e.value)), '[]')
                                 FROM jsonb_each(chk) e WHERE e.key OPERATOR(pg_catalog.<>) 'threshold')
                    END OPERATOR(pg_catalog.||) jsonb_build_array(jsonb_build_object(
                        'type', 'levenshtein', 'value', c.expected,
                        'max', floor(length(c.expected) OPERATOR(pg_catalog.*) 0.2))))
                    OPERATOR(pg_catalog.||) CASE WHEN chk ? 'threshold'
                                                 THEN jsonb_build_object('threshold', chk -> 'threshold')
                                                 ELSE '{}'::jsonb END;
            END IF;
            ev := maester.evaluate(g.content, chk,
                                   jsonb_build_object('cost_usd', g.cost_usd, 'latency_ms', g.latency_ms));
            INSERT INTO maester.eval_result (run_id, case_name, content, score, passed, evaluation,
                                             cost_usd, latency_ms, trace_id, request_id)
            VALUES (run.id, c.case_name, g.content, (ev ->> 'reliability_score')::numeric,
                    ev ->> 'status' OPERATOR(pg_catalog.=) 'pass', ev, g.cost_usd, g.latency_ms,
                    g.trace_id, g.request_id);
            run.prompt_version := g.prompt_version;
            run.model := COALESCE(eval_run.model, g.model);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT;
            INSERT INTO maester.eval_result (run_id, case_name, score, passed, error, trace_id, request_id)
            VALUES (run.id, c.case_name, 0, false, msg, g.trace_id, g.request_id);
        END;
    END LOOP;

    UPDATE maester.eval_run r SET
        prompt_version = run.prompt_version,
        model = run.model,
        finished_at = pg_catalog.clock_timestamp(),
        cases = x.cases, passed = x.passed, errors = x.errors,
        pass_rate = x.pass_rate, mean_score = x.mean_score, total_cost_usd = x.total_cost,
        p50_latency_ms = x.p50, p95_latency_ms = x.p95
      FROM (SELECT pg_catalog.count(*)::integer AS cases,
                   pg_catalog.count(*) FILTER (WHERE e.passed)::integer AS passed,
                   pg_catalog.count(*) FILTER (WHERE e.error IS NOT NULL)::integer AS errors,
                   pg_catalog.round(pg_catalog.avg(CASE WHEN e.passed THEN 1 ELSE 0 END), 4) AS pass_rate,
                   pg_catalog.round(pg_catalog.avg(e.score), 4) AS mean_score,
                   COALESCE(pg_catalog.sum(e.cost_usd), 0) AS total_cost,
                   pg_catalog.percentile_cont(0.5) WITHIN GROUP (ORDER BY e.latency_ms) AS p50,
                   pg_catalog.percentile_cont(0.95) WITHIN GROUP (ORDER BY e.latency_ms) AS p95
              FROM maester.eval_result e WHERE e.run_id OPERATOR(pg_catalog.=) run.id) x
     WHERE r.id OPERATOR(pg_catalog.=) run.id
    RETURNING r.* INTO run;
    RETURN run;
END
$$;

COMMENT ON FUNCTION maester.eval_run(text, text, text, integer) IS
    'Runs every case of a suite through the gateway''s batch path (concurrency cases at a time; prompt version: given, else latest; model: given, else the version''s route) and stores each result and the run''s summary; the calls are ledger rows like any other.';

CREATE FUNCTION maester.eval_compare(run_a bigint, run_b bigint)
RETURNS TABLE (case_name text, score_a numeric, score_b numeric, passed_a boolean, passed_b boolean,
               cost_a numeric, cost_b numeric, latency_a double precision, latency_b double precision,
               better text)
LANGUAGE sql
STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH a AS (SELECT * FROM maester.eval_result r WHERE r.run_id OPERATOR(pg_catalog.=) $1),
         b AS (SELECT * FROM maester.eval_result r WHERE r.run_id OPERATOR(pg_catalog.=) $2),
         per_case AS (
            SELECT COALESCE(a.case_name, b.case_name) AS case_name,
                   a.score AS score_a, b.score AS score_b, a.passed AS passed_a, b.passed AS passed_b,
                   a.cost_usd AS cost_a, b.cost_usd AS cost_b, a.latency_ms AS latency_a, b.latency_ms AS latency_b
              FROM a FULL JOIN b ON a.case_name OPERATOR(pg_catalog.=) b.case_name),
         overall AS (
            SELECT '(overall)'::text AS case_name,
                   (SELECT r.mean_score FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.mean_score FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2),
                   (SELECT r.pass_rate OPERATOR(pg_catalog.=) 1 FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.pass_rate OPERATOR(pg_catalog.=) 1 FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2),
                   (SELECT r.total_cost_usd FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.total_cost_usd FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2),
                   (SELECT r.p50_latency_ms FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $1),
                   (SELECT r.p50_latency_ms FROM maester.eval_run r WHERE r.id OPERATOR(pg_catalog.=) $2))
    SELECT x.*,
           CASE WHEN x.score_a IS NULL OR x.score_b IS NULL THEN NULL
                WHEN x.score_a OPERATOR(pg_catalog.>) x.score_b THEN 'a'
                WHEN x.score_b OPERATOR(pg_catalog.>) x.score_a THEN 'b'
                WHEN COALESCE(x.cost_a, 0) OPERATOR(pg_catalog.<) COALESCE(x.cost_b, 0) THEN 'a (cheaper)'
                WHEN COALESCE(x.cost_b, 0) OPERATOR(pg_catalog.<) COALESCE(x.cost_a, 0) THEN 'b (cheaper)'
                ELSE 'tie' END
      FROM (SELECT * FROM per_case UNION ALL SELECT * FROM overall) x
     ORDER BY x.case_name OPERATOR(pg_catalog.=) '(overall)', x.case_name
$$;

COMMENT ON FUNCTION maester.eval_compare(bigint, bigint) IS
    'Compares two runs of a suite case by case and overall (mean score, all passed, total cost, p50 latency): which one did better (higher score; at equal scores, the cheaper) -- the table for deciding a rollout.';

CREATE TABLE maester.capture (
    request_id      uuid PRIMARY KEY,
    ts              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    tenant          text NOT NULL,
    prompt_name     text,
    prompt_version  text,
    variables       jsonb,
    prompt          text,
    system          text,
    requested_model text,
    model           text NOT NULL,
    provider        text NOT NULL,
    max_tokens      integer,
    options         jsonb,
    output          text,
    eval_score      double precision
);

COMMENT ON TABLE maester.capture IS
    'Prompts, variables and outputs of calls, kept only while maester.capture_content is on (off by default); what maester.replay needs. Written in the caller''s transaction. Row-level security by tenant.';

ALTER TABLE maester.capture ENABLE ROW LEVEL SECURITY;
CREATE POLICY capture_admin ON maester.capture FOR ALL TO maester_admin USING (true);
CREATE POLICY capture_tenant ON maester.capture FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) pg_catalog.current_setting('maester.tenant'));
CREATE POLICY capture_insert ON maester.capture FOR INSERT TO maester_user
    WITH CHECK (tenant OPERATOR(pg_catalog.=) pg_catalog.current_setting('maester.tenant'));

CREATE FUNCTION maester.replay(request_id uuid)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE STRICT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    c   maester.capture;
    g   maester.generation;
    new_score double precision;
BEGIN
    SELECT * INTO c FROM maester.capture k WHERE k.request_id OPERATOR(pg_catalog.=) replay.request_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'cannot replay request %: its prompt and variables were not captured', replay.request_id
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'maester.capture_content was off for that call (the default), or the capture was removed.',
                  HINT = 'SET maester.capture_content = on (superuser) before calls you may want to replay.';
    END IF;
    IF c.prompt_name IS NOT NULL THEN
        g := maester.llm_generate(prompt_name => c.prompt_name, variables => c.variables,
                                  prompt_version => c.prompt_version, model => c.model,
                                  max_tokens => c.max_tokens, options => COALESCE(c.options, '{}'));
    ELSE
        g := maester.llm_generate(prompt => c.prompt, system => c.system, model => c.model,
                                  max_tokens => c.max_tokens, options => COALESCE(c.options, '{}'));
    END IF;
    new_score := (g.evaluation ->> 'reliability_score')::double precision;
    RETURN jsonb_build_object(
        'original', jsonb_build_object('request_id', c.request_id, 'provider', c.provider, 'model', c.model,
                                       'prompt_version', c.prompt_version, 'content', c.output,
                                       'reliability_score', c.eval_score),
        'replay', jsonb_build_object('request_id', g.request_id, 'provider', g.provider, 'model', g.model,
                                     'prompt_version', g.prompt_version, 'content', g.content,
                                     'reliability_score', new_score),
        'content_match', c.output IS NOT DISTINCT FROM g.content,
        'length_delta', length(g.content) OPERATOR(pg_catalog.-) length(c.output),
        'same_provider', c.provider IS NOT DISTINCT FROM g.provider,
        'same_model', c.model IS NOT DISTINCT FROM g.model,
        'score_delta', new_score OPERATOR(pg_catalog.-) c.eval_score);
END
$$;

COMMENT ON FUNCTION maester.replay(uuid) IS
    'Re-runs a captured call with the same prompt version, variables and model, and compares: content match, length delta, same provider and model, reliability score delta. Needs maester.capture_content on at the time of the call.';


--------------------------------------------------------------------------
-- Traces and spans
--------------------------------------------------------------------------
CREATE TABLE maester.span (
    trace_id       text NOT NULL,
    span_id        text NOT NULL,
    parent_span_id text,
    name           text NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_us    bigint NOT NULL,
    status         text NOT NULL,
    attributes     jsonb NOT NULL DEFAULT '{}',
    tenant         text NOT NULL,
    request_id     uuid,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (trace_id, span_id)
);

CREATE INDEX span_started_brin ON maester.span USING brin (started_at);
CREATE INDEX span_seq ON maester.span (seq);

COMMENT ON TABLE maester.span IS
    'The steps of every sampled call (llm_generate, prompt_render, model_route, budget_check, model_generate per attempt, cost_metering, evaluation), with OpenTelemetry GenAI attribute names; written by the ledger worker, so they survive the caller''s rollback. Row-level security by tenant.';
COMMENT ON COLUMN maester.span.trace_id IS '32 lowercase hex digits: the application''s trace (maester.traceparent) or a new one.';
COMMENT ON COLUMN maester.span.span_id IS '16 lowercase hex digits.';
COMMENT ON COLUMN maester.span.parent_span_id IS 'The parent span: the call''s root span, or for the root the application''s span (NULL without a traceparent).';
COMMENT ON COLUMN maester.span.duration_us IS 'Duration in microseconds.';
COMMENT ON COLUMN maester.span.attributes IS 'gen_ai.operation.name, gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model, gen_ai.usage.input_tokens, ..., maester.prompt.version, maester.prompt.hash, maester.cost_usd, maester.evaluation.status.';
COMMENT ON COLUMN maester.span.request_id IS 'The call''s request id (on the root span).';
COMMENT ON COLUMN maester.span.seq IS 'Order of writing (the OTLP exporter''s position).';

ALTER TABLE maester.span ENABLE ROW LEVEL SECURITY;
CREATE POLICY span_admin ON maester.span FOR ALL TO maester_admin USING (true);
CREATE POLICY span_tenant ON maester.span FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) pg_catalog.current_setting('maester.tenant'));

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
LANGUAGE sql
STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE tree AS (
        SELECT s.*, 0 AS depth, ARRAY[s.started_at] AS path
          FROM maester.span s
         WHERE s.trace_id OPERATOR(pg_catalog.=) $1 AND s.name OPERATOR(pg_catalog.=) 'llm_generate'
        UNION ALL
        SELECT s.*, t.depth OPERATOR(pg_catalog.+) 1, t.path OPERATOR(pg_catalog.||) s.started_at
          FROM maester.span s
          JOIN tree t ON s.trace_id OPERATOR(pg_catalog.=) t.trace_id
                     AND s.parent_span_id OPERATOR(pg_catalog.=) t.span_id
    )
    SELECT pg_catalog.repeat('  ', t.depth) OPERATOR(pg_catalog.||)
           CASE WHEN t.depth OPERATOR(pg_catalog.>) 0 THEN '->  ' ELSE '' END OPERATOR(pg_catalog.||)
           t.name OPERATOR(pg_catalog.||)
           pg_catalog.format('  (%s ms%s)', pg_catalog.to_char(t.duration_us OPERATOR(pg_catalog./) 1000.0, 'FM999999990.000'),
                             CASE WHEN t.status OPERATOR(pg_catalog.<>) 'ok' THEN ', ' OPERATOR(pg_catalog.||) t.status ELSE '' END)
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
               'prompt=' OPERATOR(pg_catalog.||) (t.attributes ->> 'gen_ai.prompt.name') OPERATOR(pg_catalog.||) '@'
                   OPERATOR(pg_catalog.||) (t.attributes ->> 'maester.prompt.version')), ''), '')
      FROM tree t
     ORDER BY t.path
$$;

COMMENT ON FUNCTION maester.explain(text) IS
    'The span tree of a traced call with timings, tokens, cost and evaluation, the way EXPLAIN ANALYZE reads.';


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

--------------------------------------------------------------------------
-- Circuit breakers
--------------------------------------------------------------------------
CREATE FUNCTION maester.circuit_status(
    OUT provider text, OUT state text, OUT consecutive_failures integer,
    OUT opened_at timestamptz, OUT successes bigint, OUT failures bigint,
    OUT opens bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'circuit_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.circuit_status() IS
    'Circuit breaker state of every provider called since the server started (shared memory).';

CREATE VIEW maester.circuit AS SELECT * FROM maester.circuit_status();

COMMENT ON VIEW maester.circuit IS
    'Circuit breaker per provider: closed (calls go through), open (skipped until the cooldown ends), half_open (one probe under way); counters since server start.';

CREATE FUNCTION maester.circuit_reset(provider text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'circuit_reset'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.circuit_reset(text) IS
    'Closes the circuit breaker of a provider (NULL: all); returns how many were reset.';


--------------------------------------------------------------------------
-- Live statistics
--------------------------------------------------------------------------
CREATE FUNCTION maester.stat_entries(
    OUT provider text, OUT model text, OUT calls bigint, OUT errors bigint,
    OUT attempts bigint, OUT retries bigint, OUT fallbacks bigint, OUT errors_by_class jsonb,
    OUT input_tokens bigint, OUT output_tokens bigint, OUT cost_usd numeric,
    OUT p50_latency_ms double precision, OUT p95_latency_ms double precision,
    OUT p99_latency_ms double precision)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'stat_entries'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.stat_entries() IS
    'The shared-memory statistics of this database, per provider and model (the maester.stat view).';

CREATE VIEW maester.stat AS
SELECT s.*, COALESCE(c.state, 'closed') AS circuit_state
  FROM maester.stat_entries() s
  LEFT JOIN maester.circuit_status() c ON c.provider OPERATOR(pg_catalog.=) s.provider;

COMMENT ON VIEW maester.stat IS
    'Live counters per provider and model since the last stat_reset (or server start), like pg_stat_statements: calls, failed calls, attempts, retries, fallbacks, failed attempts by error class, tokens, cost, call latency p50/p95/p99 (from a histogram, within 19%), and the provider''s circuit state.';

CREATE FUNCTION maester.stat_reset()
RETURNS integer
AS 'MODULE_PATHNAME', 'stat_reset'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.stat_reset() IS
    'Zeroes this database''s statistics in maester.stat; returns how many entries were removed.';

--------------------------------------------------------------------------
-- Privileges: nothing for PUBLIC
--------------------------------------------------------------------------
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA maester FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA maester FROM PUBLIC;

GRANT SELECT ON maester.prompt_versions TO maester_reader;

GRANT SELECT ON maester.prompt, maester.prompt_version, maester.prompt_label TO maester_user;
GRANT EXECUTE ON FUNCTION maester.prompt_render(text, jsonb, text),
                          maester.template_variables(text),
                          maester.check_name(text, text) TO maester_user;

GRANT SELECT ON maester.prompt_label_history TO maester_admin;
GRANT INSERT, UPDATE (description) ON maester.prompt TO maester_admin;
GRANT INSERT ON maester.prompt_version TO maester_admin;
GRANT INSERT, UPDATE, DELETE ON maester.prompt_label TO maester_admin;
GRANT INSERT ON maester.prompt_label_history TO maester_admin;
GRANT EXECUTE ON FUNCTION
    maester.prompt_register(text, text, text, text, jsonb, jsonb, text),
    maester.prompt_set_label(text, text, text),
    maester.prompt_unset_label(text, text) TO maester_admin;

GRANT EXECUTE ON FUNCTION
    maester.llm_generate(text, text, integer, text, text, jsonb, text, jsonb),
    maester.generate_batch(jsonb[], integer, text, text, jsonb, boolean),
    maester.submit(jsonb, regproc, text),
    maester.cancel_job(bigint),
    maester.complete(jsonb),
    maester.evaluate(text, jsonb, jsonb),
    maester.validate_checks(jsonb) TO maester_user;
GRANT SELECT ON maester.circuit TO maester_reader;
GRANT SELECT ON maester.price TO maester_reader, maester_user;
GRANT SELECT ON maester.usage TO maester_reader, maester_user, maester_admin;
GRANT SELECT ON maester.cost_daily, maester.cost_by_prompt_version TO maester_reader, maester_user, maester_admin;
GRANT EXECUTE ON FUNCTION maester.usage_retention(interval) TO maester_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.budget TO maester_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.eval_suite, maester.eval_case TO maester_admin;
GRANT SELECT ON maester.eval_suite, maester.eval_case, maester.eval_run, maester.eval_result
    TO maester_user, maester_reader;
GRANT INSERT, UPDATE ON maester.eval_run, maester.eval_result TO maester_user;
GRANT EXECUTE ON FUNCTION maester.eval_run(text, text, text, integer), maester.replay(uuid) TO maester_user;
GRANT EXECUTE ON FUNCTION maester.eval_compare(bigint, bigint) TO maester_user, maester_reader;
GRANT SELECT ON maester.capture TO maester_user, maester_reader;
GRANT INSERT ON maester.capture TO maester_user;
GRANT SELECT, DELETE ON maester.capture TO maester_admin;
GRANT SELECT ON maester.span, maester.trace TO maester_user, maester_reader, maester_admin;
GRANT DELETE ON maester.span TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.explain(text) TO maester_user, maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.trace_retention(interval) TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.trace_status() TO maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.otlp_payload(bigint, integer) TO maester_reader, maester_admin;
GRANT SELECT ON maester.stat TO maester_reader, maester_admin;
GRANT SELECT ON maester.job, maester.job_progress TO maester_user, maester_reader, maester_admin;
GRANT DELETE ON maester.job TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.cancel_job(bigint) TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.job_retention(interval) TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.stat_entries() TO maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.stat_reset() TO maester_admin;
GRANT SELECT ON maester.budget TO maester_reader;
GRANT SELECT ON maester.budget_status TO maester_reader, maester_admin;
GRANT EXECUTE ON FUNCTION maester.budget_counters() TO maester_reader, maester_admin;
GRANT DELETE ON maester.usage TO maester_admin;
GRANT INSERT ON maester.price TO maester_admin;
GRANT EXECUTE ON FUNCTION
    maester.price_at(text, timestamptz),
    maester.cost_exact(text, bigint, bigint, bigint, bigint, timestamptz),
    maester.cost_of(text, bigint, bigint, bigint, timestamptz, bigint)
    TO maester_reader, maester_user;
GRANT EXECUTE ON FUNCTION maester.circuit_status() TO maester_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON maester.provider, maester.model,
    maester.route, maester.route_target TO maester_admin;
GRANT EXECUTE ON FUNCTION maester.circuit_reset(text) TO maester_admin;

-- keep user data in pg_dump
SELECT pg_catalog.pg_extension_config_dump('maester.prompt', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_version', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_label', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_label_history', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_version_seq_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.prompt_label_history_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.provider', $$WHERE name NOT IN ('openai', 'anthropic')$$);
SELECT pg_catalog.pg_extension_config_dump('maester.model', '');
SELECT pg_catalog.pg_extension_config_dump('maester.route', $$WHERE name <> 'default'$$);
SELECT pg_catalog.pg_extension_config_dump('maester.route_target', $$WHERE route <> 'default'$$);
SELECT pg_catalog.pg_extension_config_dump('maester.price', $$WHERE source IS DISTINCT FROM 'openai.com/api/pricing' AND source IS DISTINCT FROM 'anthropic.com/pricing'$$);
SELECT pg_catalog.pg_extension_config_dump('maester.usage', '');
SELECT pg_catalog.pg_extension_config_dump('maester.budget', '');
SELECT pg_catalog.pg_extension_config_dump('maester.budget_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_suite', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_case', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_run', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_run_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('maester.eval_result', '');
SELECT pg_catalog.pg_extension_config_dump('maester.capture', '');
SELECT pg_catalog.pg_extension_config_dump('maester.span', '');
SELECT pg_catalog.pg_extension_config_dump('maester.job', '');
SELECT pg_catalog.pg_extension_config_dump('maester.job_id_seq', '');
