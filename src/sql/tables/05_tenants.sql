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
               AND pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.<) 64)
        CONSTRAINT tenant_member_tenant_printable
            CHECK (tenant OPERATOR(pg_catalog.!~) '[\x01-\x1f\x7f\u0080-\u009f]'),
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

CREATE TABLE maester.tenant_limit (
    tenant              text PRIMARY KEY
        CHECK (pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.>=) 1
               AND pg_catalog.octet_length(tenant) OPERATOR(pg_catalog.<) 64)
        CONSTRAINT tenant_limit_tenant_printable
            CHECK (tenant OPERATOR(pg_catalog.!~) '[\x01-\x1f\x7f\u0080-\u009f]'),
    requests_per_minute integer CHECK (requests_per_minute OPERATOR(pg_catalog.>) 0),
    tokens_per_minute   integer CHECK (tokens_per_minute OPERATOR(pg_catalog.>) 0)
);

COMMENT ON TABLE maester.tenant_limit IS
    'Per-tenant rate limits, paced like a provider''s (calls wait their turn, never beyond their timeout): one tenant''s calls cannot take more of the providers'' capacity than this, whatever its max_tokens. Admins write; users and readers see their own tenant''s row.';
COMMENT ON COLUMN maester.tenant_limit.tenant IS 'The tenant (maester.tenant).';
COMMENT ON COLUMN maester.tenant_limit.requests_per_minute IS 'Attempts per minute across all providers; NULL: no limit.';
COMMENT ON COLUMN maester.tenant_limit.tokens_per_minute IS 'Input estimate plus max_tokens per minute across all providers; NULL: no limit.';

ALTER TABLE maester.tenant_limit ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_limit_admin ON maester.tenant_limit FOR ALL TO maester_admin USING (true);
CREATE POLICY tenant_limit_own ON maester.tenant_limit FOR SELECT TO maester_user, maester_reader
    USING (tenant OPERATOR(pg_catalog.=) (SELECT maester.current_tenant()));
