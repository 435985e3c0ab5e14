#!/usr/bin/env bash
# Benchmark: maester.prompt_render (C, cached, cryptohash SHA-256) against a
# PL/pgSQL implementation of the same render and hash, over N rows in one
# statement on one core.  Usage: test/bench/render.sh [rows]   (default 1e6)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

rows=${1:-1000000}
maester_setup
maester_build_install
work=$(maester_workdir bench)
data="$work/data"
port=${MAESTER_BENCH_PORT:-54339}
trap 'maester_stop_cluster "$data"; rm -rf "$work"' EXIT
maester_start_cluster "$data" "$port"

psql_q() {
    maester_as_pg psql -X -q -At -h "$data" -p "$port" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 "$@"
}
psql_q -c "CREATE EXTENSION maester" -f "$work/test/bench/render_plpgsql.sql" \
    -c "SELECT maester.prompt_register('system_summary', E'You are a production AI assistant focused on reliability.\nSummarize the following system event.\nBe concise, mention operational impact, and keep the tone factual.\n\n{event_text}') IS NOT NULL" >/dev/null

# Time one statement server-side (EXPLAIN ANALYZE's execution time, ms);
# best of 3 runs, after one warm-up.
time_ms() {
    local q=$1 best="" t i
    psql_q -c "SET max_parallel_workers_per_gather = 0" -c "$q" >/dev/null
    for i in 1 2 3; do
        t=$(psql_q -c "SET max_parallel_workers_per_gather = 0" \
                   -c "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) $q" \
            | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])')
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
    done
    echo "$best"
}

vars="jsonb_build_object('event_text', 'System latency increased above ' || i || 'ms for the inference service.')"
base=$(time_ms "SELECT count($vars) FROM generate_series(1, $rows) i")
c=$(time_ms "SELECT count((maester.prompt_render('system_summary', $vars)).hash) FROM generate_series(1, $rows) i")
pl=$(time_ms "SELECT count((bench_plpgsql_render('system_summary', $vars)).hash) FROM generate_series(1, $rows) i")

# the two implementations agree
same=$(psql_q -c "SELECT bool_and(a.hash = b.hash AND a.content = b.content) FROM generate_series(1, 1000) i,
    maester.prompt_render('system_summary', $vars) a, bench_plpgsql_render('system_summary', $vars) b")

python3 - "$rows" "$base" "$c" "$pl" "$same" <<'PY'
import sys
rows, base, c, pl, same = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
print("maester render benchmark")
print(f"method: one SELECT over generate_series(1, {rows}), one core (no parallel workers),")
print("        EXPLAIN ANALYZE execution time, best of 3 after a warm-up; each row builds")
print("        its variables with jsonb_build_object, renders system_summary v1 (latest) and")
print("        takes the SHA-256 hash. 'net' subtracts the cost of building the variables.")
print(f"implementations agree on 1,000 rows: {same == 't'}")
print(f"{'':22}{'total ms':>10}{'renders/s':>14}{'net renders/s':>16}")
print(f"{'variables only':22}{base:10.0f}")
for name, t in (("maester (C)", c), ("PL/pgSQL", pl)):
    print(f"{name:22}{t:10.0f}{rows / (t / 1000):14,.0f}{rows / ((t - base) / 1000):16,.0f}")
print(f"speed-up C over PL/pgSQL: {pl / c:.1f}x total, {(pl - base) / (c - base):.1f}x net")
PY
