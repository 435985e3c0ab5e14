-- src/sql/tables/05_tenants.sql: Tenants bound to roles.
--
-- Written once: this file runs only when the extension is created.  A
-- change to it must also go into the update fragment of the next version
-- (src/sql/updates/), so that an updated database ends up like a new one;
-- see src/sql/README.

CREATE TABLE maester.tenant_member (
    role    regrole NOT NULL,
    tenant  text NOT NULL
        CHECK (pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.>=) 1
               AND pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.<) 64),
    PRIMARY KEY (role, tenant)
);

COMMENT ON TABLE maester.tenant_member IS
    'Which tenants each role may act as (maester.tenant): a role acts as the tenants mapped to it or to a role it is a member of; admins act as any tenant. Maintained by admins.';
COMMENT ON COLUMN maester.tenant_member.role IS 'The role (its members too, as for SET ROLE).';
COMMENT ON COLUMN maester.tenant_member.tenant IS 'A tenant it may act as; with only one, maester.tenant = ''default'' means this one.';

ALTER TABLE maester.tenant_member ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_member_admin ON maester.tenant_member FOR ALL TO maester_admin USING (true);
CREATE POLICY tenant_member_own ON maester.tenant_member FOR SELECT TO maester_user, maester_reader
    USING (pg_catalog.pg_has_role(role, 'MEMBER'));

-- The tenant in force, checked against tenant_member.  Created here, not
-- with the re-created functions, because the tenant policies of the
-- written-once files that follow compare with it.
CREATE FUNCTION maester.current_tenant() RETURNS text
AS 'MODULE_PATHNAME', 'current_tenant'
LANGUAGE C STABLE PARALLEL SAFE;

COMMENT ON FUNCTION maester.current_tenant() IS
    'The tenant this session acts as: maester.tenant, checked against maester.tenant_member (''default'' is the role''s only tenant). Raises 42501 when the role may not act as it. Every tenant policy compares with it.';
