#!/usr/bin/env bash
# Benchmark of evaluation by a model (the llm_rubric check) inside a batch.
#   N requests (default 200) through maester.generate_batch at concurrency
#   C (default 32), against the mock answering after L ms (default 100).
#   Side by side in one run:
#     plain:  the requests with a check that needs no model;
#     rubric: the same requests, rendered from a prompt whose checks hold
#             one llm_rubric, graded by a mock model that also answers
#             after L ms (fault-verdict-pass-L).
#   Ideal wall times: plain ceil(N / C) * L; rubric ceil(N / C) * 2L (each
#   request is a call and then its grader's call).  The script prints each
#   run's wall time, the median of R runs (default 3), the ratio to the
#   ideal and requests per second, and checks that every request was graded
#   (its evaluation carries the grader's verdict, and the ledger holds one
#   evaluation row per request).
# Usage: test/bench/rubric.sh [N] [C] [L] [R]
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

n=${1:-200}
conc=${2:-32}
lat=${3:-100}
runs=${4:-3}
maester_bench_cluster rubric 54353 "maester.allow_insecure_hosts = '127.0.0.1'" \
    "shared_buffers = 256MB" "fsync = ${MAESTER_BENCH_FSYNC:-on}"
psql_q <<SQL
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('mock', 'openai_compatible', '$MAESTER_MOCK_URL/v1', '{mock-%,fault-%}', 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('fault-latency-$lat', '2020-01-01', 0.15, 0.6), ('fault-verdict-pass-$lat', '2020-01-01', 0.15, 0.6),
       ('mock-1', '2020-01-01', 0.15, 0.6);
SELECT count(*) FROM maester.prompt_register('plain', 'event {i}',
    checks => '[{"type": "max_length", "value": 500}]');
SELECT count(*) FROM maester.prompt_register('graded', 'event {i}',
    checks => '[{"type": "llm_rubric", "value": "The answer restates the event.", "model": "fault-verdict-pass-$lat"}]');
SELECT count(*) FROM maester.generate_batch(ARRAY['{"prompt": "warm up", "model": "mock-1"}'::jsonb]);
SQL

echo "method: maester.generate_batch of $n requests, concurrency $conc, mock latency $lat ms"
echo "        for the call and for its llm_rubric grader; one statement per run, $runs runs"
echo "        of each kind, alternating; wall time from clock_timestamp() around the"
echo "        statement; fsync = ${MAESTER_BENCH_FSYNC:-on}; $(nproc) cores"

rounds=$(( (n + conc - 1) / conc ))
declare -A times
for r in $(seq 1 "$runs"); do
    for kind in plain graded; do
        out=$(psql_q <<SQL
SELECT set_config('b.t0', clock_timestamp()::text, false) IS NULL;
CREATE TEMP TABLE r AS SELECT * FROM maester.generate_batch(ARRAY(
    SELECT jsonb_build_object('prompt_name', '$kind', 'variables', jsonb_build_object('i', i),
                              'model', 'fault-latency-$lat', 'max_tokens', 30)
      FROM generate_series(1, $n) i), concurrency => $conc);
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('b.t0')::timestamptz) * 1000)
       || ' ' || count(*) FILTER (WHERE error_class IS NULL)
       || ' ' || count(*) FILTER (WHERE evaluation -> 'metrics' @> '[{"name": "llm_rubric", "passed": true}]')
       || ' ' || (SELECT count(*) FROM maester.usage u WHERE u.purpose = 'evaluation'
                     AND u.ts >= current_setting('b.t0')::timestamptz)
  FROM r;
SQL
)
        line=$(echo "$out" | tail -1)
        ms=${line%% *}
        echo "  run $r, $kind: $(echo "$line" | awk '{printf "%d ms, %d ok, %d graded, %d grader calls in the ledger", $1, $2, $3, $4}')"
        times[$kind]="${times[$kind]:-} $ms"
    done
done
for kind in plain graded; do
    median=$(printf '%s\n' ${times[$kind]} | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    [ "$kind" = graded ] && ideal=$(( rounds * lat * 2 )) || ideal=$(( rounds * lat ))
    awk -v k="$kind" -v m="$median" -v i="$ideal" -v n="$n" 'BEGIN {
        printf "%s: median %d ms for %d requests; ideal %d ms; ratio %.2fx; %.0f requests/s\n", k, m, n, i, m / i, n * 1000 / m }'
done
