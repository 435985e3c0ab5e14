#!/usr/bin/env bash
# Benchmark of maester.embed (issue #16).
#   N inputs (default 100,000) of about 100 tokens (~400 characters of
#   words) embedded in one statement against the mock answering every
#   request after L ms (default 50; model fault-latency-L), at D dimensions
#   (default 256: the mock is Python and builds every vector, so that more
#   dimensions measure the mock, not maester), C requests in flight
#   (default 4).  Requests hold at most 2,048 inputs and 300,000 tokens
#   counted at their worst (a token per byte: ~400 bytes an input, so
#   about 750 inputs a request); the ideal wall time is
#   ceil(requests / C) * L ms, requests as the ledger counts them.  Printed: the wall time (median of R runs,
#   default 3), its ratio to the ideal, inputs per second, what the mock
#   took per request (its own time, from its log of requests), and the
#   backend's peak memory (VmHWM) after the runs and after a run of 2 N.
#   Each request is a full call: PENDING and SETTLE ledger rows made
#   durable (fsync on), budget, spans.
# Usage: test/bench/embed.sh [N] [C] [L] [D] [R]
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

n=${1:-100000}
conc=${2:-4}
lat=${3:-50}
dims=${4:-256}
runs=${5:-3}
maester_bench_cluster embed 54361 "maester.allow_insecure_hosts = '127.0.0.1'" \
    "shared_buffers = 256MB" "fsync = ${MAESTER_BENCH_FSYNC:-on}"
psql_q <<SQL
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('mock', 'openai_compatible', '$MAESTER_MOCK_URL/v1', '{mock-%,fault-%}', 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('fault-latency-$lat', '2020-01-01', 0.02, 0);
-- ~100 tokens each: 400 characters of words
CREATE TABLE docs AS
SELECT i AS id, (SELECT string_agg(md5((i * 31 + k)::text), ' ') FROM generate_series(1, 12) k) AS body
  FROM generate_series(1, 2 * $n) i;
SELECT count(*) FROM maester.embed(ARRAY['warm up'], 'fault-latency-$lat', '{"dimensions": $dims}');
SQL

echo "method: maester.embed of $n inputs of $(psql_q -c "SELECT round(avg(length(body))) FROM docs") characters (~100 tokens),"
echo "        requests of at most 2,048 inputs and 300,000 worst-case tokens, $conc in flight, mock latency $lat ms, $dims dimensions;"
echo "        one statement per run, $runs runs, wall time from clock_timestamp() around it; fsync = ${MAESTER_BENCH_FSYNC:-on}; $(nproc) cores"
times=()
for r in $(seq 1 "$runs"); do
    out=$(psql_q <<SQL
SELECT set_config('b.rows', (SELECT count(*) FROM maester.usage)::text, false) IS NULL;
SELECT set_config('b.t0', clock_timestamp()::text, false) IS NULL;
CREATE TEMP TABLE r AS SELECT * FROM maester.embed(ARRAY(SELECT body FROM docs WHERE id <= $n ORDER BY id),
    'fault-latency-$lat', '{"dimensions": $dims, "concurrency": $conc}');
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('b.t0')::timestamptz) * 1000)
       || ' ' || count(*) FILTER (WHERE embedding IS NOT NULL) || ' ' || count(*) FROM r;
SELECT pg_sleep(0.5);
SELECT (SELECT count(*) FROM maester.usage) - current_setting('b.rows')::bigint;
SQL
)
    ms=$(echo "$out" | tail -3 | head -1 | cut -d' ' -f1)
    requests=$(echo "$out" | tail -1)
    echo "  run $r: $(echo "$out" | tail -3 | head -1 | awk '{printf "%d ms, %d/%d embedded", $1, $2, $3}'), $requests requests"
    times+=("$ms")
done
ideal_ms=$(( (requests + conc - 1) / conc * lat ))
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
awk -v m="$median" -v i="$ideal_ms" -v n="$n" 'BEGIN {
    printf "embed: median %d ms for %d inputs; ideal %d ms; ratio %.2fx; %.0f inputs/s\n", m, n, i, m / i, n * 1000 / m }'
echo "ledger: $(psql_q -c "SELECT count(*) || ' rows, ' || sum(input_tokens) || ' input tokens, ' || sum(cost_usd) || ' USD' FROM maester.usage WHERE purpose = 'embedding'")"

mem=$(psql_q <<SQL
CREATE FUNCTION pg_temp.hwm() RETURNS bigint LANGUAGE sql AS \$\$
  SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmHWM:\s+(\d+)'))[1]::bigint \$\$;
SELECT count(*) FROM maester.embed(ARRAY(SELECT body FROM docs WHERE id <= $n), 'fault-latency-$lat', '{"dimensions": $dims, "concurrency": $conc}');
SELECT 'after ' || $n || ' inputs: VmHWM ' || pg_temp.hwm() || ' kB';
SELECT count(*) FROM maester.embed(ARRAY(SELECT body FROM docs), 'fault-latency-$lat', '{"dimensions": $dims, "concurrency": $conc}');
SELECT 'after ' || 2 * $n || ' inputs: VmHWM ' || pg_temp.hwm() || ' kB';
SQL
)
echo "memory: $(echo "$mem" | grep VmHWM | tr '\n' ';' | sed 's/;$//; s/;/; /')"
