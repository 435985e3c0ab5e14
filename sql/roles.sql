-- Roles and privileges: nothing for PUBLIC; admins register, users render,
-- readers read the view.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;
GRANT EXECUTE ON FUNCTION pg_temp.err(text) TO PUBLIC;

SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'maester\_%' ORDER BY 1;

-- no function or table of the schema is open to PUBLIC
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'maester'::regnamespace
   AND has_function_privilege('public', p.oid, 'EXECUTE') ORDER BY 1;
SELECT c.relname FROM pg_class c
 WHERE c.relnamespace = 'maester'::regnamespace AND c.relkind IN ('r', 'v')
   AND has_table_privilege('public', c.oid, 'SELECT, INSERT, UPDATE, DELETE') ORDER BY 1;
SELECT has_schema_privilege('public', 'maester', 'USAGE') AS public_usage;
-- every function, table and view has a comment
SELECT p.proname FROM pg_proc p
 WHERE p.pronamespace = 'maester'::regnamespace AND obj_description(p.oid, 'pg_proc') IS NULL;
SELECT c.relname FROM pg_class c
 WHERE c.relnamespace = 'maester'::regnamespace AND c.relkind IN ('r', 'v')
   AND obj_description(c.oid, 'pg_class') IS NULL;

CREATE ROLE reg_admin LOGIN IN ROLE maester_admin;
CREATE ROLE reg_user LOGIN IN ROLE maester_user;
CREATE ROLE reg_reader LOGIN IN ROLE maester_reader;
CREATE ROLE reg_nobody LOGIN;

-- admin: registers and labels
SET ROLE reg_admin;
SELECT name, version, created_by FROM maester.prompt_register('roles_p', 'Hi {who}');
SELECT label, version, moved_by FROM maester.prompt_set_label('roles_p', 'production', 'v1');
SELECT content FROM maester.prompt_render('roles_p', '{"who": "admin"}');
RESET ROLE;

-- user: renders, but cannot register, label, or write the tables
SET ROLE reg_user;
SELECT content FROM maester.prompt_render('roles_p', '{"who": "user"}', 'production');
SELECT pg_temp.err($$ SELECT maester.prompt_register('roles_p', 'x') $$);
SELECT pg_temp.err($$ SELECT maester.prompt_set_label('roles_p', 'production', 'v1') $$);
SELECT pg_temp.err($$ INSERT INTO maester.prompt (name) VALUES ('sneaky') $$);
SELECT pg_temp.err($$ DELETE FROM maester.prompt_label $$);
RESET ROLE;

-- reader: reads the view, nothing else
SET ROLE reg_reader;
SELECT name, version, labels FROM maester.prompt_versions WHERE name = 'roles_p';
SELECT pg_temp.err($$ SELECT maester.prompt_render('roles_p', '{"who": "reader"}') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.prompt_version $$);
RESET ROLE;

-- anyone else: nothing at all
SET ROLE reg_nobody;
SELECT pg_temp.err($$ SELECT maester.prompt_render('roles_p', '{"who": "x"}') $$);
SELECT pg_temp.err($$ SELECT * FROM maester.prompt_versions $$);
RESET ROLE;

DROP ROLE reg_admin, reg_user, reg_reader, reg_nobody;
