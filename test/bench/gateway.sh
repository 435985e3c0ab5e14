#!/usr/bin/env bash
# Benchmark of the gateway's own cost.
#  1. Added latency: N sequential llm_generate calls against an upstream,
#     against N sequential requests of the same body to the same upstream
#     from a C client on libcurl with keep-alive (test/bench/direct_http.c),
#     median and p99 of each and of the difference.  Two upstreams: nginx
#     (Debian's, answering a canned Chat Completions JSON) and the mock.
#  2. Tracing's cost: rounds of traced and untraced calls, their latency
#     and the cluster's CPU seconds per 10,000 calls (the postmaster and
#     all its children: the backend, the worker writing ledger and spans,
#     the WAL writer...; from /proc, exited children included), and the
#     resident worker's part of it.
#  3. Throughput: pgbench, 16 sessions calling llm_generate against nginx.
#  4. The floor, in the same run: the disk's write + fdatasync of a WAL
#     page (test/bench/flush_floor.c, in the data directory), two of which
#     every call waits for, idle and with both cores kept busy; a latch
#     round trip between two processes
#     (test/bench/handoff_floor.c: kill, signalfd and epoll, as PostgreSQL
#     15's latches on Linux), two of which every call makes with the
#     resident worker, once free to run on any CPU and once pinned to
#     one (README: pinning the backend and the worker together did not
#     make calls faster); and, after each untraced round, the same
#     calls with fsync turned off by a reload, so that what the flushes
#     cost and what the rest costs are told apart; and what it costs the
#     calling backend to make a 600-byte record durable itself, outside
#     its transaction, instead of handing it to the worker (a WAL logical
#     message and XLogFlush, test/bench/durable_floor, an extension built
#     and installed for the run and uninstalled after it).
# The bench model is priced, as a user's would be, so every call meters
# its cost (before 2026-12-03 it was not, and each session raised the
# "has no price" WARNING once).
# The cluster runs with fsync = on (MAESTER_BENCH_FSYNC=off to compare)
# and maester.ledger_wal = on (MAESTER_BENCH_LEDGER_WAL=off: the worker's
# synchronous commits make ledger rows durable, as before 2026-12-03).
# Usage: test/bench/gateway.sh [calls] [pgbench_seconds]   (2000, 15)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

calls=${1:-2000}
seconds=${2:-15}
MAESTER_PACKAGES+=(nginx-light)
maester_setup
maester_build_install

work=$(maester_workdir bench-gw)
data="$work/data"
port=${MAESTER_BENCH_PORT:-54349}
nport=${MAESTER_BENCH_NGINX_PORT:-18089}
cleanup() {
    maester_stop_cluster "$data"
    maester_sudo make -C "$work/test/bench/durable_floor" -s uninstall >/dev/null 2>&1 ||
        echo "gateway.sh: could not uninstall the durable_floor benchmark extension" >&2
    maester_stop_mock
    maester_stop_nginx "$work/nginx"
    rm -rf "$work"
}
trap cleanup EXIT

# the C baseline client
gcc -O2 -o "$work/direct_http" "$work/test/bench/direct_http.c" -lcurl
gcc -O2 -o "$work/flush_floor" "$work/test/bench/flush_floor.c"
gcc -O2 -o "$work/handoff_floor" "$work/test/bench/handoff_floor.c"
# the benchmark-only extension for the durable-record floor (test/bench/durable_floor)
make -C "$work/test/bench/durable_floor" -s
maester_sudo make -C "$work/test/bench/durable_floor" -s install >/dev/null

# nginx answering every POST with a canned completion
maester_start_nginx "$work/nginx" "$nport"
maester_start_mock
maester_start_cluster "$data" "$port" "maester.allow_insecure_hosts = '127.0.0.1'" \
    "max_connections = 40" "shared_buffers = 256MB" "fsync = ${MAESTER_BENCH_FSYNC:-on}" \
    "maester.ledger_wal = ${MAESTER_BENCH_LEDGER_WAL:-on}"

psql_q() {
    maester_as_pg psql -X -q -At -h "$data" -p "$port" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 "$@"
}
psql_q <<SQL
CREATE EXTENSION maester;
CREATE EXTENSION durable_floor;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('nginx', 'openai_compatible', 'http://127.0.0.1:$nport/v1', '{}', 0),
       ('mock', 'openai_compatible', '$MAESTER_MOCK_URL/v1', '{}', 0);
INSERT INTO maester.model (name, provider, provider_model)
VALUES ('bench-nginx', 'nginx', 'bench-model'), ('bench-mock', 'mock', 'bench-model');
INSERT INTO maester.price (model, valid_from, input_cost_per_million, output_cost_per_million)
VALUES ('bench-model', '2020-01-01', 2.5, 10);
CREATE TABLE lat (upstream text, us double precision);
SQL

# utime + stime of process $1 in clock ticks, and with a second argument
# those of its reaped children too (after ") ", field 3 is the state, so
# utime (14) is index 11, stime 12, cutime 13, cstime 14)
proc_ticks() {
    local f
    read -r -a f < <(sed 's/.*) //' "/proc/$1/stat") || return 1
    echo $(( f[11] + f[12] ${2:+ + f[13] + f[14]} ))
}
ticks_to_seconds() { echo "$1 $(getconf CLK_TCK)" | awk '{ printf "%.3f\n", $1 / $2 }'; }

# CPU seconds used so far by the cluster: the postmaster, its live
# children, and the children it has reaped (cutime/cstime)
cluster_cpu() {
    local pm total t
    pm=$(head -1 "$data/postmaster.pid")
    total=$(proc_ticks "$pm" reaped)
    for c in $(ps -o pid= --ppid "$pm"); do
        t=$(proc_ticks "$c" 2>/dev/null) || continue
        total=$(( total + t ))
    done
    ticks_to_seconds "$total"
}

# CPU seconds used so far by the database's resident worker
worker_cpu() {
    local pid
    pid=$(psql_q -c "SELECT worker_pid FROM maester.worker_status()")
    if ! [[ $pid =~ ^[0-9]+$ ]] || [ ! -r "/proc/$pid/stat" ]; then
        echo "gateway.sh: no resident worker to measure (worker_pid: '$pid')" >&2
        exit 1
    fi
    ticks_to_seconds "$(proc_ticks "$pid")"
}

# llm_generate latencies, timed around each call in one session
# ($2: maester.trace_sample_rate, 1 unless given)
sql_latencies() {
    psql_q <<SQL
SET maester.trace_sample_rate = ${2:-1};
DO \$\$
DECLARE t0 timestamptz; d double precision;
BEGIN
  PERFORM maester.llm_generate('Hello', '$1') FROM generate_series(1, 200);  -- warm-up
  FOR i IN 1..$calls LOOP
    t0 := clock_timestamp();
    PERFORM maester.llm_generate('Hello', '$1');
    d := extract(epoch FROM clock_timestamp() - t0) * 1e6;
    INSERT INTO lat VALUES ('$1', d);
  END LOOP;
END
\$\$;
SQL
    psql_q -c "COPY (SELECT us FROM lat WHERE upstream = '$1') TO STDOUT"
}

"$work/direct_http" "http://127.0.0.1:$nport/v1/chat/completions" 200 >/dev/null
"$work/direct_http" "http://127.0.0.1:$nport/v1/chat/completions" "$calls" >"$work/direct_nginx.txt"
# traced and untraced runs alternate, five rounds each, so that drift
# (WAL, table growth, the disk) hits both alike
: >"$work/sql_nginx.txt"
# (the CPU of each run covers its 200 warm-up calls too; the worker has
# written every span of a traced run before the CPU is read again)
: >"$work/cpu.txt"
: >"$work/nofsync.txt"
wait_spans() {
    for _ in $(seq 1 200); do
        [ "$(psql_q -c "SELECT spans_queued FROM maester.trace_status()")" = 0 ] && return
        sleep 0.05
    done
}
for round in 1 2 3 4 5; do
    w0=$(worker_cpu); c0=$(cluster_cpu)
    sql_latencies bench-nginx 1 >"$work/traced_$round.txt"
    wait_spans
    c1=$(cluster_cpu); w1=$(worker_cpu)
    psql_q -c "TRUNCATE lat"
    w2=$(worker_cpu); c2=$(cluster_cpu)
    sql_latencies bench-nginx 0 >"$work/untraced_$round.txt"
    c3=$(cluster_cpu); w3=$(worker_cpu)
    psql_q -c "TRUNCATE lat"
    echo "$round $c0 $c1 $c2 $c3 $w0 $w1 $w2 $w3" >>"$work/cpu.txt"
    # the floor: the same untraced calls with fsync turned off by a reload
    # (unless the cluster runs with fsync off already), right after
    if [ "${MAESTER_BENCH_FSYNC:-on}" = on ]; then
        psql_q -c "ALTER SYSTEM SET fsync = off" -c "SELECT pg_reload_conf()" >/dev/null
        sleep 0.5
        sql_latencies bench-nginx 0 >>"$work/nofsync.txt"
        psql_q -c "TRUNCATE lat"
        psql_q -c "ALTER SYSTEM RESET fsync" -c "SELECT pg_reload_conf()" >/dev/null
        sleep 0.5
    fi
    cat "$work/traced_$round.txt" >>"$work/sql_nginx.txt"
done
dropped=$(psql_q -c "SELECT spans_dropped FROM maester.trace_status()")
# the floor: the disk's own write + fdatasync, then the same while both
# cores are kept busy by two shell loops (what a flush costs when the
# machine is loaded, as it is while calls run and the worker writes spans)
maester_as_pg "$work/flush_floor" "$data" "$calls" >"$work/flush.txt"
burners=()
for _ in 1 2; do (while :; do :; done) & burners+=($!); done
maester_as_pg "$work/flush_floor" "$data" $((calls * 2)) >"$work/flush_loaded.txt"
kill "${burners[@]}"
wait "${burners[@]}" 2>/dev/null || true
# the floor: a record made durable by the calling backend itself
psql_q -c "COPY (SELECT * FROM durable_floor($calls, 600)) TO STDOUT" >"$work/durable.txt"
# the floor: the hand-offs' round trips, on any CPU, then on one
timeout 300 "$work/handoff_floor" $((calls * 5)) >"$work/handoff.txt"
timeout 300 taskset -c 0 "$work/handoff_floor" $((calls * 5)) >"$work/handoff_pinned.txt"
"$work/direct_http" "$MAESTER_MOCK_URL/v1/chat/completions" 200 >/dev/null
"$work/direct_http" "$MAESTER_MOCK_URL/v1/chat/completions" "$calls" >"$work/direct_mock.txt"
sql_latencies bench-mock >"$work/sql_mock.txt"

# throughput: 16 sessions against nginx
echo "SELECT (maester.llm_generate('Hello', 'bench-nginx')).content;" >"$work/pgbench.sql"
chown "$(maester_pg_user)" "$work/pgbench.sql"
maester_as_pg pgbench -n -h "$data" -p "$port" -U postgres -c 16 -j 2 -M prepared \
    -T "$seconds" -f "$work/pgbench.sql" postgres >"$work/pgbench.txt" 2>&1
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.txt" | tail -1)
failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$work/pgbench.txt")

python3 - "$work" "$calls" "$seconds" "$tps" "${failed:-0}" "$dropped" "${MAESTER_BENCH_LEDGER_WAL:-on}" <<'PY'
import statistics, sys
work, calls, seconds, tps, failed, dropped, ledger_wal = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
def load(name):
    return [float(x) for x in open(f"{work}/{name}.txt") if x.strip()]
def p(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]
print("maester gateway benchmark")
print(f"method: {calls} sequential calls per upstream after 200 warm-up calls, one session;")
print("        llm_generate timed with clock_timestamp() around each call in PL/pgSQL;")
print("        direct = the same request body from a C client on libcurl, keep-alive;")
print("        added = median(llm_generate) - median(direct), and the same for p99.")
print("ledger: " + ("each record a WAL message its caller flushes while the worker writes the row (maester.ledger_wal = on)"
                   if ledger_wal == "on" else "the worker's synchronous commits (maester.ledger_wal = off)"))
print(f"{'upstream':10}{'direct p50':>12}{'direct p99':>12}{'gw p50':>10}{'gw p99':>10}{'added p50':>11}{'added p99':>11}  (microseconds)")
for up in ("nginx", "mock"):
    d, s = load("direct_" + up), load("sql_" + up)
    print(f"{up:10}{p(d,.5):12.0f}{p(d,.99):12.0f}{p(s,.5):10.0f}{p(s,.99):10.0f}"
          f"{p(s,.5)-p(d,.5):11.0f}{p(s,.99)-p(d,.99):11.0f}")
print(f"tracing: 5 rounds of {calls} traced calls then {calls} untraced (trace_sample_rate = 0), nginx:")
diffs, mdiffs = [], []
for r in range(1, 6):
    t, u = load(f"traced_{r}"), load(f"untraced_{r}")
    diffs.append(p(t, .5) - p(u, .5))
    mdiffs.append(statistics.mean(t) - statistics.mean(u))
    print(f"  round {r}: p50 traced {p(t,.5):.0f} us, untraced {p(u,.5):.0f} us, "
          f"difference {diffs[-1]:.0f} us (means: {mdiffs[-1]:.0f} us)")
print(f"tracing overhead per call: median over rounds {statistics.median(diffs):.0f} us at p50, "
      f"{statistics.median(mdiffs):.0f} us in the mean")
alltr = [x for r in range(1, 6) for x in load(f"traced_{r}")]
allun = [x for r in range(1, 6) for x in load(f"untraced_{r}")]
print(f"all rounds: traced p50/p99 {p(alltr,.5):.0f}/{p(alltr,.99):.0f} us, "
      f"untraced p50/p99 {p(allun,.5):.0f}/{p(allun,.99):.0f} us; spans dropped: {dropped}")
def over(xs, us):
    return 100.0 * sum(1 for x in xs if x > us) / len(xs)
print(f"calls over 1 ms: traced {over(alltr, 1000):.2f}%, untraced {over(allun, 1000):.2f}% "
      f"(a p99 under 1 ms needs under 1%)")
per = 10000.0 / (calls + 200)
cpu_t, cpu_u, wcpu_t, wcpu_u = [], [], [], []
for line in open(f"{work}/cpu.txt"):
    r, c0, c1, c2, c3, w0, w1, w2, w3 = line.split()
    cpu_t.append((float(c1) - float(c0)) * per)
    cpu_u.append((float(c3) - float(c2)) * per)
    wcpu_t.append((float(w1) - float(w0)) * per)
    wcpu_u.append((float(w3) - float(w2)) * per)
print(f"cluster CPU seconds per 10,000 calls (postmaster and all its children, {calls + 200} calls a run):")
print("  traced:   " + ", ".join(f"{x:.2f}" for x in cpu_t) + f"  (median {statistics.median(cpu_t):.2f})")
print("  untraced: " + ", ".join(f"{x:.2f}" for x in cpu_u) + f"  (median {statistics.median(cpu_u):.2f})")
print(f"  tracing costs {statistics.median(cpu_t) - statistics.median(cpu_u):.2f} CPU s per 10,000 calls "
      f"({(statistics.median(cpu_t) - statistics.median(cpu_u)) * 100:.0f} us a call)")
print("  of which the resident worker (ledger, spans): traced " + ", ".join(f"{x:.2f}" for x in wcpu_t) +
      f" (median {statistics.median(wcpu_t):.2f}); untraced " + ", ".join(f"{x:.2f}" for x in wcpu_u) +
      f" (median {statistics.median(wcpu_u):.2f}); the rest: the calling backend, the WAL writer and the others")
fl = load("flush")
print(f"the floor: write + fdatasync of an 8 kB page in the data directory, {calls} times: "
      f"p50 {p(fl,.5):.0f} us, p99 {p(fl,.99):.0f} us (a call waits for two)")
fll = load("flush_loaded")
print(f"  the same while two busy loops keep both cores busy, {len(fll)} times: p50 {p(fll,.5):.0f} us, "
      f"p99 {p(fll,.99):.0f} us, p99.9 {p(fll,.999):.0f} us, over 1 ms {over(fll, 1000):.2f}% (idle: {over(fl, 1000):.2f}%)")
ho, hp = load("handoff"), load("handoff_pinned")
print(f"the floor: a latch round trip between two processes (kill, signalfd, epoll), {len(ho)} times: "
      f"p50 {p(ho,.5):.0f} us, p99 {p(ho,.99):.0f} us; both pinned to one CPU: p50 {p(hp,.5):.0f} us, "
      f"p99 {p(hp,.99):.0f} us (a call makes two)")
du = load("durable")
print(f"the floor: a 600-byte WAL record flushed by the calling backend itself, outside its transaction "
      f"(a logical message and XLogFlush, test/bench/durable_floor), {len(du)} times: "
      f"p50 {p(du,.5):.0f} us, p99 {p(du,.99):.0f} us")
nf = load("nofsync")
if nf:
    print(f"untraced calls with fsync turned off (a reload after each untraced round), same cluster: p50/p99 {p(nf,.5):.0f}/{p(nf,.99):.0f} us; "
          f"the flushes cost {p(allun,.5) - p(nf,.5):.0f} us of the untraced p50, "
          f"the rest of the call {p(nf,.5) - p(load('direct_nginx'),.5):.0f} us over direct")
print(f"throughput: pgbench -c 16 -j 2 -M prepared -T {seconds}, llm_generate against nginx: "
      f"{float(tps):,.0f} calls/s ({failed} failed)")
PY
