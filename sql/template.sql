-- Template syntax: {name} variables, {{ and }} literal braces.
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN EXECUTE q; RETURN 'ok';
EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE || ': ' || SQLERRM; END $$;

-- valid templates: variables in order of first use, duplicates once
SELECT maester.template_variables('Summarize the following system event:\n\n{event_text}');
SELECT maester.template_variables('{a} and {b} and {a} again, {_x1}');
SELECT maester.template_variables('no variables at all');
SELECT maester.template_variables('');
SELECT maester.template_variables('literal {{braces}} and {{{name}}}');
SELECT maester.template_variables('{{}}');

-- a lone "{" or "}" is an error naming the character position
SELECT pg_temp.err($$ SELECT maester.template_variables('abc {') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('abc } def') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{a} {b') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{a{b}}') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('}}}') $$);
-- positions count characters, not bytes
SELECT pg_temp.err($$ SELECT maester.template_variables('héllo wörld }') $$);

-- empty "{}" is an error
SELECT pg_temp.err($$ SELECT maester.template_variables('x {} y') $$);

-- names that are not identifiers are errors
SELECT pg_temp.err($$ SELECT maester.template_variables('{0}') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{1abc}') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{a b}') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{a.b}') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{a!r}') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{a:>10}') $$);
SELECT pg_temp.err($$ SELECT maester.template_variables('{ä}') $$);

-- one error in full, with its hint
\set VERBOSITY default
SELECT maester.template_variables('Summarize {event text}');

-- NULL in, NULL out
SELECT maester.template_variables(NULL) IS NULL AS is_null;
