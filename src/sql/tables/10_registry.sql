-- src/sql/tables/10_registry.sql: The prompt registry: prompts, immutable versions, labels and their history; the rendered prompt type.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

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
    template        text,
    system_template text,
    config          jsonb NOT NULL DEFAULT '{}',
    checks          jsonb,
    variables       text[] NOT NULL DEFAULT '{}',
    template_hash   text NOT NULL DEFAULT '',
    description     text,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by      name NOT NULL DEFAULT CURRENT_USER,
    messages        jsonb,
    PRIMARY KEY (name, version),
    CONSTRAINT prompt_version_config_is_object
        CHECK (pg_catalog.jsonb_typeof(config) OPERATOR(pg_catalog.=) 'object'),
    CONSTRAINT prompt_version_checks_is_object_or_array
        CHECK (checks IS NULL OR pg_catalog.jsonb_typeof(checks) OPERATOR(pg_catalog.=) ANY (ARRAY['object', 'array'])),
    CONSTRAINT prompt_version_template_or_messages
        CHECK ((template IS NULL) OPERATOR(pg_catalog.<>) (messages IS NULL)
               AND (messages IS NULL OR system_template IS NULL))
);

COMMENT ON TABLE maester.prompt_version IS
    'Immutable prompt versions: UPDATE, DELETE and TRUNCATE are refused. Register with maester.prompt_register().';
COMMENT ON COLUMN maester.prompt_version.version IS 'Version name: given, or the next vN.';
COMMENT ON COLUMN maester.prompt_version.seq IS 'Registration order across the registry; the latest version of a prompt has the highest seq (so v10 is newer than v9).';
COMMENT ON COLUMN maester.prompt_version.template IS 'User prompt template: {name} is replaced, {{ and }} are literal braces. NULL for a chat prompt (messages).';
COMMENT ON COLUMN maester.prompt_version.messages IS 'A chat prompt: [{role, content}] with roles system, user and assistant, each content a template of the same syntax; instead of template and system_template.';
COMMENT ON COLUMN maester.prompt_version.system_template IS 'Optional system prompt template, same syntax.';
COMMENT ON COLUMN maester.prompt_version.config IS 'Model settings that travel with the version (model, max_tokens, temperature, ...).';
COMMENT ON COLUMN maester.prompt_version.checks IS 'Evaluation checks run on every output of this version.';
COMMENT ON COLUMN maester.prompt_version.variables IS 'Variables the templates use, in order of first use (computed at registration).';
COMMENT ON COLUMN maester.prompt_version.template_hash IS 'SHA-256 hex of the version''s content: the jsonb text of {template, system_template, config, checks}, and messages for a chat prompt (computed at registration).';

CREATE TABLE maester.prompt_label (
    name     text NOT NULL REFERENCES maester.prompt (name),
    label    text NOT NULL,
    version  text NOT NULL,
    moved_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    moved_by name NOT NULL DEFAULT CURRENT_USER,
    weights  jsonb,
    PRIMARY KEY (name, label),
    FOREIGN KEY (name, version) REFERENCES maester.prompt_version (name, version)
);

COMMENT ON TABLE maester.prompt_label IS
    'Movable pointers to versions (production, staging, ...). latest is not stored here: it is always the version with the highest seq, and cannot be set by hand.';
COMMENT ON COLUMN maester.prompt_label.moved_at IS 'When the label last moved.';
COMMENT ON COLUMN maester.prompt_label.moved_by IS 'Role that last moved the label.';
COMMENT ON COLUMN maester.prompt_label.version IS 'The version the label points at; during a rollout, its main arm (the heaviest weight, on a tie the earliest registered).';
COMMENT ON COLUMN maester.prompt_label.weights IS 'A rollout: {"version": weight, ...} with positive integer weights over two or more versions; renders by the label pick one by weight (sticky by a key, else at random). NULL: a plain label, always version. Set by maester.prompt_set_rollout(), cleared by maester.prompt_set_label().';

CREATE TABLE maester.prompt_label_history (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL,
    label        text NOT NULL,
    from_version text,
    to_version   text,
    moved_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    moved_by     name NOT NULL DEFAULT CURRENT_USER,
    weights      jsonb
);

CREATE INDEX ON maester.prompt_label_history (name, label, id);

COMMENT ON TABLE maester.prompt_label_history IS
    'Every move of a label: who, when, from which version to which (from_version NULL: label created; to_version NULL: label removed), and every change of a rollout''s weights. Append-only, written by the registry.';
COMMENT ON COLUMN maester.prompt_label_history.weights IS 'The label''s rollout weights after the change ({"version": weight, ...}); NULL: a plain label (or removed). to_version is then the rollout''s main arm.';

CREATE TYPE maester.rendered_prompt AS (
    name          text,
    version       text,
    content       text,
    system        text,
    hash          text,
    template_hash text,
    messages      jsonb
);

COMMENT ON TYPE maester.rendered_prompt IS
    'A rendered prompt: its identity (name, version, template_hash), the rendered content and system prompt, and hash, the SHA-256 hex of what is sent.';
COMMENT ON COLUMN maester.rendered_prompt.hash IS
    'SHA-256 hex of the rendered content; with a system prompt, of system, one zero byte, then content.';
COMMENT ON COLUMN maester.rendered_prompt.messages IS
    'A chat prompt''s rendered conversation ([{role, content}]); content and system are then NULL, and hash is over the conversation''s canonical form.';
COMMENT ON COLUMN maester.rendered_prompt.template_hash IS
    'The version''s content identity (maester.prompt_version.template_hash).';
