#!/usr/bin/env bash
# Benchmark: maester.cost_daily for one tenant and one month over a ledger
# of N rows (default 10,000,000: 100 tenants, 12 months, 4 providers,
# 8 models), as a BI tool would query it.  Prints the plan and the time.
# Usage: test/bench/cost_daily.sh [rows]
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

rows=${1:-10000000}
maester_setup
maester_build_install
work=$(maester_workdir bench-cost)
data="$work/data"
port=${MAESTER_BENCH_PORT:-54359}
trap 'maester_stop_cluster "$data"; rm -rf "$work"' EXIT
maester_start_cluster "$data" "$port" "shared_buffers = 1GB" "max_wal_size = 8GB" \
    "maintenance_work_mem = 1GB" "work_mem = 64MB"

psql_q() {
    maester_as_pg psql -X -q -h "$data" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"
}
psql_q -c "CREATE EXTENSION maester"
start=$(date +%s)
psql_q <<SQL
-- rows in time order, as the ledger worker writes them
INSERT INTO maester.usage (request_id, attempt, ts, settled_at, tenant, role, trace_id,
    prompt_name, prompt_version, prompt_hash, provider, requested_model, model, max_tokens,
    input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, usage_estimated,
    estimated_cost_usd, cost_usd, priced, latency_ms, status, http_status, fallback_used)
SELECT gen_random_uuid(), 1,
       timestamptz '2026-01-01 00:00:00+00' + (i * (interval '365 days' / $rows)),
       timestamptz '2026-01-01 00:00:01+00' + (i * (interval '365 days' / $rows)),
       't' || (i % 100), 'app', md5(i::text),
       'prompt_' || (i % 20), 'v' || (i % 3), md5((i % 1000)::text),
       (ARRAY['openai','anthropic','groq','ollama'])[1 + i % 4], NULL,
       (ARRAY['gpt-4.1','gpt-4.1-mini','gpt-4o','gpt-4o-mini','claude-sonnet-4-5','claude-haiku-4-5','llama-70b','qwen'])[1 + i % 8],
       500, 200 + i % 300, 50 + i % 200, 0, 0, false,
       0.001, (0.00001 * (1 + i % 97))::numeric, true, 100 + i % 900,
       CASE WHEN i % 50 = 0 THEN 'error' ELSE 'ok' END, 200, false
  FROM generate_series(1, $rows) i;
VACUUM ANALYZE maester.usage;
SQL
loaded=$(( $(date +%s) - start ))
size=$(psql_q -At -c "SELECT pg_size_pretty(pg_total_relation_size('maester.usage'))")

query="SELECT day, provider, model, calls, errors, input_tokens, output_tokens, cost_usd
  FROM maester.cost_daily WHERE tenant = 't42' AND day >= '2026-10-01' AND day < '2026-11-01'
 ORDER BY day, provider, model"
psql_q -c "$query" >/dev/null   # warm
plan=$(psql_q -At -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) $query")
best=""
for i in 1 2 3; do
    t=$(psql_q -At -c "EXPLAIN (ANALYZE, FORMAT JSON) $query" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])')
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $t < $best else 1)"; then best=$t; fi
done
echo "maester cost_daily benchmark"
echo "method: $rows ledger rows (100 tenants, one year, written in time order),"
echo "        loaded in ${loaded}s, table with indexes ${size}; query: one tenant, one month"
echo "        of maester.cost_daily; execution time best of 3 after a warm-up."
echo "result: ${best} ms"
echo "plan:"
echo "$plan"
