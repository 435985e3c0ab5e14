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

CREATE FUNCTION maester.model_identity(name text)
RETURNS text
AS 'MODULE_PATHNAME', 'model_identity'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.model_identity(text) IS
    'The name prices and budgets know a model by: the maester.model row''s name for its name, an alias or its model id; otherwise the name without a snapshot date (gpt-4.1-2025-04-14 is gpt-4.1).';

CREATE FUNCTION maester.model_name_check()
RETURNS trigger
AS 'MODULE_PATHNAME', 'model_name_check'
LANGUAGE C;

COMMENT ON FUNCTION maester.model_name_check() IS
    'Trigger on budget and price: a WARNING when no provider, model or route serves the row''s model, so that no call would match it.';
