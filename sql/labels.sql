-- Labels: movable pointers, latest maintained automatically, history of moves.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

SELECT version FROM maester.prompt_register('lab', 'one {x}');
SELECT version FROM maester.prompt_register('lab', 'two {x}');
SELECT version FROM maester.prompt_register('lab', 'three {x}');

-- latest follows registration; it is not a stored label
SELECT version, labels FROM maester.prompt_versions WHERE name = 'lab' ORDER BY seq;
SELECT count(*) FROM maester.prompt_label WHERE name = 'lab';
SELECT version FROM maester.prompt_render('lab', '{"x": 1}', 'latest');

-- set and move a label
SELECT name, label, version, moved_by = current_user AS by_me FROM maester.prompt_set_label('lab', 'production', 'v1');
SELECT version FROM maester.prompt_render('lab', '{"x": 1}', 'production');
SELECT name, label, version FROM maester.prompt_set_label('lab', 'production', 'v2');
SELECT version, content FROM maester.prompt_render('lab', '{"x": 1}', 'production');
-- setting it to where it already is records nothing
SELECT version FROM maester.prompt_set_label('lab', 'production', 'v2');
SELECT name, label, version FROM maester.prompt_set_label('lab', 'staging', 'v3');
SELECT version, labels FROM maester.prompt_versions WHERE name = 'lab' ORDER BY seq;

-- history: who, when, from, to
SELECT label, from_version, to_version, moved_by = current_user AS by_me, moved_at IS NOT NULL AS has_time
  FROM maester.prompt_label_history WHERE name = 'lab' ORDER BY id;

-- unset a label
SELECT maester.prompt_unset_label('lab', 'staging');
SELECT maester.prompt_unset_label('lab', 'staging');
SELECT label, from_version, to_version FROM maester.prompt_label_history
 WHERE name = 'lab' ORDER BY id DESC LIMIT 1;
SELECT pg_temp.err($$ SELECT maester.prompt_render('lab', '{"x": 1}', 'staging') $$);

-- latest cannot be set, moved or removed by hand
\set VERBOSITY default
SELECT maester.prompt_set_label('lab', 'latest', 'v1');
SELECT pg_temp.err($$ SELECT maester.prompt_unset_label('lab', 'latest') $$);
SELECT pg_temp.err($$ UPDATE maester.prompt_label SET label = 'latest' WHERE name = 'lab' AND label = 'production' $$);
SELECT pg_temp.err($$ INSERT INTO maester.prompt_label (name, label, version) VALUES ('lab', 'latest', 'v1') $$);
SELECT label, version FROM maester.prompt_label WHERE name = 'lab' ORDER BY label;

-- unknown prompt or version: 42704
SELECT pg_temp.err($$ SELECT maester.prompt_set_label('nope', 'production', 'v1') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_label('lab', 'production', 'v9') $$);
-- bad label names: 22023; nulls: 22004
SELECT pg_temp.err($$ SELECT maester.prompt_set_label('lab', 'pro duction', 'v1') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_label('lab', '', 'v1') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_label('lab', NULL, 'v1') $$);
-- a label may not share its name with a version, nor a version with a label
SELECT pg_temp.err($$ SELECT maester.prompt_set_label('lab', 'v2', 'v1') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_register('lab', 'four {x}', version => 'production') $$);
-- labels cannot be renamed in place
SELECT pg_temp.err($$ UPDATE maester.prompt_label SET label = 'prod' WHERE name = 'lab' AND label = 'production' $$);

-- the history is append-only and written only by label moves
SELECT pg_temp.err($$ INSERT INTO maester.prompt_label_history (name, label, to_version) VALUES ('lab', 'x', 'v1') $$);
SELECT pg_temp.err($$ UPDATE maester.prompt_label_history SET moved_by = 'someone' $$);
SELECT pg_temp.err($$ DELETE FROM maester.prompt_label_history $$);
SELECT pg_temp.err($$ TRUNCATE maester.prompt_label_history $$);

-- a direct INSERT of a label is checked and recorded like prompt_set_label
INSERT INTO maester.prompt_label (name, label, version) VALUES ('lab', 'canary', 'v3');
SELECT label, from_version, to_version FROM maester.prompt_label_history
 WHERE name = 'lab' ORDER BY id DESC LIMIT 1;
