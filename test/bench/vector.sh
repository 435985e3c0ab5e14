#!/usr/bin/env bash
#
# vector.sh: the throughput of maester's vector kernels (inner_product,
# cosine_similarity, l2_distance: src/vector_kernels.c, SIMD chosen at run
# time) per core at 384, 768 and 1,536 dimensions, next to a plain C loop
# over the same data in the same run and to the memory-bandwidth limit;
# then the SQL functions over a table of 100,000 vectors, next to the same
# scan computing nothing (the executor's and detoasting's share).
#
#   test/bench/vector.sh [PASSES]
#
# Needs gcc (build-essential) and, for the SQL part, a running cluster
# reachable with psql where maester is installed (PGDATABASE etc.); the
# SQL part is skipped when there is none.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${TMPDIR:-/tmp}/maester-vector-bench
mkdir -p "$work"
# the flags PostgreSQL builds extensions with (-O2, no -ffast-math)
gcc -O2 -fno-strict-aliasing -fwrapv -I"$root/src" -o "$work/vector_kernels" \
	"$here/vector_kernels.c" "$root/src/vector_kernels.c" -lm
"$work/vector_kernels" "${1:-3}"

if ! psql -XAtqc "SELECT 1 FROM pg_extension WHERE extname = 'maester'" 2>/dev/null | grep -q 1; then
	echo "(no database with maester reachable by psql: SQL part skipped)"
	exit 0
fi
echo "SQL: 100,000 rows of real[] (in a temporary table, cached), one query vector, best of 3"
for d in 384 768 1536; do
	psql -XAtq <<SQL
\\set ON_ERROR_STOP on
SET max_parallel_workers_per_gather = 0;
SET jit = off;
CREATE TEMP TABLE v AS SELECT i AS id, (SELECT array_agg(random()::real) FROM generate_series(1, $d) WHERE i > 0) AS e
  FROM generate_series(1, 100000) i;
CREATE TEMP TABLE q AS SELECT (SELECT array_agg(random()::real) FROM generate_series(1, $d)) AS e;
SELECT count(*) FROM v;    -- warm the cache
CREATE FUNCTION pg_temp.best(sql text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz; best float8 := 1e9;
BEGIN FOR i IN 1..3 LOOP t0 := clock_timestamp(); EXECUTE sql;
  best := least(best, extract(epoch FROM clock_timestamp() - t0) * 1000); END LOOP; RETURN best; END \$\$;
SELECT format('%-6s %-34s %8s ms', $d, 'scan + array_length (no math)',
              round(pg_temp.best('SELECT max(array_length(e, 1)) FROM v')::numeric, 1));
SELECT format('%-6s %-34s %8s ms', $d, 'top-10 by maester.inner_product',
              round(pg_temp.best('SELECT id FROM v, q ORDER BY maester.inner_product(v.e, q.e) DESC LIMIT 10')::numeric, 1));
SELECT format('%-6s %-34s %8s ms', $d, 'top-10 by maester.cosine_similarity',
              round(pg_temp.best('SELECT id FROM v, q ORDER BY maester.cosine_similarity(v.e, q.e) DESC LIMIT 10')::numeric, 1));
SQL
done
