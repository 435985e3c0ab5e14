#!/usr/bin/env bash
# Benchmark of maester.search's exact vector branch and its full-text
# branch, next to the physical limit in the same run.
#   - For each size N (default 10,000 and 100,000; add 1000000 for a
#     million) and dimension D (384, 1536): a knowledge base of N chunks
#     with random unit vectors (written directly: no embedding calls), then
#     R (default 30) searches in vector mode, top-10; latency p50 / p99
#     from clock_timestamp() around each call in PL/pgSQL, and chunks/s at
#     the median.  A search embeds its query (one maester.embed call to the
#     mock, a few ms): measured alone and shown apart, so that the scan's
#     share is the difference.
#   - the plain C scan (test/bench/scan_c.c): the same number of vectors of
#     the same length in memory, top-10 with maester's kernels and with a
#     plain C loop, one core: the physical limit.
#   - the full-text branch alone (mode fts), chunks made of sentences of the
#     PostgreSQL manual (Debian's postgresql-doc-15), at N up to 100,000.
# One core: no parallel query, no JIT; shared_buffers large enough to hold
# the vectors (the scan reads them from memory).
# Usage: test/bench/search.sh [R] [sizes...]   (MAESTER_BENCH_BIG=1: also 1,000,000 x 1,536, 6 GB;
#        MAESTER_BENCH_DIMS="1536": some dimensions only)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

runs=${1:-30}
shift || true
sizes=("${@:-10000 100000}")
read -r -a sizes <<<"${sizes[*]}"
maester_bench_cluster search 54365 "maester.allow_insecure_hosts = '127.0.0.1'" \
    "shared_buffers = 8GB" "max_parallel_workers_per_gather = 0" "jit = off" "fsync = off"
gcc -O2 -fno-strict-aliasing -fwrapv -I"$work/src" -o "$work/scan_c" "$work/test/bench/scan_c.c" \
    "$work/src/vector_kernels.c" -lm

psql_q <<SQL
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('mock', 'openai_compatible', '$MAESTER_MOCK_URL/v1', '{mock-%}', 0);
-- sentences of the manual, for the chunks' text
CREATE TABLE sentences AS
SELECT row_number() OVER () AS i, s
  FROM (SELECT pg_read_file('/usr/share/doc/postgresql-doc-15/html/' || f) AS html
          FROM pg_ls_dir('/usr/share/doc/postgresql-doc-15/html') f WHERE f LIKE '%.html') p,
       LATERAL maester.kb_parse(p.html, 'text/html') b,
       LATERAL regexp_split_to_table(b.body, '(?<=[.!?])\s+') s
 WHERE length(s) > 40;
CREATE UNIQUE INDEX ON sentences (i);
CREATE FUNCTION public.bench(sql text, runs int) RETURNS TABLE (p50 float8, p99 float8) LANGUAGE plpgsql AS \$\$
DECLARE t0 timestamptz; ts float8[] := '{}';
BEGIN
  EXECUTE sql;  -- warm
  FOR i IN 1 .. runs LOOP
    t0 := clock_timestamp(); EXECUTE sql;
    ts := ts || extract(epoch FROM clock_timestamp() - t0) * 1000;
  END LOOP;
  RETURN QUERY SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY x), percentile_disc(0.99) WITHIN GROUP (ORDER BY x)
    FROM unnest(ts) x;
END \$\$;
SQL
nsent=$(psql_q -c "SELECT count(*) FROM sentences")

echo "method: maester.search(kb, query, 10, 'vector') over N chunks of random unit vectors (live, active profile),"
echo "        $runs runs after a warm-up, clock_timestamp() around each call in PL/pgSQL, one core, vectors in shared buffers;"
echo "        'embed' is the query's maester.embed call alone (to the mock); 'scan' = search - embed at the median;"
echo "        C limit: scan_c, the same count and length of vectors in memory, top-10, maester's kernels / a plain C loop;"
echo "        fts: mode 'fts' over chunks of 3 sentences of the manual ($nsent sentences), AND semantics"
printf "%-9s %-5s %9s %9s %9s %9s %12s %11s %11s %9s %9s\n" N dims search_p50 search_p99 embed_p50 scan_ms chunks/s C_limit_ms C_plain_ms fts_p50 fts_p99
for d in ${MAESTER_BENCH_DIMS:-384 1536}; do
    for n in "${sizes[@]}"; do
        if [ "$d" = 1536 ] && [ "$n" -gt 100000 ] && [ "${MAESTER_BENCH_BIG:-0}" != 1 ]; then
            continue            # 6 GB of vectors: MAESTER_BENCH_BIG=1 to run it
        fi
        psql_q >/dev/null <<SQL
SELECT maester.kb_create('b', 'mock-embed', dimensions => $d);
UPDATE maester.embedding_profile SET served_model = 'mock-embed', served_dimensions = $d
 WHERE id = (SELECT profile_id FROM maester.kb WHERE name = 'b');
INSERT INTO maester.document (kb_id, tenant, external_id, version, content_hash, mime, content, parsed, stage, current,
                              trace_id, span_id)
SELECT k.id, k.tenant, 'd' || i, 1, 'h', 'text/plain', 'x', 'x', 'indexed', true, md5(i::text), left(md5(i::text), 16)
  FROM maester.kb k, generate_series(1, ($n + 99) / 100) i WHERE k.name = 'b';
INSERT INTO maester.chunk (document_id, kb_id, tenant, seq, start_offset, end_offset, token_estimate, content,
                           content_hash, fts_config)
SELECT d.id, d.kb_id, d.tenant, g.s, 0, 1, 1, a.s || ' ' || b.s || ' ' || c.s, '\x00', 'english'
  FROM maester.document d CROSS JOIN generate_series(1, 100) g(s)
  JOIN sentences a ON a.i = (d.id * 100 + g.s) % $nsent + 1
  JOIN sentences b ON b.i = (d.id * 100 + g.s + 7) % $nsent + 1
  JOIN sentences c ON c.i = (d.id * 100 + g.s + 13) % $nsent + 1
 WHERE d.kb_id = (SELECT id FROM maester.kb WHERE name = 'b');
-- 1,000 random unit vectors, used in turn
CREATE TEMP TABLE vecs AS
SELECT j, (SELECT array_agg(x / n) FROM unnest(v) x) AS v
  FROM (SELECT j, v, sqrt((SELECT sum(x * x) FROM unnest(v) x)) AS n
          FROM (SELECT j, (SELECT array_agg((random() * 2 - 1)::real) FROM generate_series(1, $d) WHERE j >= 0) AS v
                  FROM generate_series(0, 999) j) a) b;
CREATE UNIQUE INDEX ON vecs (j);
ANALYZE vecs;
INSERT INTO maester.chunk_embedding (profile_id, chunk_id, kb_id, document_id, live, tenant, embedding)
SELECT k.profile_id, c.id, k.id, c.document_id, true, k.tenant, v.v::real[]
  FROM maester.kb k JOIN maester.chunk c ON c.kb_id = k.id JOIN vecs v ON v.j = c.id % 1000
 WHERE k.name = 'b' AND c.seq <= 100 AND c.id <= (SELECT min(x.id) FROM maester.chunk x) + $n - 1;
VACUUM ANALYZE maester.chunk_embedding, maester.chunk, maester.document;
SQL
        out=$(psql_q <<SQL
SELECT (SELECT round(p50::numeric, 2) || ' ' || round(p99::numeric, 2)
          FROM public.bench(\$q\$SELECT count(*) FROM maester.search('b', 'how does vacuum freeze old rows', 10, 'vector')\$q\$, $runs))
    || ' ' || (SELECT round(p50::numeric, 2)
          FROM public.bench(\$q\$SELECT count(*) FROM maester.embed(ARRAY['how does vacuum freeze old rows'], 'mock-embed', '{"dimensions": $d, "input_type": "query"}')\$q\$, $runs))
    || ' ' || CASE WHEN $n <= 100000 THEN (SELECT round(p50::numeric, 2) || ' ' || round(p99::numeric, 2)
          FROM public.bench(\$q\$SELECT count(*) FROM maester.search('b', 'how does vacuum freeze old rows', 10, 'fts')\$q\$, $runs))
          ELSE '- -' END;
SQL
)
        read -r sp50 sp99 ep50 fp50 fp99 <<<"$(echo "$out" | tail -1)"
        read -r climit cplain kname <<<"$("$work/scan_c" "$n" "$d" 5)"
        awk -v n="$n" -v d="$d" -v sp50="$sp50" -v sp99="$sp99" -v ep50="$ep50" -v cl="$climit" -v cp="$cplain" \
            -v fp50="$fp50" -v fp99="$fp99" 'BEGIN {
            scan = sp50 - ep50; if (scan < 0.01) scan = 0.01
            printf "%-9d %-5d %9.2f %9.2f %9.2f %9.2f %12.0f %11.2f %11.2f %9s %9s\n", n, d, sp50, sp99, ep50, scan, n / scan * 1000, cl, cp, fp50, fp99 }'
        psql_q -c "SELECT maester.kb_drop('b')" >/dev/null
        psql_q -c "VACUUM maester.chunk_embedding, maester.chunk, maester.document" >/dev/null
    done
done
echo "(C limit: kernels '$kname')"
