#!/usr/bin/env bash
# Benchmark: maester.evaluate over N rows (default 1,000,000) with five
# checks (non_empty, required_terms, max_length, regex, not_contains), in
# one statement on one core.  Usage: test/bench/evaluate.sh [rows]
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

rows=${1:-1000000}
maester_setup
maester_build_install
work=$(maester_workdir bench-eval)
data="$work/data"
port=${MAESTER_BENCH_PORT:-54369}
trap 'maester_stop_cluster "$data"; rm -rf "$work"' EXIT
maester_start_cluster "$data" "$port"
psql_q() {
    maester_as_pg psql -X -q -At -h "$data" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}
psql_q -c "CREATE EXTENSION maester"

checks='{"required_terms": ["latency", "impact"], "max_length": 500, "regex": "[0-9]+ms", "not_contains": ["sorry", "as an AI"]}'
content="'Latency rose to ' || i || 'ms on the inference service; impact: slower answers for some users.'"
time_ms() {
    local q=$1 best="" t
    psql_q -c "SET max_parallel_workers_per_gather = 0" -c "$q" >/dev/null
    for _ in 1 2 3; do
        t=$(psql_q -c "SET max_parallel_workers_per_gather = 0" \
                   -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) $q" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])')
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
    done
    echo "$best"
}
base=$(time_ms "SELECT count($content) FROM generate_series(1, $rows) i")
ev=$(time_ms "SELECT count(maester.evaluate($content, '$checks')) FROM generate_series(1, $rows) i")
check=$(psql_q -c "SELECT maester.evaluate('Latency rose to 5ms; impact: none.', '$checks') ->> 'status'")
python3 - "$rows" "$base" "$ev" "$check" <<'PY'
import sys
rows, base, ev, check = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print("maester evaluate benchmark")
print(f"method: one SELECT over generate_series(1, {rows}), one core, EXPLAIN ANALYZE")
print("        execution time, best of 3 after a warm-up; each row builds a ~90-character")
print("        output and evaluates it with 5 checks (non_empty, required_terms, max_length,")
print("        regex, not_contains); 'net' subtracts building the outputs.")
print(f"sanity: a passing output evaluates to {check}")
print(f"total {ev:.0f} ms: {rows / (ev / 1000):,.0f} evaluations/s; net {rows / ((ev - base) / 1000):,.0f} evaluations/s")
PY
