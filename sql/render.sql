-- prompt_render: the articles' vectors, value formatting, errors, hashes.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-- the first article's system_summary v1 and v2
SELECT version FROM maester.prompt_register('system_summary',
    E'You are a production AI assistant.\nSummarize the following system event clearly:\n\n{event_text}',
    version => 'v1');
SELECT version FROM maester.prompt_register('system_summary',
    E'You are a production AI assistant focused on reliability.\nSummarize the following system event.\nBe concise, mention operational impact, and keep the tone factual.\n\n{event_text}',
    version => 'v2');

SELECT name, version, hash, system, template_hash IS NOT NULL AS has_template_hash
  FROM maester.prompt_render('system_summary',
        '{"event_text": "Admin revoked API key for user account 742."}', 'v1');
-- no version: latest (v2)
SELECT name, version, hash
  FROM maester.prompt_render('system_summary',
        '{"event_text": "System latency increased above 300ms for the inference service."}');
-- hash is the SHA-256 of the content, as PostgreSQL's sha256() computes it
SELECT hash = encode(sha256(convert_to(content, 'UTF8')), 'hex') AS hash_ok,
       template_hash = (SELECT template_hash FROM maester.prompt_version
                         WHERE name = 'system_summary' AND version = 'v2') AS template_hash_ok
  FROM maester.prompt_render('system_summary', '{"event_text": "x"}');
SELECT (maester.prompt_render('system_summary', '{"event_text": "x"}', 'v1')).content;

-- values: strings as they are, numbers and booleans as JSON text,
-- objects and arrays as compact JSON
SELECT version FROM maester.prompt_register('fmt', '[{v}]');
SELECT v, (maester.prompt_render('fmt', jsonb_build_object('v', v))).content
  FROM (VALUES ('"plain"'::jsonb), ('"quote \" and \\ back"'), ('"ünïcødé ✓"'),
               ('42'), ('-1.50'), ('1e3'), ('0.000001'), ('true'), ('false'),
               ('{"b": 2, "a": [1, "x", null, {"c": true}]}'), ('[]'), ('{}'),
               ('["a\nb"]'), ('""')) AS t(v);
-- a string that looks like a template is not re-expanded
SELECT content FROM maester.prompt_render('fmt', '{"v": "{v} {{"}');
-- unused variables are allowed
SELECT content FROM maester.prompt_render('fmt', '{"v": 1, "unused": 2}');
-- literal braces
SELECT version FROM maester.prompt_register('braces', '{{"json": {value}}}');
SELECT content FROM maester.prompt_render('braces', '{"value": 7}');
-- a template with no variables needs none
SELECT version FROM maester.prompt_register('static', 'Just text.');
SELECT content FROM maester.prompt_render('static');
SELECT content FROM maester.prompt_render('static', NULL);

-- missing variables: every one named, absent or JSON null alike (22023)
SELECT version FROM maester.prompt_register('multi', '{a} {b} {c} {a}');
\set VERBOSITY default
SELECT maester.prompt_render('multi', '{"b": 1}');
SELECT pg_temp.err($$ SELECT maester.prompt_render('multi', '{"a": 1, "b": null, "c": 3}') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_render('multi', NULL) $$);
-- variables must be a JSON object
SELECT pg_temp.err($$ SELECT maester.prompt_render('multi', '[1, 2]') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_render('multi', '"a"') $$);

-- unknown prompt, version or label: 42704 naming what was asked for
SELECT pg_temp.err($$ SELECT maester.prompt_render('no_such_prompt') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_render('system_summary', '{"event_text": "x"}', 'v3') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_render('system_summary', '{"event_text": "x"}', 'production') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_render(repeat('x', 300)) $$);
SELECT pg_temp.err($$ SELECT maester.prompt_render(NULL) $$);

-- system templates: rendered with the same variables; hash covers
-- system, a zero byte, then content; missing variables of both are listed
SELECT version FROM maester.prompt_register('with_sys', 'Summarize: {event}',
    system_template => 'You are {persona}.');
SELECT content, system,
       hash = encode(sha256(convert_to(system, 'UTF8') || '\x00'::bytea
                            || convert_to(content, 'UTF8')), 'hex') AS hash_ok,
       hash <> encode(sha256(convert_to(content, 'UTF8')), 'hex') AS differs_from_content_hash
  FROM maester.prompt_render('with_sys', '{"event": "disk full", "persona": "an SRE"}');
SELECT pg_temp.err($$ SELECT maester.prompt_render('with_sys', '{}') $$);
SELECT variables FROM maester.prompt_version WHERE name = 'with_sys';

-- the cache sees a new version registered in the same transaction,
-- and forgets it again on rollback
SELECT content FROM maester.prompt_render('static');
BEGIN;
SELECT version FROM maester.prompt_register('static', 'Changed text.');
SELECT version, content FROM maester.prompt_render('static');
ROLLBACK;
SELECT version, content FROM maester.prompt_render('static');
-- and a label move likewise
SELECT version FROM maester.prompt_register('static', 'Second text.');
SELECT version FROM maester.prompt_set_label('static', 'production', 'v1');
SELECT version, content FROM maester.prompt_render('static', NULL, 'production');
SELECT version FROM maester.prompt_set_label('static', 'production', 'v2');
SELECT version, content FROM maester.prompt_render('static', NULL, 'production');

-- many rows, one statement
SELECT count(DISTINCT (maester.prompt_render('system_summary', jsonb_build_object('event_text', i))).hash)
  FROM generate_series(1, 1000) i;
-- an empty version is not latest
SELECT pg_temp.err($$ SELECT maester.prompt_render('static', NULL, '') $$);
-- a query that would run in parallel still renders (the function is not
-- parallel safe: its cache reads the registry with the latest snapshot)
SET force_parallel_mode = on;
SELECT version FROM maester.prompt_render('static');
RESET force_parallel_mode;
-- composite result: fields and to_jsonb work
SELECT to_jsonb(r) - 'content' - 'hash' - 'template_hash' AS r
  FROM maester.prompt_render('fmt', '{"v": 1}') r;
