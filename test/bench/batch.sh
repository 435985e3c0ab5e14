#!/usr/bin/env bash
# Benchmark of the batch path (maester.generate_batch).
#   N requests (default 1,000) against the mock answering every request
#   after L ms (default 100; model fault-latency-L), at concurrency C
#   (default 64), in one statement.  The ideal wall time is
#   ceil(N / C) * L ms (1,000 / 64 -> 16 rounds of 100 ms = 1.6 s); the
#   script prints the measured wall time (median of R runs, default 3),
#   its ratio to the ideal, and requests per second.  Each request is a
#   full call: PENDING and SETTLE ledger rows made durable (fsync on),
#   evaluation, spans.
#   Then the same N requests as asynchronous jobs (maester.submit, one job
#   worker with maester.job_concurrency = C): wall time from the submitting
#   commit to the last job's end, jobs per second, and the resident
#   worker's CPU for each run.
#   Then the backend's peak memory (VmHWM) after batches of N and of 10*N
#   fast requests (mock-1, no latency): bounded memory means no growth
#   proportional to the number of requests.
# Usage: test/bench/batch.sh [N] [C] [L] [R]
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

n=${1:-1000}
conc=${2:-64}
lat=${3:-100}
runs=${4:-3}
maester_bench_cluster batch 54351 "maester.allow_insecure_hosts = '127.0.0.1'" \
    "shared_buffers = 256MB" "fsync = ${MAESTER_BENCH_FSYNC:-on}" \
    "maester.job_concurrency = $conc"
psql_q <<SQL
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('mock', 'openai_compatible', '$MAESTER_MOCK_URL/v1', '{mock-%,fault-%}', 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('fault-latency-$lat', '2020-01-01', 0.15, 0.6), ('mock-1', '2020-01-01', 0.15, 0.6);
SELECT count(*) FROM maester.generate_batch(ARRAY['{"prompt": "warm up", "model": "mock-1"}'::jsonb]);
SQL

echo "method: maester.generate_batch of $n requests, concurrency $conc, mock latency $lat ms,"
echo "        one statement per run, $runs runs, wall time from clock_timestamp() around it;"
echo "        fsync = ${MAESTER_BENCH_FSYNC:-on}; $(nproc) cores"
ideal_ms=$(( (n + conc - 1) / conc * lat ))
times=()
for r in $(seq 1 "$runs"); do
    out=$(psql_q <<SQL
SELECT set_config('b.t0', clock_timestamp()::text, false) IS NULL;
CREATE TEMP TABLE r AS SELECT * FROM maester.generate_batch(ARRAY(
    SELECT jsonb_build_object('prompt', 'event ' || i, 'model', 'fault-latency-$lat', 'max_tokens', 30)
      FROM generate_series(1, $n) i), concurrency => $conc);
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('b.t0')::timestamptz) * 1000)
       || ' ' || count(*) FILTER (WHERE error_class IS NULL) || ' ' || count(*) FROM r;
SQL
)
    ms=$(echo "$out" | tail -1 | cut -d' ' -f1)
    echo "  run $r: $(echo "$out" | tail -1 | awk '{printf "%d ms, %d/%d ok", $1, $2, $3}')"
    times+=("$ms")
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
awk -v m="$median" -v i="$ideal_ms" -v n="$n" 'BEGIN {
    printf "batch: median %d ms for %d requests; ideal %d ms; ratio %.2fx; %.0f requests/s\n", m, n, i, m / i, n * 1000 / m }'

# the async path: N jobs submitted in one transaction, run by the
# resident worker; its CPU (user + system, from /proc) per run, counted
# once the batches' spans are written
worker_cpu_ms() {
    local pid
    pid=$(psql_q -c "SELECT worker_pid FROM maester.worker_status()")
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); printf "%d\n", ($12 + $13) * 1000 / hz }' "/proc/$pid/stat"
}
for _ in $(seq 1 200); do
    [ "$(psql_q -c "SELECT spans_queued FROM maester.trace_status()")" = 0 ] && break
    sleep 0.05
done
jobs=()
for r in $(seq 1 "$runs"); do
    cpu0=$(worker_cpu_ms)
    out=$(psql_q <<SQL
SELECT count(maester.submit(jsonb_build_object('prompt', 'event ' || i, 'model', 'fault-latency-$lat', 'max_tokens', 30),
                            submission => 'bench-$r'))
  FROM generate_series(1, $n) i;
DO \$\$
BEGIN
  WHILE EXISTS (SELECT FROM maester.job WHERE submission = 'bench-$r' AND status IN ('queued', 'running')) LOOP
    PERFORM pg_sleep(0.02);
  END LOOP;
END \$\$;
SELECT round(extract(epoch FROM max(finished_at) - min(submitted_at)) * 1000) || ' '
       || count(*) FILTER (WHERE status = 'done') || ' ' || count(*)
  FROM maester.job WHERE submission = 'bench-$r';
SQL
)
    cpu1=$(worker_cpu_ms)
    ms=$(echo "$out" | tail -1 | cut -d' ' -f1)
    echo "  jobs run $r: $(echo "$out" | tail -1 | awk '{printf "%d ms, %d/%d done", $1, $2, $3}'), worker CPU $((cpu1 - cpu0)) ms"
    jobs+=("$ms")
done
jmedian=$(printf '%s\n' "${jobs[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
awk -v m="$jmedian" -v i="$ideal_ms" -v n="$n" 'BEGIN {
    printf "jobs: median %d ms from submit to the last end for %d jobs; ideal %d ms; ratio %.2fx; %.0f jobs/s\n", m, n, i, m / i, n * 1000 / m }'
echo "spans (default maester.span_queue_size): $(psql_q -c "SELECT spans_dropped || ' dropped of ' || (spans_dropped + (SELECT count(*) FROM maester.span)) FROM maester.trace_status()")"

# memory: peak RSS of one backend after N, then after 10*N fast requests
mem=$(psql_q <<SQL
CREATE FUNCTION pg_temp.hwm() RETURNS bigint LANGUAGE sql AS \$\$
  SELECT (regexp_match(pg_read_file('/proc/' || pg_backend_pid() || '/status'), 'VmHWM:\s+(\d+)'))[1]::bigint \$\$;
SELECT count(*) FROM maester.generate_batch(ARRAY(
    SELECT jsonb_build_object('prompt', 'event ' || i, 'model', 'mock-1') FROM generate_series(1, $n) i), concurrency => $conc);
SELECT 'after ' || $n || ' requests: VmHWM ' || pg_temp.hwm() || ' kB';
SELECT count(*) FROM maester.generate_batch(ARRAY(
    SELECT jsonb_build_object('prompt', 'event ' || i, 'model', 'mock-1') FROM generate_series(1, 10 * $n) i), concurrency => $conc);
SELECT 'after ' || 10 * $n || ' more requests: VmHWM ' || pg_temp.hwm() || ' kB';
SQL
)
echo "memory: $(echo "$mem" | grep VmHWM | tr '\n' ';' | sed 's/;$//; s/;/; /')"
