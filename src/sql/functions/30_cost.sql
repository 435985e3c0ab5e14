-- src/sql/functions/30_cost.sql: Prices and cost: immutability, price_at, cost_exact, cost_of.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.price_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'prices are immutable'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = pg_catalog.format('%s on maester.price is not allowed.', TG_OP),
              HINT = 'Insert a new price with a later valid_from.';
END
$$;

COMMENT ON FUNCTION maester.price_guard() IS
    'Trigger: refuses UPDATE and DELETE of prices, so that what a call cost can always be recomputed.';

CREATE TRIGGER price_guard
    BEFORE UPDATE OR DELETE ON maester.price
    FOR EACH ROW EXECUTE FUNCTION maester.price_guard();
-- a new price reaches every backend's price cache at commit
CREATE TRIGGER price_invalidate
    AFTER INSERT OR TRUNCATE ON maester.price
    FOR EACH STATEMENT EXECUTE FUNCTION maester.cache_invalidate();

CREATE TRIGGER price_model_check
    BEFORE INSERT ON maester.price
    FOR EACH ROW EXECUTE FUNCTION maester.model_name_check();

-- a price an admin inserts is theirs (dumped); see shipped_row_guard
CREATE TRIGGER price_shipped
    BEFORE INSERT ON maester.price
    FOR EACH ROW EXECUTE FUNCTION maester.shipped_row_guard('model', 'valid_from');
ALTER TABLE maester.price ENABLE ALWAYS TRIGGER price_shipped;

CREATE FUNCTION maester.price_key(model text, at timestamptz,
                                  OUT model text, OUT valid_from timestamptz)
AS 'MODULE_PATHNAME', 'price_key'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION maester.price_key(text, timestamptz) IS
    'The key of the price row a call to the model at that time is charged at (the rules of price_at); NULLs when it has no price.';

CREATE FUNCTION maester.price_at(model text, at timestamptz DEFAULT pg_catalog.now())
RETURNS maester.price
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT p.*
      FROM maester.price_key($1, $2) k
      JOIN maester.price p ON p.model OPERATOR(pg_catalog.=) k.model
                          AND p.valid_from OPERATOR(pg_catalog.=) k.valid_from
$$;

COMMENT ON FUNCTION maester.price_at(text, timestamptz) IS
    'The price of a model at a time, as calls are charged: the latest row valid then for the name, or, when it is a maester.model name or alias, for that model''s name or id; then for the undated name of a dated snapshot with a real date (gpt-4.1-mini-2025-04-14 is priced as gpt-4.1-mini); then without a vendor prefix (openai/gpt-4o as gpt-4o). NULL when there is none.';

CREATE FUNCTION maester.cost_exact(
    model               text,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint DEFAULT 0,
    cache_write_tokens  bigint DEFAULT 0,
    at                  timestamptz DEFAULT pg_catalog.now(),
    OUT input_cost      numeric,
    OUT output_cost     numeric)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    -- (OPERATOR() syntax has no arithmetic precedence: every step is
    -- parenthesized; trim_scale drops the division's trailing zeros)
    SELECT pg_catalog.trim_scale(((((($2 OPERATOR(pg_catalog.-) $4) OPERATOR(pg_catalog.-) $5)
               OPERATOR(pg_catalog.*) p.input_cost_per_million)
             OPERATOR(pg_catalog.+) ($4 OPERATOR(pg_catalog.*) COALESCE(p.cache_read_input_cost_per_million, p.input_cost_per_million))
             OPERATOR(pg_catalog.+) ($5 OPERATOR(pg_catalog.*) COALESCE(p.cache_creation_input_cost_per_million, p.input_cost_per_million)))
            OPERATOR(pg_catalog./) 1000000)::numeric),
           pg_catalog.trim_scale((($3 OPERATOR(pg_catalog.*) p.output_cost_per_million) OPERATOR(pg_catalog./) 1000000)::numeric)
      FROM maester.price_at($1, $6) p
     WHERE p.model IS NOT NULL
$$;

COMMENT ON FUNCTION maester.cost_exact(text, bigint, bigint, bigint, bigint, timestamptz) IS
    'Exact, unrounded input and output cost in USD of a call (input_tokens include cached and cache-write tokens, priced at their own rates); NULLs when the model has no price.';

CREATE FUNCTION maester.cost_of(
    model               text,
    input_tokens        bigint,
    output_tokens       bigint,
    cached_input_tokens bigint DEFAULT 0,
    at                  timestamptz DEFAULT pg_catalog.now(),
    cache_write_tokens  bigint DEFAULT 0)
RETURNS maester.cost
LANGUAGE plpgsql STABLE CALLED ON NULL INPUT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_variable
DECLARE
    c   record;
    r   maester.cost;
BEGIN
    IF model IS NULL OR input_tokens IS NULL OR output_tokens IS NULL THEN
        RAISE EXCEPTION 'model, input_tokens and output_tokens must not be null'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    cached_input_tokens := COALESCE(cached_input_tokens, 0);
    cache_write_tokens := COALESCE(cache_write_tokens, 0);
    IF input_tokens OPERATOR(pg_catalog.<) 0 OR output_tokens OPERATOR(pg_catalog.<) 0
       OR cached_input_tokens OPERATOR(pg_catalog.<) 0 OR cache_write_tokens OPERATOR(pg_catalog.<) 0 THEN
        RAISE EXCEPTION 'token counts must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (cached_input_tokens::numeric OPERATOR(pg_catalog.+) cache_write_tokens) OPERATOR(pg_catalog.>) input_tokens THEN
        RAISE EXCEPTION 'cached_input_tokens and cache_write_tokens are part of input_tokens and cannot exceed it'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (input_tokens::numeric OPERATOR(pg_catalog.+) output_tokens) OPERATOR(pg_catalog.>) 9223372036854775807 THEN
        RAISE EXCEPTION 'input_tokens + output_tokens is %, more than total_tokens (bigint) holds',
                input_tokens::numeric OPERATOR(pg_catalog.+) output_tokens
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'maester.cost_exact prices any token counts.';
    END IF;
    SELECT * INTO c FROM maester.cost_exact(model, input_tokens, output_tokens,
                                            cached_input_tokens, cache_write_tokens, COALESCE(at, pg_catalog.now()));
    IF c.input_cost IS NULL THEN
        RAISE EXCEPTION 'no price for model "%"', model
            USING ERRCODE = 'undefined_object',
                  DETAIL = pg_catalog.format('No price of it is valid at %s.', COALESCE(at, pg_catalog.now())),
                  HINT = 'Add one with INSERT INTO maester.price.';
    END IF;
    r.model := model;
    r.input_tokens := input_tokens;
    r.output_tokens := output_tokens;
    r.total_tokens := input_tokens OPERATOR(pg_catalog.+) output_tokens;
    r.input_cost_usd := pg_catalog.round(c.input_cost, 6);
    r.output_cost_usd := pg_catalog.round(c.output_cost, 6);
    r.total_cost_usd := r.input_cost_usd OPERATOR(pg_catalog.+) r.output_cost_usd;
    r.unit := 'USD';
    RETURN r;
END
$$;

COMMENT ON FUNCTION maester.cost_of(text, bigint, bigint, bigint, timestamptz, bigint) IS
    'The cost of a call in the articles'' shape: cost_of(''gpt-4.1-mini'', 40, 48) = 0.000016 + 0.000077 = 0.000093 USD. Cached and cache-write tokens are part of input_tokens, priced at their rates. Unknown model: 42704; negative tokens: 22023.';
