-- src/sql/functions/92_circuits.sql: Circuit breakers.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.circuit_status(
    OUT provider text, OUT model text, OUT state text, OUT consecutive_failures integer,
    OUT opened_at timestamptz, OUT successes bigint, OUT failures bigint,
    OUT opens bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'circuit_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.circuit_status() IS
    'Circuit breaker state of every provider and model this database called since the server started (shared memory).';

CREATE VIEW maester.circuit AS SELECT * FROM maester.circuit_status();

COMMENT ON VIEW maester.circuit IS
    'Circuit breaker per provider and model of this database: closed (calls go through), open (the model is skipped until the cooldown ends), half_open (one probe under way); counters since server start.';

CREATE FUNCTION maester.circuit_reset(provider text DEFAULT NULL, model text DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME', 'circuit_reset'
LANGUAGE C VOLATILE CALLED ON NULL INPUT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.circuit_reset(text, text) IS
    'Closes the circuit breakers of this database''s provider (NULL: every provider) and model (NULL: every model); returns how many were reset. Other databases'' circuits are not touched.';
