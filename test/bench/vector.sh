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
# Needs gcc; the SQL part builds and installs maester and runs a
# throwaway cluster (VECTOR_BENCH_SQL=0 skips it).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=${TMPDIR:-/tmp}/maester-vector-bench
mkdir -p "$work"
# the flags PostgreSQL builds extensions with (-O2, no -ffast-math)
gcc -O2 -fno-strict-aliasing -fwrapv -I"$root/src" -o "$work/vector_kernels" \
	"$here/vector_kernels.c" "$root/src/vector_kernels.c" -lm
"$work/vector_kernels" "${1:-3}"

[ "${VECTOR_BENCH_SQL:-1}" = 1 ] || exit 0
# the SQL part, on a throwaway cluster
. "$root/scripts/lib.sh"
MAESTER_BENCH_MOCK=0 maester_bench_cluster vector 54371 "shared_buffers = 1GB" "work_mem = 256MB"
psql_q -c "CREATE EXTENSION maester"
echo
echo "SQL: 100,000 rows of real[] in a table (cached in shared buffers), one query vector, one core"
echo "(no parallel workers, no JIT), best of 3: the scan alone, then a top-10 by each function"
for d in 384 768 1536; do
	psql_q <<SQL
SET max_parallel_workers_per_gather = 0;
SET jit = off;
CREATE TABLE v$d AS SELECT i AS id, (SELECT array_agg(random()::real) FROM generate_series(1, $d) WHERE i > 0) AS e
  FROM generate_series(1, 100000) i;
CREATE TEMP TABLE q AS SELECT (SELECT array_agg(random()::real) FROM generate_series(1, $d)) AS e;
SELECT count(*) FROM v$d WHERE array_length(e, 1) > 0;
CREATE FUNCTION pg_temp.best(sql text) RETURNS float8 LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz; best float8 := 1e9;
BEGIN FOR i IN 1..3 LOOP t0 := clock_timestamp(); EXECUTE sql;
  best := least(best, extract(epoch FROM clock_timestamp() - t0) * 1000); END LOOP; RETURN best; END \$\$;
SELECT format('%-6s %-40s %8s ms', $d, 'scan, array_length (no vector math)',
              round(pg_temp.best('SELECT max(array_length(e, 1)) FROM v$d')::numeric, 1));
SELECT format('%-6s %-40s %8s ms', $d, 'top-10 by maester.inner_product',
              round(pg_temp.best('SELECT id FROM v$d, q ORDER BY maester.inner_product(v$d.e, q.e) DESC LIMIT 10')::numeric, 1));
SELECT format('%-6s %-40s %8s ms', $d, 'top-10 by maester.cosine_similarity',
              round(pg_temp.best('SELECT id FROM v$d, q ORDER BY maester.cosine_similarity(v$d.e, q.e) DESC LIMIT 10')::numeric, 1));
SELECT format('%-6s %-40s %8s ms', $d, 'top-10 by maester.l2_distance',
              round(pg_temp.best('SELECT id FROM v$d, q ORDER BY maester.l2_distance(v$d.e, q.e) LIMIT 10')::numeric, 1));
SELECT format('%-6s %-40s %8s ms', $d, 'the same inner product in SQL (1,000 rows, x100)',
              round(100 * pg_temp.best('SELECT id FROM (SELECT * FROM v$d LIMIT 1000) v, q ORDER BY (SELECT sum(x * y) FROM unnest(v.e, q.e) t(x, y)) DESC LIMIT 10')::numeric, 1));
SQL
done
