\echo Use "CREATE EXTENSION durable_floor" to load this file (test/bench/gateway.sh does). \quit

CREATE FUNCTION durable_floor(n integer, bytes integer) RETURNS SETOF float8
AS 'MODULE_PATHNAME' LANGUAGE C STRICT VOLATILE;

-- it writes WAL and flushes it: not for everyone
REVOKE ALL ON FUNCTION durable_floor(integer, integer) FROM PUBLIC;
