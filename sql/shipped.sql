-- Shipped rows: maester marks what it ships, an admin's edit clears the
-- mark, a deletion is remembered, so that pg_dump keeps both (the round
-- trip itself is test/t/002_dump_restore.pl)
-- in a database of its own: the other suites edit the shipped rows
CREATE DATABASE shipped_regress;
\c shipped_regress
CREATE EXTENSION maester;
CREATE ROLE ship_admin IN ROLE maester_admin;
CREATE ROLE ship_user IN ROLE maester_user;
SELECT name, shipped FROM maester.provider ORDER BY name;
SELECT route, position, shipped FROM maester.route_target ORDER BY 1, 2;
SELECT count(*) FILTER (WHERE shipped) AS shipped, count(*) AS prices FROM maester.price;
SELECT c::regclass, f FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(c, f)
 WHERE e.extname = 'maester' AND c::regclass::text IN
       ('maester.provider', 'maester.route', 'maester.route_target', 'maester.price', 'maester.shipped_removed')
 ORDER BY 1;

BEGIN;
SET ROLE ship_admin;
-- an update that changes nothing keeps the mark; one that changes a value clears it
UPDATE maester.provider SET enabled = true WHERE name = 'openai';
SELECT shipped FROM maester.provider WHERE name = 'openai';
UPDATE maester.provider SET enabled = false WHERE name = 'openai';
SELECT shipped FROM maester.provider WHERE name = 'openai';
-- once cleared, the mark cannot be set again (the row would not be dumped)
UPDATE maester.provider SET enabled = true, shipped = true WHERE name = 'openai';
SELECT enabled, shipped FROM maester.provider WHERE name = 'openai';
-- nor can an admin insert a row marked shipped
INSERT INTO maester.provider (name, kind, base_url, shipped) VALUES ('mine', 'openai_compatible', 'https://x.example/v1', true);
SELECT shipped FROM maester.provider WHERE name = 'mine';
INSERT INTO maester.price (model, input_cost_per_million, output_cost_per_million, source, shipped)
VALUES ('gpt-4.1', 1, 2, 'openai.com/api/pricing', true);
SELECT shipped FROM maester.price WHERE model = 'gpt-4.1' ORDER BY valid_from;
-- renaming a provider edits the route targets that follow it (ON UPDATE CASCADE)
UPDATE maester.provider SET name = 'claude' WHERE name = 'anthropic';
SELECT route, position, provider, shipped FROM maester.route_target ORDER BY 1, 2;
-- every deleted or renamed key is remembered (a route's targets go with it)
DELETE FROM maester.route WHERE name = 'default';
DELETE FROM maester.provider WHERE name IN ('claude', 'mine');
SELECT table_name, key FROM maester.shipped_removed ORDER BY 1, 2;
ROLLBACK;

BEGIN;
SET ROLE ship_admin;
-- inserting a row under a shipped row's key says how to change it instead
INSERT INTO maester.route (name) VALUES ('default');
ROLLBACK;

-- restoring (session_replication_role = replica, as a superuser): a
-- dumped row replaces the shipped one, a dumped deletion deletes it
BEGIN;
SET LOCAL session_replication_role = replica;
INSERT INTO maester.route_target (route, position, provider, model) VALUES ('default', 1, 'openai', 'gpt-4.1');
INSERT INTO maester.shipped_removed (table_name, key) VALUES ('route_target', '{default,2}');
SELECT route, position, model, shipped FROM maester.route_target ORDER BY 1, 2;
ROLLBACK;
SELECT route, position, model, shipped FROM maester.route_target ORDER BY 1, 2;

-- only admins see or write the record of deletions
SET ROLE ship_user;
SELECT count(*) FROM maester.shipped_removed;
RESET ROLE;
DROP ROLE ship_admin, ship_user;
\c contrib_regression
DROP DATABASE shipped_regress;
