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

-- Shipped rows.  maester ships providers, the default route and its
-- targets, and list prices, marked shipped = true.  pg_dump keeps only the
-- rows where shipped is false (99_dump.sql), so an edit clears the mark,
-- and a restore, which runs CREATE EXTENSION (shipping the rows again)
-- before it copies the dumped ones, merges: a dumped row replaces the
-- shipped row with the same key, and a dumped maester.shipped_removed row
-- (every key an admin deleted or renamed) deletes the shipped row again.  Both fire in session_replication_role =
-- replica (ENABLE ALWAYS), the mode restores run in.  An update fragment
-- that ships new rows disables shipped_row_guard around its INSERT.
CREATE FUNCTION maester.shipped_row_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    restoring boolean := pg_catalog.current_setting('session_replication_role') OPERATOR(pg_catalog.=) 'replica';
    keycond   text;
    clash     boolean;
    oldkey    text[];
    newkey    text[];
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
        IF restoring THEN
            RETURN NEW;
        END IF;
        -- the mark only ever goes from true to false: any change clears it
        NEW.shipped := OLD.shipped AND NEW.shipped
            AND (pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) 'shipped')
                OPERATOR(pg_catalog.=) (pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.-) 'shipped');
        -- a new key is a deletion of the old one (a restore must not bring
        -- back a shipped row under the old key)
        SELECT pg_catalog.array_agg(pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.->>) k ORDER BY i),
               pg_catalog.array_agg(pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->>) k ORDER BY i)
          INTO oldkey, newkey
          FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS u(k, i);
        IF oldkey OPERATOR(pg_catalog.<>) newkey THEN
            INSERT INTO maester.shipped_removed (table_name, key) VALUES (TG_TABLE_NAME, oldkey)
            ON CONFLICT DO NOTHING;
        END IF;
        RETURN NEW;
    END IF;

    SELECT pg_catalog.string_agg(pg_catalog.format('%I OPERATOR(pg_catalog.=) ($1).%I', k, k), ' AND ')
      INTO keycond FROM pg_catalog.unnest(TG_ARGV) AS k;
    IF restoring THEN
        -- a dumped edit of a shipped row replaces the row CREATE EXTENSION
        -- shipped (foreign keys do not fire in this mode)
        EXECUTE pg_catalog.format('DELETE FROM ONLY %I.%I WHERE shipped AND %s',
                                  TG_TABLE_SCHEMA, TG_TABLE_NAME, keycond) USING NEW;
        RETURN NEW;
    END IF;

    NEW.shipped := false;
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM ONLY %I.%I WHERE shipped AND %s)',
                              TG_TABLE_SCHEMA, TG_TABLE_NAME, keycond) INTO clash USING NEW;
    IF clash THEN
        RAISE EXCEPTION 'maester.% already has the shipped row %', TG_TABLE_NAME,
                pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.->>) TG_ARGV[0]
            USING ERRCODE = 'unique_violation',
                  HINT = 'UPDATE the shipped row to change it. To restore a dump, run pg_restore with session_replication_role = replica.';
    END IF;
    RETURN NEW;
END
$$;

COMMENT ON FUNCTION maester.shipped_row_guard() IS
    'Trigger (arguments: the key columns): clears shipped when an admin inserts or edits a row, records a changed key in maester.shipped_removed; during a restore (session_replication_role = replica) a dumped row replaces the shipped row with the same key.';

CREATE FUNCTION maester.shipped_row_removed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- every deleted key, not only rows still marked: CREATE EXTENSION
    -- ships an edited row's key again too
    INSERT INTO maester.shipped_removed (table_name, key)
    SELECT TG_TABLE_NAME, pg_catalog.array_agg(pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.->>) k ORDER BY i)
      FROM pg_catalog.unnest(TG_ARGV) WITH ORDINALITY AS u(k, i)
    ON CONFLICT DO NOTHING;
    RETURN OLD;
END
$$;

COMMENT ON FUNCTION maester.shipped_row_removed() IS
    'Trigger (arguments: the key columns): records a deleted key in maester.shipped_removed, so that a restore deletes the shipped row with that key again.';

CREATE FUNCTION maester.shipped_removed_apply()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keys text[] := CASE NEW.table_name WHEN 'route_target' THEN ARRAY['route', 'position']
                                       ELSE ARRAY['name'] END;
BEGIN
    -- only a restore: otherwise the row is being recorded, not applied
    IF pg_catalog.current_setting('session_replication_role') OPERATOR(pg_catalog.<>) 'replica' THEN
        RETURN NULL;
    END IF;
    EXECUTE pg_catalog.format('DELETE FROM ONLY maester.%I WHERE shipped AND ARRAY[%s] OPERATOR(pg_catalog.=) $1',
                              NEW.table_name,
                              (SELECT pg_catalog.string_agg(pg_catalog.format('%I::text', k), ', ')
                                 FROM pg_catalog.unnest(keys) AS k))
      USING NEW.key;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION maester.shipped_removed_apply() IS
    'Trigger: during a restore (session_replication_role = replica), deletes the shipped row a restored maester.shipped_removed row names.';

CREATE TRIGGER provider_shipped
    BEFORE INSERT OR UPDATE ON maester.provider
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_guard('name');
ALTER TABLE maester.provider ENABLE ALWAYS TRIGGER provider_shipped;
CREATE TRIGGER route_shipped
    BEFORE INSERT OR UPDATE ON maester.route
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_guard('name');
ALTER TABLE maester.route ENABLE ALWAYS TRIGGER route_shipped;
CREATE TRIGGER route_target_shipped
    BEFORE INSERT OR UPDATE ON maester.route_target
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_guard('route', 'position');
ALTER TABLE maester.route_target ENABLE ALWAYS TRIGGER route_target_shipped;

CREATE TRIGGER provider_shipped_removed
    AFTER DELETE ON maester.provider
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_removed('name');
CREATE TRIGGER route_shipped_removed
    AFTER DELETE ON maester.route
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_removed('name');
CREATE TRIGGER route_target_shipped_removed
    AFTER DELETE ON maester.route_target
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_removed('route', 'position');
CREATE TRIGGER model_shipped
    BEFORE INSERT OR UPDATE ON maester.model
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_guard('name');
ALTER TABLE maester.model ENABLE ALWAYS TRIGGER model_shipped;
-- (only the keys maester ships: admins' own models come and go)
CREATE TRIGGER model_shipped_removed
    AFTER DELETE ON maester.model
    FOR EACH ROW WHEN (OLD.name OPERATOR(pg_catalog.=) ANY (ARRAY['text-embedding-3-small', 'text-embedding-3-large']))
    EXECUTE FUNCTION maester.shipped_row_removed('name');

CREATE TRIGGER shipped_removed_apply
    AFTER INSERT ON maester.shipped_removed
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_removed_apply();
ALTER TABLE maester.shipped_removed ENABLE ALWAYS TRIGGER shipped_removed_apply;
