-- src/sql/tables/00_roles.sql: The roles and the schema's privileges.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

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
