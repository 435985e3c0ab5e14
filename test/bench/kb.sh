#!/usr/bin/env bash
# Benchmark of the knowledge engine's ingestion: the whole PostgreSQL 15
# HTML manual (Debian's postgresql-doc-15) into one knowledge base, through
# the knowledge worker, against the mock answering embeddings after L ms
# (default 50; model fault-latency-L) at D dimensions (default 256: the
# mock is Python and builds every vector).
#   - wall time from the first ingest to every document indexed; pages/s,
#     chunks/s; the embedding requests and their inputs;
#   - the ideal for the configured concurrency: the requests, C at a time
#     (maester.embed's default 4), each taking L ms, plus the time the
#     parse and chunk stage alone takes here (measured first, in a backend:
#     maester.kb_parse + maester.kb_chunk over the same pages);
#   - the baseline: the same chunk texts embedded by one maester.embed
#     statement (C requests in flight), plus the parse and chunk time;
#   - a second ingest of the same pages: the calls it made (zero: same
#     content sends nothing) and its time.
# Every request is a full call: PENDING and SETTLE ledger rows made
# durable (fsync on), budget, spans.
# Usage: test/bench/kb.sh [L] [D]
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

lat=${1:-50}
dims=${2:-256}
conc=4
html=/usr/share/doc/postgresql-doc-15/html
maester_bench_cluster kb 54363 "maester.allow_insecure_hosts = '127.0.0.1'" \
    "shared_buffers = 512MB" "fsync = ${MAESTER_BENCH_FSYNC:-on}"
psql_q <<SQL
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('mock', 'openai_compatible', '$MAESTER_MOCK_URL/v1', '{mock-%,fault-%}', 0);
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('fault-latency-$lat', '2020-01-01', 0.02, 0);
CREATE TABLE pages AS
SELECT f, pg_read_file('$html/' || f) AS html FROM pg_ls_dir('$html') f WHERE f LIKE '%.html';
SQL

pages=$(psql_q -c "SELECT count(*) FROM pages")
chars=$(psql_q -c "SELECT sum(length(html)) FROM pages")
parse_ms=$(psql_q <<SQL
SELECT set_config('b.t0', clock_timestamp()::text, false) IS NULL;
SELECT count(*) FROM pages, LATERAL maester.kb_parse(html, 'text/html') p, LATERAL maester.kb_chunk(p.body) c;
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('b.t0')::timestamptz) * 1000);
SQL
)
parse_ms=$(echo "$parse_ms" | tail -1)

echo "method: $pages pages of the PostgreSQL 15 manual ($chars characters of HTML) ingested with maester.ingest"
echo "        in one statement, then the knowledge worker parses, chunks (512 tokens, overlap 64), embeds"
echo "        (batches of up to 2,048 chunks; requests of 2,048 inputs / 300,000 worst-case tokens, $conc in flight)"
echo "        and indexes them; mock latency $lat ms, $dims dimensions; fsync = ${MAESTER_BENCH_FSYNC:-on}; $(nproc) cores;"
echo "        wall time from before the ingest to the last document indexed (maester.kb_wait)"
echo "parse + chunk alone, one backend: $parse_ms ms"

run() {
    psql_q <<SQL
SELECT set_config('b.calls', (SELECT count(*) FROM maester.usage)::text, false) IS NULL;
SELECT set_config('b.t0', clock_timestamp()::text, false) IS NULL;
SELECT count(maester.ingest('manual', f, html, 'text/html')) FROM pages;
SELECT maester.kb_wait('manual', '30 minutes');
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('b.t0')::timestamptz) * 1000)
       || ' ' || (SELECT count(*) FROM maester.usage) - current_setting('b.calls')::bigint;
SQL
}
psql_q -c "SELECT maester.kb_create('manual', 'fault-latency-$lat', dimensions => $dims)" >/dev/null
out=$(run | tail -1)
ms=${out%% *}
requests=${out##* }
read -r chunks tokens inputs indexed failed <<<"$(psql_q -F' ' -A -c \
    "SELECT chunks, (SELECT sum(input_tokens) FROM maester.usage WHERE purpose = 'embedding'),
            (SELECT count(*) FROM maester.chunk_embedding), indexed, failed FROM maester.kb_status")"
ideal=$(( (requests + conc - 1) / conc * lat + parse_ms ))
awk -v ms="$ms" -v p="$pages" -v c="$chunks" -v r="$requests" -v i="$ideal" -v t="$tokens" -v v="$inputs" \
    -v x="$indexed" -v f="$failed" 'BEGIN {
    printf "first ingest: %d ms; %d pages indexed, %d failed; %.0f pages/s; %d chunks, %.0f chunks/s;\n", ms, x, f, p * 1000 / ms, c, c * 1000 / ms
    printf "              %d embedding requests, %d vectors, %d tokens billed; ideal %d ms (ratio %.2fx)\n", r, v, t, i, ms / i }'
# the baseline: the same texts in one maester.embed call, 4 requests in flight
base=$(psql_q <<SQL
SELECT set_config('b.t0', clock_timestamp()::text, false) IS NULL;
SELECT count(*) FROM maester.embed(ARRAY(SELECT content FROM maester.chunk ORDER BY id),
    'fault-latency-$lat', '{"dimensions": $dims, "concurrency": $conc}');
SELECT round(extract(epoch FROM clock_timestamp() - current_setting('b.t0')::timestamptz) * 1000);
SQL
)
base=$(echo "$base" | tail -1)
awk -v ms="$ms" -v b="$base" -v p="$parse_ms" 'BEGIN {
    printf "baseline: the same chunks in one maester.embed statement: %d ms; with parse + chunk %d ms; ingestion / that: %.2fx\n", b, b + p, ms / (b + p) }'
out=$(run | tail -1)
echo "second ingest of the same pages: ${out%% *} ms, ${out##* } calls"
echo "ledger: $(psql_q -c "SELECT count(*) || ' rows, ' || sum(input_tokens) || ' input tokens, ' || sum(cost_usd) || ' USD' FROM maester.usage WHERE purpose = 'embedding'")"
psql_q -c "SELECT round(sum(latency_ms)) || ' ms in requests, ' || round(extract(epoch FROM max(settled_at) - min(ts)) * 1000) || ' ms from the first to the last' FROM maester.usage WHERE purpose = 'embedding'"
[ -n "${MAESTER_BENCH_KEEP:-}" ] && { echo "kept: $data port $port"; trap - EXIT; }
