#!/usr/bin/env bash
# maester side by side with the open-source Portkey gateway
# (@portkey-ai/gateway 1.15 from npm, on node, headless), both calling the
# same upstream in one run: Debian's nginx answering a canned Chat
# Completions JSON (as in test/bench/gateway.sh).
#  1. Added latency: N sequential calls after 200 warm-up calls, p50 and p99
#     of a C client on libcurl with keep-alive (test/bench/load_http.c) to
#     nginx directly, of the same client through Portkey, and of
#     llm_generate timed around each call in PL/pgSQL; added = gateway -
#     direct.
#  2. Throughput at 16 and 64 concurrent clients, T seconds each: maester
#     under pgbench, Portkey under load_http keeping C requests in flight
#     (and nginx directly, for the upstream's own ceiling).
#  3. CPU seconds per 10,000 calls during those runs, from /proc: the whole
#     cluster (postmaster and all its children) for maester, the node
#     process for Portkey; nginx and the load generator apart.
# maester runs as it ships: fsync = on, every call traced, every call's two
# ledger rows committed; Portkey keeps no ledger.
# Usage: test/bench/portkey.sh [calls] [seconds]   (2000, 10)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"

calls=${1:-2000}
seconds=${2:-10}
MAESTER_PACKAGES+=(nginx-light)
maester_setup
maester_build_install

work=$(maester_workdir bench-pk)
data="$work/data"
port=${MAESTER_BENCH_PORT:-54351}
nport=${MAESTER_BENCH_NGINX_PORT:-18091}
kport=${MAESTER_BENCH_PORTKEY_PORT:-18791}
node_pid=
cleanup() {
    [ -n "$node_pid" ] && kill "$node_pid" 2>/dev/null && wait "$node_pid" 2>/dev/null || true
    maester_stop_cluster "$data"
    maester_stop_nginx "$work/nginx"
    rm -rf "$work"
}
trap cleanup EXIT

# the C client: sequential latencies, and C requests in flight for load
gcc -O2 -o "$work/load_http" "$work/test/bench/load_http.c" -lcurl

# Portkey, from npm into the work directory (its own package.json there, so
# that npm looks no further up)
mkdir -p "$work/portkey"
echo '{"private": true}' >"$work/portkey/package.json"
if ! npm install --prefix "$work/portkey" --no-audit --no-fund --loglevel=error \
        @portkey-ai/gateway@1.15 >"$work/npm.log" 2>&1; then
    cat "$work/npm.log" >&2
    exit 1
fi
pk_dir="$work/portkey/node_modules/@portkey-ai/gateway"
pk_version=$(node -p "require('$pk_dir/package.json').version")

# nginx answering every POST with a canned completion
maester_start_nginx "$work/nginx" "$nport"

# Portkey headless on its own port; 127.0.0.1 is among its trusted custom
# hosts by default, so it may call nginx there
node "$pk_dir/build/start-server.js" --port="$kport" --headless >"$work/portkey.log" 2>&1 &
node_pid=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$kport/" >/dev/null 2>&1 && break
    sleep 0.1
done
if ! curl -sf "http://127.0.0.1:$kport/" >/dev/null 2>&1; then
    echo "portkey.sh: Portkey did not start" >&2
    cat "$work/portkey.log" >&2
    exit 1
fi

# max_connections: pgbench's 64 sessions and the background processes
maester_start_cluster "$data" "$port" "maester.allow_insecure_hosts = '127.0.0.1'" \
    "max_connections = 100" "shared_buffers = 256MB" "fsync = on" \
    "maester.trace_sample_rate = 1"
pm_pid=$(head -1 "$data/postmaster.pid")

psql_q() {
    maester_as_pg psql -X -q -At -h "$data" -p "$port" -U postgres -d postgres \
        -v ON_ERROR_STOP=1 "$@"
}
psql_q <<SQL
CREATE EXTENSION maester;
INSERT INTO maester.provider (name, kind, base_url, models, circuit_failure_threshold)
VALUES ('nginx', 'openai_compatible', 'http://127.0.0.1:$nport/v1', '{}', 0);
INSERT INTO maester.model (name, provider, provider_model)
VALUES ('bench-nginx', 'nginx', 'bench-model');
CREATE TABLE lat (upstream text, us double precision);
SQL

# llm_generate latencies, timed around each call in one session, as
# gateway.sh does ($2: maester.trace_sample_rate)
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

nginx_url="http://127.0.0.1:$nport/v1/chat/completions"
pk_url="http://127.0.0.1:$kport/v1/chat/completions"
pk_headers=("x-portkey-provider: openai" "x-portkey-custom-host: http://127.0.0.1:$nport/v1"
            "Authorization: Bearer sk-anything")

# CPU seconds (utime + stime + cutime + cstime, over the process and all
# its live descendants: an exited child's time is in its parent's cutime
# and cstime once reaped) of process $1, and how many of its descendants
# have a command line starting with $2 (to wait for backends to go)
cat >"$work/cpu.py" <<'PY'
import os, sys
root, prefix = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
kids, ticks = {}, {}
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    try:
        s = open(f"/proc/{d}/stat").read()
    except OSError:
        continue
    f = s[s.rindex(")") + 2:].split()      # f[0] is field 3 (state)
    kids.setdefault(int(f[1]), []).append(int(d))
    ticks[int(d)] = sum(int(x) for x in f[11:15])  # fields 14-17
total, matching, todo = 0, 0, [root]
while todo:
    p = todo.pop()
    total += ticks.get(p, 0)
    todo += kids.get(p, [])
    if prefix and p != root:
        try:
            if open(f"/proc/{p}/cmdline").read().startswith(prefix):
                matching += 1
        except OSError:
            pass
print(f"{total / os.sysconf('SC_CLK_TCK'):.2f} {matching}")
PY
cpu_of() { python3 "$work/cpu.py" "$@"; }
nginx_pid=$(cat "$work/nginx/nginx.pid")
# until the cluster has no client backend (exited backends reaped, so that
# their CPU is in the postmaster's cutime/cstime), at most 10 s
cluster_idle() {
    local n
    for _ in $(seq 1 100); do
        read -r _ n < <(cpu_of "$pm_pid" "postgres: postgres postgres ")
        [ "$n" -eq 0 ] && return 0
        sleep 0.1
    done
}
# ledger rows ok and not ok, spans written, spans dropped (a full span
# queue drops spans, never calls)
ledger_spans() {
    psql_q -F ' ' -c "SELECT (SELECT count(*) FILTER (WHERE status = 'ok') FROM maester.usage),
                             (SELECT count(*) FILTER (WHERE status <> 'ok') FROM maester.usage),
                             (SELECT count(*) FROM maester.span), spans_dropped
                        FROM maester.trace_status()"
}
# until the span writer has emptied its queue (its work is the calls'
# work: it belongs in the cluster's CPU), at most 30 s
spans_drained() {
    for _ in $(seq 1 150); do
        [ "$(psql_q -c "SELECT spans_queued FROM maester.trace_status()")" -eq 0 ] && return 0
        sleep 0.2
    done
}
cpu_delta() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }

# 1. sequential latencies: direct, through Portkey, through maester
"$work/load_http" seq "$nginx_url" 200 >/dev/null
"$work/load_http" seq "$nginx_url" "$calls" >"$work/lat_direct.txt"
"$work/load_http" seq "$pk_url" 200 "${pk_headers[@]}" >/dev/null
"$work/load_http" seq "$pk_url" "$calls" "${pk_headers[@]}" >"$work/lat_portkey.txt"
read -r ok0 _ sp0 dr0 < <(ledger_spans)
sql_latencies bench-nginx 1 >"$work/lat_maester.txt"
spans_drained
read -r ok1 _ sp1 dr1 < <(ledger_spans)
echo "sequential $((calls + 200)) $((ok1 - ok0)) $((sp1 - sp0)) $((dr1 - dr0))" >"$work/ledger.txt"

# 2 and 3. throughput and CPU, at 16 then 64 clients: nginx directly,
# Portkey, maester.  One line per run in runs.txt:
#   what clients calls errors seconds gateway_cpu nginx_cpu client_cpu
echo "SELECT (maester.llm_generate('Hello', 'bench-nginx')).content;" >"$work/pgbench.sql"
chown "$(maester_pg_user)" "$work/pgbench.sql"
: >"$work/runs.txt"
for c in 16 64; do
    # nginx alone, the upstream's ceiling with this client
    read -r n0 _ < <(cpu_of "$nginx_pid")
    out=$("$work/load_http" load "$nginx_url" "$c" "$seconds")
    read -r n1 _ < <(cpu_of "$nginx_pid")
    read -r r_calls r_errors r_seconds r_cpu < <(echo "$out" | sed 's/[a-z]*=//g')
    echo "direct $c $r_calls $r_errors $r_seconds 0 $(cpu_delta "$n0" "$n1") $r_cpu" >>"$work/runs.txt"

    # Portkey: the node process (and children, if any)
    read -r k0 _ < <(cpu_of "$node_pid")
    read -r n0 _ < <(cpu_of "$nginx_pid")
    out=$("$work/load_http" load "$pk_url" "$c" "$seconds" "${pk_headers[@]}")
    read -r k1 _ < <(cpu_of "$node_pid")
    read -r n1 _ < <(cpu_of "$nginx_pid")
    read -r r_calls r_errors r_seconds r_cpu < <(echo "$out" | sed 's/[a-z]*=//g')
    echo "portkey $c $r_calls $r_errors $r_seconds $(cpu_delta "$k0" "$k1") $(cpu_delta "$n0" "$n1") $r_cpu" >>"$work/runs.txt"

    # maester: the whole cluster; pgbench's own CPU from the shell's
    # children times (times prints the subshell's, then its children's);
    # errors are the calls the ledger settled other than ok (pgbench gives
    # up on a client at its first error: that shows on stderr)
    read -r ok0 bad0 sp0 dr0 < <(ledger_spans)
    cluster_idle
    read -r p0 _ < <(cpu_of "$pm_pid")
    read -r n0 _ < <(cpu_of "$nginx_pid")
    ( maester_as_pg pgbench -n -h "$data" -p "$port" -U postgres -c "$c" -j 2 -M prepared \
          -T "$seconds" -f "$work/pgbench.sql" postgres >"$work/pgbench_$c.txt" 2>&1 ||
          { echo "portkey.sh: pgbench -c $c failed:" >&2; grep -v '^progress' "$work/pgbench_$c.txt" | tail -5 >&2; }
      times >"$work/times_$c.txt" )
    spans_drained
    cluster_idle
    read -r p1 _ < <(cpu_of "$pm_pid")
    read -r n1 _ < <(cpu_of "$nginx_pid")
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench_$c.txt")
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench_$c.txt" | tail -1)
    client_cpu=$(python3 - "$work/times_$c.txt" <<'PY'
import re, sys
u, s = re.findall(r"(\d+)m([\d.]+)s", open(sys.argv[1]).read().splitlines()[1])
print(f"{sum(int(m) * 60 + float(x) for m, x in (u, s)):.2f}")
PY
)
    # seconds = processed / tps: pgbench's rate leaves out connection time
    secs=$(python3 -c "import sys; n, t = float(sys.argv[1] or 0), float(sys.argv[2] or 0); print(f'{n / t:.3f}' if t else sys.argv[3])" \
        "$processed" "$tps" "$seconds")
    read -r ok1 bad1 sp1 dr1 < <(ledger_spans)
    echo "maester $c ${processed:-0} $((bad1 - bad0)) $secs $(cpu_delta "$p0" "$p1") $(cpu_delta "$n0" "$n1") $client_cpu" >>"$work/runs.txt"
    echo "$c ${processed:-0} $((ok1 - ok0)) $((sp1 - sp0)) $((dr1 - dr0))" >>"$work/ledger.txt"
done
ledger_open=$(psql_q -c "SELECT count(*) FROM maester.usage WHERE settled_at IS NULL")

python3 - "$work" "$calls" "$seconds" "$pk_version" "$ledger_open" <<'PY'
import sys
work, calls, seconds, pk_version, ledger_open = sys.argv[1:6]
def load(name):
    return [float(x) for x in open(f"{work}/{name}.txt") if x.strip()]
def p(xs, q):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(q * len(xs)))]
runs = {}
for line in open(f"{work}/runs.txt"):
    what, c, n, err, secs, gw, ng, cl = line.split()
    runs[what, int(c)] = dict(calls=int(n), errors=int(err), secs=float(secs),
                              gw=float(gw), nginx=float(ng), client=float(cl))
ledger = [l.split() for l in open(f"{work}/ledger.txt")]
lat = {k: load("lat_" + k) for k in ("direct", "portkey", "maester")}
d50, d99 = p(lat["direct"], .5), p(lat["direct"], .99)

print("maester vs Portkey gateway benchmark")
print(f"method: one upstream for all: nginx on 127.0.0.1 answering a canned Chat Completions JSON;")
print(f"        Portkey = @portkey-ai/gateway {pk_version} on node, headless, x-portkey-provider: openai,")
print(f"        custom host = nginx; maester = llm_generate in PostgreSQL 15.")
print(f"        latency: {calls} sequential calls each after 200 warm-up calls; direct = a C client")
print(f"        on libcurl, keep-alive, to nginx; Portkey = the same client through Portkey; maester =")
print(f"        llm_generate timed with clock_timestamp() around each call in PL/pgSQL, one session;")
print(f"        added = gateway - direct, at p50 and at p99.")
print(f"        throughput: {seconds} s at 16 and at 64 clients: maester under pgbench -c C -j 2")
print(f"        -M prepared; Portkey under the C client with C requests in flight (libcurl multi);")
print(f"        errors: Portkey = requests not answered 200, maester = calls its ledger settled not ok.")
print(f"        CPU: utime + stime from /proc over each run, per 10,000 calls: maester = the whole")
print(f"        cluster (postmaster and all its children: backends, the maester worker writing the")
print(f"        ledger and spans, walwriter, ...; exited ones through the postmaster's cutime/cstime);")
print(f"        Portkey = the node process and its children; nginx and the load generator are in")
print(f"        neither, shown apart.  All on this machine's cores, shared with nginx and the client.")
print(f"        maester: fsync = on, trace_sample_rate = 1: every call's two ledger rows (pending")
print(f"        before the request leaves, settled after) committed and flushed, its spans queued")
print(f"        for the span writer (a full queue drops spans, never calls: counted below; the")
print(f"        CPU window waits for the queue to empty).  Portkey: no ledger, nothing written.")
print(f"upstream alone (direct): p50 {d50:.0f} us, p99 {d99:.0f} us; " +
      ", ".join(f"{runs['direct', c]['calls'] / runs['direct', c]['secs']:,.0f} calls/s at {c} clients"
                for c in (16, 64)))
print()
def per10k(r, key):
    return r[key] / r["calls"] * 10000 if r["calls"] else float("nan")
rows = [("ledger per call", lambda k: "2 rows, fsync" if k == "maester" else "none")]
rows.append(("p50 latency (us)", lambda k: f"{p(lat[k], .5):,.0f}"))
rows.append(("p99 latency (us)", lambda k: f"{p(lat[k], .99):,.0f}"))
rows.append(("added p50 (us)", lambda k: f"{p(lat[k], .5) - d50:,.0f}"))
rows.append(("added p99 (us)", lambda k: f"{p(lat[k], .99) - d99:,.0f}"))
for c in (16, 64):
    rows.append((f"calls/s, {c} clients", lambda k, c=c: f"{runs[k, c]['calls'] / runs[k, c]['secs']:,.0f}"))
    rows.append((f"  calls / errors", lambda k, c=c: f"{runs[k, c]['calls']} / {runs[k, c]['errors']}"))
    rows.append((f"  gateway CPU s/10k calls", lambda k, c=c: f"{per10k(runs[k, c], 'gw'):.2f}"))
    rows.append((f"  nginx CPU s/10k (apart)", lambda k, c=c: f"{per10k(runs[k, c], 'nginx'):.2f}"))
    rows.append((f"  client CPU s/10k (apart)", lambda k, c=c: f"{per10k(runs[k, c], 'client'):.2f}"))
print(f"{'':28}{'maester':>16}{'Portkey':>16}")
for name, f in rows:
    print(f"{name:28}{f('maester'):>16}{f('portkey'):>16}")
print()
print(f"maester's ledger and spans (rows left pending at the end: {ledger_open}):")
for what, n, ok, spans, dropped in ledger:
    label = "sequential" if what == "sequential" else f"{what} clients"
    print(f"  {label + ':':12} {n} calls, {ok} new ok ledger rows, {spans} spans written, "
          f"{dropped} dropped (span queue full)")
print("the difference: maester's figures include a durable, traced ledger (two WAL flushes per")
print("call with fsync = on, plus spans); Portkey's include no ledger and no disk write.")
PY
