-- src/sql/functions/20_gateway.sql: The gateway configuration's cache invalidation.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE TRIGGER provider_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.provider
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER model_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.model
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER route_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.route
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
CREATE TRIGGER route_target_invalidate
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON maester.route_target
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();
