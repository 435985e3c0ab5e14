-- src/sql/functions/10_registry.sql: The registry: name and template checks, triggers, registration, labels,
-- rendering, and the prompt_versions view.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

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
DECLARE
    arm    record;
    weight numeric;
    total  numeric := 0;
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

    -- moving a rollout's label to a version (UPDATE ... SET version) ends
    -- the rollout, as prompt_set_label does
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' AND OLD.weights IS NOT NULL
       AND NEW.version IS DISTINCT FROM OLD.version
       AND NEW.weights IS NOT DISTINCT FROM OLD.weights THEN
        NEW.weights := NULL;
    END IF;

    -- a rollout: {"version": weight, ...}; its main arm is the version
    -- column (the heaviest weight, on a tie the earliest registered), and
    -- a rollout of one version is a plain label
    IF NEW.weights IS NOT NULL THEN
        IF pg_catalog.jsonb_typeof(NEW.weights) OPERATOR(pg_catalog.<>) 'object' THEN
            RAISE EXCEPTION 'rollout weights must be a JSON object, not %', pg_catalog.jsonb_typeof(NEW.weights)
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Map each version to a positive integer weight, e.g. {"v2": 90, "v3": 10}.';
        END IF;
        IF NEW.weights OPERATOR(pg_catalog.=) '{}'::jsonb THEN
            RAISE EXCEPTION 'a rollout needs at least one version'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Map each version to a positive integer weight, e.g. {"v2": 90, "v3": 10}.';
        END IF;
        FOR arm IN SELECT w.key, w.value FROM pg_catalog.jsonb_each(NEW.weights) w LOOP
            IF pg_catalog.jsonb_typeof(arm.value) OPERATOR(pg_catalog.<>) 'number' THEN
                weight := NULL;
            ELSE
                weight := arm.value::numeric;
            END IF;
            IF weight IS NULL OR weight OPERATOR(pg_catalog.<>) pg_catalog.trunc(weight)
               OR weight OPERATOR(pg_catalog.<) 1 THEN
                RAISE EXCEPTION 'weight of version "%" must be a positive integer, not %', arm.key, arm.value
                    USING ERRCODE = 'invalid_parameter_value',
                          HINT = 'Weights are relative: {"v2": 90, "v3": 10} sends 90% of renders to v2.';
            END IF;
            IF NOT EXISTS (SELECT FROM maester.prompt_version v
                           WHERE v.name OPERATOR(pg_catalog.=) NEW.name
                             AND v.version OPERATOR(pg_catalog.=) arm.key) THEN
                RAISE EXCEPTION 'prompt "%" has no version "%"', NEW.name, arm.key
                    USING ERRCODE = 'undefined_object',
                          DETAIL = 'A rollout''s keys are versions of the prompt, not labels.',
                          HINT = 'See maester.prompt_versions for its versions.';
            END IF;
            total := total OPERATOR(pg_catalog.+) weight;
        END LOOP;
        IF total OPERATOR(pg_catalog.>) 1000000 THEN
            RAISE EXCEPTION 'rollout weights add up to %, more than 1000000', total
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Weights are relative: use smaller numbers in the same proportions.';
        END IF;
        SELECT pg_catalog.jsonb_object_agg(w.key, w.value::numeric::bigint),
               (pg_catalog.array_agg(w.key ORDER BY w.value::numeric DESC, v.seq))[1]
          INTO NEW.weights, NEW.version
          FROM pg_catalog.jsonb_each(NEW.weights) w
          JOIN maester.prompt_version v ON v.name OPERATOR(pg_catalog.=) NEW.name
                                       AND v.version OPERATOR(pg_catalog.=) w.key;
        IF (SELECT pg_catalog.count(*) FROM pg_catalog.jsonb_object_keys(NEW.weights))
           OPERATOR(pg_catalog.=) 1 THEN
            NEW.weights := NULL;
        END IF;
    END IF;

    NEW.moved_at := pg_catalog.now();
    NEW.moved_by := CURRENT_USER;
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION maester.prompt_label_guard() IS
    'Trigger: validates label names and rollout weights (versions of the prompt, positive integers adding up to at most 1,000,000), sets a rollout''s main arm as its version, refuses latest, and stamps who moved a label and when.';

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
        INSERT INTO maester.prompt_label_history (name, label, from_version, to_version, weights)
        VALUES (NEW.name, NEW.label, NULL, NEW.version, NEW.weights);
    ELSIF OLD.version OPERATOR(pg_catalog.<>) NEW.version
          OR OLD.weights IS DISTINCT FROM NEW.weights THEN
        INSERT INTO maester.prompt_label_history (name, label, from_version, to_version, weights)
        VALUES (NEW.name, NEW.label, OLD.version, NEW.version, NEW.weights);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION maester.prompt_label_record() IS
    'Trigger: records every label move and every change of a rollout''s weights in maester.prompt_label_history.';

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
              DETAIL = pg_catalog.format('%s is not allowed.', TG_OP),
              HINT = 'Restoring a dump? Restore as a superuser with session_replication_role = replica (PGOPTIONS=''-c session_replication_role=replica'' pg_restore ...), so that the registry''s triggers do not fire on restored rows.';
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

CREATE FUNCTION maester.prompt_register(
    name            text,
    template        text DEFAULT NULL,
    version         text DEFAULT NULL,
    system_template text DEFAULT NULL,
    config          jsonb DEFAULT '{}',
    checks          jsonb DEFAULT NULL,
    description     text DEFAULT NULL,
    messages        jsonb DEFAULT NULL)
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
    p_msgs    jsonb := prompt_register.messages;
    cur       maester.prompt_version;
    next_n    numeric;
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION 'prompt name must not be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF p_tmpl IS NULL AND p_msgs IS NULL THEN
        RAISE EXCEPTION 'template must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Give a template, or messages for a chat prompt.';
    END IF;
    IF p_msgs IS NOT NULL AND (p_tmpl IS NOT NULL OR p_sys IS NOT NULL) THEN
        RAISE EXCEPTION 'give either template (and system_template) or messages'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'A chat prompt''s system prompt is its first message: {"role": "system", "content": "..."}.';
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
        IF cur.template IS NOT DISTINCT FROM p_tmpl
           AND cur.messages IS NOT DISTINCT FROM p_msgs
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
        (name, version, template, system_template, config, checks, description, messages)
    VALUES (p_name, p_version, p_tmpl, p_sys, p_config, p_checks, prompt_register.description, p_msgs)
    RETURNING * INTO cur;
    RETURN cur;
END
$$;

COMMENT ON FUNCTION maester.prompt_register(text, text, text, text, jsonb, jsonb, text, jsonb) IS
    'Registers a prompt version and returns it: a template (and system_template), or messages, a chat prompt ([{role, content}] of role templates). version NULL: the next vN, unless the content equals the latest version''s (then that one is returned). Same content under an existing version: returns it; different content: 23505.';

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
    ON CONFLICT (name, label) DO UPDATE SET version = EXCLUDED.version, weights = NULL
        WHERE l.version OPERATOR(pg_catalog.<>) EXCLUDED.version OR l.weights IS NOT NULL;

    SELECT * INTO result FROM maester.prompt_label l
    WHERE l.name OPERATOR(pg_catalog.=) p_name AND l.label OPERATOR(pg_catalog.=) p_label;
    RETURN result;
END
$$;

COMMENT ON FUNCTION maester.prompt_set_label(text, text, text) IS
    'Points a label (e.g. production) of a prompt at one of its versions, ending its rollout if it had one; the move is recorded in maester.prompt_label_history. latest cannot be set by hand.';

CREATE FUNCTION maester.prompt_set_rollout(name text, label text, versions jsonb)
RETURNS maester.prompt_label
LANGUAGE plpgsql
VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    p_name    text := prompt_set_rollout.name;
    p_label   text := prompt_set_rollout.label;
    p_weights jsonb := prompt_set_rollout.versions;
    result    maester.prompt_label;
BEGIN
    IF p_name IS NULL OR p_label IS NULL OR p_weights IS NULL THEN
        RAISE EXCEPTION 'name, label and versions must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM maester.check_name('label', p_label);
    IF p_label OPERATOR(pg_catalog.=) 'latest' THEN
        RAISE EXCEPTION 'label "latest" is maintained automatically'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = 'It always points at the most recently registered version.',
                  HINT = 'Roll out under another label such as production.';
    END IF;
    IF NOT EXISTS (SELECT FROM maester.prompt p WHERE p.name OPERATOR(pg_catalog.=) p_name) THEN
        RAISE EXCEPTION 'prompt "%" does not exist', p_name
            USING ERRCODE = 'undefined_object';
    END IF;

    -- the label trigger checks the weights, sets the main arm as version
    -- and turns a rollout of one version into a plain label; EXCLUDED is
    -- the row as it made it
    INSERT INTO maester.prompt_label AS l (name, label, version, weights)
    VALUES (p_name, p_label, NULL, p_weights)
    ON CONFLICT (name, label) DO UPDATE SET version = EXCLUDED.version, weights = EXCLUDED.weights
        WHERE l.version OPERATOR(pg_catalog.<>) EXCLUDED.version
           OR l.weights IS DISTINCT FROM EXCLUDED.weights;

    SELECT * INTO result FROM maester.prompt_label l
    WHERE l.name OPERATOR(pg_catalog.=) p_name AND l.label OPERATOR(pg_catalog.=) p_label;
    RETURN result;
END
$$;

COMMENT ON FUNCTION maester.prompt_set_rollout(text, text, jsonb) IS
    'Splits a label''s renders over versions by weight: versions is {"v2": 90, "v3": 10} (versions of the prompt, positive integer weights adding up to at most 1,000,000). prompt_render and llm_generate by the label pick a version by weight, the same sticky key always the same one. A rollout of one version makes the label plain; prompt_set_label ends a rollout. Recorded in maester.prompt_label_history. Bad weights: 22023; unknown prompt or version: 42704.';

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

CREATE FUNCTION maester.prompt_render(
    name       text,
    variables  jsonb DEFAULT '{}',
    version    text DEFAULT NULL,
    sticky_key text DEFAULT NULL)
RETURNS maester.rendered_prompt
AS 'MODULE_PATHNAME', 'prompt_render'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.prompt_render(text, jsonb, text, text) IS
    'Renders a prompt version (version is a version or a label; NULL means latest) with a JSON object of variables; returns content, system prompt and SHA-256 hash. A label in a rollout picks one of its versions by weight: the same sticky_key (a non-empty text of at most 256 bytes) always the same version, without one at random (hence VOLATILE). Missing variables raise 22023; unknown prompts, versions or labels 42704.';

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
                 AND (l.version OPERATOR(pg_catalog.=) v.version
                      OR l.weights OPERATOR(pg_catalog.?) v.version)
               ORDER BY l.label)) AS labels,
       v.template_hash,
       v.variables,
       v.description
  FROM maester.prompt_version v;

COMMENT ON VIEW maester.prompt_versions IS
    'Every prompt version with its labels, for people and BI tools.';
COMMENT ON COLUMN maester.prompt_versions.labels IS 'Labels that point at this version: latest first for the newest version, then the set labels in order (a label in a rollout shows on each of its versions).';
