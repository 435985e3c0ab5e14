-- src/sql/functions/15_tenants.sql: Tenants bound to roles: cache invalidation.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE TRIGGER tenant_member_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.tenant_member
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER tenant_limit_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.tenant_limit
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
