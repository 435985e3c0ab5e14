#!/usr/bin/env bash
# Benchmark of the response cache: what a hit costs, next to the call it
# saves.  In one run, against nginx answering a canned Chat Completions
# JSON (the fastest upstream there is) and the mock provider with 300 ms of
# latency (a provider's order of magnitude):
#   direct   N sequential POSTs of the same body from a C client on libcurl,
#            keep-alive (test/bench/direct_http.c)
#   uncached N sequential llm_generate calls through the gateway
#   hit      N sequential llm_generate calls the response cache answers
#            (options.cache, temperature 0; one miss first)
# median and p99 of each, in microseconds.  fsync = on: a hit is a ledger
# row too.
# Usage: test/bench/cache.sh [calls]   (1000; the slow upstream gets calls / 20)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

calls=${1:-1000}
slow=$(( calls / 20 > 10 ? calls / 20 : 10 ))
MAESTER_PACKAGES+=(nginx-light)
maester_setup
maester_build_install

work=$(maester_workdir bench-cache)
data="$work/data"
port=${MAESTER_BENCH_PORT:-54359}
nport=${MAESTER_BENCH_NGINX_PORT:-18099}
cleanup() {
    maester_stop_cluster "$data"
    maester_stop_mock
    maester_stop_nginx "$work/nginx"
    rm -rf "$work"
}
trap cleanup EXIT

gcc -O2 -o "$work/direct_http" "$work/test/bench/direct_http.c" -lcurl
maester_start_nginx "$work/nginx" "$nport"
maester_start_mock
maester_start_cluster "$data" "$port" "maester.allow_insecure_hosts = '127.0.0.1'" \
    "shared_buffers = 256MB" "fsync = on"

psql_q() {
    maester_as_pg psql -X -q -At -h "$data" -p "$port" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 "$@"
}
psql_q <<SQL
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('nginx', 'openai_compatible', 'http://127.0.0.1:$nport/v1', '{}', 0),
       ('mock', 'openai_compatible', '$MAESTER_MOCK_URL/v1', '{}', 0);
INSERT INTO maester.model (name, provider, provider_model)
VALUES ('bench-nginx', 'nginx', 'bench-model'), ('bench-slow', 'mock', 'fault-latency-300');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('bench-nginx', '2020-01-01', 0.4, 1.6), ('bench-slow', '2020-01-01', 0.4, 1.6);
CREATE TABLE lat (label text, us double precision);
SQL

# $1 label, $2 model, $3 options, $4 calls: llm_generate timed around each call
sql_latencies() {
    psql_q <<SQL
DO \$\$
DECLARE t0 timestamptz;
BEGIN
  PERFORM maester.llm_generate('Hello', '$2', options => '$3') FROM generate_series(1, 20);  -- warm-up
  FOR i IN 1..$4 LOOP
    t0 := clock_timestamp();
    PERFORM maester.llm_generate('Hello', '$2', options => '$3');
    INSERT INTO lat VALUES ('$1', extract(epoch FROM clock_timestamp() - t0) * 1e6);
  END LOOP;
END
\$\$;
SQL
    psql_q -c "COPY (SELECT us FROM lat WHERE label = '$1') TO STDOUT"
}

"$work/direct_http" "http://127.0.0.1:$nport/v1/chat/completions" 50 >/dev/null
"$work/direct_http" "http://127.0.0.1:$nport/v1/chat/completions" "$calls" >"$work/direct_nginx.txt"
sql_latencies uncached_nginx bench-nginx '{"temperature": 0}' "$calls" >"$work/uncached_nginx.txt"
sql_latencies hit_nginx bench-nginx '{"temperature": 0, "cache": true}' "$calls" >"$work/hit_nginx.txt"
sql_latencies uncached_slow bench-slow '{"temperature": 0}' "$slow" >"$work/uncached_slow.txt"
sql_latencies hit_slow bench-slow '{"temperature": 0, "cache": true}' "$calls" >"$work/hit_slow.txt"
hits=$(psql_q -c "SELECT hits || ' hits, ' || misses || ' misses, saved ' || saved_usd || ' USD' FROM maester.cache_stats WHERE model = 'bench-nginx'")
ledger=$(psql_q -c "SELECT count(*) FROM maester.usage WHERE cache = 'hit' AND status = 'cached'")

python3 - "$work" "$calls" "$slow" "$hits" "$ledger" <<'PY'
import sys
work, calls, slow, hits, ledger = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def load(name):
    return [float(x) for x in open(f"{work}/{name}.txt") if x.strip()]
def p(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]
print("maester response cache benchmark")
print(f"method: sequential calls in one session after 20 warm-up calls, fsync = on;")
print("        llm_generate timed with clock_timestamp() around each call in PL/pgSQL;")
print("        direct = the same request body from a C client on libcurl, keep-alive;")
print("        hit = the cache answers (options.cache, temperature 0): a lookup by primary key,")
print("        a ledger row at $0 made durable before the call returns, and the call's spans.")
print(f"{'upstream':22}{'calls':>7}{'p50 us':>10}{'p99 us':>10}")
rows = [("nginx, direct", "direct_nginx"), ("nginx, uncached", "uncached_nginx"),
        ("nginx, cache hit", "hit_nginx"), ("mock 300 ms, uncached", "uncached_slow"),
        ("mock 300 ms, cache hit", "hit_slow")]
for label, name in rows:
    xs = load(name)
    print(f"{label:22}{len(xs):7d}{p(xs, .5):10.0f}{p(xs, .99):10.0f}")
hn, dn, un = load("hit_nginx"), load("direct_nginx"), load("uncached_nginx")
hs, us_ = load("hit_slow"), load("uncached_slow")
print(f"a hit against the direct call to nginx: {p(hn,.5) - p(dn,.5):+.0f} us at p50; "
      f"against an uncached call: {p(hn,.5) - p(un,.5):+.0f} us")
print(f"against the 300 ms upstream a hit is {p(us_,.5) / p(hs,.5):.0f}x faster at p50")
print(f"cache_stats (nginx): {hits}; ledger rows of hits: {ledger}")
PY
