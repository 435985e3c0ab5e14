-- prompt_register: versions, idempotence, immutability, validation.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-- explicit versions
SELECT name, version, variables, system_template, config, checks
  FROM maester.prompt_register('reg_a', 'Hello {who}', version => 'v1');
-- the same content under an existing version: a no-op returning that row
SELECT name, version, seq = (SELECT seq FROM maester.prompt_version WHERE name = 'reg_a' AND version = 'v1') AS same_row
  FROM maester.prompt_register('reg_a', 'Hello {who}', version => 'v1');
-- different content under an existing version: 23505 with a hint
\set VERBOSITY default
SELECT maester.prompt_register('reg_a', 'Hi {who}', version => 'v1');
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_a', 'Hello {who}', version => 'v1', config => '{"model": "x"}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_a', 'Hello {who}', version => 'v1', system_template => 'sys') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_a', 'Hello {who}', version => 'v1', checks => '["non_empty"]') $$);

-- version NULL: the next vN after the highest vN
SELECT version FROM maester.prompt_register('reg_a', 'Hello, {who}!');
-- unless the content equals the latest version's: then that one, nothing new
SELECT version FROM maester.prompt_register('reg_a', 'Hello, {who}!');
SELECT count(*) FROM maester.prompt_version WHERE name = 'reg_a';
-- a description is not content
SELECT version FROM maester.prompt_register('reg_a', 'Hello, {who}!', description => 'same text');
-- jsonb config equality is by value, not by text
SELECT version FROM maester.prompt_register('reg_b', 'x', config => '{"a": 1, "b": 2}');
SELECT version FROM maester.prompt_register('reg_b', 'x', config => '{"b": 2,   "a": 1}');

-- v10 is newer than v9: latest is registration order, never text order
DO $$ BEGIN
  FOR i IN 1..10 LOOP PERFORM maester.prompt_register('reg_many', 'text ' || i); END LOOP;
END $$;
SELECT version, labels FROM maester.prompt_versions WHERE name = 'reg_many' ORDER BY seq DESC LIMIT 2;
SELECT version FROM maester.prompt_register('reg_many', 'text 11');
-- explicit names do not follow vN: registration order decides latest
SELECT version FROM maester.prompt_register('reg_order', 'one', version => 'zeta');
SELECT version FROM maester.prompt_register('reg_order', 'two', version => 'alpha');
SELECT version FROM maester.prompt_render('reg_order');
-- after explicit non-vN names, auto-numbering starts at v1; after v7, v8
SELECT version FROM maester.prompt_register('reg_order', 'three');
SELECT version FROM maester.prompt_register('reg_order', 'four', version => 'v7');
SELECT version FROM maester.prompt_register('reg_order', 'five');

-- the template is validated at registration, naming the position
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_bad', 'Summarize {event') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_bad', 'a } b') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_bad', 'a {} b') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_bad', 'a {not valid} b') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_bad', 'ok {x}', system_template => 'bad {') $$);
-- nothing was created by the failed registrations
SELECT count(*) FROM maester.prompt WHERE name = 'reg_bad';

-- names: non-empty, at most 200 characters, no whitespace or control characters
SELECT pg_temp.err($$ SELECT maester.prompt_register('', 'x') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register(repeat('n', 201), 'x') $$);
SELECT length(name) FROM maester.prompt_register(repeat('n', 200), 'x');
SELECT pg_temp.err($$ SELECT maester.prompt_register('has space', 'x') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register(E'tab\there', 'x') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register(E'nl\n', 'x') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register(E'nbsp\u00a0x', 'x') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', version => '') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', version => 'v 1') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', version => repeat('v', 201)) $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', version => 'latest') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register(NULL, 'x') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', NULL) $$);
-- unicode letters are fine in names
SELECT name, version FROM maester.prompt_register('résumé_prompt', 'x', version => 'ü1');

-- config must be an object, checks an object or array
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', config => '[1]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', checks => '"non_empty"') $$);
SELECT config FROM maester.prompt_register('reg_c', 'x', config => NULL);
-- checks must be checks evaluate() accepts (validated, no grader is run)
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', checks => '{"no_such_check": 1}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', checks => '{"regex": "(broken"}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', checks => '{"llm_rubric": 5}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('reg_c', 'x', checks => '{"json_schema": {"type": "thing"}}') $$);
SELECT checks FROM maester.prompt_register('reg_checks', 'x',
    checks => '{"llm_rubric": "Polite.", "cost_max": 0.01, "regex": "^[A-Z]"}');

-- versions are immutable
SELECT pg_temp.err($$ UPDATE maester.prompt_version SET template = 'changed' WHERE name = 'reg_a' $$);
SELECT pg_temp.err($$ DELETE FROM maester.prompt_version WHERE name = 'reg_a' $$);
SELECT pg_temp.err($$ TRUNCATE maester.prompt_version CASCADE $$);
UPDATE maester.prompt_version SET template = 'changed' WHERE name = 'reg_a' AND version = 'v1';

-- variables and template_hash are computed, never taken from the caller
INSERT INTO maester.prompt (name) VALUES ('reg_direct');
INSERT INTO maester.prompt_version (name, version, template, system_template, variables, template_hash)
VALUES ('reg_direct', 'v1', 'Hi {who}', 'You are {role}; {who}', '{forged}', 'forged');
SELECT variables, template_hash = encode(sha256(convert_to(jsonb_build_object(
         'template', template, 'system_template', system_template,
         'config', config, 'checks', checks)::text, 'UTF8')), 'hex') AS hash_is_content_hash
  FROM maester.prompt_version WHERE name = 'reg_direct';
-- a direct insert is validated like a registration
SELECT pg_temp.err($$ INSERT INTO maester.prompt_version (name, version, template) VALUES ('reg_direct', 'v 2', 'x') $$);
SELECT pg_temp.err($$ INSERT INTO maester.prompt_version (name, version, template) VALUES ('reg_direct', 'v2', '{') $$);

-- the content hash differs when any part of the content differs
SELECT count(DISTINCT template_hash) FROM maester.prompt_version WHERE name = 'reg_a';
