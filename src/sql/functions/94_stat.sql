-- src/sql/functions/94_stat.sql: Live statistics.
--
-- Re-created: this file runs when the extension is created and again at
-- every update (CREATE FUNCTION, CREATE VIEW and CREATE TRIGGER then become
-- CREATE OR REPLACE); see src/sql/README.

CREATE FUNCTION maester.stat_entries(
    OUT provider text, OUT model text, OUT calls bigint, OUT errors bigint,
    OUT attempts bigint, OUT retries bigint, OUT fallbacks bigint, OUT errors_by_class jsonb,
    OUT input_tokens bigint, OUT output_tokens bigint, OUT cost_usd numeric,
    OUT p50_latency_ms double precision, OUT p95_latency_ms double precision,
    OUT p99_latency_ms double precision)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'stat_entries'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

COMMENT ON FUNCTION maester.stat_entries() IS
    'The shared-memory statistics of this database, per provider and model (the maester.stat view).';

CREATE VIEW maester.stat AS
SELECT s.*, COALESCE(c.state, 'closed') AS circuit_state
  FROM maester.stat_entries() s
  LEFT JOIN maester.circuit_status() c ON c.provider OPERATOR(pg_catalog.=) s.provider
                                     AND c.model OPERATOR(pg_catalog.=) s.model;

COMMENT ON VIEW maester.stat IS
    'Live counters per provider and model since the last stat_reset (or server start), like pg_stat_statements: calls, failed calls, attempts, retries, fallbacks, failed attempts by error class, tokens, cost, call latency p50/p95/p99 (from a histogram, within 19%), and the circuit state of the provider''s model.';

CREATE FUNCTION maester.stat_reset()
RETURNS integer
AS 'MODULE_PATHNAME', 'stat_reset'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;

COMMENT ON FUNCTION maester.stat_reset() IS
    'Zeroes this database''s statistics in maester.stat; returns how many entries were removed.';
